//! Access logs as nginx writes them: `log_format` compiled once into
//! segments, rendered per request with nginx's escaping, appended to a
//! buffered writer shared by every `access_log` that names the same file.
//!
//! The request side (what `$status` or `$upstream_addr` is for a request)
//! lives in `proxy::access`; this module knows formats, escaping, time
//! stamps and files, nothing about Pingora.
//!
//! nginx's rules reproduced here (`ngx_http_log_module.c`):
//! - `$status`, `$time_local`, `$time_iso8601`, `$msec`, `$request_time`,
//!   `$bytes_sent`, `$body_bytes_sent`, `$request_length`, `$pipe` are the
//!   log module's own operations, never escaped;
//! - every other `$variable` is escaped per the format's `escape=`:
//!   `default` writes `\xHH` (upper-case hex) for `"`, `\`, bytes below 0x20
//!   and from 0x7f up, and `-` for a variable that is not set; `json`
//!   escapes `"` `\` and control characters as JSON does and writes nothing
//!   for an unset variable; `none` copies and writes nothing when unset;
//! - literal text is copied as written.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, TryLockError, Weak};
use std::time::Duration;

use crate::config::Var;

/// `log_format ... escape=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Default,
    Json,
    None,
}

impl Escape {
    pub fn parse(s: &str) -> Option<Escape> {
        Some(match s {
            "default" => Escape::Default,
            "json" => Escape::Json,
            "none" => Escape::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Escape::Default => "default",
            Escape::Json => "json",
            Escape::None => "none",
        }
    }
}

/// The log module's own operations (nginx's `ngx_http_log_vars`): numbers
/// and times, written without escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Pipe,
    TimeLocal,
    TimeIso8601,
    Msec,
    RequestTime,
    Status,
    BytesSent,
    BodyBytesSent,
    RequestLength,
}

impl Builtin {
    fn from_name(n: &str) -> Option<Builtin> {
        use Builtin::*;
        Some(match n {
            "pipe" => Pipe,
            "time_local" => TimeLocal,
            "time_iso8601" => TimeIso8601,
            "msec" => Msec,
            "request_time" => RequestTime,
            "status" => Status,
            "bytes_sent" => BytesSent,
            "body_bytes_sent" => BodyBytesSent,
            "request_length" => RequestLength,
            _ => return None,
        })
    }
}

/// A variable in a log line: one the rest of why502 knows ([`Var`]), or
/// one that only makes sense once the request is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogVar {
    Var(Var),
    /// `$request`: the request line as received.
    Request,
    /// `$connection`: the connection's serial number.
    Connection,
    /// `$connection_requests`: requests made on this connection so far.
    ConnectionRequests,
    UpstreamAddr,
    UpstreamStatus,
    UpstreamResponseTime,
    UpstreamConnectTime,
    UpstreamHeaderTime,
    /// `$why502_cause`: the cause code of a failed request; unset (`-`) otherwise.
    Why502Cause,
    /// `$http_NAME`: the request header, name as looked up (`user-agent`).
    Header(String),
    /// `$sent_http_NAME`: the response header, name as looked up.
    SentHttp(String),
    /// `$pid`.
    Pid,
    /// `$request_completion`: `OK` when the response was sent completely.
    RequestCompletion,
}

impl LogVar {
    /// Resolves a variable name (without `$`) for a log format.
    pub fn from_name(name: &str, user: &dyn Fn(&str) -> bool) -> Option<LogVar> {
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_str() {
            "request" => LogVar::Request,
            "connection" => LogVar::Connection,
            "connection_requests" => LogVar::ConnectionRequests,
            "upstream_addr" => LogVar::UpstreamAddr,
            "upstream_status" => LogVar::UpstreamStatus,
            "upstream_response_time" => LogVar::UpstreamResponseTime,
            "upstream_connect_time" => LogVar::UpstreamConnectTime,
            "upstream_header_time" => LogVar::UpstreamHeaderTime,
            "why502_cause" => LogVar::Why502Cause,
            "pid" => LogVar::Pid,
            "request_completion" => LogVar::RequestCompletion,
            n => {
                if let Some(h) = n.strip_prefix("sent_http_") {
                    LogVar::SentHttp(h.replace('_', "-"))
                } else if let Some(h) = n.strip_prefix("http_") {
                    LogVar::Header(h.replace('_', "-"))
                } else if user(name) {
                    LogVar::Var(Var::User(name.to_string()))
                } else {
                    LogVar::Var(Var::from_name(n)?)
                }
            }
        })
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Op {
    Lit(Box<[u8]>),
    Builtin(Builtin),
    Var(LogVar),
}

/// A compiled `log_format`.
#[derive(Clone)]
pub struct LogFormat {
    pub name: String,
    pub escape: Escape,
    /// The format string (nginx's arguments joined), as written.
    pub source: String,
    /// `combined` / `why502`: known without a definition.
    pub builtin: bool,
    ops: Vec<Op>,
}

impl fmt::Debug for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LogFormat({} escape={} {:?})",
            self.name,
            self.escape.as_str(),
            self.source
        )
    }
}

impl PartialEq for LogFormat {
    fn eq(&self, o: &LogFormat) -> bool {
        self.name == o.name && self.escape == o.escape && self.source == o.source
    }
}

/// nginx's predefined format.
pub const COMBINED: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

/// why502's default for the YAML front end and the one-liner: `combined`
/// plus the cause of a failure and the request id.
pub const WHY502: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" cause=$why502_cause rid=$request_id";

impl LogFormat {
    /// Compiles a format like nginx's `ngx_http_log_compile_format`.
    /// `user` says which names are `set` variables.
    pub fn compile(
        name: &str,
        escape: Escape,
        source: &str,
        user: &dyn Fn(&str) -> bool,
    ) -> Result<LogFormat, String> {
        let b = source.as_bytes();
        let mut ops = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' {
                let start = i;
                while i < b.len() && b[i] != b'$' {
                    i += 1;
                }
                ops.push(Op::Lit(b[start..i].into()));
                continue;
            }
            let at = i;
            i += 1;
            let bracket = b.get(i) == Some(&b'{');
            if bracket {
                i += 1;
            }
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let var = &source[start..i];
            if bracket {
                if b.get(i) != Some(&b'}') {
                    return Err(format!(
                        "the closing bracket in \"{var}\" variable is missing"
                    ));
                }
                i += 1;
            }
            if var.is_empty() {
                return Err(format!("invalid parameter \"{}\"", &source[at..]));
            }
            if let Some(op) = Builtin::from_name(var) {
                ops.push(Op::Builtin(op));
            } else {
                let v = LogVar::from_name(var, user)
                    .ok_or_else(|| format!("unknown \"{var}\" variable"))?;
                ops.push(Op::Var(v));
            }
        }
        Ok(LogFormat {
            name: name.to_string(),
            escape,
            source: source.to_string(),
            builtin: false,
            ops,
        })
    }

    /// nginx's `combined`.
    pub fn combined() -> Arc<LogFormat> {
        static F: OnceLock<Arc<LogFormat>> = OnceLock::new();
        F.get_or_init(|| builtin_format("combined", COMBINED))
            .clone()
    }

    /// why502's default format (`combined cause=... rid=...`).
    pub fn why502() -> Arc<LogFormat> {
        static F: OnceLock<Arc<LogFormat>> = OnceLock::new();
        F.get_or_init(|| builtin_format("why502", WHY502)).clone()
    }

    /// The built-in format of that name (`combined`, `why502`; any case, as
    /// nginx looks formats up).
    pub fn builtin(name: &str) -> Option<Arc<LogFormat>> {
        if name.eq_ignore_ascii_case("combined") {
            Some(Self::combined())
        } else if name.eq_ignore_ascii_case("why502") {
            Some(Self::why502())
        } else {
            None
        }
    }

    /// True if any variable of the format satisfies `f`.
    pub fn uses(&self, f: &dyn Fn(&LogVar) -> bool) -> bool {
        self.ops.iter().any(|o| matches!(o, Op::Var(v) if f(v)))
    }

    /// Whether the format renders built-in variable `b`.
    pub fn uses_builtin(&self, b: Builtin) -> bool {
        self.ops.contains(&Op::Builtin(b))
    }

    /// Appends one rendered line (without the newline) to `out`.
    pub fn render(&self, vals: &dyn LogValues, out: &mut Vec<u8>) {
        for op in &self.ops {
            match op {
                Op::Lit(b) => out.extend_from_slice(b),
                Op::Builtin(b) => vals.builtin(*b, out),
                Op::Var(v) => match (vals.var(v), self.escape) {
                    (None, Escape::Default) => out.push(b'-'),
                    (None, _) => {}
                    (Some(s), Escape::Default) => escape_default(&s, out),
                    (Some(s), Escape::Json) => escape_json(&s, out),
                    (Some(s), Escape::None) => out.extend_from_slice(&s),
                },
            }
        }
    }
}

fn builtin_format(name: &str, src: &str) -> Arc<LogFormat> {
    let mut f = LogFormat::compile(name, Escape::Default, src, &|_| false).unwrap_or_else(|_| {
        // The built-in strings compile (a unit test says so); never reached.
        LogFormat {
            name: name.to_string(),
            escape: Escape::Default,
            source: src.to_string(),
            builtin: true,
            ops: Vec::new(),
        }
    });
    f.builtin = true;
    Arc::new(f)
}

/// What a log line needs from a request.
pub trait LogValues {
    /// Appends the value of one of the log module's own operations.
    fn builtin(&self, b: Builtin, out: &mut Vec<u8>);
    /// A variable's value; `None` = not set (logged as `-` by default).
    fn var(&self, v: &LogVar) -> Option<Cow<'_, [u8]>>;
}

/// nginx's default escaping (`ngx_http_log_escape`).
pub fn escape_default(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut from = 0;
    for (i, &c) in s.iter().enumerate() {
        if !(0x20..0x7f).contains(&c) || c == b'"' || c == b'\\' {
            out.extend_from_slice(&s[from..i]);
            out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
            from = i + 1;
        }
    }
    out.extend_from_slice(&s[from..]);
}

/// nginx's JSON escaping (`ngx_escape_json`): bytes from 0x80 up are copied.
pub fn escape_json(s: &[u8], out: &mut Vec<u8>) {
    // Checked sixteen bytes at a time (x86-64), then eight, as one word
    // (the bit tricks below answer "is any byte of the word ..."
    // exactly); only a chunk with something to escape is walked byte by
    // byte, and the clean runs between escapes are copied whole. nginx's
    // error-log message in a failure event has a dozen quotes in 250
    // bytes, or none.
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let dirty = |w: u64| {
        (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | has_zero(w ^ (ONES * u64::from(b'"')))
            | has_zero(w ^ (ONES * u64::from(b'\\')))
            != 0
    };
    // A word that cannot be read (none can't) counts as dirty: 0 < 0x20.
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
    let mut from = 0;
    let mut at = 0;
    // On x86-64, sixteen bytes at a time first (SSE2, which every x86-64
    // has): about a quarter of the instructions of the word check, and the
    // failure event escapes some 600 bytes per 502.
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = s.get(at..at + 16) {
        if sse2_dirty(chunk) {
            escape_bytes(s, at, at + 16, &mut from, out);
        }
        at += 16;
    }
    while let Some(w) = s.get(at..at + 8) {
        if dirty(word(w)) {
            escape_bytes(s, at, at + 8, &mut from, out);
        }
        at += 8;
    }
    if at < s.len() {
        // The last bytes, as the word that ends the string (it overlaps
        // bytes already checked), or padded with spaces.
        let last = if s.len() >= 8 {
            word(&s[s.len() - 8..])
        } else {
            let mut pad = [b' '; 8];
            pad[..s.len()].copy_from_slice(s);
            u64::from_ne_bytes(pad)
        };
        if dirty(last) {
            escape_bytes(s, at, s.len(), &mut from, out);
        }
    }
    out.extend_from_slice(&s[from..]);
}

/// Whether 16 bytes hold a byte [`escape_json`] escapes: `"`, `\` or a
/// control character (below 0x20).
#[cfg(target_arch = "x86_64")]
fn sse2_dirty(chunk: &[u8]) -> bool {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let Ok(bytes) = <&[u8; 16]>::try_from(chunk) else {
        return true;
    };
    // SAFETY: SSE2 is part of the x86-64 baseline (always enabled for this
    // target), and the load reads exactly the 16 bytes of `bytes`
    // (unaligned loads are allowed).
    unsafe {
        let v = _mm_loadu_si128(bytes.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned v <= 0x1f: the minimum of the two is v itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) != 0
    }
}

/// [`escape_json`] for `s[at..end]`, which holds something to escape: the
/// clean run since `from` is copied, then the escape.
fn escape_bytes(s: &[u8], at: usize, end: usize, from: &mut usize, out: &mut Vec<u8>) {
    for (i, &c) in s[..end].iter().enumerate().skip(at) {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            c if c < 0x20 => 0,
            _ => continue,
        };
        out.extend_from_slice(&s[*from..i]);
        *from = i + 1;
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            let lo = c & 15;
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                b'0' + (c >> 4),
                if lo < 10 { b'0' + lo } else { b'A' + lo - 10 },
            ]);
        }
    }
}

// ---- time stamps ----------------------------------------------------------

struct TimeCache {
    secs: u64,
    local: String,
    iso: String,
}

thread_local! {
    static TIME: std::cell::RefCell<TimeCache> = const {
        std::cell::RefCell::new(TimeCache { secs: u64::MAX, local: String::new(), iso: String::new() })
    };
}

fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Like nginx, the local-time texts are made once per second (per thread).
fn with_time(f: impl FnOnce(&TimeCache)) {
    let secs = now().as_secs();
    TIME.with(|c| {
        let mut c = c.borrow_mut();
        if c.secs != secs {
            use std::fmt::Write as _;
            let t = chrono::Local::now();
            c.local.clear();
            c.iso.clear();
            let _ = write!(c.local, "{}", t.format("%d/%b/%Y:%H:%M:%S %z"));
            let _ = write!(c.iso, "{}", t.format("%Y-%m-%dT%H:%M:%S%:z"));
            c.secs = secs;
        }
        f(&c);
    });
}

/// `$time_local`: `21/Nov/2026:19:13:30 +0000`.
pub fn push_time_local(out: &mut Vec<u8>) {
    with_time(|t| out.extend_from_slice(t.local.as_bytes()));
}

/// `$time_iso8601`: `2026-11-21T19:13:30+00:00`.
pub fn push_time_iso8601(out: &mut Vec<u8>) {
    with_time(|t| out.extend_from_slice(t.iso.as_bytes()));
}

/// `$msec`: seconds since the epoch with milliseconds.
pub fn push_msec(out: &mut Vec<u8>) {
    let d = now();
    let _ = write!(out, "{}.{:03}", d.as_secs(), d.subsec_millis());
}

/// A duration as nginx logs times: seconds with milliseconds (`0.003`).
pub fn push_secs(d: Duration, out: &mut Vec<u8>) {
    let ms = d.as_millis();
    let _ = write!(out, "{}.{:03}", ms / 1000, ms % 1000);
}

// ---- files ----------------------------------------------------------------

/// Lines are kept in memory until this much is buffered...
const FLUSH_BYTES: usize = 64 * 1024;
/// ...or for at most this long (the flusher thread's period).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Lines pile up past [`FLUSH_BYTES`] while the batch before is still being
/// written, up to this much; then a line waits for that write.
const MAX_BUFFERED: usize = 4 * FLUSH_BYTES;

/// One open log file (access log, failure events), shared by every
/// `access_log` that names it. Lines are appended to a buffer under a mutex
/// (no system call on the request path); the buffer is written when it
/// reaches [`FLUSH_BYTES`], by a background thread every
/// [`FLUSH_INTERVAL`], at process exit and when the file is dropped.
///
/// The `write()` runs outside the buffer's mutex: the full buffer is
/// swapped for a spare and written under a second mutex, so the other
/// threads keep appending meanwhile; a buffer that fills while the batch
/// before is still being written keeps filling, up to [`MAX_BUFFERED`].
/// (Written under the buffer's mutex, a 64 KiB `write()` made the other
/// worker threads wait on every line they logged meanwhile, for
/// milliseconds when the writer was preempted: 770 futex sleeps in 2 s on
/// the 502 path, docs/benchmarks.md.)
pub struct LogFile {
    path: PathBuf,
    lines: Mutex<Lines>,
    /// Taken before the buffer's mutex is let go, and held for the
    /// `write()`: batches land in the order they were taken.
    out: Mutex<Out>,
}

struct Lines {
    buf: Vec<u8>,
    /// The buffer of the batch written last, emptied, for the next one.
    spare: Vec<u8>,
}

struct Out {
    file: File,
    /// The last write error was reported at this second (once a minute, like nginx).
    err_reported: u64,
}

impl fmt::Debug for LogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogFile({})", self.path.display())
    }
}

/// Every open log file, for the flusher thread.
static REGISTRY: Mutex<Vec<Weak<LogFile>>> = Mutex::new(Vec::new());

impl LogFile {
    /// Opens (creates, appends to) a log file and registers it with the
    /// flusher thread.
    pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let f = Arc::new(LogFile {
            path: path.to_path_buf(),
            lines: Mutex::new(Lines {
                buf: Vec::with_capacity(FLUSH_BYTES),
                spare: Vec::new(),
            }),
            out: Mutex::new(Out {
                file,
                err_reported: 0,
            }),
        });
        if let Ok(mut r) = REGISTRY.lock() {
            r.retain(|w| w.strong_count() > 0);
            r.push(Arc::downgrade(&f));
        }
        start_flusher();
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (`line` ends with a newline).
    pub fn write_line(&self, line: &[u8]) {
        let Ok(mut l) = self.lines.lock() else {
            return;
        };
        l.buf.extend_from_slice(line);
        if l.buf.len() < FLUSH_BYTES {
            return;
        }
        // The batch before may still be being written (its writer
        // preempted, say): waiting for it here would hold up every thread
        // appending. The next line tries again; past [`MAX_BUFFERED`] the
        // line waits, so memory stays bounded. (Waits for the output mutex
        // take it first, then the buffer's: no thread holds the buffer
        // while it waits.)
        let out = match self.out.try_lock() {
            Ok(out) => out,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) if l.buf.len() < MAX_BUFFERED => return,
            Err(TryLockError::WouldBlock) => {
                drop(l);
                return self.flush();
            }
        };
        self.write_out(l, out);
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        // A panic while writing (none is expected) leaves the lines to
        // the next writer rather than growing the buffer for good.
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(l) = self.lines.lock() else {
            return;
        };
        if !l.buf.is_empty() {
            self.write_out(l, out);
        }
    }

    /// Takes the buffered lines and writes them with only the output
    /// mutex held (taken before the buffer's is let go: batches land in
    /// order).
    fn write_out(&self, mut l: MutexGuard<'_, Lines>, mut out: MutexGuard<'_, Out>) {
        let spare = std::mem::take(&mut l.spare);
        let mut batch = std::mem::replace(&mut l.buf, spare);
        drop(l);
        out.write(&batch, &self.path);
        drop(out);
        batch.clear();
        if let Ok(mut l) = self.lines.lock() {
            if l.spare.capacity() == 0 && batch.capacity() <= 2 * FLUSH_BYTES {
                l.spare = batch;
            }
        }
    }
}

impl Drop for LogFile {
    /// The last `access_log` using the file is gone (shutdown): write the rest.
    fn drop(&mut self) {
        let out = self.out.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(l) = self.lines.get_mut() {
            out.write(&l.buf, &self.path);
        }
    }
}

impl Out {
    fn write(&mut self, batch: &[u8], path: &Path) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(batch) {
            // A failing log must not fail requests; say so at most once a minute.
            let t = now().as_secs();
            if t.saturating_sub(self.err_reported) > 59 {
                self.err_reported = t;
                eprintln!("why502: write() to \"{}\" failed: {e}", path.display());
            }
        }
    }
}

/// Writes every open log's buffer.
pub fn flush_all() {
    let files: Vec<Arc<LogFile>> = match REGISTRY.lock() {
        Ok(r) => r.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    for f in files {
        f.flush();
    }
}

extern "C" fn flush_at_exit() {
    flush_all();
}

fn start_flusher() {
    static START: Once = Once::new();
    START.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("why502-log-flush".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_INTERVAL);
                flush_all();
            });
        // Pingora ends the process with exit(): write what is buffered then.
        // SAFETY: registers a plain function without captures; atexit only
        // stores the pointer.
        unsafe {
            libc::atexit(flush_at_exit);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    struct V;
    impl LogValues for V {
        fn builtin(&self, b: Builtin, out: &mut Vec<u8>) {
            out.extend_from_slice(format!("<{b:?}>").as_bytes());
        }
        fn var(&self, v: &LogVar) -> Option<Cow<'_, [u8]>> {
            match v {
                LogVar::Header(h) if h == "user-agent" => {
                    Some(Cow::Borrowed(b"a\"b\\c\x01\xc3\xa9\n\t"))
                }
                LogVar::Header(_) | LogVar::Var(Var::RemoteUser) => None,
                LogVar::Var(Var::Args) => Some(Cow::Borrowed(b"")),
                other => Some(Cow::Owned(format!("{other:?}").into_bytes())),
            }
        }
    }

    fn render(f: &LogFormat) -> String {
        let mut out = Vec::new();
        f.render(&V, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn builtins_compile() {
        assert_eq!(LogFormat::combined().ops.len(), 16);
        assert!(LogFormat::why502().uses(&|v| *v == LogVar::Why502Cause));
        assert!(LogFormat::builtin("Combined").is_some_and(|f| f.builtin));
    }

    #[test]
    fn escapes_like_nginx() {
        let none = |_: &str| false;
        let src = "$http_user_agent|$http_referer|$remote_user|$args|${status}x";
        let d = LogFormat::compile("d", Escape::Default, src, &none).expect("ok");
        assert_eq!(
            render(&d),
            "a\\x22b\\x5Cc\\x01\\xC3\\xA9\\x0A\\x09|-|-||<Status>x"
        );
        let j = LogFormat::compile("j", Escape::Json, src, &none).expect("ok");
        assert_eq!(render(&j), "a\\\"b\\\\c\\u0001\u{e9}\\n\\t||||<Status>x");
        let n = LogFormat::compile("n", Escape::None, src, &none).expect("ok");
        assert_eq!(render(&n), "a\"b\\c\u{1}\u{e9}\n\t||||<Status>x");
        let mut out = Vec::new();
        escape_json(b"\x1f\x0b", &mut out);
        assert_eq!(out, b"\\u001F\\u000B");
        // Longer than one 16-byte chunk: escapes in a later chunk, or none.
        for (src, want) in [
            (
                &b"0123456789abcdef0123\"x\\y\n"[..],
                &b"0123456789abcdef0123\\\"x\\\\y\\n"[..],
            ),
            (
                b"0123456789abcdef0123456789abcdef\xc3\xa9~",
                b"0123456789abcdef0123456789abcdef\xc3\xa9~",
            ),
            (b"0123456789abcdef\x7f", b"0123456789abcdef\x7f"),
        ] {
            out.clear();
            escape_json(src, &mut out);
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(src));
        }
        // Against a byte-by-byte reference, on strings of every length up
        // to 70 with escapes at every position (deterministic LCG).
        let reference = |s: &[u8]| {
            let mut o = Vec::new();
            for &c in s {
                match c {
                    b'"' => o.extend_from_slice(b"\\\""),
                    b'\\' => o.extend_from_slice(b"\\\\"),
                    b'\n' => o.extend_from_slice(b"\\n"),
                    b'\r' => o.extend_from_slice(b"\\r"),
                    b'\t' => o.extend_from_slice(b"\\t"),
                    0x08 => o.extend_from_slice(b"\\b"),
                    0x0c => o.extend_from_slice(b"\\f"),
                    c if c < 0x20 => o.extend_from_slice(format!("\\u{c:04X}").as_bytes()),
                    c => o.push(c),
                }
            }
            o
        };
        let mut x: u32 = 12345;
        for len in 0..70 {
            for _ in 0..20 {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        let r = (x >> 16) as u8;
                        if r.is_multiple_of(7) {
                            b"\"\\\n\x01\x1f\xc3"[(r as usize / 7) % 6]
                        } else if r.is_multiple_of(5) {
                            (x >> 8) as u8
                        } else {
                            b'a' + r % 26
                        }
                    })
                    .collect();
                out.clear();
                escape_json(&s, &mut out);
                assert_eq!(out, reference(&s), "{:?}", String::from_utf8_lossy(&s));
            }
        }
        // Every byte value at every place of a word (8), of a 16-byte chunk
        // (16) and of both (24), among neighbours next to the values the
        // checks look for (a borrow between bytes must not hide one, nor a
        // signed comparison a byte from 0x80 up).
        for len in [8, 16, 24] {
            for fill in [b'a', 0x1f, 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x80, 0xff] {
                for at in 0..len {
                    for v in 0..=255u8 {
                        let mut s = vec![fill; len];
                        s[at] = v;
                        out.clear();
                        escape_json(&s, &mut out);
                        assert_eq!(out, reference(&s), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn compile_errors_and_names() {
        let none = |_: &str| false;
        for (src, err) in [
            ("$nope", "unknown \"nope\" variable"),
            ("${uri", "closing bracket"),
            ("x $", "invalid parameter"),
            ("$-", "invalid parameter"),
        ] {
            let e = LogFormat::compile("f", Escape::Default, src, &none).expect_err(src);
            assert!(e.contains(err), "{src}: {e}");
        }
        let f = LogFormat::compile(
            "f",
            Escape::Default,
            "$HTTP_X_A $sent_http_content_type $who $upstream_addr $request",
            &|n| n == "who",
        )
        .expect("ok");
        assert!(f.uses(&|v| *v == LogVar::Header("x-a".into())));
        assert!(f.uses(&|v| *v == LogVar::SentHttp("content-type".into())));
        assert!(f.uses(&|v| *v == LogVar::Var(Var::User("who".into()))));
        assert!(f.uses(&|v| *v == LogVar::UpstreamAddr));
    }

    #[test]
    fn time_texts() {
        let mut out = Vec::new();
        push_time_local(&mut out);
        out.push(b' ');
        push_time_iso8601(&mut out);
        out.push(b' ');
        push_msec(&mut out);
        out.push(b' ');
        push_secs(Duration::from_micros(1_234_567), &mut out);
        let s = String::from_utf8(out).expect("utf8");
        let re = regex::Regex::new(
            r"^\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4} \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d \d+\.\d{3} 1\.234$",
        )
        .expect("re");
        assert!(re.is_match(&s), "{s}");
    }

    #[test]
    fn files_are_shared_buffered_and_flushed() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.log");
        let f = LogFile::open(&p).expect("open");
        f.write_line(b"one\n");
        f.write_line(b"two\n");
        f.flush();
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "one\ntwo\n");
        // A full buffer is written without waiting for the flusher.
        let line = vec![b'x'; 1023];
        for _ in 0..80 {
            let mut l = line.clone();
            l.push(b'\n');
            f.write_line(&l);
        }
        assert!(std::fs::metadata(&p).expect("meta").len() >= FLUSH_BYTES as u64);
        // The flusher thread writes the rest.
        f.write_line(b"last\n");
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(&p)
            .expect("read")
            .ends_with("last\n")
        {
            assert!(t0.elapsed() < Duration::from_secs(5), "not flushed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails with `what` unless the thread ends within 5 s (while the test
    /// still holds what it must not wait for).
    fn finishes_within_5s(h: &std::thread::JoinHandle<()>, what: &str) {
        let t0 = std::time::Instant::now();
        while !h.is_finished() {
            assert!(t0.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn lines_are_taken_while_a_batch_is_written() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.log");
        let f = LogFile::open(&p).expect("open");
        // A write() in progress (or preempted): appending must not wait for it.
        let writing = f.out.lock().expect("lock");
        let f2 = f.clone();
        let h = std::thread::spawn(move || f2.write_line(b"during\n"));
        finishes_within_5s(&h, "write_line waited for the write");
        drop(writing);
        f.flush();
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "during\n");
    }

    #[test]
    fn a_full_buffer_does_not_wait_for_the_write_before() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.log");
        let f = LogFile::open(&p).expect("open");
        // The batch before is being written: a line that fills the buffer
        // leaves it to the next writer (up to MAX_BUFFERED).
        let writing = f.out.lock().expect("lock");
        let f2 = f.clone();
        let h = std::thread::spawn(move || {
            let line = [b"x".repeat(1023), b"\n".to_vec()].concat();
            for _ in 0..2 * FLUSH_BYTES / 1024 {
                f2.write_line(&line);
            }
        });
        finishes_within_5s(&h, "a full buffer waited for the write");
        drop(writing);
        f.flush();
        let len = std::fs::metadata(&p).expect("meta").len();
        assert_eq!(len, 2 * FLUSH_BYTES as u64);
    }

    #[test]
    fn lines_from_many_threads_land_whole_and_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.log");
        let f = LogFile::open(&p).expect("open");
        const N: usize = 5000;
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for n in 0..N {
                        f.write_line(format!("t{t} {n:06} {}\n", "y".repeat(n % 90)).as_bytes());
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("join");
        }
        f.flush();
        let text = std::fs::read_to_string(&p).expect("read");
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut parts = line.split(' ');
            let t: usize = parts.next().and_then(|t| t[1..].parse().ok()).expect(line);
            let n: usize = parts.next().and_then(|n| n.parse().ok()).expect(line);
            assert_eq!(parts.next().map(str::len), Some(n % 90), "{line}");
            assert_eq!(n, next[t], "thread {t}'s lines out of order");
            next[t] += 1;
        }
        assert_eq!(next, [N; 4]);
    }
}
