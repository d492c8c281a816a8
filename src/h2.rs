//! why502's own HTTP/2 server: h2c with prior knowledge on the plain
//! listeners with `http2` (nginx `listen ... http2`) whose servers route only
//! to FastCGI, static files and `return`s. Built on the `h2` crate.
//!
//! The own HTTP/1 server ([`crate::h1`]) accepts the connection and looks at
//! its first bytes: the HTTP/2 preface hands it here, anything else is served
//! as HTTP/1.1 (Pingora's h2c does the same).
//!
//! Why not Pingora's HTTP/2 server: it spawns a task per stream holding its
//! whole proxy state machine (about 10 KiB copied per request), and runs
//! every request through its proxy phases. Here a connection's streams run
//! in the connection's own task, each stream's future made in its box
//! (`docs/benchmarks.md` has the numbers).
//!
//! What it does like nginx: up to 128 concurrent streams
//! (`http2_max_concurrent_streams`), a 32 KiB limit on a request's header
//! list (as the HTTP/1 server), `keepalive_timeout` (the last stream's
//! server's, 75 s by default) on a connection without streams,
//! `keepalive_requests` (GOAWAY after the stream that reaches it),
//! `send_timeout` 60 s while waiting for flow-control window, GOAWAY on
//! shutdown. A response that fails after its header, or is shorter than
//! its Content-Length, is reset (RST_STREAM INTERNAL_ERROR), so the client
//! can tell it is incomplete.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::KEEPALIVE_TIMEOUT;
use crate::h1::{App, HEADER_TIMEOUT, SEND_TIMEOUT};
use crate::proxy::downstream::Downstream;

/// The client connection preface (RFC 9113, 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// nginx `http2_max_concurrent_streams`.
const MAX_STREAMS: u32 = 128;
/// The largest request header list (the HTTP/1 server's limit).
const MAX_HEADER_LIST: u32 = 32 * 1024;
/// How long a connection without streams stays open after its GOAWAY.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The connection's receive window: uploads on several streams at once
/// are not held up by one another (each stream keeps the default 64 KiB).
const CONN_WINDOW: u32 = 1024 * 1024;

/// Whether a new connection starts with the HTTP/2 preface. `None`: it
/// closed, or sent nothing that tells within `client_header_timeout`.
///
/// The bytes are peeked, not read, so that either server reads them. A
/// peek cannot see the end of the stream while bytes are waiting: a client
/// that sent only the preface's start (`PRI`) and closed its side is seen
/// through the socket's read-closed readiness, and one that sent it and
/// waits is looked at again after longer and longer pauses, not every few
/// milliseconds for the whole header timeout.
pub async fn sniff(stream: &TcpStream) -> Option<bool> {
    let until = Instant::now() + HEADER_TIMEOUT;
    let mut buf = [0u8; PREFACE.len()];
    let mut pause = SNIFF_PAUSE;
    loop {
        let n = tokio::time::timeout_at(until, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        // Only the preface's start so far, and nothing more will come if
        // the client has closed its side (answered by nginx with a close).
        // After a peek that found bytes the readiness is still set and this
        // returns at once; bounded like every other wait here all the same.
        let ready = tokio::time::timeout_at(until, stream.ready(tokio::io::Interest::READABLE))
            .await
            .ok()?
            .ok()?;
        if ready.is_read_closed() {
            return None;
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep_until((Instant::now() + pause).min(until)).await;
        pause = (pause * 2).min(SNIFF_PAUSE_MAX);
    }
}

/// The first pause of [`sniff`] before it looks again at a preface's start.
const SNIFF_PAUSE: Duration = Duration::from_millis(5);
/// Its longest pause: a client sending the preface a few bytes at a time
/// is read within this of its last byte.
const SNIFF_PAUSE_MAX: Duration = Duration::from_millis(250);

/// Serves an HTTP/2 connection (its preface not yet read) until it closes.
/// `number`: the connection's serial number (`*N`, `$connection`).
pub async fn serve_connection<A: App>(app: &A, stream: TcpStream, number: u64) {
    let shared = Shared {
        client: stream.peer_addr().ok(),
        local: stream.local_addr().ok(),
        number,
        keep_headers: app.reads_sent_headers(),
        conn: Arc::new(ConnFlags {
            last: AtomicBool::new(false),
            idle_ms: AtomicU64::new(KEEPALIVE_TIMEOUT.as_millis() as u64),
        }),
    };
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_connection_window_size(CONN_WINDOW);
    let until = Instant::now() + HEADER_TIMEOUT;
    let mut conn = match tokio::time::timeout_at(until, b.handshake::<_, Bytes>(stream)).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    // The streams in progress, polled by this task together with the
    // connection (whose polling does the reads and writes).
    let mut streams = FuturesUnordered::new();
    // When the GOAWAY was sent.
    let mut closing: Option<Instant> = None;
    let mut idle_since = Instant::now();
    let mut requests: u64 = 0;
    // Once a second: shutdown and the idle timeout.
    let tick = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(tick);
    loop {
        tokio::select! {
            biased;
            Some(()) = streams.next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle_since = Instant::now();
                }
                if closing.is_none() && shared.conn.last.load(Ordering::Relaxed) {
                    closing = Some(Instant::now());
                    conn.graceful_shutdown();
                }
            }
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    requests += 1;
                    let s = H2Session::new(req, respond, &shared, requests);
                    // The future is made in its box (not on the stack and
                    // copied over).
                    streams.push(Box::into_pin(Box::write(
                        Box::new_uninit(),
                        serve_stream(app, s),
                    )));
                }
                // Closed (after a GOAWAY and its last stream), or broken.
                Some(Err(_)) | None => break,
            },
            () = &mut tick => {
                tick.as_mut().reset(Instant::now() + Duration::from_secs(1));
                let keepalive = Duration::from_millis(shared.conn.idle_ms.load(Ordering::Relaxed));
                let idle = streams.is_empty() && idle_since.elapsed() >= keepalive;
                match closing {
                    None if idle || crate::h1::stopping() => {
                        closing = Some(Instant::now());
                        conn.graceful_shutdown();
                    }
                    // The `h2` crate closes once the client has answered
                    // the GOAWAY's PING and no stream is left; a client
                    // that never answers is not waited for.
                    Some(at) if streams.is_empty() && at.elapsed() >= CLOSE_WAIT => break,
                    _ => {}
                }
            }
        }
    }
    // The connection is gone: what the streams still write fails.
    while streams.next().await.is_some() {}
}

async fn serve_stream<A: App>(app: &A, mut s: H2Session) {
    let ok = app.serve_h2(&mut s).await;
    if !ok || s.out != Out::Finished {
        s.reset(Reason::INTERNAL_ERROR);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Out {
    /// No response header yet.
    NotStarted,
    /// Body to follow: bytes left of its Content-Length, if it has one.
    Open(Option<u64>),
    /// The stream's end was sent (or it was reset).
    Finished,
}

/// One request (stream) on an HTTP/2 connection.
pub struct H2Session {
    req: RequestHeader,
    body: RecvStream,
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    /// The response header as sent; its map is empty unless
    /// [`App::reads_sent_headers`] (the map went to the `h2` crate).
    resp: Option<Box<ResponseHeader>>,
    keep_headers: bool,
    out: Out,
    client: Option<SocketAddr>,
    local: Option<SocketAddr>,
    number: u64,
    body_read: usize,
    body_sent: usize,
    /// This stream's place among the connection's (1 for the first).
    requests: u64,
    /// What the stream tells its connection.
    conn: Arc<ConnFlags>,
}

/// What a connection's streams share.
struct Shared {
    client: Option<SocketAddr>,
    local: Option<SocketAddr>,
    number: u64,
    /// [`App::reads_sent_headers`].
    keep_headers: bool,
    conn: Arc<ConnFlags>,
}

/// What a stream tells its connection.
struct ConnFlags {
    /// Set by a stream that is the last its server allows on the
    /// connection (`keepalive_requests`, `keepalive_timeout 0`): GOAWAY
    /// once it is done.
    last: AtomicBool,
    /// The `keepalive_timeout` of the last stream's server, in ms: how long
    /// the connection is kept without streams.
    idle_ms: AtomicU64,
}

fn err(t: ErrorType, msg: &'static str) -> Box<Error> {
    Error::explain(t, msg)
}

/// Headers HTTP/2 forbids (RFC 9113, 8.2.2); the `h2` crate refuses a
/// response with any of them.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

impl H2Session {
    fn new(
        req: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
        c: &Shared,
        requests: u64,
    ) -> H2Session {
        let (parts, body) = req.into_parts();
        H2Session {
            req: RequestHeader::from(parts),
            body,
            respond,
            send: None,
            resp: None,
            keep_headers: c.keep_headers,
            out: Out::NotStarted,
            client: c.client,
            local: c.local,
            number: c.number,
            body_read: 0,
            body_sent: 0,
            requests,
            conn: c.conn.clone(),
        }
    }

    fn reset(&mut self, reason: Reason) {
        match self.send.as_mut() {
            Some(s) => s.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
        self.send = None;
        self.out = Out::Finished;
    }

    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.body.is_end_stream() {
                return Ok(None);
            }
            match self.body.data().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::because(ErrorType::ReadError, "reading body", e));
                }
                Some(Ok(b)) => {
                    // The window is given back as the data is taken: how
                    // much the client may send ahead stays bounded.
                    let _ = self.body.flow_control().release_capacity(b.len());
                    if b.is_empty() {
                        continue;
                    }
                    self.body_read += b.len();
                    return Ok(Some(b));
                }
            }
        }
    }

    fn write_header(&mut self, mut h: Box<ResponseHeader>, end: bool) -> Result<()> {
        // One response per stream; an interim (1xx) one is not sent.
        if self.out != Out::NotStarted || h.status.is_informational() {
            return Ok(());
        }
        let status = h.status.as_u16();
        let len = h
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bodyless = self.req.method == http::Method::HEAD || status == 204 || status == 304;
        let eos = end || bodyless || len == Some(0);
        // The `h2` crate takes a map of its own: a copy where the access
        // log reads the one kept here, else this one.
        let mut headers = if self.keep_headers {
            h.headers.clone()
        } else {
            // Kept: the status alone.
            let (mut parts, ()) = http::Response::new(()).into_parts();
            parts.status = h.status;
            let sent = std::mem::replace(&mut *h, ResponseHeader::from(parts));
            http::response::Parts::from(sent).headers
        };
        if headers.keys().any(is_hop_by_hop) {
            for name in HOP_BY_HOP {
                headers.remove(name);
            }
        }
        if !headers.contains_key(http::header::DATE) {
            let date = pingora_core::protocols::http::date::get_cached_date();
            headers.insert(http::header::DATE, date.clone());
        }
        let mut resp = http::Response::new(());
        *resp.status_mut() = h.status;
        *resp.headers_mut() = headers;
        let send = self
            .respond
            .send_response(resp, eos)
            .map_err(|e| Error::because(ErrorType::WriteError, "writing the response header", e))?;
        self.resp = Some(h);
        if eos {
            self.out = Out::Finished;
        } else {
            self.out = Out::Open(len);
            self.send = Some(send);
        }
        Ok(())
    }

    async fn write_body(&mut self, data: Option<Bytes>, end: bool) -> Result<()> {
        let left = match self.out {
            Out::NotStarted => {
                return Err(err(
                    ErrorType::WriteError,
                    "body before the response header",
                ))
            }
            Out::Finished => return Ok(()),
            Out::Open(left) => left,
        };
        let Some(send) = self.send.as_mut() else {
            return Ok(());
        };
        let mut data = data.unwrap_or_default();
        if let Some(l) = left {
            if data.len() as u64 > l {
                data.truncate(l as usize);
            }
        }
        let left = left.map(|l| l - data.len() as u64);
        if end && left.is_some_and(|l| l > 0) {
            // Shorter than announced: the client must see it truncated.
            let _ = send_all(send, data, false).await;
            self.reset(Reason::INTERNAL_ERROR);
            return Err(err(
                ErrorType::WriteError,
                "response body shorter than its length",
            ));
        }
        let last = end || left == Some(0);
        let n = data.len();
        let r = send_all(send, data, last).await;
        if r.is_err() {
            self.reset(Reason::INTERNAL_ERROR);
            return r;
        }
        self.body_sent += n;
        self.out = if last { Out::Finished } else { Out::Open(left) };
        if last {
            self.send = None;
        }
        Ok(())
    }
}

/// Sends `data` as the flow-control window allows (waiting at most
/// `send_timeout` for each opening), so no more than the window is
/// buffered; `last` ends the stream.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes, last: bool) -> Result<()> {
    let e = |e| Error::because(ErrorType::WriteError, "writing to client", e);
    if data.is_empty() {
        if last {
            send.send_data(data, true).map_err(e)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = match tokio::time::timeout(
            SEND_TIMEOUT,
            std::future::poll_fn(|cx| send.poll_capacity(cx)),
        )
        .await
        {
            Ok(Some(Ok(n))) => n,
            Ok(Some(Err(x))) => return Err(e(x)),
            Ok(None) => return Err(err(ErrorType::WriteError, "the client closed the stream")),
            Err(_) => return Err(err(ErrorType::WriteTimedout, "client timed out")),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        send.send_data(chunk, last && data.is_empty()).map_err(e)?;
    }
    Ok(())
}

impl Downstream for H2Session {
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
    fn is_http2(&self) -> bool {
        true
    }
    fn titles_header_names(&self) -> bool {
        // HTTP/2 sends every name in lower case.
        true
    }
    fn is_body_done(&mut self) -> bool {
        self.body.is_end_stream()
    }
    async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        self.read_body().await
    }
    async fn write_response_header(&mut self, h: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.write_header(h, end)
    }
    fn write_response_body(
        &mut self,
        data: Option<Bytes>,
        end: bool,
    ) -> impl std::future::Future<Output = Result<()>> + Send {
        self.write_body(data, end)
    }
    fn set_keepalive(&mut self, _secs: Option<u64>) {}
    fn response_written(&self) -> Option<&ResponseHeader> {
        self.resp.as_deref()
    }
    fn connection_number(&self) -> Option<u64> {
        Some(self.number)
    }
    fn limit_requests(&mut self, max: u64) {
        if self.requests >= max {
            self.conn.last.store(true, Ordering::Relaxed);
        }
    }
    fn set_idle_timeout(&mut self, t: Duration) {
        if t.is_zero() {
            self.conn.last.store(true, Ordering::Relaxed);
        }
        self.conn
            .idle_ms
            .store(t.as_millis() as u64, Ordering::Relaxed);
    }
    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }
    fn body_bytes_read(&self) -> usize {
        self.body_read
    }
    fn raw_request_header(&self) -> Bytes {
        Bytes::new()
    }
}
