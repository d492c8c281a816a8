//! client.*: the client side of the exchange.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::header::with_php;
use crate::support;

#[test]
fn closed_while_a_big_body_streams() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /big.php?mb=1024 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Read the header and the first bytes of the body, then hang up with
    // unread data (the kernel answers the next bytes with a reset).
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < 256 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got >= 256 * 1024, "only {got} bytes arrived");
    drop(s);
    let d = assert_logged(&p, "client.closed", None);
    assert!(d.log_line.contains(" [info] "), "{}", d.log_line);
    assert_eq!(d.event["status"].as_u64(), Some(499), "{}", d.event);
}

#[test]
fn body_timeout_when_the_upload_stalls() {
    let dir = support::temp_dir();
    let f = fpm(dir.path(), vec![pool("www")]);
    let p = Proxy::yaml(
        dir.path(),
        &php_yaml(
            &www(),
            &fpm_addr(&f, "www"),
            "",
            "client_body_timeout: 1s",
            "",
        ),
    );
    let mut s = TcpStream::connect(&p.addr).unwrap();
    // The headers promise 100 bytes; 10 come, then nothing.
    s.write_all(
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
    )
    .unwrap();
    let t0 = Instant::now();
    let r = support::read_response(&mut s, false, Instant::now() + Duration::from_secs(15));
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_diagnosed(&p, &r, "client.body_timeout", 408);
}

#[test]
fn body_too_large_by_content_length() {
    // The one-liner's client_max_body_size is nginx's 1m.
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let (r, _) = post_big(&p.addr, "/echo.php", 2 << 20, Duration::from_secs(20));
    let d = assert_diagnosed(&p, &r, "client.body_too_large", 413);
    assert!(d.log_line.contains("2097152"), "{}", d.log_line);
}

#[test]
fn body_too_large_when_chunked() {
    let dir = support::temp_dir();
    let f = fpm(dir.path(), vec![pool("www")]);
    let p = Proxy::yaml(
        dir.path(),
        &php_yaml(
            &www(),
            &fpm_addr(&f, "www"),
            "",
            "client_max_body_size: 1k",
            "",
        ),
    );
    let mut raw = b"POST /echo.php HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend(std::iter::repeat_n(b'a', 1024));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = support::http_raw(&p.addr, &raw, false, Duration::from_secs(10));
    // nginx's own wording for a chunked body.
    assert_diagnosed_with(
        &p,
        &r,
        "client.body_too_large",
        413,
        Some(&["client intended to send too large chunked body"]),
    );
}
