//! Request routing as nginx does it: URI normalization, server selection by
//! the local address then Host, location matching with nginx's precedence,
//! `try_files`, `index`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::template::{Piece, Vars};
use crate::config::{Expires, Listen, Location, Match, RewriteFlag, ScriptOp, Server, Template};

/// The servers of every `listen` address:port, as nginx groups them: a
/// connection belongs to the group of the most specific listen address
/// matching the address it arrived on (an exact address, else the
/// wildcard of its port), and Host picks among that group's servers, the
/// `default_server` (else the first) answering unknown names.
#[derive(Debug, Default)]
pub struct ListenMap {
    /// Server indexes per listen address, default server first (hashed
    /// with FNV: looked up on every request).
    by_addr: HashMap<SocketAddr, Vec<usize>, std::hash::BuildHasherDefault<fnv::FnvHasher>>,
    /// Each server's names, ready to match.
    names: Vec<NameSet>,
}

/// `::ffff:127.0.0.1` → `127.0.0.1` (a dual-stack socket's IPv4 peers).
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn wildcard_of(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, a.port())
}

impl ListenMap {
    pub fn new(servers: &[Server]) -> ListenMap {
        let mut by_addr: HashMap<_, Vec<usize>, _> = HashMap::default();
        for (i, s) in servers.iter().enumerate() {
            for l in &s.listen {
                let v = by_addr.entry(canonical(l.addr)).or_default();
                if l.default_server {
                    v.retain(|&x| x != i);
                    v.insert(0, i);
                } else if !v.contains(&i) {
                    v.push(i);
                }
            }
        }
        let names = servers.iter().map(|s| NameSet::new(&s.names)).collect();
        ListenMap { by_addr, names }
    }

    /// The servers a connection to `local` may reach: those listening on
    /// exactly that address, else on the wildcard address of its port.
    pub fn candidates(&self, local: Option<SocketAddr>) -> Option<&[usize]> {
        let raw = local?;
        let local = canonical(raw);
        self.by_addr
            .get(&local)
            .or_else(|| self.by_addr.get(&wildcard_of(local)))
            // an IPv4 client of a dual-stack `[::]` socket
            .or_else(|| self.by_addr.get(&wildcard_of(raw)))
            .map(Vec::as_slice)
    }
}

/// The sockets to bind for these listens: like nginx without `bind`, an
/// address whose port also has a wildcard listen of the same family is
/// served by the wildcard's socket (the server is then chosen by the address
/// the connection arrived on), so only the wildcard is bound. One entry per
/// address (its first listen). TLS is a property of a socket here: an
/// address cannot differ from its port's wildcard in `ssl`.
pub fn bind_listens(listens: &[Listen]) -> Result<Vec<&Listen>, String> {
    let mut wild: HashMap<SocketAddr, &Listen> = HashMap::new();
    for l in listens.iter().filter(|l| l.addr.ip().is_unspecified()) {
        wild.entry(l.addr).or_insert(l);
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for l in listens {
        if !l.addr.ip().is_unspecified() {
            if let Some(w) = wild.get(&wildcard_of(l.addr)) {
                if w.tls.is_some() != l.tls.is_some() {
                    return Err(format!(
                        "listen {} and listen {} share one socket: both or neither must be ssl",
                        l.addr, w.addr
                    ));
                }
                continue;
            }
        }
        if seen.insert(l.addr) {
            out.push(l);
        }
    }
    Ok(out)
}

/// Decodes and normalizes a request's path like nginx
/// (`ngx_http_parse_complex_uri`): percent-decoding, merging slashes,
/// resolving `.` and `..`. Decoded bytes that are not UTF-8 are carried
/// (see [`rawtext`](super::rawtext)); `true` if any were. `None` = 400.
pub fn normalize_target(raw: &[u8]) -> Option<(String, bool)> {
    if is_normal(raw, true) {
        if let Ok(s) = std::str::from_utf8(raw) {
            return Some((s.to_string(), false));
        }
    }
    normalize_bytes(raw)
}

/// [`normalize_target`] for a path that is already text (a rewritten or
/// redirected URI, whose carried bytes stay carried).
pub fn normalize_path(text: &str) -> Option<String> {
    if is_normal(text.as_bytes(), false) {
        return Some(text.to_string());
    }
    normalize_bytes(&super::rawtext::to_bytes(text)).map(|(s, _)| s)
}

/// Already normal (the common case): starts with `/`, no escapes, no empty,
/// `.` or `..` segments; for raw input also nothing that could need carrying.
/// One pass (substring searches cost more than the path is long).
fn is_normal(bytes: &[u8], raw: bool) -> bool {
    let mut prev = 0u8;
    bytes.first() == Some(&b'/')
        && bytes.iter().all(|&b| {
            let ok =
                b != b'%' && !(prev == b'/' && (b == b'/' || b == b'.')) && !(raw && b == 0xF4);
            prev = b;
            ok
        })
}

fn normalize_bytes(bytes: &[u8]) -> Option<(String, bool)> {
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let h = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
            if v == 0 {
                return None;
            }
            decoded.push(v);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let mut out: Vec<&[u8]> = Vec::new();
    let ends_with_slash =
        decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    let mut path = Vec::with_capacity(decoded.len());
    for s in &out {
        path.push(b'/');
        path.extend_from_slice(s);
    }
    if path.is_empty() || ends_with_slash {
        path.push(b'/');
    }
    Some(super::rawtext::from_bytes(path))
}

/// One server's `server_name`s, prepared for matching: lower-cased, the
/// wildcards split, the regexes compiled once.
#[derive(Debug, Default)]
struct NameSet {
    exact: Vec<String>,
    /// `*.example.com` and `.example.com` as `.example.com`; `true` for the
    /// second form, which also matches `example.com`.
    suffix: Vec<(String, bool)>,
    /// `www.example.*` as `www.example.`.
    prefix: Vec<String>,
    regex: Vec<regex::Regex>,
}

impl NameSet {
    fn new(names: &[String]) -> NameSet {
        let mut set = NameSet::default();
        for n in names {
            if let Some(re) = n.strip_prefix('~') {
                // An invalid one never matches (nginx.conf refuses it).
                if let Ok(r) = regex::Regex::new(re) {
                    set.regex.push(r);
                }
                continue;
            }
            let n = n.to_ascii_lowercase();
            if let Some(x) = n.strip_prefix("*.") {
                set.suffix.push((format!(".{x}"), false));
            } else if n.starts_with('.') {
                set.suffix.push((n.clone(), true));
            } else if let Some(pre) = n.strip_suffix(".*") {
                set.prefix.push(format!("{pre}."));
            }
            set.exact.push(n);
        }
        set
    }
}

impl ListenMap {
    /// Picks the server block for a request among `candidates` (nginx
    /// order: exact name, longest leading wildcard, trailing wildcard,
    /// first matching regex, else the first candidate: the default).
    pub fn select_server_index(&self, candidates: &[usize], host: Option<&str>) -> Option<usize> {
        // The only server of an address is chosen whatever the Host.
        if let [only] = candidates {
            return self.names.get(*only).map(|_| *only);
        }
        let cands = || {
            candidates
                .iter()
                .filter_map(|&i| self.names.get(i).map(|s| (i, s)))
        };
        if let Some(h) = host {
            let h = h
                .rfind(':')
                .filter(|&i| h[i + 1..].bytes().all(|b| b.is_ascii_digit()))
                .map_or(h, |i| &h[..i])
                .trim_end_matches('.');
            let h: Cow<'_, str> = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(h.to_ascii_lowercase())
            } else {
                Cow::Borrowed(h)
            };
            let h = h.as_ref();
            if let Some((i, _)) = cands().find(|(_, s)| s.exact.iter().any(|n| n == h)) {
                return Some(i);
            }
            let mut best: Option<(usize, usize)> = None;
            for (i, s) in cands() {
                for (suf, bare) in &s.suffix {
                    let matches = h.ends_with(suf.as_str()) || (*bare && h == &suf[1..]);
                    if matches && best.is_none_or(|(_, l)| suf.len() > l) {
                        best = Some((i, suf.len()));
                    }
                }
            }
            if let Some((i, _)) = best {
                return Some(i);
            }
            if let Some((i, _)) =
                cands().find(|(_, s)| s.prefix.iter().any(|p| h.starts_with(p.as_str())))
            {
                return Some(i);
            }
            if let Some((i, _)) = cands().find(|(_, s)| s.regex.iter().any(|r| r.is_match(h))) {
                return Some(i);
            }
        }
        cands().next().map(|(i, _)| i)
    }
}

/// The result of location matching: the location and regex captures.
pub struct Matched<'a> {
    pub loc: &'a Location,
    pub captures: Vec<Option<String>>,
}

/// How a level of the search ended (nginx's `ngx_http_core_find_location`).
#[derive(PartialEq, Eq)]
enum Found {
    /// `=` exact or a regex: final.
    Final,
    /// A prefix matched (it is in `current`); enclosing regexes still apply.
    Prefix,
    Nothing,
}

/// nginx's location search: an exact `=` match wins; else the longest
/// matching prefix, then (recursively) its nested locations; unless that
/// prefix is `^~`, this level's regexes are tried in order and the first
/// match wins (then its own nested locations are searched); else the
/// longest prefix. Named locations and the server's own level never match.
pub fn find_location<'a>(locations: &'a [Location], uri: &str) -> Option<Matched<'a>> {
    let mut current = None;
    find_level(locations, uri, &mut current);
    current
}

fn find_level<'a>(
    locations: &'a [Location],
    uri: &str,
    current: &mut Option<Matched<'a>>,
) -> Found {
    if let Some(l) = locations
        .iter()
        .find(|l| matches!(&l.matcher, Match::Exact(p) if p == uri))
    {
        *current = Some(Matched {
            loc: l,
            captures: Vec::new(),
        });
        return Found::Final;
    }
    let mut prefix: Option<&'a Location> = None;
    let mut best_len = 0usize;
    for l in locations {
        if let Match::Prefix(p) | Match::PrefixNoRegex(p) = &l.matcher {
            if uri.starts_with(p.as_str()) && (prefix.is_none() || p.len() > best_len) {
                prefix = Some(l);
                best_len = p.len();
            }
        }
    }
    let mut rc = Found::Nothing;
    let mut noregex = false;
    if let Some(p) = prefix {
        *current = Some(Matched {
            loc: p,
            captures: Vec::new(),
        });
        noregex = matches!(p.matcher, Match::PrefixNoRegex(_));
        if find_level(&p.locations, uri, current) == Found::Final {
            return Found::Final;
        }
        rc = Found::Prefix;
    }
    if !noregex {
        for l in locations {
            if let Match::Regex { re, .. } = &l.matcher {
                // Captures only for a regex with groups (they cost an
                // allocation even when the regex does not match).
                let captures: Option<Vec<Option<String>>> = if re.captures_len() > 1 {
                    re.captures(uri).map(|c| {
                        c.iter()
                            .map(|m| m.map(|m| m.as_str().to_string()))
                            .collect()
                    })
                } else {
                    re.find(uri).map(|m| vec![Some(m.as_str().to_string())])
                };
                if let Some(captures) = captures {
                    *current = Some(Matched { loc: l, captures });
                    if !l.locations.is_empty() {
                        let caps = current.as_ref().map(|m| m.captures.clone());
                        find_level(&l.locations, uri, current);
                        // nested locations of a regex keep the regex's captures
                        if let (Some(m), Some(c)) = (current.as_mut(), caps) {
                            if m.captures.is_empty() {
                                m.captures = c;
                            }
                        }
                    }
                    return Found::Final;
                }
            }
        }
    }
    rc
}

pub fn find_named<'a>(locations: &'a [Location], name: &str) -> Option<&'a Location> {
    locations
        .iter()
        .find(|l| matches!(&l.matcher, Match::Named(n) if n == name))
}

/// The file-system path for `uri` in a location (`root` + uri, or `alias`).
pub fn file_path(root: &Path, loc: &Location, uri: &str, vars: &dyn Vars) -> PathBuf {
    if let Some(alias) = &loc.alias {
        let a = alias.eval(vars);
        let rest = match &loc.matcher {
            Match::Prefix(p) | Match::PrefixNoRegex(p) | Match::Exact(p) => {
                uri.strip_prefix(p.as_str()).unwrap_or(uri)
            }
            _ => "",
        };
        let p = format!("{a}{rest}");
        return PathBuf::from(super::rawtext::to_os(&p).into_owned());
    }
    let mut s = std::ffi::OsString::with_capacity(root.as_os_str().len() + uri.len());
    s.push(root.as_os_str());
    s.push(super::rawtext::to_os(uri));
    PathBuf::from(s)
}

/// What a `try_files` entry resolves to.
pub enum TryResult {
    /// A file or directory exists: continue in this location with this URI.
    Found(String),
    /// Internal redirect to a URI (may include `?args`).
    Redirect(String),
    /// Named location.
    Named(String),
    /// `=code`.
    Code(u16),
}

/// Evaluates `try_files`.
pub fn try_files(entries: &[Template], root: &Path, loc: &Location, vars: &dyn Vars) -> TryResult {
    let n = entries.len();
    for (i, t) in entries.iter().enumerate() {
        let v = t.eval(vars);
        if i + 1 == n {
            if let Some(code) = v.strip_prefix('=') {
                return TryResult::Code(code.parse().unwrap_or(404));
            }
            if v.starts_with('@') {
                return TryResult::Named(v);
            }
            return TryResult::Redirect(v);
        }
        // nginx strips the trailing slash of a directory entry when it reads
        // the config: a found `$uri/` continues as `/dir`, which the static
        // module then redirects to `/dir/`.
        let test_dir = matches!(t.pieces.last(), Some(Piece::Lit(l)) if l.ends_with('/'));
        let v = match v.strip_suffix('/') {
            Some(x) if test_dir && !x.is_empty() => x.to_string(),
            _ => v,
        };
        let p = file_path(root, loc, &v, vars);
        let ok = if test_dir { p.is_dir() } else { p.is_file() };
        if ok {
            return TryResult::Found(v);
        }
    }
    TryResult::Code(404)
}

/// Where a request is in nginx's phases: its current URI, arguments and
/// regex captures, and what internal redirects already happened.
#[derive(Debug, Clone, Default)]
pub struct RouteState {
    pub uri: String,
    pub args: Option<String>,
    pub captures: Vec<Option<String>>,
    /// Reached through an internal redirect (for `internal` locations).
    pub internal: bool,
    /// An `error_page` redirect already happened (they do not chain).
    pub error_page_used: bool,
    /// The status an `error_page` target is served with (None = its own).
    pub status_override: Option<u16>,
    /// A `try_files` fallback without `?` dropped the arguments: nginx's
    /// `$args` is then empty (logged as ``), not unset (`-`).
    pub args_reset: bool,
}

impl RouteState {
    /// An internal redirect to `target` (`/path?args`): like
    /// `ngx_http_internal_redirect`, a target without `?` has no arguments.
    /// `None` if the path is invalid (400).
    pub fn redirect_to(&mut self, target: &str) -> Option<()> {
        let (p, a) = match target.split_once('?') {
            Some((p, a)) => (p, Some(a.to_string())),
            None => (target, None),
        };
        self.uri = normalize_path(p)?;
        self.args_reset = false;
        self.args = a;
        self.internal = true;
        self.captures.clear();
        Some(())
    }

    /// `try_files`' final URI: [`RouteState::redirect_to`].
    pub fn try_files_redirect(&mut self, target: &str) -> Option<()> {
        self.redirect_to(target)?;
        self.args_reset = self.args.is_none();
        Some(())
    }
}

/// How the rewrite-module directives of a level ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScriptEnd {
    /// All ran; `uri_changed`: a `rewrite` without flag changed the URI, so
    /// the location is searched again.
    Done { uri_changed: bool },
    /// `rewrite ... last`: search the location again with the new URI.
    Last,
    /// `rewrite ... break`: stay in this location with the new URI.
    Break,
    /// `rewrite ... redirect|permanent` (code, Location).
    Redirect(u16, String),
    /// `return code [text]`.
    Return(u16, Option<String>),
}

/// One step's outcome, for [`run_script`]'s caller to act on.
pub enum ScriptStep {
    /// `set`: store this user variable and go on.
    Set(String, String),
    End(ScriptEnd),
    Next,
}

/// Runs one rewrite-module directive against the state. `eval` evaluates a
/// template with the variables of `st` (URI, args, captures).
pub fn script_step(
    op: &ScriptOp,
    st: &mut RouteState,
    eval: &dyn Fn(&Template, &RouteState) -> String,
) -> ScriptStep {
    match op {
        ScriptOp::Set { name, value } => {
            let v = eval(value, st);
            ScriptStep::Set(name.clone(), v)
        }
        ScriptOp::Return(r) => {
            let text = r.text.as_ref().map(|t| eval(t, st));
            ScriptStep::End(ScriptEnd::Return(r.code, text))
        }
        ScriptOp::Rewrite(rw) => {
            let Some(c) = rw.re.captures(&st.uri) else {
                return ScriptStep::Next;
            };
            st.captures = c
                .iter()
                .map(|m| m.map(|m| m.as_str().to_string()))
                .collect();
            let rep = eval(&rw.replacement, st);
            let redirect = matches!(rw.flag, RewriteFlag::Redirect | RewriteFlag::Permanent)
                || rep.starts_with("http://")
                || rep.starts_with("https://");
            let old_args = st.args.clone().filter(|a| !a.is_empty());
            if redirect {
                let code = if rw.flag == RewriteFlag::Permanent {
                    301
                } else {
                    302
                };
                let loc = match rep.strip_suffix('?') {
                    Some(r) => r.to_string(),
                    None => match (rep.contains('?'), old_args) {
                        (true, Some(a)) => format!("{rep}&{a}"),
                        (false, Some(a)) => format!("{rep}?{a}"),
                        (_, None) => rep,
                    },
                };
                return ScriptStep::End(ScriptEnd::Redirect(code, loc));
            }
            let (path, args) = match rep.strip_suffix('?') {
                Some(r) => (r.split_once('?').map_or(r, |(p, _)| p).to_string(), {
                    r.split_once('?').map(|(_, a)| a.to_string())
                }),
                None => match rep.split_once('?') {
                    Some((p, a)) => (
                        p.to_string(),
                        Some(match old_args {
                            Some(o) if !a.is_empty() => format!("{a}&{o}"),
                            Some(o) => o,
                            None => a.to_string(),
                        }),
                    ),
                    None => (rep.clone(), st.args.clone()),
                },
            };
            st.uri = path;
            st.args = args;
            st.internal = true;
            match rw.flag {
                RewriteFlag::Last => ScriptStep::End(ScriptEnd::Last),
                RewriteFlag::Break => ScriptStep::End(ScriptEnd::Break),
                _ => ScriptStep::Next,
            }
        }
    }
}

/// What an `error_page` for a status asks for.
pub enum ErrorPageAction {
    /// Internal redirect to a URI or named location, served with `status`
    /// (None = the target's own status).
    Internal { target: String, status: Option<u16> },
    /// A redirect to a URL (302 unless `=301` etc.).
    Redirect(u16, String),
}

/// The `error_page` configured for `code` in `loc`, if any.
pub fn error_page(loc: &Location, code: u16, vars: &dyn Vars) -> Option<ErrorPageAction> {
    let ep = loc.error_pages.iter().find(|e| e.codes.contains(&code))?;
    let target = ep.target.eval(vars);
    if target.starts_with('/') || target.starts_with('@') {
        // no `=`: the error code; `=`: the target's own; `=n`: n
        let status = match ep.response {
            Some(0) => None,
            r => Some(r.unwrap_or(code)),
        };
        return Some(ErrorPageAction::Internal { target, status });
    }
    let c = ep
        .response
        .filter(|c| matches!(c, 301 | 302 | 303 | 307 | 308))
        .unwrap_or(302);
    Some(ErrorPageAction::Redirect(c, target))
}

/// `allow`/`deny`: true if `client` may access `loc` (first matching rule).
pub fn access_allowed(loc: &Location, client: Option<std::net::IpAddr>) -> bool {
    for r in &loc.access {
        let hit = match (&r.net, client) {
            (None, _) => true,
            (Some(n), Some(ip)) => n.contains(ip),
            (Some(_), None) => false,
        };
        if hit {
            return r.allow;
        }
    }
    true
}

/// Content type for `uri` with the location's `types`/`default_type`
/// (nginx: by the URI's extension, lower-cased); the YAML front end guesses
/// from the file name.
pub fn content_type<'a>(loc: &'a Location, uri: &str, path: &Path) -> Cow<'a, str> {
    match &loc.types {
        Some(types) => {
            // Byte searches: `rsplit` by `char` costs more than the lookup.
            let last = |s: &str, c: u8| s.bytes().rposition(|b| b == c);
            let name = last(uri, b'/').map_or(uri, |i| &uri[i + 1..]);
            let ext = last(name, b'.').map(|i| &name[i + 1..]).map(|e| {
                if e.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(e.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(e)
                }
            });
            ext.and_then(|e| types.get(e.as_ref()))
                .or(loc.default_type.as_ref())
                .map_or(Cow::Borrowed("text/plain"), |t| Cow::Borrowed(t.as_str()))
        }
        None => Cow::Borrowed(super::static_files::content_type(path)),
    }
}

/// `add_header` values for `loc`, evaluated now: (name, value, always).
pub fn location_headers(loc: &Location, vars: &dyn Vars) -> Vec<(String, String, bool)> {
    loc.add_headers
        .iter()
        .map(|h| (h.name.clone(), h.value.eval(vars), h.always))
        .collect()
}

/// `expires` headers (Expires, Cache-Control) for a response made now.
pub fn expires_headers(e: Expires) -> Option<(String, String)> {
    let now = std::time::SystemTime::now();
    Some(match e {
        Expires::Off => return None,
        Expires::Epoch => ("Thu, 01 Jan 1970 00:00:01 GMT".into(), "no-cache".into()),
        Expires::Max => (
            "Thu, 31 Dec 2037 23:55:55 GMT".into(),
            "max-age=315360000".into(),
        ),
        Expires::After(n) => {
            let t = if n >= 0 {
                now + std::time::Duration::from_secs(n.unsigned_abs())
            } else {
                now.checked_sub(std::time::Duration::from_secs(n.unsigned_abs()))
                    .unwrap_or(now)
            };
            let cc = if n < 0 {
                "no-cache".to_string()
            } else {
                format!("max-age={n}")
            };
            (httpdate::fmt_http_date(t), cc)
        }
    })
}

/// nginx adds `add_header` (without `always`) and `expires` only to these.
pub fn status_gets_headers(status: u16) -> bool {
    matches!(
        status,
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    )
}

/// `absolute_redirect on`: `/path` → `scheme://host[:port]/path`, with the
/// Host header's name (server_name_in_redirect off) and the local port
/// unless it is the scheme's default (port_in_redirect on).
pub fn absolute_location(
    location: &str,
    https: bool,
    host: Option<&str>,
    local: Option<std::net::SocketAddr>,
) -> String {
    if !location.starts_with('/') {
        return location.to_string();
    }
    let scheme = if https { "https" } else { "http" };
    let host = match host {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => match local {
            Some(a) if a.is_ipv6() => format!("[{}]", a.ip()),
            Some(a) => a.ip().to_string(),
            None => "localhost".into(),
        },
    };
    let port = local.map(|a| a.port()).unwrap_or(80);
    let default = if https { 443 } else { 80 };
    if port == default {
        format!("{scheme}://{host}{location}")
    } else {
        format!("{scheme}://{host}:{port}{location}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    #[test]
    fn normalizes_like_nginx() {
        assert_eq!(normalize_path("/a//b/./c/../d").as_deref(), Some("/a/b/d"));
        assert_eq!(normalize_path("/a/%2e%2e/b").as_deref(), Some("/b"));
        assert_eq!(normalize_path("/a/").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/a/..").as_deref(), Some("/"));
        assert_eq!(normalize_path("/%2e%2e/etc/passwd"), None);
        assert_eq!(normalize_path("/../x"), None);
        assert_eq!(normalize_path("/a%2fb").as_deref(), Some("/a/b"));
        assert_eq!(normalize_path("/x%00"), None);
        assert_eq!(normalize_path("/x%zz"), None);
        assert_eq!(normalize_path("x"), None);
    }

    #[test]
    fn paths_that_are_not_utf8_are_carried() {
        use crate::proxy::rawtext::to_bytes;
        let carried = |raw: &[u8]| {
            let (s, c) = normalize_target(raw).expect("valid path");
            (to_bytes(&s).into_owned(), c)
        };
        // Percent-encoded and raw Latin-1, with dot segments around them.
        assert_eq!(carried(b"/caf%E9"), (b"/caf\xE9".to_vec(), true));
        assert_eq!(carried(b"/a/../caf\xE9//x"), (b"/caf\xE9/x".to_vec(), true));
        // UTF-8 stays as it is, escaped or not.
        assert_eq!(
            carried(b"/caf%C3%A9"),
            ("/caf\u{e9}".as_bytes().to_vec(), false)
        );
        assert_eq!(
            normalize_target("/caf\u{e9}".as_bytes()),
            Some(("/caf\u{e9}".into(), false))
        );
        // A character of the carried range itself comes back as its bytes.
        assert_eq!(
            carried(b"/%F4%8F%BF%A9"),
            (b"/\xF4\x8F\xBF\xA9".to_vec(), true)
        );
        assert_eq!(
            carried("/\u{10FFE9}".as_bytes()),
            (b"/\xF4\x8F\xBF\xA9".to_vec(), true)
        );
        assert_eq!(normalize_target(b"/%E9/../../x"), None);
        // A rewritten URI is text already: its carried bytes stay carried.
        let (text, _) = normalize_target(b"/d%E9/x").expect("valid");
        let again = normalize_path(&format!("{text}/../y%20")).expect("valid");
        assert_eq!(&to_bytes(&again)[..], b"/d\xE9/y ");
        assert_eq!(normalize_path(&text).as_deref(), Some(text.as_str()));
    }

    fn loc(m: Match) -> Location {
        Location::new(m, Origin::default())
    }

    fn re(s: &str) -> Match {
        Match::Regex {
            re: regex::Regex::new(s).expect("re"),
            case_insensitive: false,
        }
    }

    #[test]
    fn precedence() {
        let locs = vec![
            loc(Match::Prefix("/".into())),
            loc(Match::Exact("/x".into())),
            loc(Match::PrefixNoRegex("/static/".into())),
            loc(re(r"\.php$")),
            loc(re(r"\.(png|php)$")),
        ];
        let code = |u: &str| {
            find_location(&locs, u)
                .map(|m| format!("{:?}", m.loc.matcher))
                .unwrap_or_default()
        };
        assert!(code("/x").contains("Exact"));
        assert!(code("/static/a.php").contains("PrefixNoRegex"));
        assert!(code("/a.php").contains("php$"), "{}", code("/a.php"));
        assert!(code("/a.png").contains("png|php"));
        assert!(code("/a.txt").contains("Prefix(\"/\")"));
    }

    #[test]
    fn nested_precedence_like_nginx() {
        // location / { location ~ \.js$ {} }  location ^~ /s/ { location /s/deep/ {} }
        // location ~ \.php$ {}
        let mut root = loc(Match::Prefix("/".into()));
        root.locations.push(loc(re(r"\.js$")));
        let mut s = loc(Match::PrefixNoRegex("/s/".into()));
        s.locations.push(loc(Match::Prefix("/s/deep/".into())));
        let mut a = loc(Match::Prefix("/a/".into()));
        a.locations.push(loc(Match::PrefixNoRegex("/a/b/".into())));
        let locs = vec![root, s, a, loc(re(r"\.php$")), loc(re(r"^/(x)(y)?"))];
        let m = |u: &str| {
            find_location(&locs, u)
                .map(|m| format!("{:?}", m.loc.matcher))
                .unwrap_or_default()
        };
        // nested regex of the matched prefix before this level's regexes
        assert!(m("/x.js").contains("js$"), "{}", m("/x.js"));
        // this level's regex beats a nested prefix
        assert!(m("/t.php").contains("php$"));
        // ^~ stops regexes, but its nested prefix is longer
        assert!(m("/s/deep/x.php").contains("/s/deep/"));
        assert!(m("/s/x.php").contains("PrefixNoRegex(\"/s/\")"));
        // a nested ^~ does not stop the enclosing level's regexes (nginx)
        assert!(m("/a/b/x.php").contains("php$"), "{}", m("/a/b/x.php"));
        assert!(m("/a/b/x").contains("/a/b/"));
        // captures of the regex that matched
        let c = find_location(&locs, "/xq")
            .map(|m| m.captures)
            .unwrap_or_default();
        assert_eq!(c, vec![Some("/x".to_string()), Some("x".to_string()), None]);
        // no match at all
        assert!(find_location(&locs[1..3], "/zzz").is_none());
    }

    fn listen(a: &str, default_server: bool, tls: bool) -> Listen {
        Listen {
            addr: a.parse().expect("addr"),
            default_server,
            tls: tls.then(|| crate::config::TlsFiles {
                cert: "c".into(),
                key: "k".into(),
            }),
            http2: false,
        }
    }

    fn server(name: &str, listens: Vec<Listen>) -> Server {
        let mut c = crate::config::Config::single_server(
            "t",
            "127.0.0.1:1".parse().expect("addr"),
            PathBuf::from("/"),
            Vec::new(),
        );
        let mut s = c.servers.remove(0);
        s.names = vec![name.to_string()];
        s.listen = listens;
        s
    }

    #[test]
    fn servers_by_local_address_then_host() {
        // nginx: listen 8080 (wild); 127.0.0.2:8080 (two, two-default
        // default_server); 127.0.0.1:9090 + 127.0.0.2:9090 (both);
        // 127.0.0.2:9090 default_server (only2).
        let servers = vec![
            server("wild", vec![listen("0.0.0.0:8080", false, false)]),
            server("two", vec![listen("127.0.0.2:8080", false, false)]),
            server("two-default", vec![listen("127.0.0.2:8080", true, false)]),
            server(
                "both",
                vec![
                    listen("127.0.0.1:9090", false, false),
                    listen("127.0.0.2:9090", false, false),
                ],
            ),
            server("only2", vec![listen("127.0.0.2:9090", true, false)]),
        ];
        let m = ListenMap::new(&servers);
        let pick = |local: &str, host: Option<&str>| {
            let c = m.candidates(local.parse().ok()).unwrap_or(&[]);
            m.select_server_index(c, host)
                .map(|i| servers[i].names[0].clone())
                .unwrap_or_default()
        };
        assert_eq!(pick("127.0.0.1:8080", Some("two")), "wild");
        assert_eq!(pick("127.0.0.3:8080", Some("two")), "wild");
        assert_eq!(pick("[::ffff:127.0.0.3]:8080", None), "wild");
        let v6 = vec![server("v6", vec![listen("[::]:7070", false, false)])];
        let m6 = ListenMap::new(&v6);
        assert_eq!(
            m6.candidates("[::ffff:127.0.0.1]:7070".parse().ok()),
            Some(&[0][..]),
            "IPv4 on a dual-stack [::] socket"
        );
        assert_eq!(pick("127.0.0.2:8080", Some("two")), "two");
        assert_eq!(pick("127.0.0.2:8080", Some("wild")), "two-default");
        assert_eq!(pick("127.0.0.2:8080", None), "two-default");
        assert_eq!(pick("127.0.0.1:9090", Some("only2")), "both");
        assert_eq!(pick("127.0.0.2:9090", Some("x")), "only2");
        assert_eq!(pick("127.0.0.2:9090", Some("both:9090")), "both");
        assert!(m.candidates("127.0.0.1:7070".parse().ok()).is_none());
        assert!(m.candidates(None).is_none());
    }

    /// nginx's order among the servers of one address: exact name, longest
    /// leading wildcard, first trailing wildcard, first matching regex,
    /// else the default (the first). Host is matched without its port and
    /// trailing dot, case-insensitively.
    #[test]
    fn server_names_in_nginx_order() {
        let at = || vec![listen("127.0.0.1:8080", false, false)];
        let mut servers = vec![
            server("default.test", at()),
            server("*.example.com", at()),
            server("*.deep.example.com", at()),
            server(".example.org", at()),
            server("www.example.*", at()),
            server("~^api\\d+\\.test$", at()),
            server("Exact.Example.com", at()),
            server("~(", at()),
        ];
        servers[0].names.push("second-name.test".into());
        let m = ListenMap::new(&servers);
        let c = m.candidates("127.0.0.1:8080".parse().ok()).unwrap_or(&[]);
        let pick = |host: &str| {
            m.select_server_index(c, Some(host))
                .map(|i| servers[i].names[0].clone())
                .unwrap_or_default()
        };
        assert_eq!(pick("exact.example.com"), "Exact.Example.com");
        assert_eq!(pick("EXACT.example.com:8080"), "Exact.Example.com");
        assert_eq!(pick("a.example.com"), "*.example.com");
        assert_eq!(pick("a.deep.example.com"), "*.deep.example.com", "longest");
        assert_eq!(pick("example.com"), "default.test", "*. needs a label");
        assert_eq!(pick("example.org."), ".example.org");
        assert_eq!(pick("x.example.org"), ".example.org");
        assert_eq!(pick("www.example.net"), "www.example.*");
        assert_eq!(pick("www.example.com"), "*.example.com", "leading first");
        assert_eq!(pick("api7.test"), "~^api\\d+\\.test$");
        assert_eq!(pick("api.test"), "default.test");
        assert_eq!(pick("second-name.test"), "default.test");
        assert_eq!(m.select_server_index(c, None), Some(0));
    }

    #[test]
    fn one_socket_per_port_under_a_wildcard() {
        let ls = vec![
            listen("127.0.0.2:8080", false, false),
            listen("0.0.0.0:8080", false, false),
            listen("127.0.0.1:9090", false, false),
            listen("127.0.0.2:9090", false, false),
            listen("127.0.0.1:9090", true, false),
            listen("[::1]:8080", false, false),
            listen("[::]:9090", false, false),
        ];
        let b: Vec<String> = bind_listens(&ls)
            .expect("binds")
            .iter()
            .map(|l| l.addr.to_string())
            .collect();
        assert_eq!(
            b,
            [
                "0.0.0.0:8080",
                "127.0.0.1:9090",
                "127.0.0.2:9090",
                "[::1]:8080",
                "[::]:9090"
            ]
        );
        let e = bind_listens(&[
            listen("0.0.0.0:443", false, true),
            listen("127.0.0.1:443", false, false),
        ])
        .expect_err("ssl differs");
        assert!(e.contains("ssl"), "{e}");
    }

    #[test]
    fn absolute_redirects() {
        let local = "127.0.0.1:8080".parse().ok();
        assert_eq!(
            absolute_location("/d/", false, Some("ex.com"), local),
            "http://ex.com:8080/d/"
        );
        let local80 = "127.0.0.1:80".parse().ok();
        assert_eq!(
            absolute_location("/d/", false, None, local80),
            "http://127.0.0.1/d/"
        );
        assert_eq!(
            absolute_location("http://x/", false, None, local),
            "http://x/"
        );
    }
}
