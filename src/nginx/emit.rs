//! `why502 convert`: the internal model as YAML, in the YAML front end's
//! vocabulary (`servers`, `listen`, `locations`, `fastcgi`...). Features the
//! YAML front end has no key for (rewrites, error pages, headers, types...)
//! are written under extra keys so that the output shows everything that
//! was understood; they are marked in the header comment.

use std::fmt::Write;

use crate::config::template::Piece;
use crate::config::{
    Config, Expires, FastCgi, HttpProxy, Location, Match, RewriteFlag, ScriptOp, Template,
    Upstream, Var,
};

/// A YAML scalar: JSON's double-quoted form is valid YAML.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn var_name(v: &Var) -> String {
    use Var::*;
    match v {
        Uri => "uri".into(),
        RequestUri => "request_uri".into(),
        Args => "args".into(),
        QueryString => "query_string".into(),
        IsArgs => "is_args".into(),
        DocumentRoot => "document_root".into(),
        DocumentUri => "document_uri".into(),
        RealpathRoot => "realpath_root".into(),
        FastcgiScriptName => "fastcgi_script_name".into(),
        FastcgiPathInfo => "fastcgi_path_info".into(),
        Host => "host".into(),
        Hostname => "hostname".into(),
        RemoteAddr => "remote_addr".into(),
        RemotePort => "remote_port".into(),
        RemoteUser => "remote_user".into(),
        ServerAddr => "server_addr".into(),
        ServerPort => "server_port".into(),
        ServerName => "server_name".into(),
        ServerProtocol => "server_protocol".into(),
        Scheme => "scheme".into(),
        Https => "https".into(),
        RequestMethod => "request_method".into(),
        ContentType => "content_type".into(),
        ContentLength => "content_length".into(),
        RequestId => "request_id".into(),
        NginxVersion => "nginx_version".into(),
        Http(n) => format!("http_{n}"),
        Arg(n) => format!("arg_{n}"),
        Cookie(n) => format!("cookie_{n}"),
        Capture(n) => n.to_string(),
        User(n) => n.clone(),
    }
}

/// A template back in nginx syntax (`${name}` when a name character follows).
pub fn template_str(t: &Template) -> String {
    let mut out = String::new();
    let mut it = t.pieces.iter().peekable();
    while let Some(p) = it.next() {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::Var(v) => {
                let name = var_name(v);
                let glued = matches!(it.peek(), Some(Piece::Lit(s))
                    if s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
                if glued {
                    let _ = write!(out, "${{{name}}}");
                } else {
                    let _ = write!(out, "${name}");
                }
            }
        }
    }
    out
}

/// The configuration as YAML.
pub fn to_yaml(cfg: &Config) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# why502 convert: what was understood of {}", cfg.source);
    o.push_str("# Keys marked \"# nginx\" have no YAML front-end equivalent (yet): they\n");
    o.push_str("# show what the nginx front end does; `why502 --config` rejects them.\n");
    if cfg.threads > 0 {
        let _ = writeln!(o, "threads: {}", cfg.threads);
    }
    let lg = &cfg.logging;
    if lg.error_log.is_some() || lg.access_log.is_some() {
        o.push_str("log:\n");
        if let Some(p) = &lg.error_log {
            let _ = writeln!(o, "  error_log: {}", q(&p.display().to_string()));
        }
        if let Some(p) = &lg.access_log {
            let _ = writeln!(o, "  access_log: {}", q(&p.display().to_string()));
        }
    }
    o.push_str("servers:\n");
    for s in &cfg.servers {
        let _ = writeln!(o, "  - # {}", s.origin);
        o.push_str("    listen:\n");
        for l in &s.listen {
            let _ = writeln!(o, "      - address: {}", q(&l.addr.to_string()));
            if l.default_server {
                o.push_str("        default_server: true\n");
            }
            if l.http2 {
                o.push_str("        http2: true\n");
            }
            if let Some(t) = &l.tls {
                let _ = writeln!(
                    o,
                    "        tls: {{ cert: {}, key: {} }}",
                    q(&t.cert.display().to_string()),
                    q(&t.key.display().to_string())
                );
            }
        }
        if !s.names.is_empty() {
            let names: Vec<String> = s.names.iter().map(|n| q(n)).collect();
            let _ = writeln!(o, "    server_name: [{}]", names.join(", "));
        }
        let _ = writeln!(o, "    root: {}", q(&s.root.display().to_string()));
        let idx: Vec<String> = s.index.iter().map(|n| q(n)).collect();
        let _ = writeln!(o, "    index: [{}]", idx.join(", "));
        let _ = writeln!(o, "    client_max_body_size: {}", s.client_max_body_size);
        let _ = writeln!(
            o,
            "    client_body_timeout: \"{}ms\"",
            s.client_body_timeout.as_millis()
        );
        if !s.rewrites.is_empty() {
            o.push_str("    rewrites: # nginx\n");
            script(&mut o, &s.rewrites, 6);
        }
        if !s.locations.is_empty() {
            o.push_str("    locations:\n");
            for l in &s.locations {
                location(&mut o, l, 6);
            }
        }
    }
    o
}

fn pad(n: usize) -> String {
    " ".repeat(n)
}

fn script(o: &mut String, ops: &[ScriptOp], ind: usize) {
    let p = pad(ind);
    for op in ops {
        match op {
            ScriptOp::Set { name, value } => {
                let _ = writeln!(
                    o,
                    "{p}- set: {{ name: {}, value: {} }}",
                    q(name),
                    q(&template_str(value))
                );
            }
            ScriptOp::Return(r) => {
                let _ = write!(o, "{p}- return: {{ code: {}", r.code);
                if let Some(t) = &r.text {
                    let _ = write!(o, ", text: {}", q(&template_str(t)));
                }
                o.push_str(" }\n");
            }
            ScriptOp::Rewrite(r) => {
                let flag = match r.flag {
                    RewriteFlag::None => "none",
                    RewriteFlag::Last => "last",
                    RewriteFlag::Break => "break",
                    RewriteFlag::Redirect => "redirect",
                    RewriteFlag::Permanent => "permanent",
                };
                let _ = writeln!(
                    o,
                    "{p}- rewrite: {{ regex: {}, replacement: {}, flag: {flag} }}",
                    q(r.re.as_str()),
                    q(&template_str(&r.replacement))
                );
            }
        }
    }
}

fn upstream_str(u: &Upstream) -> String {
    match u.servers.as_slice() {
        [one] if u.name == one.addr.to_string() => q(&u.name),
        _ => q(&u.name),
    }
}

fn location(o: &mut String, l: &Location, ind: usize) {
    let p = pad(ind);
    let (k, v) = match &l.matcher {
        Match::Exact(s) => ("exact", s.clone()),
        Match::Prefix(s) => ("prefix", s.clone()),
        Match::PrefixNoRegex(s) => ("prefix_no_regex", s.clone()),
        Match::Regex {
            re,
            case_insensitive,
        } => {
            if *case_insensitive {
                ("iregex", re.as_str().trim_start_matches("(?i)").to_string())
            } else {
                ("regex", re.as_str().to_string())
            }
        }
        Match::Named(n) => ("named", n.clone()),
    };
    let _ = writeln!(o, "{p}- {k}: {} # {}", q(&v), l.origin);
    let p = pad(ind + 2);
    if let Some(r) = &l.root {
        let _ = writeln!(o, "{p}root: {}", q(&r.display().to_string()));
    }
    if let Some(a) = &l.alias {
        let _ = writeln!(o, "{p}alias: {}", q(&template_str(a)));
    }
    if let Some(i) = &l.index {
        let v: Vec<String> = i.iter().map(|n| q(n)).collect();
        let _ = writeln!(o, "{p}index: [{}]", v.join(", "));
    }
    if let Some(t) = &l.try_files {
        let v: Vec<String> = t.iter().map(|n| q(&template_str(n))).collect();
        let _ = writeln!(o, "{p}try_files: [{}]", v.join(", "));
    }
    if let Some(r) = &l.ret {
        let _ = write!(o, "{p}return: {{ code: {}", r.code);
        if let Some(t) = &r.text {
            let _ = write!(o, ", text: {}", q(&template_str(t)));
        }
        o.push_str(" }\n");
    }
    if l.internal {
        let _ = writeln!(o, "{p}internal: true # nginx");
    }
    if !l.script.is_empty() {
        let _ = writeln!(o, "{p}script: # nginx: rewrite/return/set in order");
        script(o, &l.script, ind + 4);
    }
    if !l.access.is_empty() {
        let _ = writeln!(o, "{p}access: # nginx");
        for r in &l.access {
            let net = r
                .net
                .map(|n| format!("{}/{}", n.addr, n.prefix))
                .unwrap_or_else(|| "all".into());
            let _ = writeln!(
                o,
                "{p}  - {}: {}",
                if r.allow { "allow" } else { "deny" },
                q(&net)
            );
        }
    }
    if !l.error_pages.is_empty() {
        let _ = writeln!(o, "{p}error_pages: # nginx");
        for e in &l.error_pages {
            let codes: Vec<String> = e.codes.iter().map(u16::to_string).collect();
            let resp = match e.response {
                None => String::new(),
                Some(0) => ", response: \"=\"".into(),
                Some(n) => format!(", response: {n}"),
            };
            let _ = writeln!(
                o,
                "{p}  - {{ codes: [{}], target: {}{resp} }}",
                codes.join(", "),
                q(&template_str(&e.target))
            );
        }
    }
    if !l.add_headers.is_empty() {
        let _ = writeln!(o, "{p}add_headers: # nginx");
        for h in &l.add_headers {
            let _ = writeln!(
                o,
                "{p}  - {{ name: {}, value: {}, always: {} }}",
                q(&h.name),
                q(&template_str(&h.value)),
                h.always
            );
        }
    }
    if let Some(e) = l.expires {
        let v = match e {
            Expires::Off => "off".to_string(),
            Expires::Epoch => "epoch".into(),
            Expires::Max => "max".into(),
            Expires::After(n) => format!("{n}s"),
        };
        let _ = writeln!(o, "{p}expires: {} # nginx", q(&v));
    }
    if let Some(t) = &l.default_type {
        let _ = writeln!(o, "{p}default_type: {} # nginx", q(t));
    }
    if let Some(t) = &l.types {
        let _ = writeln!(o, "{p}types: {} # nginx: extensions known", t.len());
    }
    if let Some(n) = l.client_max_body_size {
        let _ = writeln!(o, "{p}client_max_body_size: {n} # nginx");
    }
    if let Some(fc) = &l.fastcgi {
        fastcgi(o, fc, ind + 2);
    }
    if let Some(hp) = &l.proxy {
        proxy(o, hp, ind + 2);
    }
    if !l.locations.is_empty() {
        let _ = writeln!(o, "{p}locations:");
        for c in &l.locations {
            location(o, c, ind + 4);
        }
    }
}

fn upstream_block(o: &mut String, u: &Upstream, p: &str) {
    let _ = writeln!(
        o,
        "{p}  upstream: # {} server(s), keepalive {}",
        u.servers.len(),
        u.keepalive
    );
    for s in &u.servers {
        let _ = writeln!(
            o,
            "{p}    - {{ address: {}, weight: {}, max_fails: {}, fail_timeout: \"{}ms\", backup: {} }}",
            q(&s.addr.to_string()),
            s.weight,
            s.max_fails,
            s.fail_timeout.as_millis(),
            s.backup
        );
    }
}

fn fastcgi(o: &mut String, fc: &FastCgi, ind: usize) {
    let p = pad(ind);
    let _ = writeln!(o, "{p}fastcgi:");
    let _ = writeln!(o, "{p}  pass: {}", upstream_str(&fc.upstream));
    upstream_block(o, &fc.upstream, &p);
    let _ = writeln!(o, "{p}  default_params: false");
    if !fc.params.is_empty() {
        let _ = writeln!(o, "{p}  params: # in order");
        for prm in &fc.params {
            let ine = if prm.if_not_empty {
                " # if_not_empty"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "{p}    {}: {}{ine}",
                q(&prm.name),
                q(&template_str(&prm.value))
            );
        }
    }
    if let Some(r) = &fc.split_path_info {
        let _ = writeln!(o, "{p}  split_path_info: {}", q(r.as_str()));
    }
    if let Some(i) = &fc.index {
        let _ = writeln!(o, "{p}  index: {}", q(i));
    }
    let _ = writeln!(
        o,
        "{p}  connect_timeout: \"{}ms\"",
        fc.connect_timeout.as_millis()
    );
    let _ = writeln!(
        o,
        "{p}  send_timeout: \"{}ms\"",
        fc.send_timeout.as_millis()
    );
    let _ = writeln!(
        o,
        "{p}  read_timeout: \"{}ms\"",
        fc.read_timeout.as_millis()
    );
    let _ = writeln!(o, "{p}  buffer_size: {}", fc.buffer_size);
    let _ = writeln!(o, "{p}  keep_conn: {}", fc.keep_conn);
    let _ = writeln!(o, "{p}  intercept_errors: {}", fc.intercept_errors);
    if !fc.hide_headers.is_empty() {
        let v: Vec<String> = fc.hide_headers.iter().map(|n| q(n)).collect();
        let _ = writeln!(o, "{p}  hide_headers: [{}]", v.join(", "));
    }
    if !fc.pass_headers.is_empty() {
        let v: Vec<String> = fc.pass_headers.iter().map(|n| q(n)).collect();
        let _ = writeln!(o, "{p}  pass_headers: [{}]", v.join(", "));
    }
}

fn proxy(o: &mut String, hp: &HttpProxy, ind: usize) {
    let p = pad(ind);
    let _ = writeln!(o, "{p}proxy: # nginx proxy_pass");
    let _ = writeln!(o, "{p}  pass: {}", upstream_str(&hp.upstream));
    upstream_block(o, &hp.upstream, &p);
    let _ = writeln!(o, "{p}  tls: {}", hp.tls);
    if let Some(u) = &hp.uri {
        let _ = writeln!(o, "{p}  uri: {}", q(u));
    }
    for (n, v) in &hp.set_headers {
        let _ = writeln!(
            o,
            "{p}  set_header: {{ name: {}, value: {} }}",
            q(n),
            q(&template_str(v))
        );
    }
    let _ = writeln!(
        o,
        "{p}  connect_timeout: \"{}ms\"",
        hp.connect_timeout.as_millis()
    );
    let _ = writeln!(
        o,
        "{p}  send_timeout: \"{}ms\"",
        hp.send_timeout.as_millis()
    );
    let _ = writeln!(
        o,
        "{p}  read_timeout: \"{}ms\"",
        hp.read_timeout.as_millis()
    );
    let _ = writeln!(o, "{p}  http_version: {}", q(&hp.http_version));
    let _ = writeln!(o, "{p}  ssl_verify: {}", hp.ssl_verify);
}
