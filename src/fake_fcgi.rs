//! A deliberately misbehaving FastCGI responder, for the framing and peer faults
//! a real PHP-FPM cannot be made to produce.
//!
//! Every byte is written by hand here; nothing is shared with the proxy's codec
//! (a test double must not share the bugs of the code it tests).
//!
//! Behaviour per connection: read the request (BEGIN_REQUEST, PARAMS until the
//! empty PARAMS record, STDIN until the empty STDIN record; all bounded), then
//! misbehave as the [`Fault`] says. Exceptions: [`Fault::SshPeer`] (non-router)
//! talks first, right on accept; [`Fault::ResetDuringSend`] resets right after
//! the PARAMS, without reading STDIN.
//!
//! "Reset" = `SO_LINGER {on, 0}` then close, so the kernel sends a TCP RST. On a
//! unix socket there is no RST: the peer sees ECONNRESET only if unread data was
//! pending in our receive queue, otherwise a plain EOF.
//!
//! "Close" (graceful) = shutdown(WR), then discard input until EOF (at most 2 s),
//! then close; this keeps the kernel from turning the close into a RST that
//! could destroy the bytes we just sent.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::{JoinHandle, JoinSet};

/// What the fake responder does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// A STDOUT record with version byte 2 (FastCGI only has version 1).
    BadVersion,
    /// A record of type 42 (undefined), followed by an otherwise valid response.
    UnknownRecordType,
    /// A valid response, but every record carries request id + 1.
    WrongRequestId,
    /// EOF inside a record's content: a STDOUT header announcing 100 bytes, then 10 bytes, then close.
    TruncatedRecord,
    /// EOF inside a record header: complete headers + a little body, then 3 bytes of the next header, then close.
    TruncatedHeader,
    /// END_REQUEST (complete, app status 0) with no STDOUT at all.
    EndBeforeHeaders,
    /// END_REQUEST protocolStatus FCGI_CANT_MPX_CONN (1).
    EndCantMpxConn,
    /// END_REQUEST protocolStatus FCGI_OVERLOADED (2).
    EndOverloaded,
    /// END_REQUEST protocolStatus FCGI_UNKNOWN_ROLE (3).
    EndUnknownRole,
    /// An HTML warning printed before the header block (what a display_errors=on app emits).
    OutputBeforeHeaders,
    /// A header name with a control byte: `X-Bad\x01: v`.
    InvalidHeader,
    /// `Status: abc`.
    InvalidStatus,
    /// Half a header line, then the empty STDOUT record (end of stream), then END_REQUEST.
    StdoutClosedEarly,
    /// Headers + 4 KiB of body, then a graceful close without END_REQUEST.
    NoEndRequest,
    /// Headers + 4 KiB of body, then a TCP reset.
    ResetMidBody,
    /// Read the request, then a graceful close without sending a byte.
    CloseBeforeAnything,
    /// Read the request, then a TCP reset without sending a byte.
    ResetBeforeAnything,
    /// Read BEGIN_REQUEST + PARAMS only, then reset while the client is still sending STDIN.
    ResetDuringSend,
    /// An HTTP server on the FastCGI port: "HTTP/1.1 400 Bad Request ...".
    HttpPeer,
    /// An SSH server on the FastCGI port: banner "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n" right on accept.
    SshPeer,
    /// A TLS server on the FastCGI port: alert record 15 03 03 00 02 02 32 (fatal decode_error), close.
    TlsPeer,
    /// Read the request, never answer (until the client closes, at most 10 minutes).
    Hang,
    /// A valid response: "Content-Type: text/plain\r\n\r\nok".
    Ok,
}

impl Fault {
    /// Every fault, in gallery order.
    pub const ALL: &'static [Fault] = &[
        Fault::SshPeer,
        Fault::HttpPeer,
        Fault::TlsPeer,
        Fault::ResetDuringSend,
        Fault::CloseBeforeAnything,
        Fault::ResetBeforeAnything,
        Fault::Hang,
        Fault::EndBeforeHeaders,
        Fault::EndCantMpxConn,
        Fault::EndOverloaded,
        Fault::EndUnknownRole,
        Fault::StdoutClosedEarly,
        Fault::OutputBeforeHeaders,
        Fault::InvalidHeader,
        Fault::InvalidStatus,
        Fault::BadVersion,
        Fault::UnknownRecordType,
        Fault::WrongRequestId,
        Fault::TruncatedRecord,
        Fault::TruncatedHeader,
        Fault::NoEndRequest,
        Fault::ResetMidBody,
        Fault::Ok,
    ];

    /// URL slug, e.g. "bad-version"; the router fake picks its fault by this.
    pub fn slug(self) -> &'static str {
        match self {
            Fault::BadVersion => "bad-version",
            Fault::UnknownRecordType => "unknown-record-type",
            Fault::WrongRequestId => "wrong-request-id",
            Fault::TruncatedRecord => "truncated-record",
            Fault::TruncatedHeader => "truncated-header",
            Fault::EndBeforeHeaders => "end-before-headers",
            Fault::EndCantMpxConn => "end-cant-mpx-conn",
            Fault::EndOverloaded => "end-overloaded",
            Fault::EndUnknownRole => "end-unknown-role",
            Fault::OutputBeforeHeaders => "output-before-headers",
            Fault::InvalidHeader => "invalid-header",
            Fault::InvalidStatus => "invalid-status",
            Fault::StdoutClosedEarly => "stdout-closed-early",
            Fault::NoEndRequest => "no-end-request",
            Fault::ResetMidBody => "reset-mid-body",
            Fault::CloseBeforeAnything => "close-before-anything",
            Fault::ResetBeforeAnything => "reset-before-anything",
            Fault::ResetDuringSend => "reset-during-send",
            Fault::HttpPeer => "http-peer",
            Fault::SshPeer => "ssh-peer",
            Fault::TlsPeer => "tls-peer",
            Fault::Hang => "hang",
            Fault::Ok => "ok",
        }
    }

    /// Inverse of [`Fault::slug`].
    pub fn from_slug(slug: &str) -> Option<Fault> {
        Fault::ALL.iter().copied().find(|f| f.slug() == slug)
    }

    /// Gallery phase: "connect", "send", "header", "framing" or "body".
    pub fn phase(self) -> &'static str {
        match self {
            Fault::SshPeer | Fault::HttpPeer | Fault::TlsPeer => "connect",
            Fault::ResetDuringSend => "send",
            Fault::CloseBeforeAnything
            | Fault::ResetBeforeAnything
            | Fault::Hang
            | Fault::EndBeforeHeaders
            | Fault::EndCantMpxConn
            | Fault::EndOverloaded
            | Fault::EndUnknownRole
            | Fault::StdoutClosedEarly
            | Fault::OutputBeforeHeaders
            | Fault::InvalidHeader
            | Fault::InvalidStatus => "header",
            Fault::BadVersion
            | Fault::UnknownRecordType
            | Fault::WrongRequestId
            | Fault::TruncatedRecord
            | Fault::TruncatedHeader => "framing",
            Fault::NoEndRequest | Fault::ResetMidBody | Fault::Ok => "body",
        }
    }

    /// One-line description for the gallery.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::BadVersion => "record with FastCGI version 2",
            Fault::UnknownRecordType => "record of undefined type 42, then a valid response",
            Fault::WrongRequestId => "valid response, but for request id + 1",
            Fault::TruncatedRecord => {
                "EOF inside a STDOUT record's content (before the header block ends)"
            }
            Fault::TruncatedHeader => "EOF inside a record header (after some body)",
            Fault::EndBeforeHeaders => "END_REQUEST without any STDOUT",
            Fault::EndCantMpxConn => "END_REQUEST with protocolStatus CANT_MPX_CONN",
            Fault::EndOverloaded => "END_REQUEST with protocolStatus OVERLOADED",
            Fault::EndUnknownRole => "END_REQUEST with protocolStatus UNKNOWN_ROLE",
            Fault::OutputBeforeHeaders => "HTML warning printed before the header block",
            Fault::InvalidHeader => "header name with a control byte (X-Bad\\x01)",
            Fault::InvalidStatus => "Status: abc",
            Fault::StdoutClosedEarly => "empty STDOUT record in the middle of the header block",
            Fault::NoEndRequest => "headers + part of body, then close without END_REQUEST",
            Fault::ResetMidBody => "headers + part of body, then TCP reset",
            Fault::CloseBeforeAnything => "reads the request, closes without a byte",
            Fault::ResetBeforeAnything => "reads the request, resets without a byte",
            Fault::ResetDuringSend => "resets while the request body is still being sent",
            Fault::HttpPeer => "an HTTP server on the FastCGI port (replies 400)",
            Fault::SshPeer => "an SSH server on the FastCGI port (sends its banner)",
            Fault::TlsPeer => "a TLS server on the FastCGI port (sends a TLS alert)",
            Fault::Hang => "reads the request and never answers",
            Fault::Ok => "a valid FastCGI response: 200 \"ok\"",
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-written FastCGI bytes.

const T_BEGIN: u8 = 1;
const T_ABORT: u8 = 2;
const T_END: u8 = 3;
const T_PARAMS: u8 = 4;
const T_STDIN: u8 = 5;
const T_STDOUT: u8 = 6;

/// Limits on what we read from a client (the fake must stay bounded).
const MAX_RECORDS: usize = 1_000_000;
const MAX_PARAMS_BYTES: usize = 1 << 20;
const MAX_STDIN_BYTES: u64 = 1 << 30;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REQUESTS_PER_CONN: usize = 10_000;
const MAX_CONNS: usize = 1024;

/// One record: 8-byte header, content, padding to a multiple of 8 (as PHP-FPM pads).
fn record_v(version: u8, ty: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let len = content.len().min(0xffff);
    let pad = (8 - len % 8) % 8;
    let mut v = Vec::with_capacity(8 + len + pad);
    v.extend_from_slice(&[
        version,
        ty,
        (id >> 8) as u8,
        id as u8,
        (len >> 8) as u8,
        len as u8,
        pad as u8,
        0,
    ]);
    v.extend_from_slice(&content[..len]);
    v.resize(8 + len + pad, 0);
    v
}

fn record(ty: u8, id: u16, content: &[u8]) -> Vec<u8> {
    record_v(1, ty, id, content)
}

/// STDOUT records carrying `data` (split at 65528 bytes), without the closing empty record.
fn stdout(id: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for chunk in data.chunks(65528) {
        v.extend(record(T_STDOUT, id, chunk));
    }
    v
}

fn end_request(id: u16, app_status: u32, protocol_status: u8) -> Vec<u8> {
    let a = app_status.to_be_bytes();
    record(
        T_END,
        id,
        &[a[0], a[1], a[2], a[3], protocol_status, 0, 0, 0],
    )
}

/// A complete valid response: STDOUT data, empty STDOUT, END_REQUEST(complete).
fn full_response(id: u16, data: &[u8]) -> Vec<u8> {
    let mut v = stdout(id, data);
    v.extend(record(T_STDOUT, id, b""));
    v.extend(end_request(id, 0, 0));
    v
}

const OK_BODY: &[u8] = b"Content-Type: text/plain\r\n\r\nok";

/// What we learned from BEGIN_REQUEST + PARAMS.
#[derive(Debug, Default)]
struct ReqHead {
    id: u16,
    keep_conn: bool,
    params: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ReqHead {
    fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

async fn read_exact_idle<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> io::Result<()> {
    match tokio::time::timeout(IDLE_TIMEOUT, s.read_exact(buf)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client idle")),
    }
}

/// Read one record: Ok(None) on clean EOF before its first byte.
async fn read_record<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<(u8, u16, Vec<u8>)>> {
    let mut h = [0u8; 8];
    let n = match tokio::time::timeout(IDLE_TIMEOUT, s.read(&mut h[..1])).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "client idle")),
    };
    if n == 0 {
        return Ok(None);
    }
    read_exact_idle(s, &mut h[1..]).await?;
    if h[0] != 1 {
        return Err(bad("client sent a record with version != 1"));
    }
    let id = u16::from_be_bytes([h[2], h[3]]);
    let len = u16::from_be_bytes([h[4], h[5]]) as usize;
    let pad = h[6] as usize;
    let mut content = vec![0u8; len + pad];
    read_exact_idle(s, &mut content).await?;
    content.truncate(len);
    Ok(Some((h[1], id, content)))
}

fn nv_len(buf: &[u8], pos: &mut usize) -> io::Result<usize> {
    let b0 = *buf
        .get(*pos)
        .ok_or_else(|| bad("truncated name-value length"))?;
    if b0 & 0x80 == 0 {
        *pos += 1;
        return Ok(b0 as usize);
    }
    let b = buf
        .get(*pos..*pos + 4)
        .ok_or_else(|| bad("truncated name-value length"))?;
    *pos += 4;
    Ok((u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]])) as usize)
}

fn parse_params(buf: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() && out.len() < 100_000 {
        let nl = nv_len(buf, &mut pos)?;
        let vl = nv_len(buf, &mut pos)?;
        let name = buf
            .get(pos..pos + nl)
            .ok_or_else(|| bad("truncated param name"))?;
        pos += nl;
        let value = buf
            .get(pos..pos + vl)
            .ok_or_else(|| bad("truncated param value"))?;
        pos += vl;
        out.push((name.to_vec(), value.to_vec()));
    }
    Ok(out)
}

/// Read BEGIN_REQUEST and PARAMS up to the empty PARAMS record. Ok(None) on EOF before anything.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<ReqHead>> {
    let mut head: Option<ReqHead> = None;
    let mut params = Vec::new();
    for _ in 0..MAX_RECORDS {
        let Some((ty, id, content)) = read_record(s).await? else {
            return match head {
                None => Ok(None),
                Some(_) => Err(bad("client EOF inside PARAMS")),
            };
        };
        match (ty, head.as_mut()) {
            (T_BEGIN, None) => {
                if content.len() < 8 {
                    return Err(bad("short BEGIN_REQUEST"));
                }
                head = Some(ReqHead {
                    id,
                    keep_conn: content[2] & 1 == 1,
                    params: Vec::new(),
                });
            }
            (T_PARAMS, Some(h)) => {
                if content.is_empty() {
                    h.params = parse_params(&params)?;
                    return Ok(head);
                }
                if params.len() + content.len() > MAX_PARAMS_BYTES {
                    return Err(bad("PARAMS too large"));
                }
                params.extend_from_slice(&content);
            }
            (T_ABORT, _) => return Err(bad("client aborted the request")),
            // Management records (id 0) and anything else: ignore.
            _ => {}
        }
    }
    Err(bad("too many records"))
}

/// Read (and discard) STDIN up to the empty STDIN record. Returns the body length.
async fn read_stdin<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<u64> {
    let mut total = 0u64;
    for _ in 0..MAX_RECORDS {
        let Some((ty, _id, content)) = read_record(s).await? else {
            return Err(bad("client EOF inside STDIN"));
        };
        match ty {
            T_STDIN if content.is_empty() => return Ok(total),
            T_STDIN => {
                total += content.len() as u64;
                if total > MAX_STDIN_BYTES {
                    return Err(bad("STDIN too large"));
                }
            }
            T_ABORT => return Err(bad("client aborted the request")),
            _ => {}
        }
    }
    Err(bad("too many records"))
}

/// Close with a RST (TCP): SO_LINGER {on, 0 s} then close.
fn reset<S: AsRawFd>(s: S) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an fd we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Graceful close: shutdown(WR), discard input until EOF (at most 2 s / 64 MiB), close.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let _ = s.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 16384];
        let mut total = 0usize;
        while total < (64 << 20) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

async fn write<S: AsyncWrite + Unpin>(s: &mut S, b: &[u8]) -> io::Result<()> {
    s.write_all(b).await?;
    s.flush().await
}

/// Wait until the client closes (or sends junk / errors), at most `max`.
async fn wait_client_close<S: AsyncRead + Unpin>(s: &mut S, max: Duration) {
    let wait = async {
        let mut buf = [0u8; 4096];
        for _ in 0..1_000_000 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(max, wait).await;
}

/// Read whatever the client sent first (one read, bounded by time).
async fn read_some<S: AsyncRead + Unpin>(s: &mut S) {
    let mut buf = [0u8; 16384];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
}

const SSH_BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n";
const TLS_ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];
const HTTP_400_BODY: &str = "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn http_400() -> Vec<u8> {
    format!(
        "HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        HTTP_400_BODY.len(),
        HTTP_400_BODY
    )
    .into_bytes()
}

/// The fault a router fake picks: last path segment of SCRIPT_NAME, else DOCUMENT_URI,
/// else REQUEST_URI (query stripped), with a trailing ".php" removed.
/// Ok(fault) for a known slug, Err(slug) otherwise.
fn route(head: &ReqHead) -> Result<Fault, String> {
    let raw = ["SCRIPT_NAME", "DOCUMENT_URI", "REQUEST_URI"]
        .iter()
        .filter_map(|n| head.param(n))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    let path = raw.split('?').next().unwrap_or("");
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let slug = last.strip_suffix(".php").unwrap_or(last);
    Fault::from_slug(slug).ok_or_else(|| slug.to_string())
}

fn not_found(slug: &str) -> Vec<u8> {
    let mut body = format!(
        "Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno fake fault named {slug:?}; known:\n"
    );
    for f in Fault::ALL {
        body.push_str(&format!("{} ({}): {}\n", f.slug(), f.phase(), f.describe()));
    }
    body.into_bytes()
}

/// Serve one connection. `fixed` = Some(fault) for a single-fault fake, None for the router.
async fn serve<S>(mut s: S, fixed: Option<Fault>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + AsRawFd,
{
    if fixed == Some(Fault::SshPeer) {
        write(&mut s, SSH_BANNER).await?;
        read_some(&mut s).await;
        let _ = write(&mut s, b"Invalid SSH identification string.\r\n").await;
        close(s).await;
        return Ok(());
    }
    if matches!(fixed, Some(Fault::HttpPeer) | Some(Fault::TlsPeer)) {
        read_some(&mut s).await;
        let reply = if fixed == Some(Fault::HttpPeer) {
            http_400()
        } else {
            TLS_ALERT.to_vec()
        };
        write(&mut s, &reply).await?;
        close(s).await;
        return Ok(());
    }
    for _ in 0..MAX_REQUESTS_PER_CONN {
        let Some(head) = read_head(&mut s).await? else {
            return Ok(());
        };
        let fault = match fixed {
            Some(f) => f,
            None => match route(&head) {
                Ok(f) => f,
                Err(slug) => {
                    read_stdin(&mut s).await?;
                    write(&mut s, &full_response(head.id, &not_found(&slug))).await?;
                    if head.keep_conn {
                        continue;
                    }
                    close(s).await;
                    return Ok(());
                }
            },
        };
        if fault == Fault::ResetDuringSend {
            reset(s);
            return Ok(());
        }
        read_stdin(&mut s).await?;
        let id = head.id;
        let mut body = b"Content-Type: text/plain\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'b', 4096));
        match fault {
            Fault::Ok => {
                write(&mut s, &full_response(id, OK_BODY)).await?;
                if head.keep_conn {
                    continue;
                }
                close(s).await;
                return Ok(());
            }
            Fault::Hang => {
                wait_client_close(&mut s, Duration::from_secs(600)).await;
                return Ok(());
            }
            Fault::CloseBeforeAnything => {
                close(s).await;
                return Ok(());
            }
            Fault::ResetBeforeAnything => {
                reset(s);
                return Ok(());
            }
            Fault::ResetMidBody => {
                write(&mut s, &stdout(id, &body)).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                reset(s);
                return Ok(());
            }
            Fault::NoEndRequest => write(&mut s, &stdout(id, &body)).await?,
            Fault::BadVersion => write(&mut s, &record_v(2, T_STDOUT, id, OK_BODY)).await?,
            Fault::UnknownRecordType => {
                let mut v = record(42, id, b"\x00\x01\x02\x03\x04\x05\x06\x07");
                v.extend(full_response(id, OK_BODY));
                write(&mut s, &v).await?
            }
            Fault::WrongRequestId => {
                let other = if id == u16::MAX { 1 } else { id + 1 };
                write(&mut s, &full_response(other, OK_BODY)).await?
            }
            Fault::TruncatedRecord => {
                let mut v = vec![1, T_STDOUT, (id >> 8) as u8, id as u8, 0, 100, 4, 0];
                v.extend_from_slice(b"Content-Ty");
                write(&mut s, &v).await?
            }
            Fault::TruncatedHeader => {
                let mut v = stdout(id, b"Content-Type: text/plain\r\n\r\npartial body");
                v.extend_from_slice(&[1, T_STDOUT, (id >> 8) as u8]);
                write(&mut s, &v).await?
            }
            Fault::EndBeforeHeaders => write(&mut s, &end_request(id, 0, 0)).await?,
            Fault::EndCantMpxConn => write(&mut s, &end_request(id, 0, 1)).await?,
            Fault::EndOverloaded => write(&mut s, &end_request(id, 0, 2)).await?,
            Fault::EndUnknownRole => write(&mut s, &end_request(id, 0, 3)).await?,
            Fault::OutputBeforeHeaders => {
                let out: &[u8] = b"<br />\n<b>Warning</b>:  Undefined variable $x in <b>/var/www/x.php</b> on line <b>3</b><br />\nContent-Type: text/html\r\n\r\nbody";
                write(&mut s, &full_response(id, out)).await?
            }
            Fault::InvalidHeader => {
                let out: &[u8] = b"X-Bad\x01: v\r\nContent-Type: text/plain\r\n\r\nbody";
                write(&mut s, &full_response(id, out)).await?
            }
            Fault::InvalidStatus => {
                let out: &[u8] = b"Status: abc\r\nContent-Type: text/plain\r\n\r\nbody";
                write(&mut s, &full_response(id, out)).await?
            }
            Fault::StdoutClosedEarly => {
                let mut v = stdout(id, b"Content-Type: text/pl");
                v.extend(record(T_STDOUT, id, b""));
                v.extend(end_request(id, 0, 0));
                write(&mut s, &v).await?
            }
            // Router mode: peers answer after the request was read.
            Fault::SshPeer => write(&mut s, SSH_BANNER).await?,
            Fault::HttpPeer => write(&mut s, &http_400()).await?,
            Fault::TlsPeer => write(&mut s, TLS_ALERT).await?,
            Fault::ResetDuringSend => {}
        }
        close(s).await;
        return Ok(());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Servers.

enum Runner {
    Task(JoinHandle<()>),
    Thread {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// A running fake FastCGI server. Stops (and removes its unix socket file) on Drop.
pub struct FakeFcgi {
    addr: String,
    unix_path: Option<PathBuf>,
    connections: Arc<AtomicUsize>,
    runner: Runner,
}

enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

async fn accept_loop(l: AnyListener, fixed: Option<Fault>, conns: Arc<AtomicUsize>) {
    let mut set: JoinSet<()> = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set stays bounded.
        while set.try_join_next().is_some() {}
        let accepted = match &l {
            AnyListener::Tcp(t) => t.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Box::pin(async move {
                    let _ = serve(s, fixed).await;
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            }),
            AnyListener::Unix(u) => u.accept().await.map(|(s, _)| {
                Box::pin(async move {
                    let _ = serve(s, fixed).await;
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            }),
        };
        match accepted {
            Ok(fut) => {
                conns.fetch_add(1, Ordering::SeqCst);
                if set.len() < MAX_CONNS {
                    set.spawn(fut);
                } // else: dropped = closed at once
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

impl FakeFcgi {
    async fn start_on(
        l: AnyListener,
        addr: String,
        unix_path: Option<PathBuf>,
        fixed: Option<Fault>,
    ) -> FakeFcgi {
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(l, fixed, connections.clone()));
        FakeFcgi {
            addr,
            unix_path,
            connections,
            runner: Runner::Task(task),
        }
    }

    async fn bind_tcp() -> io::Result<(AnyListener, String)> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?.to_string();
        Ok((AnyListener::Tcp(l), addr))
    }

    fn bind_unix(path: &Path) -> io::Result<(AnyListener, String)> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)?;
        Ok((AnyListener::Unix(l), format!("unix:{}", path.display())))
    }

    /// Fake with one fault on 127.0.0.1:<ephemeral>. Must be called inside a Tokio runtime.
    pub async fn start_tcp(fault: Fault) -> io::Result<FakeFcgi> {
        let (l, addr) = Self::bind_tcp().await?;
        Ok(Self::start_on(l, addr, None, Some(fault)).await)
    }

    /// Fake with one fault on a unix socket (an existing file at `path` is replaced).
    pub async fn start_unix(path: &Path, fault: Fault) -> io::Result<FakeFcgi> {
        let (l, addr) = Self::bind_unix(path)?;
        Ok(Self::start_on(l, addr, Some(path.to_path_buf()), Some(fault)).await)
    }

    /// Router fake on 127.0.0.1:<ephemeral>: the fault is chosen per request from the last
    /// path segment of SCRIPT_NAME (else DOCUMENT_URI, else REQUEST_URI), ".php" stripped,
    /// e.g. "/fake/bad-version". Unknown slug: a valid 404 listing every slug.
    /// Here the peer faults (ssh/http/tls) answer after reading the request.
    pub async fn start_router_tcp() -> io::Result<FakeFcgi> {
        let (l, addr) = Self::bind_tcp().await?;
        Ok(Self::start_on(l, addr, None, None).await)
    }

    /// Router fake on a unix socket.
    pub async fn start_router_unix(path: &Path) -> io::Result<FakeFcgi> {
        let (l, addr) = Self::bind_unix(path)?;
        Ok(Self::start_on(l, addr, Some(path.to_path_buf()), None).await)
    }

    /// Like [`FakeFcgi::start_tcp`], but on its own thread + runtime: for blocking (non-async) tests.
    pub fn start_tcp_thread(fault: Fault) -> io::Result<FakeFcgi> {
        Self::start_thread(None, Some(fault))
    }

    /// Like [`FakeFcgi::start_unix`], on its own thread + runtime.
    pub fn start_unix_thread(path: &Path, fault: Fault) -> io::Result<FakeFcgi> {
        Self::start_thread(Some(path.to_path_buf()), Some(fault))
    }

    /// Like [`FakeFcgi::start_router_tcp`], on its own thread + runtime.
    pub fn start_router_tcp_thread() -> io::Result<FakeFcgi> {
        Self::start_thread(None, None)
    }

    fn start_thread(unix: Option<PathBuf>, fixed: Option<Fault>) -> io::Result<FakeFcgi> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (l, addr) = match &unix {
            Some(p) => {
                let _g = rt.enter();
                Self::bind_unix(p)?
            }
            None => rt.block_on(Self::bind_tcp())?,
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-fcgi".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = accept_loop(l, fixed, conns) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels every connection task.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(FakeFcgi {
            addr,
            unix_path: unix,
            connections,
            runner: Runner::Thread {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
        })
    }

    /// "127.0.0.1:PORT" or "unix:/path".
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The TCP port (None for a unix socket).
    pub fn port(&self) -> Option<u16> {
        if self.unix_path.is_some() {
            return None;
        }
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeFcgi {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::Task(t) => t.abort(),
            Runner::Thread { stop, thread } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_padded_and_split() {
        let r = record(T_STDOUT, 1, b"abc");
        assert_eq!(&r[..8], &[1, 6, 0, 1, 0, 3, 5, 0]);
        assert_eq!(r.len(), 16);
        let big = stdout(7, &vec![b'x'; 70000]);
        assert_eq!(big.len(), 8 + 65528 + 8 + (70000 - 65528));
        assert_eq!(
            end_request(3, 0, 2),
            vec![1, 3, 0, 3, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
        );
    }

    #[test]
    fn params_parse_both_length_forms() {
        let mut b = vec![11, 3];
        b.extend_from_slice(b"SCRIPT_NAMEabc");
        b.extend_from_slice(&[1, 0x80, 0, 1, 0]);
        b.push(b'k');
        b.extend(std::iter::repeat_n(b'v', 256));
        let p = parse_params(&b).unwrap();
        assert_eq!(p[0], (b"SCRIPT_NAME".to_vec(), b"abc".to_vec()));
        assert_eq!(p[1].1.len(), 256);
        assert!(parse_params(&[5, 5, b'a']).is_err());
    }

    #[test]
    fn slugs_roundtrip_and_route() {
        for f in Fault::ALL {
            assert_eq!(Fault::from_slug(f.slug()), Some(*f));
        }
        let h = ReqHead {
            id: 1,
            keep_conn: false,
            params: vec![(b"SCRIPT_NAME".to_vec(), b"/fake/bad-version.php".to_vec())],
        };
        assert_eq!(route(&h), Ok(Fault::BadVersion));
        let h = ReqHead {
            id: 1,
            keep_conn: false,
            params: vec![(b"REQUEST_URI".to_vec(), b"/x/hang?a=b".to_vec())],
        };
        assert_eq!(route(&h), Ok(Fault::Hang));
    }
}
