//! The process settings nginx sets in its main context: `worker_rlimit_nofile`
//! and `worker_priority` (`max_open_files` and `priority` in YAML), and the
//! soft open-files limit raised to the hard one when none is set. And what
//! a bug (a panic) in why502 costs: one connection, and a line in the log.

use std::time::Duration;

use crate::harness::{wait_until, Proxy};
use crate::support;

const SITE: &str = "servers:\n  - listen: [\"{listen}\"]\n    locations:\n      - exact: /r\n        return: { code: 200, text: \"hi\\n\" }\n";

/// The soft and hard "Max open files" of a process.
fn open_files(pid: u32) -> (String, String) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = t
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in\n{t}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// The nice value of every thread of a process, by thread name.
fn nice_values(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: nice is the 19th field, the 17th
        // after the command's closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let nice = stat[close + 1..]
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no nice value in {stat}"));
        out.push((name, nice));
    }
    out
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let dir = support::temp_dir();
    // prlimit sets the limits and runs why502 in its place.
    let p = Proxy::flags_wrapped(
        dir.path(),
        &["prlimit", "--nofile=256:4096", "--"],
        &["--root", "/tmp"],
    );
    assert_eq!(
        open_files(p.pid()),
        ("4096".into(), "4096".into()),
        "{}",
        p.logs()
    );
}

#[test]
fn max_open_files_and_priority_apply_to_every_thread() {
    let dir = support::temp_dir();
    let p = Proxy::yaml(
        dir.path(),
        &format!("max_open_files: 3000\npriority: 7\n{SITE}"),
    );
    assert_eq!(p.get("/r").status, 200, "{}", p.logs());
    assert_eq!(open_files(p.pid()), ("3000".into(), "3000".into()));
    // The worker threads (two, from the harness) and every other thread
    // the server started: all of them at 7.
    let threads = wait_until(Duration::from_secs(5), || {
        let v = nice_values(p.pid());
        (v.len() >= 3).then_some(v)
    })
    .expect("threads");
    assert!(threads.iter().all(|(_, n)| *n == 7), "{threads:?}");
    assert!(p.error_log().is_empty(), "{}", p.logs());
}

#[test]
fn a_limit_that_cannot_be_set_is_an_alert_and_the_server_runs() {
    let dir = support::temp_dir();
    // Beyond fs.nr_open (1,048,576 by default): refused even to root.
    let p = Proxy::yaml(dir.path(), &format!("max_open_files: 4000000000\n{SITE}"));
    assert_eq!(p.get("/r").status, 200, "{}", p.logs());
    let log = p.error_log();
    assert!(
        log.contains(" [alert] ")
            && log.contains(
                "#0: setrlimit(RLIMIT_NOFILE, 4000000000) failed (1: Operation not permitted)"
            ),
        "{log}"
    );
}

/// A panic (a bug in why502 or a library) ends the one connection it hit:
/// it is an `[alert]` in the error log, and every other connection, open
/// before or after, is served on. On why502's own listener and on Pingora's
/// (a port with an HTTP backend). `WHY502_TEST_PANIC` makes a request for
/// that path panic; debug builds (the tests') only.
#[test]
fn a_panic_ends_one_connection_and_is_in_the_error_log() {
    if !cfg!(debug_assertions) {
        panic!("WHY502_TEST_PANIC is in debug builds only: run this test without --release");
    }
    for pingora in [false, true] {
        let dir = support::temp_dir();
        let proxy = if pingora {
            "\n      - prefix: /proxy/\n        proxy: { pass: \"http://127.0.0.1:9\" }"
        } else {
            ""
        };
        let p = Proxy::yaml_wrapped(
            dir.path(),
            &["env", "WHY502_TEST_PANIC=/boom"],
            &format!("{SITE}{proxy}\n"),
            &[],
        );
        // A keep-alive connection open before the panic.
        let mut before = std::net::TcpStream::connect(&p.addr).expect("connect");
        let get_r = b"GET /r HTTP/1.1\r\nHost: t\r\n\r\n";
        let deadline = || std::time::Instant::now() + Duration::from_secs(5);
        std::io::Write::write_all(&mut before, get_r).expect("write");
        let r = support::read_response(&mut before, false, deadline());
        assert_eq!(r.status, 200, "pingora {pingora}: {}", p.logs());

        let r = p.get("/boom");
        assert_eq!(
            r.status,
            0,
            "pingora {pingora}: no answer, the connection closed: {}",
            r.text()
        );
        let log = wait_until(Duration::from_secs(5), || {
            let log = p.error_log();
            log.contains("panicked").then_some(log)
        })
        .unwrap_or_else(|| panic!("pingora {pingora}: no panic line in\n{}", p.logs()));
        assert!(
            log.lines().any(|l| l.contains(" [alert] ")
                && l.contains("#0: bug: thread '")
                && l.contains("panicked at src/proxy/mod.rs:")
                && l.contains(": WHY502_TEST_PANIC: /boom; the connection it served was closed")),
            "pingora {pingora}: {log}"
        );

        std::io::Write::write_all(&mut before, get_r).expect("write");
        let r = support::read_response(&mut before, false, deadline());
        assert_eq!(
            r.status,
            200,
            "pingora {pingora}: the connection from before: {}",
            p.logs()
        );
        assert_eq!(
            p.get("/r").status,
            200,
            "pingora {pingora}: a new connection: {}",
            p.logs()
        );
    }
}
