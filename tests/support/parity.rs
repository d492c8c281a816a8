//! Shared by the nginx parity suites: child processes stopped on drop, free
//! ports, finding nginx, and a raw HTTP/1.1 client that reads a whole response.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "ports.rs"]
mod ports;
pub use ports::free_port;

/// A child process in its own process group, stopped (TERM, then KILL of
/// the whole group) when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child's process group.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; also reaps workers left in the group.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

pub fn wait_port(port: u16, what: &str, log: &Path) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!(
        "{what} did not listen on port {port} within 10 s; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

pub fn nginx_binary() -> PathBuf {
    for p in [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("nginx").is_file() {
                return d.join("nginx");
            }
        }
    }
    panic!("nginx is required for the parity suites (apt-get install nginx-light)");
}

// ---- the client ---------------------------------------------------------

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
}

/// Sends a raw request (`{HOST}` is replaced by `127.0.0.1:port`) and reads
/// the whole response (the requests say `Connection: close`).
pub fn send(port: u16, raw: &str) -> Resp {
    send_to("127.0.0.1", port, raw)
}

/// The bytes of a raw request: `{xHH}` is the byte 0xHH (for bytes that
/// are not UTF-8).
pub fn wire(raw: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find("{x") {
        let byte = rest
            .get(i + 2..i + 4)
            .filter(|_| rest.get(i + 4..i + 5) == Some("}"))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match byte {
            Some(b) => {
                out.extend_from_slice(&rest.as_bytes()[..i]);
                out.push(b);
                rest = &rest[i + 5..];
            }
            None => {
                out.extend_from_slice(&rest.as_bytes()[..i + 2]);
                rest = &rest[i + 2..];
            }
        }
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

/// [`send`] to another local address (all of 127/8 is loopback on Linux).
pub fn send_to(ip: &str, port: u16, raw: &str) -> Resp {
    let raw = raw.replace("{HOST}", &format!("127.0.0.1:{port}"));
    let mut s = TcpStream::connect((ip, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(&wire(&raw)).expect("write");
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let mut chunk = [0u8; 16384];
    while t0.elapsed() < Duration::from_secs(20) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no response header from port {port}: {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Starts nginx on `dir/nginx.conf` (prefix `dir`, in the foreground);
/// returns the process and its error log.
pub fn start_nginx(nginx: &Path, dir: &Path) -> (Proc, PathBuf) {
    let log = dir.join("nginx-error.log");
    let p = Proc::spawn(
        "nginx",
        Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-g")
            .arg(format!(
                "daemon off; pid {}; error_log {};",
                dir.join("nginx.pid").display(),
                log.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    (p, log)
}

/// Starts why502 with `args` (e.g. `--nginx-conf FILE`), logging into
/// `dir/<name>-error.log`, `dir/<name>-events.log`, `dir/<name>.out`;
/// returns the process and its error log.
pub fn start_why502(dir: &Path, name: &str, args: &[&std::ffi::OsStr]) -> (Proc, PathBuf) {
    let log = dir.join(format!("{name}-error.log"));
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).expect("out");
    let p = Proc::spawn(
        name,
        Command::new(env!("CARGO_BIN_EXE_why502"))
            .args(args)
            .arg("--error-log")
            .arg(&log)
            .arg("--events")
            .arg(dir.join(format!("{name}-events.log")))
            .arg("--threads")
            .arg("2")
            .stdout(Stdio::null())
            .stderr(out),
    );
    (p, log)
}

/// The differences between two comparable views of one case, one message
/// per key whose values differ (keys in `allow` are allowed to differ).
/// `a` and `b` are (label, view); labels are printed as given.
pub fn diff_views(
    case: &str,
    a: (&str, &std::collections::BTreeMap<String, String>),
    b: (&str, &std::collections::BTreeMap<String, String>),
    allow: &[&str],
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.1.keys().chain(b.1.keys()).collect();
    keys.into_iter()
        .filter(|k| !allow.contains(&k.as_str()))
        .filter_map(|k| {
            let (x, y) = (a.1.get(k), b.1.get(k));
            (x != y).then(|| format!("{case}: {k}\n    {}{x:?}\n    {}{y:?}", a.0, b.0))
        })
        .collect()
}
