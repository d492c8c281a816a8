//! Static files as nginx serves them: content type, `Last-Modified`, nginx's
//! `ETag` format, `If-Modified-Since` / `If-None-Match`, single byte ranges,
//! HEAD, the directory redirect with a trailing slash. Files are streamed in
//! fixed-size chunks, so memory stays flat whatever their size.

use std::path::Path;
use std::time::UNIX_EPOCH;

use bytes::BytesMut;
use pingora_http::ResponseHeader;
use std::io::{Read, Seek};

use super::downstream::Downstream;
use super::{Abort, ReqCtx, Why502};

const CHUNK: usize = 64 * 1024;

/// Content type by file extension (nginx `default_type application/octet-stream`).
pub fn content_type(path: &Path) -> String {
    match mime_guess::from_path(path).first_raw() {
        Some(t) => t.to_string(),
        None => "application/octet-stream".to_string(),
    }
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

/// How to serve one static file.
pub struct StaticOpts {
    /// Content-Type for the file (from `types`/`default_type` or a guess).
    pub content_type: String,
    /// `Location` of the redirect when the path is a directory.
    pub dir_location: String,
    /// Serve with this status (an `error_page` target): no ranges, no 304.
    pub status: Option<u16>,
}

/// Serves `path`. `Ok(Some(code))`: nothing was sent, the caller finishes
/// the request with that status (404, 403, 405), so `error_page` applies.
pub async fn serve<S: Downstream>(
    p: &Why502,
    session: &mut S,
    ctx: &mut ReqCtx,
    path: &Path,
    opts: &StaticOpts,
) -> Result<Option<u16>, Abort> {
    let method = session.req_header().method.clone();
    let get_or_head =
        matches!(method, http::Method::GET | http::Method::HEAD) || opts.status.is_some();
    // nginx's static handler: only GET, HEAD and POST get this far.
    if !get_or_head && method != http::Method::POST {
        return Ok(Some(405));
    }
    // Plain blocking file calls, as nginx makes without `aio`: static files
    // are normally in the page cache, and tokio::fs would hop to the blocking
    // thread pool three or four times per request (4x the CPU, measured).
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(Some(403)),
        Err(_) => return Ok(Some(404)),
    };
    if meta.is_dir() {
        let mut h = ResponseHeader::build(301, Some(4)).map_err(|_| Abort)?;
        let _ = h.insert_header("Location", opts.dir_location.as_str());
        let body = "<html>\r\n<head><title>301 Moved Permanently</title></head>\r\n<body>\r\n<center><h1>301 Moved Permanently</h1></center>\r\n<hr><center>why502</center>\r\n</body>\r\n</html>\r\n";
        let _ = h.insert_header(http::header::CONTENT_TYPE, "text/html");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        ctx.summary.status = 301;
        p.decorate_response(ctx, &mut h);
        p.write_simple(session, h, bytes::Bytes::from_static(body.as_bytes()))
            .await?;
        return Ok(None);
    }
    if !meta.is_file() {
        return Ok(Some(404));
    }
    if !get_or_head {
        return Ok(Some(405));
    }
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(Some(403)),
        Err(_) => return Ok(Some(404)),
    };
    let len = meta.len();
    let mtime = meta.modified().ok();
    let mtime_secs = mtime
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let etag = format!("\"{mtime_secs:x}-{len:x}\"");
    let last_modified = mtime.map(httpdate::fmt_http_date);

    let req = session.req_header();
    let header = |n: &str| {
        req.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let not_modified = opts.status.is_none()
        && match (header("if-none-match"), header("if-modified-since")) {
            (Some(inm), _) => inm.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
            (None, Some(ims)) => last_modified.as_deref() == Some(ims.as_str()),
            _ => false,
        };
    let range = if not_modified || opts.status.is_some() {
        None
    } else {
        header("range").and_then(|r| parse_range(&r, len))
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
        return Ok(None);
    }
    let mut h = ResponseHeader::build(status, Some(8)).map_err(|_| Abort)?;
    // nginx: no Content-Type on 304, Last-Modified only on 200/206/304
    if status != 304 {
        let _ = h.insert_header(http::header::CONTENT_TYPE, opts.content_type.as_str());
    }
    if matches!(status, 200 | 206 | 304) {
        if let Some(lm) = &last_modified {
            let _ = h.insert_header("Last-Modified", lm.as_str());
        }
    }
    let _ = h.insert_header("ETag", etag.as_str());
    if status == 206 {
        let _ = h.insert_header(
            "Content-Range",
            format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    if status != 304 {
        let _ = h.insert_header(http::header::CONTENT_LENGTH, count.to_string());
    }
    if status == 200 || status == 206 {
        let _ = h.insert_header(http::header::ACCEPT_RANGES, "bytes");
    }
    let _ = h.insert_header(http::header::SERVER, "why502");
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
            .map(|_| None)
            .map_err(|_| Abort);
    }
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
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

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
