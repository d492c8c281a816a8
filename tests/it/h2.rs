//! HTTP/2 clients (h2c, prior knowledge) through the FastCGI gateway: the
//! diagnosis headers arrive, and a failure after the header resets the stream
//! so an h2 client can tell the body is truncated.

use std::process::Command;

use crate::harness::*;
use crate::support;

/// The config `yaml` with its listener taking h2c (prior knowledge) too.
fn h2c(yaml: &str) -> String {
    yaml.replace(
        "listen: [\"{listen}\"]",
        "listen: [{ address: \"{listen}\", http2: true }]",
    )
}

/// `curl --http2-prior-knowledge`: (exit code, "http_version status size", headers).
fn curl_h2(addr: &str, path: &str) -> (i32, String, String) {
    curl_summary(
        &["--http2-prior-knowledge"],
        &format!("http://{addr}{path}"),
    )
}

#[test]
fn h2c_clients_get_diagnosis_and_aborted_streams() {
    let dir = support::temp_dir();
    let fpm = fpm(dir.path(), vec![pool("www")]);
    let yaml = h2c(&php_yaml(&www(), &fpm_addr(&fpm, "www"), "", "", ""));
    let p = Proxy::yaml(dir.path(), &yaml);

    let (code, summary, _) = curl_h2(&p.addr, "/big.php?mb=4");
    assert_eq!((code, summary.as_str()), (0, "2 200 4194304"));

    let (code, summary, headers) = curl_h2(&p.addr, "/memory.php");
    assert_eq!(code, 0);
    assert!(summary.starts_with("2 500"), "{summary}");
    assert!(
        headers.contains("why502-cause: app.memory_exhausted"),
        "{headers}"
    );
    assert!(
        headers.contains("proxy-status: why502; received-status=500"),
        "{headers}"
    );

    // A worker killed mid-body: the stream is reset, curl reports an error.
    let (code, summary, _) = curl_h2(&p.addr, "/kill.php?sig=9&when=mid");
    assert_ne!(
        code, 0,
        "an aborted h2 stream must not look complete: {summary}"
    );
    assert!(summary.starts_with("2 200"), "{summary}");
    assert_logged(&p, "body.reset", None);
}

/// A FastCGI response that arrives whole (END_REQUEST in the same read)
/// goes out as one DATA frame that ends the stream, as nginx sends it, not
/// the data and then an empty DATA frame with END_STREAM.
#[test]
fn h2c_whole_response_is_one_data_frame() {
    let dir = support::temp_dir();
    let fpm = fpm(dir.path(), vec![pool("www")]);
    let yaml = h2c(&php_yaml(&www(), &fpm_addr(&fpm, "www"), "", "", ""));
    let p = Proxy::yaml(dir.path(), &yaml);
    let out = Command::new("nghttp")
        .args(["-v", "-t", "20"])
        .arg(format!("http://{}/hello.php", p.addr))
        .output()
        .expect("nghttp is required (tests/setup.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let data: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("recv DATA frame"))
        .collect();
    assert_eq!(data.len(), 1, "{text}");
    assert!(
        data[0].contains("length=5, flags=0x01"),
        "one DATA frame, END_STREAM:\n{text}"
    );
}

/// An access log that reads the response header as sent
/// (`$sent_http_NAME`, `$bytes_sent`) over HTTP/2: the server keeps the
/// header's map for it (without such a variable it hands the map to the
/// `h2` crate, and `$status` still comes from what is kept).
#[test]
fn h2c_access_log_reads_the_sent_header() {
    let dir = support::temp_dir();
    let d = dir.path().display().to_string();
    let fpm = fpm(dir.path(), vec![pool("www")]);
    let top = format!(
        "log:\n  access_log: {{ path: {d}/a.log, format: c }}\n  log_formats:\n    c: {{ format: '$status|$sent_http_content_type|$sent_http_why502_cause|$bytes_sent|$body_bytes_sent' }}\n"
    );
    let yaml = h2c(&php_yaml(&www(), &fpm_addr(&fpm, "www"), "", "", &top));
    let p = Proxy::yaml(dir.path(), &yaml);
    let (code, summary, _) = curl_h2(&p.addr, "/hello.php");
    assert_eq!((code, summary.as_str()), (0, "2 200 5"), "{summary}");
    let (code, summary, _) = curl_h2(&p.addr, "/memory.php");
    assert_eq!(code, 0);
    assert!(summary.starts_with("2 500"), "{summary}");

    let log = wait_until(std::time::Duration::from_secs(5), || {
        let t = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
        (t.lines().count() >= 2).then_some(t)
    })
    .unwrap_or_else(|| panic!("a.log did not get 2 lines"));
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split('|').collect()).collect();
    for (l, status, cause) in [
        (&lines[0], "200", "-"),
        (&lines[1], "500", "app.memory_exhausted"),
    ] {
        assert_eq!(l[0], status, "{log}");
        assert!(l[1].starts_with("text/"), "{log}");
        assert_eq!(l[2], cause, "{log}");
        let all: usize = l[3].parse().expect("bytes_sent");
        let body: usize = l[4].parse().expect("body_bytes_sent");
        // The header's fields count: at least its Content-Type line.
        assert!(all > body + "content-type: text/\r\n".len(), "{log}");
    }
}

/// The own HTTP/2 server on an `http2` listener: streams of one connection
/// share its number (`$connection`, `*N`), many run at once, an upload
/// larger than the flow-control windows arrives whole, HEAD has no body, and
/// an HTTP/1.1 client on the same port is still served.
#[test]
fn h2c_streams_uploads_and_http1_on_one_listener() {
    let dir = support::temp_dir();
    let d = dir.path().display().to_string();
    let fpm = fpm(dir.path(), vec![pool("www")]);
    let top = format!(
        "log:\n  access_log: {{ path: {d}/a.log, format: c }}\n  log_formats:\n    c: {{ format: '$connection $server_protocol $request_method $status $body_bytes_sent $request_length' }}\n"
    );
    let yaml = h2c(&php_yaml(
        &www(),
        &fpm_addr(&fpm, "www"),
        "",
        "client_max_body_size: 8m",
        &top,
    ));
    let p = Proxy::yaml(dir.path(), &yaml);
    let url = |path: &str| format!("http://{}{path}", p.addr);

    // Three requests, one after another on one connection (curl 7.88
    // cannot reuse an h2c connection, with nginx either).
    let out = Command::new("h2load")
        .args(["-n", "3", "-c", "1", "-m", "1"])
        .args([url("/hello.php"), url("/hello.php"), url("/nothere.php")])
        .output()
        .expect("h2load is required (tests/setup.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 done") && text.contains("2 2xx, 0 3xx, 1 4xx, 0 5xx"),
        "h2load:\n{text}"
    );

    // 200 requests, 20 at a time on each of 2 connections.
    let out = Command::new("h2load")
        .args(["-n", "200", "-c", "2", "-m", "20", &url("/hello.php")])
        .output()
        .expect("h2load is required (tests/setup.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("200 succeeded, 0 failed"), "h2load:\n{text}");

    // An upload of 3 MiB and a bit: more than the stream's (64 KiB) and the
    // connection's (1 MiB) receive windows.
    let body: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i % 251) as u8)
        .collect();
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &body).expect("write upload");
    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "--max-time", "30"])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(url("/echo.php"))
        .output()
        .expect("curl");
    let hex: String = openssl::sha::sha256(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("len={} sha256={hex}", body.len())
    );

    // HEAD: the header only.
    let (code, summary, headers) = {
        let out = Command::new("curl")
            .args(["-s", "-I", "--http2-prior-knowledge", "--max-time", "20"])
            .args(["-w", "\n%{http_version} %{http_code} %{size_download}"])
            .arg(url("/hello.php"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (h, s) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (out.status.code(), s.to_string(), h.to_ascii_lowercase())
    };
    assert_eq!((code, summary.as_str()), (Some(0), "2 200 0"), "{headers}");
    assert!(headers.contains("content-type: text/"), "{headers}");
    assert!(headers.contains("date: "), "{headers}");
    assert!(!headers.contains("connection:"), "{headers}");

    // HTTP/1.1 on the same port.
    let r = p.get("/hello.php");
    assert_eq!(r.status, 200);

    let log = wait_until(std::time::Duration::from_secs(5), || {
        let t = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
        (t.lines().count() >= 206).then_some(t)
    })
    .unwrap_or_else(|| panic!("a.log did not get 206 lines"));
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    let first = &lines[..3];
    assert!(
        first
            .iter()
            .all(|l| l[0] == first[0][0] && l[1] == "HTTP/2.0"),
        "one connection, HTTP/2:\n{log}"
    );
    assert_eq!(first[2][3], "404", "{log}");
    let load = &lines[3..203];
    let conns: std::collections::BTreeSet<&str> = load.iter().map(|l| l[0]).collect();
    assert_eq!(conns.len(), 2, "h2load's two connections:\n{log}");
    assert!(!conns.contains(first[0][0]), "{log}");
    let upload = &lines[203];
    assert_eq!(upload[2..4], ["POST", "200"], "{log}");
    let len: usize = upload[5].parse().expect("request_length");
    assert!(len >= body.len(), "request_length {len}: {log}");
    assert_eq!(lines[204][2..5], ["HEAD", "200", "0"], "{log}");
    assert_eq!(lines[205][1], "HTTP/1.1", "{log}");
    assert!(!lines[..205].iter().any(|l| l[0] == lines[205][0]), "{log}");
}

/// `keepalive_requests` (nginx's, default 1000): the third request on an
/// HTTP/1.1 connection gets `Connection: close` and the connection closes;
/// an h2c connection gets GOAWAY after its third stream.
#[test]
fn keepalive_requests_closes_http1_and_h2c_connections() {
    use std::io::{Read, Write};
    let dir = support::temp_dir();
    let yaml = "servers:\n  - listen: [{ address: \"{listen}\", http2: true }]\n    keepalive_requests: 3\n    locations:\n      - exact: /r\n        return: { code: 200, text: \"hi\\n\" }\n";
    let p = Proxy::yaml(dir.path(), yaml);

    let mut s = std::net::TcpStream::connect(&p.addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut connection = Vec::new();
    for i in 0..3 {
        s.write_all(b"GET /r HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        let r = support::read_response(
            &mut s,
            false,
            std::time::Instant::now() + std::time::Duration::from_secs(10),
        );
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        connection.push(r.header("Connection").unwrap_or("").to_string());
    }
    assert_eq!(connection, ["keep-alive", "keep-alive", "close"]);
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).expect("the server closes");
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&rest));

    let out = Command::new("h2load")
        .args(["-n", "6", "-c", "1", "-m", "1"])
        .arg(format!("http://{}/r", p.addr))
        .output()
        .expect("h2load is required (tests/setup.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("6 total, 3 started, 3 done, 3 succeeded"),
        "h2load:\n{text}"
    );
}

/// `keepalive_timeout` (nginx's, default 75 s): a connection idle that long
/// after its last request is closed, on a port the own server serves and on
/// one Pingora serves (a server there proxies to an HTTP backend);
/// `keepalive_requests` holds on both. `keepalive_timeout 0` closes the
/// connection after each response.
#[test]
fn keepalive_timeout_closes_idle_connections() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let get = |s: &mut std::net::TcpStream, what: &str| {
        s.write_all(b"GET /r HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        let r = support::read_response(s, false, Instant::now() + Duration::from_secs(10));
        assert_eq!(r.status, 200, "{what}: {r:?}");
        r.header("Connection").unwrap_or("").to_string()
    };
    // Reads until the server closes; how long that took.
    let closed_after = |s: &mut std::net::TcpStream, what: &str| {
        // `read_response` leaves its own read timeout.
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let t = Instant::now();
        let mut rest = Vec::new();
        let n = s
            .read_to_end(&mut rest)
            .unwrap_or_else(|e| panic!("{what}: not closed after {:?}: {e}", t.elapsed()));
        assert_eq!(n, 0, "{what}: {}", String::from_utf8_lossy(&rest));
        t.elapsed()
    };
    for pingora in [false, true] {
        let what = if pingora {
            "Pingora's port"
        } else {
            "own port"
        };
        let backend = if pingora {
            "      - prefix: /b\n        proxy: { pass: \"http://127.0.0.1:9\" }\n"
        } else {
            ""
        };
        let dir = support::temp_dir();
        let yaml = format!(
            "servers:\n  - listen: [\"{{listen}}\"]\n    keepalive_timeout: 1s\n    keepalive_requests: 3\n    locations:\n      - exact: /r\n        return: {{ code: 200, text: \"hi\\n\" }}\n{backend}"
        );
        let p = Proxy::yaml(dir.path(), &yaml);
        let connect = || {
            let s = std::net::TcpStream::connect(&p.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s
        };
        let mut s = connect();
        assert_eq!(get(&mut s, what), "keep-alive", "{what}");
        let idle = closed_after(&mut s, what);
        assert!(
            idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
            "{what}: closed after {idle:?} idle, keepalive_timeout 1s"
        );
        let mut s = connect();
        let connection: Vec<String> = (0..3).map(|_| get(&mut s, what)).collect();
        assert_eq!(connection, ["keep-alive", "keep-alive", "close"], "{what}");
        assert!(
            closed_after(&mut s, what) < Duration::from_millis(900),
            "{what}"
        );
    }
    let dir = support::temp_dir();
    let yaml = "servers:\n  - listen: [\"{listen}\"]\n    keepalive_timeout: 0s\n    locations:\n      - exact: /r\n        return: { code: 200, text: \"hi\\n\" }\n";
    let p = Proxy::yaml(dir.path(), yaml);
    let mut s = std::net::TcpStream::connect(&p.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(get(&mut s, "keepalive_timeout 0"), "close");
    closed_after(&mut s, "keepalive_timeout 0");
}
