//! Connections to upstream servers: connect with errno-level diagnosis, idle
//! connection pools (FastCGI keep_conn), and server selection with nginx's
//! smooth weighted round robin, `backup` servers and passive health
//! (`max_fails` / `fail_timeout`).

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pingora_core::tls::tokio_ssl::SslStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::cause::Cause;
use crate::config::{Addr, Upstream};
use crate::report::Failure;

/// A connection to an upstream (unix or TCP).
#[derive(Debug)]
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    /// Shuts down the writing side (`shutdown(SHUT_WR)`) at once.
    pub fn shutdown_write(&self) -> io::Result<()> {
        let s = match self {
            Conn::Unix(s) => socket2::SockRef::from(s),
            Conn::Tcp(s) => socket2::SockRef::from(s),
        };
        s.shutdown(std::net::Shutdown::Write)
    }

    fn raw_fd(&self) -> i32 {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }

    /// True if the idle connection is still open and has no unread data
    /// (a peer that closed an idle keep-alive connection shows EOF here).
    ///
    /// The reactor is asked first, without a system call: a connection it
    /// has seen nothing on since its last read had no data and no EOF
    /// when this thread last polled, and is taken as alive. If it has seen
    /// something, the kernel is asked (a `recv` peek). A close the reactor
    /// has not seen yet shows on the first read, and the request is sent
    /// again on a fresh connection (`Attempt::StaleReused`): it has no body,
    /// or its body was read whole first. A request that streams its body
    /// never takes a kept connection. nginx does not ask the kernel either
    /// (its idle connections are closed from epoll events) and reads every
    /// body before it connects.
    ///
    /// This is [`Conn::watch`] with a waker that does nothing: the
    /// connection leaves the pool, so its watch ends.
    pub fn is_idle_alive(&self) -> bool {
        self.watch(std::task::Waker::noop())
    }

    /// Watches an idle connection: `waker` is woken when the peer sends
    /// anything or closes it. False if that has happened already.
    ///
    /// PHP-FPM needs this. A worker retiring at `pm.max_requests` answers
    /// its last request on a kept connection, shuts its side down and then
    /// waits for why502 to close the connection before it exits: until
    /// then it holds its slot in the pool, and the master starts no worker
    /// in its place. nginx closes such a connection as soon as epoll says
    /// it is readable; so does why502's idle sweeper when it is woken.
    fn watch(&self, waker: &std::task::Waker) -> bool {
        let mut cx = Context::from_waker(waker);
        // Twice at most: a readiness tokio still has from an earlier read is
        // cleared by the first peek (EAGAIN), and the second poll registers.
        for _ in 0..2 {
            let ready = match self {
                Conn::Unix(s) => s.poll_read_ready(&mut cx),
                Conn::Tcp(s) => s.poll_read_ready(&mut cx),
            };
            match ready {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(())) => {}
            }
            // Through tokio, so that an EAGAIN clears the readiness.
            let fd = self.raw_fd();
            let peek = || match peek_byte(fd) {
                n if n < 0 => Err(io::Error::last_os_error()),
                n => Ok(n),
            };
            let r = match self {
                Conn::Unix(s) => s.try_io(tokio::io::Interest::READABLE, peek),
                Conn::Tcp(s) => s.try_io(tokio::io::Interest::READABLE, peek),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // Data nobody asked for, EOF or an error.
                _ => return false,
            }
        }
        true
    }
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte: what `recv` returns.
fn peek_byte(fd: i32) -> isize {
    let mut b = [0u8; 1];
    // SAFETY: recv on a valid fd into a 1-byte stack buffer.
    unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    }
}

/// Wakes the idle sweeper: when the peer of an idle connection closes it
/// or sends something (see [`Conn::watch`]), and when a pool goes over its
/// `keepalive` limit (see [`UpstreamState::put_idle`]).
#[derive(Default)]
pub struct IdleWatch {
    sweeper: std::sync::OnceLock<std::thread::Thread>,
    /// A pool holds more than `keepalive` idle connections.
    over: std::sync::atomic::AtomicBool,
}

impl IdleWatch {
    /// The thread to wake.
    pub fn set_sweeper(&self, t: std::thread::Thread) {
        let _ = self.sweeper.set(t);
    }

    fn wake_sweeper(&self) {
        if let Some(t) = self.sweeper.get() {
            t.unpark();
        }
    }
}

impl std::task::Wake for IdleWatch {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_sweeper();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.wake_sweeper();
    }
}

/// How long an idle FastCGI connection beyond the upstream's `keepalive`
/// limit is kept for the next request (see [`UpstreamState::put_idle`]).
pub const EXCESS_LINGER: Duration = Duration::from_millis(2);

/// Closes the oldest idle connections of a pool (`p`, oldest first) while
/// it holds more than `cap` and the oldest has been idle for
/// [`EXCESS_LINGER`].
fn trim_excess(p: &mut Vec<(Conn, Instant)>, cap: usize, now: Instant) {
    let excess = p.len().saturating_sub(cap);
    let old = p
        .iter()
        .take(excess)
        .take_while(|(_, since)| now.saturating_duration_since(*since) >= EXCESS_LINGER)
        .count();
    p.drain(..old);
}

/// True if the socket `fd` is open and has no unread data.
fn fd_idle_alive(fd: i32) -> bool {
    peek_byte(fd) < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// A connection to an HTTP upstream as the HTTP gateway holds it: plain or
/// TLS (the gateway's own TLS, for HTTP/1.1), over TCP or a unix socket.
#[derive(Debug)]
pub enum HttpWire {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<SslStream<TcpStream>>),
    TlsUnix(Box<SslStream<UnixStream>>),
}

impl HttpWire {
    fn fd(&self) -> i32 {
        match self {
            HttpWire::Tcp(s) => s.as_raw_fd(),
            HttpWire::Unix(s) => s.as_raw_fd(),
            HttpWire::TlsTcp(s) => s.get_ref().as_raw_fd(),
            HttpWire::TlsUnix(s) => s.get_ref().as_raw_fd(),
        }
    }

    /// The TCP socket under the connection, if any.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            HttpWire::Tcp(s) => Some(s),
            HttpWire::TlsTcp(s) => Some(s.get_ref()),
            _ => None,
        }
    }
}

macro_rules! wire_dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            HttpWire::Tcp($s) => $e,
            HttpWire::Unix($s) => $e,
            HttpWire::TlsTcp($s) => $e,
            HttpWire::TlsUnix($s) => $e,
        }
    };
}

impl AsyncRead for HttpWire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        wire_dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for HttpWire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        wire_dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        wire_dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        wire_dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// `(104: Connection reset by peer)` — nginx's errno rendering.
pub fn errno_text(e: &io::Error) -> String {
    // strerror text per errno, computed once (a 502 storm formats the same
    // few errnos over and over).
    const CACHED: usize = 160;
    static TEXTS: [std::sync::OnceLock<String>; CACHED] =
        [const { std::sync::OnceLock::new() }; CACHED];
    if let Some(slot) = e
        .raw_os_error()
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| TEXTS.get(n))
    {
        return slot.get_or_init(|| errno_text_uncached(e)).clone();
    }
    errno_text_uncached(e)
}

fn errno_text_uncached(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let s = e.to_string();
            let s = s
                .strip_suffix(&format!(" (os error {n})"))
                .unwrap_or(&s)
                .to_string();
            format!("({n}: {s})")
        }
        None => format!("({e})"),
    }
}

/// Other unix sockets in the directory of a missing one (PHP upgrade hint).
///
/// A dead socket fails every request, so the directory listing is kept and
/// reused while the directory's mtime (which changes whenever an entry is
/// created, removed or renamed) stays the same, and the mtime itself is
/// looked at once a second at most: under a stream of 502s, no system call
/// per failure. With the reuse of the diagnosis in [`connect_failure`], the
/// hint is at most about two seconds old.
fn sibling_sockets(path: &Path) -> Vec<String> {
    struct Listing {
        dir: std::path::PathBuf,
        mtime: std::time::SystemTime,
        checked: Instant,
        sockets: Vec<String>,
    }
    static LAST: Mutex<Option<Listing>> = Mutex::new(None);
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    if let Ok(last) = LAST.lock() {
        if let Some(l) = last.as_ref() {
            if l.dir == dir && l.checked.elapsed() < SIBLING_TTL {
                return l.sockets.clone();
            }
        }
    }
    let Ok(mtime) = std::fs::metadata(dir).and_then(|m| m.modified()) else {
        return list_sockets(dir);
    };
    if let Ok(mut last) = LAST.lock() {
        if let Some(l) = last.as_mut() {
            if l.dir == dir && l.mtime == mtime {
                l.checked = Instant::now();
                return l.sockets.clone();
            }
        }
    }
    let sockets = list_sockets(dir);
    if let Ok(mut last) = LAST.lock() {
        *last = Some(Listing {
            dir: dir.to_path_buf(),
            mtime,
            checked: Instant::now(),
            sockets: sockets.clone(),
        });
    }
    sockets
}

fn list_sockets(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_socket()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".sock"))
        .take(8)
        .collect();
    out.sort();
    out
}

/// How long a directory listing for the sibling-socket hint, and a
/// diagnosed connect failure, are reused.
const SIBLING_TTL: Duration = Duration::from_secs(1);

/// Classifies a connect error into a cause, with nginx's wording.
pub fn connect_failure(addr: &Addr, e: &io::Error) -> Failure {
    thread_local! {
        /// The last connect failure diagnosed on this thread: an upstream
        /// that is down fails the same way for every request.
        static LAST: std::cell::RefCell<Option<(Addr, i32, Instant, Failure)>> =
            const { std::cell::RefCell::new(None) };
    }
    let errno = e.raw_os_error().unwrap_or(0);
    if errno == libc::EMFILE || errno == libc::ENFILE {
        // connect() does not return these: socket() did (tokio's connect).
        return socket_failure(e);
    }
    let now = Instant::now();
    LAST.with_borrow_mut(|last| match last {
        // A second at most, like the sibling-socket hint it may carry.
        // An error without an errno (a failed name lookup) is not reused:
        // its text is its only identity.
        Some((a, n, at, f))
            if errno != 0 && *n == errno && a == addr && now.duration_since(*at) < SIBLING_TTL =>
        {
            f.clone()
        }
        _ => {
            let f = diagnose_connect(addr, e, errno);
            *last = Some((addr.clone(), errno, now, f.clone()));
            f
        }
    })
}

fn diagnose_connect(addr: &Addr, e: &io::Error, errno: i32) -> Failure {
    let peer = match addr {
        Addr::Unix(_) => format!(" to {addr}"),
        Addr::Tcp(_) => String::new(),
    };
    let msg = format!("connect(){peer} failed {}", errno_text(e));
    let details = format!("connect() to {addr}: {}", errno_text(e));
    let cause = match (addr, errno) {
        (Addr::Unix(_), libc::ENOENT) => Cause::ConnectSocketMissing,
        (_, libc::EACCES) | (_, libc::EPERM) => Cause::ConnectPermissionDenied,
        (Addr::Unix(_), libc::ECONNREFUSED) => Cause::ConnectSocketStale,
        (Addr::Tcp(_), libc::ECONNREFUSED) => Cause::ConnectRefused,
        (_, libc::EAGAIN) => Cause::ConnectBacklogFull,
        (_, libc::ETIMEDOUT) => Cause::ConnectTimeout,
        _ => Cause::ConnectFailed,
    };
    let mut f = Failure::new(cause, msg, details);
    if let (Cause::ConnectSocketMissing, Addr::Unix(p)) = (cause, addr) {
        let others = sibling_sockets(p);
        if !others.is_empty() {
            // By file name: they are in the same directory.
            let found = match others.split_last() {
                Some((one, [])) => format!("{one} beside it does"),
                Some((last, rest)) => format!("{} and {last} beside it do", rest.join(", ")),
                None => String::new(),
            };
            f = f.with_hint(format!(
                "{} does not exist, but {found}: is the upstream still configured for an older PHP version?",
                p.display(),
            ));
        } else if p.parent().is_some_and(|d| !d.exists()) {
            f = f.with_hint(format!(
                "The directory {} does not exist either: PHP-FPM has not created it (not installed or never started).",
                p.parent().map(|d| d.display().to_string()).unwrap_or_default()
            ));
        }
    }
    f
}

/// `socket()` failed: why502's descriptors (or the system's, or memory)
/// ran out. nginx's wording; a 500.
pub fn socket_failure(e: &io::Error) -> Failure {
    let errno = errno_text(e);
    Failure::new(
        Cause::ConnectSocketFailed,
        format!("socket() failed {errno}"),
        format!("creating a socket for the upstream connection: {errno}"),
    )
}

pub fn timeout_failure(cause: Cause, what: &str) -> Failure {
    Failure::new(
        cause,
        "upstream timed out (110: Connection timed out)",
        format!("no progress {what} within the configured timeout"),
    )
}

/// Opens a new connection within `timeout` through tokio: [`dial`]'s way
/// for a host name (tokio resolves it).
async fn connect(addr: &Addr, timeout: Duration) -> Result<Conn, Failure> {
    let fut = async {
        match addr {
            Addr::Unix(p) => UnixStream::connect(p).await.map(Conn::Unix),
            Addr::Tcp(hp) => {
                let s = TcpStream::connect(hp.as_str()).await?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(connect_failure(addr, &e)),
        Err(_) => Err(timeout_failure(Cause::ConnectTimeout, "while connecting")),
    }
}

/// A FastCGI connection just made (see [`dial`]).
pub enum Dialed {
    /// A unix socket that connected at once, not yet registered with the
    /// reactor.
    Unix(std::os::unix::net::UnixStream),
    /// A TCP socket whose nonblocking connect was started (and on loopback
    /// has usually finished), not yet registered with the reactor.
    Tcp(std::net::TcpStream),
    /// A connection ready for I/O through tokio.
    Conn(Conn),
}

/// Connects like [`connect`], except that a unix socket, or a TCP address
/// given as an IP and port (`tcp`, parsed once at start-up), is connected
/// without tokio.
///
/// tokio's `connect` waits for the reactor to report the new socket
/// writable before it returns. That costs a turn of the event loop and a
/// second poll of the request's task per connection (with
/// `fastcgi_keep_conn off`, per request). But a unix socket's connect
/// succeeds or fails at once (`EAGAIN` when the listen backlog is full,
/// which nginx reports as a failure too), and on loopback a TCP
/// handshake is done before `connect` returns. nginx writes the request
/// right after a connect that succeeded; [`Dialed::register`] does the
/// same, and waits only when the write says the connection is not up yet.
pub async fn dial(
    addr: &Addr,
    tcp: Option<std::net::SocketAddr>,
    timeout: Duration,
) -> Result<Dialed, Failure> {
    match (addr, tcp) {
        (Addr::Unix(p), _) => match connect_unix_now(new_socket(socket2::Domain::UNIX)?, p) {
            Ok(s) => return Ok(Dialed::Unix(s)),
            // Not seen for unix sockets on Linux; tokio's connect waits
            // for it.
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(connect_failure(addr, &e)),
        },
        (Addr::Tcp(_), Some(sa)) => {
            return start_tcp(new_socket(socket2::Domain::for_address(sa))?, sa)
                .map(Dialed::Tcp)
                .map_err(|e| connect_failure(addr, &e))
        }
        // A host name: tokio resolves it.
        (Addr::Tcp(_), None) => {}
    }
    connect(addr, timeout).await.map(Dialed::Conn)
}

/// A nonblocking stream socket; its failure is why502's, not the
/// upstream's ([`socket_failure`]).
fn new_socket(domain: socket2::Domain) -> Result<socket2::Socket, Failure> {
    socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking(), None)
        .map_err(|e| socket_failure(&e))
}

/// A nonblocking `connect` (the errors are the connect's, as with tokio's).
fn connect_unix_now(s: socket2::Socket, p: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    s.connect(&socket2::SockAddr::unix(p)?)?;
    Ok(s.into())
}

/// A nonblocking TCP `connect`, started (`EINPROGRESS` is not an error),
/// with `TCP_NODELAY` as [`connect`] sets it.
fn start_tcp(s: socket2::Socket, sa: std::net::SocketAddr) -> io::Result<std::net::TcpStream> {
    let _ = s.set_nodelay(true);
    match s.connect(&sa.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// One nonblocking `write`; `None` when it would block.
fn write_now(mut w: impl std::io::Write, first: &[u8]) -> Option<io::Result<usize>> {
    match w.write(first) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            None
        }
        r => Some(r),
    }
}

impl Dialed {
    /// Hands the connection to tokio. A socket just connected is first
    /// written what it takes of `first` (the request's first bytes) with
    /// one `write`: the second result is how many bytes that was, or the
    /// write's error. A TCP connect still under way is waited for here
    /// (`timeout`, `fastcgi_connect_timeout`); its failure, and a failed
    /// registration, are the error.
    pub async fn register(
        self,
        addr: &Addr,
        first: &[u8],
        timeout: Duration,
    ) -> Result<(Conn, io::Result<usize>), Failure> {
        let fail = |e: io::Error| connect_failure(addr, &e);
        match self {
            Dialed::Conn(c) => Ok((c, Ok(0))),
            Dialed::Unix(s) => {
                let sent = write_now(&s, first).unwrap_or(Ok(0));
                Ok((Conn::Unix(UnixStream::from_std(s).map_err(fail)?), sent))
            }
            Dialed::Tcp(s) => match write_now(&s, first) {
                Some(Ok(n)) => Ok((Conn::Tcp(TcpStream::from_std(s).map_err(fail)?), Ok(n))),
                // The connect failed (refused, unreachable): a write
                // before the handshake reports the connect's error.
                Some(Err(e)) if is_connect_error(&e) => Err(fail(e)),
                Some(Err(e)) => Ok((Conn::Tcp(TcpStream::from_std(s).map_err(fail)?), Err(e))),
                // Still connecting: wait as tokio's connect does.
                None => {
                    let t = TcpStream::from_std(s).map_err(fail)?;
                    match tokio::time::timeout(timeout, t.writable()).await {
                        Err(_) => Err(timeout_failure(Cause::ConnectTimeout, "while connecting")),
                        Ok(Err(e)) => Err(fail(e)),
                        Ok(Ok(())) => match t.take_error() {
                            Ok(None) => Ok((Conn::Tcp(t), Ok(0))),
                            Ok(Some(e)) | Err(e) => Err(fail(e)),
                        },
                    }
                }
            },
        }
    }
}

/// Errors a socket reports when its connect failed.
fn is_connect_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ETIMEDOUT
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EADDRNOTAVAIL
        )
    )
}

/// Per-server run-time state.
struct ServerState {
    current_weight: i64,
    fails: u32,
    checked: Option<Instant>,
    down_until: Option<Instant>,
    last_failure: Option<String>,
}

/// How long an idle upstream connection is kept (nginx's upstream
/// `keepalive_timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Run-time state of one upstream: selection and idle connections.
pub struct UpstreamState {
    pub config: std::sync::Arc<Upstream>,
    state: Mutex<Vec<ServerState>>,
    /// Idle FastCGI connections with the time they became idle, per server
    /// and per worker thread (see [`pool_slot`]).
    idle: Vec<PerThread<(Conn, Instant)>>,
    /// Idle HTTP/1.1 keep-alive connections (HTTP upstreams), per server and
    /// worker thread, with the key of the settings they were opened with (0
    /// for plain HTTP, one per location for TLS: CA, name) and the time they
    /// became idle.
    http_idle: Vec<PerThread<(u64, HttpWire, Instant)>>,
    /// Each server's address as text (`Addr`'s Display), made once.
    pub addr_text: Vec<std::sync::Arc<str>>,
    /// Per server: whether its last connect failed (see
    /// [`UpstreamState::connect_failing`]).
    connect_failed: Vec<std::sync::atomic::AtomicBool>,
    /// Each server as nginx names a FastCGI upstream in log lines
    /// (`fastcgi://unix:/path:`, `fastcgi://127.0.0.1:9000`), made once.
    pub fastcgi_names: Vec<std::sync::Arc<str>>,
    /// Each TCP server's address when it is an IP and port (a host name is
    /// resolved per connection, by tokio), parsed once.
    pub tcp_addrs: Vec<Option<std::net::SocketAddr>>,
    /// Wakes the idle sweeper when an idle FastCGI connection is closed by
    /// its peer (see [`Conn::watch`]).
    pub watch: std::sync::Arc<IdleWatch>,
    waker: std::task::Waker,
}

/// One idle pool per worker thread (see [`pool_slot`]).
type PerThread<T> = Vec<Mutex<Vec<T>>>;

/// The idle-pool slot of the calling thread, out of `n`.
///
/// Idle connections are pooled per worker thread, so `keepalive N` means N
/// per worker thread, as it means N per worker process in nginx, and the
/// threads do not contend for one lock. (With one single-threaded runtime
/// per thread this also keeps a connection on the reactor that opened it.)
fn pool_slot(n: usize) -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    SLOT.with(|s| *s) % n.max(1)
}

/// nginx's name of a FastCGI upstream server in log lines.
fn fastcgi_name(addr: &Addr) -> String {
    let mut s = format!("fastcgi://{addr}");
    if matches!(addr, Addr::Unix(_)) {
        s.push(':');
    }
    s
}

/// The outcome of picking a server.
pub enum Pick {
    Server(usize),
    /// Every server is down: "no live upstreams" with each server's last failure.
    NoneLive(String),
}

impl UpstreamState {
    /// State with one idle-pool slot per worker thread (`threads`).
    pub fn new(config: std::sync::Arc<Upstream>, threads: usize) -> UpstreamState {
        let n = config.servers.len();
        let slots = threads.max(1);
        let watch = std::sync::Arc::new(IdleWatch::default());
        UpstreamState {
            state: Mutex::new(
                (0..n)
                    .map(|_| ServerState {
                        current_weight: 0,
                        fails: 0,
                        checked: None,
                        down_until: None,
                        last_failure: None,
                    })
                    .collect(),
            ),
            idle: (0..n)
                .map(|_| (0..slots).map(|_| Mutex::new(Vec::new())).collect())
                .collect(),
            http_idle: (0..n)
                .map(|_| (0..slots).map(|_| Mutex::new(Vec::new())).collect())
                .collect(),
            addr_text: config
                .servers
                .iter()
                .map(|s| s.addr.to_string().into())
                .collect(),
            connect_failed: (0..n)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            fastcgi_names: config
                .servers
                .iter()
                .map(|s| fastcgi_name(&s.addr).into())
                .collect(),
            tcp_addrs: config
                .servers
                .iter()
                .map(|s| match &s.addr {
                    Addr::Tcp(hp) => hp.parse().ok(),
                    Addr::Unix(_) => None,
                })
                .collect(),
            waker: std::task::Waker::from(watch.clone()),
            watch,
            config,
        }
    }

    /// Picks a server not in `tried` (nginx smooth weighted round robin; backup
    /// servers only when every primary is down or tried).
    pub fn pick(&self, tried: &[usize]) -> Pick {
        let servers = &self.config.servers;
        if servers.len() == 1 {
            // nginx never marks the only server down.
            return if tried.is_empty() {
                Pick::Server(0)
            } else {
                Pick::NoneLive(String::new())
            };
        }
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return Pick::Server(0);
        };
        for backup in [false, true] {
            let mut best: Option<usize> = None;
            let mut total = 0i64;
            for (i, s) in servers.iter().enumerate() {
                if s.backup != backup || tried.contains(&i) {
                    continue;
                }
                if st[i].down_until.is_some_and(|t| t > now) {
                    continue;
                }
                let w = i64::from(s.weight);
                st[i].current_weight += w;
                total += w;
                if best.is_none_or(|b| st[i].current_weight > st[b].current_weight) {
                    best = Some(i);
                }
            }
            if let Some(b) = best {
                st[b].current_weight -= total;
                st[b].checked = Some(now);
                return Pick::Server(b);
            }
        }
        let mut why = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            let last = st[i].last_failure.as_deref().unwrap_or("not tried");
            why.push(format!("{}: {}", s.addr, last));
        }
        Pick::NoneLive(why.join("; "))
    }

    /// Records a failure of server `i` (connect error, timeout, invalid response).
    pub fn failed(&self, i: usize, what: &str) {
        let Some(cfg) = self.config.servers.get(i) else {
            return;
        };
        if self.config.servers.len() == 1 {
            // The only server is never marked down and its last failure is
            // never shown (`pick`): nothing to record, no lock for the
            // threads to share on every 502.
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            let s = &mut st[i];
            s.last_failure = Some(what.to_string());
            if cfg.max_fails == 0 {
                return;
            }
            s.fails += 1;
            if s.fails >= cfg.max_fails {
                s.down_until = Some(Instant::now() + cfg.fail_timeout);
                s.fails = 0;
            }
        }
    }

    /// Records a success of server `i`.
    pub fn succeeded(&self, i: usize) {
        if self.config.servers.len() == 1 {
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            st[i].fails = 0;
            st[i].down_until = None;
        }
    }

    /// Whether server `i`'s last connect failed: a hint for the next
    /// request's order of work, not a health state (nginx's `max_fails`
    /// is [`UpstreamState::failed`]'s).
    pub fn connect_failing(&self, i: usize) -> bool {
        self.connect_failed
            .get(i)
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Records how server `i`'s connect went. Stored only on a change, so
    /// that threads connecting to a healthy server share the flag's cache
    /// line without writing it.
    pub fn connect_went(&self, i: usize, failed: bool) {
        if let Some(f) = self.connect_failed.get(i) {
            if f.load(std::sync::atomic::Ordering::Relaxed) != failed {
                f.store(failed, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Takes a live idle connection to server `i`, if any (see
    /// [`Conn::is_idle_alive`]).
    pub fn take_idle(&self, i: usize) -> Option<Conn> {
        let slots = self.idle.get(i)?;
        let pool = slots.get(pool_slot(slots.len()))?;
        loop {
            let (c, since) = pool.lock().ok()?.pop()?;
            if since.elapsed() < self.config.keepalive_timeout && c.is_idle_alive() {
                return Some(c);
            }
        }
    }

    /// How many idle FastCGI connections a pool keeps past
    /// [`EXCESS_LINGER`]: `keepalive`.
    fn idle_cap(&self) -> usize {
        self.config.keepalive.max(1)
    }

    /// Returns a connection to the idle pool.
    ///
    /// A pool already holding `keepalive` connections takes it too, for
    /// [`EXCESS_LINGER`]: the connections beyond `keepalive` that have been
    /// idle that long are closed here, oldest first, and by the idle sweeper
    /// when no request comes (see [`IdleWatch`]). nginx closes the oldest
    /// at once; under a load that keeps a few more than `keepalive` requests
    /// in flight, it closes connections one moment and opens new ones the
    /// next (a TCP upstream then runs out of ephemeral ports).
    pub fn put_idle(&self, i: usize, c: Conn) {
        // Closed by PHP-FPM already (a retiring worker): dropped now.
        if !c.watch(&self.waker) {
            return;
        }
        let slots = self.idle.get(i).map(Vec::as_slice).unwrap_or_default();
        if let Some(pool) = slots.get(pool_slot(slots.len())) {
            if let Ok(mut p) = pool.lock() {
                let cap = self.idle_cap();
                let now = Instant::now();
                trim_excess(&mut p, cap, now);
                p.push((c, now));
                if p.len() > cap && !self.watch.over.swap(true, Ordering::Relaxed) {
                    self.watch.wake_sweeper();
                }
            }
        }
    }

    /// Closes FastCGI connections idle for longer than the upstream's
    /// `keepalive_timeout` (default [`IDLE_TIMEOUT`]): an idle
    /// connection holds a PHP-FPM worker, so it must not be kept forever.
    ///
    /// Also closes the idle connections their peer has closed or sent
    /// something on (see [`Conn::watch`]); the sweeper runs this when
    /// [`IdleWatch`] wakes it, not only every second.
    ///
    /// Closes the connections beyond `keepalive` idle for [`EXCESS_LINGER`]
    /// too. True if a pool still holds more than `keepalive`: the sweeper
    /// then comes back after [`EXCESS_LINGER`], not after a second.
    pub fn expire_idle(&self) -> bool {
        // Cleared first: a connection put over the limit from now on sets
        // it again and wakes the sweeper.
        self.watch.over.store(false, Ordering::Relaxed);
        let cap = self.idle_cap();
        let now = Instant::now();
        let mut over = false;
        for pool in self.idle.iter().flatten() {
            if let Ok(mut p) = pool.lock() {
                p.retain(|(c, since)| {
                    now.saturating_duration_since(*since) < self.config.keepalive_timeout
                        && c.watch(&self.waker)
                });
                trim_excess(&mut p, cap, now);
                over |= p.len() > cap;
            }
        }
        if over {
            self.watch.over.store(true, Ordering::Relaxed);
        }
        over
    }

    /// Idle FastCGI connections currently pooled (all servers).
    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .flatten()
            .filter_map(|p| p.lock().ok().map(|p| p.len()))
            .sum()
    }
}

impl UpstreamState {
    /// Takes a live idle HTTP keep-alive connection to server `i`, opened
    /// with settings `key`, that has been idle for less than `max_idle`.
    pub fn take_idle_http(&self, i: usize, key: u64, max_idle: Duration) -> Option<HttpWire> {
        let slots = self.http_idle.get(i)?;
        let mut p = slots.get(pool_slot(slots.len()))?.lock().ok()?;
        while let Some(pos) = p.iter().rposition(|(k, _, _)| *k == key) {
            let (_, w, since) = p.remove(pos);
            if since.elapsed() < max_idle && fd_idle_alive(w.fd()) {
                return Some(w);
            }
        }
        None
    }

    /// Returns an HTTP keep-alive connection to server `i`'s idle pool
    /// (dropped if the pool is full or keep-alive is off for the upstream).
    pub fn put_idle_http(&self, i: usize, key: u64, w: HttpWire) {
        if self.config.keepalive == 0 {
            return;
        }
        let slots = self.http_idle.get(i).map(Vec::as_slice).unwrap_or_default();
        if let Some(Ok(mut p)) = slots.get(pool_slot(slots.len())).map(|p| p.lock()) {
            let max_idle = self.config.keepalive_timeout;
            p.retain(|(_, _, since)| since.elapsed() < max_idle);
            if p.len() < self.config.keepalive {
                p.push((key, w, Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamServer;
    use std::sync::Arc;

    fn up(weights: &[(u32, bool)]) -> UpstreamState {
        UpstreamState::new(
            Arc::new(Upstream {
                name: "u".into(),
                servers: weights
                    .iter()
                    .enumerate()
                    .map(|(i, (w, b))| {
                        let mut s =
                            UpstreamServer::new(Addr::Tcp(format!("127.0.0.1:{}", 1000 + i)));
                        s.weight = *w;
                        s.backup = *b;
                        s
                    })
                    .collect(),
                keepalive: 2,
                keepalive_timeout: crate::upstream::IDLE_TIMEOUT,
            }),
            1,
        )
    }

    #[test]
    fn smooth_weighted_round_robin() {
        let u = up(&[(5, false), (1, false), (1, false)]);
        let seq: Vec<usize> = (0..7)
            .map(|_| match u.pick(&[]) {
                Pick::Server(i) => i,
                Pick::NoneLive(_) => 99,
            })
            .collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn the_only_server_is_never_marked_down() {
        // nginx: an upstream of one server is always tried, whatever
        // max_fails says; a retry on it is "no live upstreams".
        let u = up(&[(1, false)]);
        for _ in 0..5 {
            u.failed(0, "connect() failed (111: Connection refused)");
        }
        assert!(matches!(u.pick(&[]), Pick::Server(0)));
        assert!(matches!(u.pick(&[0]), Pick::NoneLive(_)));
        // A two-server upstream with the same default max_fails (1) does
        // mark a failed server down.
        let two = up(&[(1, false), (1, false)]);
        two.failed(0, "refused");
        assert!(matches!(two.pick(&[]), Pick::Server(1)));
        assert!(matches!(two.pick(&[]), Pick::Server(1)));
    }

    #[test]
    fn a_failed_connect_is_remembered_per_server_until_one_succeeds() {
        // Kept for the only server too, which `failed` does not track.
        let one = up(&[(1, false)]);
        assert!(!one.connect_failing(0));
        one.connect_went(0, true);
        assert!(one.connect_failing(0));
        one.connect_went(0, false);
        assert!(!one.connect_failing(0));
        let two = up(&[(1, false), (1, false)]);
        two.connect_went(1, true);
        assert!(!two.connect_failing(0) && two.connect_failing(1));
        assert!(!two.connect_failing(7), "no such server");
    }

    #[test]
    fn backup_and_no_live() {
        let u = up(&[(1, false), (1, true)]);
        u.failed(0, "connect() failed (111: Connection refused)");
        assert!(matches!(u.pick(&[]), Pick::Server(1)));
        u.failed(1, "refused too");
        match u.pick(&[]) {
            Pick::NoneLive(why) => {
                assert!(why.contains("111") && why.contains("refused too"), "{why}")
            }
            Pick::Server(i) => panic!("picked {i}"),
        }
    }

    #[test]
    fn connections_beyond_keepalive_linger_then_close_oldest_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // keepalive 2. The far ends stay open: a closed peer is
            // dropped at put.
            let u = up(&[(1, false)]);
            let (mut conns, peers): (Vec<_>, Vec<_>) = (0..5)
                .map(|_| UnixStream::pair().expect("socketpair"))
                .unzip();
            let fds: Vec<i32> = conns.iter().map(|c| c.as_raw_fd()).collect();
            let mut conns = conns.drain(..).map(Conn::Unix);
            let closed = |i: usize| peek_byte(peers[i].as_raw_fd()) == 0;
            // A close reaches the peer at once, unless another test is
            // starting a process at that moment: between its fork and exec
            // the child holds a copy of every descriptor (1 in 3 runs of
            // the whole suite on a loaded machine failed here). An open one
            // stays open, so only the closes are waited for.
            let closes = |i: usize| {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while !closed(i) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                closed(i)
            };
            for c in conns.by_ref().take(3) {
                u.put_idle(0, c);
            }
            // Three idle against keepalive 2: all kept for now.
            assert_eq!(u.idle_count(), 3);
            assert!(
                u.expire_idle(),
                "over the limit: the sweeper comes back soon"
            );
            assert_eq!(u.idle_count(), 3);
            std::thread::sleep(EXCESS_LINGER + Duration::from_millis(2));
            // The next put closes the one beyond the limit, the oldest.
            u.put_idle(0, conns.next().expect("4th"));
            assert_eq!(u.idle_count(), 3);
            assert!(closes(0) && !closed(1) && !closed(2));
            let took = u.take_idle(0).map(|c| c.raw_fd());
            assert_eq!(took, Some(fds[3]), "the most recent is taken first");
            // The sweeper closes what lingers once no request comes.
            u.put_idle(0, conns.next().expect("5th"));
            assert_eq!(u.idle_count(), 3);
            std::thread::sleep(EXCESS_LINGER + Duration::from_millis(2));
            assert!(!u.expire_idle(), "back to the limit");
            assert_eq!(u.idle_count(), 2);
            assert!(closes(1) && !closed(2) && !closed(4));
        });
    }

    #[test]
    fn missing_socket_hint_names_the_sockets_beside_it() {
        let hint = |dir: &Path| {
            let missing = Addr::Unix(dir.join("php8.2-fpm.sock"));
            let e = io::Error::from_raw_os_error(libc::ENOENT);
            diagnose_connect(&missing, &e, libc::ENOENT)
                .extra_hint
                .unwrap_or_default()
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let _a = std::os::unix::net::UnixListener::bind(dir.path().join("php7.4-fpm.sock"))
            .expect("bind");
        let one = hint(dir.path());
        assert!(
            one.contains("php8.2-fpm.sock does not exist, but php7.4-fpm.sock beside it does: is the upstream"),
            "{one}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let _a = std::os::unix::net::UnixListener::bind(dir.path().join("a.sock")).expect("bind");
        let _b = std::os::unix::net::UnixListener::bind(dir.path().join("b.sock")).expect("bind");
        let two = hint(dir.path());
        assert!(
            two.contains("but a.sock and b.sock beside it do: is the upstream"),
            "{two}"
        );
    }

    #[test]
    fn errno_text_is_nginx_style() {
        let e = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(errno_text(&e), "(104: Connection reset by peer)");
    }
}
