//! The reporting surfaces: who sees what, JSON pages, request ids, and
//! diagnostics switched off.

use crate::harness::*;
use crate::support::{self, Req};

/// A socket_missing failure (the socket path is the secret) behind a YAML
/// config with the given diagnostics block.
fn missing_socket_site(dir: &std::path::Path, diagnostics: &str) -> (Proxy, String) {
    let sock = format!("{}/secret-php-fpm.sock", dir.display());
    let top = format!("diagnostics:\n{diagnostics}");
    let p = Proxy::yaml(
        dir,
        &php_yaml(&www(), &format!("unix:{sock}"), "", "", &top),
    );
    (p, sock)
}

#[test]
fn untrusted_clients_see_only_the_code_and_the_request_id() {
    let dir = support::temp_dir();
    let (p, sock) = missing_socket_site(dir.path(), "  trusted: []\n");
    let r = p.get("/hello.php");
    assert_diagnosed(&p, &r, "connect.socket_missing", 502);
    let body = r.text();
    let rid = r.header("Why502-Request-Id").unwrap();
    assert!(
        body.contains("connect.socket_missing") && body.contains(rid),
        "{body}"
    );
    assert!(
        !body.contains("secret-php-fpm"),
        "socket path leaked: {body}"
    );
    assert!(
        !body.contains("What to check"),
        "hint shown to an untrusted client: {body}"
    );
    let ps = r.header("Proxy-Status").unwrap();
    assert!(!ps.contains("secret") && !ps.contains("next-hop"), "{ps}");
    assert!(ps.contains("details=\"connect.socket_missing\""), "{ps}");
    // JSON too.
    let r = p.req(&Req::get("/hello.php").header("Accept", "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json page");
    assert!(
        v.get("details").is_none() && v.get("upstream").is_none(),
        "{v}"
    );
    assert!(!r.text().contains("secret-php-fpm"));
    // The log keeps the details for the operator.
    assert!(p.error_log().contains(&sock));
}

#[test]
fn json_error_page_for_json_clients() {
    let dir = support::temp_dir();
    let (p, sock) = missing_socket_site(dir.path(), "  enabled: true\n");
    let r = p.req(&Req::get("/hello.php").header("Accept", "application/json"));
    assert_diagnosed(&p, &r, "connect.socket_missing", 502);
    assert!(
        r.header("Content-Type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json page");
    assert_eq!(v["status"], 502);
    assert_eq!(v["cause"], "connect.socket_missing");
    assert_eq!(v["phase"], "connect");
    assert_eq!(v["request_id"].as_str(), r.header("Why502-Request-Id"));
    // Trusted (loopback): the explanation, hint and details are there.
    assert!(v["hint"].as_str().is_some_and(|h| !h.is_empty()), "{v}");
    assert!(v["details"].as_str().unwrap_or("").contains(&sock), "{v}");
}

/// A client that does not ask for HTML (curl's `*/*`, or no `Accept`)
/// gets the page as text; a browser gets HTML.
#[test]
fn the_page_is_text_unless_the_client_asks_for_html() {
    let dir = support::temp_dir();
    let (p, sock) = missing_socket_site(dir.path(), "  enabled: true\n");
    for accept in [None, Some("*/*")] {
        let mut q = Req::get("/hello.php");
        if let Some(a) = accept {
            q = q.header("Accept", a);
        }
        let r = p.req(&q);
        assert_diagnosed(&p, &r, "connect.socket_missing", 502);
        assert_eq!(
            r.header("Content-Type"),
            Some("text/plain; charset=utf-8"),
            "{accept:?}: {:?}",
            r.headers
        );
        let body = r.text();
        let rid = r.header("Why502-Request-Id").unwrap_or_default();
        assert!(
            body.starts_with("502 Bad Gateway\nCause: connect.socket_missing\n"),
            "{body}"
        );
        assert!(
            body.contains("What to check: ") && body.contains(&sock),
            "{body}"
        );
        assert!(
            body.ends_with(&format!("Request id: {rid} (why502)\n")),
            "{body}"
        );
        assert!(!body.contains('<'), "{body}");
    }
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let r = p.req(&Req::get("/hello.php").header("Accept", browser));
    assert_diagnosed(&p, &r, "connect.socket_missing", 502);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/html; charset=utf-8"),
        "{:?}",
        r.headers
    );
    assert!(r.text().starts_with("<!DOCTYPE html>"), "{}", r.text());
}

#[test]
fn one_request_id_on_every_surface() {
    let dir = support::temp_dir();
    let (p, _) = missing_socket_site(dir.path(), "  enabled: true\n");
    // A couple of requests so ids differ.
    let _ = p.get("/hello.php");
    let r = p.req(&Req::get("/hello.php").header("Accept", "text/html"));
    let rid = r.header("Why502-Request-Id").unwrap().to_string();
    assert!(!rid.is_empty());
    assert!(
        r.text()
            .contains(&format!("<code id=\"request-id\">{rid}</code>")),
        "{}",
        r.text()
    );
    let d = assert_diagnosed(&p, &r, "connect.socket_missing", 502);
    let ev = wait_until(std::time::Duration::from_secs(5), || {
        p.events()
            .into_iter()
            .find(|e| e["request_id"].as_str() == Some(rid.as_str()))
    })
    .expect("event with the request id");
    assert_eq!(ev["cause"], "connect.socket_missing");
    // Times are to the microsecond, without float noise.
    let total = ev["total_ms"].to_string();
    assert!(
        ev["total_ms"].is_f64() && total.split_once('.').is_none_or(|(_, f)| f.len() <= 3),
        "total_ms {total}"
    );
    assert!(
        d.log_line.ends_with(&format!("request_id: {rid}")),
        "{}",
        d.log_line
    );
    let ps = r.header("Proxy-Status").unwrap();
    assert!(
        ps.starts_with("why502; error=destination_not_found"),
        "{ps}"
    );
}

#[test]
fn diagnostics_disabled_gives_nginx_plain_page() {
    let dir = support::temp_dir();
    let (p, _) = missing_socket_site(dir.path(), "  enabled: false\n");
    let r = p.get("/hello.php");
    assert_eq!(r.status, 502);
    assert!(r.header("Why502-Cause").is_none(), "{:?}", r.headers);
    assert!(r.header("Proxy-Status").is_none(), "{:?}", r.headers);
    let body = r.text();
    assert!(
        body.contains("<center><h1>502 Bad Gateway</h1></center>"),
        "{body}"
    );
    assert!(!body.contains("socket_missing"), "{body}");
    // The operator still gets the diagnosis in the logs.
    assert_logged(&p, "connect.socket_missing", None);
}

/// Access logs: why502's default format (combined + cause + request id) at
/// the top level, a location with two logs (one in a JSON `log_format` with
/// `$why502_cause` and the diagnosis headers as sent, `$sent_http_*`), a
/// location with `access_log: off`.
#[test]
fn access_logs_carry_the_cause() {
    let dir = support::temp_dir();
    let d = dir.path().display().to_string();
    let yaml = format!(
        r#"
log:
  access_log: {d}/a.log
  log_formats:
    j: {{ format: '{{"s":$status,"c":"$why502_cause","r":"$request_id","u":"$upstream_addr"}}', escape: json }}
    h: {{ format: '{{"c":"$sent_http_why502_cause","r":"$sent_http_why502_request_id","p":"$sent_http_proxy_status","t":"$sent_http_content_type","n":"$sent_http_x_none"}}', escape: json }}
servers:
  - listen: ["{{listen}}"]
    locations:
      - exact: /ok
        return: {{ code: 200, text: "ok\n" }}
      - exact: /quiet
        access_log: off
        return: {{ code: 200, text: "q\n" }}
      - prefix: /
        access_log: [{d}/a.log, {{ path: {d}/j.log, format: j }}, {{ path: {d}/h.log, format: h }}]
        fastcgi: {{ pass: "unix:{d}/missing.sock" }}
"#
    );
    let p = Proxy::yaml(dir.path(), &yaml);
    assert_eq!(p.get("/ok").status, 200);
    assert_eq!(p.get("/quiet").status, 200);
    let r = p.get("/x.php");
    assert_eq!(r.status, 502);
    let rid = r
        .header("Why502-Request-Id")
        .expect("request id")
        .to_string();
    let read = |f: &str, n: usize| {
        wait_until(std::time::Duration::from_secs(5), || {
            let t = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
            (t.lines().count() >= n).then_some(t)
        })
        .unwrap_or_else(|| panic!("{f} did not get {n} lines"))
    };
    let a = read("a.log", 2);
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines.len(), 2, "/quiet is not logged: {a}");
    let ok = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[[^\]]+\] "GET /ok HTTP/1\.1" 200 3 "-" "[^"]*" cause=- rid=[0-9a-f]{16}$"#,
    )
    .expect("re");
    assert!(ok.is_match(lines[0]), "{a}");
    assert!(
        lines[1].contains("\"GET /x.php HTTP/1.1\" 502 ")
            && lines[1].ends_with(&format!(" cause=connect.socket_missing rid={rid}")),
        "{a}"
    );
    let j = read("j.log", 1);
    assert_eq!(
        j.trim_end(),
        format!(
            "{{\"s\":502,\"c\":\"connect.socket_missing\",\"r\":\"{rid}\",\"u\":\"unix:{d}/missing.sock\"}}"
        )
    );
    // `$sent_http_*` reads the diagnosis headers as they went out, though
    // the own server writes them as lines and not from the header map.
    let h: serde_json::Value = serde_json::from_str(read("h.log", 1).trim_end()).expect("json");
    let sent = |n: &str| r.header(n).expect(n).to_string();
    assert_eq!(h["c"], "connect.socket_missing", "{h}");
    assert_eq!(h["r"], rid.as_str(), "{h}");
    assert_eq!(h["p"], sent("Proxy-Status").as_str(), "{h}");
    assert_eq!(h["t"], sent("Content-Type").as_str(), "{h}");
    assert_eq!(h["n"], "", "{h}");
}

#[test]
fn a_listen_address_in_use_is_a_clear_error_not_a_hang() {
    // Pingora panics in its service thread when a bind fails and the
    // process lingers; why502 must exit with the address named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut child = std::process::Command::new(BIN)
        .args(["--listen", &addr, "--root", "/tmp"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn why502");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            panic!("why502 still running 10 s after failing to bind {addr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Header names on the wire: the defaults titled (`Why502-Cause`), a
/// configured name exactly as configured, whichever way the response
/// header was built.
#[test]
fn diagnosis_header_names_keep_their_case() {
    let names = |r: &support::HttpResponse| -> Vec<String> {
        r.headers.iter().map(|(k, _)| k.clone()).collect()
    };
    let dir = support::temp_dir();
    let (p, _) = missing_socket_site(dir.path(), "  enabled: true\n");
    let r = p.get("/hello.php");
    assert_diagnosed(&p, &r, "connect.socket_missing", 502);
    let n = names(&r);
    for want in [
        "Why502-Cause",
        "Why502-Request-Id",
        "Proxy-Status",
        "Content-Type",
    ] {
        assert!(n.iter().any(|h| h == want), "{want} not in {n:?}");
    }
    let dir = support::temp_dir();
    let (p, _) = missing_socket_site(
        dir.path(),
        "  cause_header: X-WHY502-CAUSE\n  request_id_header: x-request-ID\n",
    );
    let r = p.get("/hello.php");
    assert_eq!(r.status, 502);
    let n = names(&r);
    for want in [
        "X-WHY502-CAUSE",
        "x-request-ID",
        "Proxy-Status",
        "Content-Type",
    ] {
        assert!(n.iter().any(|h| h == want), "{want} not in {n:?}");
    }
}

/// PHP's header names on the wire as PHP sent them, whether every name is
/// in the usual capitalisation (the response header is then built without
/// a case map) or one is not; `Content-type` is written `Content-Type`, as
/// nginx does.
#[test]
fn php_header_names_keep_their_case() {
    let titled = "header('Content-type: text/plain'); header('X-App-Id: 7'); \
                  header('ETag: \"x\"'); header('Set-Cookie: a=1', false); \
                  header('Set-Cookie: b=2', false);";
    let titled_php = format!("<?php {titled} echo 'ok';");
    let mixed_php =
        format!("<?php {titled} header('x-lower-case: 1'); header('X-UPPER: 2'); echo 'ok';");
    let dir = support::temp_dir();
    let (_f, p) = php_site(
        dir.path(),
        pool("www"),
        &[("titled.php", &titled_php), ("mixed.php", &mixed_php)],
    );
    for (path, extra) in [
        ("/titled.php", &[][..]),
        ("/mixed.php", &["x-lower-case", "X-UPPER"][..]),
    ] {
        let r = p.get(path);
        assert_eq!(r.status, 200, "{r:?}");
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        for want in ["Content-Type", "X-App-Id", "ETag", "Server", "Date"]
            .iter()
            .chain(extra)
        {
            assert!(names.contains(want), "{path}: {want} not in {names:?}");
        }
        let cookies = r.headers.iter().filter(|(k, _)| k == "Set-Cookie").count();
        assert_eq!(cookies, 2, "{path}: {names:?}");
        assert!(!names.contains(&"Content-type"), "{path}: {names:?}");
        assert_eq!(r.body, b"ok", "{path}");
    }
}
