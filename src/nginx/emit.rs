//! `why502 convert`: the internal model as a YAML configuration that
//! `why502 --config` loads back into the same model — so a converted nginx
//! configuration behaves exactly as `why502 --nginx-conf` on the original
//! (checked by the round-trip tests below and by tests/nginx_parity.rs).
//!
//! nginx's inheritance is kept: keys the YAML front end inherits
//! (`default_type`, `types`, `add_headers`, `expires`, `error_pages`,
//! `access`, `client_max_body_size`) are written on a server or location only
//! where they differ from what it inherits; `root` and `index` only where
//! they differ from the server's.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::config::template::Piece;
use crate::config::{
    default_params, AccessLog, AccessRule, AddHeader, Config, Diagnostics, ErrorPage, Expires,
    FastCgi, HttpProxy, Location, LogEscape, LogFormat, LogLevel, Match, RewriteFlag, ScriptOp,
    Server, Template, Upstream, Var,
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

fn qt(t: &Template) -> String {
    q(&template_str(t))
}

/// A duration in the largest unit that keeps it exact (`90s`, `1500ms`, `1h`).
fn dur(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(86_400_000) => format!("{}d", ms / 86_400_000),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// A size in the largest unit that keeps it exact (`1m`, `4k`, `1500`).
fn size(n: u64) -> String {
    match n {
        0 => "0".into(),
        _ if n.is_multiple_of(1 << 30) => format!("{}g", n >> 30),
        _ if n.is_multiple_of(1 << 20) => format!("{}m", n >> 20),
        _ if n.is_multiple_of(1 << 10) => format!("{}k", n >> 10),
        _ => n.to_string(),
    }
}

fn list(v: &[String]) -> String {
    let v: Vec<String> = v.iter().map(|s| q(s)).collect();
    format!("[{}]", v.join(", "))
}

fn expires_str(e: Expires) -> String {
    match e {
        Expires::Off => "off".into(),
        Expires::Epoch => "epoch".into(),
        Expires::Max => "max".into(),
        Expires::After(n) => {
            let d = dur(Duration::from_secs(n.unsigned_abs()));
            if n < 0 {
                format!("-{d}")
            } else {
                d
            }
        }
    }
}

/// Output state: the text, and `types` maps already written (for aliases).
struct Out {
    o: String,
    types: Vec<(String, String)>,
}

/// The values a YAML location inherits (see `Inherit` in config/yaml.rs);
/// `client_max_body_size` is the effective one (the server's when unset).
#[derive(Clone, Default)]
struct Inh<'a> {
    default_type: Option<&'a str>,
    types: Option<&'a crate::config::TypesMap>,
    add_headers: &'a [AddHeader],
    expires: Option<Expires>,
    error_pages: &'a [ErrorPage],
    access: &'a [AccessRule],
    client_max_body_size: u64,
}

impl<'a> Inh<'a> {
    fn of(l: &'a Location, server: &Server) -> Inh<'a> {
        Inh {
            default_type: l.default_type.as_deref(),
            types: l.types.as_deref(),
            add_headers: &l.add_headers,
            expires: l.expires,
            error_pages: &l.error_pages,
            access: &l.access,
            client_max_body_size: l
                .client_max_body_size
                .unwrap_or(server.client_max_body_size),
        }
    }
}

fn types_block(t: &crate::config::TypesMap, p: &str) -> String {
    let sorted: BTreeMap<&String, &String> = t.iter().collect();
    let mut s = String::new();
    for (e, m) in sorted {
        let _ = writeln!(s, "{p}  {}: {}", q(e), q(m));
    }
    s
}

fn add_headers_block(v: &[AddHeader], p: &str) -> String {
    let mut s = String::new();
    for h in v {
        let always = if h.always { ", always: true" } else { "" };
        let _ = writeln!(
            s,
            "{p}  - {{ name: {}, value: {}{always} }}",
            q(&h.name),
            qt(&h.value)
        );
    }
    s
}

fn error_pages_block(v: &[ErrorPage], p: &str) -> String {
    let mut s = String::new();
    for e in v {
        let codes: Vec<String> = e.codes.iter().map(u16::to_string).collect();
        let status = match e.response {
            None => String::new(),
            Some(0) => ", status: target".into(),
            Some(n) => format!(", status: {n}"),
        };
        let _ = writeln!(
            s,
            "{p}  - {{ codes: [{}], uri: {}{status} }}",
            codes.join(", "),
            qt(&e.target)
        );
    }
    s
}

fn access_block(v: &[AccessRule], p: &str) -> String {
    let mut s = String::new();
    for r in v {
        let net = r
            .net
            .map(|n| format!("{}/{}", n.addr, n.prefix))
            .unwrap_or_else(|| "all".into());
        let k = if r.allow { "allow" } else { "deny" };
        let _ = writeln!(s, "{p}  - {{ {k}: {} }}", q(&net));
    }
    s
}

impl Out {
    /// The inherited keys of `own` that differ from `parent`, at indent `p`.
    fn inherited(&mut self, own: &Inh, parent: &Inh, p: &str) {
        if own.default_type != parent.default_type {
            if let Some(t) = own.default_type {
                let _ = writeln!(self.o, "{p}default_type: {}", q(t));
            }
        }
        if let Some(t) = own.types {
            if parent.types != Some(t) {
                let body = types_block(t, p);
                let i = self
                    .types
                    .iter()
                    .position(|(b, _)| *b == types_block(t, ""));
                match i {
                    Some(i) => {
                        let _ = writeln!(self.o, "{p}types: *{}", self.types[i].1);
                    }
                    None => {
                        let anchor = format!("types{}", self.types.len() + 1);
                        let _ = writeln!(self.o, "{p}types: &{anchor}");
                        self.o.push_str(&body);
                        self.types.push((types_block(t, ""), anchor));
                    }
                }
            }
        }
        type Render = fn(&Inh, &str) -> String;
        let blocks: [(&str, Render); 3] = [
            ("add_headers", |i, p| add_headers_block(i.add_headers, p)),
            ("error_pages", |i, p| error_pages_block(i.error_pages, p)),
            ("access", |i, p| access_block(i.access, p)),
        ];
        for (key, render) in blocks {
            let mine = render(own, "");
            if mine != render(parent, "") {
                if mine.is_empty() {
                    let _ = writeln!(self.o, "{p}{key}: []");
                } else {
                    let _ = writeln!(self.o, "{p}{key}:");
                    self.o.push_str(&render(own, p));
                }
            }
        }
        if own.expires != parent.expires {
            if let Some(e) = own.expires {
                let _ = writeln!(self.o, "{p}expires: {}", q(&expires_str(e)));
            }
        }
        if own.client_max_body_size != parent.client_max_body_size {
            let _ = writeln!(
                self.o,
                "{p}client_max_body_size: {}",
                size(own.client_max_body_size)
            );
        }
    }
}

/// Every upstream the configuration uses, by name.
fn collect_upstreams<'a>(locs: &'a [Location], out: &mut Vec<&'a Upstream>) {
    for l in locs {
        if let Some(fc) = &l.fastcgi {
            out.push(&fc.upstream);
        }
        if let Some(hp) = &l.proxy {
            out.push(&hp.upstream);
        }
        collect_upstreams(&l.locations, out);
    }
}

/// The configuration as YAML for `why502 --config`.
pub fn to_yaml(cfg: &Config) -> String {
    let mut out = Out {
        o: String::new(),
        types: Vec::new(),
    };
    let o = &mut out.o;
    let _ = writeln!(o, "# why502 convert: {}", cfg.source);
    o.push_str("# `why502 --config THIS_FILE` serves exactly as the original configuration.\n");
    for w in &cfg.warnings {
        let _ = writeln!(o, "# warning: {w}");
    }
    if cfg.threads > 0 {
        let _ = writeln!(o, "threads: {}", cfg.threads);
    }
    if let Some(n) = cfg.process.max_open_files {
        let _ = writeln!(o, "max_open_files: {n}");
    }
    if let Some(p) = cfg.process.priority {
        let _ = writeln!(o, "priority: {p}");
    }
    let lg = &cfg.logging;
    let mut formats = BTreeMap::new();
    collect_formats(cfg, &mut formats, o);
    let level = lg.error_level != LogLevel::Info;
    if lg.error_log.is_some()
        || level
        || lg.events.is_some()
        || !lg.access_log.is_empty()
        || !formats.is_empty()
    {
        o.push_str("log:\n");
        if lg.error_log.is_some() || level {
            let path = lg
                .error_log
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "stderr".into());
            if level {
                let _ = writeln!(
                    o,
                    "  error_log: {{ path: {}, level: {} }}",
                    q(&path),
                    lg.error_level.as_str()
                );
            } else {
                let _ = writeln!(o, "  error_log: {}", q(&path));
            }
        }
        if let Some(p) = &lg.events {
            let _ = writeln!(o, "  events: {}", q(&p.display().to_string()));
        }
        if !lg.access_log.is_empty() {
            access_log_key(o, &lg.access_log, "  ");
        }
        if !formats.is_empty() {
            o.push_str("  log_formats:\n");
            for (name, f) in &formats {
                if f.escape == LogEscape::Default {
                    let _ = writeln!(o, "    {}: {}", q(name), q(&f.source));
                } else {
                    let _ = writeln!(
                        o,
                        "    {}: {{ format: {}, escape: {} }}",
                        q(name),
                        q(&f.source),
                        f.escape.as_str()
                    );
                }
            }
        }
    }
    let d = &cfg.diagnostics;
    let dd = Diagnostics::default();
    if d.enabled != dd.enabled
        || d.trusted != dd.trusted
        || d.cause_header != dd.cause_header
        || d.request_id_header != dd.request_id_header
    {
        o.push_str("diagnostics:\n");
        let _ = writeln!(o, "  enabled: {}", d.enabled);
        let nets: Vec<String> = d
            .trusted
            .iter()
            .map(|n| format!("{}/{}", n.addr, n.prefix))
            .collect();
        let _ = writeln!(o, "  trusted: {}", list(&nets));
        let _ = writeln!(o, "  cause_header: {}", q(&d.cause_header));
        let _ = writeln!(o, "  request_id_header: {}", q(&d.request_id_header));
    }

    let mut ups = Vec::new();
    for s in &cfg.servers {
        collect_upstreams(&s.locations, &mut ups);
    }
    let mut by_name: BTreeMap<&str, &Upstream> = BTreeMap::new();
    for u in ups {
        match by_name.get(u.name.as_str()) {
            None => {
                by_name.insert(&u.name, u);
            }
            Some(old) if format!("{old:?}") == format!("{u:?}") => {}
            Some(_) => {
                let _ = writeln!(
                    o,
                    "# warning: two different upstreams are named {}: the first one is written",
                    q(&u.name)
                );
            }
        }
    }
    if !by_name.is_empty() {
        o.push_str("upstreams:\n");
        for (name, u) in &by_name {
            upstream(o, name, u);
        }
    }

    out.o.push_str("servers:\n");
    for s in &cfg.servers {
        server(&mut out, s);
    }
    out.o
}

/// The user-defined log formats the access logs use, by name.
fn collect_formats<'a>(
    cfg: &'a Config,
    out: &mut BTreeMap<&'a str, &'a LogFormat>,
    o: &mut String,
) {
    fn add<'a>(logs: &'a [AccessLog], out: &mut BTreeMap<&'a str, &'a LogFormat>, o: &mut String) {
        for l in logs.iter().filter(|l| !l.format.builtin) {
            match out.get(l.format.name.as_str()) {
                None => {
                    out.insert(&l.format.name, &l.format);
                }
                Some(f) if **f == *l.format => {}
                Some(_) => {
                    let _ = writeln!(
                        o,
                        "# warning: two different log formats are named {}: the first one is written",
                        q(&l.format.name)
                    );
                }
            }
        }
    }
    fn locs<'a>(ls: &'a [Location], out: &mut BTreeMap<&'a str, &'a LogFormat>, o: &mut String) {
        for l in ls {
            if let Some(a) = &l.access_log {
                add(a, out, o);
            }
            locs(&l.locations, out, o);
        }
    }
    add(&cfg.logging.access_log, out, o);
    for s in &cfg.servers {
        if let Some(a) = &s.access_log {
            add(a, out, o);
        }
        locs(&s.locations, out, o);
        if let Some(b) = &s.base {
            locs(std::slice::from_ref(&**b), out, o);
        }
    }
}

/// `access_log: off` or the list of logs, at indent `p`.
fn access_log_key(o: &mut String, logs: &[AccessLog], p: &str) {
    if logs.is_empty() {
        let _ = writeln!(o, "{p}access_log: off");
        return;
    }
    let _ = writeln!(o, "{p}access_log:");
    for l in logs {
        let cond = match &l.condition {
            Some(c) => format!(", if: {}", q(&c.source)),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "{p}  - {{ path: {}, format: {}{cond} }}",
            q(&l.path.display().to_string()),
            q(&l.format.name)
        );
    }
}

fn upstream(o: &mut String, name: &str, u: &Upstream) {
    let _ = writeln!(o, "  {}:", q(name));
    o.push_str("    servers:\n");
    for s in &u.servers {
        let plain = s.weight == 1
            && s.max_fails == 1
            && s.fail_timeout == Duration::from_secs(10)
            && !s.backup;
        if plain {
            let _ = writeln!(o, "      - {}", q(&s.addr.to_string()));
        } else {
            let backup = if s.backup { ", backup: true" } else { "" };
            let _ = writeln!(
                o,
                "      - {{ address: {}, weight: {}, max_fails: {}, fail_timeout: {}{backup} }}",
                q(&s.addr.to_string()),
                s.weight,
                s.max_fails,
                dur(s.fail_timeout)
            );
        }
    }
    let _ = writeln!(o, "    keepalive: {}", u.keepalive);
    if u.keepalive_timeout != crate::upstream::IDLE_TIMEOUT {
        let _ = writeln!(
            o,
            "    keepalive_timeout: {}ms",
            u.keepalive_timeout.as_millis()
        );
    }
}

fn server(out: &mut Out, s: &Server) {
    let o = &mut out.o;
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
        let _ = writeln!(o, "    server_name: {}", list(&s.names));
    }
    let _ = writeln!(o, "    root: {}", q(&s.root.display().to_string()));
    let _ = writeln!(o, "    index: {}", list(&s.index));
    let _ = writeln!(
        o,
        "    client_max_body_size: {}",
        size(s.client_max_body_size)
    );
    let _ = writeln!(o, "    client_body_timeout: {}", dur(s.client_body_timeout));
    if s.keepalive_requests != crate::config::KEEPALIVE_REQUESTS {
        let _ = writeln!(o, "    keepalive_requests: {}", s.keepalive_requests);
    }
    if s.keepalive_timeout != crate::config::KEEPALIVE_TIMEOUT {
        let _ = writeln!(o, "    keepalive_timeout: {}", dur(s.keepalive_timeout));
    }
    if s.absolute_redirect {
        o.push_str("    absolute_redirect: true\n");
    }
    if let Some(a) = &s.access_log {
        access_log_key(o, a, "    ");
    }
    if !s.error_log.is_empty() {
        o.push_str("    error_log:\n");
        for e in &s.error_log {
            let path = e
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "stderr".into());
            let _ = writeln!(
                o,
                "      - {{ path: {}, level: {} }}",
                q(&path),
                e.level.as_str()
            );
        }
    }
    if !s.rewrites.is_empty() {
        o.push_str("    rewrites:\n");
        script(o, &s.rewrites, "      ");
    }
    let top = Inh {
        client_max_body_size: s.client_max_body_size,
        ..Inh::default()
    };
    let inh = match &s.base {
        Some(b) => {
            out.o.push_str(
                "    serve_unmatched: true   # requests that match no location: served with these settings\n",
            );
            if let Some(t) = &b.try_files {
                let v: Vec<String> = t.iter().map(template_str).collect();
                let _ = writeln!(out.o, "    try_files: {}", list(&v));
            }
            let own = Inh::of(b, s);
            out.inherited(&own, &top, "    ");
            own
        }
        None => top,
    };
    if !s.locations.is_empty() {
        out.o.push_str("    locations:\n");
        for l in &s.locations {
            location(out, s, l, &inh, 6);
        }
    }
}

fn script(o: &mut String, ops: &[ScriptOp], p: &str) {
    for op in ops {
        match op {
            ScriptOp::Set { name, value } => {
                let _ = writeln!(o, "{p}- set: {{ name: {}, value: {} }}", q(name), qt(value));
            }
            ScriptOp::Return(r) => {
                let _ = write!(o, "{p}- return: {{ code: {}", r.code);
                if let Some(t) = &r.text {
                    let _ = write!(o, ", text: {}", qt(t));
                }
                o.push_str(" }\n");
            }
            ScriptOp::Rewrite(r) => {
                let flag = match r.flag {
                    RewriteFlag::None => "",
                    RewriteFlag::Last => ", flag: last",
                    RewriteFlag::Break => ", flag: break",
                    RewriteFlag::Redirect => ", flag: redirect",
                    RewriteFlag::Permanent => ", flag: permanent",
                };
                let _ = writeln!(
                    o,
                    "{p}- rewrite: {{ regex: {}, replacement: {}{flag} }}",
                    q(r.re.as_str()),
                    qt(&r.replacement)
                );
            }
        }
    }
}

fn location(out: &mut Out, s: &Server, l: &Location, parent: &Inh, ind: usize) {
    let p = " ".repeat(ind);
    let (k, v) = match &l.matcher {
        Match::Exact(x) => ("exact", x.clone()),
        Match::Prefix(x) => ("prefix", x.clone()),
        Match::PrefixNoRegex(x) => ("prefix_no_regex", x.clone()),
        Match::Regex {
            re,
            case_insensitive,
        } => match re.as_str().strip_prefix("(?i)") {
            Some(r) if *case_insensitive => ("iregex", r.to_string()),
            _ => ("regex", re.as_str().to_string()),
        },
        Match::Named(n) => ("named", n.clone()),
    };
    let o = &mut out.o;
    let _ = writeln!(o, "{p}- {k}: {} # {}", q(&v), l.origin);
    let p = " ".repeat(ind + 2);
    if let Some(r) = l.root.as_ref().filter(|r| **r != s.root) {
        let _ = writeln!(o, "{p}root: {}", q(&r.display().to_string()));
    }
    if let Some(a) = &l.alias {
        let _ = writeln!(o, "{p}alias: {}", qt(a));
    }
    if let Some(i) = l.index.as_ref().filter(|i| **i != s.index) {
        let _ = writeln!(o, "{p}index: {}", list(i));
    }
    if let Some(t) = &l.try_files {
        let v: Vec<String> = t.iter().map(template_str).collect();
        let _ = writeln!(o, "{p}try_files: {}", list(&v));
    }
    if l.internal {
        let _ = writeln!(o, "{p}internal: true");
    }
    if let Some(a) = &l.access_log {
        access_log_key(o, a, &p);
    }
    if !l.script.is_empty() {
        let _ = writeln!(o, "{p}script:");
        script(o, &l.script, &format!("{p}  "));
    }
    if let Some(r) = &l.ret {
        let _ = write!(o, "{p}return: {{ code: {}", r.code);
        if let Some(t) = &r.text {
            let _ = write!(o, ", text: {}", qt(t));
        }
        o.push_str(" }\n");
    }
    let own = Inh::of(l, s);
    out.inherited(&own, parent, &p);
    let o = &mut out.o;
    if let Some(fc) = &l.fastcgi {
        fastcgi(o, fc, &p);
    }
    if let Some(hp) = &l.proxy {
        proxy(o, hp, &p);
    }
    if !l.locations.is_empty() {
        let _ = writeln!(o, "{p}locations:");
        for c in &l.locations {
            location(out, s, c, &own, ind + 4);
        }
    }
}

fn same_params(a: &[crate::config::Param], b: &[crate::config::Param]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name && x.value == y.value && x.if_not_empty == y.if_not_empty
        })
}

fn fastcgi(o: &mut String, fc: &FastCgi, p: &str) {
    let d = FastCgi::new(fc.upstream.clone());
    let _ = writeln!(o, "{p}fastcgi:");
    let _ = writeln!(o, "{p}  pass: {}", q(&fc.upstream.name));
    let defaults = default_params();
    let rest = if fc.params.len() >= defaults.len()
        && same_params(&fc.params[..defaults.len()], &defaults)
    {
        let _ = writeln!(o, "{p}  default_params: true    # Debian's fastcgi.conf");
        &fc.params[defaults.len()..]
    } else {
        let _ = writeln!(o, "{p}  default_params: false");
        &fc.params[..]
    };
    if !rest.is_empty() {
        let _ = writeln!(o, "{p}  params:");
        for prm in rest {
            let ine = if prm.if_not_empty {
                ", if_not_empty: true"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "{p}    - {{ name: {}, value: {}{ine} }}",
                q(&prm.name),
                qt(&prm.value)
            );
        }
    }
    if let Some(r) = &fc.split_path_info {
        let _ = writeln!(o, "{p}  split_path_info: {}", q(r.as_str()));
    }
    if let Some(i) = &fc.index {
        let _ = writeln!(o, "{p}  index: {}", q(i));
    }
    for (k, v, dv) in [
        ("connect_timeout", fc.connect_timeout, d.connect_timeout),
        ("send_timeout", fc.send_timeout, d.send_timeout),
        ("read_timeout", fc.read_timeout, d.read_timeout),
    ] {
        if v != dv {
            let _ = writeln!(o, "{p}  {k}: {}", dur(v));
        }
    }
    if fc.buffer_size != d.buffer_size {
        let _ = writeln!(o, "{p}  buffer_size: {}", size(fc.buffer_size as u64));
    }
    if fc.half_close {
        let _ = writeln!(o, "{p}  half_close: true");
    }
    if fc.keep_conn {
        let _ = writeln!(o, "{p}  keep_conn: true");
    }
    if fc.intercept_errors {
        let _ = writeln!(o, "{p}  intercept_errors: true");
    }
    if !fc.hide_headers.is_empty() {
        let _ = writeln!(o, "{p}  hide_headers: {}", list(&fc.hide_headers));
    }
    if !fc.pass_headers.is_empty() {
        let _ = writeln!(o, "{p}  pass_headers: {}", list(&fc.pass_headers));
    }
    if !fc.pass_request_headers {
        let _ = writeln!(o, "{p}  pass_request_headers: false");
    }
}

fn proxy(o: &mut String, hp: &HttpProxy, p: &str) {
    let d = HttpProxy::new(hp.upstream.clone());
    let scheme = if hp.tls { "https" } else { "http" };
    let name = &hp.upstream.name;
    let uri = match &hp.uri {
        // nginx's syntax for a URI after a unix socket: unix:/path:/uri
        Some(u) if name.starts_with("unix:") => format!(":{u}"),
        Some(u) => u.clone(),
        None => String::new(),
    };
    let _ = writeln!(o, "{p}proxy:");
    let _ = writeln!(o, "{p}  pass: {}", q(&format!("{scheme}://{name}{uri}")));
    if !hp.set_headers.is_empty() {
        let _ = writeln!(o, "{p}  set_headers:");
        for (n, v) in &hp.set_headers {
            let _ = writeln!(o, "{p}    - {{ name: {}, value: {} }}", q(n), qt(v));
        }
    }
    for (k, v, dv) in [
        ("connect_timeout", hp.connect_timeout, d.connect_timeout),
        ("send_timeout", hp.send_timeout, d.send_timeout),
        ("read_timeout", hp.read_timeout, d.read_timeout),
    ] {
        if v != dv {
            let _ = writeln!(o, "{p}  {k}: {}", dur(v));
        }
    }
    if hp.buffer_size != d.buffer_size {
        let _ = writeln!(o, "{p}  buffer_size: {}", size(hp.buffer_size as u64));
    }
    if hp.http_version != d.http_version {
        let _ = writeln!(o, "{p}  http_version: {}", q(&hp.http_version));
    }
    for (k, v) in [
        ("h2", hp.h2),
        ("ssl_verify", hp.ssl_verify),
        ("ssl_server_name", hp.ssl_server_name),
        ("intercept_errors", hp.intercept_errors),
    ] {
        if v {
            let _ = writeln!(o, "{p}  {k}: true");
        }
    }
    if let Some(c) = &hp.ssl_trusted_certificate {
        let _ = writeln!(
            o,
            "{p}  ssl_trusted_certificate: {}",
            q(&c.display().to_string())
        );
    }
    if let Some(n) = &hp.ssl_name {
        let _ = writeln!(o, "{p}  ssl_name: {}", qt(n));
    }
    if !hp.hide_headers.is_empty() {
        let _ = writeln!(o, "{p}  hide_headers: {}", list(&hp.hide_headers));
    }
    if !hp.pass_headers.is_empty() {
        let _ = writeln!(o, "{p}  pass_headers: {}", list(&hp.pass_headers));
    }
    if hp.next_upstream != d.next_upstream {
        let _ = writeln!(o, "{p}  next_upstream: {}", list(&hp.next_upstream));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;
    use std::fs;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx")
    }

    /// The model with what may legitimately differ between the front ends
    /// taken out: origins (file:line), warnings, the source name; unset
    /// `root` / `index` / `client_max_body_size` of a location (= the
    /// server's, as the runtime reads them) made explicit; `types` maps
    /// sorted (HashMap order is random).
    fn dump(cfg: &Config) -> String {
        fn norm(l: &mut Location, s: &Server, types: &mut Vec<String>) {
            l.origin = Default::default();
            l.root.get_or_insert_with(|| s.root.clone());
            l.index.get_or_insert_with(|| s.index.clone());
            l.client_max_body_size.get_or_insert(s.client_max_body_size);
            let t: Option<BTreeMap<String, String>> = l
                .types
                .take()
                .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            types.push(format!("{t:?}"));
            for op in &mut l.script {
                if let ScriptOp::Rewrite(r) = op {
                    r.origin = Default::default();
                }
            }
            for c in &mut l.locations {
                norm(c, s, types);
            }
        }
        let mut out = String::new();
        for s in &cfg.servers {
            let mut s2 = s.clone();
            let mut types = Vec::new();
            s2.origin = Default::default();
            for op in &mut s2.rewrites {
                if let ScriptOp::Rewrite(r) = op {
                    r.origin = Default::default();
                }
            }
            let mut locs = std::mem::take(&mut s2.locations);
            for l in &mut locs {
                norm(l, s, &mut types);
            }
            s2.locations = locs;
            if let Some(mut b) = s2.base.take() {
                norm(&mut b, s, &mut types);
                s2.base = Some(b);
            }
            let _ = writeln!(out, "{s2:#?}\ntypes: {types:#?}");
        }
        let _ = writeln!(
            out,
            "{:#?}\n{:#?}\nthreads {}\n{:?}",
            cfg.logging, cfg.diagnostics, cfg.threads, cfg.process
        );
        out
    }

    /// Converts, emits, loads the YAML back and compares the models.
    fn round_trip(cfg: &Config, what: &str) -> String {
        let text = to_yaml(cfg);
        let back = yaml::load_str(&text, "converted.yaml")
            .unwrap_or_else(|e| panic!("{what}: the emitted YAML does not load: {e}\n{text}"));
        let (a, b) = (dump(cfg), dump(&back));
        if a != b {
            let first = a
                .lines()
                .zip(b.lines())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            let ctx = |s: &str| {
                s.lines()
                    .skip(first.saturating_sub(12))
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "{what}: models differ at line {first}\n--- nginx ---\n{}\n--- yaml ---\n{}\n--- emitted ---\n{text}",
                ctx(&a),
                ctx(&b)
            );
        }
        assert!(!text.contains("# nginx"), "{what}: {text}");
        // Emitting the loaded YAML again gives the same text (origins aside).
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("# "))
                .map(|l| l.split(" # ").next().unwrap_or(l).to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let again = to_yaml(&back);
        assert_eq!(strip(&text), strip(&again), "{what}: not stable");
        text
    }

    fn load(path: &Path) -> Config {
        crate::nginx::convert::load_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The stock Debian files in a temp /etc/nginx, with `site` enabled.
    fn etc_nginx(sites: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = fixtures();
        let tmp = tempfile::tempdir().expect("tmp");
        for d in ["sites-enabled", "conf.d", "snippets"] {
            fs::create_dir_all(tmp.path().join(d)).expect("mkdir");
        }
        for f in [
            "fastcgi.conf",
            "fastcgi_params",
            "mime.types",
            "snippets/fastcgi-php.conf",
        ] {
            fs::copy(dir.join(f), tmp.path().join(f)).expect("copy");
        }
        for (i, site) in sites.iter().enumerate() {
            fs::copy(
                dir.join(site),
                tmp.path().join(format!("sites-enabled/{i}")),
            )
            .expect("copy");
        }
        let text = fs::read_to_string(dir.join("nginx.conf"))
            .expect("nginx.conf")
            .replace("/etc/nginx/", &format!("{}/", tmp.path().display()));
        let conf = tmp.path().join("nginx.conf");
        fs::write(&conf, text).expect("write");
        (tmp, conf)
    }

    #[test]
    fn debian_sites_round_trip() {
        for site in ["sites-available/default", "sites-available/default-php"] {
            let (_tmp, conf) = etc_nginx(&[site]);
            let text = round_trip(&load(&conf), site);
            // mime.types is written once, as a map.
            assert!(text.contains("\"svg\": \"image/svg+xml\""), "{text}");
        }
        // Two servers share one `types` map: written once, then aliased.
        let (_tmp, conf) = etc_nginx(&["sites-available/default-php", "wordpress.conf"]);
        let text = round_trip(&load(&conf), "two sites");
        assert_eq!(text.matches("types: &types1").count(), 1, "{text}");
        assert!(text.contains("types: *types1"), "{text}");
    }

    #[test]
    fn wordpress_round_trips() {
        let text = round_trip(&load(&fixtures().join("wordpress.conf")), "wordpress.conf");
        assert!(text.contains("- set: { name: \"path_info\""), "{text}");
    }

    #[test]
    fn parity_config_round_trips() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = fixtures();
        fs::create_dir_all(tmp.path().join("snippets")).expect("mkdir");
        for f in [
            "fastcgi.conf",
            "fastcgi_params",
            "mime.types",
            "snippets/fastcgi-php.conf",
        ] {
            fs::copy(dir.join(f), tmp.path().join(f)).expect("copy");
        }
        let text = fs::read_to_string(dir.join("parity.conf"))
            .expect("parity.conf")
            .replace("@PORT@", "8080")
            .replace("@PORT2@", "8081")
            .replace("@PORT3@", "8082")
            .replace("@LOGS@", "/var/log/parity")
            .replace("@WWW@", "/srv/www")
            .replace("@FPM@", "/run/fpm.sock")
            .replace("@DEAD@", "/run/dead.sock");
        let conf = tmp.path().join("nginx.conf");
        fs::write(&conf, text).expect("write");
        let text = round_trip(&load(&conf), "parity.conf");
        for needle in [
            "rewrites:\n      - rewrite: { regex: \"^/old/(.*)$\", replacement: \"/dump.php?from=$1\", flag: last }",
            "error_pages:\n      - { codes: [404], uri: \"/404.html\" }",
            "- { codes: [404], uri: \"/dump.php\", status: target }",
            "- { deny: \"all\" }",
            "- { name: \"X-Parity\", value: \"yes\" }",
            "expires: \"1h\"",
            "default_type: \"application/octet-stream\"",
            "client_max_body_size: 2k",
            "- set: { name: \"who\", value: \"v-$uri\" }",
            "- { path: \"/var/log/parity/access.log\", format: \"parity\" }",
            "access_log: off",
            "- { path: \"/var/log/parity/crit.log\", level: crit }",
            "\"pjson\": { format: ",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
    }

    /// Every feature the nginx front end knows, in one file.
    #[test]
    fn every_feature_round_trips() {
        let tmp = tempfile::tempdir().expect("tmp");
        fs::copy(
            fixtures().join("fastcgi.conf"),
            tmp.path().join("fastcgi.conf"),
        )
        .expect("copy");
        let conf = tmp.path().join("nginx.conf");
        fs::write(
            &conf,
            r#"
error_log /var/log/why502/error.log warn;
worker_rlimit_nofile 65535;
worker_priority -5;
http {
    log_format main '$remote_addr "$request" $status $upstream_addr $why502_cause';
    log_format js escape=json '{"uri":"$uri","ua":"$http_user_agent"}';
    access_log /var/log/why502/access.log;
    access_log /var/log/why502/main.log main if=$arg_log;
    types { text/html html; application/json json JSON; }
    default_type application/octet-stream;
    client_max_body_size 10m;
    client_body_timeout 30s;
    add_header X-Frame-Options SAMEORIGIN always;
    upstream php {
        server unix:/run/php/a.sock weight=3 max_fails=2 fail_timeout=30s;
        server 127.0.0.1:9000 backup;
        keepalive 8;
    }
    upstream app { server 127.0.0.1:3000; keepalive 4; keepalive_timeout 5s; }
    server {
        listen 127.0.0.1:8080 default_server;
        listen [::1]:8081;
        server_name example.test *.example.test ~^www\d+\.example\.test$;
        root /srv/www/;
        index index.php index.html;
        absolute_redirect off;
        error_log /var/log/why502/site-error.log crit;
        error_log stderr;
        access_log /var/log/why502/site.log js;
        set $site "example";
        rewrite ^/blog/(.*)$ /news/$1 permanent;
        rewrite ^/go$ https://example.org/;
        return 200 "never: $site";
        try_files $uri /index.php?$args;
        error_page 500 502 503 504 /50x.html;
        error_page 403 =200 @forbidden;
        allow 10.0.0.0/8;
        allow ::1;
        deny all;
        expires -1;
        location / {
            try_files $uri $uri/ @php;
            location /static/ {
                access_log off;
                root /srv/static;
                expires 30d;
                types { text/css css; }
                add_header Cache-Control public;
                location ~* \.(png|jpe?g)$ {
                    expires max;
                    add_header X-Img "${site}x";
                    access_log /var/log/why502/img.log combined;
                }
            }
            location ^~ /files/ { alias /srv/files/; internal; }
        }
        location @php {
            fastcgi_pass php;
            include fastcgi.conf;
            fastcgi_param SCRIPT_FILENAME $document_root/index.php;
            fastcgi_param HTTPS on if_not_empty;
        }
        location @forbidden { return 200 "forbidden\n"; }
        location ~ ^/api/(v\d)/ {
            client_max_body_size 0;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 5m;
            proxy_buffer_size 8k;
            proxy_hide_header X-Powered-By;
            proxy_pass_header Server;
            proxy_next_upstream error timeout http_502;
            proxy_intercept_errors on;
        }
        location /ext/ {
            proxy_pass https://backend.example:8443/v2/;
            proxy_ssl_verify on;
            proxy_ssl_server_name on;
            proxy_ssl_name $host;
            proxy_ssl_trusted_certificate /etc/ssl/ca.pem;
        }
        location /sock/ { proxy_pass http://unix:/run/app.sock:/inner/; }
        location = /status { allow 127.0.0.1; deny all; return 204; }
        location = /epoch { expires epoch; default_type text/plain; return 200 "x"; }
        location ~ \.php$ {
            fastcgi_pass 127.0.0.1:9001;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_split_path_info ^(.+\.php)(/.+)$;
            fastcgi_index index.php;
            fastcgi_connect_timeout 2s;
            fastcgi_read_timeout 1500ms;
            fastcgi_buffer_size 16k;
            fastcgi_keep_conn on;
            fastcgi_intercept_errors on;
            fastcgi_hide_header X-Powered-By;
            fastcgi_pass_header Authorization;
            fastcgi_pass_request_headers off;
            error_page 404 = /index.php;
            add_header X-A a;
            add_header X-B "b $uri";
            rewrite ^/old\.php$ /new.php last;
            set $x $1;
            break;
            return 301 http://example.org$request_uri;
        }
    }
}
"#,
        )
        .expect("write");
        let cfg = load(&conf);
        let text = round_trip(&cfg, "every feature");
        for needle in [
            "\"php\":",
            "{ address: \"unix:/run/php/a.sock\", weight: 3, max_fails: 2, fail_timeout: 30s }",
            "keepalive: 8",
            "pass: \"http://app\"",
            "pass: \"https://backend.example:8443/v2/\"",
            "pass: \"http://unix:/run/app.sock:/inner/\"",
            "- { name: \"HTTPS\", value: \"on\", if_not_empty: true }",
            "client_max_body_size: 0",
            "pass_request_headers: false",
            "expires: \"-1s\"",
            "error_log: { path: \"/var/log/why502/error.log\", level: warn }",
            "- { path: \"/var/log/why502/main.log\", format: \"main\", if: \"$arg_log\" }",
            "\"js\": { format: \"{\\\"uri\\\":\\\"$uri\\\",\\\"ua\\\":\\\"$http_user_agent\\\"}\", escape: json }",
            "access_log: off",
            "- { path: \"/var/log/why502/site-error.log\", level: crit }",
            "- { path: \"stderr\", level: error }",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        assert!(!text.contains("absolute_redirect"), "{text}");
    }

    #[test]
    fn yaml_configs_round_trip() {
        // A YAML configuration converted to YAML loads to the same model.
        for f in ["why502.yaml", "http-backends.yaml", "nginx-features.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(f);
            let cfg = yaml::load_file(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
            round_trip(&cfg, f);
        }
    }
}
