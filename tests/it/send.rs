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

/// A FastCGI peer on a unix socket that reads one request (up to the empty
/// STDIN record), then waits up to a second for more: it answers `eof` when
/// the web server shut down its writing side, `open` otherwise.
fn eof_reporting_peer(sock: &std::path::Path) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let l = std::os::unix::net::UnixListener::bind(sock).expect("bind the peer's socket");
    std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut s, _)) = l.accept() else { return };
            if read_fcgi_stdin(&mut s).is_none() {
                return;
            }
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut b = [0u8; 1];
            let word: &[u8] = match s.read(&mut b) {
                Ok(0) => b"eof",
                _ => b"open",
            };
            let mut page = b"Content-Type: text/plain\r\n\r\n".to_vec();
            page.extend_from_slice(word);
            let _ = s.write_all(&fcgi_response(&page));
        }
    })
}

#[test]
fn half_close_ends_the_request_with_an_end_of_file() {
    let dir = support::temp_dir();
    let sock = dir.path().join("peer.sock");
    let peer = eof_reporting_peer(&sock);
    let pass = format!("unix:{}", sock.display());
    let plain = site(dir.path(), &pass, "");
    let r = plain.get("/hello.php");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "open"),
        "{}",
        plain.logs()
    );
    let half = Proxy::flags(
        dir.path(),
        &["--fastcgi", &pass, "--root", &www(), "--fastcgi-half-close"],
    );
    let r = half.get("/hello.php");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "eof"),
        "{}",
        half.logs()
    );
    let _ = peer.join();
}

#[test]
fn half_close_with_php_fpm() {
    // PHP-FPM reads nothing after the request until its response is out:
    // pages, bodies and PHP's own errors come through as without it.
    let dir = support::temp_dir();
    let f = fpm(dir.path(), vec![pool("www")]);
    let p = site(dir.path(), &fpm_addr(&f, "www"), "half_close: true");
    for _ in 0..3 {
        let r = p.get("/hello.php");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello"),
            "{}",
            p.logs()
        );
    }
    let body = vec![b'x'; 3 << 20];
    let r = p.req(&support::Req::post("/echo.php", body));
    assert_eq!(r.status, 200, "{}", p.logs());
    assert!(r.text().contains("len=3145728 "), "{}", r.text());
    let r = p.get("/fatal.php");
    assert_diagnosed_with(
        &p,
        &r,
        "app.fatal_error",
        500,
        Some(&["PHP Fatal error:  Uncaught ", "boom from fatal.php"]),
    );
}
