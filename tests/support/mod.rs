//! Helpers shared by the integration tests (`tests/it/main.rs` does `mod support;`
//! or `#[path = "../support/mod.rs"] mod support;`).
//!
//! Everything here is blocking and bounded by explicit timeouts.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

mod ports;
pub use ports::free_port;

/// A fresh temp dir under /tmp with a short name (unix socket paths must stay < 108 bytes).
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("why502-")
        .tempdir_in("/tmp")
        .expect("create temp dir in /tmp")
}

/// Wait until `addr` accepts a connection. `addr` is "host:port" or "unix:/path".
/// Returns false after `timeout`.
pub fn wait_for_port(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let ok = if let Some(path) = addr.strip_prefix("unix:") {
            UnixStream::connect(path).is_ok()
        } else {
            match addr.to_socket_addrs() {
                Ok(mut it) => {
                    it.any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
                }
                Err(_) => false,
            }
        };
        if ok {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of the php-fpm binary; panics loudly if it is missing. Tests must never skip silently.
pub fn php_fpm_or_panic() -> PathBuf {
    match why502::fpm::Fpm::binary() {
        Ok(p) => p,
        Err(e) => panic!(
            "\n\n==================== PHP-FPM IS REQUIRED ====================\n\
             {e}\n\
             These tests run against a real PHP-FPM and are never skipped.\n\
             =============================================================\n"
        ),
    }
}

/// How the response body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HEAD, 1xx, 204, 304: no body by definition.
    NoBody,
    ContentLength(u64),
    Chunked,
    /// No Content-Length, not chunked: body ends when the connection closes.
    UntilClose,
}

/// What the raw client saw. Never panics on a broken response: inspect the fields.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// 0 if no status line was received.
    pub status: u16,
    pub reason: String,
    /// "HTTP/1.1" etc.
    pub version: String,
    /// In received order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunk framing removed), possibly partial.
    pub body: Vec<u8>,
    pub framing: Framing,
    /// The whole body arrived: Content-Length bytes all read / chunked `0\r\n\r\n` seen /
    /// close-delimited body ended by a clean EOF / no body expected.
    pub complete: bool,
    /// The server closed the connection (EOF or reset) by the time we stopped reading.
    /// For a complete keep-alive response it is checked without waiting (or up to 1 s
    /// when the response said `Connection: close`).
    pub closed: bool,
    /// The connection was reset (ECONNRESET / EPIPE).
    pub reset: bool,
    /// I/O error, timeout or parse error that stopped reading, if any.
    pub error: Option<String>,
    /// Bytes received after the status line and headers, raw (chunk framing included).
    pub raw_body: Vec<u8>,
}

impl HttpResponse {
    fn empty() -> Self {
        HttpResponse {
            status: 0,
            reason: String::new(),
            version: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::NoBody,
            complete: false,
            closed: false,
            reset: false,
            error: None,
            raw_body: Vec::new(),
        }
    }

    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header (case-insensitive).
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Complete and, for chunked/Content-Length, properly terminated: the opposite of
    /// "client response aborted".
    pub fn is_complete(&self) -> bool {
        self.complete && self.error.is_none()
    }
}

/// A request for [`http`].
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    /// Extra headers. `Host` and `Connection: close` are added unless given here;
    /// `Content-Length` is added for a non-empty body (or POST/PUT/PATCH) unless
    /// `Content-Length` or `Transfer-Encoding` is given.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whole-exchange deadline (connect + write + read). Default 30 s.
    pub timeout: Duration,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Req {
        let mut r = Req::new("POST", path);
        r.body = body.into();
        r
    }
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Req {
        self.timeout = t;
        self
    }
    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
    /// The bytes put on the wire.
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut s = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self.has("host") {
            s.push_str(&format!("Host: {host}\r\n"));
        }
        if !self.has("connection") {
            s.push_str("Connection: close\r\n");
        }
        let bodyful = matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if (!self.body.is_empty() || bodyful)
            && !self.has("content-length")
            && !self.has("transfer-encoding")
        {
            s.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        let mut b = s.into_bytes();
        b.extend_from_slice(&self.body);
        b
    }
}

/// `GET path` with `Connection: close`, 30 s deadline.
pub fn http_get(addr: &str, path: &str) -> HttpResponse {
    http(addr, &Req::get(path))
}

/// Send `req` to `addr` ("127.0.0.1:PORT") on a new connection and read one response.
pub fn http(addr: &str, req: &Req) -> HttpResponse {
    let bytes = req.to_bytes(addr);
    http_raw(
        addr,
        &bytes,
        req.method.eq_ignore_ascii_case("HEAD"),
        req.timeout,
    )
}

/// Send raw bytes on a new connection and read one response (`head`: it answers a HEAD).
/// A connect or write failure is reported in `error` with status 0 (a write failure
/// still reads whatever response arrived).
pub fn http_raw(addr: &str, raw: &[u8], head: bool, timeout: Duration) -> HttpResponse {
    let deadline = Instant::now() + timeout;
    let mut stream = match connect(addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            let mut r = HttpResponse::empty();
            r.error = Some(format!("connect {addr}: {e}"));
            return r;
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(timeout));
    let write_err = stream.write_all(raw).and_then(|_| stream.flush()).err();
    let mut r = read_response(&mut stream, head, deadline);
    if let (Some(e), 0) = (&write_err, r.status) {
        r.error = Some(format!(
            "write: {e}; then {}",
            r.error.clone().unwrap_or_default()
        ));
    }
    r
}

fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address")))
}

/// Reader state shared by the parsing steps.
struct Conn<'a> {
    s: &'a mut TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
    eof: bool,
    reset: bool,
    error: Option<String>,
}

impl Conn<'_> {
    /// Read more bytes into buf. Returns false when nothing more can come (EOF/error/timeout).
    fn fill(&mut self) -> bool {
        if self.eof || self.error.is_some() {
            return false;
        }
        let now = Instant::now();
        if now >= self.deadline {
            self.error = Some("timeout".into());
            return false;
        }
        let _ = self
            .s
            .set_read_timeout(Some((self.deadline - now).max(Duration::from_millis(1))));
        let mut tmp = [0u8; 65536];
        loop {
            match self.s.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    return false;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.error = Some("timeout".into());
                    return false;
                }
                Err(e) => {
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::BrokenPipe
                            | ErrorKind::ConnectionAborted
                    ) {
                        self.reset = true;
                    }
                    self.error = Some(e.to_string());
                    return false;
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from >= hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Read one response from an open connection (for keep-alive tests, call it repeatedly).
pub fn read_response(s: &mut TcpStream, head: bool, deadline: Instant) -> HttpResponse {
    let mut r = HttpResponse::empty();
    let mut c = Conn {
        s,
        deadline,
        buf: Vec::new(),
        eof: false,
        reset: false,
        error: None,
    };

    // Status line + headers, skipping interim 1xx responses (bounded).
    let mut body_start = 0;
    for _ in 0..10 {
        let end = loop {
            if let Some(p) = find(&c.buf, b"\r\n\r\n", 0) {
                break Some(p);
            }
            if c.buf.len() > (1 << 20) {
                c.error = Some("response header block > 1 MiB".into());
                break None;
            }
            if !c.fill() {
                break None;
            }
        };
        let Some(end) = end else {
            r.closed = c.eof || c.reset;
            r.reset = c.reset;
            r.error = Some(c.error.take().unwrap_or_else(|| {
                if c.buf.is_empty() {
                    "connection closed before any response byte".into()
                } else {
                    format!(
                        "connection closed inside the response head ({} bytes)",
                        c.buf.len()
                    )
                }
            }));
            r.raw_body = std::mem::take(&mut c.buf);
            return r;
        };
        let head_text = String::from_utf8_lossy(&c.buf[..end]).into_owned();
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        r.version = parts.next().unwrap_or("").to_string();
        r.status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        r.reason = parts.next().unwrap_or("").to_string();
        r.headers = lines
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        c.buf.drain(..end + 4);
        if r.status == 0 || !r.version.starts_with("HTTP/") {
            r.error = Some(format!("bad status line: {status_line:?}"));
            return r;
        }
        if (100..200).contains(&r.status) && r.status != 101 {
            continue;
        }
        body_start = 1;
        break;
    }
    if body_start == 0 {
        r.error = Some("too many interim responses".into());
        return r;
    }

    let te_chunked = r
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let cl = r
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    r.framing = if head || r.status == 204 || r.status == 304 || (100..200).contains(&r.status) {
        Framing::NoBody
    } else if te_chunked {
        Framing::Chunked
    } else if let Some(n) = cl {
        Framing::ContentLength(n)
    } else {
        Framing::UntilClose
    };

    match r.framing {
        Framing::NoBody => r.complete = true,
        Framing::ContentLength(n) => {
            while (c.buf.len() as u64) < n && c.fill() {}
            r.complete = c.buf.len() as u64 >= n;
            r.raw_body = c.buf.clone();
            r.body = c.buf[..(n.min(c.buf.len() as u64) as usize)].to_vec();
            if !r.complete && c.error.is_none() {
                c.error = Some(format!(
                    "connection closed after {} of {} body bytes",
                    c.buf.len(),
                    n
                ));
            }
        }
        Framing::UntilClose => {
            while c.fill() {}
            r.complete = c.eof && c.error.is_none();
            r.raw_body = c.buf.clone();
            r.body = c.buf.clone();
        }
        Framing::Chunked => {
            let mut pos = 0usize;
            let mut body = Vec::new();
            let mut done = false;
            let mut bad: Option<String> = None;
            for _ in 0..10_000_000 {
                // Try to parse one chunk at `pos`.
                let step = (|| -> Result<Option<usize>, String> {
                    let Some(le) = find(&c.buf, b"\r\n", pos) else {
                        return Ok(None);
                    };
                    let line = String::from_utf8_lossy(&c.buf[pos..le]).into_owned();
                    let size_str = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_str, 16)
                        .map_err(|_| format!("bad chunk size line {line:?}"))?;
                    let data = le + 2;
                    if size == 0 {
                        // Trailers end with an empty line.
                        if c.buf.len() >= data + 2 && &c.buf[data..data + 2] == b"\r\n" {
                            return Ok(Some(usize::MAX));
                        }
                        return Ok(find(&c.buf, b"\r\n\r\n", data).map(|_| usize::MAX));
                    }
                    if c.buf.len() < data + size + 2 {
                        return Ok(None);
                    }
                    if &c.buf[data + size..data + size + 2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    body.extend_from_slice(&c.buf[data..data + size]);
                    Ok(Some(data + size + 2))
                })();
                match step {
                    Ok(Some(usize::MAX)) => {
                        done = true;
                        break;
                    }
                    Ok(Some(next)) => pos = next,
                    Ok(None) => {
                        if !c.fill() {
                            break;
                        }
                    }
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            // Partial last chunk: keep the bytes that did arrive.
            if !done {
                if let Some(le) = find(&c.buf, b"\r\n", pos) {
                    let avail = &c.buf[(le + 2).min(c.buf.len())..];
                    let line = String::from_utf8_lossy(&c.buf[pos..le]).into_owned();
                    if let Ok(size) =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    {
                        body.extend_from_slice(&avail[..size.min(avail.len())]);
                    }
                }
            }
            r.complete = done;
            r.body = body;
            r.raw_body = c.buf.clone();
            if let Some(b) = bad {
                c.error = Some(b);
            } else if !done && c.error.is_none() {
                c.error =
                    Some("connection closed before the chunked terminator 0\\r\\n\\r\\n".into());
            }
        }
    }

    // Did the server close? Wait a little only when it announced it would.
    if !(c.eof || c.reset) && c.error.is_none() {
        let announced = r
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || r.version == "HTTP/1.0";
        let wait = if announced {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(1)
        };
        let _ = c.s.set_read_timeout(Some(wait));
        let mut tmp = [0u8; 1];
        match c.s.peek(&mut tmp) {
            Ok(0) => c.eof = true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                c.reset = true
            }
            Err(_) => {}
        }
    }
    r.closed = c.eof || c.reset;
    r.reset = c.reset;
    r.error = c.error;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_once(resp: &'static [u8], close_after: bool) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            s.write_all(resp).unwrap();
            if !close_after {
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        addr
    }

    #[test]
    fn chunked_complete_and_aborted() {
        let a = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            true,
        );
        let r = http_get(&a, "/");
        assert_eq!(r.body, b"abc");
        assert!(r.is_complete() && r.closed, "{r:?}");
        let a = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nde",
            true,
        );
        let r = http_get(&a, "/");
        assert_eq!(r.body, b"abcde");
        assert!(!r.complete && r.closed, "{r:?}");
    }

    #[test]
    fn content_length_short() {
        let a = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true);
        let r = http_get(&a, "/");
        assert!(!r.complete && r.closed && r.error.is_some(), "{r:?}");
        let a = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false);
        let r = http_get(&a, "/");
        assert!(r.is_complete() && !r.closed, "{r:?}");
    }
}
