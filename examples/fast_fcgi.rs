//! A minimal, fast FastCGI responder for benchmarks (`loadtest/run`): it
//! answers every request at once, so a gateway's own overhead can be measured
//! where PHP-FPM would otherwise be the bottleneck.
//!
//! ```text
//! cargo build --release --example fast_fcgi
//! target/release/examples/fast_fcgi --unix /tmp/fast.sock --tcp 127.0.0.1:9100 [--threads 1]
//! ```
//!
//! The response is `Content-Type: text/plain` and the body `hello`, or `N`
//! bytes of `x` when the query string has `n=N` (no Content-Length, like a
//! PHP script that echoes). The request body (STDIN) is read and discarded.
//! `FCGI_KEEP_CONN` is honoured. Independent of why502's codec on purpose.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const GET_VALUES: u8 = 9;
const GET_VALUES_RESULT: u8 = 10;
const KEEP_CONN: u8 = 1;
/// STDOUT record payload size for large bodies (a multiple of 8: no padding).
const REC: usize = 32 * 1024;
const HEAD: &[u8] = b"Content-Type: text/plain\r\n\r\n";

fn header(dst: &mut Vec<u8>, kind: u8, id: u16, len: usize) {
    let len = len as u16;
    dst.extend_from_slice(&[1, kind]);
    dst.extend_from_slice(&id.to_be_bytes());
    dst.extend_from_slice(&len.to_be_bytes());
    dst.extend_from_slice(&[0, 0]);
}

fn record(dst: &mut Vec<u8>, kind: u8, id: u16, body: &[u8]) {
    header(dst, kind, id, body.len());
    dst.extend_from_slice(body);
}

/// Reads one name-value length (1 or 4 bytes).
fn nv_len(b: &[u8], i: &mut usize) -> Option<usize> {
    let first = *b.get(*i)?;
    if first & 0x80 == 0 {
        *i += 1;
        Some(first as usize)
    } else {
        let v = b.get(*i..*i + 4)?;
        *i += 4;
        Some((u32::from_be_bytes([v[0], v[1], v[2], v[3]]) & 0x7fff_ffff) as usize)
    }
}

/// The `n=` argument of QUERY_STRING in an encoded params stream.
fn body_size(params: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < params.len() {
        let nl = nv_len(params, &mut i)?;
        let vl = nv_len(params, &mut i)?;
        let name = params.get(i..i + nl)?;
        let value = params.get(i + nl..i + nl + vl)?;
        i += nl + vl;
        if name == b"QUERY_STRING" {
            let q = std::str::from_utf8(value).ok()?;
            return q
                .split('&')
                .find_map(|kv| kv.strip_prefix("n="))
                .and_then(|v| v.parse().ok());
        }
    }
    None
}

/// Serves one connection: requests one after another while the gateway
/// asks to keep the connection.
async fn serve<S>(mut s: S, block: &'static [u8]) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut params: Vec<u8> = Vec::new();
    let mut keep = false;
    let mut id = 1u16;
    let mut params_done = false;
    loop {
        // Decode every complete record in the buffer.
        loop {
            let avail = &buf[start..];
            if avail.len() < 8 {
                break;
            }
            let clen = u16::from_be_bytes([avail[4], avail[5]]) as usize;
            let total = 8 + clen + avail[6] as usize;
            if avail.len() < total {
                break;
            }
            let kind = avail[1];
            let rid = u16::from_be_bytes([avail[2], avail[3]]);
            let body = &avail[8..8 + clen];
            match kind {
                BEGIN_REQUEST => {
                    id = rid;
                    keep = body.get(2).is_some_and(|f| f & KEEP_CONN != 0);
                    params.clear();
                    params_done = false;
                }
                PARAMS if clen == 0 => params_done = true,
                PARAMS => params.extend_from_slice(body),
                STDIN if clen > 0 => {}
                STDIN => {
                    // End of the request: answer it.
                    let n = if params_done {
                        body_size(&params)
                    } else {
                        None
                    };
                    out.clear();
                    match n {
                        None => {
                            header(&mut out, STDOUT, id, HEAD.len() + 5);
                            out.extend_from_slice(HEAD);
                            out.extend_from_slice(b"hello");
                            s.write_all(&out).await?;
                            out.clear();
                        }
                        Some(mut n) => {
                            record(&mut out, STDOUT, id, HEAD);
                            s.write_all(&out).await?;
                            out.clear();
                            // `block` is whole STDOUT records of REC bytes each.
                            let per_block = block.len() / (REC + 8);
                            while n >= REC {
                                let k = (n / REC).min(per_block);
                                s.write_all(&block[..k * (REC + 8)]).await?;
                                n -= k * REC;
                            }
                            if n > 0 {
                                header(&mut out, STDOUT, id, n);
                                out.resize(out.len() + n, b'x');
                            }
                        }
                    }
                    record(&mut out, STDOUT, id, &[]);
                    record(&mut out, END_REQUEST, id, &[0; 8]);
                    s.write_all(&out).await?;
                    if !keep {
                        return Ok(());
                    }
                }
                GET_VALUES => {
                    out.clear();
                    record(&mut out, GET_VALUES_RESULT, 0, &[]);
                    s.write_all(&out).await?;
                }
                _ => {}
            }
            start += total;
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
        } else if start > 0 && buf.len() - start < 8 + 65535 + 255 {
            buf.drain(..start);
            start = 0;
        }
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: fast_fcgi [--unix PATH]... [--tcp HOST:PORT]... [--threads N]");
    std::process::exit(2)
}

fn main() -> io::Result<()> {
    let mut unix = Vec::new();
    let mut tcp = Vec::new();
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--unix" => unix.push(val()),
            "--tcp" => tcp.push(val()),
            "--threads" => threads = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if unix.is_empty() && tcp.is_empty() {
        usage();
    }
    // 32 records of REC bytes: big bodies are written 1 MiB at a time.
    let mut block = Vec::with_capacity(32 * (REC + 8));
    for _ in 0..32 {
        header(&mut block, STDOUT, 1, REC);
        block.resize(block.len() + REC, b'x');
    }
    let block: &'static [u8] = Box::leak(block.into_boxed_slice());

    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for p in unix {
            let _ = std::fs::remove_file(&p);
            let l = UnixListener::bind(&p)?;
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = l.accept().await {
                        tokio::spawn(serve(s, block));
                    }
                }
            }));
        }
        for a in tcp {
            let l = TcpListener::bind(&a).await?;
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(serve(s, block));
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}
