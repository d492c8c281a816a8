//! why502's own HTTP/1.1 server ([`crate::h1`]) wired to the request
//! handlers, and the choice of which listeners it serves.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;

use super::downstream::Downstream;
use super::{access, ReqCtx, Why502};
use crate::cause::Cause;
use crate::config::{Config, Listen, Location};
use crate::h1::{self, H1Session};
use crate::h2::H2Session;
use crate::report::Failure;

impl h1::App for Why502 {
    type Conn = Option<Box<dyn Any + Send + Sync>>;

    async fn serve(&self, s: &mut H1Session, conn: &mut Self::Conn) -> bool {
        let (ok, next) = self.serve_own(s, conn.take()).await;
        *conn = next;
        ok
    }

    async fn serve_h2(&self, s: &mut H2Session) -> bool {
        self.serve_own(s, None).await.0
    }

    fn reads_sent_headers(&self) -> bool {
        self.rt.access.sent_headers
    }

    /// nginx's `[crit] accept4() failed (24: Too many open files)`, at most
    /// once a second: accepting is retried every 10 ms meanwhile.
    fn accept_failed(&self, e: &std::io::Error) {
        crate::report::accept_failed(&self.rt.errlog, e);
    }
}

impl Why502 {
    /// One request on the own servers: handled, logged; `prev` and the
    /// second value: the access log's state carried between requests.
    async fn serve_own<S: Downstream>(
        &self,
        s: &mut S,
        prev: Option<Box<dyn Any + Send + Sync>>,
    ) -> (bool, Option<Box<dyn Any + Send + Sync>>) {
        let mut ctx = ReqCtx::default();
        if let Some(prev) = prev {
            self.rt.access.reuse(&mut ctx, prev);
        }
        self.init_ctx(s, &mut ctx);
        let ok = match self.handle(s, &mut ctx).await {
            Ok(()) if self.is_http_proxied(&ctx) => {
                // Listeners whose servers proxy to HTTP backends are left to
                // Pingora (see `serves`), so this is not reached.
                ctx.http = None;
                let f = Failure::new(
                    Cause::ProxyInternal,
                    "HTTP backend location on a listener of the own server",
                    "HTTP backend location on a listener of the own server",
                );
                self.respond_failure(s, &mut ctx, f).await.is_ok()
            }
            Ok(()) => true,
            Err(super::Abort) => {
                ctx.aborted = true;
                false
            }
        };
        if self.rt.access.enabled {
            access::log_request(&self.rt, s, &ctx);
        }
        (ok, self.rt.access.persist(&ctx))
    }
}

fn proxies(locs: &[Location]) -> bool {
    locs.iter()
        .any(|l| l.proxy.is_some() || proxies(&l.locations))
}

/// Whether the own servers take listen address `l`: no TLS (HTTP/1, and
/// h2c where `http2` is set), and no server on its port proxies to HTTP
/// backends (Pingora does those). `WHY502_SERVER=pingora` leaves every
/// listener to Pingora.
pub fn serves(config: &Config, l: &Listen) -> bool {
    if std::env::var("WHY502_SERVER").is_ok_and(|v| v == "pingora") {
        return false;
    }
    if l.tls.is_some() {
        return false;
    }
    let port = l.addr.port();
    !config
        .servers
        .iter()
        .any(|s| s.listen.iter().any(|o| o.addr.port() == port) && proxies(&s.locations))
}

/// The own server as a Pingora service: started and stopped with the
/// others (graceful shutdown on SIGTERM/SIGQUIT).
pub struct OwnService {
    pub app: Arc<Why502>,
    /// The listening sockets, each with whether it takes h2c too.
    pub sockets: Vec<(std::net::TcpListener, bool)>,
    pub threads: usize,
}

#[async_trait]
impl pingora_core::services::Service for OwnService {
    async fn start_service(
        &mut self,
        #[cfg(unix)] _fds: Option<pingora_core::server::ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let sockets = std::mem::take(&mut self.sockets);
        let handles = match h1::run(
            self.app.clone(),
            sockets,
            self.threads,
            shutdown.clone(),
            Duration::from_secs(5),
        ) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("why502: cannot start the HTTP/1 server: {e}");
                std::process::exit(1);
            }
        };
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        })
        .await;
    }

    fn name(&self) -> &str {
        "why502-h1"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}
