//! why502's own HTTP/1.1 server, for the plain (non-TLS, non-h2c) listeners
//! whose servers route only to FastCGI, static files and `return`s.
//!
//! Pingora serves everything else (TLS, HTTP/2, HTTP backends). This server
//! exists for speed: nginx's model, one single-threaded runtime per worker
//! thread, each accepting from the shared listening sockets and keeping the
//! connections it accepted, so a request never crosses threads; one read
//! and one parse per request header into a reused buffer; a complete
//! response goes out in one write. (`docs/benchmarks.md` has the numbers.)
//!
//! What it does like nginx: keep-alive (HTTP/1.1 unless `Connection: close`,
//! HTTP/1.0 with `Connection: keep-alive`), pipelining, `Expect:
//! 100-continue`, chunked request bodies, `Date` and `Connection` response
//! headers, 400 for a malformed request, HTTP/1.1 without `Host`, a
//! duplicate `Host`, an invalid `Content-Length` or both `Content-Length`
//! and `Transfer-Encoding`; 414 for a request line over 8 KiB, 400
//! "Request Header Or Cookie Too Large" for a header line over 8 KiB or a
//! header over 32 KiB, 501 for a
//! transfer coding other than chunked; `client_header_timeout` 60 s
//! (nginx's default); `keepalive_timeout` and `keepalive_requests` (the
//! server's, 75 s and 1000 by default); `send_timeout` 60 s;
//! lingering close (`lingering_time` 30 s, `lingering_timeout` 5 s).

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::proxy::downstream::Downstream;

/// nginx `client_header_timeout`.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx `send_timeout`.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx `lingering_time`: the longest a closing connection reads (and
/// drops) what the client still sends.
pub(crate) const LINGERING_TIME: Duration = Duration::from_secs(30);
/// nginx `lingering_timeout`: the longest wait for more of it.
pub(crate) const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line (nginx: `large_client_header_buffers 4 8k`).
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The largest request header.
const MAX_HEAD: usize = 32 * 1024;
const MAX_HEADERS: usize = 128;
/// How much of a request body is read from the socket at a time.
const READ_SIZE: usize = 16 * 1024;
/// The buffer a request header is read into at first.
const HEAD_READ_SIZE: usize = 2048;
/// Smaller writes are copied into one buffer and sent with one `send()`.
const COALESCE: usize = 16 * 1024;

/// Set when the server is shutting down: connections close after their
/// current request, idle ones within a second.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// The server is shutting down.
pub(crate) fn stopping() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

/// What the server calls for each request.
pub trait App: Send + Sync + 'static {
    /// State carried from one request to the next on a connection.
    type Conn: Default + Send;
    /// Serves one request; `false` closes the connection (the response was
    /// aborted or is incomplete).
    fn serve<'a>(
        &'a self,
        s: &'a mut H1Session,
        conn: &'a mut Self::Conn,
    ) -> impl Future<Output = bool> + Send + 'a;
    /// Serves one HTTP/2 stream ([`crate::h2`]); `false`: the response was
    /// aborted or is incomplete (the stream is reset).
    fn serve_h2<'a>(
        &'a self,
        s: &'a mut crate::h2::H2Session,
    ) -> impl Future<Output = bool> + Send + 'a;
    /// Whether a request's log needs the response header's fields after
    /// it was sent (`$sent_http_NAME`, `$bytes_sent`). The HTTP/2 server
    /// otherwise hands its map to the `h2` crate instead of a copy.
    fn reads_sent_headers(&self) -> bool {
        true
    }
    /// `accept()` failed (out of descriptors, most often): the connection
    /// waits in the listen queue, and accepting is tried again in 10 ms.
    fn accept_failed(&self, _e: &std::io::Error) {}
}

enum BodyIn {
    /// Content-Length: bytes still to read.
    Length(u64),
    /// Chunked: the state of the decoder.
    Chunked(Chunk),
    Done,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data: bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines up to the empty one.
    Trailer,
}

#[derive(Clone, Copy, PartialEq)]
enum BodyOut {
    /// No response header yet.
    NotStarted,
    /// No body may follow (HEAD, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (no length, not chunked).
    Close,
    /// The response is complete.
    Finished,
}

/// One request on a client connection.
pub struct H1Session {
    stream: TcpStream,
    client: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// Bytes read and not yet consumed (the body's start, pipelined requests).
    buf: BytesMut,
    raw: Bytes,
    req: RequestHeader,
    body_in: BodyIn,
    body_read: usize,
    expect_continue: bool,
    keepalive: bool,
    resp: Option<Box<ResponseHeader>>,
    body_out: BodyOut,
    /// Output not yet written (a response header waiting for its body).
    out: Vec<u8>,
    body_sent: usize,
    /// This connection's serial number (nginx's `c->number`).
    number: u64,
    /// The size of the last response header written.
    head_len: usize,
    /// Requests read on this connection so far.
    requests: u64,
    /// The timer of the wait for the next request, kept from one wait to
    /// the next: moving a registered timer later only updates its deadline
    /// (tokio re-files it when the old one comes), where a new timer per
    /// wait is filed into the timer wheel and taken out again. Made on the
    /// first keep-alive wait.
    idle: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// See [`Downstream::take_upstream_timer`].
    upstream_timer: Option<crate::proxy::downstream::UpstreamTimer>,
    /// See [`Downstream::head_lines`].
    head_lines: Vec<u8>,
    /// The wait for the next request (`keepalive_timeout` of the last
    /// request's server).
    keepalive_timeout: Duration,
}

/// Connections accepted so far, for their serial numbers.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// The serial number of a new connection.
fn next_connection_number() -> u64 {
    CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1
}

fn err(t: ErrorType, msg: &'static str) -> Box<Error> {
    Error::explain(t, msg)
}

impl H1Session {
    /// The session of a new connection, before its first request.
    fn new(stream: TcpStream) -> Option<H1Session> {
        let client = stream.peer_addr().ok();
        let local = stream.local_addr().ok();
        Some(H1Session {
            stream,
            client,
            local,
            buf: BytesMut::new(),
            raw: Bytes::new(),
            req: RequestHeader::build_no_case("GET", b"/", None).ok()?,
            body_in: BodyIn::Done,
            body_read: 0,
            expect_continue: false,
            keepalive: false,
            resp: None,
            body_out: BodyOut::NotStarted,
            out: Vec::new(),
            body_sent: 0,
            number: next_connection_number(),
            head_len: 0,
            requests: 0,
            idle: None,
            upstream_timer: None,
            head_lines: Vec::new(),
            keepalive_timeout: crate::config::KEEPALIVE_TIMEOUT,
        })
    }

    async fn write_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        let fut = write_all_parts(&mut self.stream, parts);
        match tokio::time::timeout(SEND_TIMEOUT, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::because(
                ErrorType::WriteError,
                "writing to client",
                e,
            )),
            Err(_) => Err(err(ErrorType::WriteTimedout, "client timed out")),
        }
    }

    /// Writes `self.out` and then `data` (one `send()` when they are small).
    async fn flush_with(&mut self, data: &[u8], trailer: &[u8]) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        let r = if out.len() + data.len() + trailer.len() <= COALESCE {
            out.extend_from_slice(data);
            out.extend_from_slice(trailer);
            self.write_parts(&[&out]).await
        } else {
            self.write_parts(&[&out, data, trailer]).await
        };
        out.clear();
        self.out = out;
        r
    }

    /// Reads more of a request header into `buf`; 0 at EOF. A header
    /// takes a small buffer (nginx: `client_header_buffer_size 1k`), grown
    /// as needed.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(HEAD_READ_SIZE.max(self.buf.len()));
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads more of a request body into `buf`; 0 at EOF.
    async fn fill_body(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(READ_SIZE);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    async fn send_continue(&mut self) -> Result<()> {
        if self.expect_continue {
            self.expect_continue = false;
            self.write_parts(&[b"HTTP/1.1 100 Continue\r\n\r\n"])
                .await?;
        }
        Ok(())
    }

    /// Reads more of the request body (after `100 Continue` if the client
    /// waits for it); the connection closing is an error.
    async fn more_body(&mut self) -> Result<()> {
        self.send_continue().await?;
        let n = self
            .fill_body()
            .await
            .map_err(|e| Error::because(ErrorType::ReadError, "reading body", e))?;
        if n == 0 {
            return Err(err(
                ErrorType::ConnectionClosed,
                "client closed the connection in the body",
            ));
        }
        Ok(())
    }

    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self.body_in {
            BodyIn::Done => Ok(None),
            BodyIn::Length(0) => {
                self.body_in = BodyIn::Done;
                Ok(None)
            }
            BodyIn::Length(left) => {
                if self.buf.is_empty() {
                    self.more_body().await?;
                }
                let n = (self.buf.len() as u64).min(left) as usize;
                let b = self.buf.split_to(n).freeze();
                self.body_in = BodyIn::Length(left - n as u64);
                self.body_read += n;
                Ok(Some(b))
            }
            BodyIn::Chunked(_) => self.read_chunked().await,
        }
    }

    /// One step of the chunked decoder: returns data, or None after a state
    /// change or a read (the caller loops).
    fn chunk_step_sync(&mut self, st: Chunk) -> Result<Option<Option<Bytes>>> {
        match st {
            Chunk::Size => {
                let Some(end) = find_crlf(&self.buf) else {
                    if self.buf.len() > 4096 {
                        return Err(err(
                            ErrorType::InvalidHTTPHeader,
                            "chunk size line too long",
                        ));
                    }
                    return Ok(None);
                };
                let line = &self.buf[..end];
                let hex = line
                    .iter()
                    .position(|&c| c == b';' || c == b' ' || c == b'\t')
                    .map_or(line, |p| &line[..p]);
                let size = parse_hex(hex)
                    .ok_or_else(|| err(ErrorType::InvalidHTTPHeader, "invalid chunk size"))?;
                self.buf.advance(end + 2);
                self.body_in = BodyIn::Chunked(if size == 0 {
                    Chunk::Trailer
                } else {
                    Chunk::Data(size)
                });
                Ok(Some(None))
            }
            Chunk::Data(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = (self.buf.len() as u64).min(left) as usize;
                let b = self.buf.split_to(n).freeze();
                self.body_read += n;
                self.body_in = BodyIn::Chunked(if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                });
                Ok(Some(Some(b)))
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(err(ErrorType::InvalidHTTPHeader, "invalid chunk end"));
                }
                self.buf.advance(2);
                self.body_in = BodyIn::Chunked(Chunk::Size);
                Ok(Some(None))
            }
            Chunk::Trailer => {
                let Some(end) = find_crlf(&self.buf) else {
                    if self.buf.len() > 4096 {
                        return Err(err(ErrorType::InvalidHTTPHeader, "trailer too long"));
                    }
                    return Ok(None);
                };
                self.buf.advance(end + 2);
                if end == 0 {
                    self.body_in = BodyIn::Done;
                }
                Ok(Some(None))
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Option<Bytes>> {
        loop {
            let st = match self.body_in {
                BodyIn::Chunked(st) => st,
                _ => return Ok(None),
            };
            match self.chunk_step_sync(st)? {
                Some(Some(b)) => return Ok(Some(b)),
                Some(None) => continue,
                None => {
                    self.more_body().await?;
                }
            }
        }
    }

    async fn write_header(&mut self, h: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.body_out != BodyOut::NotStarted {
            return Ok(());
        }
        let status = h.status.as_u16();
        let head = self.req.method == http::Method::HEAD;
        let mode = if head || status == 204 || status == 304 || (100..200).contains(&status) {
            BodyOut::None
        } else if h
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
        {
            BodyOut::Chunked
        } else if let Some(n) = h
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            BodyOut::Length(n)
        } else {
            BodyOut::Close
        };
        if mode == BodyOut::Close {
            self.keepalive = false;
        }
        let out = &mut self.out;
        let start = out.len();
        // Room for the header and a small body sent with it, taken at once
        // (an idle connection gives the buffer back).
        out.reserve(
            512 + match mode {
                BodyOut::Length(n) if n <= COALESCE as u64 => n as usize,
                _ => 0,
            },
        );
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(h.status.as_str().as_bytes());
        out.push(b' ');
        if let Some(r) = h.get_reason_phrase() {
            out.extend_from_slice(r.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        // `Date` and `Connection` are the server's own: written here, after
        // the others, in place of any in the map (not put in the map: that
        // costs more than the rest of the header).
        if h.has_case() {
            for (name, value) in h.case_header_iter() {
                let n = name.as_slice();
                if n.eq_ignore_ascii_case(b"date") || n.eq_ignore_ascii_case(b"connection") {
                    continue;
                }
                for part in [n, b": ", value.as_bytes(), b"\r\n"] {
                    out.extend_from_slice(part);
                }
            }
        } else {
            for (name, value) in h.headers.iter() {
                if name == http::header::DATE || name == http::header::CONNECTION {
                    continue;
                }
                put_title(out, name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(&self.head_lines);
        let date = pingora_core::protocols::http::date::get_cached_date();
        for part in [b"Date: ", date.as_bytes(), b"\r\nConnection: "] {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(if self.keepalive {
            b"keep-alive\r\n\r\n"
        } else {
            b"close\r\n\r\n"
        });
        self.head_len = out.len() - start;
        self.body_out = mode;
        self.resp = Some(h);
        match mode {
            BodyOut::None | BodyOut::Length(0) => {
                self.body_out = BodyOut::Finished;
                self.flush_with(&[], &[]).await
            }
            // The body follows: it goes out with the header.
            BodyOut::Length(_) if !end => Ok(()),
            _ => {
                if end {
                    self.finish_body().await
                } else {
                    self.flush_with(&[], &[]).await
                }
            }
        }
    }

    async fn finish_body(&mut self) -> Result<()> {
        let mode = self.body_out;
        self.body_out = BodyOut::Finished;
        match mode {
            BodyOut::Chunked => self.flush_with(b"0\r\n\r\n", &[]).await,
            BodyOut::Length(left) if left > 0 => {
                // Shorter than announced: the client must see it truncated.
                self.keepalive = false;
                let _ = self.flush_with(&[], &[]).await;
                Err(err(
                    ErrorType::WriteError,
                    "response body shorter than its length",
                ))
            }
            _ if !self.out.is_empty() => self.flush_with(&[], &[]).await,
            _ => Ok(()),
        }
    }

    async fn write_body(&mut self, data: Option<Bytes>, end: bool) -> Result<()> {
        let data = data.unwrap_or_default();
        match self.body_out {
            BodyOut::NotStarted => {
                return Err(err(
                    ErrorType::WriteError,
                    "body before the response header",
                ))
            }
            BodyOut::Finished | BodyOut::None => {}
            BodyOut::Length(left) => {
                let n = (data.len() as u64).min(left) as usize;
                self.body_out = BodyOut::Length(left - n as u64);
                self.body_sent += n;
                if n > 0 || !self.out.is_empty() {
                    self.flush_with(&data[..n], &[]).await?;
                }
                if left - n as u64 == 0 {
                    self.body_out = BodyOut::Finished;
                }
            }
            BodyOut::Chunked => {
                if !data.is_empty() {
                    self.body_sent += data.len();
                    let mut size = [0u8; 18];
                    let len = chunk_size_line(data.len(), &mut size);
                    self.out.extend_from_slice(&size[..len]);
                    let tail: &[u8] = if end { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                    self.flush_with(&data, tail).await?;
                    if end {
                        self.body_out = BodyOut::Finished;
                        return Ok(());
                    }
                }
            }
            BodyOut::Close => {
                if !data.is_empty() || !self.out.is_empty() {
                    self.body_sent += data.len();
                    self.flush_with(&data, &[]).await?;
                }
            }
        }
        if end && self.body_out != BodyOut::Finished {
            return self.finish_body().await;
        }
        Ok(())
    }

    /// Frees the buffers of an idle connection (the request header's values
    /// point into the read buffer, so it goes too).
    fn release_buffers(&mut self) {
        if !self.buf.is_empty() {
            return;
        }
        self.buf = BytesMut::new();
        self.out = Vec::new();
        self.raw = Bytes::new();
        self.resp = None;
        self.head_lines = Vec::new();
        // An empty header (no allocation): the old one's values point into
        // the read buffer.
        self.req = RequestHeader::from(http::Request::new(()).into_parts().0);
    }

    fn response_complete(&self) -> bool {
        self.body_out == BodyOut::Finished
    }
}

impl Downstream for H1Session {
    fn take_upstream_timer(&mut self) -> Option<crate::proxy::downstream::UpstreamTimer> {
        Some(self.upstream_timer.take().unwrap_or_else(|| {
            Box::pin(tokio::time::sleep_until(
                tokio::time::Instant::now() + Duration::from_secs(3600),
            ))
        }))
    }
    fn put_upstream_timer(&mut self, t: crate::proxy::downstream::UpstreamTimer) {
        self.upstream_timer = Some(t);
    }
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }
    fn client_addr(&self) -> Option<SocketAddr> {
        self.client
    }
    fn server_addr(&self) -> Option<SocketAddr> {
        self.local
    }
    fn is_tls(&self) -> bool {
        false
    }
    fn titles_header_names(&self) -> bool {
        true
    }
    fn is_http2(&self) -> bool {
        false
    }
    fn is_body_done(&mut self) -> bool {
        matches!(self.body_in, BodyIn::Done | BodyIn::Length(0))
    }
    async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        self.read_body().await
    }
    fn write_response_header(
        &mut self,
        h: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        self.write_header(h, end)
    }
    fn write_response_body(
        &mut self,
        data: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        self.write_body(data, end)
    }
    async fn write_response_body_last(&mut self, parts: [Bytes; 2]) -> Result<()> {
        let [a, b] = parts;
        let n = a.len() + b.len();
        match self.body_out {
            // The whole announced body: out with the header, neither piece
            // joined to the other first.
            BodyOut::Length(left) if left == n as u64 && n > 0 => {
                self.body_out = BodyOut::Finished;
                self.body_sent += n;
                self.flush_with(&a, &b).await
            }
            _ => {
                if !a.is_empty() {
                    self.write_body(Some(a), false).await?;
                }
                self.write_body(Some(b), true).await
            }
        }
    }
    fn set_keepalive(&mut self, secs: Option<u64>) {
        if secs.is_none() {
            self.keepalive = false;
        }
    }
    fn response_written(&self) -> Option<&ResponseHeader> {
        self.resp.as_deref()
    }
    fn connection_number(&self) -> Option<u64> {
        Some(self.number)
    }
    fn limit_requests(&mut self, max: u64) {
        if self.requests >= max {
            self.keepalive = false;
        }
    }
    fn set_idle_timeout(&mut self, t: Duration) {
        if t.is_zero() {
            self.keepalive = false;
        }
        self.keepalive_timeout = t;
    }
    fn sent_header_len(&self) -> Option<usize> {
        self.resp.as_ref().map(|_| self.head_len)
    }
    fn sent_connection(&self) -> Option<&'static str> {
        self.resp.as_ref().map(|_| {
            if self.keepalive {
                "keep-alive"
            } else {
                "close"
            }
        })
    }
    fn head_lines(&mut self) -> Option<&mut Vec<u8>> {
        Some(&mut self.head_lines)
    }
    fn sent_head_line(&self, name: &str) -> Option<&[u8]> {
        self.resp.as_ref()?;
        self.head_lines
            .split(|&b| b == b'\n')
            .find_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                line[..colon]
                    .eq_ignore_ascii_case(name.as_bytes())
                    .then(|| &line[colon + 1..])
            })
            .map(|v| v.trim_ascii())
    }
    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }
    fn body_bytes_read(&self) -> usize {
        self.body_read
    }
    fn raw_request_header(&self) -> Bytes {
        self.raw.clone()
    }
}

/// Writes a header name as it is usually capitalised (`ETag`,
/// `Content-Type`, `Why502-Cause`): for headers built without a case map.
fn put_title(out: &mut Vec<u8>, name: &http::HeaderName) {
    match known_title(name) {
        Some(t) => out.extend_from_slice(t.as_bytes()),
        None => {
            let n = name.as_str().as_bytes();
            let at = out.len();
            out.extend_from_slice(n);
            let mut up = true;
            for b in &mut out[at..] {
                if up {
                    b.make_ascii_uppercase();
                }
                up = *b == b'-';
            }
        }
    }
}

/// Whether [`put_title`] writes a header name exactly as an application
/// sent it, so that its case needs no case map to survive.
pub fn writes_as_sent(sent: &[u8]) -> bool {
    // The two names whose usual capitalisation is not word by word.
    for t in ["ETag", "WWW-Authenticate"] {
        if sent.eq_ignore_ascii_case(t.as_bytes()) {
            return sent == t.as_bytes();
        }
    }
    let mut up = true;
    sent.iter().all(|&b| {
        let same = if up {
            !b.is_ascii_lowercase()
        } else {
            !b.is_ascii_uppercase()
        };
        up = b == b'-';
        same
    })
}

/// The names [`put_title`] need not capitalise word by word: the usual
/// response headers (one comparison each) and those not capitalised by
/// word (`ETag`).
fn known_title(name: &http::HeaderName) -> Option<&'static str> {
    use http::header as h;
    Some(match *name {
        h::CONTENT_TYPE => "Content-Type",
        h::CONTENT_LENGTH => "Content-Length",
        h::DATE => "Date",
        h::SERVER => "Server",
        h::CONNECTION => "Connection",
        h::LAST_MODIFIED => "Last-Modified",
        h::ACCEPT_RANGES => "Accept-Ranges",
        h::LOCATION => "Location",
        h::CACHE_CONTROL => "Cache-Control",
        h::TRANSFER_ENCODING => "Transfer-Encoding",
        h::ETAG => "ETag",
        h::WWW_AUTHENTICATE => "WWW-Authenticate",
        // The diagnosis headers under their default names.
        _ => match name.as_str() {
            "why502-cause" => "Why502-Cause",
            "why502-request-id" => "Why502-Request-Id",
            "proxy-status" => "Proxy-Status",
            _ => return None,
        },
    })
}

/// A header name as [`put_title`] writes it.
pub fn title(name: &http::HeaderName) -> String {
    let mut v = Vec::with_capacity(name.as_str().len());
    put_title(&mut v, name);
    String::from_utf8(v).unwrap_or_default()
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        n = n * 16 + u64::from(d);
    }
    Some(n)
}

/// `{len:x}\r\n` into `out`; returns its length.
fn chunk_size_line(mut len: usize, out: &mut [u8; 18]) -> usize {
    let mut digits = [0u8; 16];
    let mut i = 16;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[len & 0xf];
        len >>= 4;
        if len == 0 {
            break;
        }
    }
    let n = 16 - i;
    out[..n].copy_from_slice(&digits[i..]);
    out[n] = b'\r';
    out[n + 1] = b'\n';
    n + 2
}

async fn write_all_parts(stream: &mut TcpStream, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        if parts[idx].len() == off {
            idx += 1;
            off = 0;
            continue;
        }
        let n = if parts.len() - idx == 1 {
            stream.write(&parts[idx][off..]).await?
        } else {
            let mut slices = [IoSlice::new(&[]); 4];
            let mut k = 0;
            slices[0] = IoSlice::new(&parts[idx][off..]);
            k += 1;
            for p in &parts[idx + 1..] {
                if k == slices.len() {
                    break;
                }
                slices[k] = IoSlice::new(p);
                k += 1;
            }
            stream.write_vectored(&slices[..k]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Why a request header was refused.
enum Refuse {
    /// Close without an answer (EOF, timeout, read error).
    Close,
    /// Answer with this status (and its nginx page), then close.
    Status(u16, &'static str),
}

/// The next request on the connection: reads and parses its header into
/// `s` (reusing its buffers).
async fn read_request(s: &mut H1Session, first: bool) -> std::result::Result<(), Refuse> {
    // Waiting for a request's first byte: keepalive_timeout (between
    // requests) or client_header_timeout (a new connection); then the rest
    // of the header within client_header_timeout.
    if s.buf.is_empty() {
        let wait = if first {
            HEADER_TIMEOUT
        } else {
            s.keepalive_timeout
        };
        // One clock read per wait (each is a vDSO call): the first step
        // reuses it.
        let mut now = tokio::time::Instant::now();
        let until = now + wait;
        // Waits in steps of a second at most, to see a shutdown (cheaper
        // per request than registering with a shutdown signal). A waiting
        // connection holds no buffer (nginx frees it too): one is taken
        // when data arrives.
        loop {
            let step_end = until.min(now + Duration::from_secs(1));
            let idle = s
                .idle
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(step_end)));
            idle.as_mut().reset(step_end);
            let ready = tokio::select! {
                biased;
                r = s.stream.readable() => Some(r),
                _ = idle.as_mut() => None,
            };
            match ready {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(Refuse::Close),
                None => {
                    now = tokio::time::Instant::now();
                    if STOPPING.load(Ordering::Relaxed) || now >= until {
                        return Err(Refuse::Close);
                    }
                    continue;
                }
            }
            s.buf.reserve(HEAD_READ_SIZE);
            // One poll of `read_buf`, not `try_read_buf`: a short read then
            // tells tokio the socket is drained (as nginx's `ready = 0`),
            // so the next request's wait goes straight to epoll instead
            // of first reading EAGAIN (one `recvfrom` per request saved).
            use futures_util::FutureExt;
            match s.stream.read_buf(&mut s.buf).now_or_never() {
                Some(Ok(0)) => return Err(Refuse::Close),
                Some(Ok(_)) => break,
                // Readiness was stale (and is now cleared): wait again.
                None => s.buf = BytesMut::new(),
                Some(Err(_)) => return Err(Refuse::Close),
            }
        }
    }
    // Set when the header does not come whole in the first read (most
    // do): a clock read saved per request.
    let mut deadline = None;
    loop {
        if let Some(done) = parse_request(s) {
            return done;
        }
        let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + HEADER_TIMEOUT);
        match tokio::time::timeout_at(d, s.fill()).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(Refuse::Close),
        }
    }
}

/// Parses the request header in `s.buf`: `None` while it is incomplete.
/// Not part of `read_request`'s future: httparse's header array (4 KiB)
/// would otherwise be kept in every connection's task while it waits.
fn parse_request(s: &mut H1Session) -> Option<std::result::Result<(), Refuse>> {
    // nginx ignores empty lines before a request line.
    while s.buf.starts_with(b"\r\n") {
        s.buf.advance(2);
    }
    // Left uninitialised: httparse writes the ones it fills (an
    // initialised array is 4 KiB of stores per request).
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&s.buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => {
            if n > MAX_HEAD {
                return Some(Err(Refuse::Status(
                    400,
                    "Request Header Or Cookie Too Large",
                )));
            }
            let mut head = Head::new();
            head.fill(&s.buf, &req);
            Some(build_request(s, n, &head))
        }
        Ok(httparse::Status::Partial) => {
            if find_crlf(&s.buf).is_none() && s.buf.len() > MAX_REQUEST_LINE {
                return Some(Err(Refuse::Status(414, "")));
            }
            if s.buf.len() > MAX_HEAD {
                return Some(Err(Refuse::Status(
                    400,
                    "Request Header Or Cookie Too Large",
                )));
            }
            None
        }
        Err(httparse::Error::TooManyHeaders) => Some(Err(Refuse::Status(
            400,
            "Request Header Or Cookie Too Large",
        ))),
        Err(httparse::Error::Token) => parse_raw_target(s),
        Err(_) => Some(Err(Refuse::Status(400, ""))),
    }
}

/// httparse refuses a request target that is not UTF-8 (`/caf\xE9.php`);
/// nginx serves it. The header is parsed again from a copy in which the
/// target's bytes >= 0x80 are `x`: the offsets are the same, so the request
/// is built from the real bytes. Anything else wrong stays a 400.
fn parse_raw_target(s: &mut H1Session) -> Option<std::result::Result<(), Refuse>> {
    let bad = Some(Err(Refuse::Status(400, "")));
    let line_end = find_crlf(&s.buf).unwrap_or(s.buf.len());
    let line = &s.buf[..line_end];
    let Some(start) = line.iter().position(|&b| b == b' ').map(|i| i + 1) else {
        return bad;
    };
    let end = line[start..]
        .iter()
        .position(|&b| b == b' ')
        .map_or(line.len(), |i| start + i);
    let target = &line[start..end];
    if target.is_ascii() || std::str::from_utf8(target).is_ok() {
        return bad;
    }
    let mut copy = s.buf.to_vec();
    for b in &mut copy[start..end] {
        if *b >= 0x80 {
            *b = b'x';
        }
    }
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&copy, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => {
            let mut head = Head::new();
            head.fill(&copy, &req);
            Some(build_request(s, n, &head))
        }
        Ok(httparse::Status::Partial) if s.buf.len() <= MAX_HEAD => None,
        _ => bad,
    }
}

/// Where the parts of a parsed request header are in the read buffer (the
/// header is parsed once, then the buffer is split off and frozen so the
/// header values can point into it). Offsets fit in `u16`: a header is at
/// most `MAX_HEAD` bytes.
struct Head {
    method: (u16, u16),
    path: (u16, u16),
    v11: bool,
    /// (name, value) of each header line.
    headers: [((u16, u16), (u16, u16)); MAX_HEADERS],
    count: usize,
}

impl Head {
    fn new() -> Head {
        Head {
            method: (0, 0),
            path: (0, 0),
            v11: false,
            headers: [((0, 0), (0, 0)); MAX_HEADERS],
            count: 0,
        }
    }

    /// Records where `req`'s parts are in `base` (filled in place: a
    /// `Head` is 1 KiB).
    fn fill(&mut self, base: &[u8], req: &httparse::Request<'_, '_>) {
        let span = |part: &[u8]| {
            let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
            let at = |i: usize| u16::try_from(i).unwrap_or(u16::MAX);
            (at(start), at(start + part.len()))
        };
        self.method = span(req.method.unwrap_or("").as_bytes());
        self.path = span(req.path.unwrap_or("").as_bytes());
        self.v11 = req.version == Some(1);
        self.count = 0;
        for (slot, hd) in self.headers.iter_mut().zip(req.headers.iter()) {
            *slot = (span(hd.name.as_bytes()), span(hd.value));
            self.count += 1;
        }
    }
}

fn build_request(s: &mut H1Session, n: usize, head: &Head) -> std::result::Result<(), Refuse> {
    let raw = s.buf.split_to(n).freeze();
    let bad = Refuse::Status(400, "");
    let part = |(a, b): (u16, u16)| raw.get(a as usize..b as usize).unwrap_or_default();
    let method = std::str::from_utf8(part(head.method)).map_err(|_| Refuse::Status(400, ""))?;
    let path = part(head.path);
    if path.len() > MAX_REQUEST_LINE {
        return Err(Refuse::Status(414, ""));
    }
    // Built from `http` parts: no case map (HTTP/1 header names are case
    // insensitive, and FastCGI upper-cases them), each name parsed once.
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method =
        http::Method::from_bytes(method.as_bytes()).map_err(|_| Refuse::Status(400, ""))?;
    let v11 = head.v11;
    parts.version = if v11 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    };
    let mut headers = http::HeaderMap::with_capacity(head.count);
    let mut hosts = 0;
    let mut lengths: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut conn_close = false;
    let mut conn_keep = false;
    let mut expect = false;
    for &(name_at, value_at) in &head.headers[..head.count] {
        let (name, value) = (part(name_at), part(value_at));
        // nginx: a header line must fit one of large_client_header_buffers (8k).
        if name.len() + value.len() + 4 > MAX_REQUEST_LINE {
            return Err(Refuse::Status(400, "Request Header Or Cookie Too Large"));
        }
        let hv = http::HeaderValue::from_maybe_shared(raw.slice_ref(value))
            .map_err(|_| Refuse::Status(400, ""))?;
        let name = http::HeaderName::from_bytes(name).map_err(|_| Refuse::Status(400, ""))?;
        if name == http::header::HOST {
            hosts += 1;
        } else if name == http::header::CONTENT_LENGTH {
            let v = std::str::from_utf8(value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (v, lengths) {
                (None, _) => return Err(bad),
                (Some(a), Some(b)) if a != b => return Err(bad),
                (Some(a), _) => lengths = Some(a),
            }
        } else if name == http::header::TRANSFER_ENCODING {
            te = true;
            chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == http::header::CONNECTION {
            for t in value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                conn_close |= t.eq_ignore_ascii_case(b"close");
                conn_keep |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == http::header::EXPECT {
            expect = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        headers
            .try_append(name, hv)
            .map_err(|_| Refuse::Status(400, ""))?;
    }
    parts.headers = headers;
    // An origin-form target (`/path?query`) becomes the Uri without a copy
    // (`PathAndQuery` drops a fragment, as Pingora does, and refuses
    // non-UTF-8); other forms, and non-UTF-8, take Pingora's parser.
    let uri = (path.first() == Some(&b'/'))
        .then(|| http::uri::PathAndQuery::from_maybe_shared(raw.slice_ref(path)).ok())
        .flatten()
        .and_then(|pq| {
            let mut u = http::uri::Parts::default();
            u.path_and_query = Some(pq);
            http::Uri::from_parts(u).ok()
        });
    let h = match uri {
        Some(uri) => {
            parts.uri = uri;
            RequestHeader::from(parts)
        }
        None => {
            let mut h = RequestHeader::from(parts);
            h.set_raw_path(path).map_err(|_| Refuse::Status(400, ""))?;
            h
        }
    };
    if hosts > 1 || (v11 && hosts == 0) {
        return Err(bad);
    }
    if te && lengths.is_some() {
        return Err(bad);
    }
    if te && !chunked {
        return Err(Refuse::Status(501, ""));
    }
    s.raw = raw;
    s.req = h;
    s.body_in = if chunked {
        BodyIn::Chunked(Chunk::Size)
    } else {
        match lengths {
            Some(n) if n > 0 => BodyIn::Length(n),
            _ => BodyIn::Done,
        }
    };
    s.body_read = 0;
    s.expect_continue = expect && v11 && !matches!(s.body_in, BodyIn::Done);
    s.keepalive = if v11 {
        !conn_close
    } else {
        conn_keep && !conn_close
    };
    s.resp = None;
    s.head_lines.clear();
    s.body_out = BodyOut::NotStarted;
    s.body_sent = 0;
    Ok(())
}

/// nginx's answer to a refused request.
fn refusal(code: u16, detail: &str) -> Vec<u8> {
    let reason = crate::report::reason_phrase(code);
    let body = crate::report::status_page(code, detail);
    let date = pingora_core::protocols::http::date::get_cached_date();
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nServer: why502\r\nDate: {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        date.to_str().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Serves one client connection until it closes. `h2`: the listener takes
/// HTTP/2 with prior knowledge (h2c) too, told apart by its preface.
pub async fn serve_connection<A: App>(app: &A, stream: TcpStream, h2: bool) {
    let _ = stream.set_nodelay(true);
    if h2 {
        match crate::h2::sniff(&stream).await {
            None => return,
            Some(true) => {
                let n = next_connection_number();
                return Box::pin(crate::h2::serve_connection(app, stream, n)).await;
            }
            Some(false) => {}
        }
    }
    let Some(mut s) = H1Session::new(stream) else {
        return;
    };
    let mut conn = A::Conn::default();
    let mut first = true;
    loop {
        match read_request(&mut s, first).await {
            Ok(()) => {}
            Err(Refuse::Close) => return,
            Err(Refuse::Status(code, detail)) => {
                let page = refusal(code, detail);
                if Box::pin(s.write_parts(&[&page])).await.is_ok() {
                    linger(&mut s).await;
                }
                return;
            }
        }
        first = false;
        s.requests += 1;
        if STOPPING.load(Ordering::Relaxed) {
            s.keepalive = false;
        }
        // The request's future (and the rarer writes below) are boxed: this
        // task lives as long as the connection, and an idle connection
        // should hold no more than its session and the wait for the next
        // request (~1 KiB; a handler's future is several).
        // The box is taken first and the future made in it: `Box::pin(f)`
        // makes it on the stack and copies it over (3 KiB per request).
        let ok = Box::into_pin(Box::write(Box::new_uninit(), app.serve(&mut s, &mut conn))).await;
        if !ok || !s.response_complete() || !s.keepalive || !s.is_body_done() {
            if ok
                && s.response_complete()
                && (s.out.is_empty() || Box::pin(s.flush_with(&[], &[])).await.is_ok())
            {
                linger(&mut s).await;
            }
            return;
        }
        if !s.out.is_empty() && Box::pin(s.flush_with(&[], &[])).await.is_err() {
            return;
        }
        // Between requests a connection holds no buffers (unless the
        // client sent the next request already).
        s.release_buffers();
    }
}

/// Closes a connection after its last response like nginx's
/// `lingering_close on`: when the client may still be sending (an unread
/// request body, pipelined requests), the write side is shut first and what
/// arrives is read and dropped until the client closes, for at most
/// `lingering_time` (5 s without data ends it sooner). Closing a socket with
/// unread data makes the kernel send a reset, which discards the response
/// the client has not read yet: a 413 or a 502 during an upload would reach
/// the client as "connection reset" instead of its diagnosis.
async fn linger(s: &mut H1Session) {
    let pending = !s.buf.is_empty() || !s.is_body_done() || {
        // Data waiting in the socket (an EOF, Ok(0), needs no lingering).
        // A peek asks the kernel: tokio's `try_read` would answer from the
        // readiness it has seen, and miss data that arrived since.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(&s.stream).peek(&mut probe), Ok(n) if n > 0)
    };
    if !pending || s.stream.shutdown().await.is_err() {
        return;
    }
    let until = tokio::time::Instant::now() + LINGERING_TIME;
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let wait = until
            .saturating_duration_since(tokio::time::Instant::now())
            .min(LINGERING_TIMEOUT);
        match tokio::time::timeout(wait, s.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && !STOPPING.load(Ordering::Relaxed) => {}
            _ => return,
        }
    }
}

/// Binds `addr` like nginx (SO_REUSEADDR, backlog 511; `ipv6only` for `[::]`
/// next to an IPv4 listen on its port).
pub fn bind(addr: SocketAddr, ipv6_only: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(ipv6_only)?;
    }
    s.bind(&addr.into())?;
    s.listen(511)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Runs the server on `sockets` (each with whether it takes h2c too):
/// `threads` threads, each with its own single-threaded runtime. Every
/// thread accepts from every socket and hands each new connection to the
/// thread with the fewest connections (itself on a tie),
/// which then serves it to the end: the connections are spread evenly even
/// when a burst of them arrives at once, and a request never crosses
/// threads. Returns the threads; they end when `shutdown` turns true and
/// their connections have finished (or after `grace`).
pub fn run<A: App>(
    app: Arc<A>,
    sockets: Vec<(std::net::TcpListener, bool)>,
    threads: usize,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let n = threads.max(1);
    let active: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let mut txs = Vec::with_capacity(n);
    let mut rxs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, bool)>();
        txs.push(tx);
        rxs.push(rx);
    }
    let txs = Arc::new(txs);
    let mut handles = Vec::new();
    for (i, mut rx) in rxs.into_iter().enumerate() {
        let socks = sockets
            .iter()
            .map(|(l, h2)| Ok((l.try_clone()?, *h2)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let app = app.clone();
        let shutdown = shutdown.clone();
        let active = active.clone();
        let txs = txs.clone();
        let h = std::thread::Builder::new()
            .name(format!("why502-h1-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("why502: cannot start a worker thread: {e}");
                        return;
                    }
                };
                let w = Worker {
                    app,
                    me: i,
                    active,
                    shutdown,
                };
                rt.block_on(async move {
                    for (sock, h2) in socks {
                        match tokio::net::TcpListener::from_std(sock) {
                            Ok(l) => {
                                tokio::spawn(w.clone().accept_loop(l, h2, txs.clone()));
                            }
                            Err(e) => eprintln!("why502: cannot listen: {e}"),
                        }
                    }
                    // Connections handed over by the other threads.
                    let w2 = w.clone();
                    tokio::spawn(async move {
                        while let Some((s, h2)) = rx.recv().await {
                            match TcpStream::from_std(s) {
                                Ok(s) => w2.spawn_conn(s, h2),
                                Err(_) => {
                                    w2.active[w2.me].fetch_sub(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                    let mut sd = w.shutdown.clone();
                    while !*sd.borrow() {
                        if sd.changed().await.is_err() {
                            break;
                        }
                    }
                    STOPPING.store(true, Ordering::Relaxed);
                    let until = tokio::time::Instant::now() + grace;
                    while w.active[w.me].load(Ordering::Relaxed) > 0
                        && tokio::time::Instant::now() < until
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            })?;
        handles.push(h);
    }
    Ok(handles)
}

/// One worker thread's share of the server.
struct Worker<A> {
    app: Arc<A>,
    me: usize,
    /// Open connections per thread.
    active: Arc<Vec<AtomicUsize>>,
    shutdown: watch::Receiver<bool>,
}

/// A connection counted in its thread's `active` until this is dropped.
struct Active<'a, A>(&'a Worker<A>);

impl<A> Drop for Active<'_, A> {
    fn drop(&mut self) {
        self.0.active[self.0.me].fetch_sub(1, Ordering::Relaxed);
    }
}

impl<A> Clone for Worker<A> {
    fn clone(&self) -> Self {
        Worker {
            app: self.app.clone(),
            me: self.me,
            active: self.active.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<A: App> Worker<A> {
    /// Serves `s` on this thread (its `active` count is already raised).
    fn spawn_conn(&self, s: TcpStream, h2: bool) {
        let w = self.clone();
        tokio::spawn(async move {
            // Counted down however the task ends: a panic (a bug) ends
            // the task too, and would otherwise leave the thread counted
            // busier than it is for good.
            let _active = Active(&w);
            serve_connection(&*w.app, s, h2).await;
        });
    }

    /// The thread with the fewest connections (this one on a tie).
    fn least_busy(&self) -> usize {
        let mut best = self.me;
        let mut min = self.active[self.me].load(Ordering::Relaxed);
        for (j, a) in self.active.iter().enumerate() {
            let v = a.load(Ordering::Relaxed);
            if v < min {
                best = j;
                min = v;
            }
        }
        best
    }

    async fn accept_loop(
        self,
        l: tokio::net::TcpListener,
        h2: bool,
        txs: Arc<Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, bool)>>>,
    ) {
        let mut sd = self.shutdown.clone();
        loop {
            let r = tokio::select! {
                r = l.accept() => r,
                _ = sd.changed() => return,
            };
            let s = match r {
                Ok((s, _)) => s,
                // EMFILE and the like: back off a little.
                Err(e) => {
                    self.app.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let to = self.least_busy();
            self.active[to].fetch_add(1, Ordering::Relaxed);
            if to == self.me {
                self.spawn_conn(s, h2);
                continue;
            }
            // Hand it over: the other thread registers it with its own
            // reactor.
            let sent = s
                .into_std()
                .ok()
                .and_then(|s| txs.get(to).map(|tx| tx.send((s, h2)).is_ok()));
            if sent != Some(true) {
                self.active[to].fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler whose future is large, as the real ones are.
    struct Big;
    impl App for Big {
        type Conn = ();
        async fn serve_h2(&self, _: &mut crate::h2::H2Session) -> bool {
            false
        }
        async fn serve(&self, s: &mut H1Session, _: &mut ()) -> bool {
            let mut scratch = [0u8; 16 * 1024];
            let n = s.fill().await.unwrap_or(0);
            scratch[n % scratch.len()] = 1;
            scratch.contains(&1)
        }
    }

    /// The server's and the client's end of a loopback connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (stream, _) = l.accept().await.unwrap();
        (stream, c)
    }

    /// `writes_as_sent` agrees with what `put_title` writes.
    #[test]
    fn writes_as_sent_matches_put_title() {
        for sent in [
            "X-Powered-By",
            "x-powered-by",
            "X-POWERED-BY",
            "Content-type",
            "ETag",
            "Etag",
            "WWW-Authenticate",
            "Www-Authenticate",
            "Set-Cookie",
            "X-1st-Thing",
            "X-a",
            "Why502-Cause",
            "Location",
        ] {
            let name = http::HeaderName::from_bytes(sent.as_bytes()).unwrap();
            assert_eq!(
                writes_as_sent(sent.as_bytes()),
                title(&name) == sent,
                "{sent}"
            );
        }
    }

    /// Origin-form targets take the copy-free Uri; the others Pingora's
    /// parser. Either way the target reads back as it was sent.
    #[tokio::test]
    async fn request_targets_read_back_as_sent() {
        let (stream, _c) = pair().await;
        let mut s = H1Session::new(stream).unwrap();
        for (target, path, raw) in [
            (
                &b"/a%20b/c.php?x=1&y=%2F"[..],
                "/a%20b/c.php",
                &b"/a%20b/c.php?x=1&y=%2F"[..],
            ),
            (b"/", "/", b"/"),
            (b"/x#frag", "/x", b"/x"),
            (b"/caf\xc3\xa9?q", "/caf\u{e9}", b"/caf\xc3\xa9?q"),
            (b"http://example.test/p?q", "/p", b"http://example.test/p?q"),
        ] {
            s.buf.clear();
            s.buf.extend_from_slice(b"GET ");
            s.buf.extend_from_slice(target);
            s.buf
                .extend_from_slice(b" HTTP/1.1\r\nHost: example.test\r\n\r\n");
            let r = parse_request(&mut s);
            assert!(
                matches!(r, Some(Ok(()))),
                "{:?}",
                String::from_utf8_lossy(target)
            );
            assert_eq!(
                s.req.uri.path(),
                path,
                "{:?}",
                String::from_utf8_lossy(target)
            );
            assert_eq!(
                s.req.raw_path(),
                raw,
                "{:?}",
                String::from_utf8_lossy(target)
            );
        }
    }

    /// `Date` and `Connection` are written by the session, not kept in the
    /// map: one of each on the wire (in place of any in the map), and
    /// `sent_header_len` is the header's size as sent.
    #[tokio::test]
    async fn date_and_connection_are_the_sessions_own() {
        use tokio::io::AsyncReadExt;
        for case in [false, true] {
            let (stream, mut c) = pair().await;
            let mut s = H1Session::new(stream).unwrap();
            s.buf
                .extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(matches!(parse_request(&mut s), Some(Ok(()))));
            s.keepalive = true;
            let mut h = if case {
                ResponseHeader::build(200, None).unwrap()
            } else {
                ResponseHeader::build_no_case(200, None).unwrap()
            };
            h.insert_header("content-length", "2").unwrap();
            h.insert_header("Date", "stale").unwrap();
            h.insert_header("connection", "close").unwrap();
            h.insert_header("X-App", "1").unwrap();
            assert!(s.write_header(Box::new(h), false).await.is_ok());
            assert!(s
                .write_body(Some(Bytes::from_static(b"ok")), true)
                .await
                .is_ok());
            let _ = s.stream.shutdown().await;
            let sent_len = s.sent_header_len();
            drop(s);
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            let text = String::from_utf8_lossy(&got).to_string();
            let head = text.find("\r\n\r\n").map(|i| i + 4).unwrap();
            assert_eq!(sent_len, Some(head), "{text}");
            assert!(text.ends_with("\r\n\r\nok"), "{text}");
            let lower = text.to_ascii_lowercase();
            assert_eq!(lower.matches("\r\ndate: ").count(), 1, "{text}");
            assert!(!text.contains("stale"), "{text}");
            assert_eq!(lower.matches("\r\nconnection: ").count(), 1, "{text}");
            assert!(text.contains("\r\nConnection: keep-alive\r\n"), "{text}");
            assert!(text.contains("\r\nX-App: 1\r\n"), "{text}");
        }
    }

    /// The HTTP/2 sniffing of a plain listener: a client that sends the
    /// preface's start and closes its side is let go at once (nginx closes
    /// too), not held for `client_header_timeout`; one that sends the
    /// preface in pieces is still recognised.
    #[tokio::test]
    async fn a_preface_start_then_close_ends_at_once() {
        use tokio::io::AsyncWriteExt;
        let (stream, mut c) = pair().await;
        c.write_all(b"PRI").await.unwrap();
        c.shutdown().await.unwrap();
        let t = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), crate::h2::sniff(&stream)).await;
        assert_eq!(got.ok(), Some(None), "after {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        let (stream, mut c) = pair().await;
        c.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let sniff = tokio::spawn(async move { crate::h2::sniff(&stream).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), sniff).await;
        assert_eq!(got.ok().and_then(|r| r.ok()), Some(Some(true)));

        let (stream, mut c) = pair().await;
        c.write_all(b"PRX").await.unwrap();
        assert_eq!(crate::h2::sniff(&stream).await, Some(false));
    }

    /// An idle keep-alive connection holds its task: the handler's future
    /// and the request parser's header array must not be part of it.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let (stream, c) = pair().await;
        let f = serve_connection(&Big, stream, true);
        let size = std::mem::size_of_val(&f);
        assert!(size < 1536, "a connection's future is {size} bytes");
        drop(c);
    }

    #[test]
    fn header_names_without_case_are_titled() {
        for (n, t) in [
            (http::header::ETAG, "ETag"),
            (http::header::CONTENT_TYPE, "Content-Type"),
            (http::header::LAST_MODIFIED, "Last-Modified"),
            (http::header::WWW_AUTHENTICATE, "WWW-Authenticate"),
            (
                http::HeaderName::from_static("why502-cause"),
                "Why502-Cause",
            ),
            (
                http::HeaderName::from_static("proxy-status"),
                "Proxy-Status",
            ),
        ] {
            assert_eq!(title(&n), t);
        }
    }

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; 18];
        let n = chunk_size_line(0x1a2b, &mut b);
        assert_eq!(&b[..n], b"1a2b\r\n");
        let n = chunk_size_line(0, &mut b);
        assert_eq!(&b[..n], b"0\r\n");
        let n = chunk_size_line(usize::MAX, &mut b);
        assert_eq!(&b[..n], b"ffffffffffffffff\r\n");
    }

    #[test]
    fn hex() {
        assert_eq!(parse_hex(b"ff"), Some(255));
        assert_eq!(parse_hex(b"0"), Some(0));
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"x"), None);
        assert_eq!(parse_hex(b"1234567890abcdef"), None);
    }
}
