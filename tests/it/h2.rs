//! HTTP/2 clients (h2c, prior knowledge) through the FastCGI gateway: the
//! diagnosis headers arrive, and a failure after the header resets the stream
//! so an h2 client can tell the body is truncated.

use std::process::Command;

use crate::harness::*;
use crate::support;

/// `curl --http2-prior-knowledge`: (exit code, "http_version status size", headers).
fn curl_h2(addr: &str, path: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "--max-time",
            "20",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "\n%{http_version} %{http_code} %{size_download}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl is required (tests/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, summary) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (
        out.status.code().unwrap_or(-1),
        summary.to_string(),
        headers.to_ascii_lowercase(),
    )
}

#[test]
fn h2c_clients_get_diagnosis_and_aborted_streams() {
    let dir = support::temp_dir();
    let fpm = fpm(dir.path(), vec![pool("www")]);
    let yaml = php_yaml(&www(), &fpm_addr(&fpm, "www"), "", "", "").replace(
        "listen: [\"{listen}\"]",
        "listen: [{ address: \"{listen}\", http2: true }]",
    );
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
