//! Parity with real nginx: the same nginx.conf is served by nginx (Debian's
//! nginx-light, 1.22.1) and by why502 (`--nginx-conf`), both in front of the
//! same PHP-FPM. Every request goes to both; status, selected headers, static
//! bodies and the `$_SERVER`/`$_GET`/`$_POST`/`$_COOKIE` dump of a PHP script
//! must match (ports, SERVER_SOFTWARE and timing keys aside). Known,
//! documented differences (docs/nginx-compat.md) are listed per request.
//!
//! A third server runs why502 with `--config` on the YAML that `why502
//! convert` makes of the same nginx.conf: it must answer every request
//! exactly like the `--nginx-conf` one (no allowances).
//!
//! nginx and PHP-FPM are required: if either is missing the test fails.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use why502::fpm::{Fpm, Listen, PoolSpec};

#[path = "support/parity.rs"]
mod parity;
use parity::*;

const DUMP_PHP: &str = r#"<?php
header('Content-Type: application/json');
echo json_encode(['server' => $_SERVER, 'get' => $_GET, 'post' => $_POST,
    'cookie' => $_COOKIE, 'input' => file_get_contents('php://input')]);
"#;

/// The config both servers run; `@PORT@`, `@WWW@`, `@FPM@`, `@DEAD@` are filled in.
const CONF: &str = include_str!("fixtures/nginx/parity.conf");

struct Case {
    name: &'static str,
    raw: String,
    /// Fields allowed to differ (documented divergences).
    allow: &'static [&'static str],
}

fn case(name: &'static str, raw: &str) -> Case {
    Case {
        name,
        raw: raw.to_string(),
        allow: &[],
    }
}

fn get(name: &'static str, target: &str) -> Case {
    case(
        name,
        &format!("GET {target} HTTP/1.1\r\nHost: {{HOST}}\r\nConnection: close\r\n\r\n"),
    )
}

/// Keys of the PHP dump that legitimately differ between the two servers.
const IGNORED_KEYS: &[&str] = &[
    "SERVER_SOFTWARE",
    "SERVER_PORT",
    "REMOTE_PORT",
    "REQUEST_TIME",
    "REQUEST_TIME_FLOAT",
];

fn normalize(s: &str, ports: &[u16]) -> String {
    let mut s = s.to_string();
    for p in ports {
        s = s.replace(&format!(":{p}"), ":PORT");
    }
    s
}

/// The comparable view of a response.
fn view(r: &Resp, ports: &[u16]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("status".into(), r.status.to_string());
    for h in [
        "Location",
        "Content-Type",
        "Content-Range",
        "ETag",
        "Last-Modified",
        "Cache-Control",
        "X-Parity",
    ] {
        if let Some(v) = r.header(h) {
            m.insert(format!("header {h}"), normalize(v, ports));
        }
    }
    if r.header("Expires").is_some() {
        m.insert("header Expires".into(), "(present)".into());
    }
    let is_json = r
        .header("Content-Type")
        .is_some_and(|c| c.starts_with("application/json"));
    if is_json && !r.body.is_empty() {
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("bad PHP dump ({e}): {}", String::from_utf8_lossy(&r.body)));
        if let Some(obj) = v.as_object() {
            for (section, val) in obj {
                match val.as_object() {
                    Some(o) => {
                        for (k, v) in o {
                            if section == "server" && IGNORED_KEYS.contains(&k.as_str()) {
                                continue;
                            }
                            let v = match v {
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            m.insert(format!("{section}.{k}"), normalize(&v, ports));
                        }
                    }
                    None => {
                        m.insert(section.clone(), normalize(&val.to_string(), ports));
                    }
                }
            }
        }
    } else if r.status == 200 || r.status == 206 {
        m.insert("body".into(), String::from_utf8_lossy(&r.body).to_string());
    }
    m
}

fn write(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(p, text).expect("write");
}

#[test]
fn nginx_and_why502_agree() {
    let nginx = nginx_binary();
    Fpm::binary().unwrap_or_else(|e| panic!("PHP-FPM is required for the parity suite: {e}"));

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().canonicalize().expect("canon");
    // nginx's workers run as nobody: the tree must be world-readable.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let www = dir.join("www");
    write(&www.join("index.html"), "<h1>index</h1>\n");
    write(&www.join("a.txt"), "0123456789abcdef\n");
    write(&www.join("style.css"), "body { color: red }\n");
    write(&www.join("data.JSON"), "{}\n");
    write(&www.join("noext"), "no extension\n");
    write(&www.join("dir/index.html"), "<h1>dir</h1>\n");
    std::fs::create_dir_all(www.join("sub")).expect("mkdir");
    write(&www.join("404.html"), "<h1>custom 404</h1>\n");
    write(&www.join("dump.php"), DUMP_PHP);
    write(&www.join("index.php"), DUMP_PHP);
    write(&www.join("slow.php"), "<?php sleep(3); echo 'late';\n");
    write(&www.join("dead.php"), "<?php echo 'unreachable';\n");
    write(&www.join("uploads/x.jpg"), "<?php echo 'pwned';\n");
    write(&www.join("files/x.jpg"), "<?php echo 'pwned';\n");
    write(&www.join("assets/app.js"), "console.log(1);\n");
    write(&www.join("private/secret.txt"), "secret\n");
    write(&www.join("ep/exists.txt"), "exists\n");
    for e in walk(&www) {
        let mode = if e.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&e, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    // Debian's stock include files
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx");
    for f in [
        "mime.types",
        "fastcgi.conf",
        "fastcgi_params",
        "snippets/fastcgi-php.conf",
    ] {
        let to = dir.join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(fixtures.join(f), &to).expect("copy fixture");
    }

    let fpm_dir = dir.join("fpm");
    std::fs::create_dir_all(&fpm_dir).expect("mkdir");
    std::fs::set_permissions(&fpm_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut pool = PoolSpec::new("www", Listen::Unix("www.sock".into()));
    pool.listen_mode = Some("0666".into());
    pool.max_children = 6;
    let fpm = Fpm::start(&fpm_dir, vec![pool]).expect("start PHP-FPM");
    let sock = match fpm.listen_of("www") {
        Some(Listen::Unix(p)) => p.clone(),
        other => panic!("unexpected FPM listen {other:?}"),
    };
    let dead = dir.join("dead.sock");

    let conf_for = |port: u16| {
        CONF.replace("@PORT@", &port.to_string())
            .replace("@WWW@", &www.display().to_string())
            .replace("@FPM@", &sock.display().to_string())
            .replace("@DEAD@", &dead.display().to_string())
    };
    let nport = free_port();
    let wport = free_port();
    write(&dir.join("nginx.conf"), &conf_for(nport));
    write(&dir.join("why502.conf"), &conf_for(wport));

    let (_nginx, nlog) = start_nginx(&nginx, &dir);
    let conf = dir.join("why502.conf");
    let (_why, _wlog) = start_why502(&dir, "why502", &["--nginx-conf".as_ref(), conf.as_os_str()]);
    // The third server: why502 on the YAML `why502 convert` makes of the
    // same nginx.conf must answer exactly like `--nginx-conf`.
    let yport = free_port();
    write(&dir.join("why502-yaml.conf"), &conf_for(yport));
    let converted = Command::new(env!("CARGO_BIN_EXE_why502"))
        .arg("convert")
        .arg("--nginx-conf")
        .arg(dir.join("why502-yaml.conf"))
        .output()
        .expect("run why502 convert");
    assert!(
        converted.status.success(),
        "why502 convert failed: {}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let yaml_path = dir.join("why502.yaml");
    std::fs::write(&yaml_path, &converted.stdout).expect("write yaml");
    let (_why_yaml, _) = start_why502(
        &dir,
        "why502-yaml",
        &["--config".as_ref(), yaml_path.as_os_str()],
    );
    wait_port(nport, "nginx", &nlog);
    wait_port(wport, "why502", &dir.join("why502.out"));
    wait_port(yport, "why502 --config", &dir.join("why502-yaml.out"));

    let a_txt_mtime = std::fs::metadata(www.join("a.txt"))
        .and_then(|m| m.modified())
        .expect("mtime");
    let lm = httpdate::fmt_http_date(a_txt_mtime);
    let form = "name=J%C3%BCrgen&list%5B%5D=1&list%5B%5D=2&plus=a+b";
    let mut cases = vec![
        // static files
        get("index", "/"),
        get("file", "/a.txt"),
        get("css type", "/style.css"),
        get("upper-case extension", "/data.JSON"),
        get("no extension: default_type", "/noext"),
        get("dir redirect", "/dir"),
        get("dir redirect keeps args", "/dir?x=1&y=%20"),
        get("dir index", "/dir/"),
        get("missing: error_page 404", "/nope.txt"),
        get("dir without index", "/sub/"),
        get("encoded dot", "/a%2etxt"),
        get("dot segments", "/dir/../a.txt"),
        get("traversal", "/%2e%2e/etc/passwd"),
        case(
            "if-modified-since",
            &format!("GET /a.txt HTTP/1.1\r\nHost: {{HOST}}\r\nIf-Modified-Since: {lm}\r\nConnection: close\r\n\r\n"),
        ),
        case(
            "range",
            "GET /a.txt HTTP/1.1\r\nHost: {HOST}\r\nRange: bytes=2-5\r\nConnection: close\r\n\r\n",
        ),
        case(
            "suffix range",
            "GET /a.txt HTTP/1.1\r\nHost: {HOST}\r\nRange: bytes=-4\r\nConnection: close\r\n\r\n",
        ),
        case(
            "unsatisfiable range",
            "GET /a.txt HTTP/1.1\r\nHost: {HOST}\r\nRange: bytes=100-\r\nConnection: close\r\n\r\n",
        ),
        case("head static", "HEAD /a.txt HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        case(
            "post to static file",
            "POST /a.txt HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        // PHP
        get("php query string", "/dump.php?a=1&b=%20x%2Fy&c%5B%5D=1&c%5B%5D=2&e=%E2%82%AC"),
        get("php index via index directive", "/?q=1"),
        case(
            "php post form",
            &format!("POST /dump.php?x=1 HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}", form.len()),
        ),
        case(
            "php post json",
            "POST /dump.php HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"a\": [1, 2]}",
        ),
        case(
            "cookies",
            "GET /dump.php HTTP/1.1\r\nHost: {HOST}\r\nCookie: a=1; b=x%20y\r\nConnection: close\r\n\r\n",
        ),
        case(
            "headers",
            "GET /dump.php HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: parity/1.0\r\nX-Custom-Header: v\r\nX_Underscore: dropped\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        ),
        case("php path info", "GET /dump.php/extra/path%20x?q=1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        case("php head", "HEAD /dump.php HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        case("http/1.0 without host", "GET /dump.php HTTP/1.0\r\n\r\n"),
        get("missing php: try_files =404", "/nope.php"),
        get("upload attack with try_files", "/files/x.jpg/x.php"),
        get("upload attack without try_files", "/uploads/x.jpg/x.php"),
        get("try_files fallback with args", "/wp/some/page?p=1&q=%2F"),
        get("try_files fallback drops args", "/noargs/x?p=1"),
        get("try_files finds file", "/wp/../a.txt"),
        // rewrite module
        get("return 301 relative", "/ret301"),
        get("return 302 url with args", "/retfull?a=1"),
        get("return 200 text", "/ret200?x=%41b"),
        get("return 200 typed by extension", "/ret200.json"),
        get("return 410", "/gone"),
        get("server rewrite last", "/old/thing?k=v"),
        get("rewrite break", "/r/a.txt"),
        get("rewrite permanent", "/perm?z=1"),
        get("rewrite redirect with args", "/red?z=1"),
        get("set variable", "/setvar/x"),
        // headers
        get("expires and add_header", "/assets/app.js"),
        get("add_header not on 404", "/assets/none.js"),
        get("deny all", "/private/secret.txt"),
        get("error_page = to php", "/ep/missing?w=1"),
        get("error_page target exists", "/ep/exists.txt"),
        case(
            "body too large",
            "POST /dump.php HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n",
        ),
        // failures
        get("dead socket", "/dead.php"),
        get("read timeout", "/slow.php"),
    ];
    // Documented divergences (docs/nginx-compat.md): why502's failure
    // responses are its diagnostic page (UTF-8 HTML, never cached).
    for c in cases.iter_mut() {
        if matches!(c.name, "dead socket" | "read timeout" | "body too large") {
            c.allow = &["header Content-Type", "header Cache-Control"];
        }
    }
    // nginx 1.22 sends a repeated header as separate params (PHP keeps the
    // last); why502 joins them with ", " ("; " for Cookie) like nginx >= 1.23.
    cases.push(Case {
        allow: &["server.HTTP_X_MULTI", "server.HTTP_COOKIE", "cookie.a"],
        ..case(
        "repeated headers",
        "GET /dump.php HTTP/1.1\r\nHost: {HOST}\r\nX-Multi: a\r\nX-Multi: b\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n",
        )
    });

    let ports = [nport, wport, yport];
    let mut failures = Vec::new();
    for c in &cases {
        let n = view(&send(nport, &c.raw), &ports);
        let w = view(&send(wport, &c.raw), &ports);
        let y = view(&send(yport, &c.raw), &ports);
        // No allowances: the converted YAML is the same configuration.
        let keys: std::collections::BTreeSet<&String> = w.keys().chain(y.keys()).collect();
        for k in keys {
            let (a, b) = (w.get(k), y.get(k));
            if a != b {
                failures.push(format!(
                    "{}: {k}\n    why502 --nginx-conf: {:?}\n    why502 --config:     {:?}",
                    c.name, a, b
                ));
            }
        }
        if std::env::var_os("PARITY_VERBOSE").is_some() {
            eprintln!("== {}: {n:#?}", c.name);
        }
        let keys: std::collections::BTreeSet<&String> = n.keys().chain(w.keys()).collect();
        for k in keys {
            let (a, b) = (n.get(k), w.get(k));
            if a != b && !c.allow.contains(&k.as_str()) {
                failures.push(format!(
                    "{}: {k}\n    nginx:  {:?}\n    why502: {:?}",
                    c.name, a, b
                ));
            }
        }
        // Each case must really exercise something: nginx must not have failed on the setup.
        assert!(n.contains_key("status"), "{}", c.name);
    }
    // Sanity: the dump really ran for the PHP cases (both).
    let r = send(
        wport,
        "GET /dump.php?a=1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The failure modes carry why502's cause (also from the converted YAML).
    let r = send(
        yport,
        "GET /dead.php HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        r.header("Why502-Cause"),
        send(
            wport,
            "GET /dead.php HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        )
        .header("Why502-Cause")
    );
    let r = send(
        wport,
        "GET /dead.php HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
    );
    assert!(
        r.header("Why502-Cause")
            .is_some_and(|c| c.starts_with("connect.")),
        "{:?}",
        r.headers
    );
    let r = send(
        wport,
        "GET /slow.php HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
    );
    assert!(
        r.header("Why502-Cause")
            .is_some_and(|c| c.contains("timeout")),
        "{:?}",
        r.headers
    );
    drop(fpm);
    assert!(
        failures.is_empty(),
        "{} difference(s) between nginx, why502 --nginx-conf and why502 --config (converted):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![d.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
