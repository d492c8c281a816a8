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
//! Both write access logs with a `log_format` using every variable why502
//! supports; the lines are compared field by field (times, ports and
//! connection numbers masked; `$body_bytes_sent` checked against what each
//! server really sent). Servers listening on 127.0.0.1 and 127.0.0.2 (and a
//! wildcard) on one port check selection by local address, and two servers
//! with `error_log ... crit` / `error` check error-log levels.
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

/// Strings that are not UTF-8 (a path like `/caf%E9`) are dumped as
/// `hex:...`, keys too: `json_encode` refuses them.
const DUMP_PHP: &str = r#"<?php
function v($x) {
    if (!is_array($x)) {
        return (is_string($x) && !preg_match('//u', $x)) ? 'hex:' . bin2hex($x) : $x;
    }
    $o = [];
    foreach ($x as $k => $y) { $o[v($k)] = v($y); }
    return $o;
}
header('Content-Type: application/json');
echo json_encode(v(['server' => $_SERVER, 'get' => $_GET, 'post' => $_POST,
    'cookie' => $_COOKIE, 'input' => file_get_contents('php://input')]));
"#;

/// The config both servers run; `@PORT@`, `@PORT2@`, `@PORT3@`, `@LOGS@`,
/// `@WWW@`, `@FPM@`, `@DEAD@` are filled in.
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
        // Keyed by the name as sent: nginx's spelling (`ETag`,
        // `Last-Modified`) is compared too, not only the value.
        if let Some((name, v)) = r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(h)) {
            m.insert(format!("header {name}"), normalize(v, ports));
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
    if std::env::var_os("PARITY_KEEP").is_some() {
        eprintln!("keeping {}", dir.display());
        std::mem::forget(tmp);
    }
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
    // Names that are not UTF-8 (Latin-1 `é`).
    {
        use std::os::unix::ffi::OsStrExt;
        let latin1 = |b: &[u8]| www.join(std::ffi::OsStr::from_bytes(b));
        write(&latin1(b"caf\xE9.txt"), "latin-1 name\n");
        write(&latin1(b"d\xE9/index.html"), "<h1>latin-1 dir</h1>\n");
        write(&www.join("d x%/index.html"), "<h1>space dir</h1>\n");
    }
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

    // Each server: its main port, two more for address selection, its log directory.
    let inst = |name: &str| {
        let logs = dir.join(format!("logs-{name}"));
        std::fs::create_dir_all(&logs).expect("mkdir logs");
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Inst {
            port: free_port(),
            port2: free_port(),
            port3: free_port(),
            logs,
        }
    };
    let (ni, wi, yi) = (inst("nginx"), inst("why502"), inst("yaml"));
    let conf_for = |i: &Inst| {
        CONF.replace("@PORT@", &i.port.to_string())
            .replace("@PORT2@", &i.port2.to_string())
            .replace("@PORT3@", &i.port3.to_string())
            .replace("@LOGS@", &i.logs.display().to_string())
            .replace("@WWW@", &www.display().to_string())
            .replace("@FPM@", &sock.display().to_string())
            .replace("@DEAD@", &dead.display().to_string())
    };
    let (nport, wport, yport) = (ni.port, wi.port, yi.port);
    write(&dir.join("nginx.conf"), &conf_for(&ni));
    write(&dir.join("why502.conf"), &conf_for(&wi));

    let (_nginx, nlog) = start_nginx(&nginx, &dir);
    let conf = dir.join("why502.conf");
    let (_why, _wlog) = start_why502(&dir, "why502", &["--nginx-conf".as_ref(), conf.as_os_str()]);
    // The third server: why502 on the YAML `why502 convert` makes of the
    // same nginx.conf must answer exactly like `--nginx-conf`.
    write(&dir.join("why502-yaml.conf"), &conf_for(&yi));
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
        // Paths that are not UTF-8: nginx works on bytes, so does why502.
        get("latin-1 path: php path info", "/dump.php/caf%E9/x?q=%E9&r=caf%C3%A9"),
        get("latin-1 path: try_files fallback", "/wp/caf%E9?p=1"),
        get("latin-1 path: static file", "/caf%E9.txt"),
        get("latin-1 path: missing file", "/nope%E9.txt"),
        get("latin-1 path: dir redirect", "/d%E9"),
        get("latin-1 path: dir redirect with args", "/d%E9?x=1"),
        get("dir redirect escapes the path", "/d%20x%25"),
        get("dir redirect with args escapes the path", "/d%E9/..//d%20x%25?x=%20"),
        get("latin-1 path: dir index", "/d%E9/"),
        get("latin-1 path: set and return", "/setvar/caf%E9"),
        get("latin-1 path: return text", "/ret200?x=%E9"),
        get("overlong dots are not dots", "/%C0%AE%C0%AE/a.txt"),
        get("a character in the carried range", "/dump.php/%F4%8F%BF%A9"),
        get("raw latin-1 bytes in the request line", "/dump.php/raw{xE9}?r={xE9}"),
        get("raw latin-1 static file", "/caf{xE9}.txt"),
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

    cases.push(case(
        "log escaping",
        "GET /a.txt?x=%22q&y HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: a\"b\\c\u{e9}\tz\r\nReferer: http://r.test/\"x\r\nX-Custom-Header:\r\nCookie: b=2; a=x%20y\r\nConnection: close\r\n\r\n",
    ));
    cases.push(case(
        "assets log in json and unescaped",
        "GET /assets/app.js?k=%22v HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: q\"uote\\\u{e9}\r\nConnection: close\r\n\r\n",
    ));

    let ports = [
        nport, wport, yport, ni.port2, wi.port2, yi.port2, ni.port3, wi.port3, yi.port3,
    ];
    let mut failures = Vec::new();
    // What each server sent per case (tag → body length, chunked?), for $body_bytes_sent.
    let mut sent: [BTreeMap<String, (usize, bool)>; 3] = Default::default();
    for (i, c) in cases.iter().enumerate() {
        // Every request carries its case number, logged as $http_x_parity_case.
        let raw = tag(&c.raw, i);
        let rs = [send(nport, &raw), send(wport, &raw), send(yport, &raw)];
        for (k, r) in rs.iter().enumerate() {
            let chunked = r
                .header("Transfer-Encoding")
                .is_some_and(|t| t.contains("chunked"));
            sent[k].insert(i.to_string(), (r.body.len(), chunked));
        }
        let [n, w, y] = rs.map(|r| view(&r, &ports));
        // No allowances: the converted YAML is the same configuration.
        failures.extend(diff_views(
            c.name,
            ("why502 --nginx-conf: ", &w),
            ("why502 --config:     ", &y),
            &[],
        ));
        if std::env::var_os("PARITY_VERBOSE").is_some() {
            eprintln!("== {}: {n:#?}", c.name);
        }
        failures.extend(diff_views(
            c.name,
            ("nginx:  ", &n),
            ("why502: ", &w),
            c.allow,
        ));
        // Each case must really exercise something: nginx must not have failed on the setup.
        assert!(n.contains_key("status"), "{}", c.name);
    }
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    compare_access_logs(&[&ni, &wi, &yi], &names, &sent, &ports, &mut failures);
    compare_addr_selection(&[&ni, &wi, &yi], &ports, &mut failures);
    compare_error_levels(&[&ni, &wi, &yi], &ports, &mut failures);
    compare_connection_numbers(&[&ni, &wi, &yi], &mut failures);
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

/// One server under test: its ports and log directory.
struct Inst {
    port: u16,
    port2: u16,
    port3: u16,
    logs: PathBuf,
}

const WHO: [&str; 3] = ["nginx", "why502 --nginx-conf", "why502 --config"];

/// Adds `X-Parity-Case: i` after the request line.
fn tag(raw: &str, i: usize) -> String {
    match raw.find("\r\n") {
        Some(p) => format!("{}X-Parity-Case: {i}\r\n{}", &raw[..p + 2], &raw[p + 2..]),
        None => raw.to_string(),
    }
}

/// The lines of a log once they stop growing (why502 writes its access
/// logs within 100 ms), at least `min` of them.
fn log_lines(path: &Path, min: usize) -> Vec<String> {
    let t0 = std::time::Instant::now();
    let mut last = usize::MAX;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let done = lines.len() >= min && lines.len() == last;
        if done || t0.elapsed() > std::time::Duration::from_secs(5) {
            return lines;
        }
        last = lines.len();
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The fields of the `parity` log_format, in order.
const LOG_FIELDS: &[&str] = &[
    "case",
    "remote_addr",
    "remote_user",
    "time_local",
    "time_iso8601",
    "msec",
    "request",
    "status",
    "body_bytes_sent",
    "bytes_sent",
    "http_referer",
    "http_user_agent",
    "http_x_custom_header",
    "request_time",
    "upstream_response_time",
    "upstream_addr",
    "upstream_status",
    "request_method",
    "request_uri",
    "uri",
    "args",
    "query_string",
    "is_args",
    "arg_x",
    "cookie_a",
    "host",
    "server_name",
    "server_addr",
    "server_port",
    "remote_port",
    "scheme",
    "https",
    "server_protocol",
    "content_type",
    "content_length",
    "request_length",
    "connection",
    "connection_requests",
    "pipe",
    "request_id",
    "document_root",
    "hostname",
    "nginx_version",
    "sent_http_content_type",
    "sent_http_location",
    "who",
];

/// A log field with what legitimately differs masked: times, durations,
/// ports, connection numbers, request ids (nginx: 32 hex digits, why502: 16).
fn mask(field: &str, v: &str, ports: &[u16]) -> String {
    let re = |p: &str| regex::Regex::new(p).expect("regex").is_match(v);
    let masked = match field {
        "time_local" if re(r"^\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}$") => "TIME",
        "time_iso8601" if re(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$") => "TIME",
        "msec" | "request_time" if re(r"^\d+\.\d{3}$") => "SECS",
        "upstream_response_time" if re(r"^\d+\.\d{3}(, \d+\.\d{3})*$") => "SECS",
        "bytes_sent" | "remote_port" | "connection" if re(r"^\d+$") => "N",
        "server_port" if ports.iter().any(|p| p.to_string() == v) => "PORT",
        "request_id" if re(r"^[0-9a-f]{16}([0-9a-f]{16})?$") => "ID",
        _ => return normalize(v, ports),
    };
    masked.to_string()
}

fn compare_access_logs(
    inst: &[&Inst; 3],
    names: &[&str],
    sent: &[BTreeMap<String, (usize, bool)>; 3],
    ports: &[u16],
    failures: &mut Vec<String>,
) {
    let read = |i: &Inst, f: &str, min: usize| log_lines(&i.logs.join(f), min);
    let nginx = read(inst[0], "access.log", 1);
    assert!(
        nginx.len() > names.len() / 2,
        "nginx wrote only {} access-log lines",
        nginx.len()
    );
    // nginx rejects `/%2e%2e/...` while parsing the request line (400):
    // it logs the request without having read its headers, so without the
    // case number; why502 has read them.
    let traversal = names
        .iter()
        .position(|n| *n == "traversal")
        .map(|i| i.to_string())
        .unwrap_or_default();
    let header_fields = [
        "case",
        "request_uri",
        "uri",
        "host",
        "request_length",
        "http_user_agent",
        "http_referer",
        "http_x_custom_header",
        "cookie_a",
    ];
    // By case number: (case, fields).
    let parse = |lines: &[String]| -> BTreeMap<String, Vec<String>> {
        lines
            .iter()
            .map(|l| {
                let f: Vec<String> = l.split('|').map(str::to_string).collect();
                let case = if f[0] == "-" {
                    traversal.clone()
                } else {
                    f[0].clone()
                };
                (case, f)
            })
            .collect()
    };
    let logs: Vec<BTreeMap<String, Vec<String>>> = inst
        .iter()
        .map(|i| parse(&read(i, "access.log", nginx.len())))
        .collect();
    // Documented divergence: why502's failure page is UTF-8 HTML.
    let failure_cases = ["dead socket", "read timeout", "body too large"];
    for k in 1..3 {
        let keys: std::collections::BTreeSet<&String> =
            logs[0].keys().chain(logs[k].keys()).collect();
        for case in keys {
            let name = case
                .parse::<usize>()
                .ok()
                .and_then(|i| names.get(i))
                .copied()
                .unwrap_or("?");
            let (Some(a), Some(b)) = (logs[0].get(case), logs[k].get(case)) else {
                failures.push(format!(
                    "access.log, case {name}: logged by {} only",
                    if logs[0].contains_key(case) {
                        WHO[0]
                    } else {
                        WHO[k]
                    }
                ));
                continue;
            };
            if a.len() != LOG_FIELDS.len() || b.len() != LOG_FIELDS.len() {
                failures.push(format!("access.log, case {name}: {a:?}\n    {b:?}"));
                continue;
            }
            for (j, field) in LOG_FIELDS.iter().enumerate() {
                if *field == "sent_http_content_type" && failure_cases.contains(&name) {
                    continue;
                }
                if *field == "body_bytes_sent" {
                    continue; // checked against what was sent, below
                }
                if *case == traversal && header_fields.contains(field) {
                    continue;
                }
                let (x, y) = (mask(field, &a[j], ports), mask(field, &b[j], ports));
                if x != y {
                    failures.push(format!(
                        "access.log, case {name}: ${field}\n    {}: {x:?}\n    {}: {y:?}",
                        WHO[0], WHO[k]
                    ));
                }
            }
        }
    }
    // $body_bytes_sent is what each server really sent: the body, plus (for
    // nginx) the framing of a chunked one (documented).
    for k in 0..3 {
        for (case, f) in &logs[k] {
            let logged: usize = f.get(8).and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
            let (real, chunked) = sent[k].get(case).copied().unwrap_or((0, false));
            let ok = if k == 0 && chunked {
                logged >= real + 5
            } else {
                logged == real
            };
            if !ok {
                failures.push(format!(
                    "access.log of {}, case {case}: $body_bytes_sent {logged}, sent {real}",
                    WHO[k]
                ));
            }
        }
    }
    // Location-level logs in other formats (escape=json, escape=none), and
    // `access_log off` (/private/): nothing of them in access.log.
    for f in ["assets.log", "assets-none.log"] {
        let n = read(inst[0], f, 1);
        assert!(!n.is_empty(), "nginx wrote nothing to {f}");
        for k in 1..3 {
            let w = read(inst[k], f, n.len());
            if n != w {
                failures.push(format!("{f}\n    {}: {n:?}\n    {}: {w:?}", WHO[0], WHO[k]));
            }
        }
    }
}

/// Requests to 127.0.0.1/.2/.3 on a port with a wildcard listen and to
/// 127.0.0.1/.2 on a port with two specific listens: the server is chosen
/// by the local address, then Host, the default per address.
fn compare_addr_selection(inst: &[&Inst; 3], ports: &[u16], failures: &mut Vec<String>) {
    let req = |host: &str| {
        if host.is_empty() {
            "GET / HTTP/1.0\r\n\r\n".to_string()
        } else {
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        }
    };
    let cases: &[(&str, bool, &str, &str)] = &[
        // (ip, second port?, host, server nginx picks)
        ("127.0.0.1", true, "wild.test", "wild"),
        ("127.0.0.1", true, "two.test", "wild"),
        ("127.0.0.3", true, "two.test", "wild"),
        ("127.0.0.2", true, "two.test", "two"),
        ("127.0.0.2", true, "wild.test", "two-default"),
        ("127.0.0.2", true, "", "two-default"),
        ("127.0.0.1", false, "only2.test", "both"),
        ("127.0.0.2", false, "x.test", "only2"),
        ("127.0.0.2", false, "both.test", "both"),
    ];
    for (ip, second, host, want) in cases {
        let mut got = Vec::new();
        for i in inst {
            let port = if *second { i.port2 } else { i.port3 };
            let r = send_to(ip, port, &req(host));
            got.push(format!(
                "{} {}",
                r.status,
                normalize(&String::from_utf8_lossy(&r.body), ports)
            ));
        }
        if !got[0].starts_with(&format!("200 {want} {ip} ")) {
            failures.push(format!(
                "{ip} {host:?}: nginx answered {:?}, expected {want}",
                got[0]
            ));
        }
        for k in 1..3 {
            if got[k] != got[0] {
                failures.push(format!(
                    "address selection {ip} {host:?}\n    {}: {:?}\n    {}: {:?}",
                    WHO[0], got[0], WHO[k], got[k]
                ));
            }
        }
    }
    // Server-level access logs in the combined format.
    let lines = |i: &Inst, min| {
        log_lines(&i.logs.join("addr.log"), min)
            .iter()
            .map(|l| {
                let l = regex::Regex::new(r"\[[^\]]+\]")
                    .expect("re")
                    .replace(l, "[TIME]");
                normalize(&l, ports)
            })
            .collect::<Vec<_>>()
    };
    let n = lines(inst[0], cases.len());
    assert_eq!(n.len(), cases.len(), "nginx's addr.log: {n:#?}");
    for k in 1..3 {
        let w = lines(inst[k], n.len());
        if w != n {
            failures.push(format!(
                "addr.log\n    {}: {n:#?}\n    {}: {w:#?}",
                WHO[0], WHO[k]
            ));
        }
    }
}

/// `error_log FILE crit` keeps the connect() failure (crit) and drops the
/// timeout (error); `error_log FILE` (error) keeps both.
fn compare_error_levels(inst: &[&Inst; 3], ports: &[u16], failures: &mut Vec<String>) {
    for i in inst {
        for host in ["crit.test", "err.test"] {
            for path in ["/slow.php", "/dead.php"] {
                let raw =
                    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                let r = send_to("127.0.0.1", i.port3, &raw);
                assert!(
                    r.status == 502 || r.status == 504,
                    "{host}{path}: {}",
                    r.status
                );
            }
        }
    }
    let pid = regex::Regex::new(r"^\S+ \S+ (\[\w+\]) \d+#\d+: \*\d+ ").expect("re");
    let read = |i: &Inst, f: &str, min: usize| -> Vec<String> {
        let mut v: Vec<String> = log_lines(&i.logs.join(f), min)
            .iter()
            .map(|l| {
                // why502's own fields come after nginx's.
                let l = l.split(", cause: ").next().unwrap_or(l);
                normalize(&pid.replace(l, "$1 "), ports)
            })
            .collect();
        v.sort();
        v
    };
    for (f, want) in [("crit.log", 1), ("err.log", 2)] {
        let n = read(inst[0], f, want);
        assert_eq!(n.len(), want, "nginx's {f}: {n:#?}");
        assert!(
            n.iter().all(|l| !l.contains("[error]") || f == "err.log"),
            "{n:#?}"
        );
        for k in 1..3 {
            let w = read(inst[k], f, want);
            if w != n {
                failures.push(format!(
                    "{f}\n    {}: {n:#?}\n    {}: {w:#?}",
                    WHO[0], WHO[k]
                ));
            }
        }
    }
}

/// The `*N` of an error-log line is the connection's number: two failed
/// requests on one keep-alive connection share it, and it differs from
/// the earlier connections' (runs after [`compare_error_levels`], whose two
/// lines are in `err.log` already).
fn compare_connection_numbers(inst: &[&Inst; 3], failures: &mut Vec<String>) {
    let n = regex::Regex::new(r"#\d+: \*(\d+) ").expect("re");
    for (k, i) in inst.iter().enumerate() {
        let raw = "GET /dead.php HTTP/1.1\r\nHost: err.test\r\n\r\n\
                   GET /dead.php HTTP/1.1\r\nHost: err.test\r\nConnection: close\r\n\r\n";
        let r = send_to("127.0.0.1", i.port3, raw);
        assert_eq!(r.status, 502, "{}", WHO[k]);
        let lines = log_lines(&i.logs.join("err.log"), 4);
        let nums: Vec<&str> = lines
            .iter()
            .filter_map(|l| n.captures(l).and_then(|c| c.get(1)).map(|m| m.as_str()))
            .collect();
        let ok = nums.len() == 4
            && nums[2] == nums[3]
            && nums[..2].iter().all(|x| *x != nums[2])
            && nums[0] != nums[1];
        if !ok {
            failures.push(format!(
                "err.log *N, {}: want two earlier connections and one shared by the \
                 last two lines: {nums:?}\n{lines:#?}",
                WHO[k]
            ));
        }
    }
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
