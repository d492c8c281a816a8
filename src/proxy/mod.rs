//! The Pingora wiring: one [`ProxyHttp`] implementation that routes each
//! request like nginx (server, location, try_files, index) and serves it from
//! a static file or through the FastCGI gateway, reporting every failure
//! through [`crate::report`].
//!
//! FastCGI and static responses are written from `request_filter` (Pingora's
//! upstream machinery is HTTP-only). A failure after the response header was
//! sent returns an error from `request_filter`: Pingora then drops the
//! downstream connection without the chunked terminator, so the client can
//! tell the body is truncated.

pub mod fastcgi;
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
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::cause::Cause;
use crate::config::{Config, FastCgi, Server, Upstream};
use crate::report::{self, ErrorLog, Failure, RequestSummary};
use crate::upstream::UpstreamState;

use route::{find_location, find_named, select_server, TryResult};
pub use vars::ReqVars;

/// Everything shared by all requests.
pub struct Runtime {
    pub config: Config,
    upstreams: HashMap<usize, Arc<UpstreamState>>,
    pub errlog: ErrorLog,
    pub access_log: Option<ErrorLog>,
    conns: AtomicU64,
    pub hostname: String,
    /// For each listen port, the indexes of the servers listening on it.
    by_port: HashMap<u16, Vec<usize>>,
}

impl Runtime {
    pub fn new(config: Config) -> std::io::Result<Runtime> {
        let mut upstreams = HashMap::new();
        let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, s) in config.servers.iter().enumerate() {
            for l in &s.listen {
                let v = by_port.entry(l.addr.port()).or_default();
                if l.default_server {
                    v.insert(0, i);
                } else if !v.contains(&i) {
                    v.push(i);
                }
            }
            collect_upstreams(&s.locations, &mut upstreams);
        }
        let errlog = ErrorLog::open(config.logging.error_log.as_deref())?;
        let access_log = match &config.logging.access_log {
            Some(p) => Some(ErrorLog::open(Some(p))?),
            None => None,
        };
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Ok(Runtime {
            config,
            upstreams,
            errlog,
            access_log,
            conns: AtomicU64::new(0),
            hostname,
            by_port,
        })
    }

    pub fn upstream_state(&self, u: &Arc<Upstream>) -> Option<&Arc<UpstreamState>> {
        self.upstreams.get(&(Arc::as_ptr(u) as usize))
    }
}

fn collect_upstreams(
    locs: &[crate::config::Location],
    out: &mut HashMap<usize, Arc<UpstreamState>>,
) {
    for l in locs {
        if let Some(fc) = &l.fastcgi {
            out.entry(Arc::as_ptr(&fc.upstream) as usize)
                .or_insert_with(|| Arc::new(UpstreamState::new(fc.upstream.clone())));
        }
        collect_upstreams(&l.locations, out);
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<bool> {
        self.init_ctx(session, ctx);
        match self.handle(session, ctx).await {
            Ok(()) => Ok(true),
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
        _ctx: &mut ReqCtx,
    ) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "no HTTP upstream configured",
        ))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ReqCtx,
    ) -> FailToProxy {
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
        ctx.aborted
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut ReqCtx) {
        if let Some(log) = &self.rt.access_log {
            let s = &ctx.summary;
            let line = format!(
                "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" cause={} rid={}\n",
                s.client_addr,
                chrono::Local::now().format("%d/%b/%Y:%H:%M:%S %z"),
                s.method,
                s.uri,
                s.protocol,
                if ctx.aborted {
                    s.status
                } else {
                    session
                        .response_written()
                        .map(|r| r.status.as_u16())
                        .unwrap_or(s.status)
                },
                session.body_bytes_sent(),
                session
                    .req_header()
                    .headers
                    .get("referer")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                session
                    .req_header()
                    .headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                ctx.failure.as_ref().map(|f| f.cause.code()).unwrap_or("-"),
                s.request_id,
            );
            log.write_line(&line);
        }
    }
}

fn new_request_id(n: u64) -> String {
    // 16 hex chars: time-based prefix + counter, unique per process run.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:08x}{:08x}",
        (t as u32) ^ std::process::id().rotate_left(16),
        n as u32
    )
}

impl Why502 {
    fn init_ctx(&self, session: &Session, ctx: &mut ReqCtx) {
        let n = self.rt.conns.fetch_add(1, Ordering::Relaxed) + 1;
        let req = session.req_header();
        let s = &mut ctx.summary;
        s.conn = n;
        s.request_id = new_request_id(n);
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        s.client = client;
        s.client_addr = client
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "unix:".into());
        s.method = req.method.as_str().to_string();
        s.uri = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        s.protocol = match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        }
        .to_string();
        s.host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|a| a.as_str().to_string()));
        ctx.start = Some(Instant::now());
    }

    async fn handle(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<(), Abort> {
        let rt = &self.rt;
        let port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port())
            .unwrap_or(0);
        let all: Vec<usize>;
        let cands: &[usize] = match rt.by_port.get(&port) {
            Some(v) => v,
            None => {
                all = (0..rt.config.servers.len()).collect();
                &all
            }
        };
        let Some(server) = select_server(&rt.config.servers, cands, ctx.summary.host.as_deref())
        else {
            return self.respond_status(session, ctx, 404).await;
        };
        ctx.summary.server_name = server.names.first().cloned().unwrap_or_default();

        let raw_path = session.req_header().uri.path().to_string();
        let mut args = session.req_header().uri.query().map(str::to_string);
        let Some(mut uri) = route::normalize_path(&raw_path) else {
            return self.respond_status(session, ctx, 400).await;
        };

        // client_max_body_size: checked on Content-Length before anything else.
        if let Some(len) = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if server.client_max_body_size > 0 && len > server.client_max_body_size {
                let f = Failure::new(
                    Cause::ClientBodyTooLarge,
                    format!("client intended to send too large body: {len} bytes"),
                    format!(
                        "Content-Length {len} > client_max_body_size {}",
                        server.client_max_body_size
                    ),
                );
                return self.respond_failure(session, ctx, f).await;
            }
        }

        let mut named: Option<&crate::config::Location> = None;
        for _ in 0..10 {
            let (loc, captures) = match named.take() {
                Some(l) => (l, Vec::new()),
                None => match find_location(&server.locations, &uri) {
                    Some(m) => (m.loc, m.captures),
                    None => return self.respond_status(session, ctx, 404).await,
                },
            };
            let root = loc.root.clone().unwrap_or_else(|| server.root.clone());
            if let Some(r) = &loc.ret {
                let vars = ReqVars::new(
                    rt,
                    session,
                    ctx,
                    server,
                    &uri,
                    args.as_deref(),
                    &root,
                    captures.clone(),
                    None,
                );
                let text = r.text.as_ref().map(|t| t.eval(&vars));
                drop(vars);
                return self.respond_return(session, ctx, r.code, text).await;
            }
            if let Some(tf) = &loc.try_files {
                let vars = ReqVars::new(
                    rt,
                    session,
                    ctx,
                    server,
                    &uri,
                    args.as_deref(),
                    &root,
                    captures.clone(),
                    loc.fastcgi.as_deref(),
                );
                let tried = route::try_files(tf, &root, loc, &vars);
                drop(vars);
                match tried {
                    TryResult::Found(u) => {
                        if loc.fastcgi.is_none() {
                            uri = u;
                        }
                    }
                    TryResult::Redirect(u) => {
                        let (p, a) = match u.split_once('?') {
                            Some((p, a)) => (p.to_string(), Some(a.to_string())),
                            None => (u, args.clone()),
                        };
                        match route::normalize_path(&p) {
                            Some(p) => uri = p,
                            None => return self.respond_status(session, ctx, 400).await,
                        }
                        args = a;
                        continue;
                    }
                    TryResult::Named(n) => {
                        match find_named(&server.locations, &n) {
                            Some(l) => named = Some(l),
                            None => return self.respond_status(session, ctx, 500).await,
                        }
                        continue;
                    }
                    TryResult::Code(c) => return self.respond_status(session, ctx, c).await,
                }
            }
            if let Some(fc) = &loc.fastcgi {
                let vars = ReqVars::new(
                    rt,
                    session,
                    ctx,
                    server,
                    &uri,
                    args.as_deref(),
                    &root,
                    captures,
                    Some(fc),
                );
                let params = fastcgi::build_params(fc, &vars, session.req_header());
                drop(vars);
                return fastcgi::serve(self, session, ctx, server, fc, params).await;
            }
            let vars = ReqVars::new(
                rt,
                session,
                ctx,
                server,
                &uri,
                args.as_deref(),
                &root,
                captures,
                None,
            );
            // static
            if uri.ends_with('/') {
                let index = loc.index.as_ref().unwrap_or(&server.index);
                let dir = route::file_path(&root, loc, &uri, &vars);
                let mut found = None;
                for name in index {
                    let candidate = if name.starts_with('/') {
                        name.clone()
                    } else {
                        format!("{uri}{name}")
                    };
                    if name.starts_with('/') || dir.join(name).is_file() {
                        found = Some(candidate);
                        break;
                    }
                }
                drop(vars);
                match found {
                    Some(u) => {
                        uri = u;
                        continue;
                    }
                    None => {
                        let code = if dir.is_dir() { 403 } else { 404 };
                        return self.respond_status(session, ctx, code).await;
                    }
                }
            }
            let path = route::file_path(&root, loc, &uri, &vars);
            drop(vars);
            return static_files::serve(self, session, ctx, &path, &uri, args.as_deref()).await;
        }
        // rewrite or internal redirection cycle
        self.respond_status(session, ctx, 500).await
    }

    /// Answers with a failure page (status, cause header, Proxy-Status) and logs it.
    pub async fn respond_failure(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        f: Failure,
    ) -> Result<(), Abort> {
        let wants_json = session
            .req_header()
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
        ctx.summary.status = f.status();
        self.finish_timing(ctx);
        let r = report::render(&self.rt.config.diagnostics, &f, &ctx.summary, wants_json);
        report::log_failure(&self.rt.errlog, &f, &ctx.summary);
        ctx.logged = true;
        ctx.failure = Some(f);
        if r.status == 499 {
            return Err(Abort);
        }
        let mut h = ResponseHeader::build(r.status, Some(6)).map_err(|_| Abort)?;
        let _ = h.insert_header(http::header::CONTENT_TYPE, r.content_type);
        let _ = h.insert_header(http::header::CONTENT_LENGTH, r.body.len().to_string());
        let _ = h.insert_header(http::header::CACHE_CONTROL, "no-store");
        for (k, v) in r.headers {
            let _ = h.append_header(k, v);
        }
        self.write_simple(session, h, Bytes::from(r.body)).await
    }

    /// An nginx-style status page without diagnosis (404, 403, 400...).
    pub async fn respond_status(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        code: u16,
    ) -> Result<(), Abort> {
        let reason = report::reason_phrase(code);
        ctx.summary.status = code;
        let body = if code >= 400 {
            format!("<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>why502</center>\r\n</body>\r\n</html>\r\n")
        } else {
            String::new()
        };
        let mut h = ResponseHeader::build(code, Some(4)).map_err(|_| Abort)?;
        if !body.is_empty() {
            let _ = h.insert_header(http::header::CONTENT_TYPE, "text/html");
        }
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        self.write_simple(session, h, Bytes::from(body)).await
    }

    async fn respond_return(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        code: u16,
        text: Option<String>,
    ) -> Result<(), Abort> {
        if matches!(code, 301 | 302 | 303 | 307 | 308) {
            let mut h = ResponseHeader::build(code, Some(4)).map_err(|_| Abort)?;
            let reason = report::reason_phrase(code);
            let body = format!("<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>why502</center>\r\n</body>\r\n</html>\r\n");
            let _ = h.insert_header(http::header::LOCATION, text.unwrap_or_default());
            let _ = h.insert_header(http::header::CONTENT_TYPE, "text/html");
            let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
            ctx.summary.status = code;
            return self.write_simple(session, h, Bytes::from(body)).await;
        }
        match text {
            Some(t) => {
                let mut h = ResponseHeader::build(code, Some(4)).map_err(|_| Abort)?;
                let _ = h.insert_header(http::header::CONTENT_TYPE, "text/plain");
                let _ = h.insert_header(http::header::CONTENT_LENGTH, t.len().to_string());
                ctx.summary.status = code;
                self.write_simple(session, h, Bytes::from(t)).await
            }
            None => self.respond_status(session, ctx, code).await,
        }
    }

    pub async fn write_simple(
        &self,
        session: &mut Session,
        mut h: ResponseHeader,
        body: Bytes,
    ) -> Result<(), Abort> {
        let _ = h.insert_header(http::header::SERVER, "why502");
        // The request body (if any) was not read: don't keep the connection.
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(h), false)
            .await
            .map_err(|_| Abort)?;
        let data = if head_only || body.is_empty() {
            None
        } else {
            Some(body)
        };
        session
            .write_response_body(data, true)
            .await
            .map_err(|_| Abort)
    }

    pub fn finish_timing(&self, ctx: &mut ReqCtx) {
        if let Some(s) = ctx.start {
            ctx.summary.total_ms = s.elapsed().as_secs_f64() * 1000.0;
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
