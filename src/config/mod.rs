//! The internal configuration model.
//!
//! Two front ends produce it: the native YAML format ([`yaml`]) and nginx.conf
//! (`crate::nginx`). Everything at run time reads only this model, so both
//! front ends behave the same by construction.

pub mod template;
pub mod units;
pub mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use template::{Template, Var};

pub use crate::accesslog::{Escape as LogEscape, LogFormat};

/// `types` (extension → MIME type): looked up on every static response with
/// a short key, so hashed with FNV (SipHash costs more than the lookup; the
/// keys come from the configuration, not from clients).
pub type TypesMap =
    std::collections::HashMap<String, String, std::hash::BuildHasherDefault<fnv::FnvHasher>>;

/// Where a piece of configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            f.write_str(&self.file)
        }
    }
}

/// A configuration error: names the file, the line and what is wrong.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub origin: Origin,
    pub message: String,
}

impl ConfigError {
    pub fn new(origin: Origin, message: impl Into<String>) -> Self {
        ConfigError {
            origin,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (or `<command line>` / `<embedded>`).
    pub source: String,
    pub servers: Vec<Server>,
    pub diagnostics: Diagnostics,
    pub logging: Logging,
    /// Worker threads (0 = number of CPUs).
    pub threads: usize,
    /// The process's open-files limit and priority.
    pub process: Process,
    /// Directives or keys that were read but not supported (reported by `check`).
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// One server on one address with nginx's defaults (index.php then
    /// index.html, client_max_body_size 1m, client_body_timeout 60s), for the
    /// one-liner and the demo.
    pub fn single_server(
        source: &str,
        addr: SocketAddr,
        root: PathBuf,
        locations: Vec<Location>,
    ) -> Config {
        let origin = Origin {
            file: source.to_string(),
            line: 0,
        };
        Config {
            source: source.to_string(),
            servers: vec![Server {
                listen: vec![Listen {
                    addr,
                    default_server: true,
                    tls: None,
                    http2: false,
                }],
                names: Vec::new(),
                root,
                index: vec!["index.php".into(), "index.html".into()],
                locations,
                client_max_body_size: 1 << 20,
                client_body_timeout: Duration::from_secs(60),
                keepalive_requests: KEEPALIVE_REQUESTS,
                keepalive_timeout: KEEPALIVE_TIMEOUT,
                origin,
                rewrites: Vec::new(),
                base: None,
                absolute_redirect: false,
                access_log: None,
                error_log: Vec::new(),
            }],
            diagnostics: Diagnostics::default(),
            logging: Logging::default(),
            threads: 0,
            process: Process::default(),
            warnings: Vec::new(),
        }
    }
}

/// Set once at startup, before the worker threads start (nginx's
/// `worker_rlimit_nofile` and `worker_priority`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    /// `RLIMIT_NOFILE`, soft and hard, as nginx sets it. `None`: the soft
    /// limit is raised to the hard one (often 1,024 against 524,288 under
    /// systemd), which nginx does not do: every proxied request holds two
    /// descriptors, and running out turns requests into errors.
    pub max_open_files: Option<u64>,
    /// The nice value of every thread (the kernel clamps it to -20..19).
    /// `None`: inherited.
    pub priority: Option<i32>,
}

/// Where logs go. `None` = standard error.
#[derive(Debug, Clone)]
pub struct Logging {
    /// nginx-format error log (the main level: what no server overrides).
    pub error_log: Option<PathBuf>,
    /// Lines less severe than this are not written to `error_log`.
    pub error_level: LogLevel,
    /// Structured JSON events (one line per failure).
    pub events: Option<PathBuf>,
    /// The http-level `access_log`s: servers and locations without an
    /// `access_log` of their own write these (empty = none).
    pub access_log: Vec<AccessLog>,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            error_log: None,
            // why502's default: every diagnosed failure, client aborts included.
            error_level: LogLevel::Info,
            events: None,
            access_log: Vec::new(),
        }
    }
}

/// nginx's error-log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Emerg,
    Alert,
    Crit,
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

impl LogLevel {
    pub const ALL: [LogLevel; 8] = [
        LogLevel::Emerg,
        LogLevel::Alert,
        LogLevel::Crit,
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Notice,
        LogLevel::Info,
        LogLevel::Debug,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Emerg => "emerg",
            LogLevel::Alert => "alert",
            LogLevel::Crit => "crit",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Notice => "notice",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }

    pub fn parse(s: &str) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// One `error_log` of a server: a file (None = standard error) and the
/// least severe level written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLogTarget {
    pub path: Option<PathBuf>,
    pub level: LogLevel,
}

/// One `access_log path [format] [if=condition]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub path: PathBuf,
    pub format: Arc<LogFormat>,
    /// `if=`: the line is skipped when this renders empty or `0`.
    pub condition: Option<Arc<LogFormat>>,
}

#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// Send the cause header, Proxy-Status and the diagnostic error page.
    pub enabled: bool,
    /// Clients that may see details (socket paths, stderr text, file paths).
    pub trusted: Vec<IpNet>,
    /// Name of the header carrying the cause code.
    pub cause_header: String,
    /// Name of the header carrying the request id.
    pub request_id_header: String,
}

impl Default for Diagnostics {
    fn default() -> Self {
        Diagnostics {
            enabled: true,
            trusted: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .iter()
            .filter_map(|s| IpNet::parse(s))
            .collect(),
            cause_header: CAUSE_HEADER.into(),
            request_id_header: REQUEST_ID_HEADER.into(),
        }
    }
}

/// An IP network (CIDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::*;
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map(V4).unwrap_or(V6(v6)),
            v4 => v4,
        };
        match (self.addr, ip) {
            (V4(n), V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (V6(n), V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub default_server: bool,
    pub tls: Option<TlsFiles>,
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The diagnosis headers' default names.
pub const CAUSE_HEADER: &str = "Why502-Cause";
pub const REQUEST_ID_HEADER: &str = "Why502-Request-Id";

/// nginx's default `keepalive_requests`.
pub const KEEPALIVE_REQUESTS: u64 = 1000;

/// nginx's default `keepalive_timeout`.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<Listen>,
    /// server_name entries: exact, `*.example.com`, `example.*`, or `~regex`.
    pub names: Vec<String>,
    pub root: PathBuf,
    pub index: Vec<String>,
    pub locations: Vec<Location>,
    pub client_max_body_size: u64,
    pub client_body_timeout: Duration,
    /// nginx `keepalive_requests`: requests on one client connection, after
    /// which it is closed (HTTP/1: `Connection: close` on the last one;
    /// HTTP/2: GOAWAY). Default 1000.
    pub keepalive_requests: u64,
    /// nginx `keepalive_timeout`: how long a client connection is kept open
    /// waiting for its next request (HTTP/2: without streams) after a
    /// request to this server; zero turns keep-alive off. Default 75 s.
    pub keepalive_timeout: Duration,
    pub origin: Origin,
    /// Server-level rewrite-phase directives (`rewrite`, `return`, `set` in
    /// `server {}`), run before a location is searched (nginx front end).
    pub rewrites: Vec<ScriptOp>,
    /// The server's own settings as a location: used when no location
    /// matches (nginx then serves with the server-level config).
    pub base: Option<Box<Location>>,
    /// Make redirects to `/path` absolute (`http://host:port/path`) like
    /// nginx's `absolute_redirect on` (the nginx front end's default).
    pub absolute_redirect: bool,
    /// The server's `access_log`s: None = the http level's; empty = off.
    pub access_log: Option<Vec<AccessLog>>,
    /// The server's `error_log`s (empty = the main error log).
    pub error_log: Vec<ErrorLogTarget>,
}

#[derive(Debug, Clone)]
pub enum Match {
    /// `location = /x`
    Exact(String),
    /// `location /x`
    Prefix(String),
    /// `location ^~ /x`
    PrefixNoRegex(String),
    /// `location ~ re` / `location ~* re`
    Regex {
        re: regex::Regex,
        case_insensitive: bool,
    },
    /// `location @name`
    Named(String),
}

#[derive(Debug, Clone)]
pub struct Location {
    pub matcher: Match,
    pub root: Option<PathBuf>,
    pub alias: Option<Template>,
    pub index: Option<Vec<String>>,
    pub try_files: Option<Vec<Template>>,
    pub ret: Option<Return>,
    pub fastcgi: Option<Arc<FastCgi>>,
    /// `proxy_pass` to an HTTP backend.
    pub proxy: Option<Arc<HttpProxy>>,
    pub locations: Vec<Location>,
    pub origin: Origin,
    /// Rewrite-phase directives in order (`rewrite`, `return`, `set`).
    pub script: Vec<ScriptOp>,
    /// `error_page` entries (resolved with inheritance).
    pub error_pages: Vec<ErrorPage>,
    /// `add_header` entries (resolved with inheritance).
    pub add_headers: Vec<AddHeader>,
    pub expires: Option<Expires>,
    /// `default_type` (None = the YAML front end's guess).
    pub default_type: Option<String>,
    /// `types` (extension, lower-case → MIME type); None = guess by extension.
    pub types: Option<Arc<TypesMap>>,
    /// `allow` / `deny` in order; empty = everyone.
    pub access: Vec<AccessRule>,
    /// Per-location `client_max_body_size` (None = the server's).
    pub client_max_body_size: Option<u64>,
    /// `internal`: only reachable through internal redirects.
    pub internal: bool,
    /// The location's `access_log`s: None = the enclosing level's; empty = off.
    pub access_log: Option<Vec<AccessLog>>,
}

impl Location {
    pub fn new(matcher: Match, origin: Origin) -> Location {
        Location {
            matcher,
            root: None,
            alias: None,
            index: None,
            try_files: None,
            ret: None,
            fastcgi: None,
            proxy: None,
            locations: Vec::new(),
            origin,
            script: Vec::new(),
            error_pages: Vec::new(),
            add_headers: Vec::new(),
            expires: None,
            default_type: None,
            types: None,
            access: Vec::new(),
            client_max_body_size: None,
            internal: false,
            access_log: None,
        }
    }
}

/// One rewrite-module directive, executed in configuration order.
#[derive(Debug, Clone)]
pub enum ScriptOp {
    Rewrite(Rewrite),
    Return(Return),
    /// `set $name value`.
    Set {
        name: String,
        value: Template,
    },
}

/// `rewrite regex replacement [flag]`.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub re: regex::Regex,
    pub replacement: Template,
    pub flag: RewriteFlag,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteFlag {
    /// No flag: continue with the next directive, then search a location.
    None,
    Last,
    Break,
    /// 302 (also implied by a replacement starting with `http://`/`https://`).
    Redirect,
    /// 301.
    Permanent,
}

/// `error_page code... [=[response]] uri`.
#[derive(Debug, Clone)]
pub struct ErrorPage {
    pub codes: Vec<u16>,
    /// None = keep the error code; Some(0) = `=` (the target's status);
    /// Some(n) = `=n`.
    pub response: Option<u16>,
    /// A URI (`/50x.html`), a named location (`@x`) or a URL (redirect).
    pub target: Template,
}

/// `add_header name value [always]`.
#[derive(Debug, Clone)]
pub struct AddHeader {
    pub name: String,
    pub value: Template,
    pub always: bool,
}

/// `expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expires {
    Off,
    Epoch,
    Max,
    /// Seconds from now (negative = `Cache-Control: no-cache`).
    After(i64),
}

/// `allow` / `deny`; `net: None` = `all`.
#[derive(Debug, Clone)]
pub struct AccessRule {
    pub allow: bool,
    pub net: Option<IpNet>,
}

#[derive(Debug, Clone)]
pub struct Return {
    pub code: u16,
    pub text: Option<Template>,
}

/// A `fastcgi_pass` and everything that goes with it.
#[derive(Debug, Clone)]
pub struct FastCgi {
    pub upstream: Arc<Upstream>,
    /// Params in order (nginx sends them in configuration order).
    pub params: Vec<Param>,
    pub split_path_info: Option<regex::Regex>,
    pub index: Option<String>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    /// The response header block (with record overhead) must fit in this.
    pub buffer_size: usize,
    pub keep_conn: bool,
    /// Without `keep_conn`: shut down the connection's writing side once the
    /// whole request is sent (why502's own; nginx has no such directive).
    /// PHP-FPM, after its response, waits for the web server to close the
    /// connection (`fcgi_close`: `shutdown`, then `recv` until end of file);
    /// an end of file already there spares each worker that sleep and
    /// wakeup. Only for PHP-FPM (and `php-cgi -b`): other FastCGI servers
    /// (Go's `net/http/fcgi`, flup) may take the end of file for an abort.
    pub half_close: bool,
    pub intercept_errors: bool,
    pub hide_headers: Vec<String>,
    pub pass_headers: Vec<String>,
    /// Send request headers as HTTP_* params (fastcgi_pass_request_headers).
    pub pass_request_headers: bool,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub value: Template,
    pub if_not_empty: bool,
    /// The pair's start on the wire, made once (see
    /// [`params::pair_head`](crate::fastcgi::params::pair_head)).
    pub head: Box<[u8]>,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Template, if_not_empty: bool) -> Param {
        let name = name.into();
        let head = crate::fastcgi::params::pair_head(name.as_bytes()).into();
        Param {
            name,
            value,
            if_not_empty,
            head,
        }
    }
}

/// Debian's `fastcgi.conf` (fastcgi_params plus SCRIPT_FILENAME first).
pub const FASTCGI_CONF: &[(&str, &str)] = &[
    ("SCRIPT_FILENAME", "$document_root$fastcgi_script_name"),
    ("QUERY_STRING", "$query_string"),
    ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"),
    ("CONTENT_LENGTH", "$content_length"),
    ("SCRIPT_NAME", "$fastcgi_script_name"),
    ("REQUEST_URI", "$request_uri"),
    ("DOCUMENT_URI", "$document_uri"),
    ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("REQUEST_SCHEME", "$scheme"),
    ("HTTPS", "$https"),
    ("GATEWAY_INTERFACE", "CGI/1.1"),
    ("SERVER_SOFTWARE", "nginx/$nginx_version"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("REMOTE_USER", "$remote_user"),
    ("SERVER_ADDR", "$server_addr"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_NAME", "$server_name"),
    ("REDIRECT_STATUS", "200"),
];

/// The params Debian's `fastcgi.conf` sets (HTTPS only if not empty).
pub fn default_params() -> Vec<Param> {
    FASTCGI_CONF
        .iter()
        .map(|(n, v)| {
            Param::new(
                *n,
                Template::parse(v).unwrap_or_else(|_| Template::literal(v)),
                *n == "HTTPS",
            )
        })
        .collect()
}

impl FastCgi {
    pub fn new(upstream: Arc<Upstream>) -> FastCgi {
        FastCgi {
            upstream,
            params: Vec::new(),
            split_path_info: None,
            index: None,
            connect_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            buffer_size: 4096,
            keep_conn: false,
            half_close: false,
            intercept_errors: false,
            hide_headers: Vec::new(),
            pass_headers: Vec::new(),
            pass_request_headers: true,
        }
    }
}

impl FastCgi {
    /// A PHP-FPM pass as Debian's `snippets/fastcgi-php.conf` sets it up:
    /// `fastcgi.conf`'s params plus PATH_INFO, `fastcgi_split_path_info
    /// ^(.+?\.php)(/.*)$`, `fastcgi_index index.php`.
    pub fn php(upstream: Arc<Upstream>) -> FastCgi {
        let mut fc = FastCgi::new(upstream);
        fc.params = default_params();
        fc.params.push(Param::new(
            "PATH_INFO",
            Template {
                pieces: vec![template::Piece::Var(Var::FastcgiPathInfo)],
            },
            false,
        ));
        fc.split_path_info = regex::Regex::new(r"^(.+?\.php)(/.*)$").ok();
        fc.index = Some("index.php".into());
        fc
    }
}

/// The standard PHP site's locations: `location / { try_files $uri $uri/
/// /index.php?$args; }` and `location ~ \.php(/|$) { fastcgi_pass ...; }`.
pub fn php_site_locations(fc: FastCgi, origin: &Origin) -> Vec<Location> {
    let mut front = Location::new(Match::Prefix("/".into()), origin.clone());
    front.try_files = Some(
        ["$uri", "$uri/", "/index.php?$args"]
            .iter()
            .map(|s| Template::parse(s).unwrap_or_else(|_| Template::literal(s)))
            .collect(),
    );
    let mut locations = vec![front];
    if let Ok(re) = regex::Regex::new(r"\.php(/|$)") {
        let mut php = Location::new(
            Match::Regex {
                re,
                case_insensitive: false,
            },
            origin.clone(),
        );
        php.fastcgi = Some(Arc::new(fc));
        locations.push(php);
    }
    locations
}

/// An upstream address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Unix(PathBuf),
    /// `host:port` (host may be a name, resolved at connect time).
    Tcp(String),
}

impl Addr {
    /// Parses `unix:/path`, `host:port`, `[v6]:port`.
    pub fn parse(s: &str) -> Result<Addr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("empty unix socket path".into());
            }
            return Ok(Addr::Unix(PathBuf::from(p)));
        }
        let s = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("fastcgi://"))
            .unwrap_or(s);
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Addr::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "invalid upstream address \"{s}\": expected unix:/path or host:port"
            )),
        }
    }
}

impl fmt::Display for Addr {
    /// nginx's peer name: `unix:/path` or `host:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Tcp(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamServer {
    pub addr: Addr,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub backup: bool,
}

impl UpstreamServer {
    pub fn new(addr: Addr) -> Self {
        UpstreamServer {
            addr,
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            backup: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    /// Idle connections kept per worker (nginx `keepalive N`); 0 = none.
    pub keepalive: usize,
    /// How long an idle connection is kept (nginx upstream `keepalive_timeout`, 60s).
    pub keepalive_timeout: Duration,
}

impl Upstream {
    /// An anonymous upstream with one server (`fastcgi_pass unix:/x`).
    pub fn single(addr: Addr) -> Upstream {
        Upstream {
            name: addr.to_string(),
            servers: vec![UpstreamServer::new(addr)],
            keepalive: 32,
            keepalive_timeout: crate::upstream::IDLE_TIMEOUT,
        }
    }
}

/// `proxy_next_upstream` / `next_upstream` conditions (nginx's names).
pub const NEXT_UPSTREAM: &[&str] = &[
    "error",
    "timeout",
    "invalid_header",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_403",
    "http_404",
    "http_429",
    "non_idempotent",
    "off",
];

/// A `proxy_pass` to an HTTP backend and everything that goes with it.
#[derive(Debug, Clone)]
pub struct HttpProxy {
    pub upstream: Arc<Upstream>,
    /// `https://` backends.
    pub tls: bool,
    /// URI part of `proxy_pass http://host/path` (replaces the location prefix), if any.
    pub uri: Option<String>,
    /// `proxy_set_header` in order (an empty value removes the header).
    pub set_headers: Vec<(String, Template)>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    /// Response header section limit (proxy_buffer_size).
    pub buffer_size: usize,
    /// `proxy_http_version`: "1.0" (nginx default) or "1.1".
    pub http_version: String,
    /// Use HTTP/2 to the backend.
    pub h2: bool,
    pub ssl_verify: bool,
    pub ssl_trusted_certificate: Option<PathBuf>,
    pub ssl_name: Option<Template>,
    pub ssl_server_name: bool,
    pub hide_headers: Vec<String>,
    pub pass_headers: Vec<String>,
    /// `proxy_next_upstream` conditions (nginx default: error timeout).
    pub next_upstream: Vec<String>,
    pub intercept_errors: bool,
}

impl HttpProxy {
    pub fn new(upstream: Arc<Upstream>) -> HttpProxy {
        HttpProxy {
            upstream,
            tls: false,
            uri: None,
            set_headers: Vec::new(),
            connect_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            buffer_size: 4096,
            http_version: "1.0".into(),
            h2: false,
            ssl_verify: false,
            ssl_trusted_certificate: None,
            ssl_name: None,
            ssl_server_name: false,
            hide_headers: Vec::new(),
            pass_headers: Vec::new(),
            next_upstream: vec!["error".into(), "timeout".into()],
            intercept_errors: false,
        }
    }
}
