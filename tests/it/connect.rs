//! connect.*: opening the connection to the upstream.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::{self, Req};

#[test]
fn socket_missing_names_the_sibling_socket() {
    let dir = support::temp_dir();
    // The classic PHP upgrade: PHP-FPM 8.2 listens on php8.2-fpm.sock, the
    // proxy still points at php7.4-fpm.sock.
    let f = fpm(dir.path(), vec![pool("php8.2-fpm")]);
    let live = fpm_addr(&f, "php8.2-fpm");
    let old = live.replace("php8.2-fpm.sock", "php7.4-fpm.sock");
    let p = Proxy::flags(dir.path(), &["--fastcgi", &old, "--root", &www()]);
    let r = p.get("/hello.php");
    let d = assert_diagnosed(&p, &r, "connect.socket_missing", 502);
    assert!(d.log_line.contains(" [crit] "), "{}", d.log_line);
    let body = r.text();
    assert!(
        body.contains("php8.2-fpm.sock") && body.contains("php7.4-fpm.sock"),
        "the hint should name the sibling socket: {body}"
    );
    // The live socket really works.
    let ok = Proxy::flags(dir.path(), &["--fastcgi", &live, "--root", &www()]);
    assert_eq!(ok.get("/hello.php").text(), "hello");
}

#[test]
fn permission_denied_for_a_non_root_proxy() {
    let dir = support::temp_dir();
    open_perms(dir.path(), 0o755);
    // PHP-FPM runs as root (-R): its socket is root's, mode 0600.
    let mut spec = pool("www");
    spec.listen_mode = Some("0600".into());
    let f = fpm(dir.path(), vec![spec]);
    // why502 runs as nobody; its log files must be writable by it.
    let logdir = dir.path().join("logs");
    std::fs::create_dir(&logdir).unwrap();
    open_perms(&logdir, 0o777);
    let p = Proxy::flags_wrapped(
        &logdir,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["--fastcgi", &fpm_addr(&f, "www"), "--root", &www()],
    );
    let r = p.get("/hello.php");
    let d = assert_diagnosed(&p, &r, "connect.permission_denied", 502);
    assert!(
        d.log_line.contains("(13: Permission denied)"),
        "{}",
        d.log_line
    );
    assert!(d.log_line.contains(" [crit] "), "{}", d.log_line);
}

#[test]
fn stale_socket_of_a_crashed_fpm() {
    let dir = support::temp_dir();
    let f = fpm(dir.path(), vec![pool("www")]);
    let addr = fpm_addr(&f, "www");
    let path = addr.strip_prefix("unix:").unwrap().to_string();
    // Crash PHP-FPM for real: SIGKILL its process group (master + workers).
    // The kernel does not remove the socket file.
    let pid = f.pid().expect("fpm pid") as libc::pid_t;
    // SAFETY: kill(2) on the process group of the PHP-FPM master this test started.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let refused =
        wait_until(
            Duration::from_secs(10),
            || match std::os::unix::net::UnixStream::connect(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            },
        );
    assert!(refused.is_some(), "socket still accepts after SIGKILL");
    assert!(std::path::Path::new(&path).exists());
    let p = Proxy::flags(dir.path(), &["--fastcgi", &addr, "--root", &www()]);
    let r = p.get("/hello.php");
    let d = assert_diagnosed(&p, &r, "connect.socket_stale", 502);
    assert!(
        d.log_line.contains("(111: Connection refused)"),
        "{}",
        d.log_line
    );
    drop(f);
}

#[test]
fn tcp_refused() {
    let dir = support::temp_dir();
    let (_hold, port) = refused_port();
    let up = format!("127.0.0.1:{port}");
    let p = Proxy::flags(dir.path(), &["--fastcgi", &up, "--root", &www()]);
    let r = p.get("/hello.php");
    let d = assert_diagnosed(&p, &r, "connect.refused", 502);
    assert!(
        d.log_line
            .contains(&format!("upstream: \"fastcgi://{up}\"")),
        "{}",
        d.log_line
    );
}

/// `ss -x` lines mentioning `path` (`-l`: the listener, else connected sockets).
fn ss_lines(path: &str, listening: bool) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .arg(if listening { "-xlnH" } else { "-xnH" })
        .output()
        .expect("ss (iproute2) is needed to watch the listen queue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == path))
        .map(str::to_string)
        .collect()
}

/// The accept queue length of the unix listening socket at `path`.
fn listen_queue(path: &str) -> u32 {
    ss_lines(path, true)
        .first()
        .and_then(|l| l.split_whitespace().nth(2).and_then(|q| q.parse().ok()))
        .unwrap_or(0)
}

/// Waits until `cond` holds continuously for 300 ms (at most 10 s).
fn wait_stable(mut cond: impl FnMut() -> bool) -> bool {
    let mut since: Option<Instant> = None;
    wait_until(Duration::from_secs(10), || {
        if cond() {
            let t = *since.get_or_insert_with(Instant::now);
            (t.elapsed() >= Duration::from_millis(300)).then_some(())
        } else {
            since = None;
            None
        }
    })
    .is_some()
}

#[test]
fn backlog_full_with_a_saturated_pool() {
    let dir = support::temp_dir();
    let mut spec = pool("www");
    spec.max_children = 1;
    spec.listen_backlog = 0;
    let f = fpm(dir.path(), vec![spec]);
    let addr = fpm_addr(&f, "www");
    let path = addr.strip_prefix("unix:").unwrap().to_string();
    let p = Proxy::flags(dir.path(), &["--fastcgi", &addr, "--root", &www()]);
    let sleeper = |a: String| {
        std::thread::spawn(move || {
            support::http(
                &a,
                &Req::get("/sleep.php?s=3").timeout(Duration::from_secs(20)),
            )
        })
    };
    // First sleeping request: accepted by the only worker (an established
    // connection on the socket, nothing queued).
    let first = sleeper(p.addr.clone());
    assert!(
        wait_stable(|| listen_queue(&path) == 0 && !ss_lines(&path, false).is_empty()),
        "the worker never took the first request{}",
        p.logs()
    );
    // Second: waits in the backlog (listen.backlog 0 holds one connection).
    let second = sleeper(p.addr.clone());
    assert!(
        wait_stable(|| listen_queue(&path) >= 1),
        "the second request never queued{}",
        p.logs()
    );
    let r = p.get("/hello.php");
    let d = assert_diagnosed(&p, &r, "connect.backlog_full", 502);
    assert!(
        d.log_line
            .contains("(11: Resource temporarily unavailable)"),
        "{}",
        d.log_line
    );
    for t in [first, second] {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "in-flight request: {r:?}");
    }
}

#[test]
fn connect_timeout_on_a_stuck_accept_queue() {
    // A loopback listener with backlog 0 that never accepts: once its accept
    // queue holds one connection, the kernel drops further SYNs, so a connect
    // neither succeeds nor fails: it times out.
    let dir = support::temp_dir();
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let la = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    let mut stuck = false;
    for _ in 0..8 {
        match TcpStream::connect_timeout(&la, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => {
                stuck = true;
                break;
            }
        }
    }
    assert!(stuck, "the accept queue never filled up");
    let up = la.to_string();
    let p = Proxy::flags(
        dir.path(),
        &[
            "--fastcgi",
            &up,
            "--root",
            &www(),
            "--connect-timeout",
            "1s",
        ],
    );
    let t0 = Instant::now();
    let r = p.get("/hello.php");
    let took = t0.elapsed();
    assert_diagnosed(&p, &r, "connect.timeout", 504);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

#[test]
fn connect_failed_on_other_errno() {
    // A socket path under a regular file: ENOTDIR, which no specific cause covers.
    let dir = support::temp_dir();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let up = format!("unix:{}/php.sock", file.display());
    let p = Proxy::flags(dir.path(), &["--fastcgi", &up, "--root", &www()]);
    let r = p.get("/hello.php");
    let d = assert_diagnosed(&p, &r, "connect.failed", 502);
    assert!(
        d.log_line.contains("(20: Not a directory)"),
        "{}",
        d.log_line
    );
    assert!(r.text().contains("Not a directory"), "{}", r.text());
}

#[test]
fn no_live_upstreams_after_both_servers_failed() {
    let dir = support::temp_dir();
    let (_a, pa) = refused_port();
    let (_b, pb) = refused_port();
    let top = format!(
        "upstreams:\n  php:\n    servers:\n      - {{ address: \"127.0.0.1:{pa}\", max_fails: 1, fail_timeout: 60s }}\n      - {{ address: \"127.0.0.1:{pb}\", max_fails: 1, fail_timeout: 60s }}\n"
    );
    let p = Proxy::yaml(dir.path(), &php_yaml(&www(), "php", "", "", &top));
    // First request: both servers are tried, both refuse; the last error is reported.
    let r = p.get("/hello.php");
    assert_diagnosed(&p, &r, "connect.refused", 502);
    // Both are now marked down for fail_timeout.
    let r = p.get("/hello.php");
    let d = assert_diagnosed(&p, &r, "connect.no_live_upstreams", 502);
    let details = d.event["details"].as_str().unwrap_or_default().to_string();
    assert!(
        details.contains(&pa.to_string()) && details.contains(&pb.to_string()),
        "details should name each server's last failure: {details}"
    );
}

/// Takes why502's descriptors with idle client connections until accept()
/// fails; returns one accepted connection and the others (every descriptor
/// is in use while they are open).
fn exhaust_descriptors(p: &Proxy) -> (TcpStream, Vec<TcpStream>) {
    let mut held = Vec::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(&p.addr).unwrap();
        s.write_all(b"GET /r HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = support::read_response(&mut s, false, Instant::now() + Duration::from_secs(1));
        if r.status == 200 {
            held.push(s);
            continue;
        }
        // Not accepted (no answer at all): why502 is at its limit. The
        // connection waiting in the listen queue is in the log, as nginx's
        // (why502's own listener or Pingora's).
        assert_eq!(r.status, 0, "{}", r.text());
        let log = p.error_log();
        assert!(
            log.contains(" [crit] ")
                && log.contains("#0: accept4() failed (24: Too many open files)"),
            "{log}"
        );
        // The waiting connection stays open too, or it would be accepted
        // and closed, in the place of a later request.
        let one = held.pop().expect("an accepted connection");
        held.push(s);
        return (one, held);
    }
    panic!("60 connections and no limit reached{}", p.logs());
}

/// why502 limited to 40 descriptors, `/r` answered without any, and a
/// location through an upstream of two servers that are never reached.
fn out_of_descriptors(upstream: &str, location: &str) -> String {
    format!("max_open_files: 40\nupstreams:\n  up:\n    servers: [{upstream}]\nservers:\n  - listen: [\"{{listen}}\"]\n    locations:\n      - exact: /r\n        return: {{ code: 200, text: \"hi\\n\" }}\n      - {location}\n")
}

/// The request on `s` is answered 500 `connect.socket_failed` and the
/// connection closed, as nginx does; only the first server was tried (one
/// log line), and it was not marked failed: the next request is not
/// "no live upstreams" (max_fails 1).
fn assert_socket_failed(p: &Proxy, s: &mut TcpStream, held: &mut [TcpStream], path: &str) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let r = support::read_response(s, false, Instant::now() + Duration::from_secs(10));
    let d = assert_diagnosed(p, &r, "connect.socket_failed", 500);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    assert!(
        d.log_line.contains(" [alert] ")
            && d.log_line
                .contains("socket() failed (24: Too many open files) while connecting to upstream"),
        "{}",
        d.log_line
    );
    let log = p.error_log();
    assert_eq!(log.matches("socket() failed").count(), 1, "{log}");
    let s = held.first_mut().expect("a held connection");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let r = support::read_response(s, false, Instant::now() + Duration::from_secs(10));
    let cause = r.header("why502-cause").unwrap_or_default().to_string();
    assert!(
        cause.starts_with("connect.") && cause != "connect.no_live_upstreams",
        "{cause}: {:?}",
        r.headers
    );
}

#[test]
fn socket_failed_when_why502_is_out_of_descriptors() {
    let dir = support::temp_dir();
    let yaml = out_of_descriptors(
        "\"unix:/nonexistent-why502-a/php.sock\", \"unix:/nonexistent-why502-b/php.sock\"",
        "regex: '\\.php$'\n        fastcgi: { pass: up }",
    );
    let p = Proxy::yaml_flags(dir.path(), &yaml, &["--threads", "1"]);
    let (mut s, mut held) = exhaust_descriptors(&p);
    assert_socket_failed(&p, &mut s, &mut held, "/hello.php");
}

#[test]
fn socket_failed_on_an_http_upstream_is_not_its_failure() {
    let dir = support::temp_dir();
    // A port with an HTTP upstream is served by Pingora.
    let yaml = out_of_descriptors(
        "\"127.0.0.1:9\", \"127.0.0.1:7\"",
        "prefix: /proxy/\n        proxy: { pass: \"http://up\" }",
    );
    let p = Proxy::yaml_flags(dir.path(), &yaml, &["--threads", "1"]);
    let (mut s, mut held) = exhaust_descriptors(&p);
    assert_socket_failed(&p, &mut s, &mut held, "/proxy/x");
}
