//! Tests for the nginx config reader.  Behaviour marked "pinned" was checked
//! against `nginx -t` (nginx 1.22.1, Debian); `nginx_agrees_on_tricky_snippets`
//! re-checks it whenever an `nginx` binary is available.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx")
}

fn p(text: &str) -> Result<Vec<Directive>, ConfError> {
    parse_str(text, Path::new("/test/nginx.conf"), Path::new("/test"))
}

fn ok(text: &str) -> Vec<Directive> {
    p(text).unwrap_or_else(|e| panic!("parse failed: {e}\n--- input ---\n{text}"))
}

fn err(text: &str) -> (usize, String) {
    match p(text) {
        Ok(d) => panic!("expected an error, got {d:#?}"),
        Err(e) => (e.line, e.message),
    }
}

/// Argument values of the first directive named `name` (anywhere).
fn args_of(ds: &[Directive], name: &str) -> Vec<String> {
    walk(ds)
        .find(|w| w.directive.name == name)
        .unwrap_or_else(|| panic!("no directive {name}"))
        .directive
        .args
        .iter()
        .map(|a| a.value.clone())
        .collect()
}

// ---------------------------------------------------------------- fixtures

#[test]
fn debian_stock_files_parse() {
    let dir = fixtures();
    for f in [
        "fastcgi_params",
        "fastcgi.conf",
        "snippets/fastcgi-php.conf",
        "mime.types",
        "sites-available/default",
        "sites-available/default-php",
        "wordpress.conf",
    ] {
        // Includes in these files are relative to the conf prefix (/etc/nginx),
        // i.e. the fixtures directory, not to the file's own directory.
        let text = fs::read_to_string(dir.join(f)).unwrap();
        let ds = parse_str(&text, &dir.join(f), &dir).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!ds.is_empty(), "{f} parsed to nothing");
        if !f.contains('/') {
            // Top-level ones: their directory is the prefix, so parse_file works.
            parse_file(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }
}

#[test]
fn debian_nginx_conf_parses_with_absolute_includes() {
    // The stock nginx.conf includes /etc/nginx/... absolutely: parse it as
    // text with those includes redirected into the fixtures directory.
    let dir = fixtures();
    let text = fs::read_to_string(dir.join("nginx.conf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("sites-enabled")).unwrap();
    fs::copy(
        dir.join("sites-available/default-php"),
        tmp.path().join("sites-enabled/default"),
    )
    .unwrap();
    let text = text
        .replace(
            "/etc/nginx/mime.types",
            &dir.join("mime.types").display().to_string(),
        )
        .replace("/etc/nginx/", &format!("{}/", tmp.path().display()));
    let ds = parse_str(&text, &dir.join("nginx.conf"), &dir).unwrap();

    let names: Vec<&str> = ds.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "user",
            "worker_processes",
            "pid",
            "error_log",
            "events",
            "http"
        ]
    );
    let http = &ds[5];
    // mime.types' `types { }` is spliced into http, from mime.types' own lines.
    let types = http.children().iter().find(|d| d.name == "types").unwrap();
    assert!(types.file.ends_with("mime.types"));
    assert_eq!(types.line, 2);
    assert!(types
        .children()
        .iter()
        .any(|d| d.name == "text/html" && d.arg(0) == Some("html")));
    // The site's server block, then the PHP location with the snippet and fastcgi.conf expanded.
    let php = walk(&ds)
        .find(|w| w.directive.name == "location" && w.directive.arg(1) == Some("\\.php$"))
        .unwrap();
    assert_eq!(php.path(), ["http", "server"]);
    let inner: Vec<&str> = php
        .directive
        .children()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(
        &inner[..5],
        [
            "fastcgi_split_path_info",
            "try_files",
            "set",
            "fastcgi_param",
            "fastcgi_index"
        ]
    );
    assert_eq!(inner.last(), Some(&"fastcgi_pass"));
    let script = php
        .directive
        .children()
        .iter()
        .find(|d| d.arg(0) == Some("SCRIPT_FILENAME"))
        .unwrap();
    assert_eq!(script.arg(1), Some("$document_root$fastcgi_script_name"));
    assert!(script.file.ends_with("fastcgi.conf"));
}

#[test]
fn wordpress_block_shape_and_lines() {
    let path = fixtures().join("wordpress.conf");
    let ds = parse_file(&path).unwrap();
    assert_eq!(ds.len(), 1);
    let server = &ds[0];
    assert_eq!((server.name.as_str(), server.line), ("server", 2));
    assert_eq!(*server.file, path);
    let locs: Vec<(Vec<&str>, usize)> = server
        .children()
        .iter()
        .filter(|d| d.name == "location")
        .map(|d| (d.args.iter().map(|a| a.value.as_str()).collect(), d.line))
        .collect();
    assert_eq!(
        locs,
        vec![
            (vec!["/"], 10),
            (vec!["~", "\\.php$"], 14),
            (
                vec!["~*", "\\.(js|css|png|jpg|jpeg|gif|ico|svg|woff2?)$"],
                19
            ),
            (vec!["=", "/favicon.ico"], 24),
            (vec!["~", "/\\.ht"], 29),
        ]
    );
    assert_eq!(
        args_of(&ds, "try_files"),
        ["$uri", "$uri/", "/index.php?$args"]
    );
    assert_eq!(args_of(&ds, "expires"), ["max"]);
    // Include expanded relative to the top-level file's directory, with the
    // snippet's own file:line, and its nested include of fastcgi.conf too.
    let split = walk(&ds)
        .find(|w| w.directive.name == "fastcgi_split_path_info")
        .unwrap();
    assert!(split.directive.file.ends_with("snippets/fastcgi-php.conf"));
    assert_eq!(split.directive.line, 2);
    assert_eq!(split.path(), ["server", "location"]);
    assert_eq!(split.directive.arg(0), Some("^(.+?\\.php)(/.*)$"));
    assert!(walk(&ds).any(|w| w.directive.name == "fastcgi_param"
        && w.directive.arg(0) == Some("SCRIPT_FILENAME")
        && w.directive.file.ends_with("fastcgi.conf")));
}

// ---------------------------------------------------------- tokenizer

#[test]
fn quotes_and_escapes() {
    let ds = ok(r#"a "x y" 'p q' "q\"d" 'it\'s' "b\\s" "t\tn\nr\r" "\d\.";"#);
    let a = &ds[0].args;
    let v: Vec<&str> = a.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(
        v,
        ["x y", "p q", "q\"d", "it's", "b\\s", "t\tn\nr\r", "\\d\\."]
    );
    assert!(a.iter().all(|a| a.quoted));
    // Escapes are processed in unquoted words too (pinned: ngx_conf_read_token
    // unescapes every word); other backslashes survive.
    let ds = ok(r"a \.php$ x\ty a\;b \\ \x a\ b;");
    let v: Vec<&str> = ds[0].args.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(v, ["\\.php$", "x\ty", "a\\;b", "\\", "\\x", "a\\ b"]);
    assert!(ds[0].args.iter().all(|a| !a.quoted));
    // Quotes in the middle of a word are ordinary characters.
    assert_eq!(ok(r#"a b"c'd;"#)[0].arg(0), Some("b\"c'd"));
    // Empty quoted strings are real (empty) arguments.
    let ds = ok(r#"a "" '';"#);
    assert_eq!(ds[0].args.len(), 2);
    assert_eq!(ds[0].arg(0), Some(""));
    // Quoted name.
    assert_eq!(ok(r#""server_name" x;"#)[0].name, "server_name");
}

#[test]
fn after_closing_quote() {
    // Only whitespace, `;`, `{`, `)` may follow a closing quote (pinned).
    assert_eq!(err(r#"a "x"b;"#), (1, "unexpected \"b\"".into()));
    assert_eq!(err("a \"x\"#c;"), (1, "unexpected \"#\"".into()));
    assert_eq!(err("a \"x\"}"), (1, "unexpected \"}\"".into()));
    assert_eq!(ok(r#"a "x";"#)[0].arg(0), Some("x"));
    let ds = ok(r#"if ($a = "b") { x; }"#);
    assert_eq!(
        ds[0]
            .args
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>(),
        ["($a", "=", "b", ")"]
    );
    let ds = ok(r#"a "x"{ }"#);
    assert_eq!(ds[0].block, Some(vec![]));
}

#[test]
fn comments() {
    let ds = ok("a b; # trailing comment { ; }\n# whole line\nc d;#x\n e #mid\n f;");
    let v: Vec<(&str, Vec<&str>)> = ds
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.args.iter().map(|a| a.value.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        v,
        vec![("a", vec!["b"]), ("c", vec!["d"]), ("e", vec!["f"])]
    );
    // `#` inside a word is part of the word; `}` too (pinned).
    assert_eq!(
        ok("a a#b c}d;")[0]
            .args
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>(),
        ["a#b", "c}d"]
    );
    // A quoted `#` is not a comment.
    assert_eq!(ok("a \"#x\";")[0].arg(0), Some("#x"));
    // Comment at EOF without newline.
    assert_eq!(ok("a;#").len(), 1);
}

#[test]
fn blocks_and_nesting() {
    let ds = ok("http { server { location / { if ($x) { return 403; } } } }\nevents{}");
    assert_eq!(ds.len(), 2);
    let paths: Vec<Vec<&str>> = walk(&ds).map(|w| w.path()).collect();
    assert_eq!(
        paths,
        vec![
            vec![],
            vec!["http"],
            vec!["http", "server"],
            vec!["http", "server", "location"],
            vec!["http", "server", "location", "if"],
            vec![],
        ]
    );
    let names: Vec<&str> = walk(&ds).map(|w| w.directive.name.as_str()).collect();
    assert_eq!(
        names,
        ["http", "server", "location", "if", "return", "events"]
    );
    assert_eq!(ds[1].block, Some(vec![]));
    // `{`/`;` end a word without a space.
    let ds = ok("location /a{x y;}z;");
    assert_eq!(ds[0].arg(0), Some("/a"));
    assert_eq!(ds[0].children()[0].name, "x");
    assert_eq!(ds[1].name, "z");
    // Top level is context-free: a bare server block (a sites-enabled file).
    assert_eq!(ok("server { listen 80; }")[0].name, "server");
}

#[test]
fn structural_errors() {
    assert_eq!(err("a;\n}"), (2, "unexpected \"}\"".into()));
    assert_eq!(err("a b }"), (1, "unexpected \"}\"".into()));
    assert_eq!(
        err("a {\n b;\n"),
        (3, "unexpected end of file, expecting \"}\"".into())
    );
    assert_eq!(
        err("a b"),
        (1, "unexpected end of file, expecting \";\" or \"}\"".into())
    );
    assert_eq!(
        err("a b\n"),
        (2, "unexpected end of file, expecting \";\" or \"}\"".into())
    );
    assert_eq!(
        err("a b # c"),
        (1, "unexpected end of file, expecting \";\" or \"}\"".into())
    );
    assert_eq!(
        err("a \"b;\n\n"),
        (3, "unexpected end of file, expecting \";\" or \"}\"".into())
    );
    assert_eq!(err("x { ; }"), (1, "unexpected \";\"".into()));
    assert_eq!(err("{ }"), (1, "unexpected \"{\"".into()));
    assert_eq!(
        err("http {\n server\n ;\n}"),
        (3, "directive \"server\" has no opening \"{\"".into())
    );
    assert_eq!(
        err("location /;"),
        (1, "directive \"location\" has no opening \"{\"".into())
    );
    assert_eq!(
        err("if ($a) return 403;"),
        (1, "directive \"if\" has no opening \"{\"".into())
    );
    // ...but `server` inside upstream and anything inside map/types are data.
    ok("upstream php { server unix:/run/php.sock; }");
    ok("map $uri $x { server 1; location 2; default 0; }");
    ok("types { text/html html; }");
    // Empty input and comment-only input are fine.
    assert!(ok("").is_empty());
    assert!(ok("# nothing\n\n").is_empty());
}

#[test]
fn variables_and_braces() {
    // `${` does not open a block, in or out of quotes (pinned).
    let ds = ok("set $a ${uri}x; set $b \"${host}\";");
    assert_eq!(
        ds[0]
            .args
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>(),
        ["$a", "${uri}x"]
    );
    assert_eq!(ds[1].arg(1), Some("${host}"));
    assert_eq!(ok("a x${y}z;")[0].arg(0), Some("x${y}z"));
    // Only directly after `$`: `$a{` opens a block.
    let ds = ok("a $x{ b; }");
    assert_eq!(ds[0].arg(0), Some("$x"));
    assert_eq!(ds[0].children()[0].name, "b");
}

#[test]
fn regex_locations() {
    let ds = ok(r"location ~* \.(jpg|png)$ { } location ~ ^/(a|b)/ { }");
    assert_eq!(
        ds[0]
            .args
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>(),
        ["~*", r"\.(jpg|png)$"]
    );
    assert_eq!(ds[1].arg(1), Some("^/(a|b)/"));
    // Quoted, the quantifier braces are part of the regex.
    let ds = ok("location ~ \"^/x{2,3}$\" { return 404; }");
    assert_eq!(ds[0].arg(1), Some("^/x{2,3}$"));
    assert!(ds[0].args[1].quoted);
    // Unquoted, the `{` opens a block right after `^/x` (pinned: nginx then
    // fails with `unknown directive "2,3}$"`); syntactically the rest is a
    // directive `2,3}$` with a block, leaving the location unclosed.
    let ds = ok("location ~ ^/x{2,3}$ { return 404; } }");
    assert_eq!(
        ds[0]
            .args
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>(),
        ["~", "^/x"]
    );
    assert_eq!(ds[0].children()[0].name, "2,3}$");
    assert_eq!(
        err("location ~ ^/x{2,3}$ { return 404; }").1,
        "unexpected end of file, expecting \"}\""
    );
}

#[test]
fn line_numbers() {
    let text = "a 1;\n\nb \"multi\nline\" c\n  d;\nblock {\n\n  inner 'x\n\ny';\n}\nlast;";
    let ds = ok(text);
    assert_eq!(ds[0].line, 1);
    assert_eq!(ds[1].line, 3);
    assert_eq!(
        ds[1].args.iter().map(|a| a.line).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(ds[1].arg(0), Some("multi\nline"));
    assert_eq!(ds[2].line, 6);
    assert_eq!(ds[2].children()[0].line, 8);
    assert_eq!(ds[2].children()[0].arg(0), Some("x\n\ny"));
    assert_eq!(ds[3].line, 12);
    // CRLF files count lines the same way.
    let ds = ok("a;\r\nb;\r\n");
    assert_eq!(ds[1].line, 2);
    // A directive whose name is on one line and `;` on another: the error
    // line is where nginx notices (the terminator), the directive line is the name's.
    assert_eq!(err("http\n\n;").0, 3);
    assert_eq!(err("x\n\"unterminated\n\n\n").0, 5);
}

#[test]
fn too_long_tokens() {
    // nginx reads through a 4096-byte buffer: a word (or comment!) that does
    // not fit fails (pinned; a 4095-byte one is fine).
    let w = "w".repeat(4095);
    assert_eq!(ok(&format!("a {w};\nb;"))[0].arg(0), Some(w.as_str()));
    let w = "w".repeat(4096);
    assert_eq!(
        err(&format!("a\n {w};\nb;")),
        (2, "too long parameter \"wwwwwwwwww...\" started".into())
    );
    let c = format!("# {}", "c".repeat(4094));
    assert_eq!(
        err(&format!("{c}\nb;")),
        (1, "too long parameter \"# cccccccc...\" started".into())
    );
    let c = format!("# {}", "c".repeat(4093));
    assert_eq!(ok(&format!("{c}\nb;")).len(), 1);
    let q = "q".repeat(5000);
    assert_eq!(
        err(&format!("a \"{q};\nb;")),
        (
            1,
            "too long parameter, probably missing terminating \"\"\" character".into()
        )
    );
    // The limit is per word, not per file or directive.
    let many = format!("a {};", vec!["x".repeat(1000); 20].join(" "));
    assert_eq!(ok(&many)[0].args.len(), 20);
}

// ------------------------------------------------------------- includes

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

#[test]
fn includes_globs_and_errors() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "nginx.conf",
        "http {\n  include conf.d/*.conf;\n  include none/*.conf;\n  include sub/inner.conf;\n}\n",
    );
    write(d, "conf.d/b.conf", "b;\n");
    write(d, "conf.d/a.conf", "\n\na { include sub/leaf; }\n");
    write(d, "conf.d/.hidden.conf", "hidden;\n");
    write(d, "conf.d/c.txt", "txt;\n");
    write(d, "sub/inner.conf", "inner;\n");
    write(d, "sub/leaf", "leaf 1;\n");
    let ds = parse_file(&d.join("nginx.conf")).unwrap();
    let got: Vec<(String, String, usize)> = walk(&ds)
        .map(|w| {
            let f = w
                .directive
                .file
                .strip_prefix(d)
                .unwrap()
                .display()
                .to_string();
            (w.directive.name.clone(), f, w.directive.line)
        })
        .collect();
    let want = [
        ("http", "nginx.conf", 1),
        ("a", "conf.d/a.conf", 3),
        ("leaf", "sub/leaf", 1),
        ("b", "conf.d/b.conf", 1),
        ("inner", "sub/inner.conf", 1),
    ];
    let want: Vec<(String, String, usize)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect();
    assert_eq!(got, want);

    // Missing plain file: error at the including file:line.
    write(d, "missing.conf", "a;\n\ninclude nope.conf;\n");
    let e = parse_file(&d.join("missing.conf")).unwrap_err();
    assert_eq!(e.file, d.join("missing.conf"));
    assert_eq!(e.line, 3);
    assert_eq!(
        e.message,
        format!(
            "open() \"{}\" failed (2: No such file or directory)",
            d.join("nope.conf").display()
        )
    );

    // Errors inside an included file point into that file.
    write(d, "bad/inc.conf", "x;\n}\n");
    write(d, "badtop.conf", "http { include bad/inc.conf; }");
    let e = parse_file(&d.join("badtop.conf")).unwrap_err();
    assert_eq!((e.file.clone(), e.line), (d.join("bad/inc.conf"), 2));
    assert_eq!(
        e.to_string(),
        format!("{}:2: unexpected \"}}\"", d.join("bad/inc.conf").display())
    );

    // An included file cannot close the includer's block, nor leave one open.
    write(d, "open.inc", "server {\n");
    write(d, "opentop.conf", "include open.inc;\n}\n");
    let e = parse_file(&d.join("opentop.conf")).unwrap_err();
    assert_eq!(e.message, "unexpected end of file, expecting \"}\"");
    assert_eq!(e.file, d.join("open.inc"));

    // include takes exactly one argument and no block.
    assert_eq!(
        err("include a b;").1,
        "invalid number of arguments in \"include\" directive"
    );
    assert_eq!(
        err("include a {}").1,
        "directive \"include\" is not terminated by \";\""
    );

    // Relative includes in parse_str go to include_base.
    let ds = parse_str("include sub/leaf;", Path::new("<string>"), d).unwrap();
    assert_eq!(ds[0].name, "leaf");
    // Absolute includes ignore the base.
    let abs = format!("include {};", d.join("sub/leaf").display());
    assert_eq!(
        parse_str(&abs, Path::new("<s>"), Path::new("/nonexistent")).unwrap()[0].name,
        "leaf"
    );
    // A quoted glob works the same.
    let ds = parse_str("include \"conf.d/[b]*.conf\";", Path::new("<s>"), d).unwrap();
    assert_eq!(ds[0].name, "b");
}

#[test]
fn include_cycles_are_detected() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "nginx.conf", "http {\n include a.conf;\n}\n");
    write(d, "a.conf", "x;\ninclude b.conf;\n");
    write(d, "b.conf", "include *.conf;\n");
    let e = parse_file(&d.join("nginx.conf")).unwrap_err();
    assert_eq!(e.file, d.join("b.conf"));
    assert_eq!(e.line, 1);
    assert!(
        e.message.starts_with("include cycle detected: "),
        "{}",
        e.message
    );
    // Self-include.
    write(d, "self.conf", "include self.conf;\n");
    let e = parse_file(&d.join("self.conf")).unwrap_err();
    assert!(e.message.contains("include cycle"), "{}", e.message);
    // Including the same file twice (not nested) is fine.
    write(d, "twice.conf", "include leaf.inc;\ninclude leaf.inc;\n");
    write(d, "leaf.inc", "leaf;\n");
    assert_eq!(parse_file(&d.join("twice.conf")).unwrap().len(), 2);
}

#[test]
fn missing_top_level_file() {
    let e = parse_file(Path::new("/nonexistent/nginx.conf")).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(
        e.message
            .starts_with("open() \"/nonexistent/nginx.conf\" failed (2: "),
        "{}",
        e.message
    );
}

// ---------------------------------------------------------- expand_vars

#[test]
fn expand_vars_like_nginx_script() {
    use VarPiece::*;
    let l = |s: &str| Lit(s.to_string());
    let v = |s: &str| Var(s.to_string());
    assert_eq!(expand_vars("").unwrap(), vec![]);
    assert_eq!(expand_vars("plain").unwrap(), vec![l("plain")]);
    assert_eq!(expand_vars("$uri").unwrap(), vec![v("uri")]);
    assert_eq!(expand_vars("${uri}x").unwrap(), vec![v("uri"), l("x")]);
    assert_eq!(expand_vars("$uri/").unwrap(), vec![v("uri"), l("/")]);
    assert_eq!(
        expand_vars("/index.php?$args&a=$arg_foo").unwrap(),
        vec![l("/index.php?"), v("args"), l("&a="), v("arg_foo")]
    );
    assert_eq!(
        expand_vars("$document_root$fastcgi_script_name").unwrap(),
        vec![v("document_root"), v("fastcgi_script_name")]
    );
    assert_eq!(
        expand_vars("/$1/$2x").unwrap(),
        vec![l("/"), Capture(1), l("/"), Capture(2), l("x")]
    );
    assert_eq!(expand_vars("$12").unwrap(), vec![Capture(1), l("2")]);
    assert_eq!(expand_vars("$0").unwrap(), vec![v("0")]);
    assert_eq!(expand_vars("${1}").unwrap(), vec![v("1")]);
    assert_eq!(expand_vars("$a-b").unwrap(), vec![v("a"), l("-b")]);
    assert_eq!(expand_vars("$a{").unwrap(), vec![v("a"), l("{")]);
    for bad in ["$", "x$", "$/", "x$-y", "${}", "${"] {
        assert_eq!(
            expand_vars(bad).unwrap_err().message,
            "invalid variable name",
            "{bad}"
        );
    }
    assert_eq!(
        expand_vars("${uri").unwrap_err().message,
        "the closing bracket in \"uri\" variable is missing"
    );
    assert_eq!(
        expand_vars("${a-b}").unwrap_err().message,
        "the closing bracket in \"a\" variable is missing"
    );
}

// ------------------------------------------------- cross-check with nginx

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs `nginx -t` on `conf`; `Ok(())` or `Err((line, message))` from its
/// first `[emerg]` line.  Never starts a server.
fn nginx_t(nginx: &Path, dir: &Path, conf: &str) -> Result<(), (usize, String)> {
    let path = dir.join("nginx.conf");
    fs::write(&path, conf).unwrap();
    let out = std::process::Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-g")
        .arg(format!(
            "pid {}/nginx.pid; error_log stderr;",
            dir.display()
        ))
        .output()
        .expect("run nginx -t");
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("[emerg]"))
        .unwrap_or_else(|| panic!("nginx -t failed without [emerg]: {stderr}"));
    // "... [emerg] 123#123: MESSAGE in /path/nginx.conf:LINE"
    let msg = line.split_once(": ").map(|x| x.1).unwrap_or(line);
    let (msg, loc) = msg.rsplit_once(" in ").unwrap();
    let n = loc.rsplit_once(':').unwrap().1.trim().parse().unwrap();
    Err((n, msg.to_string()))
}

#[test]
fn nginx_agrees_on_tricky_snippets() {
    let Some(nginx) = find_nginx() else {
        eprintln!("nginx not installed; skipping cross-check");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let wrap = |body: &str| {
        format!("events {{}}\nhttp {{\naccess_log off;\nserver {{\nlisten 127.0.0.1:8080;\n{body}\n}}\n}}\n")
    };
    // A baseline that must pass; if it doesn't (e.g. not root), skip.
    if let Err(e) = nginx_t(&nginx, d, &wrap("")) {
        eprintln!("nginx -t rejects the baseline here ({e:?}); skipping cross-check");
        return;
    }
    let long = "w".repeat(4096);
    let long_comment = format!("# {}", "c".repeat(4094));
    let ok_comment = format!("# {}", "c".repeat(4093));
    // (server-block body, our expected result: None = parses, Some(msg) = syntax error)
    let cases: Vec<(String, Option<&str>)> = vec![
        (r#"location ~ "^/x{2,3}$" { return 404; }"#.into(), None),
        (r"location ~* \.(jpg|png)$ { expires max; }".into(), None),
        (r"location ~ ^/(a|b)/ { return 404; }".into(), None),
        (r#"location / { return 200 "a\"b\\c\td"; }"#.into(), None),
        (r#"location / { return 200 'it\'s'; }"#.into(), None),
        ("location / { return 200 a#b; } # c { ;".into(), None),
        ("location / { return 200 a}b; }".into(), None),
        (
            r#"location / { if ($uri = "x") { return 404; } }"#.into(),
            None,
        ),
        (
            "location / { set $a ${uri}x; set $b \"${host}\"; }".into(),
            None,
        ),
        ("location / { return 200 \"multi\nline\"; }".into(), None),
        (format!("{ok_comment}\nlocation / {{ }}"), None),
        ("location /a{return 404;}".into(), None),
        (
            r#"location / { return 200 "a"b; }"#.into(),
            Some("unexpected \"b\""),
        ),
        (
            "location / { return 200 \"a\"#b; }".into(),
            Some("unexpected \"#\""),
        ),
        ("location / { return 200 }".into(), Some("unexpected \"}\"")),
        ("location / { ; }".into(), Some("unexpected \";\"")),
        (
            "location / { return 200 \"abc; }\n".into(),
            Some("unexpected end of file, expecting \";\" or \"}\""),
        ),
        (
            "location / {\n".into(),
            Some("unexpected end of file, expecting \"}\""),
        ),
        ("}\n}\n}".into(), Some("unexpected \"}\"")),
        (
            "location /\n;".into(),
            Some("directive \"location\" has no opening \"{\""),
        ),
        (
            format!("location / {{ return 200 {long}; }}"),
            Some("too long parameter \"wwwwwwwwww...\" started"),
        ),
        (
            format!("{long_comment}\n"),
            Some("too long parameter \"# cccccccc...\" started"),
        ),
    ];
    for (body, want) in cases {
        let conf = wrap(&body);
        let ours = parse_str(&conf, &d.join("nginx.conf"), d)
            .map(|_| ())
            .map_err(|e| (e.line, e.message));
        let theirs = nginx_t(&nginx, d, &conf);
        match want {
            None => assert!(ours.is_ok(), "we reject {body:?}: {ours:?}"),
            Some(m) => assert_eq!(ours.as_ref().map_err(|e| e.1.as_str()), Err(m), "{body:?}"),
        }
        assert_eq!(ours, theirs, "nginx disagrees on {body:?}");
    }
    // Pinned: nginx rejects an unquoted `{` quantifier — the `{` opened a block.
    let theirs = nginx_t(&nginx, d, &wrap("location ~ ^/x{2,3}$ { return 404; } }"));
    assert_eq!(theirs.unwrap_err().1, "unknown directive \"2,3}$\"");
}

/// `log_format`, `access_log` and `error_log` are accepted and rejected
/// like `nginx -t` does, at the same line and with nginx's message. (An
/// unknown variable in a format is left out: nginx names no line for it,
/// why502 does.)
#[test]
fn nginx_agrees_on_log_directives() {
    let Some(nginx) = find_nginx() else {
        eprintln!("nginx not installed; skipping cross-check");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let log = d.join("x.log").display().to_string();
    let wrap = |http: &str, server: &str| {
        format!("events {{}}\nhttp {{\naccess_log off;\n{http}\nserver {{\nlisten 127.0.0.1:8080;\n{server}\n}}\n}}\n")
    };
    if let Err(e) = nginx_t(&nginx, d, &wrap("", "")) {
        eprintln!("nginx -t rejects the baseline here ({e:?}); skipping cross-check");
        return;
    }
    // (http body, server body, message we share with nginx: None = both accept)
    let cases: Vec<(String, String, Option<String>)> = vec![
        (
            format!("log_format a escape=json '{{\"u\":\"$uri\"}}' '$status';\naccess_log {log} A if=$arg_x;"),
            String::new(),
            None,
        ),
        (
            "log_format a '$remote_addr $http_x_y $sent_http_content_type $upstream_addr';".into(),
            format!("access_log {log} a buffer=4k flush=1s;\nlocation / {{ access_log off; }}"),
            None,
        ),
        (
            String::new(),
            format!("error_log {log} crit;\nerror_log {log} info;"),
            None,
        ),
        (
            "log_format combined '$uri';".into(),
            String::new(),
            Some("duplicate \"log_format\" name \"combined\"".into()),
        ),
        (
            "log_format a '$uri';\nlog_format a '$uri';".into(),
            String::new(),
            Some("duplicate \"log_format\" name \"a\"".into()),
        ),
        (
            "log_format a '${uri';".into(),
            String::new(),
            Some("the closing bracket in \"uri\" variable is missing".into()),
        ),
        (
            "log_format a escape=xml '$uri';".into(),
            String::new(),
            Some("unknown log format escaping \"xml\"".into()),
        ),
        (
            format!("access_log {log} nosuch;"),
            String::new(),
            Some("unknown log format \"nosuch\"".into()),
        ),
        (
            "access_log off combined;".into(),
            String::new(),
            Some("invalid parameter \"combined\"".into()),
        ),
        (
            format!("access_log {log} combined flush=1s;"),
            String::new(),
            Some(format!("no buffer is defined for access_log \"{log}\"")),
        ),
        (
            format!("access_log {log} combined bogus=1;"),
            String::new(),
            Some("invalid parameter \"bogus=1\"".into()),
        ),
        (
            String::new(),
            format!("error_log {log} loud;"),
            Some("invalid log level \"loud\"".into()),
        ),
        (
            String::new(),
            "log_format x '$uri';".into(),
            Some("\"log_format\" directive is not allowed here".into()),
        ),
    ];
    for (http, server, want) in cases {
        let conf = wrap(&http, &server);
        let path = d.join("nginx.conf");
        let ours = parse_str(&conf, &path, d)
            .map_err(|e| (e.line, e.message))
            .and_then(|ds| {
                convert::convert(&ds, "nginx.conf", d)
                    .map(|_| ())
                    .map_err(|e| (e.origin.line, e.message))
            });
        let theirs = nginx_t(&nginx, d, &conf);
        match want {
            None => {
                assert!(ours.is_ok(), "we reject {conf}: {ours:?}");
                assert!(theirs.is_ok(), "nginx rejects {conf}: {theirs:?}");
            }
            Some(m) => {
                let (line, msg) = theirs.expect_err(&conf);
                assert_eq!(msg, m, "nginx on {conf}");
                assert_eq!(ours, Err((line, m)), "{conf}");
            }
        }
    }
}
