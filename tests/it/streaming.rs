//! Streaming both ways with flat memory, and FastCGI connection reuse.
//!
//! The transfer size is `$WHY502_BIG_MB` MiB (default 1024 = 1 GiB).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use why502::fake_fcgi::{FakeFcgi, Fault};

use crate::harness::*;
use crate::support;

/// why502 must stay under this resident size while streaming.
const MAX_RSS_KB: u64 = 64 * 1024;

fn big_mb() -> u64 {
    std::env::var("WHY502_BIG_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Samples the process's VmRSS every 100 ms until dropped; keeps the maximum.
struct RssWatch {
    max_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let max_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_kb.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Some(kb) = status_kb(pid, "VmRSS:") {
                    m.fetch_max(kb, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssWatch {
            max_kb,
            stop,
            t: Some(t),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
        self.max_kb.load(Ordering::SeqCst)
    }
}

fn php_site(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut why502::fpm::PoolSpec),
) -> (why502::fpm::Fpm, Proxy) {
    let mut spec = pool("www");
    tune(&mut spec);
    let f = fpm(dir, vec![spec]);
    // client_max_body_size 0 = no limit (nginx's meaning).
    let p = Proxy::yaml(
        dir,
        &php_yaml(
            &www(),
            &fpm_addr(&f, "www"),
            "",
            "client_max_body_size: 0",
            "",
        ),
    );
    (f, p)
}

#[test]
fn big_download_keeps_memory_flat() {
    let mb = big_mb();
    let dir = support::temp_dir();
    let (_f, p) = php_site(dir.path(), |_| {});
    let watch = RssWatch::start(p.pid());
    let t0 = Instant::now();
    let req = format!("GET /big.php?mb={mb} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (status, _headers, mut body) =
        open_stream(&p.addr, req.as_bytes(), Duration::from_secs(30));
    assert_eq!(status, 200);
    // big.php's byte at offset k is (k % 65536) % 251.
    let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off: u64 = 0;
    loop {
        let n = body
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("body broke after {off} bytes: {e}"));
        if n == 0 {
            break;
        }
        let mut i = 0;
        while i < n {
            let b = (off % 65536) as usize;
            let take = (65536 - b).min(n - i);
            assert!(
                buf[i..i + take] == block[b..b + take],
                "wrong bytes at offset {off}"
            );
            i += take;
            off += take as u64;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "download too slow");
    }
    let took = t0.elapsed();
    assert_eq!(off, mb << 20, "download length");
    let max_rss = watch.finish();
    let hwm = status_kb(p.pid(), "VmHWM:").unwrap_or(0);
    eprintln!("download of {mb} MiB: {took:?}, why502 max VmRSS {max_rss} kB, VmHWM {hwm} kB");
    assert!(
        hwm > 0 && hwm < MAX_RSS_KB,
        "why502 VmHWM {hwm} kB after a {mb} MiB download"
    );
}

#[test]
fn big_upload_keeps_memory_flat() {
    let mb = big_mb();
    let dir = support::temp_dir();
    // enable_post_data_reading off: PHP streams php://input instead of
    // spooling the body first (and post_max_size does not apply).
    let (_f, p) = php_site(dir.path(), |s| {
        s.admin_flags
            .push(("enable_post_data_reading".into(), "off".into()))
    });
    let len = mb << 20;
    // The expected digest, computed by sha256sum from the same bytes.
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    let mut sha_in = sha.stdin.take().unwrap();
    let watch = RssWatch::start(p.pid());
    let t0 = Instant::now();
    let head = format!(
        "POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let mut block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut n_block: u64 = 0;
    let mut left = len;
    let (r, sent) = http_streaming(
        &p.addr,
        head,
        move |buf| {
            if left == 0 {
                return 0;
            }
            // Each 64 KiB block starts with its index: reordered or
            // duplicated STDIN records change the digest.
            block[..8].copy_from_slice(&n_block.to_le_bytes());
            n_block += 1;
            let n = (left.min(65536)) as usize;
            buf[..n].copy_from_slice(&block[..n]);
            sha_in.write_all(&block[..n]).expect("feed sha256sum");
            left -= n as u64;
            n
        },
        Duration::from_secs(120),
    );
    let took = t0.elapsed();
    let mut out = String::new();
    sha.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = sha.wait();
    let want = out.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(sent, len);
    assert_eq!(r.status, 200, "{r:?}{}", p.logs());
    assert_eq!(r.text(), format!("len={len} sha256={want}"));
    let max_rss = watch.finish();
    let hwm = status_kb(p.pid(), "VmHWM:").unwrap_or(0);
    eprintln!("upload of {mb} MiB: {took:?}, why502 max VmRSS {max_rss} kB, VmHWM {hwm} kB");
    assert!(
        hwm > 0 && hwm < MAX_RSS_KB,
        "why502 VmHWM {hwm} kB after a {mb} MiB upload"
    );
}

#[test]
fn keep_conn_reuses_one_fastcgi_connection() {
    let dir = support::temp_dir();
    let fake = FakeFcgi::start_tcp_thread(Fault::Ok).unwrap();
    // Idle connections are pooled per worker thread (nginx: per worker
    // process), so one thread for a count of exactly one.
    let p = Proxy::flags(
        dir.path(),
        &[
            "--fastcgi",
            &fake.addr(),
            "--root",
            &www(),
            "--keep-conn",
            "--threads",
            "1",
        ],
    );
    for i in 0..5 {
        let r = p.get(&format!("/x.php?i={i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    }
    assert_eq!(
        fake.connections(),
        1,
        "requests were not sent on one connection"
    );
    // Without --keep-conn: one connection per request.
    let dir2 = support::temp_dir();
    let fake2 = FakeFcgi::start_tcp_thread(Fault::Ok).unwrap();
    let p2 = Proxy::flags(dir2.path(), &["--fastcgi", &fake2.addr(), "--root", &www()]);
    for _ in 0..3 {
        assert_eq!(p2.get("/x.php").status, 200);
    }
    assert_eq!(fake2.connections(), 3);
}

#[test]
fn stale_kept_alive_connection_is_retried_once_for_a_get() {
    // The responder keeps its first connection after answering, then closes
    // it when the next request arrives on it, without answering: the race of
    // an upstream closing an idle connection just as it is reused. (A close
    // that happens while the connection is idle in the pool is noticed before
    // reuse and never reaches this path.) Later connections behave.
    let dir = support::temp_dir();
    let srv = RawServer::start(|i, mut s| {
        const OK: &[u8] = b"Content-Type: text/plain\r\n\r\nok";
        if !read_fcgi_request(&mut s) {
            return;
        }
        let _ = s.write_all(&fcgi_response(OK));
        if i == 0 && read_fcgi_request(&mut s) {
            graceful_close(s);
            return;
        }
        graceful_close(s);
    });
    let p = Proxy::flags(
        dir.path(),
        &["--fastcgi", &srv.addr(), "--root", &www(), "--keep-conn"],
    );
    for _ in 0..2 {
        let r = p.get("/x.php");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "{r:?}{}",
            p.logs()
        );
    }
    assert_eq!(srv.connections.load(Ordering::SeqCst), 2);
    assert!(!p.error_log().contains("cause:"), "{}", p.logs());
}

#[test]
fn stale_kept_alive_connection_is_retried_with_a_small_body() {
    // As above, for a POST: its small body was read whole before it was
    // sent, so the retry on a fresh connection sends it again.
    let dir = support::temp_dir();
    let srv = RawServer::start(|i, mut s| {
        let Some(body) = read_fcgi_stdin(&mut s) else {
            return;
        };
        if i == 0 {
            let _ = s.write_all(&fcgi_response(b"Content-Type: text/plain\r\n\r\nok"));
            let _ = read_fcgi_stdin(&mut s);
            graceful_close(s);
            return;
        }
        let mut out = b"Content-Type: text/plain\r\n\r\ngot=".to_vec();
        out.extend_from_slice(&body);
        let _ = s.write_all(&fcgi_response(&out));
        graceful_close(s);
    });
    let p = Proxy::flags(
        dir.path(),
        &["--fastcgi", &srv.addr(), "--root", &www(), "--keep-conn"],
    );
    let r = p.get("/x.php");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{}", p.logs());
    let r = p.req(&support::Req::post("/x.php", b"abc".to_vec()));
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "got=abc"),
        "{}",
        p.logs()
    );
    assert_eq!(srv.connections.load(Ordering::SeqCst), 2);
    assert!(!p.error_log().contains("cause:"), "{}", p.logs());
}

#[test]
fn streamed_bodies_take_a_fresh_connection() {
    // A body too big to keep (over 64 KiB) is streamed to PHP as it
    // arrives, so it could not be sent again if the kept connection turned
    // out closed: such a request never takes a kept connection. The kept
    // one stays, and the fresh one is kept after it.
    let dir = support::temp_dir();
    let srv = RawServer::start(|i, mut s| {
        while let Some(body) = read_fcgi_stdin(&mut s) {
            let out = format!(
                "Content-Type: text/plain\r\n\r\nconn={i} len={}",
                body.len()
            );
            if s.write_all(&fcgi_response(out.as_bytes())).is_err() {
                return;
            }
        }
    });
    let p = Proxy::flags(
        dir.path(),
        &[
            "--fastcgi",
            &srv.addr(),
            "--root",
            &www(),
            "--keep-conn",
            "--threads",
            "1",
        ],
    );
    let r = p.get("/x.php");
    assert_eq!((r.status, r.text().as_str()), (200, "conn=0 len=0"));
    let r = p.req(&support::Req::post("/x.php", vec![b'x'; 100_000]));
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "conn=1 len=100000"),
        "{}",
        p.logs()
    );
    // Both are kept now: a small body takes one of them (the newest).
    let r = p.req(&support::Req::post("/x.php", vec![b'x'; 1000]));
    assert_eq!((r.status, r.text().as_str()), (200, "conn=1 len=1000"));
    assert_eq!(srv.connections.load(Ordering::SeqCst), 2);
    assert!(!p.error_log().contains("cause:"), "{}", p.logs());
}

#[test]
fn kept_connections_closed_by_php_are_not_reused() {
    // `pm.max_requests = 1`: every PHP-FPM worker exits after one request,
    // closing the kept connection just after its response. Neither a GET
    // nor a POST may fail for it: the idle check notices a close the
    // reactor has seen, and a close it has not seen yet is retried on a
    // fresh connection (a small body is kept for that). A big body goes on
    // a fresh connection from the start.
    let dir = support::temp_dir();
    let mut once = pool("once");
    once.max_children = 2;
    once.extra = vec!["pm.max_requests = 1".to_string()];
    let fpm = fpm(dir.path(), vec![once]);
    let p = Proxy::flags(
        dir.path(),
        &[
            "--fastcgi",
            &fpm_addr(&fpm, "once"),
            "--root",
            &www(),
            "--keep-conn",
            "--threads",
            "1",
        ],
    );
    for i in 0..6 {
        let r = p.get("/hello.php");
        assert_eq!(r.status, 200, "GET {i}: {}{}", r.text(), p.logs());
        let r = p.req(&support::Req::post("/echo.php", b"abc".to_vec()));
        assert_eq!(r.status, 200, "POST {i}: {}{}", r.text(), p.logs());
        assert!(r.text().contains("len=3"), "POST {i}: {}", r.text());
        let t0 = std::time::Instant::now();
        let r = p.req(&support::Req::post("/echo.php", vec![b'x'; 200_000]));
        assert_eq!(
            r.status,
            200,
            "big POST {i} ({:?} after {:?}): {}{}",
            r.error,
            t0.elapsed(),
            r.text(),
            p.logs()
        );
        assert!(
            r.text().contains("len=200000"),
            "big POST {i}: {}",
            r.text()
        );
    }
    assert!(!p.error_log().contains("cause:"), "{}", p.logs());
}

#[test]
fn retiring_php_workers_are_released_at_once() {
    // A PHP-FPM worker at pm.max_requests answers its last request on a
    // kept connection, shuts down its side and waits for the proxy to close
    // the connection before it exits; until then the master starts no
    // worker in its place. Proxy A must close it as soon as PHP-FPM does
    // (nginx does, from epoll), not when the idle connection expires (60 s)
    // or is taken again: proxy B, on the same one-worker pool, gets through.
    let dir = support::temp_dir();
    let mut one = pool("one");
    one.max_children = 1;
    one.extra = vec!["pm.max_requests = 1".to_string()];
    let fpm = fpm(dir.path(), vec![one]);
    let flags = [
        "--fastcgi",
        &fpm_addr(&fpm, "one"),
        "--root",
        &www(),
        "--keep-conn",
    ];
    let a = Proxy::flags(dir.path(), &flags);
    let b = Proxy::flags(dir.path(), &flags);
    for i in 0..3 {
        let r = a.get("/hello.php");
        assert_eq!(r.status, 200, "A {i}: {}{}", r.text(), a.logs());
        // The client gives up after 30 s: long before A's idle connection
        // would expire.
        let r = b.get("/hello.php");
        assert_eq!(
            r.status,
            200,
            "B {i} ({:?}): {}{}",
            r.error,
            r.text(),
            b.logs()
        );
    }
}

#[test]
fn idle_keep_conn_connections_expire_and_release_the_php_worker() {
    // A one-worker pool: while proxy A keeps its idle FastCGI connection, the
    // worker waits on it and proxy B cannot be served. After A's upstream
    // keepalive_timeout the idle connection is closed and B gets through.
    let dir = support::temp_dir();
    let mut one = pool("one");
    one.max_children = 1;
    let fpm = fpm(dir.path(), vec![one]);
    let top = format!(
        "upstreams:\n  php:\n    servers: [\"{}\"]\n    keepalive: 4\n    keepalive_timeout: 1s",
        fpm_addr(&fpm, "one")
    );
    let a = Proxy::yaml(
        dir.path(),
        &php_yaml(&www(), "php", "keep_conn: true", "", &top),
    );
    assert_eq!(a.get("/hello.php").status, 200);

    let dir_b = support::temp_dir();
    let b = Proxy::flags(
        dir_b.path(),
        &[
            "--fastcgi",
            &fpm_addr(&fpm, "one"),
            "--root",
            &www(),
            "--read-timeout",
            "10s",
        ],
    );
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    let r = b.get("/hello.php");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the worker was still held by an idle connection ({:?})",
        t0.elapsed()
    );
}

/// Established TCP connections to 127.0.0.1:`port` (`/proc/net/tcp`).
fn connections_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let to = format!("0100007F:{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(2) == Some(&to.as_str()) && f.get(3) == Some(&"01")
        })
        .count()
}

#[test]
fn connections_beyond_keepalive_are_closed_right_after_a_burst() {
    // Four requests at once on `keepalive: 1`: four connections to PHP-FPM.
    // The three beyond the limit linger for a moment (for the next burst)
    // and are closed within milliseconds, not at the sweeper's next second:
    // each holds a PHP-FPM worker.
    let dir = support::temp_dir();
    let mut spec = why502::fpm::PoolSpec::new("tcp", why502::fpm::Listen::Tcp(0));
    spec.max_children = 4;
    let fpm = fpm(dir.path(), vec![spec]);
    let Some(why502::fpm::Listen::Tcp(port)) = fpm.listen_of("tcp").cloned() else {
        panic!("no TCP port for the pool");
    };
    let top = format!("upstreams:\n  php:\n    servers: [\"127.0.0.1:{port}\"]\n    keepalive: 1");
    // One thread: `keepalive` is per thread.
    let p = Arc::new(Proxy::yaml_flags(
        dir.path(),
        &php_yaml(&www(), "php", "keep_conn: true", "", &top),
        &["--threads", "1"],
    ));
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || p.get("/sleep.php?s=1"))
        })
        .collect();
    // All four in flight at once.
    let t0 = Instant::now();
    while connections_to(port) < 4 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        connections_to(port),
        4,
        "the burst did not open 4 connections"
    );
    for t in burst {
        let r = t.join().expect("request thread");
        assert_eq!((r.status, r.text().as_str()), (200, "slept 1"), "{r:?}");
    }
    let done = Instant::now();
    while connections_to(port) > 1 && done.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = done.elapsed();
    assert_eq!(connections_to(port), 1, "keepalive 1 keeps one");
    assert!(
        took < Duration::from_millis(400),
        "the connections beyond keepalive were closed only after {took:?}"
    );
    // The one kept is reused.
    assert_eq!(p.get("/hello.php").status, 200);
    assert_eq!(connections_to(port), 1);
}
