//! The harness shared by every module of the integration suite: the why502
//! binary as a subprocess, PHP-FPM pools, small hand-written peers, and the
//! assertions that check every reporting surface of a diagnosed failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use why502::cause::{Cause, Phase};
use why502::fpm::{Fpm, Listen, PoolSpec};

use crate::support::{self, HttpResponse, Req};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_why502");

/// Poll `f` every 20 ms until it returns `Some`, at most `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running why502 (killed on Drop). Logs go to files in the test's temp dir.
pub struct Proxy {
    child: Option<Child>,
    pub addr: String,
    pub error_log: PathBuf,
    pub events: PathBuf,
    pub stderr: PathBuf,
}

impl Proxy {
    /// The one-liner: `why502 --listen 127.0.0.1:PORT <args> --error-log .. --events ..`.
    pub fn flags(dir: &Path, args: &[&str]) -> Proxy {
        Proxy::spawn(dir, &[], |port| {
            let mut v = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
            v.extend(args.iter().map(|s| s.to_string()));
            v
        })
    }

    /// Like [`Proxy::flags`], with the process started through `wrapper`
    /// (e.g. `setpriv --reuid=65534 ...`).
    pub fn flags_wrapped(dir: &Path, wrapper: &[&str], args: &[&str]) -> Proxy {
        Proxy::spawn(dir, wrapper, |port| {
            let mut v = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
            v.extend(args.iter().map(|s| s.to_string()));
            v
        })
    }

    /// A YAML config: every `{listen}` in `yaml` becomes `127.0.0.1:PORT`.
    pub fn yaml(dir: &Path, yaml: &str) -> Proxy {
        Proxy::yaml_flags(dir, yaml, &[])
    }

    /// A YAML config with command-line flags after it (`--threads 1`: the
    /// harness passes `--threads 2` otherwise).
    pub fn yaml_flags(dir: &Path, yaml: &str, flags: &[&str]) -> Proxy {
        Proxy::yaml_wrapped(dir, &[], yaml, flags)
    }

    /// A YAML config, why502 started through `wrapper` (`env VAR=value`).
    pub fn yaml_wrapped(dir: &Path, wrapper: &[&str], yaml: &str, flags: &[&str]) -> Proxy {
        let path = dir.join("why502.yaml");
        Proxy::spawn(dir, wrapper, |port| {
            let text = yaml.replace("{listen}", &format!("127.0.0.1:{port}"));
            std::fs::write(&path, text).expect("write why502.yaml");
            let mut v = vec!["--config".to_string(), path.display().to_string()];
            v.extend(flags.iter().map(|s| s.to_string()));
            v
        })
    }

    fn spawn(dir: &Path, wrapper: &[&str], args: impl Fn(u16) -> Vec<String>) -> Proxy {
        let error_log = dir.join("error.log");
        let events = dir.join("events.log");
        let stderr = dir.join("why502.stderr");
        let mut last_err = String::new();
        // A port picked by free_port() can be taken by someone else before
        // why502 binds it: then why502 exits and we try another port.
        for _attempt in 0..5 {
            let port = support::free_port();
            let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
            argv.push(BIN.to_string());
            argv.extend(args(port));
            argv.extend([
                "--error-log".to_string(),
                error_log.display().to_string(),
                "--events".to_string(),
                events.display().to_string(),
            ]);
            if !argv.iter().any(|a| a == "--threads") {
                argv.extend(["--threads".to_string(), "2".to_string()]);
            }
            let err_file = std::fs::File::create(&stderr).expect("create why502.stderr");
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err_file)
                .env("RUST_BACKTRACE", "1")
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
            let mut p = Proxy {
                child: Some(child),
                addr: format!("127.0.0.1:{port}"),
                error_log: error_log.clone(),
                events: events.clone(),
                stderr: stderr.clone(),
            };
            let up = wait_until(Duration::from_secs(20), || {
                if !p.alive() {
                    return Some(false);
                }
                let a: SocketAddr = p.addr.parse().ok()?;
                TcpStream::connect_timeout(&a, Duration::from_millis(200))
                    .ok()
                    .map(|_| true)
            });
            if up == Some(true) && p.alive() {
                return p;
            }
            last_err = std::fs::read_to_string(&stderr).unwrap_or_default();
            p.kill();
        }
        panic!("why502 did not start listening; stderr:\n{last_err}");
    }

    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The PID of the why502 process (or of the wrapper, which execs it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    pub fn events_text(&self) -> String {
        std::fs::read_to_string(&self.events).unwrap_or_default()
    }

    /// Every JSON line of the events file.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        support::http(&self.addr, &Req::get(path))
    }

    pub fn req(&self, req: &Req) -> HttpResponse {
        support::http(&self.addr, req)
    }

    /// A short description of the logs, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "\n--- error.log ---\n{}\n--- events ---\n{}\n--- stderr ---\n{}",
            self.error_log(),
            self.events_text(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Assertions on the reporting surfaces.

/// What a diagnosed failure looked like on every surface.
#[derive(Debug)]
pub struct Diagnosed {
    pub log_line: String,
    pub event: serde_json::Value,
}

/// The fixed parts of the cause row's nginx wording: `{placeholders}`, `N`
/// and `...` stand for run-time values.
pub fn nginx_fragments(template: &str) -> Vec<String> {
    let mut t = String::new();
    let mut in_brace = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_brace = true;
                t.push('\0');
            }
            '}' if in_brace => in_brace = false,
            _ if in_brace => {}
            _ => t.push(c),
        }
    }
    let mut t = t.replace("...", "\0").replace(" N ", " \0 ");
    // PHP's stderr messages go on (" in FILE on line N") before the closing quote.
    if t.starts_with("FastCGI sent in stderr: \"") && t.ends_with('"') {
        t.pop();
    }
    t.split('\0')
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The error log's entries: a line starting with nginx's timestamp plus its
/// continuation lines (PHP's stack traces keep their newlines, as in nginx).
pub fn log_entries(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in log.lines() {
        let b = l.as_bytes();
        let starts = b.len() > 20 && b[4] == b'/' && b[7] == b'/' && b[10] == b' ' && b[13] == b':';
        match out.last_mut() {
            Some(last) if !starts => {
                last.push('\n');
                last.push_str(l);
            }
            _ => out.push(l.to_string()),
        }
    }
    out
}

/// True if the fragments occur in `line` in order.
fn contains_in_order(line: &str, frags: &[String]) -> bool {
    let mut at = 0;
    for f in frags {
        match line[at..].find(f.as_str()) {
            Some(i) => at += i + f.len(),
            None => return false,
        }
    }
    true
}

/// Checks the error log and the events file for `code`: an nginx-format line
/// with the cause row's wording (or `wording`, when given) and `cause: code`,
/// and a JSON event with `"cause": code`.
pub fn assert_logged(p: &Proxy, code: &str, wording: Option<&[&str]>) -> Diagnosed {
    assert_logged_for(p, code, wording, None)
}

/// [`assert_logged`] for the request with id `rid` (when given).
pub fn assert_logged_for(
    p: &Proxy,
    code: &str,
    wording: Option<&[&str]>,
    rid: Option<&str>,
) -> Diagnosed {
    let cause = Cause::from_code(code).unwrap_or_else(|| panic!("unknown cause {code}"));
    let info = cause.info();
    let frags: Vec<String> = match wording {
        Some(w) => w.iter().map(|s| s.to_string()).collect(),
        None => nginx_fragments(info.nginx),
    };
    let tag = match rid {
        Some(r) => format!("cause: {code}, request_id: {r}"),
        None => format!("cause: {code},"),
    };
    let found = wait_until(Duration::from_secs(10), || {
        log_entries(&p.error_log())
            .into_iter()
            .find(|l| l.contains(&tag) && contains_in_order(l, &frags))
    });
    let Some(line) = found else {
        panic!("no error-log line with {frags:?} and {tag:?}{}", p.logs());
    };
    // nginx's line format: "YYYY/MM/DD HH:MM:SS [level] PID#0: *N message ..., client: ..."
    assert!(
        line.len() > 20
            && line.as_bytes()[4] == b'/'
            && line.contains("] ")
            && line.contains("#0: *"),
        "not an nginx-format line: {line}"
    );
    assert!(line.contains(", client: "), "{line}");
    if matches!(
        info.phase,
        Phase::Connect | Phase::Send | Phase::Header | Phase::Body
    ) {
        assert!(
            line.contains(info.phase.nginx_while()),
            "missing {:?} in {line}",
            info.phase.nginx_while()
        );
    }
    let event = wait_until(Duration::from_secs(10), || {
        p.events().into_iter().find(|e| {
            e["cause"].as_str() == Some(code)
                && rid.is_none_or(|r| e["request_id"].as_str() == Some(r))
        })
    });
    let Some(event) = event else {
        panic!("no event with \"cause\":\"{code}\"{}", p.logs());
    };
    assert_eq!(
        event["phase"].as_str(),
        Some(info.phase.as_str()),
        "{event}"
    );
    Diagnosed {
        log_line: line,
        event,
    }
}

/// A failure answered by why502 before the response header: status, cause
/// header, Proxy-Status error type, error page, log line and event.
pub fn assert_diagnosed(p: &Proxy, r: &HttpResponse, code: &str, status: u16) -> Diagnosed {
    assert_diagnosed_with(p, r, code, status, None)
}

pub fn assert_diagnosed_with(
    p: &Proxy,
    r: &HttpResponse,
    code: &str,
    status: u16,
    wording: Option<&[&str]>,
) -> Diagnosed {
    let info = Cause::from_code(code)
        .unwrap_or_else(|| panic!("unknown cause {code}"))
        .info();
    assert_eq!(
        r.status,
        status,
        "status for {code}: {r:?}\nbody: {}{}",
        r.text(),
        p.logs()
    );
    assert_eq!(
        r.header("Why502-Cause"),
        Some(code),
        "cause header: {:?}\nbody: {}{}",
        r.headers,
        r.text(),
        p.logs()
    );
    let ps = r.header("Proxy-Status").unwrap_or_default();
    if info.proxy_status.is_empty() {
        assert!(
            ps.contains(&format!("received-status={status}")),
            "Proxy-Status {ps:?} for {code}"
        );
    } else {
        assert!(
            ps.contains(&format!("error={}", info.proxy_status)),
            "Proxy-Status {ps:?} for {code}"
        );
    }
    let rid = r
        .header("Why502-Request-Id")
        .unwrap_or_else(|| panic!("no request id header: {:?}", r.headers))
        .to_string();
    if info.phase != Phase::App {
        // why502's own error page names the cause and the request id.
        let body = r.text();
        assert!(body.contains(code), "page without the cause: {body}");
        assert!(body.contains(&rid), "page without the request id: {body}");
    }
    assert_logged_for(p, code, wording, Some(&rid))
}

/// A failure after the response header was sent: the client's response is
/// aborted (not complete, connection closed) and the failure is logged.
pub fn assert_aborted(p: &Proxy, r: &HttpResponse, code: &str) -> Diagnosed {
    assert!(
        (200..300).contains(&r.status),
        "the header should have gone out before {code}: {r:?}{}",
        p.logs()
    );
    assert!(
        !r.is_complete(),
        "response for {code} looks complete (framing {:?}, {} body bytes): {:?}{}",
        r.framing,
        r.body.len(),
        r.error,
        p.logs()
    );
    assert!(r.closed, "connection not closed after {code}: {r:?}");
    let d = assert_logged(p, code, None);
    assert_eq!(d.event["status"].as_u64(), Some(r.status as u64));
    d
}

// ---------------------------------------------------------------------------
// PHP-FPM.

/// A pool named `name` listening on `<dir>/<name>.sock`.
pub fn pool(name: &str) -> PoolSpec {
    PoolSpec::new(name, Listen::Unix(format!("{name}.sock").into()))
}

/// Starts PHP-FPM in `dir` (fails loudly if it is missing).
pub fn fpm(dir: &Path, pools: Vec<PoolSpec>) -> Fpm {
    support::php_fpm_or_panic();
    Fpm::start(dir, pools).unwrap_or_else(|e| panic!("starting PHP-FPM: {e}"))
}

/// `unix:/path` of a pool.
pub fn fpm_addr(f: &Fpm, pool: &str) -> String {
    f.listen_of(pool).expect("pool").addr_string()
}

/// why502 (from flags) in front of a fresh PHP-FPM pool `spec`, with a
/// document root of its own, `<dir>/www`, holding `files` (name, content).
pub fn php_site(dir: &Path, spec: PoolSpec, files: &[(&str, &str)]) -> (Fpm, Proxy) {
    let root = dir.join("www");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
    for (name, content) in files {
        std::fs::write(root.join(name), content).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
    let name = spec.name.clone();
    let f = fpm(dir, vec![spec]);
    let p = Proxy::flags(
        dir,
        &[
            "--fastcgi",
            &fpm_addr(&f, &name),
            "--root",
            &root.display().to_string(),
        ],
    );
    (f, p)
}

/// `curl` with `args` for `url`, the body discarded: (exit code,
/// "http_version status size", lower-cased response headers).
pub fn curl_summary(args: &[&str], url: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-D", "-", "-o", "/dev/null"])
        .args(args)
        .args(["-w", "\n%{http_version} %{http_code} %{size_download}"])
        .arg(url)
        .output()
        .expect("curl is required (tests/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, summary) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (
        out.status.code().unwrap_or(-1),
        summary.to_string(),
        headers.to_ascii_lowercase(),
    )
}

/// The demo scripts' directory as a string (the document root for most tests).
pub fn www() -> String {
    why502::fpm::demo_www().display().to_string()
}

/// Makes `p` readable (and traversable) by every user.
pub fn open_perms(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// A YAML config for a PHP site in front of `pass` (an upstream name,
/// `unix:/path` or `host:port`). `fastcgi_extra` lines go into the fastcgi
/// block, `server_extra` into the server, `top` before `servers:`.
pub fn php_yaml(
    root: &str,
    pass: &str,
    fastcgi_extra: &str,
    server_extra: &str,
    top: &str,
) -> String {
    let indent = |s: &str, n: usize| {
        s.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{}{}\n", " ".repeat(n), l.trim_start()))
            .collect::<String>()
    };
    format!(
        "{top}\nservers:\n  - listen: [\"{{listen}}\"]\n    root: {root}\n    index: [index.php]\n{server}    locations:\n      - prefix: /\n        try_files: [$uri, $uri/, /index.php?$args]\n      - regex: '\\.php(/|$)'\n        fastcgi:\n          pass: \"{pass}\"\n          split_path_info: '^(.+?\\.php)(/.*)$'\n          params: {{ PATH_INFO: $fastcgi_path_info }}\n{fc}",
        server = indent(server_extra, 4),
        fc = indent(fastcgi_extra, 10),
    )
}

// ---------------------------------------------------------------------------
// Hand-written peers for what neither PHP-FPM nor the fake responder does.

/// A TCP socket bound to a loopback port without listening: connects to the
/// port are refused, and nobody else can take the port meanwhile.
pub fn refused_port() -> (socket2::Socket, u16) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("port");
    (s, port)
}

/// Reads one FastCGI request (BEGIN_REQUEST .. empty STDIN) from a blocking
/// stream. Returns false on EOF/error before the request was complete.
pub fn read_fcgi_request(s: &mut TcpStream) -> bool {
    read_fcgi_stdin(s).is_some()
}

/// Reads one FastCGI request like [`read_fcgi_request`] and returns its
/// STDIN; `None` on EOF/error before the empty STDIN record. Any blocking
/// stream: TCP, or a unix socket.
pub fn read_fcgi_stdin(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut stdin = Vec::new();
    for _ in 0..100_000 {
        let mut h = [0u8; 8];
        s.read_exact(&mut h).ok()?;
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        let mut c = vec![0u8; len + h[6] as usize];
        s.read_exact(&mut c).ok()?;
        if h[1] == 5 {
            if len == 0 {
                return Some(stdin);
            }
            stdin.extend_from_slice(&c[..len]);
        }
    }
    None
}

/// One FastCGI record (request id 1), padded like PHP-FPM.
pub fn fcgi_record(ty: u8, content: &[u8]) -> Vec<u8> {
    let pad = (8 - content.len() % 8) % 8;
    let mut v = vec![
        1,
        ty,
        0,
        1,
        (content.len() >> 8) as u8,
        content.len() as u8,
        pad as u8,
        0,
    ];
    v.extend_from_slice(content);
    v.resize(v.len() + pad, 0);
    v
}

/// A complete valid FastCGI response (STDOUT, empty STDOUT, END_REQUEST).
pub fn fcgi_response(stdout: &[u8]) -> Vec<u8> {
    let mut v = fcgi_record(6, stdout);
    v.extend(fcgi_record(6, b""));
    v.extend(fcgi_record(3, &[0, 0, 0, 0, 0, 0, 0, 0]));
    v
}

/// Graceful close: shutdown(write), drain briefly, drop.
pub fn graceful_close(mut s: TcpStream) {
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A loopback TCP server running `handler(conn_index, stream)` for every
/// connection on its own thread. Stopped on Drop.
pub struct RawServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawServer {
    pub fn start(handler: impl Fn(usize, TcpStream) + Send + Sync + 'static) -> RawServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (st, cn) = (stop.clone(), connections.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let i = cn.fetch_add(1, Ordering::SeqCst);
                        let h = handler.clone();
                        std::thread::spawn(move || h(i, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawServer {
            port,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming client pieces.

/// Sends `head` then the bytes `body` produces (`body(buf) -> n`, 0 = end) on
/// a writer thread while the response is read on this one, so a response that
/// comes before the request body was consumed is still seen.
pub fn http_streaming(
    addr: &str,
    head: String,
    mut body: impl FnMut(&mut [u8]) -> usize + Send + 'static,
    timeout: Duration,
) -> (HttpResponse, u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().expect("clone");
    let _ = w.set_write_timeout(Some(timeout));
    let writer = std::thread::spawn(move || {
        let mut sent = 0u64;
        if w.write_all(head.as_bytes()).is_err() {
            return sent;
        }
        let mut buf = vec![0u8; 256 * 1024];
        for _ in 0..10_000_000 {
            let n = body(&mut buf);
            if n == 0 {
                break;
            }
            if w.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        sent
    });
    let r = support::read_response(&mut s, false, Instant::now() + timeout);
    drop(s);
    let sent = writer.join().unwrap_or(0);
    (r, sent)
}

/// A reader of an HTTP/1.1 response body that does not hold it in memory.
pub struct BodyStream {
    s: BufReader<TcpStream>,
    chunked: bool,
    left: u64,
    pub done: bool,
}

/// Sends `raw` and reads the status line and headers.
pub fn open_stream(
    addr: &str,
    raw: &[u8],
    timeout: Duration,
) -> (u16, Vec<(String, String)>, BodyStream) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(raw).expect("write request");
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    for _ in 0..1000 {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let left = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(u64::MAX);
    (
        status,
        headers,
        BodyStream {
            s: r,
            chunked,
            left: if chunked { 0 } else { left },
            done: false,
        },
    )
}

impl BodyStream {
    /// Reads the next piece of the body into `out`; Ok(0) at the (proper) end,
    /// Err on a truncated or malformed body.
    pub fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.chunked && self.left == 0 {
            let mut line = String::new();
            if self.s.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                line.clear();
                if self.s.read_line(&mut line)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk line {line:?}")))?;
            if size == 0 {
                line.clear();
                self.s.read_line(&mut line)?;
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        if !self.chunked && self.left == 0 {
            self.done = true;
            return Ok(0);
        }
        let want = (out.len() as u64).min(self.left) as usize;
        let n = self.s.read(&mut out[..want])?;
        if n == 0 {
            if !self.chunked && self.left == u64::MAX {
                self.done = true;
                return Ok(0);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if self.left != u64::MAX {
            self.left -= n as u64;
        }
        Ok(n)
    }
}

/// POSTs `len` bytes (a deterministic pattern, generated on the fly) to `path`.
pub fn post_big(addr: &str, path: &str, len: u64, timeout: Duration) -> (HttpResponse, u64) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let mut left = len;
    http_streaming(
        addr,
        head,
        move |buf| {
            let n = (buf.len() as u64).min(left) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            left -= n as u64;
            n
        },
        timeout,
    )
}
