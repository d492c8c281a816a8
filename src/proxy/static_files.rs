//! Static files as nginx serves them: content type, `Last-Modified`, nginx's
//! `ETag` format, `If-Modified-Since` / `If-None-Match`, single byte ranges,
//! HEAD, the directory redirect with a trailing slash. Files are streamed in
//! fixed-size chunks, so memory stays flat whatever their size.

use std::path::Path;
use std::time::UNIX_EPOCH;

use bytes::BytesMut;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Abort, ReqCtx, Why502};

const CHUNK: usize = 64 * 1024;

/// Content type by file extension (nginx `default_type application/octet-stream`).
pub fn content_type(path: &Path) -> String {
    match mime_guess::from_path(path).first_raw() {
        Some(t) if t.starts_with("text/") || t == "application/javascript" => format!("{t}"),
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

pub async fn serve(
    p: &Why502,
    session: &mut Session,
    ctx: &mut ReqCtx,
    path: &Path,
    uri: &str,
    args: Option<&str>,
) -> Result<(), Abort> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return p.respond_status(session, ctx, 403).await
        }
        Err(_) => return p.respond_status(session, ctx, 404).await,
    };
    if meta.is_dir() {
        let mut h = ResponseHeader::build(301, Some(4)).map_err(|_| Abort)?;
        let loc = match args {
            Some(a) => format!("{uri}/?{a}"),
            None => format!("{uri}/"),
        };
        let _ = h.insert_header(http::header::LOCATION, loc);
        let body = "<html>\r\n<head><title>301 Moved Permanently</title></head>\r\n<body>\r\n<center><h1>301 Moved Permanently</h1></center>\r\n<hr><center>why502</center>\r\n</body>\r\n</html>\r\n";
        let _ = h.insert_header(http::header::CONTENT_TYPE, "text/html");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        ctx.summary.status = 301;
        return p
            .write_simple(session, h, bytes::Bytes::from_static(body.as_bytes()))
            .await;
    }
    if !meta.is_file() {
        return p.respond_status(session, ctx, 404).await;
    }
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return p.respond_status(session, ctx, 403).await
        }
        Err(_) => return p.respond_status(session, ctx, 404).await,
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
    let not_modified = match (header("if-none-match"), header("if-modified-since")) {
        (Some(inm), _) => inm.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
        (None, Some(ims)) => last_modified.as_deref() == Some(ims.as_str()),
        _ => false,
    };
    let is_get_or_head = matches!(req.method, http::Method::GET | http::Method::HEAD);
    if !is_get_or_head {
        return p.respond_status(session, ctx, 405).await;
    }
    let range = if not_modified {
        None
    } else {
        header("range").and_then(|r| parse_range(&r, len))
    };

    let (status, start, count) = match range {
        _ if not_modified => (304u16, 0, 0),
        Some(Err(())) => (416, 0, 0),
        Some(Ok((a, b))) => (206, a, b - a + 1),
        None => (200, 0, len),
    };
    let mut h = ResponseHeader::build(status, Some(8)).map_err(|_| Abort)?;
    if status != 416 {
        let _ = h.insert_header(http::header::CONTENT_TYPE, content_type(path));
        if let Some(lm) = &last_modified {
            let _ = h.insert_header(http::header::LAST_MODIFIED, lm.as_str());
        }
        let _ = h.insert_header(http::header::ETAG, etag.as_str());
    }
    match status {
        206 => {
            let _ = h.insert_header(
                http::header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", start + count - 1),
            );
        }
        416 => {
            let _ = h.insert_header(http::header::CONTENT_RANGE, format!("bytes */{len}"));
        }
        _ => {}
    }
    if status != 304 {
        let _ = h.insert_header(http::header::CONTENT_LENGTH, count.to_string());
    }
    if status == 200 || status == 206 {
        let _ = h.insert_header(http::header::ACCEPT_RANGES, "bytes");
    }
    let _ = h.insert_header(http::header::SERVER, "why502");
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
            .map_err(|_| Abort);
    }
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return Err(Abort);
    }
    let mut left = count;
    while left > 0 {
        let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
        let mut buf = BytesMut::with_capacity(want);
        let n = match (&mut file).take(want as u64).read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(Abort), // file shrank: the client sees a short body
            Ok(n) => n,
        };
        left -= n as u64;
        ctx.summary.bytes_sent += n as u64;
        session
            .write_response_body(Some(buf.freeze()), left == 0)
            .await
            .map_err(|_| Abort)?;
    }
    Ok(())
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
