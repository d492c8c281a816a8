//! The HTTP gateway (`proxy_pass`): Pingora proxies the request, and this
//! file decides where it goes (server selection, DNS, TLS settings), what is
//! sent (nginx's default headers, `proxy_set_header`), when to try again
//! (nginx's next-upstream rules, the stale keep-alive retry) and maps every
//! failure onto a [`Cause`] with nginx's wording, like the FastCGI gateway.
//!
//! Connections are opened by [`Connector`] (a Pingora custom L4 connector) so
//! that connect errors keep their errno and the TCP connect is told apart from
//! the TLS handshake. HTTP/1 connections are wrapped in a [`TapStream`] that
//! keeps the raw response header bytes: Pingora silently drops
//! `Content-Length` when `Transfer-Encoding` is also present, and why502 must
//! refuse such responses. For HTTP/1 over TLS the connector does the TLS
//! handshake itself (Pingora sees a plain stream) so that the tap sits above
//! TLS and reads the same bytes as for plain HTTP. Tapped connections are
//! virtual sockets, which Pingora's pool cannot reuse, so they are pooled here
//! (in [`UpstreamState`]): a tapped connection goes back to that pool when it
//! is dropped after a complete response that Pingora itself judged reusable.
//!
//! HTTP/2 (`h2: true`) is Pingora's: h2c with prior knowledge on `http://`
//! backends, ALPN (h2, then http/1.1) with Pingora's TLS on `https://` ones.
//! A TLS backend that answers the h2 offer with HTTP/1.1 is remembered (per
//! location and server, for [`H1_FALLBACK_TTL`]) and the request is retried
//! at once over the connector's own TLS with the tap. HTTP/2 responses need
//! no tap: the `h2` crate refuses the framing headers HTTP/2 forbids
//! (`Transfer-Encoding`, `Connection`, ...), and its errors (RST_STREAM,
//! GOAWAY, malformed headers, a closed connection) are mapped onto causes.

use std::any::Any;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as L4Addr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_core::protocols::tls::HandshakeCompleteHook;
use pingora_core::protocols::Digest;
use pingora_core::tls::ssl::{SslConnector, SslMethod, SslRef, SslVerifyMode};
use pingora_core::tls::tokio_ssl::SslStream;
use pingora_core::tls::x509::store::X509StoreBuilder;
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::cause::Cause;
use crate::config::template::Vars;
use crate::config::{Addr, HttpProxy, Location, Match, Var};
use crate::report::{self, Failure};
use crate::upstream::{self, HttpWire, Pick, UpstreamState};

use super::downstream::Downstream;
use super::{ReqCtx, Why502};

/// Raw response bytes kept per request to check the header section.
const TAP_KEEP: usize = 64 * 1024;
/// Bound on the diagnostic probes (plain HTTP sent to a TLS port, h2c to a
/// server that does not speak it).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TLS server that answered an h2 offer with HTTP/1.1 is talked
/// to over HTTP/1.1 before h2 is offered again.
pub const H1_FALLBACK_TTL: Duration = Duration::from_secs(300);
/// Concurrent requests per HTTP/2 connection (the server's own
/// SETTINGS_MAX_CONCURRENT_STREAMS lowers it).
const H2_STREAMS: usize = 100;

// ---- per request --------------------------------------------------------

/// What one connection attempt reports back from the connector.
#[derive(Default)]
struct Slot {
    /// Connect failure with errno (set by the connector).
    failure: Option<Failure>,
    /// The TCP (or unix) connect succeeded; a later connect error is TLS.
    tcp_connected: bool,
    connect_ms: Option<f64>,
    tap: Option<Arc<Tap>>,
}

/// How a failure counts for nginx's `proxy_next_upstream`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// `error`: connect, send or read error before the response header.
    Error,
    /// `timeout`.
    Timeout,
    /// `invalid_header`.
    InvalidHeader,
    /// A reused keep-alive connection turned out closed: retry on a fresh one.
    Stale {
        /// Nothing reached the upstream (the write failed): any method may be retried.
        unsent: bool,
    },
    /// Not retried (after the header, client side, internal).
    Final,
}

/// Per-request state of the HTTP gateway (kept in [`ReqCtx`]).
pub struct HttpState {
    hp: Arc<HttpProxy>,
    up: Arc<UpstreamState>,
    /// Request target sent upstream.
    uri: String,
    /// `$proxy_host` (Host header default).
    proxy_host: String,
    /// `proxy_set_header`, evaluated (empty value = remove).
    headers: Vec<(String, String)>,
    /// Name verified against the certificate (and sent as SNI if enabled).
    ssl_name: String,
    /// `proxy_redirect default`: a `Location` starting with the pattern gets
    /// the replacement, made absolute (`absolute_redirect on`).
    redirect: Option<(String, String)>,
    tried: Vec<usize>,
    current: Option<usize>,
    peer_addr: Option<SocketAddr>,
    slot: Arc<Mutex<Slot>>,
    tap: Option<Arc<Tap>>,
    reused: bool,
    /// The current attempt speaks HTTP/2.
    h2: bool,
    /// The current attempt offered h2 over TLS and got HTTP/1.1: retry the
    /// same server over HTTP/1.1 (nothing was sent).
    renegotiate: bool,
    /// The next attempt goes to the same server (after `renegotiate`).
    retry_same: bool,
    force_fresh: bool,
    fresh_retry_used: bool,
    header_received: bool,
    /// The failure that ends the request (reported by `fail_to_proxy`).
    final_failure: Option<Failure>,
    /// The failure of the last attempt (reported if no server is left).
    last: Option<Failure>,
    /// A failure diagnosed in a hook, picked up when Pingora reports the error.
    pending: Option<Failure>,
    /// Run the TLS probe before reporting (plain request, no response at all).
    probe_tls: bool,
    /// Run the h2c probe before reporting (h2c, the connection failed at once).
    probe_h2c: bool,
    /// Earlier attempts' failures, named when every server failed.
    attempts: Vec<String>,
}

/// Evaluates the proxy module's own variables, delegating the rest.
struct ProxyVars<'a> {
    inner: &'a dyn Vars,
    proxy_host: &'a str,
    proxy_port: &'a str,
    xff: String,
}

impl Vars for ProxyVars<'_> {
    fn var(&self, v: &Var) -> std::borrow::Cow<'_, str> {
        match v {
            Var::User(n) if n == "proxy_host" => self.proxy_host.into(),
            Var::User(n) if n == "proxy_port" => self.proxy_port.into(),
            Var::User(n) if n == "proxy_add_x_forwarded_for" => self.xff.as_str().into(),
            _ => self.inner.var(v),
        }
    }
}

/// `$proxy_host` and `$proxy_port` for an upstream: the host as written in
/// proxy_pass (an upstream name has no port).
fn proxy_host_port(hp: &HttpProxy) -> (String, String) {
    let name = hp.upstream.name.clone();
    let default = if hp.tls { "443" } else { "80" };
    if name.starts_with("unix:") {
        return ("localhost".into(), default.into());
    }
    match name.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok() => {
            if p == default {
                (h.to_string(), p.to_string())
            } else {
                (name.clone(), p.to_string())
            }
        }
        _ => (name, default.into()),
    }
}

/// The request target for the upstream: the proxy_pass URI replaces the
/// matched location prefix; without one the client's URI is passed as sent
/// (or the changed URI after an internal redirect).
fn upstream_uri(
    hp: &HttpProxy,
    loc: &Location,
    uri: &str,
    args: Option<&str>,
    req: &RequestHeader,
) -> String {
    // Arguments that are not UTF-8 go percent-encoded (nginx sends their bytes).
    let with_args = |p: String| match args {
        Some(a) => format!("{p}?{}", super::rawtext::percent_carried(a)),
        None => p,
    };
    if let Some(base) = &hp.uri {
        return match location_prefix(loc).and_then(|p| uri.strip_prefix(p)) {
            Some(rest) => with_args(format!("{base}{}", escape_uri(rest))),
            None => with_args(base.clone()),
        };
    }
    let original = req.uri.path();
    if super::route::normalize_path(original).as_deref() == Some(uri) {
        return req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
    }
    with_args(escape_uri(uri))
}

/// The prefix a prefix or exact location matched (what a proxy_pass URI
/// replaces).
fn location_prefix(loc: &Location) -> Option<&str> {
    match &loc.matcher {
        Match::Exact(p) | Match::Prefix(p) | Match::PrefixNoRegex(p) => Some(p.as_str()),
        _ => None,
    }
}

/// Escapes a decoded URI path as nginx does before sending it upstream
/// (`ngx_escape_uri(NGX_ESCAPE_URI)`): control characters, space, `#`, `%`,
/// `?` and bytes >= 0x7f.
pub(crate) fn escape_uri(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in super::rawtext::to_bytes(s).iter() {
        if b <= 0x20 || b >= 0x7f || matches!(b, b'#' | b'%' | b'?') {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// nginx's `proxy_redirect default`: `(pattern, replacement)` for the
/// backend's `Location` — the proxy_pass URL (plus `/` without a URI part)
/// becomes the location prefix (`/`). None where nginx has no default
/// (unix sockets, a URI part in a regex location).
fn default_redirect(hp: &HttpProxy, loc: &Location) -> Option<(String, String)> {
    let name = &hp.upstream.name;
    if name.starts_with("unix:") {
        return None;
    }
    let scheme = if hp.tls { "https" } else { "http" };
    match &hp.uri {
        Some(u) => Some((
            format!("{scheme}://{name}{u}"),
            location_prefix(loc)?.to_string(),
        )),
        None => Some((format!("{scheme}://{name}/"), "/".to_string())),
    }
}

/// Sets up the request for Pingora: called from `handle()` for a location
/// with `proxy`, which stores the state in `ctx.http`; `request_filter` then
/// answers `Ok(false)` and Pingora proxies the request.
#[allow(clippy::too_many_arguments)]
pub fn prepare<S: Downstream>(
    p: &Why502,
    session: &S,
    hp: &Arc<HttpProxy>,
    loc: &Location,
    vars: &dyn Vars,
    uri: &str,
    args: Option<&str>,
) -> Result<Box<HttpState>, Failure> {
    let Some(up) = p.rt.upstream_state(&hp.upstream).cloned() else {
        return Err(Failure::new(
            Cause::ProxyInternal,
            "upstream state missing",
            "upstream state missing",
        ));
    };
    let req = session.req_header();
    let (proxy_host, proxy_port) = proxy_host_port(hp);
    let client = session
        .client_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let xff = match req
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(x) if !x.is_empty() => format!("{x}, {client}"),
        _ => client,
    };
    let pv = ProxyVars {
        inner: vars,
        proxy_host: &proxy_host,
        proxy_port: &proxy_port,
        xff,
    };
    let headers = hp
        .set_headers
        .iter()
        .map(|(k, t)| (k.clone(), t.eval(&pv)))
        .collect();
    let ssl_name = match &hp.ssl_name {
        Some(t) => t.eval(&pv),
        None => host_only(&proxy_host).to_string(),
    };
    let redirect = default_redirect(hp, loc).map(|(pattern, to)| {
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| host_only(h).trim_end_matches('.').to_ascii_lowercase())
            .map(|h| if h.contains(':') { format!("[{h}]") } else { h });
        let https = session.is_tls();
        let local = session.server_addr();
        (
            pattern,
            super::route::absolute_location(&to, https, host.as_deref(), local),
        )
    });
    let st = HttpState {
        uri: upstream_uri(hp, loc, uri, args, req),
        redirect,
        hp: hp.clone(),
        up,
        proxy_host,
        headers,
        ssl_name,
        tried: Vec::new(),
        current: None,
        peer_addr: None,
        slot: Arc::new(Mutex::new(Slot::default())),
        tap: None,
        reused: false,
        h2: false,
        renegotiate: false,
        retry_same: false,
        force_fresh: false,
        fresh_retry_used: false,
        header_received: false,
        final_failure: None,
        last: None,
        pending: None,
        probe_tls: false,
        probe_h2c: false,
        attempts: Vec::new(),
    };
    Ok(Box::new(st))
}

/// `host` from `host:port` / `[v6]:port`.
fn host_only(hp: &str) -> &str {
    let h = match hp.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => h,
        _ => hp,
    };
    h.trim_start_matches('[').trim_end_matches(']')
}

// ---- choosing the peer ----------------------------------------------------

fn internal(msg: &str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, msg.to_string())
}

fn nginx_upstream(tls: bool, addr: &Addr, uri: &str) -> String {
    let scheme = if tls { "https" } else { "http" };
    match addr {
        Addr::Unix(p) => format!("{scheme}://unix:{}:{uri}", p.display()),
        Addr::Tcp(s) => format!("{scheme}://{s}{uri}"),
    }
}

/// Resolves `host:port` (bounded by the connect timeout).
async fn resolve(hostport: &str, timeout: Duration) -> Result<SocketAddr, Failure> {
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(a);
    }
    let host = host_only(hostport).to_string();
    let res = tokio::time::timeout(timeout, tokio::net::lookup_host(hostport.to_string())).await;
    let detail = match res {
        Ok(Ok(mut it)) => match it.next() {
            Some(a) => return Ok(a),
            None => "no addresses".to_string(),
        },
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the lookup timed out".to_string(),
    };
    let code = if detail.contains("Temporary failure") || detail.contains("timed out") {
        "(2: Server failure)"
    } else {
        "(3: Host not found)"
    };
    Err(Failure::new(
        Cause::ConnectDnsError,
        format!("{host} could not be resolved {code}"),
        format!("resolving \"{host}\": {detail}"),
    ))
}

/// Pingora's `upstream_peer`: picks a server (or the same one for a stale
/// keep-alive retry), resolves it and describes the connection.
pub async fn upstream_peer(ctx: &mut ReqCtx) -> Result<Box<HttpPeer>> {
    let Some(st) = ctx.http.as_mut() else {
        return Err(internal("no HTTP upstream configured"));
    };
    for _ in 0..=st.up.config.servers.len() {
        let fresh = std::mem::take(&mut st.force_fresh);
        let same = std::mem::take(&mut st.retry_same);
        let i = match (fresh || same, st.current) {
            (true, Some(i)) => i,
            _ => match st.up.pick(&st.tried) {
                Pick::Server(i) => {
                    st.tried.push(i);
                    i
                }
                Pick::NoneLive(why) => {
                    let f = match st.last.take() {
                        Some(mut f) => {
                            if st.attempts.len() > 1 {
                                f.details = format!(
                                    "{}; every server failed: {}",
                                    f.details,
                                    st.attempts.join("; ")
                                )
                                .into();
                            }
                            f
                        }
                        None => {
                            Failure::new(Cause::ConnectNoLiveUpstreams, "no live upstreams", why)
                                .with_hint(format!(
                                    "upstream \"{}\": every server is marked down",
                                    st.up.config.name
                                ))
                        }
                    };
                    st.final_failure = Some(f);
                    return Err(Error::explain(ErrorType::ConnectError, "no live upstreams"));
                }
            },
        };
        st.current = Some(i);
        let Some(server) = st.up.config.servers.get(i) else {
            return Err(internal("server index out of range"));
        };
        let addr = server.addr.clone();
        ctx.summary.upstream = nginx_upstream(st.hp.tls, &addr, &st.uri).into();
        ctx.summary.next_hop = addr.to_string().into();
        st.header_received = false;
        st.tap = None;
        st.reused = false;
        st.probe_tls = false;
        st.probe_h2c = false;
        st.h2 = st.hp.h2 && !(st.hp.tls && prefers_h1(tls_key(&st.hp), i));
        // Pingora does the TLS handshake only for h2 (ALPN); the connector
        // does it for HTTP/1.1.
        let pingora_tls = st.hp.tls && st.h2;
        if let Ok(mut s) = st.slot.lock() {
            *s = Slot::default();
        }
        let sni = if st.hp.ssl_server_name && st.ssl_name.parse::<IpAddr>().is_err() {
            st.ssl_name.clone()
        } else {
            String::new()
        };
        let mut peer = match &addr {
            Addr::Tcp(hp) => match resolve(hp, st.hp.connect_timeout).await {
                Ok(sa) => {
                    st.peer_addr = Some(sa);
                    HttpPeer::new(sa, pingora_tls, sni)
                }
                Err(f) => {
                    st.up.failed(i, &f.nginx_message);
                    st.attempts.push(format!("{addr}: {}", f.nginx_message));
                    st.last = Some(f);
                    continue;
                }
            },
            Addr::Unix(p) => {
                st.peer_addr = None;
                HttpPeer::new_uds(&p.to_string_lossy(), pingora_tls, sni)?
            }
        };
        configure_peer(&mut peer, st, i, fresh)?;
        return Ok(Box::new(peer));
    }
    Err(internal("server selection did not converge"))
}

fn configure_peer(peer: &mut HttpPeer, st: &HttpState, i: usize, fresh: bool) -> Result<()> {
    let hp = &st.hp;
    let o = &mut peer.options;
    // Connections differ per location (CA, verification hook), which Pingora's
    // pool key does not cover.
    peer.group_key = tls_key(hp);
    o.connection_timeout = Some(hp.connect_timeout);
    o.read_timeout = Some(hp.read_timeout);
    o.write_timeout = Some(hp.send_timeout);
    o.idle_timeout = Some(hp.upstream.keepalive_timeout);
    // Verified after the handshake like nginx does, so that the verify code
    // (expired, self-signed...) can be reported.
    o.verify_cert = false;
    o.verify_hostname = false;
    let mut own_tls = None;
    if st.h2 {
        o.set_http_version(2, if hp.tls { 1 } else { 2 });
        o.max_h2_streams = H2_STREAMS;
        if st.up.config.keepalive == 0 {
            // No idle connections (Pingora pools HTTP/2 connections itself).
            o.idle_timeout = Some(Duration::ZERO);
        }
        if hp.tls {
            if let Some(path) = &hp.ssl_trusted_certificate {
                o.ca = Some(trusted_cas(path)?);
            }
            o.upstream_tls_handshake_complete_hook = Some(tls_check_hook(st.ssl_name.clone()));
        }
    } else {
        o.set_http_version(1, 1);
        if hp.tls {
            own_tls = Some(TlsSetup {
                ctx: tls_connector(hp.ssl_trusted_certificate.as_ref())?,
                sni: if hp.ssl_server_name && st.ssl_name.parse::<IpAddr>().is_err() {
                    st.ssl_name.clone()
                } else {
                    String::new()
                },
                name: st.ssl_name.clone(),
                verify: hp.ssl_verify,
            });
        }
    }
    o.custom_l4 = Some(Arc::new(Connector {
        up: st.up.clone(),
        server: i,
        timeout: hp.connect_timeout,
        // HTTP/2 needs no tap, and its connections must keep a real fd
        // (Pingora's h2 pool tells connections apart by it).
        tap: !st.h2,
        key: if hp.tls { tls_key(hp) } else { 0 },
        tls: own_tls,
        allow_reuse: !fresh,
        slot: st.slot.clone(),
    }));
    Ok(())
}

/// Tells the TLS settings of a location apart (idle pools, Pingora's pool,
/// the h2 fallback memory): the location's `HttpProxy`, which lives as long
/// as the configuration.
fn tls_key(hp: &Arc<HttpProxy>) -> u64 {
    Arc::as_ptr(hp) as usize as u64
}

type H1Memory = Mutex<HashMap<(u64, usize), Instant>>;

fn h1_memory() -> &'static H1Memory {
    static M: OnceLock<H1Memory> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// True if server `i` of the location `key` answered an h2 offer with
/// HTTP/1.1 less than [`H1_FALLBACK_TTL`] ago.
fn prefers_h1(key: u64, i: usize) -> bool {
    h1_memory()
        .lock()
        .ok()
        .and_then(|m| m.get(&(key, i)).copied())
        .is_some_and(|t| t.elapsed() < H1_FALLBACK_TTL)
}

fn learn_h1(key: u64, i: usize) {
    if let Ok(mut m) = h1_memory().lock() {
        m.retain(|_, t| t.elapsed() < H1_FALLBACK_TTL);
        m.insert((key, i), Instant::now());
    }
}

/// The TLS client context for a CA file (the system's CAs without one),
/// built once per file.
fn tls_connector(ca: Option<&PathBuf>) -> Result<Arc<SslConnector>> {
    type Ctxs = Mutex<HashMap<Option<PathBuf>, Arc<SslConnector>>>;
    static CACHE: OnceLock<Ctxs> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = ca.cloned();
    if let Some(c) = cache.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(c);
    }
    let fail = |e: &dyn std::fmt::Display| internal(&format!("TLS client setup: {e}"));
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| fail(&e))?;
    if let Some(path) = ca {
        let mut store = X509StoreBuilder::new().map_err(|e| fail(&e))?;
        for c in trusted_cas(path)?.iter() {
            store.add_cert(c.clone()).map_err(|e| fail(&e))?;
        }
        b.set_verify_cert_store(store.build())
            .map_err(|e| fail(&e))?;
    }
    let c = Arc::new(b.build());
    if let Ok(mut m) = cache.lock() {
        m.insert(key, c.clone());
    }
    Ok(c)
}

/// The CA certificates of `ssl_trusted_certificate`, loaded once per file.
fn trusted_cas(path: &PathBuf) -> Result<Arc<Box<[X509]>>> {
    type Cas = Arc<Box<[X509]>>;
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Cas>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(c) = cache.lock().ok().and_then(|m| m.get(path).cloned()) {
        return Ok(c);
    }
    let pem = std::fs::read(path).map_err(|e| {
        internal(&format!(
            "cannot read ssl_trusted_certificate {}: {e}",
            path.display()
        ))
    })?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        internal(&format!(
            "invalid ssl_trusted_certificate {}: {e}",
            path.display()
        ))
    })?;
    let certs: Arc<Box<[X509]>> = Arc::new(certs.into_boxed_slice());
    if let Ok(mut m) = cache.lock() {
        m.insert(path.clone(), certs.clone());
    }
    Ok(certs)
}

// ---- TLS verification (nginx style: after the handshake) ------------------

/// What a completed handshake showed: the certificate check, and the
/// protocol ALPN selected. Pingora's handshake hook stores it in the
/// connection's TLS digest (h2); the connector checks it directly.
#[derive(Debug)]
struct TlsCheck {
    verify_code: i32,
    verify_text: String,
    name_ok: bool,
    subject: String,
    alpn: Option<Vec<u8>>,
}

fn tls_check(ssl: &SslRef, name: &str) -> TlsCheck {
    let vr = ssl.verify_result();
    let cert = ssl.peer_certificate();
    TlsCheck {
        verify_code: vr.as_raw(),
        verify_text: vr.error_string().to_string(),
        name_ok: cert.as_ref().is_some_and(|c| cert_matches(c, name)),
        subject: cert.as_ref().map(describe_cert).unwrap_or_default(),
        alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
    }
}

fn tls_check_hook(name: String) -> HandshakeCompleteHook {
    Arc::new(
        move |ssl: &SslRef| Some(Arc::new(tls_check(ssl, &name)) as Arc<dyn Any + Send + Sync>),
    )
}

fn describe_cert(c: &X509) -> String {
    let cn = common_names(c).join(",");
    let sans: Vec<String> = c
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|n| {
                    n.dnsname().map(str::to_string).or_else(|| {
                        n.ipaddress().map(|b| match b.len() {
                            4 => IpAddr::from([b[0], b[1], b[2], b[3]]).to_string(),
                            _ => format!("{b:?}"),
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "subject CN={cn}, subjectAltName=[{}], notAfter={}",
        sans.join(", "),
        c.not_after()
    )
}

fn common_names(c: &X509) -> Vec<String> {
    c.subject_name()
        .entries_by_nid(pingora_core::tls::nid::Nid::COMMONNAME)
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .collect()
}

/// nginx's `X509_check_host`: subjectAltName DNS names (one-label wildcard
/// in the leftmost position) or IP addresses, the subject CN only if there
/// are no DNS names.
fn cert_matches(c: &X509, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ip: Option<IpAddr> = name.parse().ok();
    let mut dns_seen = false;
    if let Some(sans) = c.subject_alt_names() {
        for n in sans.iter() {
            if let (Some(ip), Some(b)) = (ip, n.ipaddress()) {
                let ok = match ip {
                    IpAddr::V4(v4) => b == v4.octets(),
                    IpAddr::V6(v6) => b == v6.octets(),
                };
                if ok {
                    return true;
                }
            }
            if let Some(d) = n.dnsname() {
                dns_seen = true;
                if ip.is_none() && dns_match(&d.to_ascii_lowercase(), &name) {
                    return true;
                }
            }
        }
    }
    if dns_seen || ip.is_some() {
        return false;
    }
    common_names(c)
        .iter()
        .any(|cn| dns_match(&cn.to_ascii_lowercase(), &name))
}

fn dns_match(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(rest) => name
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => pattern == name,
    }
}

/// The failure for a handshake check, if the certificate is not acceptable.
fn tls_check_failure(c: &TlsCheck, name: &str) -> Option<Failure> {
    // X509_V_OK
    if c.verify_code != 0 {
        let cause = match c.verify_code {
            10 => Cause::TlsCertificateExpired,
            // unable to get issuer (local), self-signed leaf / in chain, unable to verify leaf
            2 | 18 | 19 | 20 | 21 => Cause::TlsCertificateUntrusted,
            62 => Cause::TlsCertificateNameMismatch,
            _ => Cause::TlsCertificateInvalid,
        };
        return Some(Failure::new(
            cause,
            format!(
                "upstream SSL certificate verify error: ({}:{})",
                c.verify_code, c.verify_text
            ),
            format!("{}: {}", c.verify_text, c.subject),
        ));
    }
    if !c.name_ok {
        return Some(Failure::new(
            Cause::TlsCertificateNameMismatch,
            format!("upstream SSL certificate does not match \"{name}\""),
            format!("expected \"{name}\"; {}", c.subject),
        ));
    }
    None
}

// ---- connecting -------------------------------------------------------------

/// Opens connections for one attempt: errno-level connect diagnosis, the TLS
/// handshake for HTTP/1.1 over TLS, and the tap + own keep-alive pool for
/// HTTP/1.
struct Connector {
    up: Arc<UpstreamState>,
    server: usize,
    timeout: Duration,
    tap: bool,
    /// Idle pool key: 0 for plain HTTP, the location's for TLS.
    key: u64,
    /// The connector's own TLS (HTTP/1.1 over TLS).
    tls: Option<TlsSetup>,
    allow_reuse: bool,
    slot: Arc<Mutex<Slot>>,
}

/// The TLS settings of one location, for the connector's own handshake.
struct TlsSetup {
    ctx: Arc<SslConnector>,
    /// SNI (empty: none).
    sni: String,
    /// The name the certificate is checked against.
    name: String,
    verify: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({}#{})", self.up.config.name, self.server)
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// The Pingora error type for a connect errno.
fn connect_etype(e: &std::io::Error) -> ErrorType {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ErrorType::ConnectRefused,
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => ErrorType::ConnectNoRoute,
        Some(libc::ETIMEDOUT) => ErrorType::ConnectTimedout,
        _ => ErrorType::ConnectError,
    }
}

/// [`upstream::connect_failure`] plus the causes only TCP upstreams have.
fn classify_connect(addr: &Addr, e: &std::io::Error) -> Failure {
    let mut f = upstream::connect_failure(addr, e);
    if matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
    ) {
        f.cause = Cause::ConnectUnreachable;
    }
    f
}

impl Connector {
    fn record(&self, f: impl FnOnce(&mut Slot)) {
        if let Ok(mut s) = self.slot.lock() {
            f(&mut s);
        }
    }

    fn fail(&self, f: Failure, etype: ErrorType, e: Option<std::io::Error>) -> Box<Error> {
        let msg = f.nginx_message.clone();
        self.record(|s| s.failure = Some(f));
        match e {
            Some(e) => Error::because(etype, msg, e),
            None => Error::explain(etype, msg),
        }
    }

    /// An idle keep-alive connection from the pool, tapped.
    fn reuse(&self) -> Option<Stream> {
        if !self.tap || !self.allow_reuse {
            return None;
        }
        let w = self
            .up
            .take_idle_http(self.server, self.key, self.up.config.keepalive_timeout)?;
        let tap = Arc::new(Tap::new(true));
        self.record(|sl| {
            sl.tcp_connected = true;
            sl.connect_ms = Some(0.0);
            sl.tap = Some(tap.clone());
        });
        Some(TapStream::stream(w, tap, self))
    }

    /// TLS over an established connection, checked like nginx checks it
    /// (after the handshake, so that the verify code can be reported).
    async fn handshake<S>(&self, t: &TlsSetup, s: S) -> Result<SslStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let ssl = t
            .ctx
            .configure()
            .and_then(|mut cfg| {
                cfg.set_verify(SslVerifyMode::NONE);
                cfg.set_verify_hostname(false);
                cfg.set_use_server_name_indication(!t.sni.is_empty());
                cfg.set_alpn_protos(b"\x08http/1.1")?;
                cfg.into_ssl(&t.sni)
            })
            .map_err(|e| internal(&format!("TLS setup: {e}")))?;
        let mut s = SslStream::new(ssl, s).map_err(|e| internal(&format!("TLS setup: {e}")))?;
        match tokio::time::timeout(self.timeout, Pin::new(&mut s).connect()).await {
            Err(_) => {
                let f = upstream::timeout_failure(Cause::TlsTimeout, "during the TLS handshake");
                Err(self.fail(f, ErrorType::TLSHandshakeTimedout, None))
            }
            Ok(Err(e)) => Err(self.fail(
                tls_failure(&e.to_string()),
                ErrorType::TLSHandshakeFailure,
                None,
            )),
            Ok(Ok(())) => {
                if t.verify {
                    if let Some(f) = tls_check_failure(&tls_check(s.ssl(), &t.name), &t.name) {
                        return Err(self.fail(f, ErrorType::InvalidCert, None));
                    }
                }
                Ok(s)
            }
        }
    }

    /// The stream handed to Pingora for a new connection.
    fn finish(&self, w: HttpWire, t0: Instant) -> Stream {
        let ms = crate::report::ms_since(t0);
        if self.tap {
            let tap = Arc::new(Tap::new(false));
            self.record(|sl| {
                sl.connect_ms = Some(ms);
                sl.tap = Some(tap.clone());
            });
            return TapStream::stream(w, tap, self);
        }
        self.record(|sl| sl.connect_ms = Some(ms));
        match w {
            HttpWire::Tcp(s) => Stream::from(s),
            HttpWire::Unix(s) => Stream::from(s),
            // Not reached: the connector's TLS is always tapped.
            w => TapStream::stream(w, Arc::new(Tap::new(false)), self),
        }
    }
}

#[async_trait]
impl L4Connect for Connector {
    async fn connect(&self, addr: &L4Addr) -> Result<Stream> {
        let Some(server) = self.up.config.servers.get(self.server) else {
            return Err(internal("server index out of range"));
        };
        if let Some(s) = self.reuse() {
            return Ok(s);
        }
        let t0 = Instant::now();
        let timed_out = || upstream::timeout_failure(Cause::ConnectTimeout, "while connecting");
        match addr {
            L4Addr::Inet(sa) => {
                let s = match tokio::time::timeout(self.timeout, TcpStream::connect(*sa)).await {
                    Err(_) => return Err(self.fail(timed_out(), ErrorType::ConnectTimedout, None)),
                    Ok(Err(e)) => {
                        let f = classify_connect(&server.addr, &e);
                        return Err(self.fail(f, connect_etype(&e), Some(e)));
                    }
                    Ok(Ok(s)) => s,
                };
                let _ = s.set_nodelay(true);
                self.record(|sl| sl.tcp_connected = true);
                let w = match &self.tls {
                    Some(t) => HttpWire::TlsTcp(Box::new(self.handshake(t, s).await?)),
                    None => HttpWire::Tcp(s),
                };
                Ok(self.finish(w, t0))
            }
            L4Addr::Unix(ua) => {
                let Some(path) = ua.as_pathname() else {
                    return Err(internal("unnamed unix socket"));
                };
                let s = match tokio::time::timeout(self.timeout, UnixStream::connect(path)).await {
                    Err(_) => return Err(self.fail(timed_out(), ErrorType::ConnectTimedout, None)),
                    Ok(Err(e)) => {
                        let f = classify_connect(&server.addr, &e);
                        return Err(self.fail(f, connect_etype(&e), Some(e)));
                    }
                    Ok(Ok(s)) => s,
                };
                self.record(|sl| sl.tcp_connected = true);
                let w = match &self.tls {
                    Some(t) => HttpWire::TlsUnix(Box::new(self.handshake(t, s).await?)),
                    None => HttpWire::Unix(s),
                };
                Ok(self.finish(w, t0))
            }
        }
    }
}

// ---- the tap ----------------------------------------------------------------

/// What a tapped connection saw during the current request.
#[derive(Debug, Default)]
struct TapState {
    written: u64,
    read: u64,
    /// The first bytes of the response (header section).
    head: Vec<u8>,
    /// The response completed (set by the body filter at end of stream).
    complete: bool,
    /// Pingora polled the connection after the response: its keep-alive check.
    probed: bool,
    /// Data or EOF after the response: not reusable.
    broken: bool,
}

#[derive(Debug)]
pub struct Tap {
    reused: bool,
    st: Mutex<TapState>,
}

impl Tap {
    fn new(reused: bool) -> Tap {
        Tap {
            reused,
            st: Mutex::new(TapState::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut TapState) -> R) -> Option<R> {
        self.st.lock().ok().map(|mut s| f(&mut s))
    }
}

struct TapStream {
    inner: Option<HttpWire>,
    tap: Arc<Tap>,
    home: Arc<UpstreamState>,
    server: usize,
    key: u64,
}

impl TapStream {
    fn stream(w: HttpWire, tap: Arc<Tap>, c: &Connector) -> Stream {
        let ts = TapStream {
            inner: Some(w),
            tap,
            home: c.up.clone(),
            server: c.server,
            key: c.key,
        };
        Stream::from(VirtualSocketStream::new(Box::new(ts)))
    }
}

impl std::fmt::Debug for TapStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TapStream({:?})", self.inner)
    }
}

impl Drop for TapStream {
    fn drop(&mut self) {
        let reusable = self
            .tap
            .with(|s| s.complete && s.probed && !s.broken)
            .unwrap_or(false);
        if let (true, Some(w)) = (reusable, self.inner.take()) {
            self.home.put_idle_http(self.server, self.key, w);
        }
    }
}

impl VirtualSocket for TapStream {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        if let (VirtualSockOpt::NoDelay, Some(s)) =
            (opt, self.inner.as_ref().and_then(HttpWire::tcp))
        {
            s.set_nodelay(true)?;
        }
        Ok(())
    }
}

fn closed() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl AsyncRead for TapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(s) = this.inner.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        let before = buf.filled().len();
        let r = Pin::new(s).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        this.tap.with(|st| {
            if st.complete {
                match &r {
                    Poll::Pending => st.probed = true,
                    _ => st.broken = true,
                }
                return;
            }
            if let Poll::Ready(Ok(())) = &r {
                st.read += new.len() as u64;
                let room = TAP_KEEP.saturating_sub(st.head.len());
                st.head.extend_from_slice(&new[..new.len().min(room)]);
            }
        });
        r
    }
}

impl AsyncWrite for TapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(s) = this.inner.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        let r = Pin::new(s).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let n = *n as u64;
            this.tap.with(|st| st.written += n);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

// ---- hooks --------------------------------------------------------------------

/// Pingora's `connected_to_upstream`: timing, which connection this attempt
/// uses, and for Pingora's TLS (h2 attempts) the negotiated protocol and the
/// certificate check (the connector checks its own TLS itself).
pub fn connected(ctx: &mut ReqCtx, reused: bool, digest: Option<&Digest>) -> Result<()> {
    let Some(st) = ctx.http.as_mut() else {
        return Ok(());
    };
    let (tap, ms) = match st.slot.lock() {
        Ok(mut s) => (s.tap.take(), s.connect_ms),
        Err(_) => (None, None),
    };
    st.reused = reused || tap.as_ref().is_some_and(|t| t.reused);
    st.tap = tap;
    ctx.summary.connect_ms = if reused { Some(0.0) } else { ms };
    if reused || !st.hp.tls || !st.h2 {
        return Ok(());
    }
    let check = digest
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|d| d.extension.get::<TlsCheck>());
    if check.is_some_and(|c| c.alpn.as_deref() != Some(b"h2".as_slice())) {
        // HTTP/1.1 over Pingora's TLS would go untapped: remember that this
        // server does not negotiate h2 and retry over the connector's TLS.
        if let Some(i) = st.current {
            learn_h1(tls_key(&st.hp), i);
        }
        st.renegotiate = true;
        return Err(Error::explain(
            ErrorType::Custom("H2NotNegotiated"),
            "the upstream did not select h2 by ALPN",
        ));
    }
    if !st.hp.ssl_verify {
        return Ok(());
    }
    let f = match check {
        Some(c) => tls_check_failure(c, &st.ssl_name),
        None => Some(Failure::new(
            Cause::TlsCertificateInvalid,
            "upstream SSL certificate verify error: (0:no certificate)",
            "the handshake completed without a certificate check",
        )),
    };
    match f {
        Some(f) => {
            let msg = f.nginx_message.clone();
            st.pending = Some(f);
            Err(Error::explain(ErrorType::InvalidCert, msg))
        }
        None => Ok(()),
    }
}

/// Pingora's `upstream_request_filter`: request target, version, nginx's
/// default Host and Connection, then `proxy_set_header`.
pub fn request_filter(ctx: &mut ReqCtx, req: &mut RequestHeader) -> Result<()> {
    let Some(st) = ctx.http.as_ref() else {
        return Ok(());
    };
    let uri: http::Uri = st
        .uri
        .parse()
        .map_err(|_| internal(&format!("invalid upstream URI \"{}\"", st.uri)))?;
    req.set_uri(uri);
    let hp = &st.hp;
    if !st.h2 {
        // An h2 backend that negotiated HTTP/1.1 by ALPN gets HTTP/1.1.
        let v11 = hp.h2 || hp.http_version == "1.1";
        req.set_version(if v11 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_10
        });
        let keepalive = v11 && st.up.config.keepalive > 0;
        if keepalive {
            req.remove_header("connection");
        } else {
            let _ = req.insert_header("Connection", "close");
        }
    }
    let _ = req.insert_header("Host", st.proxy_host.as_str());
    for (name, value) in &st.headers {
        if value.is_empty() {
            req.remove_header(name.as_str());
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_ok() {
            // A String name keeps the configured case on the wire (like nginx).
            let _ = req.insert_header(name.clone(), value.as_str());
        }
    }
    nginx_header_order(req, &hp.set_headers);
    if st.h2 {
        // HTTP/2 forbids connection-specific fields (RFC 9113, 8.2.2); the
        // h2 crate would refuse to send the request.
        for h in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            req.remove_header(h);
        }
        let te_trailers = req
            .headers
            .get(http::header::TE)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !te_trailers {
            req.remove_header("te");
        }
    }
    Ok(())
}

/// Puts the headers in nginx's order: the `proxy_set_header` ones as
/// configured, then nginx's own defaults (Host, Connection, Content-Length,
/// Transfer-Encoding) not configured, then the client's in their order.
fn nginx_header_order(req: &mut RequestHeader, set: &[(String, crate::config::Template)]) {
    let mut front: Vec<String> = set.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    for d in ["host", "connection", "content-length", "transfer-encoding"] {
        if !front.iter().any(|f| f == d) {
            front.push(d.to_string());
        }
    }
    let all: Vec<(String, http::HeaderValue)> = req
        .case_header_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k.as_slice()).into_owned(),
                v.clone(),
            )
        })
        .collect();
    let is_front = |k: &str| front.iter().any(|f| k.eq_ignore_ascii_case(f));
    let mut ordered: Vec<(String, http::HeaderValue)> = Vec::with_capacity(all.len());
    for f in &front {
        ordered.extend(
            all.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(f))
                .cloned(),
        );
    }
    ordered.extend(all.iter().filter(|(k, _)| !is_front(k)).cloned());
    for (k, _) in &all {
        req.remove_header(k.as_str());
    }
    for (k, v) in ordered {
        let _ = req.append_header(k, v);
    }
}

/// Splits the tapped bytes into the final (non-1xx) header section.
fn final_head(raw: &[u8]) -> Option<&[u8]> {
    let mut rest = raw;
    for _ in 0..8 {
        let end = find_head_end(rest)?;
        let head = &rest[..end];
        let informational = head.len() > 9 && head.starts_with(b"HTTP/1.") && head[9] == b'1';
        if !informational {
            return Some(head);
        }
        rest = &rest[end..];
    }
    None
}

/// Offset just past the empty line ending a header section.
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Header lines of a raw section (status line excluded).
fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|b| *b == b'\n')
        .skip(1)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

fn header_named<'a>(head: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    head_lines(head).filter(move |l| {
        l.iter()
            .position(|b| *b == b':')
            .is_some_and(|i| l[..i].trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// The parsed header's size as nginx counts it (status line + lines).
fn estimated_size(resp: &ResponseHeader) -> usize {
    let mut n = 17 + resp.get_reason_phrase().map(str::len).unwrap_or(2);
    for (k, v) in resp.headers.iter() {
        n += k.as_str().len() + 2 + v.len() + 2;
    }
    n + 2
}

/// Pingora's `upstream_response_filter`: refuses what nginx (1.23+) refuses
/// and marks the server healthy.
pub fn response_filter(ctx: &mut ReqCtx, resp: &mut ResponseHeader) -> Result<()> {
    let Some(st) = ctx.http.as_mut() else {
        return Ok(());
    };
    if resp.status.is_informational() {
        return Ok(());
    }
    st.header_received = true;
    let raw = st
        .tap
        .as_ref()
        .and_then(|t| t.with(|s| final_head(&s.head).map(<[u8]>::to_vec)))
        .flatten();
    let size = raw
        .as_ref()
        .map(Vec::len)
        .unwrap_or_else(|| estimated_size(resp));
    let mut refuse = None;
    if let Some(head) = &raw {
        let cl = header_named(head, "content-length").next();
        let te = header_named(head, "transfer-encoding").next();
        if let (Some(cl), Some(te)) = (cl, te) {
            refuse = Some(Failure::new(
                Cause::HeaderConflictingLength,
                "upstream sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time",
                format!(
                    "{} and {}",
                    String::from_utf8_lossy(cl),
                    String::from_utf8_lossy(te)
                ),
            ));
        }
    }
    if refuse.is_none() && size > st.hp.buffer_size {
        refuse = Some(Failure::new(
            Cause::HeaderTooBig,
            "upstream sent too big header",
            format!(
                "the response header section is {size} bytes, buffer_size is {}",
                st.hp.buffer_size
            ),
        ));
    }
    if let Some(f) = refuse {
        let msg = f.nginx_message.clone();
        st.pending = Some(f);
        return Err(Error::explain(ErrorType::InvalidHTTPHeader, msg));
    }
    if let Some(i) = st.current {
        st.up.succeeded(i);
    }
    ctx.summary.status = resp.status.as_u16();
    if let Some(s) = ctx.start {
        ctx.summary.first_byte_ms = Some(crate::report::ms_since(s));
    }
    let hide: Vec<String> = resp
        .headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| {
            HIDDEN_BY_DEFAULT.contains(&k.as_str())
                || st.hp.hide_headers.iter().any(|h| h.eq_ignore_ascii_case(k))
        })
        .filter(|k| !st.hp.pass_headers.iter().any(|h| h.eq_ignore_ascii_case(k)))
        .collect();
    for k in hide {
        resp.remove_header(k.as_str());
    }
    if let Some((pattern, to)) = &st.redirect {
        let rewritten = resp
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.strip_prefix(pattern.as_str()))
            .map(|rest| format!("{to}{rest}"));
        if let Some(l) = rewritten {
            let _ = resp.insert_header("Location", l);
        }
    }
    let _ = resp.insert_header(http::header::SERVER, "why502");
    Ok(())
}

/// Response headers nginx does not pass on unless `proxy_pass_header` says
/// so (Date and Server are replaced by the proxy's own).
const HIDDEN_BY_DEFAULT: &[&str] = &[
    "x-pad",
    "x-accel-expires",
    "x-accel-redirect",
    "x-accel-limit-rate",
    "x-accel-buffering",
    "x-accel-charset",
];

/// Pingora's `upstream_response_body_filter`: counts bytes, and marks the
/// response complete (the connection may go back to the pool).
pub fn body_filter(ctx: &mut ReqCtx, len: usize, end_of_stream: bool) {
    ctx.summary.bytes_received += len as u64;
    if end_of_stream {
        if let Some(t) = ctx.http.as_ref().and_then(|s| s.tap.as_ref()) {
            t.with(|s| s.complete = true);
        }
    }
}

// ---- failures -------------------------------------------------------------------

/// The errno at the bottom of a Pingora error chain.
fn errno(e: &Error) -> Option<std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + Send + Sync + 'static)> = e.cause.as_deref();
    for _ in 0..8 {
        let c = cur?;
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(match io.raw_os_error() {
                Some(n) => std::io::Error::from_raw_os_error(n),
                None => std::io::Error::new(io.kind(), io.to_string()),
            });
        }
        cur = match c.downcast_ref::<Box<Error>>() {
            Some(inner) => inner.cause.as_deref(),
            None => c
                .downcast_ref::<Error>()
                .and_then(|inner| inner.cause.as_deref()),
        };
    }
    None
}

/// `(104: Connection reset by peer)`, or Pingora's own words.
fn errno_or(e: &Error) -> String {
    match errno(e) {
        Some(io) => upstream::errno_text(&io),
        None => format!("({})", e.reason_str()),
    }
}

/// Undoes Pingora's `escape_ascii` of the header buffer in error contexts.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'x' if i + 3 < b.len() => {
                    if let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                    out.push(b'\\');
                    i += 1;
                    continue;
                }
                c => out.push(c),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn excerpt(b: &[u8]) -> String {
    let b = &b[..b.len().min(128)];
    b.escape_ascii().to_string()
}

fn looks_tls(b: &[u8]) -> bool {
    b.len() >= 2 && matches!(b[0], 0x14..=0x17) && b[1] == 0x03
}

/// Classifies a response header Pingora could not parse.
fn invalid_header(raw: &[u8], context: &str) -> Failure {
    if context.contains("larger than") {
        return Failure::new(
            Cause::HeaderTooBig,
            "upstream sent too big header",
            context.to_string(),
        );
    }
    if looks_tls(raw) {
        return Failure::new(
            Cause::HeaderTlsUpstream,
            "upstream sent no valid HTTP/1.0 header",
            format!("the response starts with a TLS record: {}", excerpt(raw)),
        );
    }
    let first = raw.split(|b| *b == b'\n').next().unwrap_or(b"");
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let mut hs = [httparse::EMPTY_HEADER; 0];
    let status_ok = {
        let mut line = first.to_vec();
        line.extend_from_slice(b"\r\n\r\n");
        let mut r = httparse::Response::new(&mut hs);
        r.parse(&line).is_ok() && first.len() >= 12
    };
    if !status_ok {
        return Failure::new(
            Cause::HeaderInvalidStatusLine,
            "upstream sent no valid HTTP/1.0 header",
            format!("the response starts with: {}", excerpt(raw)),
        );
    }
    if let Some(head) = final_head(raw).or(Some(raw)) {
        let lens: Vec<&[u8]> = header_named(head, "content-length").collect();
        if lens.len() > 1 {
            return Failure::new(
                Cause::HeaderInvalid,
                format!(
                    "upstream sent duplicate header line: \"{}\", previous value: \"{}\"",
                    String::from_utf8_lossy(lens[1]),
                    String::from_utf8_lossy(lens[0])
                ),
                "two different Content-Length headers".to_string(),
            );
        }
        if let Some(cl) = lens.first() {
            let v = cl
                .splitn(2, |b| *b == b':')
                .nth(1)
                .unwrap_or(b"")
                .trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Failure::new(
                    Cause::HeaderInvalid,
                    "upstream sent invalid \"Content-Length\" header",
                    format!("{}", String::from_utf8_lossy(cl)),
                );
            }
        }
        for l in head_lines(head) {
            let ok = l.iter().position(|b| *b == b':').is_some_and(|i| {
                i > 0
                    && l[..i]
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
                    && l[i + 1..]
                        .iter()
                        .all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
            });
            if !ok {
                return Failure::new(
                    Cause::HeaderInvalid,
                    format!("upstream sent invalid header: \"{}\"", excerpt(l)),
                    format!("invalid header line: {}", excerpt(l)),
                );
            }
        }
    }
    Failure::new(
        Cause::HeaderInvalid,
        "upstream sent invalid header",
        context.to_string(),
    )
}

/// `bytes already read: N` from Pingora's context.
fn bytes_already_read(e: &Error) -> Option<u64> {
    let c = e.context.as_ref()?.as_str();
    let i = c.find("bytes already read: ")?;
    c[i + 20..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Maps an error after the connection was established onto a cause.
fn after_connect(st: &mut HttpState, e: &Error, session: &Session) -> (Failure, Class) {
    if let Some(f) = st.pending.take() {
        let class = match f.cause.phase() {
            crate::cause::Phase::Tls => Class::Error,
            _ => Class::InvalidHeader,
        };
        return (f, class);
    }
    if *e.esource() == ErrorSource::Downstream {
        return (
            Failure::new(
                Cause::ClientClosed,
                "client prematurely closed connection",
                e.to_string(),
            ),
            Class::Final,
        );
    }
    let head_sent = session.response_written().is_some();
    if st.h2 {
        if let Some(r) = h2_failure(st, e, st.header_received || head_sent) {
            return r;
        }
    }
    let etype = e.etype().clone();
    let (written, read, raw) = match &st.tap {
        Some(t) => t
            .with(|s| (Some(s.written), Some(s.read), s.head.clone()))
            .unwrap_or((None, None, Vec::new())),
        None => (None, None, Vec::new()),
    };
    if st.header_received || head_sent {
        let f = match etype {
            ErrorType::ReadTimedout => {
                upstream::timeout_failure(Cause::BodyTimeout, "while reading the response body")
            }
            ErrorType::ReadError => {
                let t = errno_or(e);
                Failure::new(
                    Cause::BodyReset,
                    format!("readv() failed {t}"),
                    format!("reading the response body: {t}"),
                )
            }
            ErrorType::Custom("InvalidChunk") => Failure::new(
                Cause::BodyClosed,
                "upstream sent invalid chunked response",
                e.to_string(),
            ),
            ErrorType::WriteError | ErrorType::WriteTimedout => Failure::new(
                Cause::SendReset,
                format!("writev() failed {}", errno_or(e)),
                e.to_string(),
            ),
            _ => Failure::new(
                Cause::BodyClosed,
                "upstream prematurely closed connection",
                format!("{e}"),
            ),
        };
        return (f, Class::Final);
    }
    let nothing_read = read
        .map(|r| r == 0)
        .or_else(|| bytes_already_read(e).map(|r| r == 0));
    match etype {
        ErrorType::WriteTimedout => (
            upstream::timeout_failure(Cause::SendTimeout, "while sending the request"),
            Class::Timeout,
        ),
        ErrorType::WriteError => {
            let io = errno(e);
            if st.reused && nothing_read != Some(false) {
                let f = Failure::new(
                    Cause::HeaderStaleKeepalive,
                    "upstream prematurely closed connection",
                    format!("writing to a reused keep-alive connection failed: {e}"),
                );
                return (f, Class::Stale { unsent: true });
            }
            let t = io.as_ref().map(upstream::errno_text).unwrap_or_default();
            let cause = match io.and_then(|io| io.raw_os_error()) {
                Some(libc::EPIPE) => Cause::SendBrokenPipe,
                _ => Cause::SendReset,
            };
            (
                Failure::new(
                    cause,
                    format!("writev() failed {t}"),
                    format!("writing the request: {e}"),
                ),
                Class::Error,
            )
        }
        ErrorType::ReadTimedout => (
            upstream::timeout_failure(Cause::HeaderTimeout, "while reading the response header"),
            Class::Timeout,
        ),
        ErrorType::ConnectionClosed | ErrorType::ReadError => {
            let reset = etype == ErrorType::ReadError;
            if st.reused && nothing_read == Some(true) {
                let f = Failure::new(
                    Cause::HeaderStaleKeepalive,
                    "upstream prematurely closed connection",
                    format!(
                        "the request was sent on a reused keep-alive connection ({} bytes) and the upstream closed it without a response",
                        written.unwrap_or(0)
                    ),
                );
                return (f, Class::Stale { unsent: false });
            }
            if looks_tls(&raw) {
                let f = Failure::new(
                    Cause::HeaderTlsUpstream,
                    "upstream sent no valid HTTP/1.0 header",
                    format!("the response starts with a TLS record: {}", excerpt(&raw)),
                );
                return (f, Class::Error);
            }
            let f = if reset {
                let t = errno_or(e);
                Failure::new(
                    Cause::HeaderReset,
                    format!("recv() failed {t}"),
                    format!("reading the response header: {t}"),
                )
            } else if nothing_read == Some(false) {
                Failure::new(
                    Cause::HeaderClosedPartial,
                    "upstream prematurely closed connection",
                    format!(
                        "the connection closed after {} bytes of the response header: {}",
                        read.or_else(|| bytes_already_read(e)).unwrap_or(0),
                        excerpt(&raw)
                    ),
                )
            } else {
                Failure::new(
                    Cause::HeaderClosedEmpty,
                    "upstream prematurely closed connection",
                    "the connection closed before any response",
                )
            };
            st.probe_tls = !st.hp.tls && nothing_read != Some(false);
            (f, Class::Error)
        }
        ErrorType::InvalidHTTPHeader => {
            let ctx_text = e
                .context
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default();
            let raw = if raw.is_empty() {
                match ctx_text.find("buf: ") {
                    Some(i) => unescape(&ctx_text[i + 5..]),
                    None => Vec::new(),
                }
            } else {
                raw
            };
            (invalid_header(&raw, &ctx_text), Class::InvalidHeader)
        }
        ErrorType::H2Error | ErrorType::InvalidH2 | ErrorType::H1Error => (
            Failure::new(
                Cause::HeaderInvalid,
                "upstream sent invalid header",
                e.to_string(),
            ),
            Class::InvalidHeader,
        ),
        _ => (
            Failure::new(Cause::ProxyInternal, e.to_string(), e.to_string()),
            Class::Final,
        ),
    }
}

/// `(N: NAME)` for an HTTP/2 error code.
fn h2_code(r: Option<h2::Reason>) -> String {
    match r {
        Some(r) => format!("{} ({r:?}: {})", u32::from(r), r.description()),
        None => "unknown".into(),
    }
}

/// Maps an error of an HTTP/2 attempt onto a cause, from the `h2` crate's
/// error at the bottom of Pingora's (None: not an h2 error, the generic
/// mapping applies: timeouts, write errors).
fn h2_failure(st: &mut HttpState, e: &Error, after_header: bool) -> Option<(Failure, Class)> {
    let h = e.root_cause().downcast_ref::<h2::Error>()?;
    let reason = h.reason();
    if after_header {
        let f = if h.is_remote() && (h.is_reset() || h.is_go_away()) {
            let what = if h.is_reset() {
                "reset the stream (RST_STREAM)"
            } else {
                "shut the connection down (GOAWAY)"
            };
            Failure::new(
                Cause::BodyStreamReset,
                format!(
                    "upstream rejected request with error {}",
                    reason.map(u32::from).unwrap_or(0)
                ),
                format!(
                    "the upstream {what} mid-body with error {}",
                    h2_code(reason)
                ),
            )
        } else if let Some(io) = h.get_io() {
            match io.kind() {
                std::io::ErrorKind::ConnectionReset => {
                    let t =
                        upstream::errno_text(&std::io::Error::from_raw_os_error(libc::ECONNRESET));
                    Failure::new(
                        Cause::BodyReset,
                        format!("readv() failed {t}"),
                        format!("reading the HTTP/2 response body: {io}"),
                    )
                }
                _ => Failure::new(
                    Cause::BodyClosed,
                    "upstream prematurely closed connection",
                    format!("reading the HTTP/2 response body: {io}"),
                ),
            }
        } else {
            Failure::new(
                Cause::BodyClosed,
                format!("upstream sent invalid http2 response ({})", h2_code(reason)),
                format!("the HTTP/2 response broke off: {h}"),
            )
        };
        return Some((f, Class::Final));
    }
    if h.is_remote() && h.is_go_away() && reason == Some(h2::Reason::NO_ERROR) {
        // A graceful shutdown: the request was not processed (its stream is
        // above the GOAWAY's last stream id), any method may be retried.
        let f = Failure::new(
            Cause::HeaderStreamReset,
            "upstream sent goaway with error 0",
            "the upstream shut the connection down (GOAWAY, NO_ERROR) before processing the request",
        );
        return Some((f, Class::Stale { unsent: true }));
    }
    if h.is_remote() && (h.is_reset() || h.is_go_away()) {
        let code = reason.map(u32::from).unwrap_or(0);
        let (msg, what) = if h.is_reset() {
            (
                format!("upstream rejected request with error {code}"),
                "reset the request's stream (RST_STREAM)",
            )
        } else {
            (
                format!("upstream sent goaway with error {code}"),
                "shut the connection down (GOAWAY)",
            )
        };
        let f = Failure::new(
            Cause::HeaderStreamReset,
            msg,
            format!(
                "the upstream {what} before the response header, with error {}",
                h2_code(reason)
            ),
        );
        return Some((f, Class::InvalidHeader));
    }
    if h.is_library() && h.is_reset() {
        // The h2 crate resets a stream whose header block HTTP/2 forbids:
        // connection-specific fields (Transfer-Encoding, Connection, ...),
        // TE other than "trailers", misplaced pseudo-headers.
        let f = Failure::new(
            Cause::HeaderInvalidH2,
            "upstream sent invalid header",
            format!(
                "the HTTP/2 response header block is malformed (a connection-specific field such as Transfer-Encoding or Connection, TE other than \"trailers\", or misplaced pseudo-headers); stream reset with {}",
                h2_code(reason)
            ),
        );
        return Some((f, Class::InvalidHeader));
    }
    if h.is_library() && h.is_go_away() {
        // Frames that break the protocol; on a new h2c connection, maybe no
        // HTTP/2 server at all (the probe tells).
        st.probe_h2c = !st.hp.tls && !st.reused;
        let f = Failure::new(
            Cause::HeaderInvalidH2,
            format!("upstream sent invalid http2 frames ({})", h2_code(reason)),
            format!("the upstream broke the HTTP/2 protocol: {h}"),
        );
        return Some((f, Class::InvalidHeader));
    }
    let Some(io) = h.get_io() else {
        // Initiated by this side: a request the h2 crate refuses to send.
        let f = Failure::new(
            Cause::ProxyInternal,
            format!("http2 error: {h}"),
            format!("sending the request over HTTP/2: {h}"),
        );
        return Some((f, Class::Final));
    };
    if st.reused {
        let f = Failure::new(
            Cause::HeaderStaleKeepalive,
            "upstream prematurely closed connection",
            format!("the reused HTTP/2 connection failed before the response: {io}"),
        );
        return Some((f, Class::Stale { unsent: false }));
    }
    let f = match io.kind() {
        std::io::ErrorKind::ConnectionReset => {
            let t = upstream::errno_text(&std::io::Error::from_raw_os_error(libc::ECONNRESET));
            Failure::new(
                Cause::HeaderReset,
                format!("recv() failed {t}"),
                format!("reading the HTTP/2 response header: {io}"),
            )
        }
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof => {
            st.probe_h2c = !st.hp.tls;
            st.probe_tls = !st.hp.tls;
            Failure::new(
                Cause::HeaderClosedEmpty,
                "upstream prematurely closed connection",
                format!("the HTTP/2 connection closed before the response header: {io}"),
            )
        }
        _ => Failure::new(
            Cause::HeaderReset,
            format!("recv() failed ({io})"),
            format!("reading the HTTP/2 response header: {io}"),
        ),
    };
    Some((f, Class::Error))
}

/// Maps a connect-phase error (TCP or TLS handshake) onto a cause.
fn connect_phase(st: &mut HttpState, e: &Error) -> (Failure, Class) {
    let (slot_failure, tcp_ok) = match st.slot.lock() {
        Ok(mut s) => (s.failure.take(), s.tcp_connected),
        Err(_) => (None, false),
    };
    if let Some(f) = slot_failure {
        let class = match f.cause {
            Cause::ConnectTimeout | Cause::TlsTimeout => Class::Timeout,
            // why502's own descriptors: the server is not to blame and the
            // next would fail the same way (nginx: a 500, no next).
            Cause::ConnectSocketFailed => Class::Final,
            _ => Class::Error,
        };
        return (f, class);
    }
    if !tcp_ok {
        if let Some(h) = e.root_cause().downcast_ref::<h2::Error>() {
            // A stream could not be opened on a pooled HTTP/2 connection:
            // nothing was sent, a fresh connection may be tried.
            let f = Failure::new(
                Cause::HeaderStaleKeepalive,
                "upstream prematurely closed connection",
                format!("opening a stream on a reused HTTP/2 connection failed: {h}"),
            );
            return (f, Class::Stale { unsent: true });
        }
        let f = Failure::new(
            Cause::ConnectFailed,
            format!("connect() failed ({e})"),
            e.to_string(),
        );
        return (f, Class::Error);
    }
    let text = e.to_string();
    let ssl = text
        .find("TLS connect() failed: ")
        .map(|i| &text[i + 22..])
        .map(|s| s.split(", SNI:").next().unwrap_or(s).trim().to_string())
        .unwrap_or_else(|| text.clone());
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => (
            upstream::timeout_failure(Cause::TlsTimeout, "during the TLS handshake"),
            Class::Timeout,
        ),
        _ => (tls_failure(&ssl), Class::Error),
    }
}

/// A failed TLS handshake, from OpenSSL's error text.
fn tls_failure(text: &str) -> Failure {
    let ssl = nginx_ssl_error(text);
    let plain = [
        "wrong version number",
        "packet length too long",
        "http request",
        "record layer failure",
    ]
    .iter()
    .any(|m| ssl.contains(m));
    let cause = if plain {
        Cause::TlsPlainHttpUpstream
    } else {
        Cause::TlsHandshakeFailed
    };
    Failure::new(
        cause,
        format!("SSL_do_handshake() failed (SSL: {ssl})"),
        format!("TLS handshake: {ssl}"),
    )
}

/// OpenSSL 3's `error:CODE:LIB:FUNC:REASON:FILE:LINE:DATA` the way nginx
/// prints it: `error:CODE:LIB::REASON[:DATA]`.
fn nginx_ssl_error(s: &str) -> String {
    let parts: Vec<&str> = s.splitn(8, ':').collect();
    if parts.len() < 5 || parts[0] != "error" {
        return s.to_string();
    }
    let mut out = format!("error:{}:{}::{}", parts[1], parts[2], parts[4]);
    if let Some(data) = parts.get(7).filter(|d| !d.is_empty()) {
        out.push(':');
        out.push_str(data);
    }
    out
}

fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// Decides what happens after a failed attempt: retry (same server fresh, or
/// the next server) or end with `f`.
fn decide(
    p: &Why502,
    st: &mut HttpState,
    session: &Session,
    ctx_summary: &report::RequestSummary,
    f: Failure,
    class: Class,
    sent: bool,
) -> bool {
    let body_ok = !session.as_ref().retry_buffer_truncated();
    let idempotent = is_idempotent(&session.req_header().method);
    if let Class::Stale { unsent } = class {
        if !st.fresh_retry_used && body_ok && (idempotent || unsent) {
            st.fresh_retry_used = true;
            st.force_fresh = true;
            return true;
        }
        let f = if (idempotent || unsent) && f.cause == Cause::HeaderStaleKeepalive {
            Failure::new(
                Cause::HeaderClosedEmpty,
                "upstream prematurely closed connection",
                format!("{}; the retry on a fresh connection failed too", f.details),
            )
        } else if st.fresh_retry_used && f.cause != Cause::HeaderStaleKeepalive {
            let mut f = f;
            f.details = format!("{}; the retry on a fresh connection failed too", f.details).into();
            f
        } else {
            f
        };
        st.final_failure = Some(f);
        return false;
    }
    let counts = matches!(class, Class::Error | Class::Timeout | Class::InvalidHeader);
    let addr = st
        .current
        .and_then(|i| st.up.config.servers.get(i))
        .map(|s| s.addr.to_string())
        .unwrap_or_default();
    if counts {
        if let Some(i) = st.current {
            st.up.failed(i, &f.nginx_message);
        }
        st.attempts.push(format!("{addr}: {}", f.nginx_message));
    }
    let nu = &st.hp.next_upstream;
    let allowed = match class {
        Class::Error => nu.iter().any(|x| x == "error"),
        Class::Timeout => nu.iter().any(|x| x == "timeout"),
        Class::InvalidHeader => nu.iter().any(|x| x == "invalid_header"),
        _ => false,
    } && !nu.iter().any(|x| x == "off");
    let method_ok = idempotent || !sent || nu.iter().any(|x| x == "non_idempotent");
    let more = st.tried.len() < st.up.config.servers.len();
    if allowed && method_ok && body_ok && more && session.response_written().is_none() {
        // nginx logs each failed attempt before trying the next server.
        let mut line = report::nginx_line(
            f.level(),
            &f.nginx_message,
            Some(f.cause.phase().nginx_while()),
            ctx_summary,
        );
        line.pop();
        line.push_str(&format!(
            ", cause: {}, request_id: {}, next upstream\n",
            f.cause.code(),
            ctx_summary.request_id
        ));
        p.rt.errlog.for_req(ctx_summary).write_line(&line);
        st.last = Some(f);
        return true;
    }
    let mut f = f;
    if st.attempts.len() > 1 {
        f.details = format!(
            "{}; every server failed: {}",
            f.details,
            st.attempts.join("; ")
        )
        .into();
    }
    st.final_failure = Some(f);
    false
}

/// Pingora's `fail_to_connect`.
pub fn fail_to_connect(
    p: &Why502,
    session: &mut Session,
    ctx: &mut ReqCtx,
    mut e: Box<Error>,
) -> Box<Error> {
    let summary = ctx.summary.clone();
    let Some(st) = ctx.http.as_mut() else {
        return e;
    };
    let (f, class) = connect_phase(st, &e);
    let retry = decide(p, st, session, &summary, f, class, false);
    e.set_retry(retry);
    e
}

/// Pingora's `error_while_proxy`.
pub fn error_while_proxy(
    p: &Why502,
    session: &mut Session,
    ctx: &mut ReqCtx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    let summary = ctx.summary.clone();
    let Some(st) = ctx.http.as_mut() else {
        return e;
    };
    st.reused |= client_reused;
    if std::mem::take(&mut st.renegotiate) {
        // h2 was offered and HTTP/1.1 selected: the same server again, over
        // HTTP/1.1 (nothing was sent).
        st.retry_same = true;
        e.set_retry(true);
        return e;
    }
    let (f, class) = after_connect(st, &e, session);
    // A TLS certificate refusal happens before anything is sent.
    let sent = f.cause.phase() != crate::cause::Phase::Tls;
    let retry = decide(p, st, session, &summary, f, class, sent);
    e.set_retry(retry);
    e
}

/// True if `addr` completes a TLS handshake (diagnosis of plain HTTP sent to
/// a TLS port that closed without answering).
async fn speaks_tls(addr: SocketAddr) -> bool {
    use pingora_core::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let fut = async {
        let mut b = SslConnector::builder(SslMethod::tls()).ok()?;
        b.set_verify(SslVerifyMode::NONE);
        let cfg = b.build().configure().ok()?;
        let ssl = cfg.use_server_name_indication(false).into_ssl("").ok()?;
        let tcp = TcpStream::connect(addr).await.ok()?;
        let mut s = pingora_core::tls::tokio_ssl::SslStream::new(ssl, tcp).ok()?;
        Pin::new(&mut s).connect().await.ok()
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, fut).await, Ok(Some(())))
}

/// What `addr` answers to an HTTP/2 connection preface (diagnosis of h2c
/// to a server that does not speak it): an HTTP/1 response or a TLS record
/// makes a more precise failure than `f`.
async fn h2c_answer(addr: SocketAddr, f: &Failure) -> Option<Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        s.write_all(&hello).await.ok()?;
        let mut b = vec![0u8; 128];
        let n = s.read(&mut b).await.ok()?;
        b.truncate(n);
        Some(b)
    };
    let b = tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .ok()
        .flatten()?;
    // A TLS port may answer plain HTTP in HTTP/1 (nginx: "400 The plain HTTP
    // request was sent to HTTPS port"): a TLS handshake tells.
    let tls = if looks_tls(&b) {
        Some("answers the HTTP/2 connection preface with a TLS record")
    } else if b.starts_with(b"HTTP/") && speaks_tls(addr).await {
        Some("completes a TLS handshake")
    } else {
        None
    };
    if let Some(how) = tls {
        return Some(Failure::new(
            Cause::HeaderTlsUpstream,
            f.nginx_message.clone(),
            format!("{}; {addr} {how}: it is a TLS port", f.details),
        ));
    }
    if b.starts_with(b"HTTP/") {
        let line = b.split(|c| *c == b'\n').next().unwrap_or(&b);
        return Some(Failure::new(
            Cause::HeaderHttp1Upstream,
            "upstream sent an HTTP/1 response to an HTTP/2 request",
            format!(
                "{}; {addr} answers the HTTP/2 connection preface with {}: it does not speak h2c",
                f.details,
                excerpt(line.strip_suffix(b"\r").unwrap_or(line))
            ),
        ));
    }
    None
}

/// Pingora's `fail_to_proxy` for HTTP upstreams: answers with the diagnosed
/// failure (504 for timeouts), or aborts the client connection when the
/// response header was already sent.
pub async fn fail_to_proxy(
    p: &Why502,
    session: &mut Session,
    e: &Error,
    ctx: &mut ReqCtx,
) -> FailToProxy {
    let mut f = match ctx.http.as_mut() {
        Some(st) => {
            let f = st.final_failure.take().or_else(|| st.pending.take());
            match f {
                Some(f) => f,
                None => after_connect(st, e, session).0,
            }
        }
        None => Failure::new(Cause::ProxyInternal, e.to_string(), e.to_string()),
    };
    let probe_h2c = ctx
        .http
        .as_ref()
        .and_then(|st| st.probe_h2c.then_some(st.peer_addr).flatten());
    let mut probed = false;
    if let Some(addr) = probe_h2c {
        if let Some(g) = h2c_answer(addr, &f).await {
            f = g;
            probed = true;
        }
    }
    let probe = ctx
        .http
        .as_ref()
        .and_then(|st| st.probe_tls.then_some(st.peer_addr).flatten())
        .filter(|_| !probed);
    if let Some(addr) = probe {
        if speaks_tls(addr).await {
            f = Failure::new(
                Cause::HeaderTlsUpstream,
                f.nginx_message.clone(),
                format!(
                    "{}; {addr} completes a TLS handshake: it is a TLS port",
                    f.details
                ),
            );
        }
    }
    if let Some(resp) = session.response_written() {
        // The header is out: log once and drop the client connection without
        // the chunked terminator, so the client sees a truncated response.
        ctx.summary.status = resp.status.as_u16();
        ctx.summary.bytes_sent = session.body_bytes_sent() as u64;
        if !ctx.logged {
            p.finish_timing(ctx);
            report::log_failure(&p.rt.errlog, &f, &ctx.summary);
            ctx.logged = true;
        }
        ctx.failure = Some(f);
        ctx.aborted = true;
        session.set_keepalive(None);
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    }
    let code = f.status();
    if p.respond_failure(session, ctx, f).await.is_err() {
        ctx.aborted = true;
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_errors_read_like_nginx() {
        assert_eq!(
            nginx_ssl_error("error:0A000410:SSL routines:ssl3_read_bytes:ssl/tls alert handshake failure:ssl/record/rec_layer_s3.c:918:SSL alert number 40"),
            "error:0A000410:SSL routines::ssl/tls alert handshake failure:SSL alert number 40"
        );
        assert_eq!(nginx_ssl_error("something else"), "something else");
    }

    #[test]
    fn wildcard_names() {
        assert!(dns_match("*.example.com", "a.example.com"));
        assert!(!dns_match("*.example.com", "a.b.example.com"));
        assert!(!dns_match("*.example.com", "example.com"));
        assert!(dns_match("example.com.", "example.com"));
    }

    #[test]
    fn head_parsing() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc";
        let h = final_head(raw).expect("head");
        assert!(h.starts_with(b"HTTP/1.1 200"));
        assert_eq!(header_named(h, "content-length").count(), 1);
        assert_eq!(header_named(h, "transfer-encoding").count(), 1);
    }

    #[test]
    fn invalid_headers_are_told_apart() {
        assert_eq!(
            invalid_header(b"SSH-2.0-OpenSSH\r\n", "").cause,
            Cause::HeaderInvalidStatusLine
        );
        assert_eq!(
            invalid_header(b"\x15\x03\x03\x00\x02\x02\x46", "").cause,
            Cause::HeaderTlsUpstream
        );
        assert_eq!(
            invalid_header(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "").cause,
            Cause::HeaderInvalid
        );
        let f = invalid_header(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "",
        );
        assert!(
            f.nginx_message.contains("duplicate header line"),
            "{}",
            f.nginx_message
        );
        assert_eq!(unescape("a\\r\\n\\x15b"), b"a\r\n\x15b");
    }

    #[test]
    fn uris_are_escaped_like_nginx() {
        assert_eq!(
            escape_uri("/a b/~u/%/#?\u{e9}"),
            "/a%20b/~u/%25/%23%3F%C3%A9"
        );
        assert_eq!(escape_uri("/plain/path.html"), "/plain/path.html");
    }

    #[test]
    fn proxy_host_drops_default_port() {
        let mut hp = HttpProxy::new(Arc::new(crate::config::Upstream::single(Addr::Tcp(
            "example.com:80".into(),
        ))));
        hp.upstream = Arc::new(crate::config::Upstream {
            name: "example.com:80".into(),
            ..(*hp.upstream).clone()
        });
        assert_eq!(proxy_host_port(&hp).0, "example.com");
        assert_eq!(host_only("[::1]:8080"), "::1");
        assert_eq!(host_only("example.com"), "example.com");
    }
}
