//! send.*: failures while writing the request (params, body) to the upstream.

use std::time::{Duration, Instant};

use why502::fake_fcgi::{FakeFcgi, Fault};

use crate::harness::*;
use crate::support;

const BIG: u64 = 16 << 20;

/// A site in front of `pass` accepting bodies up to 64 MiB.
fn site(dir: &std::path::Path, pass: &str, fastcgi_extra: &str) -> Proxy {
    Proxy::yaml(
        dir,
        &php_yaml(&www(), pass, fastcgi_extra, "client_max_body_size: 64m", ""),
    )
}

#[test]
fn broken_pipe_when_the_worker_dies_before_reading_the_body() {
    // PHP reads a non-form body lazily: kill.php dies without reading it and
    // the unix socket's writer gets EPIPE.
    let dir = support::temp_dir();
    let f = fpm(dir.path(), vec![pool("www")]);
    let p = site(dir.path(), &fpm_addr(&f, "www"), "");
    let (r, _) = post_big(
        &p.addr,
        "/kill.php?sig=9&when=before",
        BIG,
        Duration::from_secs(30),
    );
    let d = assert_diagnosed(&p, &r, "send.broken_pipe", 502);
    assert!(d.log_line.contains("(32: Broken pipe)"), "{}", d.log_line);
}

#[test]
fn reset_during_send_from_the_fake() {
    // A responder that resets (SO_LINGER 0) right after the params, while the
    // body is still being sent. (A PHP-FPM TCP worker killed before reading
    // its body was observed to give EPIPE, not ECONNRESET, so the fake does
    // this one.) On a unix socket the same close is an EPIPE.
    let dir = support::temp_dir();
    let fake = FakeFcgi::start_tcp_thread(Fault::ResetDuringSend).unwrap();
    let p = site(dir.path(), &fake.addr(), "");
    let (r, _) = post_big(&p.addr, "/index.php", BIG, Duration::from_secs(30));
    assert_diagnosed(&p, &r, "send.reset", 502);

    let dir = support::temp_dir();
    let fake =
        FakeFcgi::start_unix_thread(&dir.path().join("fake.sock"), Fault::ResetDuringSend).unwrap();
    let p = site(dir.path(), &fake.addr(), "");
    let (r, _) = post_big(&p.addr, "/index.php", BIG, Duration::from_secs(30));
    assert_diagnosed(&p, &r, "send.broken_pipe", 502);
}

#[test]
fn timeout_when_the_script_does_not_read_its_body() {
    // sleep.php never reads php://input: once the socket buffers are full
    // the upload makes no progress for send_timeout.
    let dir = support::temp_dir();
    let f = fpm(dir.path(), vec![pool("www")]);
    let p = site(dir.path(), &fpm_addr(&f, "www"), "send_timeout: 1s");
    let t0 = Instant::now();
    let (r, _) = post_big(&p.addr, "/sleep.php?s=6", BIG, Duration::from_secs(30));
    assert_diagnosed(&p, &r, "send.timeout", 504);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}
