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

#[test]
fn one_request_id_on_every_surface() {
    let dir = support::temp_dir();
    let (p, _) = missing_socket_site(dir.path(), "  enabled: true\n");
    // A couple of requests so ids differ.
    let _ = p.get("/hello.php");
    let r = p.get("/hello.php");
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
