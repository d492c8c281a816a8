//! The access log of a request: which logs apply (nginx's inheritance,
//! resolved once at startup) and what each log variable is for the request.
//! Formats, escaping and files are [`crate::accesslog`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::accesslog::{self, Builtin, LogFile, LogFormat, LogValues, LogVar};
use crate::config::template::Vars;
use crate::config::{AccessLog, Config, FastCgi, Location, Server, Var};
use crate::report::{ErrorLog, Sinks};

use super::downstream::Downstream;
use super::rawtext;
use super::route::RouteState;
use super::{ReqCtx, ReqVars, Runtime};

/// One `access_log` in effect: its open file and format.
struct Active {
    file: Arc<LogFile>,
    format: Arc<LogFormat>,
    condition: Option<Arc<LogFormat>>,
    /// Uses `$fastcgi_script_name` / `$fastcgi_path_info` (which cost a
    /// regex match).
    fastcgi_vars: bool,
}

type Logs = Arc<[Active]>;

/// A location's logs, with what its variables need.
struct LocLogs {
    logs: Logs,
    root: PathBuf,
    fastcgi: Option<Arc<FastCgi>>,
}

/// What the logging phase needs to know about the routing of a request.
#[derive(Default)]
pub struct LogState {
    /// The selected server (index into the configuration's servers).
    server: Option<usize>,
    /// The location the request finished in (its address; 0 = none).
    loc: usize,
    /// The final `$uri` and `$args` (after rewrites, try_files, internal redirects).
    uri: Option<String>,
    args: Option<String>,
    /// (`$connection`, `$connection_requests`).
    conn: Option<(u64, u64)>,
}

/// Carried from one request to the next on a keep-alive connection.
struct ConnInfo(u64, u64);

/// Every access log of the configuration, resolved per server and location.
pub struct AccessLogs {
    http: Logs,
    servers: Vec<Logs>,
    locs: HashMap<usize, LocLogs>,
    /// Any access log anywhere (else the logging phase does nothing).
    pub enabled: bool,
    /// Some format uses `$connection` / `$connection_requests`.
    pub track_connections: bool,
    /// Some format or condition reads the response header as sent
    /// (`$sent_http_NAME`, `$bytes_sent`).
    pub sent_headers: bool,
    conns: std::sync::atomic::AtomicU64,
}

/// A location's identity: its address. Locations live in the
/// configuration's vectors and boxes, which the runtime owns unchanged for
/// its whole life (moving the `Config` does not move them), like the
/// upstream states keyed by `Arc` address.
fn key(l: &Location) -> usize {
    l as *const Location as usize
}

impl AccessLogs {
    /// Opens every file once and resolves nginx's inheritance: a level with
    /// any `access_log` replaces what it inherits, `off` means none.
    pub fn new(cfg: &Config) -> std::io::Result<AccessLogs> {
        let mut files: HashMap<PathBuf, Arc<LogFile>> = HashMap::new();
        let mut track = false;
        let mut sent = false;
        let mut open = |logs: &[AccessLog]| -> std::io::Result<Logs> {
            let mut out = Vec::with_capacity(logs.len());
            for l in logs {
                let file = match files.get(&l.path) {
                    Some(f) => f.clone(),
                    None => {
                        let f = LogFile::open(&l.path).map_err(|e| {
                            std::io::Error::new(e.kind(), format!("{}: {e}", l.path.display()))
                        })?;
                        files.insert(l.path.clone(), f.clone());
                        f
                    }
                };
                let conn =
                    |v: &LogVar| matches!(v, LogVar::Connection | LogVar::ConnectionRequests);
                let fc = |v: &LogVar| {
                    matches!(
                        v,
                        LogVar::Var(Var::FastcgiScriptName | Var::FastcgiPathInfo)
                    )
                };
                track |=
                    l.format.uses(&conn) || l.condition.as_ref().is_some_and(|c| c.uses(&conn));
                let hv = |f: &LogFormat| {
                    f.uses(&|v| matches!(v, LogVar::SentHttp(_)))
                        || f.uses_builtin(Builtin::BytesSent)
                };
                sent |= hv(&l.format) || l.condition.as_deref().is_some_and(hv);
                out.push(Active {
                    file,
                    format: l.format.clone(),
                    condition: l.condition.clone(),
                    fastcgi_vars: l.format.uses(&fc)
                        || l.condition.as_ref().is_some_and(|c| c.uses(&fc)),
                });
            }
            Ok(out.into())
        };
        let http = open(&cfg.logging.access_log)?;
        let mut servers = Vec::with_capacity(cfg.servers.len());
        let mut locs = HashMap::new();
        for s in &cfg.servers {
            let own = match &s.access_log {
                Some(l) => open(l)?,
                None => http.clone(),
            };
            for l in &s.locations {
                walk(l, s, &own, &mut open, &mut locs)?;
            }
            if let Some(b) = &s.base {
                walk(b, s, &own, &mut open, &mut locs)?;
            }
            servers.push(own);
        }
        let enabled = !http.is_empty()
            || servers.iter().any(|l| !l.is_empty())
            || locs.values().any(|l: &LocLogs| !l.logs.is_empty());
        Ok(AccessLogs {
            http,
            servers,
            locs,
            enabled,
            track_connections: track,
            sent_headers: sent,
            conns: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Notes the selected server.
    pub fn enter_server(&self, ctx: &mut ReqCtx, server: usize) {
        ctx.log.server = Some(server);
    }

    /// Notes the location the request is in (the last one counts).
    pub fn enter_location(&self, ctx: &mut ReqCtx, loc: Option<&Location>) {
        ctx.log.loc = loc.map_or(0, key);
    }

    /// Keeps the final `$uri` / `$args` once routing is over. Like nginx,
    /// an empty query string is unset (`-`), but arguments an internal
    /// redirect emptied are set and empty.
    pub fn leave_routing(&self, ctx: &mut ReqCtx, st: RouteState) {
        if self.enabled {
            ctx.log.uri = Some(st.uri);
            ctx.log.args = match st.args_reset {
                true => Some(st.args.unwrap_or_default()),
                false => st.args.filter(|a| !a.is_empty()),
            };
        }
    }

    /// Numbers the connection (`$connection`) on its first request: the
    /// server's number for it (`number`, also the error log's `*N`), else
    /// the next of this log's own.
    pub fn start_request(&self, ctx: &mut ReqCtx, number: Option<u64>) {
        if self.track_connections && ctx.log.conn.is_none() {
            let n = number.unwrap_or_else(|| {
                self.conns
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1
            });
            ctx.log.conn = Some((n, 1));
        }
    }

    /// What the next request on a kept-alive connection inherits.
    pub fn persist(&self, ctx: &ReqCtx) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        let (id, n) = ctx.log.conn?;
        Some(Box::new(ConnInfo(id, n)))
    }

    /// Takes over the connection's numbers from the previous request.
    pub fn reuse(&self, ctx: &mut ReqCtx, prev: Box<dyn std::any::Any + Send + Sync>) {
        if let Ok(c) = prev.downcast::<ConnInfo>() {
            ctx.log.conn = Some((c.0, c.1 + 1));
        }
    }
}

fn walk<'a>(
    l: &'a Location,
    s: &Server,
    parent: &Logs,
    open: &mut dyn FnMut(&[AccessLog]) -> std::io::Result<Logs>,
    out: &mut HashMap<usize, LocLogs>,
) -> std::io::Result<()> {
    let own = match &l.access_log {
        Some(a) => open(a)?,
        None => parent.clone(),
    };
    for c in &l.locations {
        walk(c, s, &own, open, out)?;
    }
    out.insert(
        key(l),
        LocLogs {
            logs: own,
            root: l.root.clone().unwrap_or_else(|| s.root.clone()),
            fastcgi: l.fastcgi.clone(),
        },
    );
    Ok(())
}

/// The error log of a server: its own `error_log`s, else None (the main one).
pub fn server_error_logs(
    cfg: &Config,
    opened: &mut Sinks,
) -> std::io::Result<Vec<Option<Arc<ErrorLog>>>> {
    cfg.servers
        .iter()
        .map(|s| {
            if s.error_log.is_empty() {
                return Ok(None);
            }
            let targets = s.error_log.iter().map(|t| (t.path.as_deref(), t.level));
            ErrorLog::open_targets(targets, opened).map(|l| Some(Arc::new(l)))
        })
        .collect()
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The logging phase: writes the request's line to every access log in
/// effect where it finished.
pub fn log_request<S: Downstream>(rt: &Runtime, session: &S, ctx: &ReqCtx) {
    let logs = &rt.access;
    let loc = (ctx.log.loc != 0)
        .then(|| logs.locs.get(&ctx.log.loc))
        .flatten();
    let active: &[Active] = match (loc, ctx.log.server) {
        (Some(l), _) => &l.logs,
        (None, Some(s)) => logs.servers.get(s).map_or(&logs.http[..], |l| &l[..]),
        (None, None) => &logs.http,
    };
    if active.is_empty() {
        return;
    }
    let Some(server) = ctx
        .log
        .server
        .and_then(|i| rt.config.servers.get(i))
        .or_else(|| rt.config.servers.first())
    else {
        return;
    };
    let raw_path = session.req_header().uri.path();
    let uri = ctx.log.uri.as_deref().unwrap_or(raw_path);
    let args = match &ctx.log.uri {
        Some(_) => ctx.log.args.as_deref(),
        None => session.req_header().uri.query().filter(|a| !a.is_empty()),
    };
    let root = loc.map_or(server.root.as_path(), |l| l.root.as_path());
    let fc = loc
        .and_then(|l| l.fastcgi.as_deref())
        .filter(|_| active.iter().any(|a| a.fastcgi_vars));
    let vars = ReqVars::new(rt, session, ctx, server, uri, args, root, &[], fc);
    let values = Values {
        vars,
        session,
        ctx,
        raw: std::cell::OnceCell::new(),
    };
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        for a in active {
            if let Some(c) = &a.condition {
                line.clear();
                c.render(&values, &mut line);
                if line.is_empty() || line[..] == *b"0" {
                    continue;
                }
            }
            line.clear();
            a.format.render(&values, &mut line);
            line.push(b'\n');
            a.file.write_line(&line);
        }
        if line.capacity() > 64 * 1024 {
            *line = Vec::new();
        }
    });
}

struct Values<'a, S: Downstream> {
    vars: ReqVars<'a>,
    session: &'a S,
    ctx: &'a ReqCtx,
    /// The request header as received (HTTP/1), made on first use.
    raw: std::cell::OnceCell<bytes::Bytes>,
}

impl<S: Downstream> Values<'_, S> {
    fn status(&self) -> u16 {
        let s = &self.ctx.summary;
        if self.ctx.aborted {
            s.status
        } else {
            self.session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(s.status)
        }
    }

    /// The response header's size on the wire (HTTP/1.1).
    fn header_bytes(&self) -> usize {
        let Some(h) = self.session.response_written() else {
            return 0;
        };
        if let Some(n) = self.session.sent_header_len() {
            return n;
        }
        let reason = h
            .get_reason_phrase()
            .or_else(|| h.status.canonical_reason())
            .map_or(0, str::len);
        let mut n = "HTTP/1.1 200 \r\n".len() + reason + 2;
        for (k, v) in h.headers.iter() {
            n += k.as_str().len() + 2 + v.len() + 2;
        }
        n
    }

    /// The raw HTTP/1 request header (empty for HTTP/2).
    fn raw(&self) -> &[u8] {
        self.raw.get_or_init(|| self.session.raw_request_header())
    }

    /// The request line as received.
    fn request_line(&self) -> Cow<'_, [u8]> {
        let raw = self.raw();
        if let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
            return Cow::Borrowed(&raw[..end]);
        }
        let req = self.session.req_header();
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.raw_path());
        out.push(b' ');
        out.extend_from_slice(self.vars.var(&Var::ServerProtocol).as_bytes());
        Cow::Owned(out)
    }

    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        let h = &self.session.req_header().headers;
        let mut it = h.get_all(name).iter();
        let first = it.next()?;
        match it.next() {
            None => Some(Cow::Borrowed(first.as_bytes())),
            Some(second) => {
                let sep: &[u8] = if name == "cookie" { b"; " } else { b", " };
                let mut v = first.as_bytes().to_vec();
                for x in std::iter::once(second).chain(it) {
                    v.extend_from_slice(sep);
                    v.extend_from_slice(x.as_bytes());
                }
                Some(Cow::Owned(v))
            }
        }
    }

    fn secs(ms: f64) -> Cow<'static, [u8]> {
        let mut out = Vec::with_capacity(8);
        accesslog::push_secs(
            std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0),
            &mut out,
        );
        Cow::Owned(out)
    }
}

fn owned(s: String) -> Option<Cow<'static, [u8]>> {
    Some(Cow::Owned(s.into_bytes()))
}

impl<S: Downstream> LogValues for Values<'_, S> {
    fn builtin(&self, b: Builtin, out: &mut Vec<u8>) {
        use std::io::Write as _;
        match b {
            // why502 does not pipeline: every request is read after the previous answer.
            Builtin::Pipe => out.push(b'.'),
            Builtin::TimeLocal => accesslog::push_time_local(out),
            Builtin::TimeIso8601 => accesslog::push_time_iso8601(out),
            Builtin::Msec => accesslog::push_msec(out),
            Builtin::RequestTime => {
                let d = self.ctx.start.map(|s| s.elapsed()).unwrap_or_default();
                accesslog::push_secs(d, out);
            }
            Builtin::Status => {
                let _ = write!(out, "{:03}", self.status());
            }
            Builtin::BodyBytesSent => {
                let _ = write!(out, "{}", self.session.body_bytes_sent());
            }
            Builtin::BytesSent => {
                let n = self.header_bytes() + self.session.body_bytes_sent();
                let _ = write!(out, "{n}");
            }
            Builtin::RequestLength => {
                let _ = write!(out, "{}", self.raw().len() + self.session.body_bytes_read());
            }
        }
    }

    fn var(&self, v: &LogVar) -> Option<Cow<'_, [u8]>> {
        let ctx = self.ctx;
        let s = &ctx.summary;
        let upstream = !s.next_hop.is_empty();
        match v {
            LogVar::Var(var) => self.template_var(var),
            LogVar::Request => Some(self.request_line()),
            LogVar::Connection => owned(match ctx.log.conn {
                Some((id, _)) => id.to_string(),
                None => s.conn.to_string(),
            }),
            LogVar::ConnectionRequests => owned(ctx.log.conn.map_or(1, |c| c.1).to_string()),
            LogVar::UpstreamAddr => upstream.then_some(Cow::Borrowed(s.next_hop.as_bytes())),
            LogVar::UpstreamStatus => {
                if !upstream {
                    return None;
                }
                // A failure answered by why502 before any upstream header
                // is nginx's 502/504; otherwise the upstream's own status.
                let failed_before_header = ctx.failure.as_ref().is_some_and(|f| {
                    use crate::cause::Phase::*;
                    matches!(f.cause.phase(), Connect | Tls | Send | Header)
                        && f.cause.info().status != 0
                });
                let code = match &ctx.failure {
                    Some(f) if failed_before_header => f.status(),
                    _ => self.status(),
                };
                owned(code.to_string())
            }
            LogVar::UpstreamResponseTime => {
                upstream.then(|| Self::secs(ctx.start.map_or(0.0, crate::report::ms_since)))
            }
            LogVar::UpstreamConnectTime => s.connect_ms.filter(|_| upstream).map(Self::secs),
            LogVar::UpstreamHeaderTime => s.first_byte_ms.filter(|_| upstream).map(Self::secs),
            LogVar::Why502Cause => ctx
                .failure
                .as_ref()
                .map(|f| Cow::Borrowed(f.cause.code().as_bytes())),
            LogVar::Header(name) => self.header(name),
            LogVar::SentHttp(name)
                if name == "connection" && self.session.sent_connection().is_some() =>
            {
                self.session
                    .sent_connection()
                    .map(|c| Cow::Borrowed(c.as_bytes()))
            }
            LogVar::SentHttp(name) => {
                let h = self.session.response_written()?;
                h.headers
                    .get(name.as_str())
                    .map(|v| v.as_bytes())
                    .or_else(|| self.session.sent_head_line(name))
                    .map(Cow::Borrowed)
            }
            LogVar::Pid => owned(std::process::id().to_string()),
            LogVar::RequestCompletion => {
                Some(Cow::Borrowed(if ctx.aborted || ctx.failure.is_some() {
                    b""
                } else {
                    b"OK"
                }))
            }
        }
    }
}

impl<S: Downstream> Values<'_, S> {
    /// A variable the rest of why502 knows, with nginx's "not found" where
    /// nginx has one (logged as `-`): absent headers, cookies and
    /// arguments, no query string, `$remote_user`, unset `set` variables.
    fn template_var(&self, var: &Var) -> Option<Cow<'_, [u8]>> {
        let req = self.session.req_header();
        let args = self.vars.args;
        match var {
            Var::Http(name) => self.header(&name.replace('_', "-")),
            Var::ContentType => self.header("content-type"),
            Var::ContentLength => self.header("content-length"),
            Var::Cookie(name) => req
                .headers
                .get_all("cookie")
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                .find_map(|kv| {
                    let kv = kv.strip_prefix(b" ").unwrap_or(kv);
                    let eq = kv.iter().position(|&b| b == b'=')?;
                    (&kv[..eq] == name.as_bytes()).then(|| Cow::Borrowed(&kv[eq + 1..]))
                }),
            Var::Arg(name) => args?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                k.eq_ignore_ascii_case(name)
                    .then(|| self.text(Cow::Borrowed(v.as_bytes())))
            }),
            Var::Args | Var::QueryString => args.map(|a| self.text(Cow::Borrowed(a.as_bytes()))),
            Var::RequestUri => Some(Cow::Borrowed(req.raw_path())),
            Var::RemoteUser => None,
            // nginx: a `set` variable not set in this request is empty.
            Var::User(name) => Some(
                self.text(Cow::Borrowed(
                    self.ctx
                        .user_vars
                        .get(name)
                        .map_or(&b""[..], |v| v.as_bytes()),
                )),
            ),
            Var::Capture(_) => None,
            other => Some(self.text(match self.vars.var(other) {
                Cow::Borrowed(b) => Cow::Borrowed(b.as_bytes()),
                Cow::Owned(o) => Cow::Owned(o.into_bytes()),
            })),
        }
    }

    /// A value made from the request's path or arguments, with bytes that
    /// are not UTF-8 turned back into bytes (see [`rawtext`]).
    fn text<'v>(&self, v: Cow<'v, [u8]>) -> Cow<'v, [u8]> {
        if !self.ctx.carried {
            return v;
        }
        match v {
            Cow::Borrowed(b) => rawtext::bytes_of(b),
            Cow::Owned(o) => Cow::Owned(rawtext::bytes_of(&o).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inheritance_is_resolved_per_location() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        let text = format!(
            r#"
log:
  access_log: {d}/http.log
servers:
  - listen: [8080]
    locations:
      - prefix: /
        locations:
          - prefix: /in/
      - prefix: /off/
        access_log: off
        locations:
          - prefix: /off/on/
            access_log: [{d}/http.log, {{ path: {d}/x.log, format: combined }}]
  - listen: [8081]
    access_log: {{ path: {d}/s.log, format: combined }}
    locations:
      - prefix: /
"#
        );
        let cfg = crate::config::yaml::load_str(&text, "t.yaml").expect("config");
        let logs = AccessLogs::new(&cfg).expect("open");
        assert!(logs.enabled && !logs.track_connections);
        let at = |l: &Location| &logs.locs.get(&key(l)).expect("resolved").logs;
        let s0 = &cfg.servers[0];
        let names = |a: &Logs| -> Vec<String> {
            a.iter()
                .map(|x| {
                    let p = x
                        .file
                        .path()
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned());
                    format!("{}:{}", p.unwrap_or_default(), x.format.name)
                })
                .collect()
        };
        assert_eq!(names(at(&s0.locations[0])), ["http.log:why502"]);
        assert_eq!(
            names(at(&s0.locations[0].locations[0])),
            ["http.log:why502"]
        );
        assert!(at(&s0.locations[1]).is_empty(), "off");
        let on = at(&s0.locations[1].locations[0]);
        assert_eq!(names(on), ["http.log:why502", "x.log:combined"]);
        // One file handle per path, whoever names it.
        assert!(Arc::ptr_eq(&on[0].file, &logs.http[0].file));
        assert_eq!(names(&logs.servers[1]), ["s.log:combined"]);
        assert_eq!(names(at(&cfg.servers[1].locations[0])), ["s.log:combined"]);

        // Nothing configured: the logging phase does nothing.
        let cfg = crate::config::yaml::load_str("servers:\n  - listen: [8080]\n", "t.yaml")
            .expect("config");
        assert!(!AccessLogs::new(&cfg).expect("none").enabled);
    }
}
