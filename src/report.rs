//! The reporting surfaces for a diagnosed failure: the cause header, RFC 9209
//! `Proxy-Status`, the error page (HTML or JSON), the nginx-format error-log
//! line and the structured `tracing` event. Every failure goes through
//! [`Reporter::report`] so the four always agree.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::cause::{Cause, Phase};
use crate::config::{Diagnostics, LogLevel};

/// One diagnosed failure.
#[derive(Debug, Clone)]
pub struct Failure {
    pub cause: Cause,
    /// nginx's message for the event, without the "while ..." phrase, e.g.
    /// `connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file or directory)`.
    pub nginx_message: String,
    /// Runtime details shown to trusted clients (errno, offending header, stderr, file:line).
    /// Shared: a failure repeated from a cache (a server that is down
    /// fails the same way for every request) keeps the same text, which
    /// the thread's last page then recognises by pointer.
    pub details: Arc<str>,
    /// A hint computed at run time, shown after the table's hint (trusted
    /// only). Shared, like `details`.
    pub extra_hint: Option<Arc<str>>,
    /// The upstream's own status (App causes).
    pub upstream_status: Option<u16>,
}

impl Failure {
    pub fn new(cause: Cause, nginx_message: impl Into<String>, details: impl Into<String>) -> Self {
        Failure {
            cause,
            nginx_message: nginx_message.into(),
            details: Arc::from(details.into()),
            extra_hint: None,
            upstream_status: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.extra_hint = Some(Arc::from(hint.into()));
        self
    }

    /// Status for the client when nothing was sent yet.
    pub fn status(&self) -> u16 {
        self.cause.status(self.upstream_status)
    }

    /// nginx's log level for the event (docs/nginx-compat.md has the table).
    pub fn level(&self) -> &'static str {
        match self.cause {
            // ngx_event_connect_peer: connect() errors are crit, except
            // ECONNREFUSED, EAGAIN, ECONNRESET, ENETDOWN, ENETUNREACH,
            // EHOSTDOWN, EHOSTUNREACH (error).
            Cause::ConnectSocketMissing | Cause::ConnectPermissionDenied => "crit",
            // ngx_event_connect_peer: "socket() failed" is an alert.
            Cause::ConnectSocketFailed => "alert",
            Cause::ConnectFailed => {
                let m = &self.nginx_message;
                if ["(104:", "(100:", "(101:", "(112:", "(113:"]
                    .iter()
                    .any(|e| m.contains(e))
                {
                    "error"
                } else {
                    "crit"
                }
            }
            // The copy filters: "upstream sent more data than specified".
            Cause::BodyTooLong => "warn",
            // Client-side events are info (c->log_error = NGX_ERROR_INFO).
            Cause::ClientClosed | Cause::ClientBodyTimeout => "info",
            _ => "error",
        }
    }
}

/// What the logs say about the request a failure belongs to.
#[derive(Debug, Clone, Default)]
pub struct RequestSummary {
    pub request_id: String,
    /// The client's address; `None` on a unix-socket listener.
    pub client: Option<IpAddr>,
    /// The request's method, target and Host: kept as the request has them
    /// (shared, not copied); read through [`RequestSummary::uri`] and
    /// [`RequestSummary::host`].
    pub method: http::Method,
    pub target: Option<http::uri::PathAndQuery>,
    pub protocol: &'static str,
    pub host_value: Option<http::HeaderValue>,
    pub server_name: Arc<str>,
    /// `fastcgi://unix:/path:` or `fastcgi://127.0.0.1:9000` (nginx style), empty if none.
    pub upstream: Arc<str>,
    /// The next hop as RFC 9209 `next-hop` (`unix:/path`, `127.0.0.1:9000`).
    pub next_hop: Arc<str>,
    pub status: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Milliseconds, to the microsecond (see [`ms_since`]).
    pub connect_ms: Option<f64>,
    pub first_byte_ms: Option<f64>,
    pub total_ms: f64,
    pub stderr_excerpt: String,
    pub conn: u64,
    /// The selected server's own error log (None = the main one).
    pub errlog: Option<Arc<ErrorLog>>,
}

/// Milliseconds since `t`, to the microsecond: the events log then shows
/// `0.005`, not the float noise of `0.005456999999999999`.
pub fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_micros() as f64 / 1000.0
}

impl RequestSummary {
    /// The request target as sent (`/path?args`).
    pub fn uri(&self) -> &str {
        self.target.as_ref().map_or("/", |t| t.as_str())
    }

    /// The client as nginx's error log names it: the address, or `unix:`.
    /// Made when a line is written, not for every request.
    pub fn client_text(&self) -> std::borrow::Cow<'static, str> {
        self.client
            .map_or("unix:".into(), |ip| crate::proxy::vars::ip_text(ip).into())
    }

    /// The Host header (else the target's authority), if there was one.
    pub fn host(&self) -> Option<&str> {
        self.host_value.as_ref().and_then(|h| h.to_str().ok())
    }
}

/// One file (or standard error) error-log lines are written to.
pub struct Sink {
    /// `None`: standard error.
    file: Option<std::fs::File>,
}

impl Sink {
    pub fn open(path: Option<&Path>) -> std::io::Result<Sink> {
        let file = match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        Ok(Sink { file })
    }

    fn write(&self, line: &str) {
        // One write per line, like nginx, and without a lock: the file is
        // opened O_APPEND, so each line lands whole at the end, as the
        // lines of nginx's worker processes do. (A mutex held across the
        // write made the worker threads wait for each other on every 502:
        // half a futex call per request.) A failing log must not fail
        // requests.
        let _ = match &self.file {
            Some(f) => (&*f).write_all(line.as_bytes()),
            None => std::io::stderr().write_all(line.as_bytes()),
        };
    }
}

/// Opened sinks by path (None = standard error), so that every error_log
/// naming a file writes through one handle.
pub type Sinks = HashMap<Option<PathBuf>, Arc<Sink>>;

/// Where nginx-format error-log lines go: one or more sinks, each with the
/// least severe level it takes (nginx's `error_log FILE LEVEL`). A line's
/// level is the `[level]` it carries.
pub struct ErrorLog {
    sinks: Vec<(Arc<Sink>, LogLevel)>,
}

impl std::fmt::Debug for ErrorLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let levels: Vec<&str> = self.sinks.iter().map(|(_, l)| l.as_str()).collect();
        write!(f, "ErrorLog({levels:?})")
    }
}

impl ErrorLog {
    /// One sink (`None` = standard error) taking every level.
    pub fn open(path: Option<&Path>) -> std::io::Result<ErrorLog> {
        Ok(ErrorLog {
            sinks: vec![(Arc::new(Sink::open(path)?), LogLevel::Debug)],
        })
    }

    /// The sinks `targets` name, opened once each through `opened`.
    pub fn open_targets<'a>(
        targets: impl IntoIterator<Item = (Option<&'a Path>, LogLevel)>,
        opened: &mut Sinks,
    ) -> std::io::Result<ErrorLog> {
        let mut sinks = Vec::new();
        for (path, level) in targets {
            let key = path.map(Path::to_path_buf);
            let sink = match opened.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Sink::open(path)?);
                    opened.insert(key, s.clone());
                    s
                }
            };
            sinks.push((sink, level));
        }
        Ok(ErrorLog { sinks })
    }

    /// Writes a line made by [`nginx_line`] to every sink whose level
    /// takes the line's level.
    pub fn write_line(&self, line: &str) {
        let level = line_level(line);
        for (sink, max) in &self.sinks {
            if level <= *max {
                sink.write(line);
            }
        }
    }

    /// The log for a request: its server's own, else this one.
    pub fn for_req<'a>(&'a self, req: &'a RequestSummary) -> &'a ErrorLog {
        req.errlog.as_deref().unwrap_or(self)
    }
}

/// The level of an nginx error-log line (`2024/05/01 12:00:00 [crit] ...`);
/// `error` if it has none.
fn line_level(line: &str) -> LogLevel {
    line.get(19..)
        .and_then(|r| r.strip_prefix(" ["))
        .and_then(|r| r.split_once(']'))
        .and_then(|(l, _)| LogLevel::parse(l))
        .unwrap_or(LogLevel::Error)
}

/// nginx caps error-log lines at 2048 bytes (NGX_MAX_ERROR_STR).
const MAX_LINE: usize = 2048;

/// An error-log line about the process rather than a request (with the
/// trailing newline): `2024/05/01 12:00:00 [alert] 1234#0: message`,
/// capped at nginx's line length as request lines are.
pub fn process_line(level: &str, message: &str) -> String {
    let mut s = String::with_capacity(64 + message.len().min(MAX_LINE));
    push_line_head(&mut s, level);
    s.push_str(message);
    truncate_at_char(&mut s, MAX_LINE - 1);
    s.push('\n');
    s
}

/// nginx's `[crit] accept4() failed (24: Too many open files)` for a
/// listener whose `accept()` failed, why502's own or Pingora's: at most one
/// line a second for the whole process (a listener out of descriptors
/// fails its accept every few milliseconds until one is freed).
pub fn accept_failed(errlog: &ErrorLog, e: &std::io::Error) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let now = std::time::Instant::now();
    if let Ok(mut last) = LAST.lock() {
        if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
    }
    let msg = format!("accept4() failed {}", crate::upstream::errno_text(e));
    errlog.write_line(&process_line("crit", &msg));
}

/// nginx's `[info]` message for a TLS handshake that failed on one of
/// Pingora's listeners, from the message Pingora logs for it
/// (`Downstream handshake error from 127.0.0.1:40000:  TLSHandshakeFailure
/// context: TLS accept() failed: error:0A0000F4:SSL
/// routines:ossl_statem_server_read_transition:unexpected
/// message:ssl/statem/statem_srvr.c:342:`), or `None` if `message` is not
/// one. OpenSSL's error is written as nginx writes it (`error:0A0000F4:SSL
/// routines::unexpected message`); a connection closed during the handshake
/// is nginx's `peer closed connection in SSL handshake`; and plain HTTP sent
/// to the port is nginx's `client sent plain HTTP request to HTTPS port`
/// (nginx then answers 400, which Pingora's closed connection cannot).
/// These lines lack nginx's `, server: ADDR`: Pingora's message does not
/// name the listener.
pub fn tls_handshake_failed(message: &str) -> Option<String> {
    const WHILE: &str = " while SSL handshaking";
    if message.starts_with("Downstream handshake timeout") {
        return Some(format!(
            "client timed out (110: Connection timed out){WHILE}"
        ));
    }
    let rest = message.strip_prefix("Downstream handshake error")?;
    let (client, err) = match rest.strip_prefix(" from ") {
        Some(r) => {
            let (addr, err) = r.split_once(": ")?;
            let ip = addr
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| addr.to_string());
            (Some(ip), err)
        }
        None => (None, rest.strip_prefix(": ")?),
    };
    let err = err.trim();
    let err = err
        .rsplit_once("TLS accept() failed: ")
        .map_or(err, |(_, e)| e);
    let what = if err == "unexpected EOF" {
        "peer closed connection in SSL handshake".to_string()
    } else if let Some(e) = openssl_error(err) {
        if e.ends_with("::http request") {
            "client sent plain HTTP request to HTTPS port".to_string()
        } else {
            format!("SSL_do_handshake() failed (SSL: {e})")
        }
    } else {
        format!("SSL_do_handshake() failed ({err})")
    };
    let client = client.map(|c| format!(", client: {c}")).unwrap_or_default();
    Some(format!("{what}{WHILE}{client}"))
}

/// OpenSSL's error as the openssl crate writes it
/// (`error:CODE:LIB:FUNCTION:REASON:FILE:LINE:`), as OpenSSL 3's
/// `ERR_error_string_n` does, which nginx logs: `error:CODE:LIB::REASON`.
fn openssl_error(text: &str) -> Option<String> {
    let mut parts = text.splitn(6, ':');
    let (Some("error"), Some(code), Some(lib), Some(_function), Some(reason)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("error:{code}:{lib}::{reason}"))
}

/// The errno in an error's text, as Rust's `io::Error` writes it
/// (`Too many open files (os error 24)`).
pub fn os_error_in(text: &str) -> Option<i32> {
    let (_, rest) = text.rsplit_once("(os error ")?;
    rest.split_once(')')?.0.parse().ok()
}

/// The start every error-log line has: `2024/05/01 12:00:00 [level] PID#0: `.
fn push_line_head(s: &mut String, level: &str) {
    // getpid() is a system call each time: ask once.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    push_log_time(s);
    // Pieces pushed one by one: `write!` costs most of the line.
    let mut num = itoa::Buffer::new();
    for part in [" [", level, "] ", num.format(pid), "#0: "] {
        s.push_str(part);
    }
}

/// Formats one nginx error-log line (with the trailing newline).
pub fn nginx_line(
    level: &str,
    message: &str,
    phase_while: Option<&str>,
    req: &RequestSummary,
) -> String {
    let client = req.client_text();
    let mut s = String::with_capacity(512);
    push_line_head(&mut s, level);
    let mut num = itoa::Buffer::new();
    for part in ["*", num.format(req.conn), " ", message] {
        s.push_str(part);
    }
    if let Some(w) = phase_while {
        s.push(' ');
        s.push_str(w);
    }
    for part in [
        ", client: ",
        &client,
        ", server: ",
        &*req.server_name,
        ", request: \"",
        req.method.as_str(),
        " ",
        req.uri(),
        " ",
        req.protocol,
        "\"",
    ] {
        s.push_str(part);
    }
    if !req.upstream.is_empty() {
        // nginx frees the peer before it logs a timeout: a unix socket's
        // name then lacks the ":" that separates it from the URI.
        let up = match message.starts_with("upstream timed out") {
            true => req.upstream.strip_suffix(':').unwrap_or(&req.upstream),
            false => &req.upstream,
        };
        for part in [", upstream: \"", up, "\""] {
            s.push_str(part);
        }
    }
    if let Some(h) = req.host() {
        for part in [", host: \"", h, "\""] {
            s.push_str(part);
        }
    }
    truncate_at_char(&mut s, MAX_LINE - 1);
    s.push('\n');
    s
}

/// Appends the local time as nginx logs it (`2024/05/01 12:00:00`). Like
/// nginx, the text is made once per second (per thread), not per line:
/// formatting local time is most of the cost of a log line.
fn push_log_time(s: &mut String) {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1.clear();
            let _ = write!(c.1, "{}", chrono::Local::now().format("%Y/%m/%d %H:%M:%S"));
            c.0 = secs;
        }
        s.push_str(&c.1);
    });
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut i = max;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
}

/// Escapes a string for an RFC 8941 sf-string (printable ASCII only).
pub fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().take(512) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// The explanation and hint paragraphs of a cause's page, escaped once per
/// cause (they are static text) instead of on every failure.
fn escaped_text(cause: Cause) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<(Cause, String)>> = std::sync::OnceLock::new();
    let all = TEXTS.get_or_init(|| {
        Cause::ALL
            .iter()
            .map(|&c| {
                let info = c.info();
                let text = format!(
                    "<p id=\"explanation\">{}</p>\n<p id=\"hint\"><strong>What to check:</strong> {}</p>\n",
                    html_escape(info.explanation),
                    html_escape(info.hint)
                );
                (c, text)
            })
            .collect()
    });
    all.iter()
        .find(|(c, _)| *c == cause)
        .map(|(_, t)| t.as_str())
        .unwrap_or("")
}

/// Escapes text for an HTML element's content (never an attribute's value:
/// quotes are left as they are).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    // The escaped characters are ASCII: copy the runs between them whole.
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        out.push_str(rep);
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out
}

/// nginx's page for a status (`detail`, if any, as nginx's second line, e.g.
/// "Request Header Or Cookie Too Large", which also replaces the reason in
/// the title).
pub fn status_page(code: u16, detail: &str) -> String {
    let reason = reason_phrase(code);
    let mut digits = itoa::Buffer::new();
    let code = digits.format(code);
    let title = if detail.is_empty() { reason } else { detail };
    // Pushed piece by piece: `format!` cost a 404 or a 502 about 1,000
    // instructions (docs/benchmarks.md).
    let mut s = String::with_capacity(160 + 2 * detail.len());
    for part in [
        "<html>\r\n<head><title>",
        code,
        " ",
        title,
        "</title></head>\r\n<body>\r\n<center><h1>",
        code,
        " ",
        reason,
        "</h1></center>\r\n",
    ] {
        s.push_str(part);
    }
    if !detail.is_empty() {
        for part in ["<center>", detail, "</center>\r\n"] {
            s.push_str(part);
        }
    }
    s.push_str("<hr><center>why502</center>\r\n</body>\r\n</html>\r\n");
    s
}

pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or(match status {
            499 => "Client Closed Request",
            _ => "Error",
        })
}

/// The form of a failure's page, chosen from the request's `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageForm {
    /// For a client that lists HTML: a browser, for a page it shows.
    Html,
    /// For a client that asks for JSON and not for HTML.
    Json,
    /// For every other client: curl and wget (`*/*`), scripts, health
    /// checks and load generators (often no `Accept` at all). Read in a
    /// terminal, markup is noise.
    Text,
}

impl PageForm {
    /// The form for an `Accept` header's value (media types compared
    /// without regard to case; weights are not read).
    pub fn from_accept(accept: Option<&[u8]>) -> PageForm {
        let Some(a) = accept else {
            return PageForm::Text;
        };
        let has = |what: &[u8]| a.windows(what.len()).any(|w| w.eq_ignore_ascii_case(what));
        if has(b"text/html") || has(b"application/xhtml+xml") {
            PageForm::Html
        } else if has(b"/json") || has(b"+json") {
            PageForm::Json
        } else {
            PageForm::Text
        }
    }
}

/// Builds the client-facing parts of a failure report.
pub struct Rendered {
    pub status: u16,
    /// The diagnosis headers' values (cause, request id, Proxy-Status),
    /// when diagnosis is on; `None` for a value that cannot be a header
    /// value.
    pub headers: Option<[Option<http::HeaderValue>; 3]>,
    /// Made at compile time: `HeaderValue::from_static` checks its bytes
    /// when called at run time.
    pub content_type: http::HeaderValue,
    /// The body in two pieces, one after the other: for a page, the part
    /// that is the same for the same failure (shared with the page kept
    /// per thread, not copied), and the request id's part.
    pub body: [Bytes; 2],
}

impl Rendered {
    pub fn body_len(&self) -> usize {
        self.body[0].len() + self.body[1].len()
    }

    /// The whole body as text.
    #[cfg(test)]
    fn text(&self) -> String {
        self.body
            .iter()
            .map(|b| String::from_utf8_lossy(b))
            .collect()
    }
}

pub fn is_trusted(diag: &Diagnostics, client: Option<IpAddr>) -> bool {
    client.is_some_and(|ip| diag.trusted.iter().any(|n| n.contains(ip)))
}

/// The `Proxy-Status` value for a failure.
pub fn proxy_status(f: &Failure, next_hop: &str, trusted: bool) -> String {
    let info = f.cause.info();
    let mut v = String::from("why502");
    if info.proxy_status.is_empty() {
        if let Some(s) = f.upstream_status {
            let _ = write!(v, "; received-status={s}");
        }
    } else {
        let _ = write!(v, "; error={}", info.proxy_status);
    }
    if trusted {
        if !next_hop.is_empty() {
            let _ = write!(v, "; next-hop={}", sf_string(next_hop));
        }
        let details = if f.details.is_empty() {
            info.code.to_string()
        } else {
            format!("{}: {}", info.code, f.details)
        };
        let _ = write!(v, "; details={}", sf_string(&details));
    } else {
        let _ = write!(v, "; details={}", sf_string(info.code));
    }
    v
}

thread_local! {
    /// The last failure page rendered on this thread.
    static LAST_PAGE: std::cell::RefCell<Option<LastPage>> = const { std::cell::RefCell::new(None) };
}

/// A rendered page up to its request id, and what it was rendered from.
struct LastPage {
    /// `head` is of this form (empty for JSON, rendered whole each time).
    form: PageForm,
    cause: Cause,
    upstream_status: Option<u16>,
    trusted: bool,
    details: Arc<str>,
    extra_hint: Option<Arc<str>>,
    stderr: String,
    next_hop: Arc<str>,
    head: Bytes,
    proxy_status: Option<http::HeaderValue>,
    /// The diagnosis header lines around the request id's, for a session
    /// that writes header lines itself: `Why502-Cause: …\r\n`, and
    /// `Proxy-Status: …\r\n` (empty when it cannot be a header value).
    /// `cause_line` is followed by the request id header's name, to be
    /// written with the id in one go; `cause_len` is the cause line's end.
    cause_line: String,
    cause_len: usize,
    proxy_status_line: String,
}

impl LastPage {
    fn is_for(&self, f: &Failure, req: &RequestSummary, trusted: bool, form: PageForm) -> bool {
        self.form == form
            && self.cause == f.cause
            && self.upstream_status == f.upstream_status
            && self.trusted == trusted
            && (Arc::ptr_eq(&self.details, &f.details) || self.details == f.details)
            && match (&self.extra_hint, &f.extra_hint) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
            // Empty on connect failures: no call into memcmp for nothing.
            && self.stderr.len() == req.stderr_excerpt.len()
            && (self.stderr.is_empty() || self.stderr == req.stderr_excerpt)
            // The same server's name is the same `Arc` (made once).
            && (Arc::ptr_eq(&self.next_hop, &req.next_hop) || self.next_hop == req.next_hop)
    }

    /// After a match by text: keeps the failure's own shared texts, so
    /// that the next requests match by pointer again. A failing upstream's
    /// diagnosis is remade every second (`upstream::connect_failure`), with
    /// new texts equal to the old; without this every request after the
    /// first second compared them byte by byte.
    fn adopt(&mut self, f: &Failure, req: &RequestSummary) {
        if !Arc::ptr_eq(&self.details, &f.details) {
            self.details = f.details.clone();
        }
        if let (Some(a), Some(b)) = (&mut self.extra_hint, &f.extra_hint) {
            if !Arc::ptr_eq(a, b) {
                *a = b.clone();
            }
        }
        if !Arc::ptr_eq(&self.next_hop, &req.next_hop) {
            self.next_hop = req.next_hop.clone();
        }
    }
}

/// Calls `use_it` with the page and Proxy-Status for failure `f`: the last
/// ones rendered on this thread if they were for the same failure.
fn with_last_page<R>(
    f: &Failure,
    req: &RequestSummary,
    trusted: bool,
    form: PageForm,
    use_it: impl FnOnce(&LastPage) -> R,
) -> R {
    LAST_PAGE.with_borrow_mut(|last| {
        let page = match last {
            Some(p) if p.is_for(f, req, trusted, form) => {
                p.adopt(f, req);
                p
            }
            _ => {
                let status = f.status();
                let code = f.cause.info().code;
                let proxy_status = proxy_status(f, &req.next_hop, trusted);
                let proxy_status_value = http::HeaderValue::try_from(proxy_status.as_str()).ok();
                let reason = reason_phrase(status);
                let head = match form {
                    PageForm::Html => page_head(status, reason, code, f, req, trusted),
                    PageForm::Text => text_head(status, reason, code, f, req, trusted),
                    PageForm::Json => String::new(),
                };
                last.insert(LastPage {
                    form,
                    cause: f.cause,
                    upstream_status: f.upstream_status,
                    trusted,
                    details: f.details.clone(),
                    extra_hint: f.extra_hint.clone(),
                    stderr: req.stderr_excerpt.clone(),
                    next_hop: req.next_hop.clone(),
                    head: Bytes::from(head),
                    cause_line: format!(
                        "{}: {code}\r\n{}: ",
                        crate::config::CAUSE_HEADER,
                        crate::config::REQUEST_ID_HEADER
                    ),
                    cause_len: crate::config::CAUSE_HEADER.len() + code.len() + 4,
                    proxy_status_line: if proxy_status_value.is_some() {
                        format!("Proxy-Status: {proxy_status}\r\n")
                    } else {
                        String::new()
                    },
                    proxy_status: proxy_status_value,
                })
            }
        };
        use_it(page)
    })
}

/// The failure page up to the request id.
fn page_head(
    status: u16,
    reason: &str,
    code: &str,
    f: &Failure,
    req: &RequestSummary,
    trusted: bool,
) -> String {
    let mut body = String::with_capacity(4096);
    let _ = write!(
        body,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status} {reason}</title>\n\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46em;margin:3em auto;padding:0 1em}}\
code,pre{{background:#eee}}pre{{padding:.5em;white-space:pre-wrap;word-break:break-all}}.muted{{color:#666}}</style></head>\n\
<body>\n<h1>{status} {reason}</h1>\n<p>Cause: <code id=\"cause\">{code}</code></p>\n"
    );
    if trusted {
        body.push_str(escaped_text(f.cause));
        if let Some(h) = &f.extra_hint {
            let _ = writeln!(
                body,
                "<p id=\"extra-hint\"><strong>Here:</strong> {}</p>",
                html_escape(h)
            );
        }
        if !f.details.is_empty() {
            let _ = writeln!(
                body,
                "<p>Details:</p><pre id=\"details\">{}</pre>",
                html_escape(&f.details)
            );
        }
        if !req.stderr_excerpt.is_empty() {
            let _ = writeln!(
                body,
                "<p>PHP said (stderr):</p><pre id=\"stderr\">{}</pre>",
                html_escape(&req.stderr_excerpt)
            );
        }
        // Not when the details already name it (a connect failure's do).
        if !req.next_hop.is_empty() && !f.details.contains(&*req.next_hop) {
            let _ = writeln!(
                body,
                "<p class=\"muted\">Upstream: <code>{}</code></p>",
                html_escape(&req.next_hop)
            );
        }
    }
    body.push_str("<p class=\"muted\">Request id: <code id=\"request-id\">");
    body
}

/// Text for a terminal: control characters other than line feed and tab
/// (an escape sequence in a PHP message that echoes its input) become `?`,
/// so that printing the page cannot drive the terminal.
fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if s.contains(bad) {
        std::borrow::Cow::Owned(s.replace(bad, "?"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The failure's page as plain text, up to the request id: what the HTML
/// page says, in the same order, one item a line.
fn text_head(
    status: u16,
    reason: &str,
    code: &str,
    f: &Failure,
    req: &RequestSummary,
    trusted: bool,
) -> String {
    let mut body = String::with_capacity(1024);
    let _ = write!(body, "{status} {reason}\nCause: {code}\n");
    if trusted {
        let info = f.cause.info();
        let _ = write!(body, "{}\nWhat to check: {}\n", info.explanation, info.hint);
        if let Some(h) = &f.extra_hint {
            let _ = writeln!(body, "Here: {}", terminal_safe(h));
        }
        if !f.details.is_empty() {
            let _ = writeln!(body, "Details: {}", terminal_safe(&f.details));
        }
        if !req.stderr_excerpt.is_empty() {
            let _ = writeln!(
                body,
                "PHP said (stderr):\n{}",
                terminal_safe(req.stderr_excerpt.trim_end())
            );
        }
        if !req.next_hop.is_empty() && !f.details.contains(&*req.next_hop) {
            let _ = writeln!(body, "Upstream: {}", terminal_safe(&req.next_hop));
        }
    }
    body.push_str("Request id: ");
    body
}

/// Renders the headers and error page for a failure answered by why502.
/// `lines`: for a session that writes header lines itself
/// ([`Downstream::head_lines`]), the diagnosis headers are written there
/// under their default names, and [`Rendered::headers`] is `None`.
///
/// [`Downstream::head_lines`]: crate::proxy::downstream::Downstream::head_lines
pub fn render(
    diag: &Diagnostics,
    f: &Failure,
    req: &RequestSummary,
    form: PageForm,
    lines: Option<&mut Vec<u8>>,
) -> Rendered {
    let status = f.status();
    let trusted = is_trusted(diag, req.client);
    let info = f.cause.info();
    if !diag.enabled {
        // nginx's own page.
        return Rendered {
            status,
            headers: None,
            content_type: const { http::HeaderValue::from_static("text/html") },
            body: [Bytes::from(status_page(status, "")), Bytes::new()],
        };
    }
    // why502's request ids are alphanumeric; anything else is escaped in
    // the page and checked as a header value.
    let plain_id = req.request_id.bytes().all(|b| b.is_ascii_alphanumeric());
    // Values made without a copy where they can be: the cause code is
    // static, Proxy-Status and the header lines are kept with the last
    // page.
    let headers = |p: &LastPage| match lines {
        Some(out) => {
            out.reserve(p.cause_line.len() + p.proxy_status_line.len() + 64);
            if plain_id || http::HeaderValue::from_str(&req.request_id).is_ok() {
                // The cause line and the id header's name, then the id.
                out.extend_from_slice(p.cause_line.as_bytes());
                out.extend_from_slice(req.request_id.as_bytes());
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&p.cause_line.as_bytes()[..p.cause_len]);
            }
            out.extend_from_slice(p.proxy_status_line.as_bytes());
            None
        }
        None => Some([
            Some(http::HeaderValue::from_static(info.code)),
            http::HeaderValue::from_str(&req.request_id).ok(),
            p.proxy_status.clone(),
        ]),
    };
    if form == PageForm::Json {
        let headers = with_last_page(f, req, trusted, form, headers);
        let mut obj = serde_json::json!({
            "status": status,
            "cause": info.code,
            "phase": info.phase.as_str(),
            "request_id": req.request_id,
        });
        if trusted {
            obj["explanation"] = info.explanation.into();
            obj["hint"] = info.hint.into();
            obj["details"] = (&*f.details).into();
            obj["upstream"] = (&*req.next_hop).into();
            if let Some(h) = &f.extra_hint {
                obj["extra_hint"] = (&**h).into();
            }
            if !req.stderr_excerpt.is_empty() {
                obj["stderr"] = req.stderr_excerpt.clone().into();
            }
        }
        let mut body = obj.to_string();
        body.push('\n');
        return Rendered {
            status,
            headers,
            content_type: const { http::HeaderValue::from_static("application/json") },
            body: [Bytes::from(body), Bytes::new()],
        };
    }
    // The page up to the request id is the same for the same failure: a
    // failing upstream fails the same way many times a second, so the last
    // one is kept per thread, shared with the response rather than copied,
    // and only the request id's part is written anew. That part is of its
    // exact size: a `Bytes` made from a vector with room to spare
    // allocates a header of its own.
    let (tail_end, content_type) = match form {
        PageForm::Text => (
            " (why502)\n",
            const { http::HeaderValue::from_static("text/plain; charset=utf-8") },
        ),
        _ => (
            "</code> &middot; why502</p>\n</body></html>\n",
            const { http::HeaderValue::from_static("text/html; charset=utf-8") },
        ),
    };
    let id = if plain_id {
        std::borrow::Cow::Borrowed(req.request_id.as_str())
    } else if form == PageForm::Text {
        terminal_safe(&req.request_id)
    } else {
        std::borrow::Cow::Owned(html_escape(&req.request_id))
    };
    let (head, headers) = with_last_page(f, req, trusted, form, |p| (p.head.clone(), headers(p)));
    let mut tail = String::with_capacity(id.len() + tail_end.len());
    tail.push_str(&id);
    tail.push_str(tail_end);
    Rendered {
        status,
        headers,
        content_type,
        body: [head, Bytes::from(tail)],
    }
}

/// Writes the log records for a failure: one nginx line and one tracing event.
pub fn log_failure(errlog: &ErrorLog, f: &Failure, req: &RequestSummary) {
    let info = f.cause.info();
    let phase_while = match info.phase {
        Phase::App => None,
        p => Some(p.nginx_while()),
    };
    let mut line = nginx_line(f.level(), &f.nginx_message, phase_while, req);
    // why502's addition, after nginx's fields so existing greps keep working.
    line.pop();
    for part in [", cause: ", info.code, ", request_id: ", &req.request_id] {
        line.push_str(part);
    }
    truncate_at_char(&mut line, MAX_LINE - 1);
    line.push('\n');
    errlog.for_req(req).write_line(&line);
    event(f, req);
}

/// The structured event for a failure (JSON lines through `tracing`).
pub fn event(f: &Failure, req: &RequestSummary) {
    let info = f.cause.info();
    tracing::event!(
        target: "why502::failure",
        tracing::Level::ERROR,
        // `&str`, not `%` (Display): recorded without the formatting
        // machinery (docs/benchmarks.md).
        request_id = req.request_id.as_str(),
        client = &*req.client_text(),
        method = req.method.as_str(),
        uri = req.uri(),
        host = req.host().unwrap_or(""),
        upstream = &*req.next_hop,
        cause = info.code,
        phase = info.phase.as_str(),
        status = req.status,
        bytes_sent = req.bytes_sent,
        bytes_received = req.bytes_received,
        connect_ms = req.connect_ms,
        first_byte_ms = req.first_byte_ms,
        total_ms = req.total_ms,
        details = &*f.details,
        stderr = req.stderr_excerpt.as_str(),
        nginx = f.nginx_message.as_str(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_in_pingoras_accept_failure() {
        let text = "Accept() failed  AcceptError context: Fail to accept() cause: Too many open files (os error 24)";
        assert_eq!(os_error_in(text), Some(24));
        assert_eq!(os_error_in("Accept() failed (os error x)"), None);
        assert_eq!(os_error_in("Accept() failed"), None);
    }

    fn req() -> RequestSummary {
        RequestSummary {
            request_id: "abc".into(),
            client: "127.0.0.1".parse().ok(),
            method: http::Method::GET,
            target: Some(http::uri::PathAndQuery::from_static("/x.php")),
            protocol: "HTTP/1.1",
            host_value: Some(http::HeaderValue::from_static("example.test")),
            server_name: "example.test".into(),
            upstream: "fastcgi://unix:/run/php/php8.2-fpm.sock:".into(),
            next_hop: "unix:/run/php/php8.2-fpm.sock".into(),
            conn: 7,
            ..Default::default()
        }
    }

    #[test]
    fn nginx_line_has_nginx_fields() {
        let l = nginx_line(
            "crit",
            "connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file or directory)",
            Some("while connecting to upstream"),
            &req(),
        );
        assert!(l.contains(" [crit] "), "{l}");
        assert!(l.contains("*7 connect() to unix:/run/php/php8.2-fpm.sock failed (2: No such file or directory) while connecting to upstream, client: 127.0.0.1, server: example.test, request: \"GET /x.php HTTP/1.1\", upstream: \"fastcgi://unix:/run/php/php8.2-fpm.sock:\", host: \"example.test\"\n"), "{l}");
        let long = "x".repeat(5000);
        assert!(nginx_line("error", &long, None, &req()).len() <= MAX_LINE);
        let l = process_line("alert", &long);
        assert!(l.len() <= MAX_LINE && l.ends_with("xx\n"), "{}", l.len());
        // nginx has freed the peer when it logs a timeout: no ":" after the socket.
        let l = nginx_line(
            "error",
            "upstream timed out (110: Connection timed out)",
            Some("while reading response header from upstream"),
            &req(),
        );
        assert!(
            l.contains("upstream: \"fastcgi://unix:/run/php/php8.2-fpm.sock\", host"),
            "{l}"
        );
        // The client as nginx names it: IPv6 as written, a unix listener as `unix:`.
        let mut r = req();
        r.client = "::1".parse().ok();
        assert!(nginx_line("error", "m", None, &r).contains(", client: ::1, "));
        r.client = None;
        assert!(nginx_line("error", "m", None, &r).contains(", client: unix:, "));
    }

    fn proxy_status_of(r: &Rendered) -> String {
        let v = r.headers.as_ref().and_then(|h| h[2].as_ref());
        let v = v.expect("a Proxy-Status header");
        v.to_str().expect("text").to_string()
    }

    #[test]
    fn untrusted_clients_see_only_code_and_id() {
        let d = Diagnostics::default();
        let f = Failure::new(Cause::ConnectSocketMissing, "m", "/run/php/secret.sock");
        let mut r = req();
        r.client = "203.0.113.9".parse().ok();
        let out = render(&d, &f, &r, PageForm::Html, None);
        assert!(!out.text().contains("secret"));
        assert!(out.text().contains("connect.socket_missing"));
        let ps = &proxy_status_of(&out);
        assert!(
            !ps.contains("secret") && ps.contains("error=destination_not_found"),
            "{ps}"
        );
        let out = render(&d, &f, &req(), PageForm::Json, None);
        assert!(out.text().contains("secret"));
        let v: serde_json::Value = serde_json::from_str(&out.text()).expect("json");
        assert_eq!(v["cause"], "connect.socket_missing");
    }

    #[test]
    fn the_page_form_follows_accept() {
        let form = |a: Option<&str>| PageForm::from_accept(a.map(str::as_bytes));
        assert_eq!(form(None), PageForm::Text);
        assert_eq!(form(Some("*/*")), PageForm::Text);
        assert_eq!(form(Some("text/plain")), PageForm::Text);
        // Chromium's, for a page it navigates to.
        assert_eq!(
            form(Some(
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            )),
            PageForm::Html
        );
        assert_eq!(form(Some("Text/HTML")), PageForm::Html);
        assert_eq!(form(Some("application/xhtml+xml")), PageForm::Html);
        assert_eq!(form(Some("application/json")), PageForm::Json);
        assert_eq!(form(Some("application/problem+json")), PageForm::Json);
        assert_eq!(form(Some("application/json, text/html")), PageForm::Html);
    }

    #[test]
    fn the_text_page_says_what_the_html_page_says() {
        let d = Diagnostics::default();
        let f = Failure::new(
            Cause::ConnectSocketMissing,
            "m",
            "connect() to unix:/run/php/secret.sock failed <2>",
        )
        .with_hint("a hint & more");
        let mut r = req();
        r.stderr_excerpt = "PHP Fatal error: <b>x</b>\n".into();
        let out = render(&d, &f, &r, PageForm::Text, None);
        // Control characters cannot reach a terminal through the text.
        let mut e = r.clone();
        e.stderr_excerpt = "PHP Warning: \u{1b}]0;owned\u{7}\u{1b}[2J\tend\n".into();
        let esc = render(&d, &f, &e, PageForm::Text, None).text();
        assert!(
            esc.contains("PHP Warning: ?]0;owned??[2J\tend\n") && !esc.contains('\u{1b}'),
            "{esc:?}"
        );
        e.request_id = "a\u{1b}[2Jb".into();
        let esc = render(&d, &f, &e, PageForm::Text, None).text();
        assert!(esc.ends_with("Request id: a?[2Jb (why502)\n"), "{esc:?}");
        assert_eq!(out.content_type, "text/plain; charset=utf-8");
        let text = out.text();
        let info = f.cause.info();
        assert!(
            text.starts_with("502 Bad Gateway\nCause: connect.socket_missing\n"),
            "{text}"
        );
        for want in [
            info.explanation,
            info.hint,
            "Here: a hint & more\n",
            "Details: connect() to unix:/run/php/secret.sock failed <2>\n",
            "PHP said (stderr):\nPHP Fatal error: <b>x</b>\n",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        assert!(text.ends_with("\nRequest id: abc (why502)\n"), "{text}");
        assert!(!text.contains("&amp;") && !text.contains("<p"), "{text}");
        // The HTML page rendered next is not the text one kept.
        let html = render(&d, &f, &r, PageForm::Html, None).text();
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        let again = render(&d, &f, &r, PageForm::Text, None).text();
        assert_eq!(again, text);
        // Untrusted: the code and the id only.
        r.client = "203.0.113.9".parse().ok();
        let text = render(&d, &f, &r, PageForm::Text, None).text();
        assert_eq!(
            text,
            "502 Bad Gateway\nCause: connect.socket_missing\nRequest id: abc (why502)\n"
        );
    }

    #[test]
    fn a_reused_page_is_the_page_rendered_anew() {
        let d = Diagnostics::default();
        let f = Failure::new(Cause::ConnectSocketMissing, "m", "first <details>");
        let mut r = req();
        let a = render(&d, &f, &r, PageForm::Html, None);
        r.request_id = "def".into();
        let b = render(&d, &f, &r, PageForm::Html, None);
        assert_eq!(a.text().replace(">abc<", ">def<"), b.text());
        assert!(b.text().contains("<code id=\"request-id\">def</code>"));
        assert_eq!(proxy_status_of(&a), proxy_status_of(&b));
        // Anything the page shows makes it a new page.
        let g = Failure::new(Cause::ConnectSocketMissing, "m", "second");
        let c = render(&d, &g, &r, PageForm::Html, None);
        assert!(c.text().contains("second") && !c.text().contains("first"));
        assert!(proxy_status_of(&c).contains("second"));
        r.client = "203.0.113.9".parse().ok();
        let untrusted = render(&d, &g, &r, PageForm::Html, None);
        assert!(!untrusted.text().contains("second"));
        r.client = "127.0.0.1".parse().ok();
        r.stderr_excerpt = "PHP Fatal error".into();
        assert!(render(&d, &g, &r, PageForm::Html, None)
            .text()
            .contains("PHP Fatal error"));
        r.request_id = "<x>".into();
        assert!(render(&d, &g, &r, PageForm::Html, None)
            .text()
            .contains(">&lt;x&gt;<"));
    }

    #[test]
    fn the_page_names_the_upstream_once() {
        let d = Diagnostics::default();
        let r = req();
        let upstream_line = "Upstream: <code>unix:/run/php/php8.2-fpm.sock</code>";
        // A connect failure's details name the address: no second line.
        let f = Failure::new(
            Cause::ConnectSocketMissing,
            "m",
            "connect() to unix:/run/php/php8.2-fpm.sock: (2: No such file or directory)",
        );
        let page = render(&d, &f, &r, PageForm::Html, None).text();
        assert_eq!(page.matches("unix:/run/php/php8.2-fpm.sock").count(), 1);
        assert!(!page.contains(upstream_line), "{page}");
        // Details that do not name it: the page does.
        let g = Failure::new(Cause::HeaderClosedEmpty, "m", "closed after 0 bytes");
        let page = render(&d, &g, &r, PageForm::Html, None).text();
        assert!(page.contains(upstream_line), "{page}");
    }

    #[test]
    fn a_page_matched_by_text_takes_the_failures_texts() {
        // A down upstream's diagnosis is remade every second with equal
        // texts in new allocations: the page is reused, and it keeps the
        // new ones so the next requests compare pointers, not bytes.
        let d = Diagnostics::default();
        let f = Failure::new(Cause::ConnectSocketMissing, "m", "the details").with_hint("a hint");
        let r = req();
        let first = render(&d, &f, &r, PageForm::Html, None);
        let g = Failure::new(Cause::ConnectSocketMissing, "m", "the details").with_hint("a hint");
        let mut r2 = req();
        r2.next_hop = Arc::from(&*r.next_hop);
        assert!(!Arc::ptr_eq(&f.details, &g.details));
        let second = render(&d, &g, &r2, PageForm::Html, None);
        assert_eq!(first.body[0].as_ptr(), second.body[0].as_ptr(), "reused");
        // The page's texts are the failure's own, not only equal.
        let shares = |f: &Failure, r: &RequestSummary| {
            LAST_PAGE.with_borrow(|p| {
                p.as_ref().is_some_and(|p| {
                    Arc::ptr_eq(&p.details, &f.details)
                        && p.extra_hint
                            .as_ref()
                            .zip(f.extra_hint.as_ref())
                            .is_some_and(|(a, b)| Arc::ptr_eq(a, b))
                        && Arc::ptr_eq(&p.next_hop, &r.next_hop)
                })
            })
        };
        assert!(shares(&g, &r2), "the page keeps the newer texts");
        assert!(!shares(&f, &r));
    }

    #[test]
    fn header_lines_carry_the_cause_the_id_and_proxy_status() {
        use crate::config::{CAUSE_HEADER, REQUEST_ID_HEADER};
        let d = Diagnostics::default();
        let f = Failure::new(Cause::ConnectSocketMissing, "m", "details");
        let code = f.cause.info().code;
        let mut r = req();
        let lines = |r: &RequestSummary| {
            let mut out = Vec::new();
            render(&d, &f, r, PageForm::Html, Some(&mut out));
            String::from_utf8(out).expect("header lines are text")
        };
        let cause = format!("{CAUSE_HEADER}: {code}\r\n");
        let text = lines(&r);
        assert!(
            text.starts_with(&format!(
                "{cause}{REQUEST_ID_HEADER}: abc\r\nProxy-Status: "
            )),
            "{text}"
        );
        assert!(text.ends_with("\r\n"), "{text}");
        // An id that cannot be a header value is left out; the page kept
        // from the request before gives the same other lines.
        r.request_id = "a\nb".into();
        let text = lines(&r);
        assert!(
            text.starts_with(&format!("{cause}Proxy-Status: ")),
            "{text}"
        );
        assert!(!text.contains(REQUEST_ID_HEADER), "{text}");
    }

    #[test]
    fn error_log_levels_filter_lines() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let mut opened = Sinks::new();
        let log = ErrorLog::open_targets(
            [
                (Some(a.as_path()), LogLevel::Crit),
                (Some(b.as_path()), LogLevel::Info),
            ],
            &mut opened,
        )
        .expect("open");
        // The same file again shares the handle.
        let again =
            ErrorLog::open_targets([(Some(a.as_path()), LogLevel::Error)], &mut opened).expect("a");
        assert_eq!(opened.len(), 2);
        for level in ["crit", "error", "warn", "info", "debug"] {
            log.write_line(&nginx_line(level, level, None, &req()));
        }
        again.write_line(&nginx_line("error", "again", None, &req()));
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        let a = read(&a);
        assert!(a.contains("[crit] ") && a.contains("again"), "{a}");
        assert_eq!(a.lines().count(), 2, "{a}");
        let b = read(&b);
        assert_eq!(b.lines().count(), 4, "{b}");
        assert!(!b.contains("[debug]"), "{b}");
        assert_eq!(line_level("no level here"), LogLevel::Error);
    }

    #[test]
    fn levels_follow_nginx() {
        let f = |c, m: &str| Failure::new(c, m, "").level();
        assert_eq!(f(Cause::ConnectSocketMissing, ""), "crit");
        assert_eq!(f(Cause::ConnectSocketStale, ""), "error");
        assert_eq!(f(Cause::ConnectBacklogFull, ""), "error");
        assert_eq!(
            f(
                Cause::ConnectFailed,
                "connect() failed (99: Cannot assign requested address)"
            ),
            "crit"
        );
        assert_eq!(
            f(
                Cause::ConnectFailed,
                "connect() failed (104: Connection reset by peer)"
            ),
            "error"
        );
        assert_eq!(f(Cause::HeaderTimeout, ""), "error");
        assert_eq!(f(Cause::BodyTooLong, ""), "warn");
        assert_eq!(f(Cause::ClientClosed, ""), "info");
    }

    #[test]
    fn status_pages_are_nginxs() {
        assert_eq!(
            status_page(404, ""),
            "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>why502</center>\r\n</body>\r\n</html>\r\n"
        );
        let p = status_page(400, "Request Header Or Cookie Too Large");
        assert!(
            p.contains("<title>400 Request Header Or Cookie Too Large</title>"),
            "{p}"
        );
        assert!(p.contains("<h1>400 Bad Request</h1></center>\r\n<center>Request Header Or Cookie Too Large</center>"), "{p}");
    }

    #[test]
    fn sf_string_escapes() {
        assert_eq!(sf_string("a\"b\\c\nd"), "\"a\\\"b\\\\c?d\"");
    }

    /// Pingora's messages as 0.9 logs them (taken from a running why502),
    /// and the lines nginx 1.22 writes for the same clients.
    #[test]
    fn tls_handshake_failures_read_as_nginx_writes_them() {
        let from = "Downstream handshake error from 127.0.0.1:38176:  TLSHandshakeFailure context: TLS accept() failed: ";
        let cases = [
            (
                "error:0A0000F4:SSL routines:ossl_statem_server_read_transition:unexpected message:ssl/statem/statem_srvr.c:342:",
                "SSL_do_handshake() failed (SSL: error:0A0000F4:SSL routines::unexpected message) while SSL handshaking, client: 127.0.0.1",
            ),
            (
                "error:0A00009C:SSL routines:tls_validate_record_header:http request:ssl/record/methods/tlsany_meth.c:68:",
                "client sent plain HTTP request to HTTPS port while SSL handshaking, client: 127.0.0.1",
            ),
            (
                "unexpected EOF",
                "peer closed connection in SSL handshake while SSL handshaking, client: 127.0.0.1",
            ),
            (
                "something else",
                "SSL_do_handshake() failed (something else) while SSL handshaking, client: 127.0.0.1",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(
                tls_handshake_failed(&format!("{from}{err}")).as_deref(),
                Some(want)
            );
        }
        assert_eq!(
            tls_handshake_failed("Downstream handshake error from [::1]:443: x").as_deref(),
            Some("SSL_do_handshake() failed (x) while SSL handshaking, client: ::1")
        );
        assert_eq!(
            tls_handshake_failed("Downstream handshake error: x").as_deref(),
            Some("SSL_do_handshake() failed (x) while SSL handshaking")
        );
        assert_eq!(
            tls_handshake_failed("Downstream handshake timeout").as_deref(),
            Some("client timed out (110: Connection timed out) while SSL handshaking")
        );
        assert_eq!(tls_handshake_failed("Accept() failed (os error 24)"), None);
        assert_eq!(openssl_error("error:zz:SSL routines:f:r"), None);
    }
}
