//! Codec benchmarks: `cargo bench --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use why502::fastcgi::cgi::CgiHeaderParser;
use why502::fastcgi::decoder::{Frame, ResponseDecoder};
use why502::fastcgi::params::encode_pair;
use why502::fastcgi::record::{encode_params, encode_record, RecordType};

/// A 1 MiB STDOUT stream as PHP-FPM sends it: 8 KiB records, then the empty
/// STDOUT record and END_REQUEST.
fn stdout_stream() -> Vec<u8> {
    let mut dst = BytesMut::new();
    let chunk = vec![b'x'; 8192];
    for _ in 0..128 {
        encode_record(&mut dst, RecordType::Stdout, 1, &chunk);
    }
    encode_record(&mut dst, RecordType::Stdout, 1, &[]);
    encode_record(&mut dst, RecordType::EndRequest, 1, &[0; 8]);
    dst.to_vec()
}

fn bench_decoder(c: &mut Criterion) {
    let stream = stdout_stream();
    let mut g = c.benchmark_group("decoder");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("stdout_1mib_16k_reads", |b| {
        b.iter(|| {
            let mut dec = ResponseDecoder::new(1);
            let mut buf = BytesMut::with_capacity(16384);
            let mut total = 0;
            for read in stream.chunks(16384) {
                buf.extend_from_slice(read);
                while let Ok(Some(f)) = dec.decode(&mut buf) {
                    if let Frame::Stdout(d) = f {
                        total += d.len();
                    }
                }
            }
            black_box(total)
        })
    });
    g.finish();
}

fn typical_params() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SCRIPT_FILENAME", "/var/www/html/index.php"),
        ("QUERY_STRING", "page=2&sort=desc"),
        ("REQUEST_METHOD", "GET"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", ""),
        ("SCRIPT_NAME", "/index.php"),
        ("REQUEST_URI", "/articles?page=2&sort=desc"),
        ("DOCUMENT_URI", "/index.php"),
        ("DOCUMENT_ROOT", "/var/www/html"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "https"),
        ("HTTPS", "on"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("REMOTE_ADDR", "203.0.113.7"),
        ("REMOTE_PORT", "51234"),
        ("REMOTE_USER", ""),
        ("SERVER_ADDR", "10.0.0.2"),
        ("SERVER_PORT", "443"),
        ("SERVER_NAME", "example.test"),
        ("REDIRECT_STATUS", "200"),
        ("HTTP_HOST", "example.test"),
        ("HTTP_USER_AGENT", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        ("HTTP_ACCEPT", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("HTTP_ACCEPT_LANGUAGE", "en-US,en;q=0.5"),
        ("HTTP_COOKIE", "session=0123456789abcdef0123456789abcdef; theme=dark; consent=yes; tracking_preferences=none"),
    ]
}

fn bench_params(c: &mut Criterion) {
    let params = typical_params();
    let mut probe = BytesMut::new();
    for (n, v) in &params {
        encode_pair(&mut probe, n.as_bytes(), v.as_bytes());
    }
    let mut g = c.benchmark_group("params");
    g.throughput(Throughput::Bytes(probe.len() as u64));
    g.bench_function("encode_26_params", |b| {
        let mut pairs = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            pairs.clear();
            out.clear();
            for (n, v) in &params {
                encode_pair(&mut pairs, n.as_bytes(), v.as_bytes());
            }
            encode_params(&mut out, 1, &pairs);
            black_box(out.len())
        })
    });
    g.finish();
}

const PHP_HEAD: &[u8] = b"X-Powered-By: PHP/8.2.7\r\n\
Set-Cookie: PHPSESSID=3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6; path=/; HttpOnly; SameSite=Lax\r\n\
Expires: Thu, 19 Nov 1981 08:52:00 GMT\r\n\
Cache-Control: no-store, no-cache, must-revalidate\r\n\
Pragma: no-cache\r\n\
Content-type: text/html; charset=UTF-8\r\n\
\r\n\
<!DOCTYPE html>";

fn bench_cgi(c: &mut Criterion) {
    let data = Bytes::from_static(PHP_HEAD);
    let mut g = c.benchmark_group("cgi");
    g.throughput(Throughput::Bytes(PHP_HEAD.len() as u64));
    g.bench_function("php_header_block", |b| {
        b.iter(|| {
            let mut p = CgiHeaderParser::new(4096);
            black_box(
                p.feed(data.clone(), 16)
                    .ok()
                    .flatten()
                    .map(|(h, _)| h.status),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decoder, bench_params, bench_cgi);
criterion_main!(benches);
