//! The failure gallery in a real headless Chromium: `why502 demo` starts a
//! real PHP-FPM and serves the gallery; the browser loads the index and
//! failure pages and we read the rendered DOM.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> PathBuf {
    for c in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!("headless Chromium not found: run tests/setup.sh (apt-get install chromium)");
}

fn start_demo() -> Demo {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::Builder::new()
        .prefix("w502b")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_why502"))
        .args(["demo", "--listen", &addr, "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start why502 demo");
    let mut demo = Demo {
        child,
        addr,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&demo.addr).is_err() {
        if let Ok(Some(status)) = demo.child.try_wait() {
            panic!("why502 demo exited early ({status}): is PHP-FPM installed? run tests/setup.sh");
        }
        assert!(
            Instant::now() < deadline,
            "why502 demo did not listen on {}",
            demo.addr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    demo
}

fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gallery_shows_each_failure_with_its_cause_in_a_browser() {
    let demo = start_demo();
    let index = dump_dom(&format!("http://{}/", demo.addr));
    assert!(index.contains("why502 failure gallery"), "{index}");
    for link in ["/connect/socket-missing", "/fake/bad-version", "memory.php"] {
        assert!(index.contains(link), "gallery lacks {link}");
    }
    for (path, cause) in [
        ("/connect/socket-missing", "connect.socket_missing"),
        ("/connect/refused", "connect.refused"),
        ("/fake/ssh-peer", "framing.not_fastcgi_ssh"),
        ("/headers.php?n=2000", "header.too_big"),
    ] {
        let dom = dump_dom(&format!("http://{}{path}", demo.addr));
        assert!(
            dom.contains(&format!("<code id=\"cause\">{cause}</code>")),
            "{path}: {dom}"
        );
        assert!(dom.contains("id=\"hint\""), "{path}: no hint shown");
        assert!(
            dom.contains("id=\"request-id\""),
            "{path}: no request id shown"
        );
    }
    // The socket-missing page names the socket that does exist (the PHP upgrade story).
    let dom = dump_dom(&format!("http://{}/connect/socket-missing", demo.addr));
    assert!(dom.contains("php8.2-fpm.sock"), "{dom}");
}
