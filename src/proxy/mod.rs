//! Request handling: [`Why502`] routes each request like nginx (server,
//! location, try_files, index) and serves it from a static file or through
//! the FastCGI gateway, reporting every failure through [`crate::report`].
//! The handlers take any [`downstream::Downstream`]: why502's own HTTP/1.1
//! server ([`own`], [`crate::h1`]) or Pingora's session, through the one
//! [`ProxyHttp`] implementation below (TLS, HTTP/2, HTTP backends).
//!
//! On Pingora, FastCGI and static responses are written from
//! `request_filter` (Pingora's upstream machinery is HTTP-only). A failure
//! after the response header was sent returns an error from
//! `request_filter`: Pingora then drops the downstream connection without
//! the chunked terminator, so the client can tell the body is truncated.

pub mod access;
pub mod downstream;
pub mod fastcgi;
#[path = "http.rs"]
pub mod http_proxy;
pub mod own;
pub mod rawtext;
pub mod route;
pub mod static_files;
pub mod vars;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::cause::Cause;
use crate::config::{Config, FastCgi, Location, Server, Upstream};
use crate::report::{self, ErrorLog, Failure, RequestSummary};
use crate::upstream::UpstreamState;

use downstream::Downstream;

use route::{find_location, find_named, RouteState, ScriptEnd, TryResult};
pub use vars::ReqVars;

/// Everything shared by all requests.
pub struct Runtime {
    pub config: Config,
    upstreams: HashMap<usize, Arc<UpstreamState>>,
    /// The main error log (servers without their own `error_log`).
    pub errlog: ErrorLog,
    /// Each server's own error log, if it has one.
    server_errlogs: Vec<Option<Arc<ErrorLog>>>,
    /// Each server's first name, as log lines show it (shared per request).
    server_log_names: Vec<Arc<str>>,
    /// The access logs, resolved per server and location.
    pub access: access::AccessLogs,
    conns: AtomicU64,
    pub hostname: String,
    /// The servers of each listen address.
    listens: route::ListenMap,
}

impl Runtime {
    pub fn new(config: Config) -> std::io::Result<Runtime> {
        let mut upstreams = HashMap::new();
        let threads = worker_threads(&config);
        for s in &config.servers {
            collect_upstreams(&s.locations, threads, &mut upstreams);
        }
        let listens = route::ListenMap::new(&config.servers);
        let mut sinks = report::Sinks::new();
        let lg = &config.logging;
        let errlog =
            ErrorLog::open_targets([(lg.error_log.as_deref(), lg.error_level)], &mut sinks)?;
        let server_errlogs = access::server_error_logs(&config, &mut sinks)?;
        let server_log_names = config
            .servers
            .iter()
            .map(|s| Arc::from(s.names.first().map_or("", String::as_str)))
            .collect();
        let access = access::AccessLogs::new(&config)?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        // Idle FastCGI connections hold PHP-FPM workers: close them after
        // IDLE_TIMEOUT even when no request comes to take them, as soon as
        // PHP-FPM closes them, and those beyond `keepalive` after
        // EXCESS_LINGER (woken through `IdleWatch`).
        let pools: Vec<Arc<UpstreamState>> = upstreams.values().cloned().collect();
        if !pools.is_empty() {
            let watches: Vec<_> = pools.iter().map(|p| p.watch.clone()).collect();
            let sweeper = std::thread::Builder::new()
                .name("why502-idle-sweep".into())
                .spawn(move || {
                    let mut over = false;
                    loop {
                        // Back soon while a pool holds more than its
                        // `keepalive` (see `UpstreamState::put_idle`).
                        std::thread::park_timeout(if over {
                            crate::upstream::EXCESS_LINGER
                        } else {
                            std::time::Duration::from_secs(1)
                        });
                        over = false;
                        for p in &pools {
                            over |= p.expire_idle();
                        }
                    }
                });
            if let Ok(t) = sweeper {
                for w in watches {
                    w.set_sweeper(t.thread().clone());
                }
            }
        }
        Ok(Runtime {
            config,
            upstreams,
            errlog,
            server_errlogs,
            server_log_names,
            access,
            conns: AtomicU64::new(0),
            hostname,
            listens,
        })
    }

    pub fn upstream_state(&self, u: &Arc<Upstream>) -> Option<&Arc<UpstreamState>> {
        self.upstreams.get(&(Arc::as_ptr(u) as usize))
    }
}

fn collect_upstreams(
    locs: &[crate::config::Location],
    threads: usize,
    out: &mut HashMap<usize, Arc<UpstreamState>>,
) {
    for l in locs {
        if let Some(fc) = &l.fastcgi {
            out.entry(Arc::as_ptr(&fc.upstream) as usize)
                .or_insert_with(|| Arc::new(UpstreamState::new(fc.upstream.clone(), threads)));
        }
        if let Some(hp) = &l.proxy {
            out.entry(Arc::as_ptr(&hp.upstream) as usize)
                .or_insert_with(|| Arc::new(UpstreamState::new(hp.upstream.clone(), threads)));
        }
        collect_upstreams(&l.locations, threads, out);
    }
}

/// The number of worker threads: `threads`, or one per CPU when 0 (like
/// nginx's `worker_processes auto`).
pub fn worker_threads(config: &Config) -> usize {
    if config.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        config.threads
    }
}

/// Per-request state.
#[derive(Default)]
pub struct ReqCtx {
    pub summary: RequestSummary,
    pub start: Option<Instant>,
    pub failure: Option<Failure>,
    /// Set when why502 aborted a response after its header was sent.
    pub aborted: bool,
    pub logged: bool,
    /// Set when the request goes to an HTTP upstream through Pingora.
    pub http: Option<Box<http_proxy::HttpState>>,
    /// `set $name value` results (nginx front end).
    pub user_vars: HashMap<String, String>,
    /// Serving an `error_page`: `$request_method` is GET, like nginx.
    pub as_get: bool,
    /// The final location's `add_header`s, evaluated: (name, value, always).
    pub add_headers: Vec<(String, String, bool)>,
    /// The final location's `expires`.
    pub expires: Option<crate::config::Expires>,
    /// Serving an `error_page` target that must answer with this status
    /// (nginx `error_page 404 /x.php` without `=`): a FastCGI response's
    /// status should be replaced by it.
    pub error_status: Option<u16>,
    /// What the access log needs to know about routing.
    pub log: access::LogState,
    /// The length of a chunked request body read whole (`$content_length`).
    pub body_len: Option<u64>,
    /// The decoded path or the arguments hold bytes that are not UTF-8,
    /// carried in the text (see [`rawtext`]): they are turned back into
    /// bytes where values leave why502.
    pub carried: bool,
}

/// Text made from the request's path or arguments as the bytes it stands
/// for (see [`ReqCtx::carried`]), for a response header or body.
pub fn carried_bytes(ctx: &ReqCtx, s: String) -> Vec<u8> {
    if ctx.carried {
        rawtext::to_bytes(&s).into_owned()
    } else {
        s.into_bytes()
    }
}

/// Returned by handlers when the response must be aborted (header already sent).
#[derive(Debug)]
pub struct Abort;

pub struct Why502 {
    pub rt: Arc<Runtime>,
}

#[async_trait]
impl ProxyHttp for Why502 {
    type CTX = ReqCtx;

    fn new_ctx(&self) -> ReqCtx {
        ReqCtx::default()
    }

    /// No downstream modules: Pingora's default registers a disabled
    /// response-compression module, which still builds a per-request
    /// context and runs on every header and body chunk. why502 does not
    /// compress (nginx's `gzip` is reported and ignored).
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<bool> {
        self.init_ctx(session, ctx);
        match self.handle(session, ctx).await {
            // An HTTP upstream location: Pingora proxies it.
            Ok(()) if ctx.http.is_some() => Ok(false),
            Ok(()) => {
                linger(session).await;
                Ok(true)
            }
            Err(Abort) => {
                ctx.aborted = true;
                Err(Error::explain(
                    ErrorType::HTTPStatus(0),
                    "response aborted after the header was sent",
                ))
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut ReqCtx,
    ) -> Result<Box<HttpPeer>> {
        http_proxy::upstream_peer(ctx).await
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        http_proxy::request_filter(ctx, upstream_request)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        http_proxy::connected(ctx, reused, digest)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        http_proxy::response_filter(ctx, upstream_response)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut ReqCtx,
    ) -> Result<Option<std::time::Duration>> {
        http_proxy::body_filter(ctx, body.as_ref().map_or(0, Bytes::len), end_of_stream);
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut ReqCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        http_proxy::fail_to_connect(self, session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut ReqCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        http_proxy::error_while_proxy(self, session, ctx, e, client_reused)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ReqCtx,
    ) -> FailToProxy {
        if ctx.http.is_some() && !ctx.aborted {
            return http_proxy::fail_to_proxy(self, session, e, ctx).await;
        }
        if ctx.aborted || session.response_written().is_some() {
            // The header is out: close the connection so the client sees a truncated body.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let f = Failure::new(Cause::ProxyInternal, e.to_string(), e.to_string());
        let code = f.status();
        let _ = self.respond_failure(session, ctx, f).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &ReqCtx, _error: &Error) -> bool {
        // why502 reports these itself (error log line, event).
        ctx.aborted || ctx.http.is_some()
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut ReqCtx) {
        if self.rt.access.enabled {
            access::log_request(&self.rt, session, ctx);
        }
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &ReqCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        self.rt.access.persist(ctx)
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut ReqCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        self.rt.access.reuse(ctx, prev);
    }
}

/// The `Server` header's value.
pub const SERVER: HeaderValue = HeaderValue::from_static("why502");

/// The diagnosis headers under their default names (written titled, see
/// `h1::put_title`): cause, request id, Proxy-Status.
const DIAG_NAMES: [http::HeaderName; 3] = [
    http::HeaderName::from_static("why502-cause"),
    http::HeaderName::from_static("why502-request-id"),
    http::HeaderName::from_static("proxy-status"),
];

fn new_request_id(n: u64) -> String {
    // 16 hex chars: a prefix made once from the start time and the pid,
    // then the counter: unique per process run, and no clock read per
    // request.
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        (t as u32) ^ std::process::id().rotate_left(16)
    });
    let v = (u64::from(prefix) << 32) | u64::from(n as u32);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, c) in out.iter_mut().enumerate() {
        *c = HEX[((v >> ((15 - i) * 4)) & 0xf) as usize];
    }
    std::str::from_utf8(&out)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Debug builds only (the tests' binary): a request for the path in
/// `WHY502_TEST_PANIC` panics, so the tests can check what a bug in why502
/// costs (one connection, and a line in the error log). Release builds have
/// no such path.
#[cfg(debug_assertions)]
fn test_panic(path: &str) {
    static PATH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = PATH.get_or_init(|| std::env::var("WHY502_TEST_PANIC").ok());
    if at.as_deref() == Some(path) {
        panic!("WHY502_TEST_PANIC: {path}");
    }
}

impl Why502 {
    pub fn init_ctx<S: Downstream>(&self, session: &S, ctx: &mut ReqCtx) {
        let n = self.rt.conns.fetch_add(1, Ordering::Relaxed) + 1;
        let req = session.req_header();
        let s = &mut ctx.summary;
        // `*N`: the connection's number where the server keeps one (the
        // own HTTP/1 server), else the request's.
        s.conn = session.connection_number().unwrap_or(n);
        s.request_id = new_request_id(n);
        s.client = session.client_addr().map(|a| a.ip());
        s.method = req.method.clone();
        s.target = req.uri.path_and_query().cloned();
        s.protocol = match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        };
        s.host_value = req
            .headers
            .get(http::header::HOST)
            .filter(|v| v.to_str().is_ok())
            .cloned()
            .or_else(|| {
                req.uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            });
        ctx.start = Some(Instant::now());
        self.rt
            .access
            .start_request(ctx, session.connection_number());
    }

    pub async fn handle<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut ReqCtx,
    ) -> Result<(), Abort> {
        #[cfg(debug_assertions)]
        test_panic(session.req_header().uri.path());
        let mut st = RouteState::default();
        let r = self.route(session, ctx, &mut st).await;
        self.rt.access.leave_routing(ctx, st);
        r
    }

    async fn route<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut ReqCtx,
        st: &mut RouteState,
    ) -> Result<(), Abort> {
        let rt = &self.rt;
        // nginx: the servers of the listen address the connection came to, then Host.
        let local = session.server_addr();
        let all: Vec<usize>;
        let cands: &[usize] = match rt.listens.candidates(local) {
            Some(v) => v,
            None => {
                all = (0..rt.config.servers.len()).collect();
                &all
            }
        };
        let found = rt.listens.select_server_index(cands, ctx.summary.host());
        let Some((si, server)) = found.and_then(|i| rt.config.servers.get(i).map(|s| (i, s)))
        else {
            return self.respond_status(session, ctx, 404).await;
        };
        if let Some(n) = rt.server_log_names.get(si) {
            ctx.summary.server_name = n.clone();
        }
        session.limit_requests(server.keepalive_requests);
        session.set_idle_timeout(server.keepalive_timeout);
        rt.access.enter_server(ctx, si);
        ctx.summary.errlog = rt.server_errlogs.get(si).cloned().flatten();

        let req = session.req_header();
        // A target that is not UTF-8 is in the Uri lossily: its bytes are
        // routed (nginx works on bytes).
        let (path, query) = if req.raw_path_is_utf8() {
            (
                req.uri.path().as_bytes(),
                req.uri.query().map(str::as_bytes),
            )
        } else {
            let raw = req.raw_path();
            match raw.iter().position(|&b| b == b'?') {
                Some(q) => (&raw[..q], Some(&raw[q + 1..])),
                None => (raw, None),
            }
        };
        let Some((uri, carried)) = route::normalize_target(path) else {
            return self.respond_status(session, ctx, 400).await;
        };
        let args = query.map(|q| match std::str::from_utf8(q) {
            Ok(a) => a.to_string(),
            Err(_) => rawtext::from_bytes(q.to_vec()).0,
        });
        ctx.carried = carried || !req.raw_path_is_utf8();
        let content_length = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        *st = RouteState {
            uri,
            args,
            ..RouteState::default()
        };
        let mut named: Option<&Location> = None;
        // `rewrite ... last` searches the location again without the server rewrites.
        let mut skip_server_rewrites = false;
        // nginx allows 10 URI changes (rewrites, internal redirects) per request.
        'req: for _ in 0..=10 {
            // The location the status below is finished in (for error_page).
            let mut status_loc: Option<&Location> = server.base.as_deref();
            rt.access.enter_location(ctx, status_loc);
            let code: u16 = 'status: {
                // server-level rewrite phase
                if named.is_none() && !skip_server_rewrites && !server.rewrites.is_empty() {
                    match self.run_script(
                        session,
                        ctx,
                        server,
                        &server.rewrites,
                        &server.root,
                        None,
                        st,
                    ) {
                        ScriptEnd::Done { .. } | ScriptEnd::Last | ScriptEnd::Break => {}
                        ScriptEnd::Redirect(c, l) => {
                            return self.respond_redirect(session, ctx, server, c, &l).await
                        }
                        ScriptEnd::Return(c, t) => match t {
                            None if c >= 400 => break 'status c,
                            t => {
                                let Some(loc) = server.base.as_deref() else {
                                    return self.respond_status(session, ctx, c).await;
                                };
                                return self
                                    .respond_return(session, ctx, server, loc, &st.uri, c, t)
                                    .await;
                            }
                        },
                    }
                }
                skip_server_rewrites = false;
                let loc = match named.take() {
                    Some(l) => {
                        st.captures.clear();
                        l
                    }
                    None => match find_location(&server.locations, &st.uri) {
                        Some(m) => {
                            st.captures = m.captures;
                            m.loc
                        }
                        None => match server.base.as_deref() {
                            Some(b) => b,
                            None => break 'status 404,
                        },
                    },
                };
                status_loc = Some(loc);
                rt.access.enter_location(ctx, status_loc);
                let root: &std::path::Path = loc.root.as_deref().unwrap_or(&server.root);
                {
                    let vars = ReqVars::new(
                        rt,
                        session,
                        ctx,
                        server,
                        &st.uri,
                        st.args.as_deref(),
                        root,
                        &st.captures,
                        loc.fastcgi.as_deref(),
                    );
                    let headers = route::location_headers(loc, &vars);
                    drop(vars);
                    ctx.add_headers = headers;
                    ctx.expires = loc.expires;
                }
                if loc.internal && !st.internal {
                    break 'status 404;
                }
                // client_max_body_size: on Content-Length, once the location is known.
                let limit = loc
                    .client_max_body_size
                    .unwrap_or(server.client_max_body_size);
                if let Some(len) = content_length.filter(|&l| limit > 0 && l > limit) {
                    let f = Failure::new(
                        Cause::ClientBodyTooLarge,
                        format!("client intended to send too large body: {len} bytes"),
                        format!("Content-Length {len} > client_max_body_size {limit}"),
                    );
                    return self.respond_failure(session, ctx, f).await;
                }
                // location rewrite phase (`return` of the YAML front end last)
                match self.run_script(
                    session,
                    ctx,
                    server,
                    &loc.script,
                    root,
                    loc.fastcgi.as_deref(),
                    st,
                ) {
                    ScriptEnd::Done { uri_changed: true } | ScriptEnd::Last => {
                        st.uri = match route::normalize_path(&st.uri) {
                            Some(u) => u,
                            None => break 'status 400,
                        };
                        skip_server_rewrites = true;
                        continue 'req;
                    }
                    ScriptEnd::Done { .. } | ScriptEnd::Break => {}
                    ScriptEnd::Redirect(c, l) => {
                        return self.respond_redirect(session, ctx, server, c, &l).await
                    }
                    ScriptEnd::Return(c, None) if c >= 400 => break 'status c,
                    ScriptEnd::Return(c, t) => {
                        return self
                            .respond_return(session, ctx, server, loc, &st.uri, c, t)
                            .await
                    }
                }
                if let Some(r) = &loc.ret {
                    let vars = ReqVars::new(
                        rt,
                        session,
                        ctx,
                        server,
                        &st.uri,
                        st.args.as_deref(),
                        root,
                        &st.captures,
                        None,
                    );
                    let text = r.text.as_ref().map(|t| t.eval(&vars));
                    drop(vars);
                    if text.is_none() && r.code >= 400 {
                        break 'status r.code;
                    }
                    return self
                        .respond_return(session, ctx, server, loc, &st.uri, r.code, text)
                        .await;
                }
                // access phase
                if !route::access_allowed(loc, ctx.summary.client) {
                    break 'status 403;
                }
                // try_files (precontent phase)
                if let Some(tf) = &loc.try_files {
                    let vars = ReqVars::new(
                        rt,
                        session,
                        ctx,
                        server,
                        &st.uri,
                        st.args.as_deref(),
                        root,
                        &st.captures,
                        loc.fastcgi.as_deref(),
                    );
                    let tried = route::try_files(tf, root, loc, &vars);
                    drop(vars);
                    match tried {
                        // nginx continues in this location with the file's URI
                        TryResult::Found(u) => st.uri = u,
                        TryResult::Redirect(u) => {
                            if st.try_files_redirect(&u).is_none() {
                                break 'status 400;
                            }
                            continue 'req;
                        }
                        TryResult::Named(n) => {
                            match find_named(&server.locations, &n) {
                                Some(l) => named = Some(l),
                                None => break 'status 500,
                            }
                            st.internal = true;
                            continue 'req;
                        }
                        TryResult::Code(c) => break 'status c,
                    }
                }
                // content phase
                let uri = st.uri.as_str();
                let args = st.args.as_deref();
                let captures = st.captures.as_slice();
                if let Some(hp) = &loc.proxy {
                    let vars =
                        ReqVars::new(rt, session, ctx, server, uri, args, root, captures, None);
                    let prepared = http_proxy::prepare(self, session, hp, loc, &vars, uri, args);
                    drop(vars);
                    return match prepared {
                        Ok(st) => {
                            ctx.http = Some(st);
                            Ok(())
                        }
                        Err(f) => self.respond_failure(session, ctx, f).await,
                    };
                }
                if let Some(fc) = &loc.fastcgi {
                    // A chunked body is read whole first, like nginx: PHP
                    // needs CONTENT_LENGTH. So is a small body sent to a
                    // kept connection: if PHP closed that connection just
                    // before (a worker at pm.max_requests), the request is
                    // sent again on a fresh one, body and all (nginx reads
                    // every body before it connects).
                    let small = fc.keep_conn
                        && content_length.is_some_and(|n| n <= fastcgi::KEPT_CONN_BODY_MAX);
                    let whole = small
                        || session
                            .req_header()
                            .headers
                            .contains_key(http::header::TRANSFER_ENCODING);
                    let buffered = if whole && !session.is_body_done() {
                        let limit = loc
                            .client_max_body_size
                            .unwrap_or(server.client_max_body_size);
                        match fastcgi::read_whole_body(session, limit, server.client_body_timeout)
                            .await
                        {
                            Ok((parts, len)) => {
                                ctx.body_len = Some(len);
                                ctx.summary.bytes_sent = len;
                                Some(parts)
                            }
                            Err(f) => return self.respond_failure(session, ctx, f).await,
                        }
                    } else {
                        None
                    };
                    let params = |session: &S, ctx: &ReqCtx, p: &mut BytesMut| {
                        let vars = ReqVars::new(
                            rt,
                            session,
                            ctx,
                            server,
                            uri,
                            args,
                            root,
                            captures,
                            Some(fc),
                        );
                        fastcgi::build_params(fc, &vars, session.req_header(), p)
                    };
                    return fastcgi::serve(self, session, ctx, server, fc, params, buffered).await;
                }
                let vars = ReqVars::new(rt, session, ctx, server, uri, args, root, captures, None);
                // static: the index module for directories
                if uri.ends_with('/') {
                    let index = loc.index.as_ref().unwrap_or(&server.index);
                    let dir = route::file_path(root, loc, uri, &vars);
                    let mut found = None;
                    for name in index {
                        if name.starts_with('/') || dir.join(name).is_file() {
                            found = Some(if name.starts_with('/') {
                                name.clone()
                            } else {
                                format!("{uri}{name}")
                            });
                            break;
                        }
                    }
                    drop(vars);
                    match found {
                        Some(u) => {
                            st.uri = match route::normalize_path(&u) {
                                Some(u) => u,
                                None => break 'status 400,
                            };
                            st.internal = true;
                            st.captures.clear();
                            continue 'req;
                        }
                        None => break 'status if dir.is_dir() { 403 } else { 404 },
                    }
                }
                let path = route::file_path(root, loc, uri, &vars);
                drop(vars);
                let opts = static_files::StaticOpts {
                    content_type: route::content_type(loc, uri, &path),
                    status: st.status_override,
                };
                match static_files::serve(self, session, ctx, &path, &opts).await? {
                    static_files::Served::Done => return Ok(()),
                    static_files::Served::Status(c) => break 'status c,
                    static_files::Served::Directory => {
                        let host = session
                            .req_header()
                            .headers
                            .get(http::header::HOST)
                            .and_then(|v| v.to_str().ok())
                            .map(vars::host_without_port);
                        let https = session.is_tls();
                        let local = session.server_addr();
                        // nginx escapes the path (bytes that are not
                        // UTF-8, spaces, `%`, `?`...).
                        let path = http_proxy::escape_uri(uri);
                        let l = match &args {
                            Some(a) if !a.is_empty() => format!("{path}/?{a}"),
                            _ => format!("{path}/"),
                        };
                        let l = if server.absolute_redirect {
                            route::absolute_location(&l, https, host.as_deref(), local)
                        } else {
                            l
                        };
                        return static_files::redirect_to_dir(self, session, ctx, l).await;
                    }
                }
            };
            // Finish with `code`: an error_page of the location, or nginx's page.
            if !st.error_page_used {
                if let Some(loc) = status_loc {
                    let root = loc.root.clone().unwrap_or_else(|| server.root.clone());
                    let vars = ReqVars::new(
                        rt,
                        session,
                        ctx,
                        server,
                        &st.uri,
                        st.args.as_deref(),
                        &root,
                        &st.captures,
                        None,
                    );
                    let action = route::error_page(loc, code, &vars);
                    drop(vars);
                    match action {
                        Some(route::ErrorPageAction::Internal { target, status }) => {
                            st.error_page_used = true;
                            st.status_override = status;
                            ctx.error_status = status;
                            ctx.as_get = true;
                            if target.starts_with('@') {
                                match find_named(&server.locations, &target) {
                                    Some(l) => named = Some(l),
                                    None => return self.respond_status(session, ctx, code).await,
                                }
                                st.internal = true;
                            } else if st.redirect_to(&target).is_none() {
                                return self.respond_status(session, ctx, code).await;
                            }
                            continue 'req;
                        }
                        Some(route::ErrorPageAction::Redirect(c, l)) => {
                            return self.respond_redirect(session, ctx, server, c, &l).await;
                        }
                        None => {}
                    }
                }
            }
            return self.respond_status(session, ctx, code).await;
        }
        // rewrite or internal redirection cycle
        self.rt
            .errlog
            .for_req(&ctx.summary)
            .write_line(&report::nginx_line(
                "error",
                &format!(
                    "rewrite or internal redirection cycle while processing \"{}\"",
                    st.uri
                ),
                None,
                &ctx.summary,
            ));
        self.respond_status(session, ctx, 500).await
    }

    /// Runs rewrite-module directives (`set`, `rewrite`, `return`) in order.
    #[allow(clippy::too_many_arguments)]
    fn run_script<S: Downstream>(
        &self,
        session: &S,
        ctx: &mut ReqCtx,
        server: &Server,
        ops: &[crate::config::ScriptOp],
        root: &std::path::Path,
        fc: Option<&FastCgi>,
        st: &mut RouteState,
    ) -> ScriptEnd {
        let mut uri_changed = false;
        for op in ops {
            let before = st.uri.clone();
            let step = {
                let rt = &self.rt;
                let c: &ReqCtx = ctx;
                let eval = |t: &crate::config::Template, s: &RouteState| {
                    let vars = ReqVars::new(
                        rt,
                        session,
                        c,
                        server,
                        &s.uri,
                        s.args.as_deref(),
                        root,
                        &s.captures,
                        fc,
                    );
                    t.eval(&vars)
                };
                route::script_step(op, st, &eval)
            };
            match step {
                route::ScriptStep::Set(n, v) => {
                    ctx.user_vars.insert(n, v);
                }
                route::ScriptStep::Next => uri_changed |= st.uri != before,
                route::ScriptStep::End(e) => return e,
            }
        }
        ScriptEnd::Done { uri_changed }
    }
    /// Answers with a failure page (status, cause header, Proxy-Status) and logs it.
    pub async fn respond_failure<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut ReqCtx,
        f: Failure,
    ) -> Result<(), Abort> {
        let form = report::PageForm::from_accept(
            session
                .req_header()
                .headers
                .get(http::header::ACCEPT)
                .map(|v| v.as_bytes()),
        );
        ctx.summary.status = f.status();
        self.finish_timing(ctx);
        // The diagnosis headers under their default names are written as
        // lines by a session that takes them: no case map, no name hashed.
        let titled = self.titles_all_names(session, ctx);
        let lines = if titled { session.head_lines() } else { None };
        let r = report::render(&self.rt.config.diagnostics, &f, &ctx.summary, form, lines);
        report::log_failure(&self.rt.errlog, &f, &ctx.summary);
        // nginx closes the connection after its own 500 page
        // (ngx_http_special_response_handler).
        let close = matches!(f.cause, Cause::ConnectSocketFailed | Cause::ProxyInternal);
        ctx.logged = true;
        ctx.failure = Some(f);
        if r.status == 499 {
            return Err(Abort);
        }
        if close {
            session.set_keepalive(None);
        }
        use http::header as hn;
        // Room for the diagnosis headers and the three the server adds
        // (Server, Date, Connection): a map that grows rehashes.
        let mut m = http::HeaderMap::with_capacity(16);
        let len = r.body_len();
        m.insert(hn::CONTENT_TYPE, r.content_type);
        m.insert(hn::CONTENT_LENGTH, HeaderValue::from(len));
        m.insert(
            hn::CACHE_CONTROL,
            const { HeaderValue::from_static("no-store") },
        );
        m.insert(hn::SERVER, SERVER);
        // The diagnosis headers under their default names need no case map
        // (see `downstream::response_header`); configured names keep theirs.
        let d = &self.rt.config.diagnostics;
        let mut named = None;
        if let Some(values) = r.headers {
            if titled {
                for (n, v) in DIAG_NAMES.iter().zip(values) {
                    if let Some(v) = v {
                        m.append(n.clone(), v);
                    }
                }
            } else {
                named = Some(values);
            }
        }
        let code = http::StatusCode::from_u16(r.status).map_err(|_| Abort)?;
        let mut h = downstream::response_header(titled, code, m);
        if let Some(values) = named {
            let names = [
                d.cause_header.as_str(),
                d.request_id_header.as_str(),
                "Proxy-Status",
            ];
            for (n, v) in names.into_iter().zip(values) {
                if let Some(v) = v {
                    let _ = h.append_header(n.to_string(), v);
                }
            }
        }
        self.decorate_response(ctx, &mut h);
        self.write_page(session, h, r.body).await
    }

    /// Whether a response header for this request may be built without a
    /// case map: the session writes names in their usual capitalisation,
    /// and no name comes from configuration (`add_header`, diagnosis
    /// header names other than the defaults).
    pub fn titles_all_names<S: Downstream>(&self, session: &S, ctx: &ReqCtx) -> bool {
        let d = &self.rt.config.diagnostics;
        session.titles_header_names()
            && ctx.add_headers.is_empty()
            && d.cause_header == crate::config::CAUSE_HEADER
            && d.request_id_header == crate::config::REQUEST_ID_HEADER
    }

    /// An nginx-style status page without diagnosis (404, 403, 400...).
    pub async fn respond_status<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut ReqCtx,
        code: u16,
    ) -> Result<(), Abort> {
        ctx.summary.status = code;
        let body = if code >= 400 {
            report::status_page(code, "")
        } else {
            String::new()
        };
        let mut m = http::HeaderMap::with_capacity(8);
        if !body.is_empty() {
            m.insert(
                http::header::CONTENT_TYPE,
                const { HeaderValue::from_static("text/html") },
            );
        }
        m.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        m.insert(http::header::SERVER, SERVER);
        let code = http::StatusCode::from_u16(code).map_err(|_| Abort)?;
        // No case map unless `add_header` names need theirs.
        let titled = session.titles_header_names() && ctx.add_headers.is_empty();
        let mut h = downstream::response_header(titled, code, m);
        self.decorate_response(ctx, &mut h);
        self.write_simple(session, h, Bytes::from(body)).await
    }

    /// `return code [text]`: a redirect for 301/302/303/307/308, else the
    /// text as the body (typed like nginx: by the URI's extension, else
    /// `default_type`), else nginx's page for the code.
    #[allow(clippy::too_many_arguments)]
    async fn respond_return<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut ReqCtx,
        server: &Server,
        loc: &Location,
        uri: &str,
        code: u16,
        text: Option<String>,
    ) -> Result<(), Abort> {
        if code == 444 {
            // nginx closes the connection without a response
            ctx.summary.status = 444;
            return Err(Abort);
        }
        if matches!(code, 301 | 302 | 303 | 307 | 308) {
            return self
                .respond_redirect(session, ctx, server, code, &text.unwrap_or_default())
                .await;
        }
        match text {
            Some(t) => {
                let ctype = match &loc.types {
                    Some(_) => route::content_type(loc, uri, std::path::Path::new(uri)),
                    None => "text/plain".into(),
                };
                let t = carried_bytes(ctx, t);
                let mut h = ResponseHeader::build(code, Some(4)).map_err(|_| Abort)?;
                let _ = h.insert_header(http::header::CONTENT_TYPE, ctype.as_ref());
                let _ = h.insert_header(http::header::CONTENT_LENGTH, t.len().to_string());
                ctx.summary.status = code;
                self.decorate_response(ctx, &mut h);
                self.write_simple(session, h, Bytes::from(t)).await
            }
            None => self.respond_status(session, ctx, code).await,
        }
    }

    /// A redirect with nginx's HTML body; `/path` is made absolute when the
    /// server asks for it (nginx's `absolute_redirect on`).
    async fn respond_redirect<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut ReqCtx,
        server: &Server,
        code: u16,
        location: &str,
    ) -> Result<(), Abort> {
        let location = if server.absolute_redirect {
            let req = session.req_header();
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(|h| {
                    let mut h = vars::host_without_port(h);
                    h.truncate(h.trim_end_matches('.').len());
                    h
                });
            let https = session.is_tls();
            let local = session.server_addr();
            route::absolute_location(location, https, host.as_deref(), local)
        } else {
            location.to_string()
        };
        let mut h = ResponseHeader::build(code, Some(4)).map_err(|_| Abort)?;
        let body = report::status_page(code, "");
        let _ = h.insert_header("Location", carried_bytes(ctx, location));
        let _ = h.insert_header(http::header::CONTENT_TYPE, "text/html");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        ctx.summary.status = code;
        self.decorate_response(ctx, &mut h);
        self.write_simple(session, h, Bytes::from(body)).await
    }

    /// Whether [`Why502::decorate_response`] may add anything.
    pub fn decorates(&self, ctx: &ReqCtx) -> bool {
        ctx.expires.is_some() || !ctx.add_headers.is_empty()
    }

    /// Adds the location's `add_header` and `expires` headers to a response
    /// why502 makes (nginx: only to 2xx/3xx statuses unless `always`).
    /// Nothing is added when [`Why502::decorates`] is false.
    pub fn decorate_response(&self, ctx: &ReqCtx, h: &mut ResponseHeader) {
        let status = h.status.as_u16();
        let ok = route::status_gets_headers(status);
        if ok {
            if let Some((exp, cc)) = ctx.expires.and_then(route::expires_headers) {
                let _ = h.insert_header("Expires", exp);
                let _ = h.insert_header(http::header::CACHE_CONTROL, cc);
            }
        }
        for (name, value, always) in &ctx.add_headers {
            if (ok || *always) && !value.is_empty() {
                if ctx.carried {
                    let _ = h.append_header(name.clone(), &rawtext::to_bytes(value)[..]);
                } else {
                    let _ = h.append_header(name.clone(), value.as_str());
                }
            }
        }
    }

    pub async fn write_simple<S: Downstream>(
        &self,
        session: &mut S,
        h: ResponseHeader,
        body: Bytes,
    ) -> Result<(), Abort> {
        self.write_page(session, h, [body, Bytes::new()]).await
    }

    /// [`Why502::write_simple`] with the body in two pieces, written one
    /// after the other ([`Downstream::write_response_body_last`]).
    pub async fn write_page<S: Downstream>(
        &self,
        session: &mut S,
        mut h: ResponseHeader,
        body: [Bytes; 2],
    ) -> Result<(), Abort> {
        // A header built with why502's `Server` alone is left as it is:
        // `set_header` moves the header out and back (400 instructions).
        let ours = {
            let mut v = h.headers.get_all(http::header::SERVER).iter();
            v.next() == Some(&SERVER) && v.next().is_none()
        };
        if !ours {
            downstream::set_header(&mut h, http::header::SERVER, SERVER);
        }
        // The request body (if any) was not read: don't keep the connection.
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(h), false)
            .await
            .map_err(|_| Abort)?;
        let body = if head_only { Default::default() } else { body };
        session
            .write_response_body_last(body)
            .await
            .map_err(|_| Abort)
    }

    /// The request was handed to Pingora's HTTP-proxy machinery (a location
    /// with `proxy`): [`Why502::handle`] only prepared it, nothing was sent.
    pub fn is_http_proxied(&self, ctx: &ReqCtx) -> bool {
        ctx.http.is_some()
    }

    pub fn finish_timing(&self, ctx: &mut ReqCtx) {
        if let Some(s) = ctx.start {
            ctx.summary.total_ms = crate::report::ms_since(s);
        }
    }
}

/// Parses `client`'s IP (for tests and tools).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// The document root a location serves from.
pub fn location_root(server: &Server, loc: &crate::config::Location) -> PathBuf {
    loc.root.clone().unwrap_or_else(|| server.root.clone())
}

#[allow(dead_code)]
fn _assert_send(_: &FastCgi) {}

/// nginx's `lingering_close` on Pingora's HTTP/1 listeners (the own server
/// has its own, `h1::linger`): a response written before the request body
/// was read is followed by reading and dropping the rest of the body, for
/// at most `lingering_time` and `lingering_timeout` without data. Closing
/// with unread data makes the kernel send a reset, which reaches a client
/// in mid-upload as "connection reset" and discards the response (a 413, a
/// 502) it has not read yet. The response is flushed before the body is
/// read, so a client that waits for it (`Expect: 100-continue`) has it.
async fn linger(session: &mut Session) {
    if Downstream::is_http2(session) || Downstream::is_body_done(session) {
        return;
    }
    let ds = session.as_downstream_mut();
    ds.set_read_timeout(Some(crate::h1::LINGERING_TIMEOUT));
    ds.set_total_drain_timeout(Some(crate::h1::LINGERING_TIME));
    let _ = ds.drain_request_body().await;
}

#[cfg(test)]
mod request_id_tests {
    #[test]
    fn request_id_is_16_hex_with_the_counter_last() {
        let a = super::new_request_id(1);
        let b = super::new_request_id(0xabcd);
        assert_eq!(a.len(), 16);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(a.ends_with("00000001"), "{a}");
        assert!(b.ends_with("0000abcd"), "{b}");
    }
}
