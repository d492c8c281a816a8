//! Parity with real nginx for HTTP backends: the same nginx.conf, whose
//! locations `proxy_pass` to a small HTTP server this test runs on
//! 127.0.0.1, is served by nginx (Debian's nginx-light, 1.22.1) and by
//! why502 (`--nginx-conf`). The backend echoes the request it received
//! (request line, headers, body), so what each proxy *sent upstream* is
//! compared too: request line (URI rewriting, HTTP version), Host,
//! Connection, X-Forwarded-For and the other headers, request bodies.
//! Responses are compared on status, `Location`, `Content-Type`, selected
//! headers and bodies (ports normalised), including failures: dead backend,
//! read timeout, an upstream with one dead server, the backend's own errors.
//! Known, documented differences (docs/nginx-compat.md) are listed per case.
//!
//! nginx is required: if it is missing the test fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[path = "support/parity.rs"]
mod parity;
use parity::*;

// ---- processes ----------------------------------------------------------

// ---- the backend ----------------------------------------------------------

/// The HTTP server both proxies talk to, on 127.0.0.1. Every connection is
/// served by its own thread; stopped on drop.
struct Backend {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                        std::thread::spawn(move || serve(c, port));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request as the backend received it: head lines and decoded body.
struct Received {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let mut req = Received {
        line,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                // trailers
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t).ok()?;
                    if t.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).ok()?;
            req.body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = req.header("content-length") {
        let mut body = vec![0u8; n.parse().ok()?];
        r.read_exact(&mut body).ok()?;
        req.body = body;
    }
    Some(req)
}

/// Serves requests on one connection, keeping it open for an HTTP/1.1
/// request without `Connection: close`. What it answers depends on the path:
/// `/slow` sleeps 3 s first, `/status/404` and `/status/500` answer with
/// that status, `/redir` and `/relredir` redirect (absolute to the backend
/// itself, relative), anything else echoes the request.
fn serve(c: TcpStream, port: u16) {
    let mut w = c.try_clone().expect("clone");
    let mut r = BufReader::new(c);
    while let Some(req) = read_request(&mut r) {
        let path = req.line.split(' ').nth(1).unwrap_or("").to_string();
        if path.contains("/slow") {
            std::thread::sleep(Duration::from_secs(3));
        }
        let mut echo = format!("{}\n", req.line);
        for (k, v) in &req.headers {
            echo.push_str(&format!("{k}: {v}\n"));
        }
        echo.push('\n');
        echo.push_str(&String::from_utf8_lossy(&req.body));
        let (status, extra, body) = if path.contains("/bighead") {
            (
                "200 OK",
                format!("X-Big: {}\r\n", "b".repeat(2000)),
                "big header\n".to_string(),
            )
        } else if path.contains("/status/404") {
            ("404 Not Found", String::new(), "backend 404\n".to_string())
        } else if path.contains("/status/500") {
            (
                "500 Internal Server Error",
                String::new(),
                "backend 500\n".to_string(),
            )
        } else if path.contains("/relredir") {
            (
                "301 Moved Permanently",
                "Location: /other/rel\r\n".to_string(),
                "moved\n".to_string(),
            )
        } else if path.contains("/redir") {
            (
                "302 Found",
                format!("Location: http://127.0.0.1:{port}/other/target?x=1\r\n"),
                "found\n".to_string(),
            )
        } else {
            ("200 OK", String::new(), echo)
        };
        let keep = req.line.ends_with("HTTP/1.1")
            && !req
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let content_type = if status.starts_with("200") {
            "text/x-echo"
        } else {
            "text/html"
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nServer: echo\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nX-Backend: echo\r\nX-Secret: s3cret\r\n\
             X-Accel-Test: internal\r\nX-Accel-Buffering: no\r\nX-Pad: avoid browser bug\r\n\
             {extra}{}\r\n",
            body.len(),
            if keep { "" } else { "Connection: close\r\n" },
        );
        let mut out = head.into_bytes();
        if !req.line.starts_with("HEAD ") {
            out.extend_from_slice(body.as_bytes());
        }
        if w.write_all(&out).is_err() || !keep {
            break;
        }
    }
}

// ---- comparison -----------------------------------------------------------

fn normalize(s: &str, ports: &[u16]) -> String {
    let mut s = s.to_string();
    for (p, name) in ports.iter().zip(["PORT", "PORT", "BACKEND", "DEAD"]) {
        s = s.replace(&format!(":{p}"), &format!(":{name}"));
    }
    s
}

/// The comparable view of a response; for an echo, what the backend got:
/// `upstream line`, `upstream header NAME` (one entry per header name, in
/// lower case, repeated values joined with ` | `), `upstream header order`
/// and `upstream body`.
fn view(r: &Resp, ports: &[u16]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("status".into(), r.status.to_string());
    for h in [
        "Location",
        "Content-Type",
        "X-Backend",
        "X-Secret",
        "X-Accel-Test",
        "X-Accel-Buffering",
        "X-Pad",
        "Content-Length",
    ] {
        if let Some(v) = r.header(h) {
            m.insert(format!("header {h}"), normalize(v, ports));
        }
    }
    let echo = r.header("Content-Type") == Some("text/x-echo");
    if echo && !r.body.is_empty() {
        let text = String::from_utf8_lossy(&r.body).to_string();
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        m.insert(
            "upstream line".into(),
            normalize(lines.next().unwrap_or(""), ports),
        );
        let mut names = Vec::new();
        for l in lines {
            let (k, v) = l.split_once(": ").unwrap_or((l, ""));
            let key = format!("upstream header {}", k.to_ascii_lowercase());
            let v = normalize(v, ports);
            m.entry(key)
                .and_modify(|old: &mut String| {
                    old.push_str(" | ");
                    old.push_str(&v);
                })
                .or_insert(v);
            names.push(k.to_string());
        }
        m.insert("upstream header names".into(), {
            let mut sorted = names.clone();
            sorted.sort();
            sorted.join(", ")
        });
        m.insert("upstream header order".into(), names.join(", "));
        m.insert("upstream body".into(), body.to_string());
    } else if r.status < 500 {
        m.insert("body".into(), String::from_utf8_lossy(&r.body).to_string());
    }
    m
}

struct Case {
    name: &'static str,
    raw: String,
    /// Fields allowed to differ (documented divergences).
    allow: Vec<&'static str>,
}

fn case(name: &'static str, raw: &str) -> Case {
    Case {
        name,
        raw: raw.to_string(),
        allow: Vec::new(),
    }
}

fn get(name: &'static str, target: &str) -> Case {
    case(
        name,
        &format!("GET {target} HTTP/1.1\r\nHost: {{HOST}}\r\nConnection: close\r\n\r\n"),
    )
}

/// The config both servers run; `@PORT@`, `@B@` (backend), `@DEAD@` (a port
/// nothing listens on) are filled in.
const CONF: &str = r#"
events { worker_connections 64; }
http {
    access_log off;
    upstream named {
        server 127.0.0.1:@B@;
    }
    upstream ka {
        server 127.0.0.1:@B@;
        keepalive 4;
    }
    upstream two {
        server 127.0.0.1:@DEAD@;
        server 127.0.0.1:@B@;
    }
    upstream allDead {
        server 127.0.0.1:@DEAD@;
    }
    server {
        listen 127.0.0.1:@PORT@ default_server;
        server_name parity.test;

        location / {
            proxy_pass http://127.0.0.1:@B@;
        }
        location /prefix/ {
            proxy_pass http://127.0.0.1:@B@/other/;
        }
        location = /exact {
            proxy_pass http://127.0.0.1:@B@/replaced;
        }
        location /hdr/ {
            proxy_pass http://127.0.0.1:@B@;
            proxy_set_header Host $proxy_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Proxy-Port $proxy_port;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header User-Agent "";
        }
        location /host/ {
            proxy_pass http://127.0.0.1:@B@;
            proxy_set_header Host $host;
        }
        location /named/ {
            proxy_pass http://named;
        }
        location /ka/ {
            proxy_pass http://ka;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /ka-default-connection/ {
            proxy_pass http://ka;
            proxy_http_version 1.1;
        }
        location /v11/ {
            proxy_pass http://127.0.0.1:@B@;
            proxy_http_version 1.1;
        }
        location /hide/ {
            proxy_pass http://127.0.0.1:@B@;
            proxy_hide_header X-Secret;
            proxy_pass_header X-Accel-Buffering;
        }
        location ~ ^/re/(.*)$ {
            proxy_pass http://127.0.0.1:@B@;
        }
        location /dead/ {
            proxy_pass http://127.0.0.1:@DEAD@;
        }
        location /alldead/ {
            proxy_pass http://allDead;
        }
        location /slow/ {
            proxy_pass http://127.0.0.1:@B@;
            proxy_read_timeout 1s;
        }
        location /two/ {
            proxy_pass http://two;
            proxy_connect_timeout 2s;
        }
        location /smallbuf/ {
            proxy_pass http://127.0.0.1:@B@;
            proxy_buffer_size 1k;
        }
        location /rw/ {
            rewrite ^/rw/(.*)$ /prefix/$1 last;
        }
        location /rb/ {
            rewrite ^/rb/(.*)$ /new/$1 break;
            proxy_pass http://127.0.0.1:@B@;
        }
        location /tuned/ {
            proxy_pass http://127.0.0.1:@B@/t/;
            proxy_buffer_size 8k;
            proxy_send_timeout 5s;
            proxy_next_upstream error timeout http_502;
        }
    }
}
"#;

#[test]
fn nginx_and_why502_proxy_alike() {
    let nginx = nginx_binary();

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().canonicalize().expect("canon");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let backend = Backend::start();
    let dead = free_port();
    let nport = free_port();
    let wport = free_port();
    let conf_for = |port: u16| {
        CONF.replace("@PORT@", &port.to_string())
            .replace("@B@", &backend.port.to_string())
            .replace("@DEAD@", &dead.to_string())
    };
    std::fs::write(dir.join("nginx.conf"), conf_for(nport)).expect("write");
    std::fs::write(dir.join("why502.conf"), conf_for(wport)).expect("write");

    let (_nginx, nlog) = start_nginx(&nginx, &dir);
    let conf = dir.join("why502.conf");
    let (_why, wlog) = start_why502(&dir, "why502", &["--nginx-conf".as_ref(), conf.as_os_str()]);
    wait_port(nport, "nginx", &nlog);
    wait_port(wport, "why502", &dir.join("why502.out"));

    let form = "a=1&b=%C3%BC+x";
    let big = "x".repeat(3000);
    let mut cases = vec![
        // what is sent upstream
        get("plain get", "/plain?q=1"),
        get("encoded uri passed as sent", "/a%20b/c%2Fd?x=%2F&y=a+b"),
        get("uri rewriting: prefix replaced", "/prefix/some/path?k=v"),
        get("uri rewriting: prefix only", "/prefix/"),
        get("uri rewriting: encoded", "/prefix/a%20b/%7Euser?z=%20"),
        get("uri rewriting: dot segments", "/prefix/x/../y"),
        get("latin-1 uri passed as sent", "/caf%E9?x=%E9"),
        get("uri rewriting: latin-1", "/prefix/caf%E9/../d%E9?z=%E9"),
        get("uri rewriting: exact location", "/exact?a=b"),
        get("regex location keeps uri", "/re/thing?x=1"),
        get("rewrite last into a proxy_pass uri", "/rw/a%20b?q=%20"),
        get("rewrite break, no uri part", "/rb/a%20b/c?q=1"),
        get("nginx default headers", "/hdr/x"),
        case(
            "x-forwarded-for appended",
            "GET /hdr/y HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 203.0.113.7\r\nUser-Agent: ua/1\r\nConnection: close\r\n\r\n",
        ),
        get("host from client", "/host/z"),
        get("named upstream", "/named/n"),
        get("keepalive upstream", "/ka/k"),
        get("keepalive upstream, Connection not cleared", "/ka-default-connection/k"),
        get("http 1.1 without keepalive", "/v11/v"),
        case(
            "client headers passed",
            "GET /h HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/plain\r\nX-Custom: one\r\nX-Multi: a\r\nX-Multi: b\r\nCookie: a=1\r\nKeep-Alive: 300\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        ),
        case("http/1.0 without host", "GET /old HTTP/1.0\r\n\r\n"),
        case(
            "head",
            "HEAD /headreq HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
        ),
        case(
            "post form body",
            &format!("POST /form?x=1 HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}", form.len()),
        ),
        case(
            "post larger body",
            &format!("POST /prefix/big HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}", big.len()),
        ),
        case(
            "post chunked body",
            "POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ),
        case(
            "put empty body",
            "PUT /put HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        case(
            "delete",
            "DELETE /del HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
        ),
        // response headers
        get("hide and pass headers", "/hide/h"),
        get("tuned location", "/tuned/x"),
        // the backend's own answers
        get("backend 404 passed through", "/status/404"),
        get("backend 500 passed through", "/status/500"),
        get("backend redirect rewritten (proxy_redirect default)", "/prefix/redir"),
        get("backend redirect, no uri part", "/redir"),
        get("backend relative redirect", "/prefix/relredir"),
        // failures
        get("dead backend", "/dead/x"),
        get("upstream with every server dead", "/alldead/x"),
        get("read timeout", "/slow/x"),
        get("header bigger than proxy_buffer_size", "/smallbuf/bighead"),
        get("header within proxy_buffer_size", "/bighead"),
        get("next upstream after a dead server", "/two/a"),
        get("next upstream again", "/two/b"),
        case(
            "post to two servers, first dead",
            "POST /two/p HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ),
    ];
    // Documented divergences (docs/nginx-compat.md): why502's failure
    // responses are its diagnostic page.
    for c in cases.iter_mut() {
        if matches!(
            c.name,
            "dead backend"
                | "upstream with every server dead"
                | "read timeout"
                | "header bigger than proxy_buffer_size"
        ) {
            c.allow
                .extend(["header Content-Type", "header Content-Length"]);
        }
        // nginx buffers a chunked request body and sends it with
        // Content-Length; why502 streams it chunked (the body is the same).
        if c.name == "post chunked body" {
            c.allow.extend([
                "header Content-Length",
                "upstream header content-length",
                "upstream header transfer-encoding",
                "upstream header names",
                "upstream header order",
            ]);
        }
    }

    let ports = [nport, wport, backend.port, dead];
    let mut failures = Vec::new();
    for c in &cases {
        let nr = send(nport, &c.raw);
        let wr = send(wport, &c.raw);
        let n = view(&nr, &ports);
        let w = view(&wr, &ports);
        if std::env::var_os("PARITY_VERBOSE").is_some() {
            eprintln!("== {}: nginx {n:#?}\nwhy502 {w:#?}", c.name);
        }
        failures.extend(diff_views(
            c.name,
            ("nginx:  ", &n),
            ("why502: ", &w),
            &c.allow,
        ));
    }

    // Each kind of case really exercised what it is named after (on nginx).
    let n = send(nport, &get("", "/slow/x").raw);
    assert_eq!(n.status, 504, "nginx read timeout");
    let n = send(nport, &get("", "/dead/x").raw);
    assert_eq!(n.status, 502, "nginx dead backend");
    let n = send(nport, &get("", "/prefix/a").raw);
    assert!(
        String::from_utf8_lossy(&n.body).starts_with("GET /other/a HTTP/1.0"),
        "{}",
        String::from_utf8_lossy(&n.body)
    );
    // why502's failures carry their cause.
    for (path, cause) in [
        ("/dead/x", "connect.refused"),
        ("/slow/x", "timeout"),
        ("/alldead/x", "connect.refused"),
        ("/smallbuf/bighead", "header.too_big"),
    ] {
        let r = send(wport, &get("", path).raw);
        assert!(
            r.header("Why502-Cause").is_some_and(|c| c.contains(cause)),
            "{path}: {:?}",
            r.headers
        );
    }
    drop(backend);
    assert!(
        failures.is_empty(),
        "{} difference(s) between nginx and why502:\n{}\nwhy502 error log:\n{}",
        failures.len(),
        failures.join("\n"),
        std::fs::read_to_string(&wlog).unwrap_or_default()
    );
}

// ---- conversion ---------------------------------------------------------

fn convert(text: &str) -> Result<why502::config::Config, why502::config::ConfigError> {
    let ds = why502::nginx::parse_str(text, Path::new("/test/nginx.conf"), Path::new("/test"))
        .map_err(|e| why502::config::ConfigError::new(Default::default(), e.to_string()))?;
    why502::nginx::convert::convert(&ds, "/test/nginx.conf", Path::new("/usr/share/nginx"))
}

fn site(locations: &str) -> String {
    format!(
        "upstream pool {{ server 127.0.0.1:9001; server app2; keepalive 8; }}\n\
         upstream one {{ server 127.0.0.1:9001; }}\n\
         server {{ listen 8080; {locations} }}\n"
    )
}

/// The proxy_* directives become what the HTTP gateway expects (the same
/// as the YAML `proxy:` key).
#[test]
fn proxy_directives_convert_for_the_gateway() {
    let c = convert(&site(
        "location / { proxy_pass http://127.0.0.1:9000; \
           proxy_set_header Host $proxy_host; \
           proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
           proxy_set_header X-Port $proxy_port; \
           proxy_http_version 1.1; proxy_connect_timeout 2s; proxy_send_timeout 3s; \
           proxy_read_timeout 4s; proxy_buffer_size 16k; proxy_hide_header X-A; \
           proxy_pass_header X-Accel-Buffering; proxy_next_upstream error timeout http_502; \
           proxy_intercept_errors on; proxy_redirect default; } \
         location /p/ { proxy_pass http://pool/x/; proxy_http_version 1.1; } \
         location /c/ { proxy_pass http://pool; proxy_http_version 1.1; \
           proxy_set_header Connection \"\"; } \
         location /one/ { proxy_pass http://one; } \
         location /s/ { proxy_pass https://api.example:8443/v1/; proxy_ssl_verify on; \
           proxy_ssl_trusted_certificate /etc/ca.pem; proxy_ssl_name $proxy_host; \
           proxy_ssl_server_name on; } \
         location /h/ { proxy_pass http://backend.internal; }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let locs = &c.servers[0].locations;
    let p = locs[0].proxy.clone().expect("proxy");
    // An anonymous upstream: no idle connections (Connection: close), named
    // as written ($proxy_host).
    assert_eq!(p.upstream.keepalive, 0);
    assert_eq!(p.upstream.name, "127.0.0.1:9000");
    assert_eq!(p.http_version, "1.1");
    assert_eq!(p.set_headers.len(), 3, "{:?}", p.set_headers);
    assert_eq!(p.connect_timeout, Duration::from_secs(2));
    assert_eq!(p.send_timeout, Duration::from_secs(3));
    assert_eq!(p.read_timeout, Duration::from_secs(4));
    assert_eq!(p.buffer_size, 16384);
    assert_eq!(p.hide_headers, ["X-A"]);
    assert_eq!(p.pass_headers, ["X-Accel-Buffering"]);
    assert_eq!(p.next_upstream, ["error", "timeout", "http_502"]);
    assert!(p.intercept_errors);
    assert!(!p.tls && p.uri.is_none());

    // A keepalive upstream with HTTP/1.1 but Connection not cleared: nginx
    // still sends `Connection: close` (after its default Host).
    let p = locs[1].proxy.clone().expect("proxy");
    assert_eq!(p.upstream.keepalive, 8);
    assert_eq!(p.upstream.name, "pool");
    assert_eq!(p.uri.as_deref(), Some("/x/"));
    let names: Vec<&str> = p.set_headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["Host", "Connection"]);
    // `server app2;` is port 80, like nginx.
    assert_eq!(p.upstream.servers[1].addr.to_string(), "app2:80");
    // Cleared: the gateway keeps the connection.
    let p = locs[2].proxy.clone().expect("proxy");
    let names: Vec<&str> = p.set_headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["Connection"]);
    // An upstream block without keepalive.
    assert_eq!(locs[3].proxy.clone().expect("proxy").upstream.keepalive, 0);
    let p = locs[4].proxy.clone().expect("proxy");
    assert!(p.tls && p.ssl_verify && p.ssl_server_name);
    assert_eq!(p.upstream.name, "api.example:8443");
    assert_eq!(p.upstream.servers[0].addr.to_string(), "api.example:8443");
    assert_eq!(p.uri.as_deref(), Some("/v1/"));
    assert_eq!(
        p.ssl_trusted_certificate.as_deref(),
        Some(Path::new("/etc/ca.pem"))
    );
    assert!(p.ssl_name.is_some());
    let p = locs[5].proxy.clone().expect("proxy");
    assert_eq!(p.upstream.name, "backend.internal");
    assert_eq!(
        p.upstream.servers[0].addr.to_string(),
        "backend.internal:80"
    );

    // What would make why502 answer differently is refused with file:line.
    for (conf, want) in [
        (
            "location / { proxy_pass http://pool; proxy_next_upstream error http_502; }",
            "http_502",
        ),
        (
            "location / { proxy_pass http://x:1; proxy_next_upstream error nope; }",
            "invalid value",
        ),
        (
            "location / { proxy_pass http://x:1; proxy_redirect http://x:1/ /; }",
            "proxy_redirect",
        ),
        (
            "location ~ \\.php$ { proxy_pass http://x:1/y; }",
            "URI part",
        ),
        ("location / { proxy_pass ftp://x; }", "invalid proxy pass"),
        (
            "location / { proxy_set_header X $nope; proxy_pass http://x:1; }",
            "nope",
        ),
    ] {
        let e = convert(&site(conf)).expect_err(conf);
        assert!(e.to_string().contains(want), "{conf}: {e}");
        assert!(e.to_string().contains("/test/nginx.conf:"), "{conf}: {e}");
    }
    // One server: retrying on a status could not happen in nginx either.
    convert(&site(
        "location / { proxy_pass http://one; proxy_next_upstream error http_502; }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}
