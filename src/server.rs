//! Builds and runs the Pingora server from a [`Config`]: listeners (plain,
//! TLS, HTTP/2), threads, and the logging sinks.

use std::sync::{Arc, OnceLock};

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;

use crate::config::Config;
use crate::proxy::{Runtime, Why502};

/// Sets up `tracing`: the failure events (JSON lines, [`crate::events`])
/// to the events file or stderr; other events (Pingora's errors, filtered by
/// `WHY502_LOG`) as tracing-subscriber's JSON to the same place; and
/// Pingora's failed accepts and TLS handshakes to the error log, once
/// `errlog` is set.
pub fn init_tracing(config: &Config, errlog: Arc<OnceLock<Arc<Runtime>>>) -> Result<(), String> {
    use tracing_subscriber::filter::{filter_fn, EnvFilter};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;

    use crate::events::{EventsLayer, Sink, TARGET};
    let filter = EnvFilter::try_from_env("WHY502_LOG").unwrap_or_else(|_| {
        EnvFilter::new("why502=info,pingora=error,pingora_core=error,pingora_proxy=error,warn")
    });
    let (sink, other) = match &config.logging.events {
        Some(path) => {
            let open = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{}: cannot open events log: {e}", path.display()))
            };
            let f = crate::accesslog::LogFile::open(path)
                .map_err(|e| format!("{}: cannot open events log: {e}", path.display()))?;
            let w = std::sync::Mutex::new(open()?);
            (
                Sink::File(f),
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(w)
                    .boxed(),
            )
        }
        None => (
            Sink::Stderr,
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(std::io::stderr)
                .boxed(),
        ),
    };
    // The EnvFilter filters globally, so the callsites it disables (the h2
    // crate's per-frame spans and events, Pingora's debug logs) stay
    // disabled for good; the per-layer filters only route what it lets by.
    tracing_subscriber::registry()
        .with(filter)
        .with(EventsLayer::new(sink).with_filter(filter_fn(|m| m.target() == TARGET)))
        .with(other.with_filter(filter_fn(|m| m.target() != TARGET)))
        .with(
            PingoraListenerLog(errlog)
                .with_filter(filter_fn(|m| *m.level() == tracing::Level::ERROR)),
        )
        .try_init()
        .map_err(|e| format!("cannot initialize logging: {e}"))
}

/// A panic is a bug in why502 (or a library): tokio ends the task, so the
/// connection it served is closed and the server runs on. nginx logs its
/// worker's crash (`[alert] worker process 1234 exited on signal 11`); this
/// puts the panic in the error log the same way, next to the failures it
/// diagnoses, instead of only on standard error (Rust's own message, which
/// still follows).
fn log_panics(rt: Arc<Runtime>) {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        // One line (`process_line` caps its length, as nginx does).
        let what = what.replace(['\n', '\r'], " ");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let msg = format!(
            "bug: thread '{}' panicked{at}: {what}; the connection it served was closed, the server runs on",
            thread.name().unwrap_or("unnamed")
        );
        rt.errlog
            .write_line(&crate::report::process_line("alert", &msg));
        prev(info);
    }));
}

/// Pingora's accept loop reports a failed `accept()` (out of descriptors,
/// say) only as a `log` record, `Accept() failed ... (os error 24)`, which
/// reaches `tracing` through tracing-log: this writes it to the error log
/// as nginx's `[crit] accept4() failed (24: Too many open files)`, as
/// why502's own listeners do ([`crate::report::accept_failed`]). A failed
/// TLS handshake, which Pingora's loop logs the same way, becomes nginx's
/// `[info] SSL_do_handshake() failed (...) while SSL handshaking, client:
/// ...` ([`crate::report::tls_handshake_failed`]).
struct PingoraListenerLog(Arc<OnceLock<Arc<Runtime>>>);

/// Pingora's module that logs a failed accept or TLS handshake.
const PINGORA_LISTENING_TARGET: &str = "pingora_core::services::listening";

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PingoraListenerLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let Some(rt) = self.0.get() else {
            return;
        };
        let mut f = LogFields::default();
        event.record(&mut f);
        // Events from `log` records carry the record's target as a field
        // (their metadata's target is `log`).
        if f.target != PINGORA_LISTENING_TARGET {
            return;
        }
        if let Some(msg) = crate::report::tls_handshake_failed(&f.message) {
            rt.errlog
                .write_line(&crate::report::process_line("info", &msg));
            return;
        }
        if !f.message.starts_with("Accept() failed") {
            return;
        }
        let e = match crate::report::os_error_in(&f.message) {
            Some(n) => std::io::Error::from_raw_os_error(n),
            None => std::io::Error::other(f.message),
        };
        crate::report::accept_failed(&rt.errlog, &e);
    }
}

/// The message and `log.target` of an event from a `log` record.
#[derive(Default)]
struct LogFields {
    message: String,
    target: String,
}

impl tracing::field::Visit for LogFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.target = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

/// The client connection's write buffer: a response header and a body of
/// up to about 16 KiB leave in one write (Pingora's default, 1460 bytes,
/// splits anything larger than one packet into two sends). Memory is only
/// touched as far as a response fills it.
fn l4_buffer() -> L4BufferSettings {
    L4BufferSettings {
        read: None,
        write: Some(16 * 1024),
    }
}

/// nginx's `worker_rlimit_nofile` and `worker_priority` (`max_open_files`
/// and `priority` in YAML), for the whole process. Without
/// `max_open_files`, the soft open-files limit is raised to the hard one.
/// Returns what failed, worded as nginx's alerts (nginx, too, goes on).
fn apply_process(p: &crate::config::Process) -> Vec<String> {
    let mut alerts = Vec::new();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or fill the struct given.
    let have = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    match p.max_open_files {
        Some(n) => {
            let want = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
                alerts.push(format!(
                    "setrlimit(RLIMIT_NOFILE, {n}) failed {}",
                    crate::upstream::errno_text(&std::io::Error::last_os_error())
                ));
            }
        }
        None if have && lim.rlim_cur < lim.rlim_max => {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: as above. A failure leaves the limit as it was.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) };
        }
        None => {}
    }
    if let Some(n) = p.priority {
        // SAFETY: setpriority takes plain integers. On Linux it sets the
        // calling thread's nice value; the threads started after it inherit it.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
            alerts.push(format!(
                "setpriority({n}) failed {}",
                crate::upstream::errno_text(&std::io::Error::last_os_error())
            ));
        }
    }
    alerts
}

/// Runs the server until it is stopped. Never returns on success.
pub fn run(config: Config) -> Result<(), String> {
    // Before any thread starts: threads take their nice value from the
    // thread that creates them.
    let alerts = apply_process(&config.process);
    let accept_errlog = Arc::new(OnceLock::new());
    init_tracing(&config, accept_errlog.clone())?;
    let threads = crate::proxy::worker_threads(&config);
    let conf = ServerConf {
        threads,
        // A work-stealing runtime. One single-threaded runtime per thread
        // (nginx's model) was measured too (docs/benchmarks.md): less CPU per
        // request, but Pingora places each connection on a random thread and
        // registers it with the accepting thread's reactor, so with a few
        // long-lived connections one thread gets more of them and p99
        // latency tripled.
        work_stealing: true,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let all: Vec<_> = config
        .servers
        .iter()
        .flat_map(|s| s.listen.clone())
        .collect();
    // One socket per address; an address under its port's wildcard listen
    // shares the wildcard's (nginx without `bind`).
    let listens: Vec<_> = crate::proxy::route::bind_listens(&all)?
        .into_iter()
        .cloned()
        .collect();
    // Pingora panics in a service thread (and the process lingers) when a
    // listener cannot be bound: try every address first, for a clear error.
    for l in &listens {
        std::net::TcpListener::bind(l.addr)
            .map_err(|e| format!("cannot listen on {}: {e}", l.addr))?;
    }
    // Plain listeners (HTTP/1, h2c) that only route to FastCGI, static
    // files and `return`s are served by why502's own HTTP/1 and HTTP/2
    // servers; Pingora serves TLS and the ports with HTTP backends.
    let (own, pingora): (Vec<_>, Vec<_>) = listens
        .iter()
        .partition(|l| crate::proxy::own::serves(&config, l));
    let ipv6_only = |l: &crate::config::Listen| {
        // `[::]:80` next to an IPv4 listen on port 80: IPv6 only (nginx's
        // ipv6only=on), so both can be bound.
        l.addr.is_ipv6()
            && listens
                .iter()
                .any(|o| o.addr.is_ipv4() && o.addr.port() == l.addr.port())
    };
    let own_sockets = own
        .iter()
        .map(|l| {
            crate::h1::bind(l.addr, ipv6_only(l))
                .map(|s| (s, l.http2))
                .map_err(|e| format!("cannot listen on {}: {e}", l.addr))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rt = Runtime::new(config).map_err(|e| format!("cannot open log: {e}"))?;
    for a in &alerts {
        rt.errlog
            .write_line(&crate::report::process_line("alert", a));
    }
    let app = Arc::new(Why502 { rt: Arc::new(rt) });
    let _ = accept_errlog.set(app.rt.clone());
    log_panics(app.rt.clone());
    if !own_sockets.is_empty() {
        server.add_service(crate::proxy::own::OwnService {
            app: app.clone(),
            sockets: own_sockets,
            threads,
        });
    }
    if pingora.is_empty() {
        server.run_forever()
    }
    let mut svc =
        pingora_proxy::http_proxy_service(&server.configuration, Why502 { rt: app.rt.clone() });
    for l in pingora.iter() {
        let addr = l.addr.to_string();
        let mut sock = TcpSocketOptions::default();
        if ipv6_only(l) {
            sock.ipv6_only = Some(true);
        }
        match &l.tls {
            Some(t) => {
                let cert = t.cert.to_string_lossy();
                let key = t.key.to_string_lossy();
                let mut tls = TlsSettings::intermediate(&cert, &key)
                    .map_err(|e| format!("{addr}: TLS certificate/key: {e}"))?;
                if l.http2 {
                    tls.enable_h2();
                }
                svc.add_listener(
                    ListenerConfig::tcp(addr)
                        .tcp_socket_options(sock)
                        .tls(tls)
                        .l4_buffer(l4_buffer()),
                );
            }
            None => svc.add_listener(
                ListenerConfig::tcp(addr)
                    .tcp_socket_options(sock)
                    .l4_buffer(l4_buffer()),
            ),
        }
    }
    // HTTP/2 on Pingora's ports: one idle timeout for all of them (the
    // service's), the longest `keepalive_timeout` of the servers there
    // (HTTP/1: each server's own).
    let h2_idle = app
        .rt
        .config
        .servers
        .iter()
        .filter(|s| {
            s.listen
                .iter()
                .any(|o| pingora.iter().any(|l| l.addr.port() == o.addr.port()))
        })
        .map(|s| s.keepalive_timeout)
        .max()
        .filter(|t| !t.is_zero());
    if let Some(proxy) = svc.app_logic_mut() {
        let mut opts = pingora_core::apps::HttpServerOptions::default();
        opts.h2c = pingora.iter().any(|l| l.tls.is_none() && l.http2);
        // Counts a connection's requests down from here, for each server's
        // `keepalive_requests` (see `Downstream::limit_requests`).
        opts.keepalive_request_limit = Some(crate::proxy::downstream::PINGORA_REQUEST_COUNT);
        opts.h2_idle_timeout = h2_idle;
        proxy.server_options = Some(opts);
    }
    server.add_service(svc);
    server.run_forever()
}
