//! header.*: failures before the response header block was complete.

use std::io::Write;
use std::time::Duration;

use why502::fake_fcgi::{FakeFcgi, Fault};

use crate::harness::*;
use crate::support;

/// why502 in front of a fake FastCGI responder with one fault.
pub fn with_fake(dir: &std::path::Path, fault: Fault, extra: &[&str]) -> (FakeFcgi, Proxy) {
    let fake = FakeFcgi::start_tcp_thread(fault).expect("start fake FastCGI responder");
    let mut args = vec!["--fastcgi".to_string(), fake.addr(), "--root".into(), www()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proxy::flags(dir, &args);
    (fake, p)
}

/// why502 in front of a fresh PHP-FPM pool (`tune` adjusts the pool).
pub fn with_php(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut why502::fpm::PoolSpec),
    extra: &[&str],
) -> (why502::fpm::Fpm, Proxy) {
    let mut spec = pool("www");
    tune(&mut spec);
    let f = fpm(dir, vec![spec]);
    let mut args = vec![
        "--fastcgi".to_string(),
        fpm_addr(&f, "www"),
        "--root".into(),
        www(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proxy::flags(dir, &args);
    (f, p)
}

#[test]
fn closed_empty() {
    // PHP-FPM cannot close cleanly without a byte: a killed worker always
    // leaves unread input behind, which turns its close into a reset (see
    // `reset_when_the_worker_is_killed`). The fake reads the whole request
    // and closes gracefully.
    let dir = support::temp_dir();
    let (_fake, p) = with_fake(dir.path(), Fault::CloseBeforeAnything, &[]);
    let r = p.get("/index.php");
    assert_diagnosed(&p, &r, "header.closed_empty", 502);
}

#[test]
fn reset_when_the_worker_is_killed() {
    let dir = support::temp_dir();
    let (f, p) = with_php(dir.path(), |_| {}, &[]);
    let r = p.get("/kill.php?sig=9&when=before");
    let d = assert_diagnosed(&p, &r, "header.reset", 502);
    assert!(
        d.log_line
            .contains("recv() failed (104: Connection reset by peer)"),
        "{}",
        d.log_line
    );
    assert!(
        f.wait_log("exited on signal 9", Duration::from_secs(5)),
        "{}",
        f.log()
    );
    // A segfault looks the same to the proxy.
    let r = p.get("/kill.php?sig=11&when=before");
    assert_eq!(r.header("Why502-Cause"), Some("header.reset"), "{r:?}");
    assert!(
        f.wait_log("exited on signal 11", Duration::from_secs(5)),
        "{}",
        f.log()
    );
}

#[test]
fn reset_by_request_terminate_timeout() {
    let dir = support::temp_dir();
    let (f, p) = with_php(
        dir.path(),
        |s| s.request_terminate_timeout = Some(Duration::from_secs(1)),
        &[],
    );
    let r = p.get("/sleep.php?s=10");
    assert_diagnosed(&p, &r, "header.reset", 502);
    assert!(
        f.wait_log("execution timed out", Duration::from_secs(5)),
        "{}",
        f.log()
    );
}

#[test]
fn closed_partial() {
    // EOF at a record boundary in the middle of the header block: a worker
    // that died after its first write. PHP-FPM writes its whole header block
    // at once, so a hand-written responder does it.
    let dir = support::temp_dir();
    let srv = RawServer::start(|_, mut s| {
        if read_fcgi_request(&mut s) {
            let _ = s.write_all(&fcgi_record(6, b"Content-Type: text/ht"));
            graceful_close(s);
        }
    });
    let p = Proxy::flags(dir.path(), &["--fastcgi", &srv.addr(), "--root", &www()]);
    let r = p.get("/index.php");
    let d = assert_diagnosed(&p, &r, "header.closed_partial", 502);
    assert!(
        d.event["details"]
            .as_str()
            .unwrap_or("")
            .contains("bytes of the header block"),
        "{}",
        d.event
    );
}

#[test]
fn stdout_closed() {
    let dir = support::temp_dir();
    let (_fake, p) = with_fake(dir.path(), Fault::StdoutClosedEarly, &[]);
    let r = p.get("/index.php");
    assert_diagnosed(&p, &r, "header.stdout_closed", 502);
}

#[test]
fn timeout_with_a_sleeping_script() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &["--read-timeout", "1s"]);
    let t0 = std::time::Instant::now();
    let r = p.get("/sleep.php?s=5");
    assert_diagnosed(&p, &r, "header.timeout", 504);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

#[test]
fn too_big_with_the_default_4k_buffer() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    // ~10 KB of headers > 4k.
    let r = p.get("/headers.php?n=100");
    assert_diagnosed(&p, &r, "header.too_big", 502);
    // A few headers fit.
    let r = p.get("/headers.php?n=5");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("X-Filler-00005").is_some());
}

#[test]
fn invalid_header_from_php() {
    // PHP's header() refuses CR, LF and NUL but lets other control bytes through.
    let dir = support::temp_dir();
    let (_f, p) = php_site(
        dir.path(),
        pool("www"),
        &[(
            "badheader.php",
            "<?php\nheader(\"X-Bad\\x01Name: v\");\necho 'body';\n",
        )],
    );
    let r = p.get("/badheader.php");
    let d = assert_diagnosed(&p, &r, "header.invalid", 502);
    assert!(d.log_line.contains("\\x01"), "{}", d.log_line);
}

#[test]
fn output_before_headers() {
    // PHP-FPM always sends its headers first (a display_errors warning lands
    // in the body): only a non-PHP responder prints before its header block.
    let dir = support::temp_dir();
    let (_fake, p) = with_fake(dir.path(), Fault::OutputBeforeHeaders, &[]);
    let r = p.get("/index.php");
    let d = assert_diagnosed(&p, &r, "header.output_before_headers", 502);
    assert!(
        d.event["details"]
            .as_str()
            .unwrap_or("")
            .contains("Warning"),
        "{}",
        d.event
    );
}

#[test]
fn invalid_status_from_php() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let r = p.get("/status.php?s=abc");
    let d = assert_diagnosed(&p, &r, "header.invalid_status", 502);
    assert!(d.log_line.contains("abc"), "{}", d.log_line);
    // A valid one passes through.
    let r = p.get("/status.php?s=418%20I%27m%20a%20teapot");
    assert_eq!(r.status, 418, "{r:?}");
}
