//! why502's own HTTP/1.1 server (`src/h1.rs`), which serves the plain
//! listeners in front of PHP-FPM: keep-alive, pipelining, chunked uploads,
//! `Expect: 100-continue`, HTTP/1.0, and nginx's answers to malformed
//! requests (each status checked against nginx 1.22).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{fpm, fpm_addr, pool, www, Proxy};
use crate::header::with_php;
use crate::support;

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Everything the server sends until it closes the connection.
///
/// A few times under a loaded machine (3 of about 13 full-suite runs here,
/// once in CI), a response on a keep-alive connection came about 10 s
/// late, and not once in over 140 runs since, with or without instrumentation.
/// So a read waits up to 30 s (a hang still fails the test), and a read
/// that took over 5 s appends the state of the test's servers (sockets,
/// logs) to `target/tmp/slow-responses.log`, which `.ci/run` prints; a read
/// that times out panics with that state.
fn read_to_close(s: &mut TcpStream, p: &Proxy, dir: &Path) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(45);
    while Instant::now() < deadline {
        let asked = Instant::now();
        let r = s.read(&mut buf);
        if asked.elapsed() > Duration::from_secs(5) {
            note_slow(asked.elapsed(), &out, p, dir);
        }
        match r {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "read: {e} after {:?}\n{}",
                String::from_utf8_lossy(&out),
                servers_state(p, dir)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn note_slow(took: Duration, got: &[u8], p: &Proxy, dir: &Path) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("slow-responses.log");
    let entry = format!(
        "=== a read took {took:?} after {:?}\n{}\n",
        String::from_utf8_lossy(got),
        servers_state(p, dir)
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(entry.as_bytes());
    }
}

/// The sockets of the proxy's port and of `dir`, and every log in `dir`.
fn servers_state(p: &Proxy, dir: &Path) -> String {
    let port = p.addr.rsplit(':').next().unwrap_or_default();
    let script = format!(
        "ss -tanpi | grep -A1 ':{port} '; ss -xap | grep '{}'",
        dir.display()
    );
    let ss = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("ss: {e}"));
    let mut state = format!("sockets:\n{ss}");
    // The proxy's error log and events are `*.log` in `dir`, as is PHP-FPM's.
    let mut logs = vec![p.stderr.clone()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        logs.extend(
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "log")),
        );
    }
    for f in logs {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| format!("({e})"));
        state.push_str(&format!("--- {}:\n{text}\n", f.display()));
    }
    state
}

fn response(s: &mut TcpStream) -> support::HttpResponse {
    support::read_response(s, false, Instant::now() + Duration::from_secs(10))
}

#[test]
fn keep_alive_and_pipelining() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let mut s = connect(&p.addr);
    // Five requests one after the other on one connection.
    for i in 0..5 {
        s.write_all(format!("GET /hello.php?i={i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("write");
        let r = response(&mut s);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.header("Connection"), Some("keep-alive"), "{r:?}");
        assert!(r.header("Date").is_some(), "{r:?}");
    }
    // Three pipelined in one write (a HEAD in the middle); the last asks to
    // close.
    s.write_all(
        b"GET /hello.php?a HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /hello.php HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /hello.php?c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let all = read_to_close(&mut s, &p, dir.path());
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &all[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200"], "{all}");
    // The HEAD response has no body: the bodies are the first and last.
    assert_eq!(all.matches("\r\n\r\nhello").count(), 2, "{all}");
    assert!(all.ends_with("\r\n\r\nhello"), "{all}");
    assert_eq!(all.matches("\r\nConnection: close\r\n").count(), 1, "{all}");
}

/// A connection keeps its timers from one request to the next (the wait for
/// the next request, the waits on PHP's response): they must still fire
/// after being moved, after firing, and after an idle wait outlasted the
/// wait's one-second step.
#[test]
fn timers_kept_across_requests_still_fire() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &["--read-timeout", "1s"]);
    let mut s = connect(&p.addr);
    let mut get = |path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("write");
        let t0 = Instant::now();
        (response(&mut s), t0.elapsed())
    };
    let (r, _) = get("/hello.php");
    assert_eq!(r.status, 200, "{r:?}");
    // Idle for longer than one step of the keep-alive wait.
    std::thread::sleep(Duration::from_millis(1500));
    for round in 0..2 {
        let (r, took) = get("/sleep.php?s=5");
        assert_eq!(r.status, 504, "round {round}: {r:?}");
        assert_eq!(r.header("Why502-Cause"), Some("header.timeout"), "{r:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "round {round}: {took:?}"
        );
        let (r, _) = get("/hello.php");
        assert_eq!(r.status, 200, "round {round}: {r:?}");
    }
}

#[test]
fn chunked_upload_reaches_php() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let mut s = connect(&p.addr);
    s.write_all(
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .expect("write");
    let r = response(&mut s);
    assert_eq!(r.status, 200, "{r:?}");
    // sha256("hello world")
    assert!(
        r.text().contains(
            "len=11 sha256=b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        ),
        "{}",
        r.text()
    );
}

#[test]
fn expect_100_continue() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let mut s = connect(&p.addr);
    s.write_all(
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut got = [0u8; 25];
    s.read_exact(&mut got).expect("100 Continue");
    assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").expect("body");
    let r = response(&mut s);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("len=5 "), "{}", r.text());
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let mut s = connect(&p.addr);
    // A response with its own Content-Length: one without it can only be
    // ended by closing for an HTTP/1.0 client (when PHP's END_REQUEST comes
    // in a later read than the header, as under load).
    s.write_all(b"GET /sized.php?bytes=5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .expect("write");
    let r = response(&mut s);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Connection"), Some("keep-alive"), "{r:?}");
    s.write_all(b"GET /hello.php HTTP/1.0\r\n\r\n")
        .expect("write");
    let all = read_to_close(&mut s, &p, dir.path());
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.contains("\r\nConnection: close\r\n"), "{all}");
}

#[test]
fn malformed_requests_get_nginx_statuses() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let long = "a".repeat(9000);
    let cases: Vec<(&str, String, u16)> = vec![
        ("garbage", "GARBAGE\r\n\r\n".into(), 400),
        ("HTTP/1.1 without Host", "GET /hello.php HTTP/1.1\r\n\r\n".into(), 400),
        (
            "two Hosts",
            "GET /hello.php HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
            400,
        ),
        (
            "Content-Length and Transfer-Encoding",
            "POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "invalid Content-Length",
            "POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\nabc".into(),
            400,
        ),
        (
            "unknown transfer coding",
            "POST /echo.php HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
            501,
        ),
        (
            "request line over 8 KiB",
            format!("GET /{long} HTTP/1.1\r\nHost: t\r\n\r\n"),
            414,
        ),
        (
            "header line over 8 KiB",
            format!("GET / HTTP/1.1\r\nHost: t\r\nX-Long: {long}\r\n\r\n"),
            400,
        ),
        (
            "header over 32 KiB",
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
                (0..9)
                    .map(|i| format!("X-{i}: {}\r\n", &long[..4000]))
                    .collect::<String>()
            ),
            400,
        ),
    ];
    for (name, raw, status) in cases {
        let mut s = connect(&p.addr);
        s.write_all(raw.as_bytes()).expect("write");
        let all = read_to_close(&mut s, &p, dir.path());
        assert!(
            all.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {all}"
        );
        assert!(all.contains("\r\nConnection: close\r\n"), "{name}: {all}");
    }
}

#[test]
fn request_body_longer_than_its_length_starts_the_next_request() {
    // The bytes after Content-Length are the next (pipelined) request.
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let mut s = connect(&p.addr);
    s.write_all(
        b"POST /echo.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          GET /hello.php HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let all = read_to_close(&mut s, &p, dir.path());
    assert!(all.contains("len=3 "), "{all}");
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
}

/// Sends a POST header announcing `len` bytes, then the body in 64 KiB
/// writes; returns the first write error, if any.
fn send_upload(s: &mut TcpStream, path: &str, len: usize) -> Option<std::io::Error> {
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).expect("header");
    let piece = vec![b'x'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len());
        if let Err(e) = s.write_all(&piece[..n]) {
            return Some(e);
        }
        left -= n;
    }
    None
}

/// An answer before the request body was read (413 for a body over
/// `client_max_body_size`, a 502 whose socket is missing) closes like
/// nginx's `lingering_close`: the rest of the upload is read and dropped,
/// so the client is not reset in mid-upload and reads the answer. (Closing
/// with unread data sends a reset, which also discards an unread response.)
#[test]
fn early_answers_to_an_upload_linger_instead_of_resetting() {
    early_answers_linger(&[]);
}

/// The same on a listener that Pingora serves (TLS listeners and those
/// with HTTP backends; `WHY502_SERVER=pingora` puts every listener there).
#[test]
fn early_answers_to_an_upload_linger_on_pingora_listeners() {
    early_answers_linger(&["env", "WHY502_SERVER=pingora"]);
}

fn early_answers_linger(wrapper: &[&str]) {
    let dir = support::temp_dir();
    let dead = format!("unix:{}", dir.path().join("gone.sock").display());
    let p = Proxy::flags_wrapped(dir.path(), wrapper, &["--fastcgi", &dead, "--root", &www()]);
    // 20 MB against the default 1 MiB limit: 413.
    let mut s = connect(&p.addr);
    let e = send_upload(&mut s, "/echo.php", 20 << 20);
    assert!(e.is_none(), "reset during the upload: {e:?}");
    let all = read_to_close(&mut s, &p, dir.path());
    assert!(all.starts_with("HTTP/1.1 413 "), "{all}");
    // Within the limit, to a missing socket: the 502 comes before the body
    // is read.
    let mut s = connect(&p.addr);
    let e = send_upload(&mut s, "/echo.php", 1 << 20);
    assert!(e.is_none(), "reset during the upload: {e:?}");
    let all = read_to_close(&mut s, &p, dir.path());
    assert!(all.starts_with("HTTP/1.1 502 "), "{all}");
    assert!(all.contains("connect.socket_missing"), "{all}");
}

/// A path that is not UTF-8 (Latin-1 `é` = 0xE9, percent-encoded or raw in
/// the request line) reaches PHP as its bytes, as with nginx: the script's
/// file name, PATH_INFO, QUERY_STRING and REQUEST_URI. Before, why502
/// answered 400. Pingora's listeners get the percent-encoded form right too;
/// their parser refuses raw bytes (400, docs/nginx-compat.md).
#[test]
fn paths_that_are_not_utf8_reach_php_as_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = support::temp_dir();
    let root = dir.path().join("www");
    std::fs::create_dir(&root).expect("mkdir www");
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xE9.php")),
        "<?php echo implode(' ', array_map('bin2hex', [$_SERVER['PATH_INFO'] ?? '', \
         $_SERVER['QUERY_STRING'], $_SERVER['REQUEST_URI']]));",
    )
    .expect("write script");
    let f = fpm(dir.path(), vec![pool("www")]);
    let flags = [
        "--fastcgi",
        &fpm_addr(&f, "www"),
        "--root",
        &root.display().to_string(),
    ];
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let ask = |p: &Proxy, target: &[u8]| {
        let mut s = connect(&p.addr);
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(&req).expect("write request");
        read_to_close(&mut s, p, dir.path())
    };
    let own = Proxy::flags(dir.path(), &flags);
    let pingora = Proxy::flags_wrapped(dir.path(), &["env", "WHY502_SERVER=pingora"], &flags);
    let encoded = b"/caf%E9.php/x%E9?q=%E9";
    let want = format!("{} {} {}", hex(b"/x\xE9"), hex(b"q=%E9"), hex(encoded));
    for p in [&own, &pingora] {
        let all = ask(p, encoded);
        assert!(all.starts_with("HTTP/1.1 200 "), "{all}");
        assert!(all.ends_with(&want), "{all}");
    }
    let raw = b"/caf\xE9.php/x\xE9?q=\xE9";
    let all = ask(&own, raw);
    assert!(all.starts_with("HTTP/1.1 200 "), "{all}");
    assert!(
        all.ends_with(&format!(
            "{} {} {}",
            hex(b"/x\xE9"),
            hex(b"q=\xE9"),
            hex(raw)
        )),
        "{all}"
    );
    let all = ask(&pingora, raw);
    assert!(all.starts_with("HTTP/1.1 400 "), "{all}");
}
