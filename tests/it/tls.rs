//! why502's TLS listeners (Pingora's): HTTP/1.1 and HTTP/2 by ALPN in front
//! of a real PHP-FPM, with the diagnosis; and a handshake that fails is in
//! the error log as nginx writes it (checked against nginx 1.22 by hand:
//! docs/nginx-compat.md).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::support;

/// A self-signed certificate and key for 127.0.0.1, made by the openssl
/// command (tests/setup.sh installs it).
fn self_signed(dir: &Path) -> (String, String) {
    let cert = dir.join("site.pem");
    let key = dir.join("site.key");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is required (tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

/// `curl -k` over TLS with `version` (`--http1.1`, `--http2`): (exit code,
/// "http_version status size", lower-cased headers).
fn curl_tls(addr: &str, version: &str, path: &str) -> (i32, String, String) {
    curl_summary(&["-k", version], &format!("https://{addr}{path}"))
}

/// Sends `bytes` on a new connection, then reads until the server closes
/// it (or 5 s pass): what the server answered.
fn send_raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    if !bytes.is_empty() {
        s.write_all(bytes).expect("write");
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn tls_listener_serves_php_over_h1_and_h2_and_logs_failed_handshakes() {
    let dir = support::temp_dir();
    let (cert, key) = self_signed(dir.path());
    let fpm = fpm(dir.path(), vec![pool("www")]);
    let yaml = php_yaml(&www(), &fpm_addr(&fpm, "www"), "", "", "").replace(
        "listen: [\"{listen}\"]",
        &format!("listen: [{{ address: \"{{listen}}\", http2: true, tls: {{ cert: \"{cert}\", key: \"{key}\" }} }}]"),
    );
    let p = Proxy::yaml(dir.path(), &yaml);

    // ALPN picks the protocol; PHP answers on both.
    for (version, proto) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, summary, _) = curl_tls(&p.addr, version, "/big.php?mb=1");
        assert_eq!(
            (code, summary.as_str()),
            (0, &*format!("{proto} 200 1048576"))
        );
        // A failure is diagnosed on this listener as on the others.
        let (code, summary, headers) = curl_tls(&p.addr, version, "/memory.php");
        assert_eq!(code, 0, "{version}");
        assert!(summary.starts_with(&format!("{proto} 500")), "{summary}");
        assert!(
            headers.contains("why502-cause: app.memory_exhausted"),
            "{headers}"
        );
    }

    // Three clients that fail the handshake, and nginx's line for each
    // (nginx answers plain HTTP with a 400 page; here the connection is
    // closed, as Pingora ends the handshake).
    let plain = send_raw(&p.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!plain.starts_with(b"HTTP/"), "{plain:?}");
    send_raw(&p.addr, b"\x16\x03\x01\x00\x05hello");
    send_raw(&p.addr, b"");
    let want = [
        "client sent plain HTTP request to HTTPS port while SSL handshaking, client: 127.0.0.1",
        "SSL_do_handshake() failed (SSL: error:",
        "peer closed connection in SSL handshake while SSL handshaking, client: 127.0.0.1",
    ];
    let log = wait_until(Duration::from_secs(5), || {
        let log = p.error_log();
        want.iter().all(|w| log.contains(w)).then_some(log)
    })
    .unwrap_or_else(|| panic!("handshake failures not logged:\n{}", p.error_log()));
    for w in want {
        let line = log.lines().find(|l| l.contains(w)).unwrap_or_default();
        assert!(line.contains(" [info] "), "{line}");
    }
    let ssl = log
        .lines()
        .find(|l| l.contains("SSL_do_handshake() failed"))
        .unwrap_or_default();
    // OpenSSL's error as nginx writes it: code, library, no function.
    assert!(
        ssl.contains(" routines::") && ssl.ends_with(") while SSL handshaking, client: 127.0.0.1"),
        "{ssl}"
    );
}
