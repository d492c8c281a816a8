//! The native YAML configuration format (serde_yaml), converted into the
//! internal model. Values are validated while they are deserialized so that
//! every error carries the file, line and field path.
//!
//! See `config/why502.yaml` for an annotated example.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::units::{parse_duration, parse_size};
use super::*;

/// A value parsed from a string with `FromStr`-like validation inside serde.
macro_rules! string_newtype {
    ($name:ident, $ty:ty, $parse:expr) => {
        #[derive(Debug, Clone)]
        pub struct $name(pub $ty);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = StrOrNum::deserialize(d)?.0;
                let f: fn(&str) -> Result<$ty, String> = $parse;
                f(&s).map($name).map_err(de::Error::custom)
            }
        }
    };
}

/// Accepts `60` as well as `"60s"`.
struct StrOrNum(String);
impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            U(u64),
            I(i64),
        }
        Ok(StrOrNum(match V::deserialize(d)? {
            V::S(s) => s,
            V::U(u) => u.to_string(),
            V::I(i) => i.to_string(),
        }))
    }
}

string_newtype!(Dur, Duration, parse_duration);
string_newtype!(Size, u64, parse_size);
string_newtype!(AddrStr, Addr, Addr::parse);
string_newtype!(Re, regex::Regex, |s| regex::Regex::new(s)
    .map_err(|e| format!("invalid regex: {e}")));
string_newtype!(Tpl, Template, parse_template);
string_newtype!(Net, IpNet, |s| IpNet::parse(s).ok_or_else(|| format!(
    "invalid network \"{s}\" (expected e.g. 10.0.0.0/8)"
)));
string_newtype!(SockAddr, SocketAddr, parse_listen_addr);
string_newtype!(NetOrAll, Option<IpNet>, |s| if s == "all" {
    Ok(None)
} else {
    IpNet::parse(s).map(Some).ok_or_else(|| {
        format!("invalid network \"{s}\" (expected all, an address or e.g. 10.0.0.0/8)")
    })
});
string_newtype!(ExpiresFile, Expires, parse_expires);

thread_local! {
    /// Names of the file's `set` variables while it is read: templates
    /// accept them as `$name`, like nginx accepts variables `set` anywhere.
    static USER_VARS: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// Makes `names` the user variables until dropped.
struct UserVars;

impl UserVars {
    fn set(names: HashSet<String>) -> UserVars {
        USER_VARS.with(|u| *u.borrow_mut() = names);
        UserVars
    }
}

impl Drop for UserVars {
    fn drop(&mut self) {
        USER_VARS.with(|u| u.borrow_mut().clear());
    }
}

/// A template; `$name` may be a `set` variable of the file being read.
fn parse_template(s: &str) -> Result<Template, String> {
    USER_VARS.with(|u| {
        let u = u.borrow();
        Template::parse_with(s, &|n| u.contains(n))
    })
}

/// A proxy template: `set` variables plus the proxy module's.
fn parse_proxy_template_here(s: &str) -> Result<Template, String> {
    USER_VARS.with(|u| {
        let u = u.borrow();
        Template::parse_with(s, &|n| u.contains(n) || PROXY_VARS.contains(&n))
    })
}

/// The names given to `set: { name: ... }` anywhere in the text.
fn set_names(text: &str) -> HashSet<String> {
    fn walk(v: &serde_yaml::Value, out: &mut HashSet<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, val) in m {
                    if k.as_str() == Some("set") {
                        if let Some(n) = val.get("name").and_then(|n| n.as_str()) {
                            out.insert(n.trim_start_matches('$').to_string());
                        }
                    }
                    walk(val, out);
                }
            }
            serde_yaml::Value::Sequence(s) => s.iter().for_each(|x| walk(x, out)),
            serde_yaml::Value::Tagged(t) => walk(&t.value, out),
            _ => {}
        }
    }
    let mut out = HashSet::new();
    if let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        walk(&v, &mut out);
    }
    out
}

/// `off`, `epoch`, `max`, or a time from now (`1h`, `30d`, `-1`: negative =
/// `Cache-Control: no-cache`), as nginx's `expires`.
pub fn parse_expires(s: &str) -> Result<Expires, String> {
    Ok(match s {
        "off" => Expires::Off,
        "epoch" => Expires::Epoch,
        "max" => Expires::Max,
        v => {
            let (neg, v) = match v.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, v.strip_prefix('+').unwrap_or(v)),
            };
            let t = parse_duration(v).map_err(|e| format!("invalid expires: {e}"))?;
            let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
            Expires::After(if neg { -secs } else { secs })
        }
    })
}

/// A list given either as a mapping `{NAME: value}` (applied sorted by
/// name) or, when order matters, as a sequence of `{name: NAME, value: ...}`.
struct MapOrList<V, I>(Vec<I>, PhantomData<V>);

impl<V, I> Default for MapOrList<V, I> {
    fn default() -> Self {
        MapOrList(Vec::new(), PhantomData)
    }
}

impl<'de, V, I> Deserialize<'de> for MapOrList<V, I>
where
    V: Deserialize<'de>,
    I: Deserialize<'de> + From<(String, V)>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V, I>(PhantomData<(V, I)>);
        impl<'de, V, I> de::Visitor<'de> for Vis<V, I>
        where
            V: Deserialize<'de>,
            I: Deserialize<'de> + From<(String, V)>,
        {
            type Value = MapOrList<V, I>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping NAME: value, or a list of { name, value }")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut sorted = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    sorted.insert(k, v);
                }
                Ok(MapOrList(
                    sorted.into_iter().map(I::from).collect(),
                    PhantomData,
                ))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(i) = s.next_element::<I>()? {
                    out.push(i);
                }
                Ok(MapOrList(out, PhantomData))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MapOrList::default())
            }
        }
        d.deserialize_any(Vis(PhantomData))
    }
}

/// `8080`, `127.0.0.1:8080`, `[::1]:8080`, `*:8080`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let s2 = s.strip_prefix("*:").map(|p| format!("0.0.0.0:{p}"));
    let s2 = s2.as_deref().unwrap_or(s);
    s2.parse()
        .map_err(|_| format!("invalid listen address \"{s}\" (expected host:port)"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    threads: usize,
    /// nginx's `worker_rlimit_nofile`.
    max_open_files: Option<u64>,
    /// nginx's `worker_priority`.
    priority: Option<i32>,
    #[serde(default)]
    log: LogFile,
    #[serde(default)]
    diagnostics: Option<DiagFile>,
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamFile>,
    servers: Vec<ServerFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogFile {
    error_log: Option<ErrorLogFile>,
    events: Option<String>,
    /// The http level's access logs.
    access_log: Option<AccessLogFile>,
    /// `log_format`s by name: a format string, or `{ format, escape }`.
    #[serde(default)]
    log_formats: BTreeMap<String, LogFormatFile>,
}

/// An error log: `PATH` / `stderr`, or `{ path: PATH, level: warn }`
/// (level `info` when not given).
struct ErrorLogFile {
    path: String,
    level: LogLevel,
}

impl<'de> Deserialize<'de> for ErrorLogFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_yaml::Value;
        let (path, level) = match Value::deserialize(d)? {
            Value::String(p) => (p, None),
            m @ Value::Mapping(_) => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Long {
                    path: String,
                    level: Option<String>,
                }
                let l = Long::deserialize(m)
                    .map_err(|e| de::Error::custom(format!("error_log: {e}")))?;
                (l.path, l.level)
            }
            _ => {
                return Err(de::Error::custom(
                    "error_log: expected a path, stderr, or { path, level }",
                ))
            }
        };
        let level = match level {
            None => LogLevel::Info,
            Some(l) => LogLevel::parse(&l).ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid log level \"{l}\" (expected debug, info, notice, warn, error, crit, alert or emerg)"
                ))
            })?,
        };
        Ok(ErrorLogFile { path, level })
    }
}

impl ErrorLogFile {
    fn target(self) -> ErrorLogTarget {
        ErrorLogTarget {
            path: (self.path != "stderr").then(|| PathBuf::from(self.path)),
            level: self.level,
        }
    }
}

/// One error log or a list of them.
struct ErrorLogs(Vec<ErrorLogFile>);

impl<'de> Deserialize<'de> for ErrorLogs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Sequence(s) => s,
            other => vec![other],
        };
        items
            .into_iter()
            .map(|i| ErrorLogFile::deserialize(i).map_err(de::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(ErrorLogs)
    }
}

/// `access_log`: `off`, a path (why502's format), `{ path, format, if }`,
/// or a list of paths and mappings.
enum AccessLogFile {
    Off,
    Logs(Vec<AccessLogItem>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessLogItem {
    path: String,
    /// A `log_formats` name, `combined` or `why502` (the default).
    format: Option<String>,
    /// Skip the line when this renders empty or `0` (nginx `if=`).
    #[serde(rename = "if")]
    condition: Option<String>,
}

impl<'de> Deserialize<'de> for AccessLogFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_yaml::Value;
        let item = |v: Value| -> Result<AccessLogItem, String> {
            match v {
                Value::String(s) if s == "off" => {
                    Err("access_log: \"off\" cannot be combined with other logs".into())
                }
                Value::String(path) => Ok(AccessLogItem {
                    path,
                    format: None,
                    condition: None,
                }),
                m @ Value::Mapping(_) => {
                    AccessLogItem::deserialize(m).map_err(|e| format!("access_log: {e}"))
                }
                _ => Err(
                    "access_log: expected off, a path, { path, format, if } or a list of them"
                        .into(),
                ),
            }
        };
        match Value::deserialize(d)? {
            Value::String(s) if s == "off" => Ok(AccessLogFile::Off),
            Value::Bool(false) => Ok(AccessLogFile::Off),
            Value::Sequence(s) => s
                .into_iter()
                .map(item)
                .collect::<Result<Vec<_>, _>>()
                .map(AccessLogFile::Logs)
                .map_err(de::Error::custom),
            v => item(v)
                .map(|i| AccessLogFile::Logs(vec![i]))
                .map_err(de::Error::custom),
        }
    }
}

/// A `log_formats` entry: the format string, or `{ format, escape }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum LogFormatFile {
    Plain(String),
    Long(LogFormatLong),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFormatLong {
    format: String,
    /// `default`, `json` or `none` (nginx's `escape=`).
    escape: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiagFile {
    #[serde(default = "yes")]
    enabled: bool,
    trusted: Option<Vec<Net>>,
    cause_header: Option<String>,
    request_id_header: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    servers: Vec<UpstreamServerFile>,
    #[serde(default)]
    keepalive: Option<usize>,
    keepalive_timeout: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UpstreamServerFile {
    Short(AddrStr),
    Long(UpstreamServerLong),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamServerLong {
    address: AddrStr,
    weight: Option<u32>,
    max_fails: Option<u32>,
    fail_timeout: Option<Dur>,
    #[serde(default)]
    backup: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListenFile {
    Short(SockAddr),
    Long(ListenLong),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenLong {
    address: SockAddr,
    #[serde(default)]
    default_server: bool,
    #[serde(default)]
    http2: bool,
    tls: Option<TlsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    listen: Vec<ListenFile>,
    #[serde(default)]
    server_name: Vec<String>,
    root: Option<PathBuf>,
    index: Option<Vec<String>>,
    client_max_body_size: Option<Size>,
    client_body_timeout: Option<Dur>,
    /// Requests on one client connection before it is closed (nginx
    /// `keepalive_requests`, default 1000).
    keepalive_requests: Option<u64>,
    /// How long an idle client connection is kept for its next request
    /// (nginx `keepalive_timeout`, default 75s; 0 turns keep-alive off).
    keepalive_timeout: Option<Dur>,
    /// Rewrite-phase steps run before a location is searched.
    #[serde(default)]
    rewrites: Vec<ScriptOpFile>,
    /// Make redirects to `/path` absolute (`http://host:port/path`).
    #[serde(default)]
    absolute_redirect: bool,
    /// Serve requests that match no location with the server's own
    /// settings (nginx's behaviour) instead of answering 404.
    #[serde(default)]
    serve_unmatched: bool,
    /// For requests that match no location (needs `serve_unmatched`).
    try_files: Option<Vec<Tpl>>,
    /// Content type of files whose extension `types` does not know.
    default_type: Option<String>,
    /// Extension → content type (replaces the built-in guess).
    types: Option<BTreeMap<String, String>>,
    add_headers: Option<Vec<AddHeaderFile>>,
    expires: Option<ExpiresFile>,
    error_pages: Option<Vec<ErrorPageFile>>,
    access: Option<Vec<AccessFile>>,
    /// Replaces `log.access_log` for this server (`off`: none).
    access_log: Option<AccessLogFile>,
    /// The server's own error log(s), instead of `log.error_log`.
    error_log: Option<ErrorLogs>,
    #[serde(default)]
    locations: Vec<LocationFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddHeaderFile {
    name: String,
    value: Tpl,
    /// Also on error responses (nginx `always`).
    #[serde(default)]
    always: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorPageFile {
    codes: Vec<u16>,
    /// A URI (`/50x.html`), a named location (`@x`) or a URL (redirect).
    uri: Tpl,
    /// Answer with this code, or `target` for the target's own status;
    /// absent = keep the error's code.
    status: Option<ErrorStatusFile>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorStatusFile {
    Code(u16),
    Word(String),
}

/// `{allow: NET}` / `{deny: NET}`; NET is `all`, an address or a CIDR.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    allow: Option<NetOrAll>,
    deny: Option<NetOrAll>,
}

/// One rewrite-phase step: `{rewrite: ...}`, `{return: ...}` or `{set: ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptOpFile {
    rewrite: Option<RewriteFile>,
    #[serde(rename = "return")]
    ret: Option<ReturnFile>,
    set: Option<SetFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteFile {
    regex: String,
    replacement: Tpl,
    /// Absent: go on with the next step (a replacement starting with
    /// `http://`, `https://` or `$scheme` redirects with 302).
    flag: Option<RewriteFlagFile>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RewriteFlagFile {
    Last,
    Break,
    Redirect,
    Permanent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    name: String,
    value: Tpl,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationFile {
    exact: Option<String>,
    prefix: Option<String>,
    prefix_no_regex: Option<String>,
    regex: Option<String>,
    iregex: Option<String>,
    named: Option<String>,
    root: Option<PathBuf>,
    alias: Option<Tpl>,
    index: Option<Vec<String>>,
    try_files: Option<Vec<Tpl>>,
    #[serde(rename = "return")]
    ret: Option<ReturnFile>,
    fastcgi: Option<FastCgiFile>,
    proxy: Option<ProxyFile>,
    /// Rewrite-phase steps in order (before `return`).
    #[serde(default)]
    script: Vec<ScriptOpFile>,
    /// Only reachable through internal redirects (error_pages, try_files...).
    #[serde(default)]
    internal: bool,
    client_max_body_size: Option<Size>,
    /// Content type of files whose extension `types` does not know.
    default_type: Option<String>,
    /// Extension → content type (replaces the built-in guess).
    types: Option<BTreeMap<String, String>>,
    add_headers: Option<Vec<AddHeaderFile>>,
    expires: Option<ExpiresFile>,
    error_pages: Option<Vec<ErrorPageFile>>,
    access: Option<Vec<AccessFile>>,
    /// Replaces the enclosing level's access logs (`off`: none).
    access_log: Option<AccessLogFile>,
    #[serde(default)]
    locations: Vec<LocationFile>,
}

/// `proxy:` (nginx's proxy_pass and proxy_* directives).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    /// `http://upstream-name[/uri]`, `http://host:port[/uri]`, `https://...`.
    pass: String,
    #[serde(default)]
    set_headers: MapOrList<String, NameValue>,
    connect_timeout: Option<Dur>,
    send_timeout: Option<Dur>,
    read_timeout: Option<Dur>,
    buffer_size: Option<Size>,
    http_version: Option<HttpVersionFile>,
    #[serde(default)]
    h2: bool,
    #[serde(default)]
    ssl_verify: bool,
    ssl_trusted_certificate: Option<PathBuf>,
    ssl_name: Option<String>,
    #[serde(default)]
    ssl_server_name: bool,
    #[serde(default)]
    hide_headers: Vec<String>,
    #[serde(default)]
    pass_headers: Vec<String>,
    next_upstream: Option<Vec<String>>,
    #[serde(default)]
    intercept_errors: bool,
}

/// `1.0`, `1.1` (YAML reads them as numbers) or `"1.1"`.
struct HttpVersionFile(String);
impl<'de> Deserialize<'de> for HttpVersionFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            F(f64),
        }
        let s = match V::deserialize(d)? {
            V::S(s) => s,
            V::F(f) => format!("{f:.1}"),
        };
        match s.as_str() {
            "1.0" | "1.1" => Ok(HttpVersionFile(s)),
            _ => Err(de::Error::custom(format!(
                "invalid http_version \"{s}\": expected 1.0 or 1.1 (use h2: true for HTTP/2)"
            ))),
        }
    }
}

/// The parts of a `proxy_pass` URL: `(tls, authority, uri)`. The authority is
/// an upstream name, `host[:port]` or `unix:/path`; the URI part (with its
/// leading `/`) replaces the matched location prefix when present.
pub fn parse_proxy_pass(s: &str) -> Result<(bool, String, Option<String>), String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!(
            "invalid proxy pass \"{s}\": expected http://host[:port][/uri] or https://..."
        ));
    };
    let (auth, uri) = if let Some(path) = rest.strip_prefix("unix:") {
        // http://unix:/path/to.sock:/uri (nginx syntax)
        match path.find(':') {
            Some(i) => (format!("unix:{}", &path[..i]), Some(&path[i + 1..])),
            None => (format!("unix:{path}"), None),
        }
    } else {
        match rest.find('/') {
            Some(i) => (rest[..i].to_string(), Some(&rest[i..])),
            None => (rest.to_string(), None),
        }
    };
    if auth.is_empty() || auth == "unix:" {
        return Err(format!("invalid proxy pass \"{s}\": no host"));
    }
    let uri = uri.filter(|u| !u.is_empty()).map(str::to_string);
    Ok((tls, auth, uri))
}

/// Variables only the proxy module knows (`$proxy_host`...), parsed as user
/// variables and resolved by the HTTP gateway.
pub const PROXY_VARS: &[&str] = &["proxy_host", "proxy_port", "proxy_add_x_forwarded_for"];

/// Parses a template that may use the proxy module's variables.
pub fn parse_proxy_template(s: &str) -> Result<Template, String> {
    Template::parse_with(s, &|n| PROXY_VARS.contains(&n))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnFile {
    code: u16,
    text: Option<Tpl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastCgiFile {
    pass: String,
    #[serde(default = "yes")]
    default_params: bool,
    #[serde(default)]
    params: MapOrList<Tpl, ParamFile>,
    split_path_info: Option<Re>,
    index: Option<String>,
    connect_timeout: Option<Dur>,
    send_timeout: Option<Dur>,
    read_timeout: Option<Dur>,
    buffer_size: Option<Size>,
    #[serde(default)]
    keep_conn: bool,
    #[serde(default)]
    half_close: bool,
    #[serde(default)]
    intercept_errors: bool,
    #[serde(default)]
    hide_headers: Vec<String>,
    #[serde(default)]
    pass_headers: Vec<String>,
    /// Send the request headers as HTTP_* params.
    #[serde(default = "yes")]
    pass_request_headers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFile {
    name: String,
    value: Tpl,
    /// Left out when the value is empty.
    #[serde(default)]
    if_not_empty: bool,
}

impl From<(String, Tpl)> for ParamFile {
    fn from((name, value): (String, Tpl)) -> Self {
        ParamFile {
            name,
            value,
            if_not_empty: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
}

impl From<(String, String)> for NameValue {
    fn from((name, value): (String, String)) -> Self {
        NameValue { name, value }
    }
}

/// Reads and converts a YAML config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            Origin {
                file: name.clone(),
                line: 0,
            },
            format!("cannot read: {e}"),
        )
    })?;
    load_str(&text, &name)
}

/// Converts YAML text; `name` is used in error messages.
pub fn load_str(text: &str, name: &str) -> Result<Config, ConfigError> {
    let _vars = UserVars::set(set_names(text));
    let file: File = serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        // serde_yaml appends " at line L column C"; the origin says it already.
        let msg = e.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) if line > 0 => msg[..i].to_string(),
            _ => msg,
        };
        let (line, msg) = refine_location(text, line, msg);
        ConfigError::new(
            Origin {
                file: name.to_string(),
                line,
            },
            msg,
        )
    })?;
    convert(file, text, name)
}

/// serde_yaml places errors from a value's own validation at the enclosing
/// mapping. When the message quotes the bad value, find the line holding it
/// (at or after the reported line) and name its key.
fn refine_location(text: &str, line: usize, msg: String) -> (usize, String) {
    let quoted = msg
        .split('"')
        .nth(msg.matches('"').count().saturating_sub(1).clamp(1, 3))
        .filter(|q| !q.is_empty());
    let Some(value) = quoted else {
        return (line, msg);
    };
    for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let Some((key, val)) = l.split_once(':') else {
            continue;
        };
        if val.contains(value) {
            let key = key.trim().trim_start_matches("- ").trim();
            let msg = match msg.split_once(": ") {
                Some((path, rest)) if !path.contains(' ') => format!("{path}.{key}: {rest}"),
                _ => format!("{key}: {msg}"),
            };
            return (i + 1, msg);
        }
    }
    (line, msg)
}

/// The line of the first occurrence of `needle` in the text (1-based), for
/// errors about cross references that serde cannot place.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// `log.log_formats` compiled, by name.
type Formats = BTreeMap<String, Arc<LogFormat>>;

fn compile_formats(
    src: BTreeMap<String, LogFormatFile>,
    origin: &dyn Fn(&str) -> Origin,
) -> Result<Formats, ConfigError> {
    let mut out = Formats::new();
    for (name, f) in src {
        let here = origin(&format!("{name}:"));
        if LogFormat::builtin(&name).is_some() {
            return Err(ConfigError::new(
                here,
                format!("log.log_formats.{name}: combined and why502 are built in"),
            ));
        }
        let (source, escape) = match f {
            LogFormatFile::Plain(s) => (s, None),
            LogFormatFile::Long(l) => (l.format, l.escape),
        };
        let escape = match escape.as_deref() {
            None => LogEscape::Default,
            Some(e) => LogEscape::parse(e).ok_or_else(|| {
                ConfigError::new(
                    here.clone(),
                    format!(
                        "log.log_formats.{name}: unknown escape \"{e}\" (expected default, json or none)"
                    ),
                )
            })?,
        };
        let f = USER_VARS
            .with(|u| {
                let u = u.borrow();
                LogFormat::compile(&name, escape, &source, &|n| u.contains(n))
            })
            .map_err(|e| ConfigError::new(here, format!("log.log_formats.{name}: {e}")))?;
        out.insert(name, Arc::new(f));
    }
    Ok(out)
}

/// An `access_log` key: None = inherited, empty = off.
fn access_logs(
    a: Option<AccessLogFile>,
    formats: &Formats,
    origin: &dyn Fn(&str) -> Origin,
) -> Result<Option<Vec<AccessLog>>, ConfigError> {
    let items = match a {
        None => return Ok(None),
        Some(AccessLogFile::Off) => return Ok(Some(Vec::new())),
        Some(AccessLogFile::Logs(items)) => items,
    };
    let mut out = Vec::new();
    for i in items {
        let here = origin(&i.path);
        let format = match &i.format {
            None => LogFormat::why502(),
            Some(n) => formats
                .get(n)
                .cloned()
                .or_else(|| LogFormat::builtin(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        here.clone(),
                        format!(
                            "access_log: unknown log format \"{n}\" (define it in log.log_formats; combined and why502 are built in)"
                        ),
                    )
                })?,
        };
        let condition = match &i.condition {
            None => None,
            Some(c) => Some(Arc::new(
                USER_VARS
                    .with(|u| {
                        let u = u.borrow();
                        LogFormat::compile("if", LogEscape::None, c, &|n| u.contains(n))
                    })
                    .map_err(|e| ConfigError::new(here.clone(), format!("access_log.if: {e}")))?,
            )),
        };
        out.push(AccessLog {
            path: PathBuf::from(i.path),
            format,
            condition,
        });
    }
    Ok(Some(out))
}

fn convert(file: File, text: &str, name: &str) -> Result<Config, ConfigError> {
    let origin = |needle: &str| Origin {
        file: name.to_string(),
        line: line_of(text, needle),
    };
    let mut file = file;
    let formats = compile_formats(std::mem::take(&mut file.log.log_formats), &origin)?;
    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (uname, u) in file.upstreams {
        if u.servers.is_empty() {
            return Err(ConfigError::new(
                origin(&format!("{uname}:")),
                format!("upstreams.{uname}: no servers"),
            ));
        }
        let servers = u
            .servers
            .into_iter()
            .map(|s| match s {
                UpstreamServerFile::Short(a) => UpstreamServer::new(a.0),
                UpstreamServerFile::Long(l) => {
                    let mut s = UpstreamServer::new(l.address.0);
                    s.weight = l.weight.unwrap_or(1).max(1);
                    s.max_fails = l.max_fails.unwrap_or(1);
                    if let Some(t) = l.fail_timeout {
                        s.fail_timeout = t.0;
                    }
                    s.backup = l.backup;
                    s
                }
            })
            .collect();
        upstreams.insert(
            uname.clone(),
            Arc::new(Upstream {
                name: uname,
                servers,
                keepalive: u.keepalive.unwrap_or(32),
                keepalive_timeout: u
                    .keepalive_timeout
                    .map(|t| t.0)
                    .unwrap_or(crate::upstream::IDLE_TIMEOUT),
            }),
        );
    }

    if file.servers.is_empty() {
        return Err(ConfigError::new(
            origin("servers"),
            "servers: at least one server is required",
        ));
    }
    let mut servers = Vec::new();
    for s in file.servers {
        let listen = s
            .listen
            .into_iter()
            .map(|l| match l {
                ListenFile::Short(a) => Listen {
                    addr: a.0,
                    default_server: false,
                    tls: None,
                    http2: false,
                },
                ListenFile::Long(l) => Listen {
                    addr: l.address.0,
                    default_server: l.default_server,
                    tls: l.tls.map(|t| TlsFiles {
                        cert: t.cert,
                        key: t.key,
                    }),
                    http2: l.http2,
                },
            })
            .collect();
        let server_origin = origin("listen");
        let inh = Inherit::default().with(
            InheritedKeys {
                default_type: s.default_type,
                types: s.types,
                add_headers: s.add_headers,
                expires: s.expires,
                error_pages: s.error_pages,
                access: s.access,
                client_max_body_size: None,
            },
            &origin,
        )?;
        let mut locations = Vec::new();
        for l in s.locations {
            locations.push(convert_location(l, &upstreams, &formats, &origin, &inh)?);
        }
        let access_log = access_logs(s.access_log, &formats, &origin)?;
        let error_log = s
            .error_log
            .map(|e| e.0.into_iter().map(ErrorLogFile::target).collect())
            .unwrap_or_default();
        let base = if s.serve_unmatched {
            let mut b = Location::new(Match::Prefix(String::new()), server_origin.clone());
            inh.apply(&mut b);
            b.try_files = s.try_files.map(|v| v.into_iter().map(|t| t.0).collect());
            Some(Box::new(b))
        } else if s.try_files.is_some() {
            return Err(ConfigError::new(
                origin("try_files"),
                "try_files on a server is for requests that match no location: it needs serve_unmatched: true",
            ));
        } else {
            None
        };
        servers.push(Server {
            listen,
            names: s.server_name,
            root: s.root.unwrap_or_else(|| PathBuf::from("/var/www/html")),
            index: s.index.unwrap_or_else(|| vec!["index.html".into()]),
            locations,
            client_max_body_size: s.client_max_body_size.map(|x| x.0).unwrap_or(1 << 20),
            client_body_timeout: s
                .client_body_timeout
                .map(|x| x.0)
                .unwrap_or(Duration::from_secs(60)),
            keepalive_requests: s
                .keepalive_requests
                .unwrap_or(crate::config::KEEPALIVE_REQUESTS),
            keepalive_timeout: s
                .keepalive_timeout
                .map(|x| x.0)
                .unwrap_or(crate::config::KEEPALIVE_TIMEOUT),
            origin: server_origin,
            rewrites: convert_script(s.rewrites, &origin)?,
            base,
            absolute_redirect: s.absolute_redirect,
            access_log,
            error_log,
        });
    }

    let mut diagnostics = Diagnostics::default();
    if let Some(d) = file.diagnostics {
        diagnostics.enabled = d.enabled;
        if let Some(t) = d.trusted {
            diagnostics.trusted = t.into_iter().map(|n| n.0).collect();
        }
        if let Some(h) = d.cause_header {
            diagnostics.cause_header = h;
        }
        if let Some(h) = d.request_id_header {
            diagnostics.request_id_header = h;
        }
    }
    let log_path = |s: Option<String>| s.filter(|s| s != "stderr").map(PathBuf::from);
    let main = file.log.error_log.map(ErrorLogFile::target);
    Ok(Config {
        source: name.to_string(),
        servers,
        diagnostics,
        logging: Logging {
            error_log: main.as_ref().and_then(|t| t.path.clone()),
            error_level: main.map_or(LogLevel::Info, |t| t.level),
            events: log_path(file.log.events),
            access_log: access_logs(file.log.access_log, &formats, &origin)?.unwrap_or_default(),
        },
        threads: file.threads,
        process: crate::config::Process {
            max_open_files: file.max_open_files,
            priority: match file.priority {
                Some(p) if !(-20..=19).contains(&p) => {
                    return Err(ConfigError::new(
                        origin("priority:"),
                        format!("priority: {p} is not a nice value (-20..19)"),
                    ))
                }
                p => p,
            },
        },
        warnings: Vec::new(),
    })
}

/// The inherited keys as one level gives them.
struct InheritedKeys {
    default_type: Option<String>,
    types: Option<BTreeMap<String, String>>,
    add_headers: Option<Vec<AddHeaderFile>>,
    expires: Option<ExpiresFile>,
    error_pages: Option<Vec<ErrorPageFile>>,
    access: Option<Vec<AccessFile>>,
    client_max_body_size: Option<Size>,
}

/// What a location inherits from its server or enclosing location.
#[derive(Clone, Default)]
struct Inherit {
    default_type: Option<String>,
    types: Option<Arc<super::TypesMap>>,
    add_headers: Vec<AddHeader>,
    expires: Option<Expires>,
    error_pages: Vec<ErrorPage>,
    access: Vec<AccessRule>,
    client_max_body_size: Option<u64>,
}

impl Inherit {
    /// This level's values: its own keys, else the inherited ones.
    fn with(
        &self,
        k: InheritedKeys,
        origin: &dyn Fn(&str) -> Origin,
    ) -> Result<Inherit, ConfigError> {
        let mut out = self.clone();
        if let Some(t) = k.default_type {
            out.default_type = Some(t);
        }
        if let Some(t) = k.types {
            out.types = Some(Arc::new(
                t.into_iter()
                    .map(|(e, m)| (e.to_ascii_lowercase(), m))
                    .collect(),
            ));
        }
        if let Some(h) = k.add_headers {
            out.add_headers = h
                .into_iter()
                .map(|h| AddHeader {
                    name: h.name,
                    value: h.value.0,
                    always: h.always,
                })
                .collect();
        }
        if let Some(e) = k.expires {
            out.expires = Some(e.0);
        }
        if let Some(pages) = k.error_pages {
            out.error_pages = Vec::new();
            for p in pages {
                let bad = |msg: String| ConfigError::new(origin("error_pages"), msg);
                if p.codes.is_empty() {
                    return Err(bad(
                        "error_pages: codes: at least one code is required".into()
                    ));
                }
                if let Some(c) = p
                    .codes
                    .iter()
                    .find(|c| !(300..=599).contains(*c) || **c == 499)
                {
                    return Err(bad(format!(
                        "error_pages: code {c} must be between 300 and 599 (not 499)"
                    )));
                }
                let response = match p.status {
                    None => None,
                    Some(ErrorStatusFile::Code(c)) if (100..=999).contains(&c) => Some(c),
                    Some(ErrorStatusFile::Word(w)) if w == "target" => Some(0),
                    Some(ErrorStatusFile::Code(c)) => {
                        return Err(bad(format!("error_pages: invalid status {c}")))
                    }
                    Some(ErrorStatusFile::Word(w)) => {
                        return Err(bad(format!(
                            "error_pages: invalid status \"{w}\" (expected a code or target)"
                        )))
                    }
                };
                out.error_pages.push(ErrorPage {
                    codes: p.codes,
                    response,
                    target: p.uri.0,
                });
            }
        }
        if let Some(a) = k.access {
            out.access = Vec::new();
            for r in a {
                out.access.push(match (r.allow, r.deny) {
                    (Some(n), None) => AccessRule {
                        allow: true,
                        net: n.0,
                    },
                    (None, Some(n)) => AccessRule {
                        allow: false,
                        net: n.0,
                    },
                    _ => {
                        return Err(ConfigError::new(
                            origin("access"),
                            "access: each rule is one of { allow: NET } or { deny: NET }",
                        ))
                    }
                });
            }
        }
        if let Some(n) = k.client_max_body_size {
            out.client_max_body_size = Some(n.0);
        }
        Ok(out)
    }

    fn apply(&self, loc: &mut Location) {
        loc.default_type = self.default_type.clone();
        loc.types = self.types.clone();
        loc.add_headers = self.add_headers.clone();
        loc.expires = self.expires;
        loc.error_pages = self.error_pages.clone();
        loc.access = self.access.clone();
        loc.client_max_body_size = self.client_max_body_size;
    }
}

/// `rewrites:` / `script:` steps.
fn convert_script(
    ops: Vec<ScriptOpFile>,
    origin: &dyn Fn(&str) -> Origin,
) -> Result<Vec<ScriptOp>, ConfigError> {
    enum Op {
        Rewrite(RewriteFile),
        Return(ReturnFile),
        Set(SetFile),
    }
    let mut out = Vec::new();
    for op in ops {
        let op = match (op.rewrite, op.ret, op.set) {
            (Some(r), None, None) => Op::Rewrite(r),
            (None, Some(r), None) => Op::Return(r),
            (None, None, Some(s)) => Op::Set(s),
            _ => {
                return Err(ConfigError::new(
                    origin("rewrites"),
                    "each rewrite-phase step is one of { rewrite: ... }, { return: ... } or { set: ... }",
                ))
            }
        };
        out.push(match op {
            Op::Rewrite(r) => {
                let here = origin(&r.regex);
                let re = regex::Regex::new(&r.regex).map_err(|e| {
                    ConfigError::new(
                        here.clone(),
                        format!("rewrite: invalid regex \"{}\": {e}", r.regex),
                    )
                })?;
                let replacement = r.replacement.0;
                let flag = match r.flag {
                    Some(RewriteFlagFile::Last) => RewriteFlag::Last,
                    Some(RewriteFlagFile::Break) => RewriteFlag::Break,
                    Some(RewriteFlagFile::Redirect) => RewriteFlag::Redirect,
                    Some(RewriteFlagFile::Permanent) => RewriteFlag::Permanent,
                    // nginx: a replacement that is a URL redirects.
                    None => match replacement.pieces.first() {
                        Some(template::Piece::Lit(s))
                            if s.starts_with("http://") || s.starts_with("https://") =>
                        {
                            RewriteFlag::Redirect
                        }
                        Some(template::Piece::Var(Var::Scheme)) => RewriteFlag::Redirect,
                        _ => RewriteFlag::None,
                    },
                };
                ScriptOp::Rewrite(Rewrite {
                    re,
                    replacement,
                    flag,
                    origin: here,
                })
            }
            Op::Return(r) => ScriptOp::Return(Return {
                code: r.code,
                text: r.text.map(|t| t.0),
            }),
            Op::Set(s) => {
                let name = s.name.strip_prefix('$').unwrap_or(&s.name);
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(ConfigError::new(
                        origin(&s.name),
                        format!("set: invalid variable name \"{}\"", s.name),
                    ));
                }
                if Var::from_name(name).is_some() || PROXY_VARS.contains(&name) {
                    return Err(ConfigError::new(
                        origin(&s.name),
                        format!("set: cannot set built-in variable \"${name}\""),
                    ));
                }
                ScriptOp::Set {
                    name: name.to_string(),
                    value: s.value.0,
                }
            }
        });
    }
    Ok(out)
}

fn convert_location(
    l: LocationFile,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    formats: &Formats,
    origin: &dyn Fn(&str) -> Origin,
    parent: &Inherit,
) -> Result<Location, ConfigError> {
    let mut matchers = Vec::new();
    if let Some(p) = l.exact {
        matchers.push((Match::Exact(p.clone()), p));
    }
    if let Some(p) = l.prefix {
        matchers.push((Match::Prefix(p.clone()), p));
    }
    if let Some(p) = l.prefix_no_regex {
        matchers.push((Match::PrefixNoRegex(p.clone()), p));
    }
    for (src, ci) in [(l.regex, false), (l.iregex, true)] {
        if let Some(r) = src {
            let pattern = if ci { format!("(?i){r}") } else { r.clone() };
            let re = regex::Regex::new(&pattern)
                .map_err(|e| ConfigError::new(origin(&r), format!("invalid regex \"{r}\": {e}")))?;
            matchers.push((
                Match::Regex {
                    re,
                    case_insensitive: ci,
                },
                r,
            ));
        }
    }
    if let Some(n) = l.named {
        matchers.push((Match::Named(n.clone()), n));
    }
    let (matcher, key) = match matchers.len() {
        1 => matchers.remove(0),
        _ => return Err(ConfigError::new(
            origin("locations"),
            "a location needs exactly one of exact, prefix, prefix_no_regex, regex, iregex, named",
        )),
    };
    let here = origin(&key);
    let mut loc = Location::new(matcher, here.clone());
    loc.root = l.root;
    loc.alias = l.alias.map(|a| a.0);
    loc.index = l.index;
    loc.try_files = l.try_files.map(|v| v.into_iter().map(|t| t.0).collect());
    loc.ret = l.ret.map(|r| Return {
        code: r.code,
        text: r.text.map(|t| t.0),
    });
    if let Some(f) = l.fastcgi {
        let upstream = match upstreams.get(&f.pass) {
            Some(u) => u.clone(),
            None => match Addr::parse(&f.pass) {
                Ok(a) => Arc::new(Upstream::single(a)),
                Err(_) => {
                    return Err(ConfigError::new(
                        origin(&format!("pass: {}", f.pass)),
                        format!(
                            "fastcgi.pass: \"{}\" is neither an upstream name nor an address (unix:/path or host:port)",
                            f.pass
                        ),
                    ))
                }
            },
        };
        let mut fc = FastCgi::new(upstream);
        if f.default_params {
            fc.params = default_params();
        }
        for p in f.params.0 {
            fc.params
                .push(Param::new(p.name, p.value.0, p.if_not_empty));
        }
        fc.split_path_info = f.split_path_info.map(|r| r.0);
        fc.index = f.index;
        if let Some(t) = f.connect_timeout {
            fc.connect_timeout = t.0;
        }
        if let Some(t) = f.send_timeout {
            fc.send_timeout = t.0;
        }
        if let Some(t) = f.read_timeout {
            fc.read_timeout = t.0;
        }
        if let Some(b) = f.buffer_size {
            fc.buffer_size = usize::try_from(b.0).unwrap_or(usize::MAX);
        }
        fc.keep_conn = f.keep_conn;
        fc.half_close = f.half_close;
        fc.intercept_errors = f.intercept_errors;
        fc.hide_headers = f.hide_headers;
        fc.pass_headers = f.pass_headers;
        fc.pass_request_headers = f.pass_request_headers;
        loc.fastcgi = Some(Arc::new(fc));
    }
    if let Some(p) = l.proxy {
        let bad = |msg: String| ConfigError::new(origin(&format!("pass: {}", p.pass)), msg);
        let (tls, auth, uri) =
            parse_proxy_pass(&p.pass).map_err(|e| bad(format!("proxy.pass: {e}")))?;
        let upstream = match upstreams.get(&auth) {
            Some(u) => u.clone(),
            None => {
                let has_port =
                    auth.starts_with("unix:") || (auth.contains(':') && !auth.ends_with(']'));
                let with_port = if has_port {
                    auth.clone()
                } else {
                    format!("{auth}:{}", if tls { 443 } else { 80 })
                };
                let a = Addr::parse(&with_port).map_err(|e| bad(format!("proxy.pass: {e}")))?;
                let mut u = Upstream::single(a);
                // $proxy_host: the host as written (nginx drops a default port).
                u.name = auth.clone();
                Arc::new(u)
            }
        };
        let mut hp = HttpProxy::new(upstream);
        hp.tls = tls;
        hp.uri = uri;
        for NameValue { name: k, value: v } in p.set_headers.0 {
            let t = parse_proxy_template_here(&v)
                .map_err(|e| bad(format!("proxy.set_headers.{k}: {e}")))?;
            hp.set_headers.push((k, t));
        }
        if let Some(t) = p.connect_timeout {
            hp.connect_timeout = t.0;
        }
        if let Some(t) = p.send_timeout {
            hp.send_timeout = t.0;
        }
        if let Some(t) = p.read_timeout {
            hp.read_timeout = t.0;
        }
        if let Some(b) = p.buffer_size {
            hp.buffer_size = usize::try_from(b.0).unwrap_or(usize::MAX);
        }
        if let Some(v) = p.http_version {
            hp.http_version = v.0;
        }
        hp.h2 = p.h2;
        hp.ssl_verify = p.ssl_verify;
        hp.ssl_trusted_certificate = p.ssl_trusted_certificate;
        if let Some(n) = &p.ssl_name {
            hp.ssl_name = Some(
                parse_proxy_template_here(n).map_err(|e| bad(format!("proxy.ssl_name: {e}")))?,
            );
        }
        hp.ssl_server_name = p.ssl_server_name;
        hp.hide_headers = p.hide_headers;
        hp.pass_headers = p.pass_headers;
        if let Some(n) = p.next_upstream {
            if let Some(x) = n
                .iter()
                .find(|x| !crate::config::NEXT_UPSTREAM.contains(&x.as_str()))
            {
                return Err(bad(format!(
                    "proxy.next_upstream: unknown condition \"{x}\" (expected {})",
                    crate::config::NEXT_UPSTREAM.join(", ")
                )));
            }
            hp.next_upstream = n;
        }
        hp.intercept_errors = p.intercept_errors;
        if loc.fastcgi.is_some() {
            return Err(bad("a location cannot have both fastcgi and proxy".into()));
        }
        loc.proxy = Some(Arc::new(hp));
    }
    let inh = parent.with(
        InheritedKeys {
            default_type: l.default_type,
            types: l.types,
            add_headers: l.add_headers,
            expires: l.expires,
            error_pages: l.error_pages,
            access: l.access,
            client_max_body_size: l.client_max_body_size,
        },
        origin,
    )?;
    inh.apply(&mut loc);
    loc.script = convert_script(l.script, origin)?;
    loc.internal = l.internal;
    loc.access_log = access_logs(l.access_log, formats, origin)?;
    for child in l.locations {
        loc.locations
            .push(convert_location(child, upstreams, formats, origin, &inh)?);
    }
    Ok(loc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_key() {
        assert_eq!(
            parse_proxy_pass("https://api.internal:8443/v1/"),
            Ok((true, "api.internal:8443".into(), Some("/v1/".into())))
        );
        assert_eq!(
            parse_proxy_pass("http://unix:/run/app.sock:/x"),
            Ok((false, "unix:/run/app.sock".into(), Some("/x".into())))
        );
        assert!(parse_proxy_pass("ftp://x").is_err());
        let text = "upstreams:\n  app:\n    servers: [\"127.0.0.1:3000\"]\nservers:\n  - listen: [8080]\n    locations:\n      - prefix: /\n        proxy:\n          pass: http://app\n          http_version: 1.1\n          set_headers: {X-Real-IP: $remote_addr, Host: $proxy_host}\n      - prefix: /b/\n        proxy:\n          pass: https://example.com\n";
        let c = load_str(text, "t.yaml").expect("config");
        let p = c.servers[0].locations[0].proxy.clone().expect("proxy");
        assert_eq!(p.upstream.name, "app");
        assert_eq!(p.http_version, "1.1");
        assert_eq!(p.set_headers.len(), 2);
        let b = c.servers[0].locations[1].proxy.clone().expect("proxy");
        assert!(b.tls);
        assert_eq!(
            b.upstream.servers[0].addr,
            Addr::Tcp("example.com:443".into())
        );
        let e = load_str(&text.replace("1.1", "2"), "t.yaml").expect_err("bad version");
        assert!(e.to_string().contains("http_version"), "{e}");
    }

    #[test]
    fn process_keys() {
        let site = "servers:\n  - listen: [8080]\n";
        let c = load_str(
            &format!("max_open_files: 65535\npriority: -5\n{site}"),
            "t.yaml",
        )
        .expect("config");
        assert_eq!(c.process.max_open_files, Some(65535));
        assert_eq!(c.process.priority, Some(-5));
        assert_eq!(
            load_str(site, "t.yaml").expect("config").process,
            Default::default()
        );
        let e = load_str(&format!("threads: 1\npriority: 20\n{site}"), "t.yaml")
            .expect_err("not a nice value");
        assert!(e.to_string().starts_with("t.yaml:2: priority: 20"), "{e}");
        let e = load_str(&format!("max_open_files: -1\n{site}"), "t.yaml").expect_err("negative");
        assert_eq!(e.origin.line, 1, "{e}");
    }

    #[test]
    fn errors_name_line_and_field() {
        let text = "servers:\n  - listen: [127.0.0.1:8080]\n    locations:\n      - prefix: /\n        fastcgi:\n          pass: unix:/x.sock\n          read_timeout: 5x\n";
        let e = load_str(text, "t.yaml").expect_err("bad duration");
        assert_eq!(e.origin.line, 7, "{e}");
        assert!(e.to_string().contains("read_timeout"), "{e}");
        assert!(e.to_string().starts_with("t.yaml:7:"), "{e}");

        let e = load_str("servers:\n  - listen: [x]\n", "t.yaml").expect_err("bad listen");
        assert_eq!(e.origin.line, 2, "{e}");

        let e = load_str("servers:\n  - listen: [8080]\n    rooot: /x\n", "t.yaml")
            .expect_err("unknown field");
        assert!(e.to_string().contains("rooot"), "{e}");
        assert_eq!(e.origin.line, 3, "{e}");

        let text = "servers:\n  - listen: [8080]\n    locations:\n      - prefix: /\n        fastcgi:\n          pass: nope\n";
        let e = load_str(text, "t.yaml").expect_err("bad pass");
        assert_eq!(e.origin.line, 6, "{e}");
    }

    #[test]
    fn nginx_feature_keys() {
        let text = r#"
servers:
  - listen: [8080]
    rewrites:
      - set: { name: $v, value: "x-$uri" }
      - rewrite: { regex: '^/a$', replacement: "http://example.test/$v" }
    serve_unmatched: true
    try_files: [$uri, =404]
    default_type: text/plain
    types: { HTML: text/html }
    access: [{ allow: 127.0.0.1 }, { deny: all }]
    error_pages: [{ codes: [404], uri: /404.html }, { codes: [500], uri: "@x", status: target }]
    locations:
      - prefix: /
        expires: -1
        client_max_body_size: 4k
        locations:
          - prefix: /in/
            access: []
            internal: true
            script:
              - return: { code: 200, text: "$v" }
            fastcgi:
              pass: unix:/x.sock
              default_params: false
              params:
                - { name: B, value: $v }
                - { name: A, value: $https, if_not_empty: true }
      - named: "@x"
        add_headers: [{ name: X, value: y, always: true }]
        proxy:
          pass: http://127.0.0.1:3000
          set_headers: [{ name: B, value: $v }, { name: A, value: $proxy_host }]
"#;
        let c = load_str(text, "t.yaml").expect("config");
        let s = &c.servers[0];
        assert!(matches!(
            &s.rewrites[1],
            ScriptOp::Rewrite(r) if r.flag == RewriteFlag::Redirect
        ));
        let base = s.base.as_deref().expect("serve_unmatched");
        assert_eq!(base.try_files.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            base.types
                .as_ref()
                .and_then(|t| t.get("html"))
                .map(String::as_str),
            Some("text/html")
        );
        let root = &s.locations[0];
        assert_eq!(root.expires, Some(Expires::After(-1)));
        assert_eq!(root.access.len(), 2, "inherited from the server");
        assert_eq!(root.error_pages[1].response, Some(0));
        assert_eq!(root.default_type.as_deref(), Some("text/plain"));
        let inner = &root.locations[0];
        assert!(inner.access.is_empty() && inner.internal);
        assert_eq!(
            inner.client_max_body_size,
            Some(4096),
            "from the parent location"
        );
        let fc = inner.fastcgi.as_ref().expect("fastcgi");
        let names: Vec<&str> = fc.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["B", "A"], "list order kept");
        assert!(fc.params[1].if_not_empty);
        assert_eq!(
            fc.params[0].value.pieces,
            vec![template::Piece::Var(Var::User("v".into()))]
        );
        let hp = s.locations[1].proxy.as_ref().expect("proxy");
        assert_eq!(hp.set_headers[0].0, "B");
        assert!(s.locations[1].add_headers[0].always);
    }

    #[test]
    fn log_keys() {
        let text = r#"
log:
  error_log: { path: /tmp/e.log, level: warn }
  access_log: /tmp/a.log
  log_formats:
    main: '$remote_addr $status $why502_cause $who'
    js: { format: '{"u":"$uri"}', escape: json }
servers:
  - listen: [8080]
    rewrites: [{ set: { name: who, value: x } }]
    access_log:
      - { path: /tmp/s.log, format: main }
      - { path: /tmp/j.log, format: js, if: $arg_log }
      - /tmp/w.log
    error_log: [/tmp/s-err.log, { path: stderr, level: crit }]
    locations:
      - prefix: /
        access_log: off
      - prefix: /c/
        access_log: { path: /tmp/c.log, format: Combined }
  - listen: [8081]
"#;
        let c = load_str(text, "t.yaml").expect("config");
        assert_eq!(
            c.logging.error_log.as_deref(),
            Some(Path::new("/tmp/e.log"))
        );
        assert_eq!(c.logging.error_level, LogLevel::Warn);
        let a = &c.logging.access_log;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].format.name, "why502", "a bare path: why502's format");
        let s = &c.servers[0];
        let sl = s.access_log.as_ref().expect("server logs");
        let names: Vec<&str> = sl.iter().map(|l| l.format.name.as_str()).collect();
        assert_eq!(names, ["main", "js", "why502"]);
        assert_eq!(sl[1].format.escape, LogEscape::Json);
        assert_eq!(
            sl[1].condition.as_ref().map(|c| c.source.as_str()),
            Some("$arg_log")
        );
        assert_eq!(
            s.error_log,
            [
                ErrorLogTarget {
                    path: Some("/tmp/s-err.log".into()),
                    level: LogLevel::Info
                },
                ErrorLogTarget {
                    path: None,
                    level: LogLevel::Crit
                }
            ]
        );
        assert_eq!(s.locations[0].access_log.as_ref().map(Vec::len), Some(0));
        let cl = s.locations[1].access_log.as_ref().expect("c");
        assert!(cl[0].format.builtin && cl[0].format.name == "combined");
        assert!(c.servers[1].access_log.is_none() && c.servers[1].error_log.is_empty());
        // Defaults: no access log, stderr at info (client aborts included).
        let c = load_str("servers:\n  - listen: [8080]\n", "t.yaml").expect("config");
        assert!(c.logging.access_log.is_empty() && c.logging.error_log.is_none());
        assert_eq!(c.logging.error_level, LogLevel::Info);
    }

    #[test]
    fn log_key_errors() {
        let base = "servers:\n  - listen: [8080]\n";
        for (extra, needle, line) in [
            (
                "    access_log: { path: /x, format: nope }\n",
                "unknown log format \"nope\"",
                3,
            ),
            (
                "    error_log: { path: /x, level: loud }\n",
                "invalid log level",
                3,
            ),
            (
                "    access_log: [off, /x]\n",
                "\"off\" cannot be combined",
                3,
            ),
            (
                "log:\n  log_formats:\n    combined: '$uri'\n",
                "built in",
                5,
            ),
            (
                "log:\n  log_formats:\n    a: '$nope'\n",
                "unknown \"nope\" variable",
                5,
            ),
            (
                "log:\n  log_formats:\n    a: { format: '$uri', escape: xml }\n",
                "unknown escape",
                5,
            ),
            (
                "    access_log: { path: /x, format: combined, if: '$nope' }\n",
                "unknown \"nope\" variable",
                3,
            ),
        ] {
            let e = load_str(&format!("{base}{extra}"), "t.yaml").expect_err(extra);
            assert!(e.to_string().contains(needle), "{extra}: {e}");
            assert_eq!(e.origin.line, line, "{extra}: {e}");
        }
    }

    #[test]
    fn nginx_feature_key_errors() {
        let base = "servers:\n  - listen: [8080]\n";
        for (extra, needle) in [
            ("    try_files: [$uri]\n", "serve_unmatched"),
            (
                "    rewrites: [{ set: { name: uri, value: x } }]\n",
                "built-in",
            ),
            (
                "    rewrites: [{ set: { name: a, value: x }, return: { code: 1 } }]\n",
                "one of",
            ),
            ("    access: [{ allow: nope }]\n", "invalid network"),
            (
                "    error_pages: [{ codes: [200], uri: /x }]\n",
                "between 300 and 599",
            ),
            (
                "    error_pages: [{ codes: [404], uri: /x, status: same }]\n",
                "target",
            ),
            ("    expires: soon\n", "expires"),
            ("    add_headers: [{ name: X, value: $nope }]\n", "nope"),
            (
                "    rewrites: [{ rewrite: { regex: '(', replacement: x } }]\n",
                "regex",
            ),
        ] {
            let e = load_str(&format!("{base}{extra}"), "t.yaml").expect_err(extra);
            assert!(e.to_string().contains(needle), "{extra}: {e}");
            assert!(e.origin.line >= 2, "{extra}: {e}");
        }
    }
}
