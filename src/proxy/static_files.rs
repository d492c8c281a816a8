//! Static files as nginx serves them: content type, `Last-Modified`, nginx's
//! `ETag` format, `If-Modified-Since` / `If-None-Match`, single byte ranges,
//! HEAD, the directory redirect with a trailing slash. Files are streamed in
//! fixed-size chunks, so memory stays flat whatever their size.

use std::borrow::Cow;
use std::path::Path;
use std::time::UNIX_EPOCH;

use bytes::BytesMut;
use pingora_http::ResponseHeader;
use std::io::{Read, Seek};

use super::downstream::Downstream;
use super::{Abort, ReqCtx, Why502};

const CHUNK: usize = 64 * 1024;
use super::SERVER;

/// Content type by file extension (nginx `default_type application/octet-stream`).
pub fn content_type(path: &Path) -> &'static str {
    mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream")
}

/// Parses a single `bytes=` range against `len`: Some(Ok((start, end_inclusive))),
/// Some(Err(())) = unsatisfiable, None = ignore (serve the whole file).
fn parse_range(v: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if start >= len {
            return Some(Err(()));
        }
        if end < start {
            return None;
        }
        (start, end.min(len - 1))
    };
    Some(Ok(r))
}

/// nginx's `ETag`: `"<mtime hex>-<length hex>"` (what `format!` makes,
/// at a fifth of the cost).
fn etag(mtime: u64, len: u64) -> String {
    fn hex(s: &mut String, v: u64) {
        const D: &[u8; 16] = b"0123456789abcdef";
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            s.push(char::from(D[((v >> (i * 4)) & 0xf) as usize]));
        }
    }
    let mut s = String::with_capacity(36);
    s.push('"');
    hex(&mut s, mtime);
    s.push('-');
    hex(&mut s, len);
    s.push('"');
    s
}

/// How to serve one static file.
pub struct StaticOpts<'a> {
    /// Content-Type for the file (from `types`/`default_type` or a guess).
    pub content_type: Cow<'a, str>,
    /// Serve with this status (an `error_page` target): no ranges, no 304.
    pub status: Option<u16>,
}

/// What [`serve`] did.
pub enum Served {
    /// The response was sent.
    Done,
    /// Nothing was sent: the caller finishes the request with this status
    /// (404, 403, 405), so `error_page` applies.
    Status(u16),
    /// Nothing was sent: the path is a directory ([`redirect_to_dir`]).
    Directory,
}

/// nginx's redirect of a directory's path to the path with a slash.
pub async fn redirect_to_dir<S: Downstream>(
    p: &Why502,
    session: &mut S,
    ctx: &mut ReqCtx,
    location: String,
) -> Result<(), Abort> {
    let mut h = ResponseHeader::build(301, Some(4)).map_err(|_| Abort)?;
    let _ = h.insert_header("Location", super::carried_bytes(ctx, location));
    let body = "<html>\r\n<head><title>301 Moved Permanently</title></head>\r\n<body>\r\n<center><h1>301 Moved Permanently</h1></center>\r\n<hr><center>why502</center>\r\n</body>\r\n</html>\r\n";
    let _ = h.insert_header(http::header::CONTENT_TYPE, "text/html");
    let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
    ctx.summary.status = 301;
    p.decorate_response(ctx, &mut h);
    p.write_simple(session, h, bytes::Bytes::from_static(body.as_bytes()))
        .await
}

/// Opens `path` as nginx does (`O_NONBLOCK`, so a FIFO cannot block), then
/// `fstat`s the open file: one path lookup, not two.
fn open(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    Ok((f, m))
}

/// Small files kept in memory, per worker thread, and checked against the
/// file system on every request: one `stat()` instead of nginx's
/// `open()`, `fstat()`, `pread()` and `close()`. What is served is what the
/// file holds now: an entry is used only while the file's device, inode,
/// size, modification and change times are all the same, and a file is
/// kept only once its change time is a second old, so a write made in the
/// same clock tick as the read cannot go unseen (the change time moves on
/// every write, rename onto it, `chmod` or `touch`; git's "racy" rule).
mod cache {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use bytes::Bytes;

    /// Largest file kept (one read, one write).
    pub const FILE_MAX: u64 = 64 * 1024;
    /// Bytes kept per thread, at most; the cache is emptied when full.
    const TOTAL_MAX: usize = 8 * 1024 * 1024;
    const ENTRIES_MAX: usize = 4096;

    /// What identifies one version of a file.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct Version {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    }

    impl Version {
        pub fn of(m: &std::fs::Metadata) -> Version {
            Version {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            }
        }

        /// Unchanged for a second: a later write gets a later change time.
        pub fn settled(&self) -> bool {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .is_ok_and(|now| self.ctime.0.saturating_add(1) < now.as_secs() as i64)
        }
    }

    #[derive(Clone)]
    pub struct Entry {
        pub version: Version,
        pub body: Bytes,
        pub etag: http::HeaderValue,
        pub last_modified: Option<http::HeaderValue>,
    }

    type Map = HashMap<Box<[u8]>, Entry, std::hash::BuildHasherDefault<fnv::FnvHasher>>;

    thread_local! {
        static FILES: RefCell<(Map, usize)> = RefCell::new((Map::default(), 0));
    }

    /// The entry for `path` if it is still `version`.
    pub fn get(path: &Path, version: &Version) -> Option<Entry> {
        FILES.with(|f| {
            let f = f.borrow();
            f.0.get(path.as_os_str().as_bytes())
                .filter(|e| e.version == *version)
                .cloned()
        })
    }

    pub fn put(path: &Path, e: Entry) {
        FILES.with(|f| {
            let mut f = f.borrow_mut();
            let (map, total) = &mut *f;
            if *total + e.body.len() > TOTAL_MAX || map.len() >= ENTRIES_MAX {
                map.clear();
                *total = 0;
            }
            *total += e.body.len();
            if let Some(old) = map.insert(path.as_os_str().as_bytes().into(), e) {
                *total -= old.body.len();
            }
        })
    }
}

/// The file's whole content, read from `file` (at most `cache::FILE_MAX`).
fn read_whole(file: &mut std::fs::File, len: u64) -> Option<bytes::Bytes> {
    let mut buf = BytesMut::zeroed(usize::try_from(len).ok()?);
    file.read_exact(&mut buf).ok()?;
    Some(buf.freeze())
}

/// Serves `path`.
pub async fn serve<S: Downstream>(
    p: &Why502,
    session: &mut S,
    ctx: &mut ReqCtx,
    path: &Path,
    opts: &StaticOpts<'_>,
) -> Result<Served, Abort> {
    let method = session.req_header().method.clone();
    let get_or_head =
        matches!(method, http::Method::GET | http::Method::HEAD) || opts.status.is_some();
    // nginx's static handler: only GET, HEAD and POST get this far.
    if !get_or_head && method != http::Method::POST {
        return Ok(Served::Status(405));
    }
    // Plain blocking file calls, as nginx makes without `aio`: static files
    // are normally in the page cache, and tokio::fs would hop to the blocking
    // thread pool three or four times per request (4x the CPU, measured).
    // First `stat()`: a small file may be in memory already ([`cache`]).
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Ok(unreachable_file(&e)),
    };
    if let Some(s) = not_a_file(&meta) {
        return Ok(s);
    }
    if !get_or_head {
        return Ok(Served::Status(405));
    }
    if meta.len() <= cache::FILE_MAX {
        if let Some(e) = cache::get(path, &cache::Version::of(&meta)) {
            let h = StaticHead {
                etag: e.etag,
                last_modified: e.last_modified,
            };
            return serve_body(p, session, ctx, Body::Memory(e.body), meta.len(), &h, opts).await;
        }
    }
    let (mut file, meta) = match open(path) {
        Ok(fm) => fm,
        Err(e) => return Ok(unreachable_file(&e)),
    };
    // Between the stat and the open the path may have become something
    // else.
    if let Some(s) = not_a_file(&meta) {
        return Ok(s);
    }
    let len = meta.len();
    let mtime = meta.modified().ok();
    let mtime_secs = mtime
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let h = StaticHead {
        etag: http::HeaderValue::try_from(etag(mtime_secs, len)).map_err(|_| Abort)?,
        last_modified: mtime
            .map(httpdate::fmt_http_date)
            .and_then(|lm| http::HeaderValue::try_from(lm).ok()),
    };
    if len > cache::FILE_MAX {
        return serve_body(p, session, ctx, Body::File(file), len, &h, opts).await;
    }
    // Shorter than its length (it shrank since the fstat), or a read
    // error: nothing was sent, the connection is dropped.
    let body = read_whole(&mut file, len).ok_or(Abort)?;
    let version = cache::Version::of(&meta);
    if version.settled() {
        cache::put(
            path,
            cache::Entry {
                version,
                body: body.clone(),
                etag: h.etag.clone(),
                last_modified: h.last_modified.clone(),
            },
        );
    }
    serve_body(p, session, ctx, Body::Memory(body), len, &h, opts).await
}

/// What `stat()` or `open()` failing means (nginx's
/// `ngx_open_cached_file`): 403 when a directory on the way cannot be
/// searched, else 404.
fn unreachable_file(e: &std::io::Error) -> Served {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => Served::Status(403),
        _ => Served::Status(404),
    }
}

/// A directory is redirected; anything else but a regular file is 404.
fn not_a_file(m: &std::fs::Metadata) -> Option<Served> {
    if m.is_dir() {
        Some(Served::Directory)
    } else if !m.is_file() {
        Some(Served::Status(404))
    } else {
        None
    }
}

/// The validators of one version of a file.
struct StaticHead {
    etag: http::HeaderValue,
    last_modified: Option<http::HeaderValue>,
}

/// Where the body comes from.
enum Body {
    Memory(bytes::Bytes),
    File(std::fs::File),
}

/// Answers a GET or HEAD for a file of `len` bytes with these validators:
/// 200, 206, 304 or 416.
async fn serve_body<S: Downstream>(
    p: &Why502,
    session: &mut S,
    ctx: &mut ReqCtx,
    body: Body,
    len: u64,
    v: &StaticHead,
    opts: &StaticOpts<'_>,
) -> Result<Served, Abort> {
    let etag = v.etag.to_str().unwrap_or("");
    let last_modified = v.last_modified.as_ref().and_then(|v| v.to_str().ok());

    let (not_modified, range) = {
        let req = session.req_header();
        let header = |n: http::header::HeaderName| req.headers.get(n).and_then(|v| v.to_str().ok());
        let not_modified = opts.status.is_none()
            && match (
                header(http::header::IF_NONE_MATCH),
                header(http::header::IF_MODIFIED_SINCE),
            ) {
                (Some(inm), _) => inm.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
                (None, Some(ims)) => last_modified == Some(ims),
                _ => false,
            };
        let range = if not_modified || opts.status.is_some() {
            None
        } else {
            header(http::header::RANGE).and_then(|r| parse_range(r, len))
        };
        (not_modified, range)
    };

    let (status, start, count) = match range {
        _ if not_modified => (304u16, 0, 0),
        Some(Err(())) => (416, 0, 0),
        Some(Ok((a, b))) => (206, a, b - a + 1),
        None => (opts.status.unwrap_or(200), 0, len),
    };
    if status == 416 {
        // nginx: its error page, with the file's length in Content-Range
        let mut h = ResponseHeader::build(416, Some(4)).map_err(|_| Abort)?;
        let body = "<html>\r\n<head><title>416 Requested Range Not Satisfiable</title></head>\r\n<body>\r\n<center><h1>416 Requested Range Not Satisfiable</h1></center>\r\n<hr><center>why502</center>\r\n</body>\r\n</html>\r\n";
        let _ = h.insert_header(http::header::CONTENT_TYPE, "text/html");
        let _ = h.insert_header("Content-Range", format!("bytes */{len}"));
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        ctx.summary.status = 416;
        p.decorate_response(ctx, &mut h);
        p.write_simple(session, h, bytes::Bytes::from_static(body.as_bytes()))
            .await?;
        return Ok(Served::Done);
    }
    use http::header as hn;
    let mut m = http::HeaderMap::with_capacity(10);
    // nginx: no Content-Type on 304, Last-Modified only on 200/206/304
    if status != 304 {
        if let Ok(v) = http::HeaderValue::from_str(&opts.content_type) {
            m.insert(hn::CONTENT_TYPE, v);
        }
    }
    if matches!(status, 200 | 206 | 304) {
        if let Some(lm) = &v.last_modified {
            m.insert(hn::LAST_MODIFIED, lm.clone());
        }
    }
    m.insert(hn::ETAG, v.etag.clone());
    if status == 206 {
        if let Ok(v) =
            http::HeaderValue::try_from(format!("bytes {start}-{}/{len}", start + count - 1))
        {
            m.insert(hn::CONTENT_RANGE, v);
        }
    }
    if status != 304 {
        if let Ok(v) = http::HeaderValue::try_from(count.to_string()) {
            m.insert(hn::CONTENT_LENGTH, v);
        }
    }
    if status == 200 || status == 206 {
        m.insert(hn::ACCEPT_RANGES, http::HeaderValue::from_static("bytes"));
    }
    m.insert(hn::SERVER, SERVER);
    let code = http::StatusCode::from_u16(status).map_err(|_| Abort)?;
    // `add_header` names keep the case they were configured with.
    let titled = session.titles_header_names() && ctx.add_headers.is_empty();
    let mut h = super::downstream::response_header(titled, code, m);
    p.decorate_response(ctx, &mut h);
    ctx.summary.status = status;
    session
        .write_response_header(Box::new(h), false)
        .await
        .map_err(|_| Abort)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    if head_only || count == 0 {
        return session
            .write_response_body(None, true)
            .await
            .map(|_| Served::Done)
            .map_err(|_| Abort);
    }
    let mut file = match body {
        Body::Memory(b) => {
            let end = usize::try_from(start + count).map_err(|_| Abort)?;
            let part = b.get(start as usize..end).ok_or(Abort)?;
            ctx.summary.bytes_sent += count;
            return session
                .write_response_body(Some(b.slice_ref(part)), true)
                .await
                .map(|_| Served::Done)
                .map_err(|_| Abort);
        }
        Body::File(f) => f,
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).is_err() {
        return Err(Abort);
    }
    let mut left = count;
    while left > 0 {
        let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
        let mut buf = BytesMut::zeroed(want);
        let n = match file.read(&mut buf) {
            Ok(0) | Err(_) => return Err(Abort), // file shrank: the client sees a short body
            Ok(n) => n,
        };
        buf.truncate(n);
        left -= n as u64;
        ctx.summary.bytes_sent += n as u64;
        session
            .write_response_body(Some(buf.freeze()), left == 0)
            .await
            .map_err(|_| Abort)?;
    }
    Ok(Served::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_is_nginx_format() {
        for (m, l) in [
            (0, 0),
            (1, 15),
            (16, 255),
            (0x5f3e_1a2b, 1024),
            (u64::MAX, 1),
        ] {
            assert_eq!(etag(m, l), format!("\"{m:x}-{l:x}\""));
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-200", 100), Some(Ok((5, 99))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
