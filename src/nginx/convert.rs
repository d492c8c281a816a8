//! nginx.conf → the internal model ([`crate::config::Config`]).
//!
//! The second half of the nginx front end: takes the [`Directive`] tree the
//! parser produced and gives directives their meaning, with nginx's
//! inheritance (http → server → location → nested location: a level that
//! sets a value overrides it, a level that defines any element of an array
//! directive — `fastcgi_param`, `add_header`, `error_page`, `allow`/`deny`,
//! `fastcgi_hide_header`... — replaces the inherited list).
//!
//! Every directive is either understood, reported as a warning (it has no
//! effect on behaviour why502 could get wrong: `gzip`, `worker_*`, TLS tuning,
//! buffers...) or rejected with its file:line (it changes behaviour and
//! why502 does not implement it: `if`, `map`, `auth_basic`, caches...).
//! docs/nginx-compat.md lists them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::units::{parse_duration, parse_size};
use crate::config::{
    AccessLog, AccessRule, AddHeader, Addr, Config, ConfigError, Diagnostics, ErrorLogTarget,
    ErrorPage, Expires, FastCgi, HttpProxy, IpNet, Listen, Location, LogEscape, LogFormat,
    LogLevel, Logging, Match, Origin, Param, Return, Rewrite, RewriteFlag, ScriptOp, Server,
    Template, TlsFiles, Upstream, UpstreamServer,
};

use crate::config::yaml;

use super::Directive;

/// Where relative paths (`root html;`, log files) are resolved: nginx's
/// `--prefix` (Debian: `/usr/share/nginx`).
pub const DEFAULT_PREFIX: &str = "/usr/share/nginx";

/// Reads an nginx configuration file (with its includes) and converts it.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load_file_with_prefix(path, Path::new(DEFAULT_PREFIX))
}

/// Like [`load_file`] with an explicit prefix (nginx `-p`).
pub fn load_file_with_prefix(path: &Path, prefix: &Path) -> Result<Config, ConfigError> {
    let tree = super::parse_file(path).map_err(|e| {
        ConfigError::new(
            Origin {
                file: e.file.display().to_string(),
                line: e.line,
            },
            e.message,
        )
    })?;
    convert(&tree, &path.display().to_string(), prefix)
}

/// Converts a parsed directive tree. `source` names the configuration.
pub fn convert(tree: &[Directive], source: &str, prefix: &Path) -> Result<Config, ConfigError> {
    let mut cv = Cv {
        warnings: Vec::new(),
        upstreams: HashMap::new(),
        user_vars: HashSet::new(),
        prefix: prefix.to_path_buf(),
        http_access_log: Vec::new(),
        error_log: None,
        error_level: None,
        formats: HashMap::new(),
    };
    for w in super::walk(tree) {
        if w.directive.name == "set" {
            if let Some(n) = w.directive.arg(0).and_then(|a| a.strip_prefix('$')) {
                cv.user_vars.insert(n.to_string());
            }
        }
    }
    // A whole nginx.conf has `http {}`; a sites-enabled file is the inside of one.
    let has_http = tree.iter().any(|d| d.name == "http");
    let has_server = tree
        .iter()
        .any(|d| d.name == "server" || d.name == "upstream");
    let mut servers = Vec::new();
    let mut threads = 0;
    let mut process = crate::config::Process::default();
    if has_http || !has_server {
        for d in tree {
            match d.name.as_str() {
                "http" => {
                    let mut s = cv.http(d.children())?;
                    servers.append(&mut s);
                }
                "error_log" => cv.main_error_log(d)?,
                "worker_processes" => threads = worker_processes(d)?,
                "worker_rlimit_nofile" => process.max_open_files = Some(rlimit_nofile(d)?),
                "worker_priority" => process.priority = Some(priority(d)?),
                "events" => cv.warn(d, "ignored (why502 uses its own worker threads)"),
                n if MAIN_HARMLESS.contains(&n) => cv.warn(d, "ignored"),
                "stream" | "mail" => return Err(err(d, "is not supported")),
                _ => return Err(cv.unknown(d, "main")),
            }
        }
    } else {
        servers = cv.http(tree)?;
    }
    if servers.is_empty() {
        return Err(ConfigError::new(
            Origin {
                file: source.to_string(),
                line: 0,
            },
            "no server blocks: nothing to serve",
        ));
    }
    Ok(Config {
        source: source.to_string(),
        servers,
        diagnostics: Diagnostics::default(),
        logging: Logging {
            error_log: cv.error_log.clone(),
            // nginx's default level.
            error_level: cv.error_level.unwrap_or(LogLevel::Error),
            events: None,
            access_log: std::mem::take(&mut cv.http_access_log),
        },
        threads,
        process,
        warnings: cv.warnings,
    })
}

/// `worker_rlimit_nofile N`.
fn rlimit_nofile(d: &Directive) -> Result<u64, ConfigError> {
    match (d.args.len(), d.arg(0).map(str::parse::<u64>)) {
        (1, Some(Ok(n))) => Ok(n),
        (1, _) => Err(err(d, "invalid number")),
        _ => Err(err(d, "invalid number of arguments")),
    }
}

/// `worker_priority N`: a nice value, `-5` or `+5`, clamped to -20..19
/// as `setpriority` clamps what nginx passes it.
fn priority(d: &Directive) -> Result<i32, ConfigError> {
    let a = match (d.args.len(), d.arg(0)) {
        (1, Some(a)) => a,
        _ => return Err(err(d, "invalid number of arguments")),
    };
    let (neg, digits) = match a.as_bytes().first() {
        Some(b'-') => (true, &a[1..]),
        Some(b'+') => (false, &a[1..]),
        _ => (false, a),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(d, "invalid number"));
    }
    // Beyond the kernel's range it means the same as the range's end.
    let n = digits.parse::<i32>().unwrap_or(i32::MAX).min(40);
    Ok(if neg { -n } else { n }.clamp(-20, 19))
}

/// `worker_processes N | auto`: why502's worker threads (0 = one per CPU,
/// as nginx's `auto`).
fn worker_processes(d: &Directive) -> Result<usize, ConfigError> {
    match d.arg(0) {
        Some("auto") => Ok(0),
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(err(d, format!("invalid value \"{n}\""))),
        },
        None => Err(err(d, "invalid number of arguments")),
    }
}

/// Main-context directives that do not change request handling.
const MAIN_HARMLESS: &[&str] = &[
    "user",
    "worker_cpu_affinity",
    "worker_shutdown_timeout",
    "worker_rlimit_core",
    "working_directory",
    "pid",
    "pcre_jit",
    "load_module",
    "daemon",
    "master_process",
    "timer_resolution",
    "env",
    "lock_file",
    "thread_pool",
    "ssl_engine",
];

/// http/server/location directives that do not change what a client gets
/// back (performance, TLS tuning, logging details): reported, ignored.
const HARMLESS: &[&str] = &[
    "sendfile",
    "sendfile_max_chunk",
    "tcp_nopush",
    "tcp_nodelay",
    "keepalive_timeout",
    "keepalive_requests",
    "keepalive_time",
    "types_hash_max_size",
    "types_hash_bucket_size",
    "server_names_hash_bucket_size",
    "server_names_hash_max_size",
    "variables_hash_max_size",
    "variables_hash_bucket_size",
    "map_hash_max_size",
    "map_hash_bucket_size",
    "proxy_headers_hash_max_size",
    "proxy_headers_hash_bucket_size",
    "server_tokens",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_prefer_server_ciphers",
    "ssl_session_cache",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "ssl_dhparam",
    "ssl_ecdh_curve",
    "ssl_stapling",
    "ssl_stapling_verify",
    "ssl_trusted_certificate",
    "ssl_buffer_size",
    "ssl_early_data",
    "ssl_conf_command",
    "gzip",
    "gzip_vary",
    "gzip_proxied",
    "gzip_comp_level",
    "gzip_buffers",
    "gzip_http_version",
    "gzip_types",
    "gzip_min_length",
    "gzip_disable",
    "gzip_static",
    "log_not_found",
    "log_subrequest",
    "open_log_file_cache",
    "open_file_cache",
    "open_file_cache_valid",
    "open_file_cache_min_uses",
    "open_file_cache_errors",
    "client_body_buffer_size",
    "client_header_buffer_size",
    "large_client_header_buffers",
    "client_header_timeout",
    "client_body_temp_path",
    "client_body_in_file_only",
    "send_timeout",
    "reset_timedout_connection",
    "lingering_close",
    "lingering_time",
    "lingering_timeout",
    "output_buffers",
    "postpone_output",
    "aio",
    "directio",
    "read_ahead",
    "resolver",
    "resolver_timeout",
    "fastcgi_buffers",
    "fastcgi_busy_buffers_size",
    "fastcgi_temp_file_write_size",
    "fastcgi_max_temp_file_size",
    "fastcgi_temp_path",
    "fastcgi_buffering",
    "fastcgi_request_buffering",
    "fastcgi_ignore_client_abort",
    "fastcgi_next_upstream",
    "fastcgi_next_upstream_tries",
    "fastcgi_next_upstream_timeout",
    "fastcgi_socket_keepalive",
    "fastcgi_force_ranges",
    "fastcgi_limit_rate",
    "proxy_buffers",
    "proxy_busy_buffers_size",
    "proxy_temp_file_write_size",
    "proxy_max_temp_file_size",
    "proxy_temp_path",
    "uwsgi_temp_path",
    "scgi_temp_path",
    "proxy_buffering",
    "proxy_request_buffering",
    "proxy_ignore_client_abort",
    "proxy_next_upstream_tries",
    "proxy_next_upstream_timeout",
    "proxy_socket_keepalive",
    "rewrite_log",
    "uninitialized_variable_warn",
    "msie_padding",
    "msie_refresh",
    "ignore_invalid_headers",
    "chunked_transfer_encoding",
    "etag",
    "if_modified_since",
    "max_ranges",
    "limit_req_zone",
    "limit_conn_zone",
    "limit_req_status",
    "limit_conn_status",
    "limit_req_log_level",
    "limit_conn_log_level",
    "real_ip_header",
    "set_real_ip_from",
    "http2_max_concurrent_streams",
    "http2_recv_buffer_size",
    "http2_chunk_size",
    "http2_idle_timeout",
    "http2_max_requests",
    "http2_push_preload",
    "server_name_in_redirect",
    "port_in_redirect",
    "disable_symlinks",
    "recursive_error_pages",
    "underscores_in_headers",
    "merge_slashes",
    "autoindex",
    "charset",
    "source_charset",
    "subrequest_output_buffer_size",
];

/// Harmless only with these values (others change behaviour).
fn harmless_value(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "etag" => &["on"],
        "if_modified_since" => &["exact"],
        "server_name_in_redirect" => &["off"],
        "port_in_redirect" => &["on"],
        "disable_symlinks" => &["off"],
        "recursive_error_pages" => &["off"],
        "underscores_in_headers" => &["off"],
        "merge_slashes" => &["on"],
        "autoindex" => &["off"],
        "charset" => &["off"],
        "ignore_invalid_headers" => &["on"],
        "chunked_transfer_encoding" => &["on"],
        _ => return None,
    })
}

/// Directives known to change behaviour that why502 does not implement,
/// with the reason given in the error.
fn unsupported_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "if" => "\"if\" blocks are not supported (use location, try_files, rewrite)",
        "map" | "geo" | "split_clients" => "variable maps are not supported",
        "auth_basic" | "auth_basic_user_file" | "auth_request" | "satisfy" => {
            "authentication is not supported"
        }
        "limit_req" | "limit_conn" | "limit_rate" | "limit_rate_after" => {
            "rate/connection limits are not supported"
        }
        "limit_except" => "\"limit_except\" is not supported",
        "sub_filter" | "sub_filter_once" | "sub_filter_types" | "ssi" | "addition_types" => {
            "response body filters are not supported"
        }
        "proxy_cache"
        | "proxy_cache_path"
        | "fastcgi_cache"
        | "fastcgi_cache_path"
        | "fastcgi_cache_key"
        | "fastcgi_cache_valid"
        | "fastcgi_cache_bypass"
        | "fastcgi_no_cache"
        | "fastcgi_cache_use_stale"
        | "proxy_cache_key"
        | "proxy_cache_valid" => "caching is not supported",
        "uwsgi_pass" | "scgi_pass" | "grpc_pass" | "memcached_pass" => {
            "only fastcgi_pass and proxy_pass backends are supported"
        }
        "fastcgi_catch_stderr"
        | "fastcgi_ignore_headers"
        | "fastcgi_pass_request_body"
        | "fastcgi_store"
        | "fastcgi_bind" => "this FastCGI option is not supported",
        "proxy_cookie_domain"
        | "proxy_cookie_path"
        | "proxy_ignore_headers"
        | "proxy_method"
        | "proxy_set_body"
        | "proxy_pass_request_body"
        | "proxy_pass_request_headers"
        | "proxy_bind"
        | "proxy_store" => "this proxy option is not supported",
        "return" => "return is only allowed in server and location",
        "stub_status" | "mirror" | "dav_methods" | "perl" | "js_content" => {
            "this content handler is not supported"
        }
        "userid" | "secure_link" | "empty_gif" | "image_filter" | "xslt_stylesheet" => {
            "this module is not supported"
        }
        _ => return None,
    })
}

fn origin(d: &Directive) -> Origin {
    Origin {
        file: d.file.display().to_string(),
        line: d.line,
    }
}

fn err(d: &Directive, msg: impl AsRef<str>) -> ConfigError {
    ConfigError::new(origin(d), format!("\"{}\" {}", d.name, msg.as_ref()))
}

/// Settings inherited from enclosing levels.
#[derive(Clone, Default)]
struct Level {
    root: Option<PathBuf>,
    index: Option<Vec<String>>,
    params: Option<Vec<Param>>,
    fc_index: Option<String>,
    fc_connect: Option<Duration>,
    fc_send: Option<Duration>,
    fc_read: Option<Duration>,
    fc_buffer_size: Option<usize>,
    fc_keep_conn: Option<bool>,
    fc_intercept: Option<bool>,
    fc_hide: Option<Vec<String>>,
    fc_pass: Option<Vec<String>>,
    fc_pass_request_headers: Option<bool>,
    px_set_headers: Option<Vec<(String, Template)>>,
    px_connect: Option<Duration>,
    px_send: Option<Duration>,
    px_read: Option<Duration>,
    px_buffer_size: Option<usize>,
    px_http_version: Option<String>,
    px_ssl_verify: Option<bool>,
    px_ssl_trusted: Option<PathBuf>,
    px_ssl_name: Option<Template>,
    px_ssl_server_name: Option<bool>,
    px_hide: Option<Vec<String>>,
    px_pass: Option<Vec<String>>,
    px_next_upstream: Option<Vec<String>>,
    px_intercept: Option<bool>,
    error_pages: Option<Vec<ErrorPage>>,
    add_headers: Option<Vec<AddHeader>>,
    expires: Option<Expires>,
    default_type: Option<String>,
    types: Option<crate::config::TypesMap>,
    access: Option<Vec<AccessRule>>,
    client_max_body_size: Option<u64>,
    client_body_timeout: Option<Duration>,
    keepalive_requests: Option<u64>,
    keepalive_timeout: Option<Duration>,
    absolute_redirect: Option<bool>,
    ssl_cert: Option<PathBuf>,
    ssl_key: Option<PathBuf>,
    /// `error_log`s of http / server (inherited by servers).
    error_log: Option<Vec<ErrorLogTarget>>,
    /// This level's own `access_log`s (not merged: the model keeps
    /// inheritance, the runtime resolves it).
    access_log: Option<Vec<AccessLog>>,
    /// `access_log off` at this level (wins over paths at the same level).
    access_log_off: bool,
}

impl Level {
    /// The level's `access_log` setting: None = inherited, empty = off.
    fn own_access_log(&self) -> Option<Vec<AccessLog>> {
        if self.access_log_off {
            Some(Vec::new())
        } else {
            self.access_log.clone()
        }
    }
}

macro_rules! merge_fields {
    ($child:ident, $parent:ident, $($f:ident),*) => {
        $( if $child.$f.is_none() { $child.$f = $parent.$f.clone(); } )*
    };
}

impl Level {
    fn inherit(mut self, parent: &Level) -> Level {
        merge_fields!(
            self,
            parent,
            root,
            index,
            params,
            fc_index,
            fc_connect,
            fc_send,
            fc_read,
            fc_buffer_size,
            fc_keep_conn,
            fc_intercept,
            fc_hide,
            fc_pass,
            fc_pass_request_headers,
            px_set_headers,
            px_connect,
            px_send,
            px_read,
            px_buffer_size,
            px_http_version,
            px_ssl_verify,
            px_ssl_trusted,
            px_ssl_name,
            px_ssl_server_name,
            px_hide,
            px_pass,
            px_next_upstream,
            px_intercept,
            error_pages,
            add_headers,
            expires,
            default_type,
            types,
            access,
            client_max_body_size,
            client_body_timeout,
            keepalive_requests,
            keepalive_timeout,
            absolute_redirect,
            ssl_cert,
            ssl_key,
            error_log
        );
        self
    }
}

/// Location-only (not inherited) settings collected from one block.
#[derive(Default)]
struct Own {
    alias: Option<Template>,
    try_files: Option<Vec<Template>>,
    fastcgi_pass: Option<(Arc<Upstream>, Origin)>,
    split_path_info: Option<regex::Regex>,
    proxy_pass: Option<(Arc<Upstream>, bool, Option<String>)>,
    script: Vec<ScriptOp>,
    internal: bool,
}

struct Cv {
    warnings: Vec<ConfigError>,
    upstreams: HashMap<String, Arc<Upstream>>,
    user_vars: HashSet<String>,
    prefix: PathBuf,
    /// The http level's `access_log`s (the model's `Logging::access_log`).
    http_access_log: Vec<AccessLog>,
    /// The main level's `error_log` and level.
    error_log: Option<PathBuf>,
    error_level: Option<LogLevel>,
    /// `log_format`s by name.
    formats: HashMap<String, Arc<LogFormat>>,
}

/// nginx's built-in `types` when none is configured.
fn builtin_types() -> crate::config::TypesMap {
    [
        ("html", "text/html"),
        ("gif", "image/gif"),
        ("jpg", "image/jpeg"),
    ]
    .iter()
    .map(|(e, t)| ((*e).to_string(), (*t).to_string()))
    .collect()
}

impl Cv {
    fn warn(&mut self, d: &Directive, what: &str) {
        self.warnings.push(ConfigError::new(
            origin(d),
            format!("\"{}\" is not supported: {what}", d.name),
        ));
    }

    fn unknown(&self, d: &Directive, ctx: &str) -> ConfigError {
        match unsupported_reason(&d.name) {
            Some(r) => err(d, format!("is not supported: {r}")),
            None => err(d, format!("is not supported in {ctx} context")),
        }
    }

    fn path(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.prefix.join(p)
        }
    }

    fn tpl(&self, d: &Directive, s: &str) -> Result<Template, ConfigError> {
        let vars = &self.user_vars;
        Template::parse_with(s, &|n| vars.contains(n)).map_err(|e| err(d, e))
    }

    /// A template in a proxy_* directive: `set` variables plus the proxy
    /// module's own (`$proxy_host`, `$proxy_port`,
    /// `$proxy_add_x_forwarded_for`), resolved by the HTTP gateway as for
    /// the YAML front end ([`yaml::parse_proxy_template`]).
    fn px_tpl(&self, d: &Directive, s: &str) -> Result<Template, ConfigError> {
        let vars = &self.user_vars;
        Template::parse_with(s, &|n| vars.contains(n) || yaml::PROXY_VARS.contains(&n))
            .map_err(|e| err(d, e))
    }

    fn nargs(&self, d: &Directive, min: usize, max: usize) -> Result<(), ConfigError> {
        let n = d.args.len();
        if n < min || n > max {
            return Err(ConfigError::new(
                origin(d),
                format!("invalid number of arguments in \"{}\" directive", d.name),
            ));
        }
        Ok(())
    }

    fn flag(&self, d: &Directive) -> Result<bool, ConfigError> {
        self.nargs(d, 1, 1)?;
        match d.arg(0) {
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            _ => Err(err(d, "takes \"on\" or \"off\"")),
        }
    }

    fn dur(&self, d: &Directive) -> Result<Duration, ConfigError> {
        self.nargs(d, 1, 1)?;
        parse_duration(d.arg(0).unwrap_or("")).map_err(|e| err(d, e))
    }

    fn size(&self, d: &Directive) -> Result<u64, ConfigError> {
        self.nargs(d, 1, 1)?;
        parse_size(d.arg(0).unwrap_or("")).map_err(|e| err(d, e))
    }

    /// `error_log FILE [LEVEL]` (`stderr` = standard error); None for
    /// syslog/memory targets, which are reported and ignored.
    fn error_log_target(&mut self, d: &Directive) -> Result<Option<ErrorLogTarget>, ConfigError> {
        self.nargs(d, 1, 2)?;
        let p = d.arg(0).unwrap_or("");
        let level = match d.arg(1) {
            None => LogLevel::Error,
            Some(l) => LogLevel::parse(l)
                .ok_or_else(|| ConfigError::new(origin(d), format!("invalid log level \"{l}\"")))?,
        };
        if p.starts_with("syslog:") || p.starts_with("memory:") {
            self.warn(d, "syslog/memory targets are ignored");
            return Ok(None);
        }
        let path = (p != "stderr").then(|| self.path(p));
        Ok(Some(ErrorLogTarget { path, level }))
    }

    /// `error_log` in the main context: the log of everything no server
    /// overrides (one file; `--error-log` replaces it).
    fn main_error_log(&mut self, d: &Directive) -> Result<(), ConfigError> {
        let Some(t) = self.error_log_target(d)? else {
            return Ok(());
        };
        match (&self.error_log, self.error_level) {
            (_, None) => {
                self.error_log = t.path;
                self.error_level = Some(t.level);
            }
            (old, Some(l)) if *old == t.path && l == t.level => {}
            _ => self.warn(
                d,
                "only one main-level error_log is supported; the first one is used",
            ),
        }
        Ok(())
    }

    /// `error_log` in http or server: every one of a level is written.
    fn level_error_log(&mut self, l: &mut Level, d: &Directive) -> Result<(), ConfigError> {
        let target = self.error_log_target(d)?;
        // Any error_log replaces the inherited ones, even one we ignore.
        let targets = l.error_log.get_or_insert_with(Vec::new);
        if let Some(t) = target.filter(|t| !targets.contains(t)) {
            targets.push(t);
        }
        Ok(())
    }

    /// `access_log path [format [buffer=size] [flush=time] [if=condition]]`
    /// or `access_log off`.
    fn access_log(&mut self, l: &mut Level, d: &Directive) -> Result<(), ConfigError> {
        self.nargs(d, 1, 8)?;
        let p = d.arg(0).unwrap_or("");
        // Any access_log replaces the inherited ones, even one we ignore.
        l.access_log.get_or_insert_with(Vec::new);
        if p == "off" {
            if let Some(x) = d.arg(1) {
                return Err(ConfigError::new(
                    origin(d),
                    format!("invalid parameter \"{x}\""),
                ));
            }
            l.access_log_off = true;
            return Ok(());
        }
        let format = match d.arg(1) {
            None => LogFormat::combined(),
            Some(name) => self
                .formats
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, f)| f.clone())
                .or_else(|| LogFormat::builtin(name))
                .ok_or_else(|| {
                    ConfigError::new(origin(d), format!("unknown log format \"{name}\""))
                })?,
        };
        let mut condition = None;
        let (mut buffer, mut flush) = (false, false);
        for a in d.args.iter().skip(2).map(|a| a.value.as_str()) {
            if let Some(c) = a.strip_prefix("if=") {
                let vars = &self.user_vars;
                let f = LogFormat::compile("if", LogEscape::None, c, &|n| vars.contains(n))
                    .map_err(|e| err(d, e))?;
                condition = Some(Arc::new(f));
            } else if a.starts_with("buffer=") {
                buffer = true;
            } else if a.starts_with("flush=") {
                flush = true;
            } else if a == "gzip" || a.starts_with("gzip=") {
                return Err(err(d, "with gzip is not supported"));
            } else {
                return Err(ConfigError::new(
                    origin(d),
                    format!("invalid parameter \"{a}\""),
                ));
            }
        }
        if flush && !buffer {
            return Err(ConfigError::new(
                origin(d),
                format!("no buffer is defined for access_log \"{p}\""),
            ));
        }
        if buffer {
            self.warn(
                d,
                "buffer= and flush= are ignored: why502 buffers every access log and writes it within 100 ms",
            );
        }
        if p.starts_with("syslog:") {
            self.warn(d, "syslog targets are ignored");
            return Ok(());
        }
        if p.contains('$') {
            return Err(err(d, "with variables in the path is not supported"));
        }
        let log = AccessLog {
            path: self.path(p),
            format,
            condition,
        };
        if let Some(logs) = l.access_log.as_mut() {
            logs.push(log);
        }
        Ok(())
    }

    /// `log_format name [escape=default|json|none] string ...` (http level).
    fn log_format(&mut self, d: &Directive) -> Result<(), ConfigError> {
        self.nargs(d, 2, 1024)?;
        let name = d.arg(0).unwrap_or("");
        if name == "combined" || self.formats.contains_key(name) {
            return Err(ConfigError::new(
                origin(d),
                format!("duplicate \"log_format\" name \"{name}\""),
            ));
        }
        let mut rest = &d.args[1..];
        let mut escape = LogEscape::Default;
        if let Some(e) = rest.first().and_then(|a| a.value.strip_prefix("escape=")) {
            escape = LogEscape::parse(e).ok_or_else(|| {
                ConfigError::new(origin(d), format!("unknown log format escaping \"{e}\""))
            })?;
            rest = &rest[1..];
        }
        let source: String = rest.iter().map(|a| a.value.as_str()).collect();
        let vars = &self.user_vars;
        let f = LogFormat::compile(name, escape, &source, &|n| vars.contains(n))
            .map_err(|e| ConfigError::new(origin(d), e))?;
        self.formats.insert(name.to_string(), Arc::new(f));
        Ok(())
    }

    /// Converts the contents of `http {}` (or a bare site file).
    fn http(&mut self, block: &[Directive]) -> Result<Vec<Server>, ConfigError> {
        // upstreams and log formats first: they may be used before they are defined.
        for d in block {
            match d.name.as_str() {
                "upstream" => self.upstream(d)?,
                "log_format" => self.log_format(d)?,
                _ => {}
            }
        }
        let mut level = Level::default();
        let mut server_blocks = Vec::new();
        for d in block {
            if self.common(&mut level, d, "http")? {
                continue;
            }
            match d.name.as_str() {
                "upstream" | "log_format" => {}
                "server" => server_blocks.push(d),
                _ => return Err(self.unknown(d, "http")),
            }
        }
        if level.types.is_none() {
            level.types = Some(builtin_types());
        }
        self.http_access_log = level.own_access_log().unwrap_or_default();
        let mut servers = Vec::new();
        for d in server_blocks {
            servers.push(self.server(d, &level)?);
        }
        Ok(servers)
    }

    fn upstream(&mut self, d: &Directive) -> Result<(), ConfigError> {
        self.nargs(d, 1, 1)?;
        let name = d.arg(0).unwrap_or("").to_string();
        if self.upstreams.contains_key(&name) {
            return Err(err(d, format!("duplicate upstream \"{name}\"")));
        }
        let mut servers = Vec::new();
        let mut keepalive = 0usize;
        let mut keepalive_timeout = crate::upstream::IDLE_TIMEOUT;
        for c in d.children() {
            match c.name.as_str() {
                "server" => {
                    self.nargs(c, 1, 8)?;
                    let a = c.arg(0).unwrap_or("");
                    // `server host;` / `server [::1];`: nginx's default port 80.
                    let addr = match Addr::parse(a) {
                        Err(_) if !a.is_empty() && (!a.contains(':') || a.ends_with(']')) => {
                            Addr::parse(&format!("{a}:80"))
                        }
                        r => r,
                    }
                    .map_err(|e| err(c, e))?;
                    let mut s = UpstreamServer::new(addr);
                    let mut down = false;
                    for p in c.args.iter().skip(1).map(|a| a.value.as_str()) {
                        let num = |v: &str| {
                            v.parse::<u32>()
                                .map_err(|_| err(c, format!("invalid parameter \"{p}\"")))
                        };
                        if let Some(v) = p.strip_prefix("weight=") {
                            s.weight = num(v)?.max(1);
                        } else if let Some(v) = p.strip_prefix("max_fails=") {
                            s.max_fails = num(v)?;
                        } else if let Some(v) = p.strip_prefix("fail_timeout=") {
                            s.fail_timeout = parse_duration(v).map_err(|e| err(c, e))?;
                        } else if p == "backup" {
                            s.backup = true;
                        } else if p == "down" {
                            down = true;
                        } else if p.starts_with("max_conns=") || p.starts_with("slow_start=") {
                            self.warn(c, &format!("parameter \"{p}\" is ignored"));
                        } else {
                            return Err(err(c, format!("invalid parameter \"{p}\"")));
                        }
                    }
                    if down {
                        self.warn(c, "a server marked \"down\" is left out");
                    } else {
                        servers.push(s);
                    }
                }
                "keepalive" => {
                    self.nargs(c, 1, 1)?;
                    keepalive = c
                        .arg(0)
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| err(c, "takes a number"))?;
                }
                "keepalive_timeout" => {
                    self.nargs(c, 1, 1)?;
                    keepalive_timeout = c
                        .arg(0)
                        .and_then(|v| crate::config::units::parse_duration(v).ok())
                        .ok_or_else(|| err(c, "takes a time (e.g. 60s)"))?;
                }
                "keepalive_requests" | "keepalive_time" | "zone" | "least_conn" | "ip_hash"
                | "hash" | "random" => {
                    self.warn(c, "ignored (why502 balances round-robin by weight)")
                }
                _ => return Err(self.unknown(c, "upstream")),
            }
        }
        if servers.is_empty() {
            return Err(err(d, format!("no servers are inside upstream \"{name}\"")));
        }
        self.upstreams.insert(
            name.clone(),
            Arc::new(Upstream {
                name,
                servers,
                keepalive,
                keepalive_timeout,
            }),
        );
        Ok(())
    }

    /// Directives valid at http, server and location level (inherited ones).
    /// Returns Ok(false) if `d` is not one of them.
    fn common(&mut self, l: &mut Level, d: &Directive, ctx: &str) -> Result<bool, ConfigError> {
        let a0 = || d.arg(0).unwrap_or("");
        match d.name.as_str() {
            "root" => {
                self.nargs(d, 1, 1)?;
                if a0().contains('$') {
                    return Err(err(d, "with variables is not supported"));
                }
                let mut r = a0().to_string();
                // nginx strips one trailing slash from root? no: it keeps it; but
                // "$document_root$uri" would double it, which nginx also does.
                if r.len() > 1 && r.ends_with('/') {
                    r.pop();
                }
                l.root = Some(self.path(&r));
            }
            "index" => {
                self.nargs(d, 1, 64)?;
                let v: Vec<String> = d.args.iter().map(|a| a.value.clone()).collect();
                if v.iter().any(|s| s.contains('$')) {
                    return Err(err(d, "with variables is not supported"));
                }
                l.index = Some(v);
            }
            "fastcgi_param" => {
                self.nargs(d, 2, 3)?;
                let ine = match d.arg(2) {
                    None => false,
                    Some("if_not_empty") => true,
                    Some(x) => return Err(err(d, format!("invalid parameter \"{x}\""))),
                };
                let value = self.tpl(d, d.arg(1).unwrap_or(""))?;
                l.params
                    .get_or_insert_with(Vec::new)
                    .push(Param::new(a0(), value, ine));
            }
            "fastcgi_index" => {
                self.nargs(d, 1, 1)?;
                l.fc_index = Some(a0().to_string());
            }
            "fastcgi_connect_timeout" => l.fc_connect = Some(self.dur(d)?),
            "fastcgi_send_timeout" => l.fc_send = Some(self.dur(d)?),
            "fastcgi_read_timeout" => l.fc_read = Some(self.dur(d)?),
            "fastcgi_buffer_size" => {
                l.fc_buffer_size = Some(usize::try_from(self.size(d)?).unwrap_or(usize::MAX))
            }
            "fastcgi_keep_conn" => l.fc_keep_conn = Some(self.flag(d)?),
            "fastcgi_intercept_errors" => l.fc_intercept = Some(self.flag(d)?),
            "fastcgi_pass_request_headers" => l.fc_pass_request_headers = Some(self.flag(d)?),
            "fastcgi_hide_header" => {
                self.nargs(d, 1, 1)?;
                l.fc_hide
                    .get_or_insert_with(Vec::new)
                    .push(a0().to_string());
            }
            "fastcgi_pass_header" => {
                self.nargs(d, 1, 1)?;
                l.fc_pass
                    .get_or_insert_with(Vec::new)
                    .push(a0().to_string());
            }
            "proxy_set_header" => {
                self.nargs(d, 2, 2)?;
                let v = self.px_tpl(d, d.arg(1).unwrap_or(""))?;
                l.px_set_headers
                    .get_or_insert_with(Vec::new)
                    .push((a0().to_string(), v));
            }
            "proxy_connect_timeout" => l.px_connect = Some(self.dur(d)?),
            "proxy_send_timeout" => l.px_send = Some(self.dur(d)?),
            "proxy_read_timeout" => l.px_read = Some(self.dur(d)?),
            "proxy_buffer_size" => {
                l.px_buffer_size = Some(usize::try_from(self.size(d)?).unwrap_or(usize::MAX))
            }
            "proxy_http_version" => {
                self.nargs(d, 1, 1)?;
                if !matches!(a0(), "1.0" | "1.1") {
                    return Err(err(d, "takes 1.0 or 1.1"));
                }
                l.px_http_version = Some(a0().to_string());
            }
            "proxy_ssl_verify" => l.px_ssl_verify = Some(self.flag(d)?),
            "proxy_ssl_server_name" => l.px_ssl_server_name = Some(self.flag(d)?),
            "proxy_ssl_trusted_certificate" => {
                self.nargs(d, 1, 1)?;
                l.px_ssl_trusted = Some(self.path(a0()));
            }
            "proxy_ssl_name" => {
                self.nargs(d, 1, 1)?;
                l.px_ssl_name = Some(self.px_tpl(d, a0())?);
            }
            "proxy_ssl_protocols"
            | "proxy_ssl_ciphers"
            | "proxy_ssl_session_reuse"
            | "proxy_ssl_verify_depth" => self.warn(d, "ignored"),
            "proxy_hide_header" => {
                self.nargs(d, 1, 1)?;
                l.px_hide
                    .get_or_insert_with(Vec::new)
                    .push(a0().to_string());
            }
            "proxy_pass_header" => {
                self.nargs(d, 1, 1)?;
                l.px_pass
                    .get_or_insert_with(Vec::new)
                    .push(a0().to_string());
            }
            "proxy_next_upstream" => {
                self.nargs(d, 1, 16)?;
                let conds: Vec<String> = d.args.iter().map(|a| a.value.clone()).collect();
                if let Some(x) = conds
                    .iter()
                    .find(|x| !crate::config::NEXT_UPSTREAM.contains(&x.as_str()))
                {
                    return Err(err(d, format!("has an invalid value \"{x}\"")));
                }
                if conds.len() > 1 && conds.iter().any(|x| x == "off") {
                    return Err(err(d, "\"off\" cannot be combined with other values"));
                }
                l.px_next_upstream = Some(conds);
            }
            "proxy_intercept_errors" => l.px_intercept = Some(self.flag(d)?),
            "proxy_redirect" => {
                // The HTTP gateway always rewrites the backend's Location
                // like nginx's default; nothing else can be expressed yet.
                self.nargs(d, 1, 2)?;
                match (a0(), d.args.len()) {
                    ("default", 1) => {}
                    ("off", 1) => self.warn(
                        d,
                        "why502 rewrites the backend's Location as with \"proxy_redirect default\"",
                    ),
                    _ => return Err(err(d, "is only supported as \"proxy_redirect default\"")),
                }
            }
            "error_page" => {
                self.nargs(d, 2, 64)?;
                let n = d.args.len();
                let target = self.tpl(d, &d.args[n - 1].value)?;
                let mut codes = Vec::new();
                let mut response = None;
                for a in &d.args[..n - 1] {
                    let v = a.value.as_str();
                    if let Some(r) = v.strip_prefix('=') {
                        response = Some(if r.is_empty() {
                            0
                        } else {
                            r.parse::<u16>()
                                .map_err(|_| err(d, format!("invalid value \"{v}\"")))?
                        });
                        continue;
                    }
                    let c: u16 = v
                        .parse()
                        .map_err(|_| err(d, format!("invalid value \"{v}\"")))?;
                    if !(300..=599).contains(&c) || c == 499 {
                        return Err(err(d, format!("value \"{v}\" must be between 300 and 599")));
                    }
                    codes.push(c);
                }
                if codes.is_empty() {
                    return Err(err(d, "needs at least one code"));
                }
                l.error_pages.get_or_insert_with(Vec::new).push(ErrorPage {
                    codes,
                    response,
                    target,
                });
            }
            "add_header" => {
                self.nargs(d, 2, 3)?;
                let always = match d.arg(2) {
                    None => false,
                    Some("always") => true,
                    Some(x) => return Err(err(d, format!("invalid parameter \"{x}\""))),
                };
                let value = self.tpl(d, d.arg(1).unwrap_or(""))?;
                l.add_headers.get_or_insert_with(Vec::new).push(AddHeader {
                    name: a0().to_string(),
                    value,
                    always,
                });
            }
            "expires" => {
                self.nargs(d, 1, 2)?;
                if d.args.len() == 2 || a0().starts_with('@') || a0() == "modified" {
                    return Err(err(d, "with \"modified\" or \"@time\" is not supported"));
                }
                l.expires = Some(match a0() {
                    "off" => Expires::Off,
                    "epoch" => Expires::Epoch,
                    "max" => Expires::Max,
                    v => {
                        let (neg, v) = match v.strip_prefix('-') {
                            Some(r) => (true, r),
                            None => (false, v.strip_prefix('+').unwrap_or(v)),
                        };
                        let t = parse_duration(v).map_err(|e| err(d, e))?;
                        let s = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
                        Expires::After(if neg { -s } else { s })
                    }
                });
            }
            "default_type" => {
                self.nargs(d, 1, 1)?;
                l.default_type = Some(a0().to_string());
            }
            "types" => {
                let t = l.types.get_or_insert_with(Default::default);
                for e in d.children() {
                    for ext in &e.args {
                        t.insert(ext.value.to_ascii_lowercase(), e.name.clone());
                    }
                }
            }
            "allow" | "deny" => {
                self.nargs(d, 1, 1)?;
                let net = match a0() {
                    "all" => None,
                    s => Some(
                        IpNet::parse(s)
                            .ok_or_else(|| err(d, format!("invalid parameter \"{s}\"")))?,
                    ),
                };
                l.access.get_or_insert_with(Vec::new).push(AccessRule {
                    allow: d.name == "allow",
                    net,
                });
            }
            "client_max_body_size" => l.client_max_body_size = Some(self.size(d)?),
            "client_body_timeout" => l.client_body_timeout = Some(self.dur(d)?),
            // http and server level; in a location it is reported and
            // ignored (HARMLESS below).
            "keepalive_requests" if ctx != "location" => {
                self.nargs(d, 1, 1)?;
                let n = a0().parse::<u64>().map_err(|_| {
                    err(
                        d,
                        format!("invalid value \"{}\" in \"keepalive_requests\"", a0()),
                    )
                })?;
                l.keepalive_requests = Some(n);
            }
            // `keepalive_timeout TIMEOUT [HEADER_TIMEOUT]`, http and server
            // level. The second (a `Keep-Alive: timeout=N` response header)
            // is reported and ignored.
            "keepalive_timeout" if ctx != "location" => {
                self.nargs(d, 1, 2)?;
                let t = parse_duration(a0()).map_err(|e| err(d, e))?;
                if let Some(h) = d.arg(1) {
                    self.warnings.push(ConfigError::new(
                        origin(d),
                        format!(
                            "\"keepalive_timeout\": the second argument ({h}, a \"Keep-Alive: timeout=N\" response header) is not supported: ignored"
                        ),
                    ));
                }
                l.keepalive_timeout = Some(t);
            }
            "absolute_redirect" => l.absolute_redirect = Some(self.flag(d)?),
            "ssl_certificate" => {
                self.nargs(d, 1, 1)?;
                if ctx == "location" {
                    return Ok(false);
                }
                l.ssl_cert = Some(self.path(a0()));
            }
            "ssl_certificate_key" => {
                self.nargs(d, 1, 1)?;
                if ctx == "location" {
                    return Ok(false);
                }
                l.ssl_key = Some(self.path(a0()));
            }
            "access_log" => self.access_log(l, d)?,
            "error_log" if ctx == "location" => self.warn(
                d,
                "per-location error_log is not supported: the server's error_log is used",
            ),
            "error_log" => self.level_error_log(l, d)?,
            "log_format" if ctx != "http" => {
                return Err(err(d, "directive is not allowed here"));
            }
            n if HARMLESS.contains(&n) => {
                if let Some(ok) = harmless_value(n) {
                    if !ok.contains(&a0()) {
                        return Err(err(
                            d,
                            format!("\"{}\" is not supported (only {})", a0(), ok.join(", ")),
                        ));
                    }
                }
                self.warn(d, "ignored")
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Rewrite-module directives (server and location level), in order.
    fn script(&self, d: &Directive, out: &mut Vec<ScriptOp>) -> Result<bool, ConfigError> {
        match d.name.as_str() {
            "set" => {
                self.nargs(d, 2, 2)?;
                let name = d
                    .arg(0)
                    .and_then(|n| n.strip_prefix('$'))
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| err(d, "invalid variable name"))?;
                if crate::config::Var::from_name(name).is_some() {
                    return Err(err(d, format!("cannot set built-in variable \"${name}\"")));
                }
                let value = self.tpl(d, d.arg(1).unwrap_or(""))?;
                out.push(ScriptOp::Set {
                    name: name.to_string(),
                    value,
                });
            }
            "rewrite" => {
                self.nargs(d, 2, 3)?;
                let re = regex::Regex::new(d.arg(0).unwrap_or(""))
                    .map_err(|e| err(d, format!("invalid regex: {e}")))?;
                let rep = d.arg(1).unwrap_or("");
                let mut flag = match d.arg(2) {
                    None => RewriteFlag::None,
                    Some("last") => RewriteFlag::Last,
                    Some("break") => RewriteFlag::Break,
                    Some("redirect") => RewriteFlag::Redirect,
                    Some("permanent") => RewriteFlag::Permanent,
                    Some(x) => return Err(err(d, format!("invalid parameter \"{x}\""))),
                };
                if flag == RewriteFlag::None
                    && (rep.starts_with("http://")
                        || rep.starts_with("https://")
                        || rep.starts_with("$scheme"))
                {
                    flag = RewriteFlag::Redirect;
                }
                out.push(ScriptOp::Rewrite(Rewrite {
                    re,
                    replacement: self.tpl(d, rep)?,
                    flag,
                    origin: origin(d),
                }));
            }
            "return" => {
                self.nargs(d, 1, 2)?;
                let a0 = d.arg(0).unwrap_or("");
                let ret = match a0.parse::<u16>() {
                    Ok(code) if code <= 999 => Return {
                        code,
                        text: match d.arg(1) {
                            Some(t) => Some(self.tpl(d, t)?),
                            None => None,
                        },
                    },
                    _ => {
                        if d.args.len() == 2
                            || !(a0.starts_with("http://")
                                || a0.starts_with("https://")
                                || a0.starts_with("$scheme"))
                        {
                            return Err(err(d, format!("invalid return code \"{a0}\"")));
                        }
                        Return {
                            code: 302,
                            text: Some(self.tpl(d, a0)?),
                        }
                    }
                };
                out.push(ScriptOp::Return(ret));
            }
            "break" => {
                // `break;` stops the rewrite module's directives: a rewrite
                // that matches nothing with the break flag does the same.
                self.nargs(d, 0, 0)?;
                out.push(ScriptOp::Rewrite(Rewrite {
                    re: regex::Regex::new("^").map_err(|e| err(d, e.to_string()))?,
                    replacement: Template::parse("$uri").map_err(|e| err(d, e))?,
                    flag: RewriteFlag::Break,
                    origin: origin(d),
                }));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn server(&mut self, d: &Directive, http: &Level) -> Result<Server, ConfigError> {
        let mut level = Level::default();
        let mut listen_dirs = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut loc_blocks = Vec::new();
        let mut rewrites = Vec::new();
        let mut try_files = None;
        let mut http2_all = false;
        for c in d.children() {
            if self.common(&mut level, c, "server")? {
                continue;
            }
            if self.script(c, &mut rewrites)? {
                continue;
            }
            match c.name.as_str() {
                "listen" => listen_dirs.push(c),
                "server_name" => {
                    self.nargs(c, 1, 256)?;
                    for a in &c.args {
                        if let Some(re) = a.value.strip_prefix('~') {
                            regex::Regex::new(re)
                                .map_err(|e| err(c, format!("invalid regex: {e}")))?;
                        }
                        names.push(a.value.clone());
                    }
                }
                "location" => loc_blocks.push(c),
                "try_files" => try_files = Some(self.try_files(c)?),
                "http2" => http2_all = self.flag(c)?,
                "ssl" => return Err(err(c, "is obsolete: use \"listen ... ssl\"")),
                _ => return Err(self.unknown(c, "server")),
            }
        }
        let access_log = level.own_access_log();
        let level = level.inherit(http);
        let mut listen = Vec::new();
        for l in &listen_dirs {
            listen.push(self.listen(l, &level, http2_all)?);
        }
        if listen.is_empty() {
            listen.push(Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 80)),
                default_server: false,
                tls: None,
                http2: http2_all,
            });
        }
        let root = level
            .root
            .clone()
            .unwrap_or_else(|| self.prefix.join("html"));
        let mut locations = Vec::new();
        for l in loc_blocks {
            locations.push(self.location(l, &level, &root, 0)?);
        }
        let mut base = Location::new(Match::Prefix(String::new()), origin(d));
        self.fill(&mut base, &level, &root);
        base.try_files = try_files;
        Ok(Server {
            listen,
            names,
            root,
            index: level
                .index
                .clone()
                .unwrap_or_else(|| vec!["index.html".into()]),
            locations,
            client_max_body_size: level.client_max_body_size.unwrap_or(1 << 20),
            client_body_timeout: level.client_body_timeout.unwrap_or(Duration::from_secs(60)),
            keepalive_requests: level
                .keepalive_requests
                .unwrap_or(crate::config::KEEPALIVE_REQUESTS),
            keepalive_timeout: level
                .keepalive_timeout
                .unwrap_or(crate::config::KEEPALIVE_TIMEOUT),
            origin: origin(d),
            rewrites,
            base: Some(Box::new(base)),
            absolute_redirect: level.absolute_redirect.unwrap_or(true),
            access_log,
            error_log: level.error_log.clone().unwrap_or_default(),
        })
    }

    fn listen(&mut self, d: &Directive, l: &Level, http2_all: bool) -> Result<Listen, ConfigError> {
        self.nargs(d, 1, 16)?;
        let a = d.arg(0).unwrap_or("");
        if a.starts_with("unix:") {
            return Err(err(d, "on a unix socket is not supported"));
        }
        let addr = parse_listen(a).ok_or_else(|| err(d, format!("invalid address \"{a}\"")))?;
        let mut out = Listen {
            addr,
            default_server: false,
            tls: None,
            http2: http2_all,
        };
        let mut ssl = false;
        for p in d.args.iter().skip(1).map(|a| a.value.as_str()) {
            match p {
                "default_server" | "default" => out.default_server = true,
                "ssl" => ssl = true,
                "http2" => out.http2 = true,
                "proxy_protocol" => return Err(err(d, "proxy_protocol is not supported")),
                "quic" | "http3" => return Err(err(d, format!("\"{p}\" is not supported"))),
                _ if p.starts_with("backlog=")
                    || p.starts_with("rcvbuf=")
                    || p.starts_with("sndbuf=")
                    || p.starts_with("ipv6only=")
                    || p.starts_with("so_keepalive=")
                    || p.starts_with("fastopen=")
                    || p.starts_with("accept_filter=")
                    || p == "reuseport"
                    || p == "deferred"
                    || p == "bind" =>
                {
                    self.warn(d, &format!("parameter \"{p}\" is ignored"))
                }
                _ => return Err(err(d, format!("invalid parameter \"{p}\""))),
            }
        }
        if ssl {
            match (&l.ssl_cert, &l.ssl_key) {
                (Some(c), Some(k)) => {
                    out.tls = Some(TlsFiles {
                        cert: c.clone(),
                        key: k.clone(),
                    })
                }
                _ => {
                    return Err(err(
                        d,
                        format!("no \"ssl_certificate\"/\"ssl_certificate_key\" is defined for the listen ... ssl directive ({a})"),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn try_files(&self, d: &Directive) -> Result<Vec<Template>, ConfigError> {
        self.nargs(d, 2, 64)?;
        let mut v = Vec::new();
        for (i, a) in d.args.iter().enumerate() {
            if i + 1 == d.args.len() {
                if let Some(c) = a.value.strip_prefix('=') {
                    let ok = c.parse::<u16>().is_ok_and(|c| c <= 999);
                    if !ok {
                        return Err(err(d, format!("invalid code \"{}\"", a.value)));
                    }
                }
            }
            v.push(self.tpl(d, &a.value)?);
        }
        Ok(v)
    }

    /// Sets the inherited fields of a location from its effective level.
    fn fill(&self, loc: &mut Location, level: &Level, server_root: &Path) {
        loc.root = Some(
            level
                .root
                .clone()
                .unwrap_or_else(|| server_root.to_path_buf()),
        );
        loc.index = Some(
            level
                .index
                .clone()
                .unwrap_or_else(|| vec!["index.html".into()]),
        );
        loc.error_pages = level.error_pages.clone().unwrap_or_default();
        loc.add_headers = level.add_headers.clone().unwrap_or_default();
        loc.expires = level.expires;
        loc.default_type = Some(
            level
                .default_type
                .clone()
                .unwrap_or_else(|| "text/plain".into()),
        );
        loc.types = Some(Arc::new(level.types.clone().unwrap_or_else(builtin_types)));
        loc.access = level.access.clone().unwrap_or_default();
        loc.client_max_body_size = Some(level.client_max_body_size.unwrap_or(1 << 20));
    }

    fn location(
        &mut self,
        d: &Directive,
        parent: &Level,
        server_root: &Path,
        depth: usize,
    ) -> Result<Location, ConfigError> {
        let matcher = self.matcher(d)?;
        if depth > 0 && matches!(matcher, Match::Named(_)) {
            return Err(err(d, "named locations can only be on the server level"));
        }
        let mut level = Level::default();
        let mut own = Own::default();
        let mut nested = Vec::new();
        for c in d.children() {
            if self.common(&mut level, c, "location")? {
                continue;
            }
            if self.script(c, &mut own.script)? {
                continue;
            }
            let a0 = c.arg(0).unwrap_or("");
            match c.name.as_str() {
                "location" => nested.push(c),
                "alias" => {
                    self.nargs(c, 1, 1)?;
                    if matches!(matcher, Match::Named(_)) {
                        return Err(err(c, "is not allowed inside a named location"));
                    }
                    own.alias = Some(self.tpl(c, a0)?);
                }
                "try_files" => own.try_files = Some(self.try_files(c)?),
                "internal" => {
                    self.nargs(c, 0, 0)?;
                    own.internal = true;
                }
                "fastcgi_pass" => {
                    self.nargs(c, 1, 1)?;
                    if a0.contains('$') {
                        return Err(err(c, "with variables is not supported"));
                    }
                    let up = match self.upstreams.get(a0) {
                        Some(u) => u.clone(),
                        None => {
                            let addr = Addr::parse(a0).map_err(|e| err(c, e))?;
                            Arc::new(Upstream {
                                keepalive: 0,
                                keepalive_timeout: crate::upstream::IDLE_TIMEOUT,
                                ..Upstream::single(addr)
                            })
                        }
                    };
                    own.fastcgi_pass = Some((up, origin(c)));
                }
                "fastcgi_split_path_info" => {
                    self.nargs(c, 1, 1)?;
                    let re =
                        regex::Regex::new(a0).map_err(|e| err(c, format!("invalid regex: {e}")))?;
                    if re.captures_len() < 3 {
                        return Err(err(c, format!("pattern \"{a0}\" must have 2 captures")));
                    }
                    own.split_path_info = Some(re);
                }
                "proxy_pass" => {
                    self.nargs(c, 1, 1)?;
                    own.proxy_pass = Some(self.proxy_pass(c)?);
                }
                _ => return Err(self.unknown(c, "location")),
            }
        }
        if own.alias.is_some() && level.root.is_some() {
            return Err(err(d, "has both \"root\" and \"alias\""));
        }
        let access_log = level.own_access_log();
        let level = level.inherit(parent);
        let mut loc = Location::new(matcher, origin(d));
        self.fill(&mut loc, &level, server_root);
        loc.access_log = access_log;
        loc.alias = own.alias;
        loc.try_files = own.try_files;
        loc.script = own.script;
        loc.internal = own.internal;
        if let Some((up, _)) = own.fastcgi_pass {
            let mut fc = FastCgi::new(up);
            fc.params = level.params.clone().unwrap_or_default();
            fc.split_path_info = own.split_path_info;
            fc.index = level.fc_index.clone();
            fc.connect_timeout = level.fc_connect.unwrap_or(fc.connect_timeout);
            fc.send_timeout = level.fc_send.unwrap_or(fc.send_timeout);
            fc.read_timeout = level.fc_read.unwrap_or(fc.read_timeout);
            fc.buffer_size = level.fc_buffer_size.unwrap_or(fc.buffer_size).max(64);
            fc.keep_conn = level.fc_keep_conn.unwrap_or(false);
            fc.intercept_errors = level.fc_intercept.unwrap_or(false);
            fc.hide_headers = level.fc_hide.clone().unwrap_or_default();
            fc.pass_headers = level.fc_pass.clone().unwrap_or_default();
            fc.pass_request_headers = level.fc_pass_request_headers.unwrap_or(true);
            loc.fastcgi = Some(Arc::new(fc));
        } else if own.split_path_info.is_some() {
            // nginx accepts it without fastcgi_pass; it only affects $fastcgi_*.
            self.warnings.push(ConfigError::new(
                origin(d),
                "fastcgi_split_path_info without fastcgi_pass has no effect here",
            ));
        }
        if let Some((up, tls, uri)) = own.proxy_pass {
            if uri.is_some() && matches!(loc.matcher, Match::Regex { .. } | Match::Named(_)) {
                return Err(err(
                    d,
                    "\"proxy_pass\" cannot have URI part in location given by regular \
                     expression, or inside named location",
                ));
            }
            // Retrying on the backend's own status (http_502...) is not
            // implemented: with one server there is nothing to retry on, so
            // nginx answers the same; with several it would not.
            if let Some(x) = level
                .px_next_upstream
                .iter()
                .flatten()
                .find(|x| x.starts_with("http_"))
            {
                if up.servers.len() > 1 {
                    return Err(err(
                        d,
                        format!(
                            "proxy_next_upstream {x} is not supported for upstream \"{}\" \
                             with several servers (only error, timeout, invalid_header, \
                             non_idempotent, off)",
                            up.name
                        ),
                    ));
                }
            }
            let mut p = HttpProxy::new(up);
            p.tls = tls;
            p.uri = uri;
            p.set_headers = level.px_set_headers.clone().unwrap_or_default();
            p.connect_timeout = level.px_connect.unwrap_or(p.connect_timeout);
            p.send_timeout = level.px_send.unwrap_or(p.send_timeout);
            p.read_timeout = level.px_read.unwrap_or(p.read_timeout);
            p.buffer_size = level.px_buffer_size.unwrap_or(p.buffer_size);
            if let Some(v) = &level.px_http_version {
                p.http_version = v.clone();
            }
            // nginx sends `Connection: close` unless proxy_set_header says
            // otherwise, even to a keepalive upstream with HTTP/1.1; the
            // gateway drops the header for those, so say it explicitly.
            if p.http_version == "1.1"
                && p.upstream.keepalive > 0
                && !p
                    .set_headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
            {
                // (Host first when not configured: nginx's default order.)
                if !p
                    .set_headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("host"))
                {
                    let host = yaml::parse_proxy_template("$proxy_host").map_err(|e| err(d, e))?;
                    p.set_headers.push(("Host".into(), host));
                }
                p.set_headers
                    .push(("Connection".into(), Template::literal("close")));
            }
            p.ssl_verify = level.px_ssl_verify.unwrap_or(false);
            p.ssl_trusted_certificate = level.px_ssl_trusted.clone();
            p.ssl_name = level.px_ssl_name.clone();
            p.ssl_server_name = level.px_ssl_server_name.unwrap_or(false);
            p.hide_headers = level.px_hide.clone().unwrap_or_default();
            p.pass_headers = level.px_pass.clone().unwrap_or_default();
            if let Some(n) = &level.px_next_upstream {
                p.next_upstream = n.clone();
            }
            p.intercept_errors = level.px_intercept.unwrap_or(false);
            if loc.fastcgi.is_some() {
                return Err(err(d, "has both fastcgi_pass and proxy_pass"));
            }
            loc.proxy = Some(Arc::new(p));
        }
        for n in nested {
            loc.locations
                .push(self.location(n, &level, server_root, depth + 1)?);
        }
        Ok(loc)
    }

    fn matcher(&self, d: &Directive) -> Result<Match, ConfigError> {
        self.nargs(d, 1, 2)?;
        let (modifier, name) = match (d.arg(0), d.arg(1)) {
            (Some(m), Some(n)) => (m, n),
            (Some(one), None) => {
                // `location =/x`, `location ~\.php$` (modifier glued on)
                if let Some(r) = one.strip_prefix("~*") {
                    ("~*", r)
                } else if let Some(r) = one.strip_prefix("^~") {
                    ("^~", r)
                } else if let Some(r) = one.strip_prefix('~') {
                    ("~", r)
                } else if let Some(r) = one.strip_prefix('=') {
                    ("=", r)
                } else {
                    ("", one)
                }
            }
            _ => return Err(err(d, "needs a URI")),
        };
        Ok(match modifier {
            "=" => Match::Exact(name.to_string()),
            "^~" => Match::PrefixNoRegex(name.to_string()),
            "~" | "~*" => {
                let ci = modifier == "~*";
                let pat = if ci {
                    format!("(?i){name}")
                } else {
                    name.to_string()
                };
                let re = regex::Regex::new(&pat)
                    .map_err(|e| err(d, format!("invalid regex \"{name}\": {e}")))?;
                Match::Regex {
                    re,
                    case_insensitive: ci,
                }
            }
            "" if name.starts_with('@') => Match::Named(name.to_string()),
            "" => Match::Prefix(name.to_string()),
            m => return Err(err(d, format!("invalid location modifier \"{m}\""))),
        })
    }

    /// `proxy_pass URL`, read as the YAML front end reads `proxy.pass`
    /// ([`yaml::parse_proxy_pass`]): an `upstream {}` name, `host[:port]` or
    /// `unix:/path`. An anonymous upstream keeps no idle connections
    /// (nginx's default without `keepalive`) and is named as written, which
    /// is what `$proxy_host` reports.
    fn proxy_pass(
        &self,
        d: &Directive,
    ) -> Result<(Arc<Upstream>, bool, Option<String>), ConfigError> {
        let a = d.arg(0).unwrap_or("");
        if a.contains('$') {
            return Err(err(d, "with variables is not supported"));
        }
        let (tls, auth, uri) = yaml::parse_proxy_pass(a).map_err(|e| err(d, e))?;
        if let Some(u) = self.upstreams.get(&auth) {
            return Ok((u.clone(), tls, uri));
        }
        let has_port = auth.starts_with("unix:")
            || auth
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                && !auth.ends_with(']');
        let with_port = if has_port {
            auth.clone()
        } else {
            format!("{auth}:{}", if tls { 443 } else { 80 })
        };
        let addr = Addr::parse(&with_port).map_err(|e| err(d, e))?;
        Ok((
            Arc::new(Upstream {
                name: auth,
                keepalive: 0,
                keepalive_timeout: crate::upstream::IDLE_TIMEOUT,
                ..Upstream::single(addr)
            }),
            tls,
            uri,
        ))
    }
}

/// `80`, `8080`, `127.0.0.1:80`, `127.0.0.1`, `*:80`, `[::]:80`, `[::1]`, `localhost:80`.
fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(p) = s.parse::<u16>() {
        return Some(SocketAddr::from(([0, 0, 0, 0], p)));
    }
    if let Some(p) = s.strip_prefix("*:") {
        return Some(SocketAddr::from(([0, 0, 0, 0], p.parse().ok()?)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    if let Some(v6) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Some(SocketAddr::new(v6.parse().ok()?, 80));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 80));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, 80),
    };
    if host == "localhost" {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    None
}
