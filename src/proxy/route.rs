//! Request routing as nginx does it: URI normalization, server selection by
//! Host, location matching with nginx's precedence, `try_files`, `index`.

use std::path::{Path, PathBuf};

use crate::config::template::Vars;
use crate::config::{Location, Match, Server, Template};

/// Decodes and normalizes a request path like nginx (`ngx_http_parse_complex_uri`):
/// percent-decoding, merging slashes, resolving `.` and `..`. `None` = 400.
pub fn normalize_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
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
    String::from_utf8(path).ok()
}

/// Picks the server block for a request (nginx order: exact name, longest
/// leading wildcard, longest trailing wildcard, first matching regex, default).
pub fn select_server<'a>(
    servers: &'a [Server],
    candidates: &[usize],
    host: Option<&str>,
) -> Option<&'a Server> {
    let host = host.map(|h| {
        let h = h
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(h);
        h.trim_end_matches('.').to_ascii_lowercase()
    });
    let cands = || candidates.iter().filter_map(|&i| servers.get(i));
    if let Some(h) = host.as_deref() {
        if let Some(s) = cands().find(|s| s.names.iter().any(|n| n.eq_ignore_ascii_case(h))) {
            return Some(s);
        }
        let mut best: Option<(&Server, usize)> = None;
        for s in cands() {
            for n in &s.names {
                let n = n.to_ascii_lowercase();
                let suffix = n
                    .strip_prefix("*.")
                    .map(|x| format!(".{x}"))
                    .or_else(|| n.strip_prefix('.').map(|x| format!(".{x}")));
                if let Some(suf) = suffix {
                    let matches = h.ends_with(&suf) || (n.starts_with('.') && h == &suf[1..]);
                    if matches && best.is_none_or(|(_, l)| suf.len() > l) {
                        best = Some((s, suf.len()));
                    }
                }
            }
        }
        if let Some((s, _)) = best {
            return Some(s);
        }
        for s in cands() {
            for n in &s.names {
                if let Some(pre) = n.strip_suffix(".*") {
                    if h.starts_with(&format!("{}.", pre.to_ascii_lowercase())) {
                        return Some(s);
                    }
                }
            }
        }
        for s in cands() {
            for n in &s.names {
                if let Some(re) = n.strip_prefix('~') {
                    if regex::Regex::new(re).is_ok_and(|r| r.is_match(h)) {
                        return Some(s);
                    }
                }
            }
        }
    }
    cands().next()
}

/// The result of location matching: the location and regex captures.
pub struct Matched<'a> {
    pub loc: &'a Location,
    pub captures: Vec<Option<String>>,
}

/// nginx's location precedence: `=` exact; longest prefix (nested first);
/// if that prefix is `^~`, stop; else regexes in order (nested regexes of the
/// matched prefix first); else the longest prefix.
pub fn find_location<'a>(locations: &'a [Location], uri: &str) -> Option<Matched<'a>> {
    let mut prefix: Option<&'a Location> = None;
    let mut best_len = 0usize;
    for l in locations {
        match &l.matcher {
            Match::Exact(p) if p == uri => {
                return Some(Matched {
                    loc: l,
                    captures: Vec::new(),
                });
            }
            Match::Prefix(p) | Match::PrefixNoRegex(p) if uri.starts_with(p.as_str()) => {
                if prefix.is_none() || p.len() > best_len {
                    prefix = Some(l);
                    best_len = p.len();
                }
            }
            _ => {}
        }
    }
    if let Some(p) = prefix {
        if !p.locations.is_empty() {
            if let Some(m) = find_location(&p.locations, uri) {
                let nested_is_regex =
                    matches!(m.loc.matcher, Match::Regex { .. } | Match::Exact(_));
                if nested_is_regex || matches!(m.loc.matcher, Match::PrefixNoRegex(_)) {
                    return Some(m);
                }
                // a nested prefix: still check this level's regexes below
                if !matches!(p.matcher, Match::PrefixNoRegex(_)) {
                    if let Some(r) = find_regex(locations, uri) {
                        return Some(r);
                    }
                }
                return Some(m);
            }
        }
        if matches!(p.matcher, Match::PrefixNoRegex(_)) {
            return Some(Matched {
                loc: p,
                captures: Vec::new(),
            });
        }
    }
    if let Some(r) = find_regex(locations, uri) {
        return Some(r);
    }
    prefix.map(|loc| Matched {
        loc,
        captures: Vec::new(),
    })
}

fn find_regex<'a>(locations: &'a [Location], uri: &str) -> Option<Matched<'a>> {
    for l in locations {
        if let Match::Regex { re, .. } = &l.matcher {
            if let Some(c) = re.captures(uri) {
                let captures = c
                    .iter()
                    .map(|m| m.map(|m| m.as_str().to_string()))
                    .collect();
                return Some(Matched { loc: l, captures });
            }
        }
    }
    None
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
        return PathBuf::from(format!("{a}{rest}"));
    }
    let mut s = root.as_os_str().to_os_string();
    s.push(uri);
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
        let p = file_path(root, loc, &v, vars);
        let ok = if v.ends_with('/') {
            p.is_dir()
        } else {
            p.is_file()
        };
        if ok {
            return TryResult::Found(v);
        }
    }
    TryResult::Code(404)
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
}
