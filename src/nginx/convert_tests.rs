//! Tests for nginx.conf → model conversion.

use std::fs;
use std::path::{Path, PathBuf};

use super::convert::{convert, load_file};
use super::parse_str;
use crate::config::{
    AccessLog, Config, ConfigError, ErrorLogTarget, Expires, Location, LogEscape, LogLevel, Match,
    RewriteFlag, ScriptOp,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx")
}

fn conv(text: &str) -> Result<Config, ConfigError> {
    let ds = parse_str(text, Path::new("/test/nginx.conf"), &fixtures())
        .map_err(|e| ConfigError::new(Default::default(), e.to_string()))?;
    convert(&ds, "/test/nginx.conf", Path::new("/usr/share/nginx"))
}

fn ok(text: &str) -> Config {
    conv(text).unwrap_or_else(|e| panic!("conversion failed: {e}\n--- input ---\n{text}"))
}

fn err(text: &str) -> ConfigError {
    match conv(text) {
        Ok(_) => panic!("expected an error for\n{text}"),
        Err(e) => e,
    }
}

fn find<'a>(locs: &'a [Location], pred: &dyn Fn(&Match) -> bool) -> &'a Location {
    locs.iter()
        .find(|l| pred(&l.matcher))
        .expect("location not found")
}

/// The stock nginx.conf with its absolute /etc/nginx includes redirected
/// to the fixtures and `site` enabled.
fn debian_conf(site: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = fixtures();
    let tmp = tempfile::tempdir().expect("tmp");
    fs::create_dir_all(tmp.path().join("sites-enabled")).expect("mkdir");
    fs::create_dir_all(tmp.path().join("conf.d")).expect("mkdir");
    for f in ["fastcgi.conf", "fastcgi_params", "mime.types"] {
        fs::copy(dir.join(f), tmp.path().join(f)).expect("copy");
    }
    fs::create_dir_all(tmp.path().join("snippets")).expect("mkdir");
    fs::copy(
        dir.join("snippets/fastcgi-php.conf"),
        tmp.path().join("snippets/fastcgi-php.conf"),
    )
    .expect("copy");
    fs::copy(dir.join(site), tmp.path().join("sites-enabled/site")).expect("copy");
    let text = fs::read_to_string(dir.join("nginx.conf"))
        .expect("nginx.conf")
        .replace("/etc/nginx/", &format!("{}/", tmp.path().display()));
    let conf = tmp.path().join("nginx.conf");
    fs::write(&conf, text).expect("write");
    (tmp, conf)
}

#[test]
fn debian_stock_files_convert() {
    for site in [
        "sites-available/default",
        "sites-available/default-php",
        "wordpress.conf",
    ] {
        let (_tmp, conf) = debian_conf(site);
        let cfg = load_file(&conf).unwrap_or_else(|e| panic!("{site}: {e}"));
        assert!(!cfg.servers.is_empty(), "{site}");
        // Debian's `worker_processes auto`: one thread per CPU.
        assert_eq!(cfg.threads, 0, "{site}");
        // harmless directives are reported with file:line
        for name in ["\"gzip\"", "\"sendfile\"", "\"events\""] {
            assert!(
                cfg.warnings
                    .iter()
                    .any(|w| w.message.contains(name) && w.origin.line > 0),
                "{site}: no warning for {name}: {:#?}",
                cfg.warnings
            );
        }
        let access: Vec<(&Path, &str)> = cfg
            .logging
            .access_log
            .iter()
            .map(|l| (l.path.as_path(), l.format.name.as_str()))
            .collect();
        assert_eq!(
            access,
            [(Path::new("/var/log/nginx/access.log"), "combined")],
            "{site}"
        );
        assert_eq!(cfg.logging.error_level, LogLevel::Error, "nginx's default");
        assert_eq!(
            cfg.logging.error_log.as_deref(),
            Some(Path::new("/var/log/nginx/error.log"))
        );
    }
    // default-php: the PHP location has the snippet's settings and fastcgi.conf's params
    let (_tmp, conf) = debian_conf("sites-available/default-php");
    let cfg = load_file(&conf).expect("default-php");
    let s = &cfg.servers[0];
    assert_eq!(s.listen.len(), 2);
    assert!(s
        .listen
        .iter()
        .all(|l| l.default_server && l.addr.port() == 80));
    assert_eq!(s.names, ["_"]);
    assert_eq!(s.root, Path::new("/var/www/html"));
    assert_eq!(s.index[0], "index.php");
    let php = find(
        &s.locations,
        &|m| matches!(m, Match::Regex { re, .. } if re.as_str() == r"\.php$"),
    );
    let fc = php.fastcgi.as_ref().expect("fastcgi");
    assert_eq!(
        fc.upstream.servers[0].addr.to_string(),
        "unix:/run/php/php8.2-fpm.sock"
    );
    assert_eq!(fc.index.as_deref(), Some("index.php"));
    assert!(fc.split_path_info.is_some());
    let names: Vec<&str> = fc.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names[0], "PATH_INFO");
    assert_eq!(names[1], "SCRIPT_FILENAME");
    assert!(names.contains(&"REDIRECT_STATUS"));
    assert!(fc
        .params
        .iter()
        .any(|p| p.name == "HTTPS" && p.if_not_empty));
    assert!(matches!(&php.script[..], [ScriptOp::Set { name, .. }] if name == "path_info"));
    assert_eq!(php.try_files.as_ref().map(Vec::len), Some(2));
    let ht = find(
        &s.locations,
        &|m| matches!(m, Match::Regex { re, .. } if re.as_str() == r"/\.ht"),
    );
    assert_eq!(ht.access.len(), 1);
    assert!(!ht.access[0].allow && ht.access[0].net.is_none());
    // mime.types + default_type from http
    let types = php.types.as_ref().expect("types");
    assert_eq!(types.get("css").map(String::as_str), Some("text/css"));
    assert_eq!(
        php.default_type.as_deref(),
        Some("application/octet-stream")
    );

    // WordPress: expires max on static assets, exact favicon location
    let (_tmp, conf) = debian_conf("wordpress.conf");
    let cfg = load_file(&conf).expect("wordpress");
    let s = &cfg.servers[0];
    assert_eq!(s.names, ["example.com", "www.example.com"]);
    let assets = find(&s.locations, &|m| {
        matches!(
            m,
            Match::Regex {
                case_insensitive: true,
                ..
            }
        )
    });
    assert_eq!(assets.expires, Some(Expires::Max));
    assert!(s
        .locations
        .iter()
        .any(|l| matches!(&l.matcher, Match::Exact(p) if p == "/favicon.ico")));
}

#[test]
fn single_site_file_converts() {
    // a sites-enabled file alone: its includes resolve against the fixtures (the conf dir)
    let cfg = load_file(&fixtures().join("wordpress.conf")).expect("wordpress alone");
    assert_eq!(cfg.servers.len(), 1);
    // without mime.types: nginx's built-in types and default_type text/plain
    let l = &cfg.servers[0].locations[0];
    assert_eq!(l.default_type.as_deref(), Some("text/plain"));
    assert_eq!(
        l.types
            .as_ref()
            .and_then(|t| t.get("html"))
            .map(String::as_str),
        Some("text/html")
    );
}

#[test]
fn errors_name_file_and_line() {
    let e = err("http {\n  server {\n    listen 8080;\n    location / {\n      if ($x) { return 404; }\n    }\n  }\n}\n");
    assert_eq!(e.origin.line, 5, "{e}");
    assert!(
        e.to_string().starts_with("/test/nginx.conf:5: \"if\""),
        "{e}"
    );

    let e = err("server {\n listen 80;\n auth_basic \"x\";\n}\n");
    assert_eq!(e.origin.line, 3, "{e}");
    let e = err("server {\n listen 80;\n no_such_directive on;\n}\n");
    assert_eq!(e.origin.line, 3, "{e}");
    assert!(e.message.contains("no_such_directive"), "{e}");
    let e = err("server {\n listen 80;\n location / {\n  fastcgi_pass nowhere;\n }\n}\n");
    assert_eq!(e.origin.line, 4, "{e}");
    let e = err("server {\n listen 80;\n location ~ (?<=x)y {\n }\n}\n");
    assert_eq!(e.origin.line, 3, "{e}");
    let e = err("server {\n listen 80 ssl;\n}\n");
    assert!(e.message.contains("ssl_certificate"), "{e}");
    let e = err("server {\n listen 80;\n location / {\n  fastcgi_param X $nope;\n }\n}\n");
    assert!(
        e.to_string().starts_with("/test/nginx.conf:4:") && e.message.contains("nope"),
        "{e}"
    );
    // harmless directive with a behaviour-changing value
    let e = err("server {\n listen 80;\n autoindex on;\n}\n");
    assert_eq!(e.origin.line, 3, "{e}");
    // an error inside an included file names that file
    let tmp = tempfile::tempdir().expect("tmp");
    fs::write(tmp.path().join("inc.conf"), "\n\ngzip on;\nmap $a $b { }\n").expect("write");
    fs::write(
        tmp.path().join("nginx.conf"),
        "http {\n include inc.conf;\n server { listen 80; }\n}\n",
    )
    .expect("write");
    let e = load_file(&tmp.path().join("nginx.conf")).expect_err("map");
    assert!(
        e.origin.file.ends_with("inc.conf") && e.origin.line == 4,
        "{e}"
    );
}

#[test]
fn inheritance_like_nginx() {
    let cfg = ok(r#"
http {
    root /srv/http;
    index a.html;
    fastcgi_param A 1;
    fastcgi_param B 2;
    add_header X-Http 1;
    fastcgi_read_timeout 5s;
    upstream php { server unix:/tmp/a.sock weight=3 max_fails=2 fail_timeout=3s; server 127.0.0.1:9000 backup; keepalive 4; }
    server {
        listen 127.0.0.1:8080 default_server;
        server_name a.test *.a.test;
        root /srv/a;
        add_header X-Server 1;
        error_page 404 /404.html;
        location / {
            index b.html;
        }
        location ~ \.php$ {
            fastcgi_pass php;
            fastcgi_param C 3;
            fastcgi_param D $request_uri if_not_empty;
            add_header X-Loc $uri always;
            location ~ ^/x/ { fastcgi_pass 127.0.0.1:9001; }
        }
        location /plain { fastcgi_pass unix:/tmp/b.sock; }
        location = /e { return 301 /f; }
        location /r { rewrite ^/r/(.*)$ /s/$1 last; rewrite ^ http://x/ ; set $v "a$uri"; }
        location @named { error_page 500 = /x; }
    }
}
"#);
    let s = &cfg.servers[0];
    assert_eq!(s.root, Path::new("/srv/a"));
    assert_eq!(s.index, ["a.html"]);
    let root_loc = &s.locations[0];
    assert_eq!(root_loc.index.as_deref(), Some(&["b.html".to_string()][..]));
    assert_eq!(root_loc.root.as_deref(), Some(Path::new("/srv/a")));
    // add_header: the server level replaces http's list
    assert_eq!(root_loc.add_headers.len(), 1);
    assert_eq!(root_loc.add_headers[0].name, "X-Server");
    assert_eq!(root_loc.error_pages[0].codes, [404]);
    let php = &s.locations[1];
    let fc = php.fastcgi.as_ref().expect("fc");
    // a level with any fastcgi_param replaces the inherited ones
    let names: Vec<&str> = fc.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["C", "D"]);
    assert!(fc.params[1].if_not_empty);
    assert_eq!(fc.read_timeout.as_secs(), 5);
    assert_eq!(fc.upstream.name, "php");
    assert_eq!(fc.upstream.keepalive, 4);
    assert_eq!(fc.upstream.servers[0].weight, 3);
    assert_eq!(fc.upstream.servers[0].max_fails, 2);
    assert!(fc.upstream.servers[1].backup);
    assert!(php.add_headers[0].always);
    // nested location inherits from its parent location
    let nested = &php.locations[0];
    let nfc = nested.fastcgi.as_ref().expect("nested fc");
    assert_eq!(nfc.params.len(), 2);
    assert_eq!(nfc.upstream.servers[0].addr.to_string(), "127.0.0.1:9001");
    let plain = &s.locations[2];
    let pfc = plain.fastcgi.as_ref().expect("fc");
    assert_eq!(pfc.params.len(), 2, "http-level params inherited");
    assert!(matches!(&s.locations[3].script[..], [ScriptOp::Return(r)] if r.code == 301));
    match &s.locations[4].script[..] {
        [ScriptOp::Rewrite(a), ScriptOp::Rewrite(b), ScriptOp::Set { name, .. }] => {
            assert_eq!(a.flag, RewriteFlag::Last);
            assert_eq!(b.flag, RewriteFlag::Redirect);
            assert_eq!(name, "v");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&s.locations[5].matcher, Match::Named(n) if n == "@named"));
    assert_eq!(s.locations[5].error_pages[0].response, Some(0));
}

fn logs(a: &Option<Vec<AccessLog>>) -> Option<Vec<(String, String)>> {
    a.as_ref().map(|v| {
        v.iter()
            .map(|l| (l.path.display().to_string(), l.format.name.clone()))
            .collect()
    })
}

#[test]
fn log_formats_and_access_log_inheritance() {
    let cfg = ok(r#"
http {
    log_format main '$remote_addr "$request" $status'
                    ' $http_x_a';
    log_format js escape=json '{"u":"$uri"}';
    access_log /var/log/a.log main;
    access_log /var/log/b.log;
    server {
        listen 8080;
        location / { }
        location /off/ {
            access_log off;
            location /off/on/ { access_log /var/log/c.log JS if=$arg_log; }
        }
        location /own/ { access_log logs/own.log combined buffer=32k flush=1s; }
        location /two/ { access_log /var/log/a.log main; access_log off; }
    }
    server {
        listen 8081;
        access_log off;
        location / { }
    }
}
"#);
    let lg = &cfg.logging;
    let http: Vec<(String, String)> = lg
        .access_log
        .iter()
        .map(|l| (l.path.display().to_string(), l.format.name.clone()))
        .collect();
    assert_eq!(
        http,
        [
            ("/var/log/a.log".to_string(), "main".to_string()),
            ("/var/log/b.log".to_string(), "combined".to_string())
        ]
    );
    // The format's strings are joined, as nginx does.
    assert_eq!(
        lg.access_log[0].format.source,
        "$remote_addr \"$request\" $status $http_x_a"
    );
    assert!(lg.access_log[1].format.builtin);
    let s = &cfg.servers[0];
    assert!(s.access_log.is_none(), "inherits http's");
    let l = |p: &str| find(&s.locations, &|m| matches!(m, Match::Prefix(x) if x == p));
    assert!(l("/").access_log.is_none());
    assert_eq!(logs(&l("/off/").access_log), Some(vec![]), "off");
    let on = &l("/off/").locations[0];
    assert_eq!(
        logs(&on.access_log),
        Some(vec![("/var/log/c.log".into(), "js".into())]),
        "format names are looked up case-insensitively"
    );
    let acc = on.access_log.as_ref().expect("logs");
    assert_eq!(acc[0].format.escape, LogEscape::Json);
    assert_eq!(
        acc[0].condition.as_ref().map(|c| c.source.as_str()),
        Some("$arg_log")
    );
    assert_eq!(
        logs(&l("/own/").access_log),
        Some(vec![(
            "/usr/share/nginx/logs/own.log".into(),
            "combined".into()
        )]),
        "relative to the prefix"
    );
    assert!(cfg
        .warnings
        .iter()
        .any(|w| w.message.contains("buffer=") && w.origin.line == 15));
    assert_eq!(
        logs(&l("/two/").access_log),
        Some(vec![]),
        "off wins over a path at the same level"
    );
    assert_eq!(logs(&cfg.servers[1].access_log), Some(vec![]));
    assert!(!cfg
        .warnings
        .iter()
        .any(|w| w.message.contains("log_format")));
}

#[test]
fn access_log_and_log_format_errors() {
    for (body, line, needle) in [
        (
            "log_format combined '$uri';",
            2,
            "duplicate \"log_format\" name \"combined\"",
        ),
        (
            "log_format a '$uri';\nlog_format a '$uri';",
            3,
            "duplicate \"log_format\" name \"a\"",
        ),
        ("log_format a '$nope';", 2, "unknown \"nope\" variable"),
        (
            "log_format a '${uri';",
            2,
            "the closing bracket in \"uri\" variable is missing",
        ),
        (
            "log_format a escape=xml '$uri';",
            2,
            "unknown log format escaping \"xml\"",
        ),
        (
            "access_log /x.log nosuch;",
            2,
            "unknown log format \"nosuch\"",
        ),
        (
            "access_log off combined;",
            2,
            "invalid parameter \"combined\"",
        ),
        (
            "access_log /x.log combined flush=1s;",
            2,
            "no buffer is defined",
        ),
        ("access_log /x.log combined gzip;", 2, "gzip"),
        (
            "access_log /x.log combined bogus=1;",
            2,
            "invalid parameter \"bogus=1\"",
        ),
        ("access_log /x$host.log;", 2, "variables"),
        ("error_log /x.log loud;", 2, "invalid log level \"loud\""),
        (
            "server {\nlisten 80;\nlog_format x '$uri';\n}",
            4,
            "\"log_format\" directive is not allowed here",
        ),
    ] {
        let e = err(&format!("http {{\n{body}\nserver {{ listen 81; }}\n}}\n"));
        assert!(e.message.contains(needle), "{body}: {e}");
        assert_eq!(e.origin.line, line, "{body}: {e}");
    }
}

#[test]
fn error_log_levels_main_http_server() {
    let cfg = ok(r#"
error_log /var/log/main.log warn;
http {
    error_log /var/log/http.log;
    server { listen 80; }
    server {
        listen 81;
        error_log /var/log/s.log crit;
        error_log stderr info;
        location / { error_log /var/log/loc.log; }
    }
}
"#);
    assert_eq!(
        cfg.logging.error_log.as_deref(),
        Some(Path::new("/var/log/main.log"))
    );
    assert_eq!(cfg.logging.error_level, LogLevel::Warn);
    assert_eq!(
        cfg.servers[0].error_log,
        [ErrorLogTarget {
            path: Some("/var/log/http.log".into()),
            level: LogLevel::Error
        }],
        "inherited from http, nginx's default level"
    );
    assert_eq!(
        cfg.servers[1].error_log,
        [
            ErrorLogTarget {
                path: Some("/var/log/s.log".into()),
                level: LogLevel::Crit
            },
            ErrorLogTarget {
                path: None,
                level: LogLevel::Info
            }
        ]
    );
    assert!(cfg
        .warnings
        .iter()
        .any(|w| w.message.contains("per-location error_log") && w.origin.line == 10));
    // Without any error_log: stderr (or --error-log) at nginx's default level.
    let cfg = ok("http { server { listen 80; } }");
    assert!(cfg.logging.error_log.is_none() && cfg.servers[0].error_log.is_empty());
    assert_eq!(cfg.logging.error_level, LogLevel::Error);
}

#[test]
fn worker_processes_sets_threads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("nginx.conf");
    let site = "http { server { listen 127.0.0.1:8080; root /tmp; } }";
    std::fs::write(&conf, format!("worker_processes 3;\n{site}\n")).expect("write");
    assert_eq!(load_file(&conf).expect("loads").threads, 3);
    std::fs::write(&conf, format!("worker_processes zero;\n{site}\n")).expect("write");
    let e = load_file(&conf).expect_err("invalid").to_string();
    assert!(
        e.contains("nginx.conf:1") && e.contains("invalid value"),
        "{e}"
    );
}

#[test]
fn worker_rlimit_nofile_and_worker_priority_set_the_process() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("nginx.conf");
    let site = "http { server { listen 127.0.0.1:8080; root /tmp; } }";
    let load = |main: &str| {
        std::fs::write(&conf, format!("{main}\n{site}\n")).expect("write");
        load_file(&conf)
    };
    let cfg = load("worker_rlimit_nofile 65535;\nworker_priority -5;").expect("loads");
    assert_eq!(cfg.process.max_open_files, Some(65535));
    assert_eq!(cfg.process.priority, Some(-5));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    // nginx takes `+5`, and leaves the range to the kernel, which clamps.
    assert_eq!(
        load("worker_priority +5;").expect("loads").process.priority,
        Some(5)
    );
    assert_eq!(
        load("worker_priority 99;").expect("loads").process.priority,
        Some(19)
    );
    assert_eq!(
        load("worker_priority -99;")
            .expect("loads")
            .process
            .priority,
        Some(-20)
    );
    assert_eq!(load("").expect("loads").process, Default::default());
    // nginx's wording (nginx -t), with the file and line.
    for (main, msg) in [
        (
            "worker_rlimit_nofile abc;",
            "\"worker_rlimit_nofile\" invalid number",
        ),
        (
            "worker_rlimit_nofile -3;",
            "\"worker_rlimit_nofile\" invalid number",
        ),
        (
            "worker_rlimit_nofile 1 2;",
            "\"worker_rlimit_nofile\" invalid number of arguments",
        ),
        ("worker_priority x;", "\"worker_priority\" invalid number"),
        ("worker_priority +;", "\"worker_priority\" invalid number"),
    ] {
        let e = load(main).expect_err(main).to_string();
        assert!(e.contains("nginx.conf:1") && e.contains(msg), "{main}: {e}");
    }
}

#[test]
fn keepalive_requests_per_server() {
    let cfg = ok("events {}\nhttp {\n  keepalive_requests 500;\n  server { listen 8080; }\n  server {\n    listen 8081;\n    keepalive_requests 7;\n    location / { keepalive_requests 9; }\n  }\n}\n");
    assert_eq!(cfg.servers[0].keepalive_requests, 500, "from http");
    assert_eq!(cfg.servers[1].keepalive_requests, 7);
    // In a location: reported, ignored.
    assert!(cfg
        .warnings
        .iter()
        .any(|w| w.message.contains("ignored") && w.origin.line == 8));
    let cfg = ok("events {}\nhttp { server { listen 8080; } }\n");
    assert_eq!(cfg.servers[0].keepalive_requests, 1000, "nginx's default");
    let e = err("events {}\nhttp { server { listen 8080; keepalive_requests lots; } }\n");
    assert!(e.to_string().contains("keepalive_requests"), "{e}");
}

#[test]
fn keepalive_timeout_per_server() {
    use std::time::Duration;
    let cfg = ok("events {}\nhttp {\n  keepalive_timeout 30s;\n  server { listen 8080; }\n  server {\n    listen 8081;\n    keepalive_timeout 5 4;\n    location / { keepalive_timeout 9; }\n  }\n}\n");
    assert_eq!(
        cfg.servers[0].keepalive_timeout,
        Duration::from_secs(30),
        "from http"
    );
    assert_eq!(cfg.servers[1].keepalive_timeout, Duration::from_secs(5));
    // The header timeout, and the directive in a location: reported, ignored.
    for line in [7, 8] {
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w.message.contains("ignored") && w.origin.line == line),
            "line {line}: {:?}",
            cfg.warnings
        );
    }
    let cfg = ok("events {}\nhttp { server { listen 8080; keepalive_timeout 0; } server { listen 8081; } }\n");
    assert_eq!(cfg.servers[0].keepalive_timeout, Duration::ZERO);
    assert_eq!(
        cfg.servers[1].keepalive_timeout,
        Duration::from_secs(75),
        "nginx's default"
    );
    let e = err("events {}\nhttp { server { listen 8080; keepalive_timeout forever; } }\n");
    assert!(e.to_string().contains("forever"), "{e}");
}
