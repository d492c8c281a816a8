//! Start a real PHP-FPM master for integration tests and the demo.
//!
//! ```no_run
//! use why502::fpm::{Fpm, Listen, PoolSpec};
//! let dir = tempfile::tempdir().unwrap();
//! let mut pool = PoolSpec::new("www", Listen::Unix("www.sock".into()));
//! pool.admin_values.push(("memory_limit".into(), "32M".into()));
//! let mut fpm = Fpm::start(dir.path(), vec![pool]).unwrap();
//! let addr = fpm.listen_of("www").unwrap().addr_string(); // "unix:/tmp/.../www.sock"
//! // ... send FastCGI requests for scripts under why502::fpm::demo_www() ...
//! fpm.stop();
//! ```
//!
//! # Running as root
//!
//! PHP-FPM refuses to start as root unless `-R` (`--allow-to-run-as-root`) is
//! given. [`Fpm::start`] always passes `-R` and never writes `user`/`group`
//! into the pool: with `-R` and no `user`, FPM (8.2) keeps the workers running
//! as the invoking user (root under root, the test user otherwise), so the
//! workers can read scripts anywhere and the sockets are owned by that user.
//! Setting `user = root` is rejected by FPM unless `-R` is given as well; it
//! is never needed here. When not running as root, `-R` is harmless.
//!
//! The master is started in its own process group; [`Fpm::stop`] sends SIGTERM
//! to the master, waits (bounded), then SIGKILLs the whole group so no worker
//! is left behind holding the socket.

use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a pool listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Unix socket. A relative path is resolved against the `dir` given to [`Fpm::start`].
    Unix(PathBuf),
    /// TCP port on 127.0.0.1; `0` = pick a free ephemeral port at start.
    Tcp(u16),
}

impl Listen {
    /// `"127.0.0.1:PORT"` or `"unix:/abs/path"` (the form used by why502 upstream configs).
    pub fn addr_string(&self) -> String {
        match self {
            Listen::Unix(p) => format!("unix:{}", p.display()),
            Listen::Tcp(port) => format!("127.0.0.1:{port}"),
        }
    }

    /// The value written to FPM's `listen =` directive.
    fn fpm_value(&self) -> String {
        match self {
            Listen::Unix(p) => p.display().to_string(),
            Listen::Tcp(port) => format!("127.0.0.1:{port}"),
        }
    }

    /// True when a connect() to this address succeeds right now.
    pub fn accepts(&self) -> bool {
        match self {
            Listen::Unix(p) => UnixStream::connect(p).is_ok(),
            Listen::Tcp(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }
        }
    }
}

/// One FPM pool (`[name]` section).
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub listen: Listen,
    /// `pm = static`, `pm.max_children`.
    pub max_children: u32,
    /// `listen.backlog` (-1 = system max). Linux caps it at net.core.somaxconn.
    pub listen_backlog: i32,
    /// `request_terminate_timeout`, rounded up to whole seconds (minimum 1 s).
    pub request_terminate_timeout: Option<Duration>,
    /// `listen.mode`, e.g. "0600" (unix sockets only).
    pub listen_mode: Option<String>,
    /// `listen.owner` (unix sockets only).
    pub listen_owner: Option<String>,
    /// `php_admin_value[K] = V`, e.g. ("memory_limit", "32M"), ("max_execution_time", "2").
    pub admin_values: Vec<(String, String)>,
    /// `php_admin_flag[K] = V`, e.g. ("display_errors", "on").
    pub admin_flags: Vec<(String, String)>,
    /// `security.limit_extensions`, e.g. ".php". Unset = FPM default (.php .phar).
    pub limit_extensions: Option<String>,
    /// `pm.status_path`, e.g. "/fpm-status".
    pub status_path: Option<String>,
    /// Raw extra lines appended to the pool section verbatim (escape hatch).
    pub extra: Vec<String>,
}

impl PoolSpec {
    /// Defaults: `pm = static`, 4 children, backlog 511, `catch_workers_output = yes`,
    /// `decorate_workers_output = no`, `clear_env = no`, `display_errors` off
    /// (as `php_flag`, so a script may still `ini_set` it) and `log_errors` on
    /// (as `php_admin_flag`). PHP errors then go to FastCGI STDERR
    /// ("PHP message: PHP Fatal error: ...") as with a stock FPM.
    pub fn new(name: impl Into<String>, listen: Listen) -> Self {
        PoolSpec {
            name: name.into(),
            listen,
            max_children: 4,
            listen_backlog: 511,
            request_terminate_timeout: None,
            listen_mode: None,
            listen_owner: None,
            admin_values: Vec::new(),
            admin_flags: Vec::new(),
            limit_extensions: None,
            status_path: None,
            extra: Vec::new(),
        }
    }

    fn render(&self, listen: &Listen) -> String {
        let mut s = String::new();
        s.push_str(&format!("[{}]\n", self.name));
        s.push_str(&format!("listen = {}\n", listen.fpm_value()));
        s.push_str(&format!("listen.backlog = {}\n", self.listen_backlog));
        if let Some(m) = &self.listen_mode {
            s.push_str(&format!("listen.mode = {m}\n"));
        }
        if let Some(o) = &self.listen_owner {
            s.push_str(&format!("listen.owner = {o}\n"));
        }
        s.push_str("pm = static\n");
        s.push_str(&format!("pm.max_children = {}\n", self.max_children.max(1)));
        if let Some(t) = self.request_terminate_timeout {
            let secs = (t.as_millis().div_ceil(1000)).max(1);
            s.push_str(&format!("request_terminate_timeout = {secs}s\n"));
        }
        s.push_str("catch_workers_output = yes\n");
        s.push_str("decorate_workers_output = no\n");
        s.push_str("clear_env = no\n");
        if let Some(e) = &self.limit_extensions {
            s.push_str(&format!("security.limit_extensions = {e}\n"));
        }
        if let Some(p) = &self.status_path {
            s.push_str(&format!("pm.status_path = {p}\n"));
        }
        s.push_str("php_flag[display_errors] = off\n");
        s.push_str("php_admin_flag[log_errors] = on\n");
        for (k, v) in &self.admin_values {
            s.push_str(&format!("php_admin_value[{k}] = {v}\n"));
        }
        for (k, v) in &self.admin_flags {
            s.push_str(&format!("php_admin_flag[{k}] = {v}\n"));
        }
        for l in &self.extra {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// A running PHP-FPM master (foreground, own process group).
pub struct Fpm {
    dir: PathBuf,
    child: Option<Child>,
    pools: Vec<(String, Listen)>,
    log_path: PathBuf,
    conf_path: PathBuf,
}

const INSTALL_HINT: &str = "PHP-FPM not found. Install it with `apt-get install php-fpm` \
(Debian/Ubuntu; provides /usr/sbin/php-fpm8.x) or point $WHY502_PHP_FPM at the php-fpm binary.";

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Version key of a `php-fpm*` file name: `php-fpm8.2` -> Some((8, 2)), `php-fpm` -> Some((0, 0)).
fn fpm_version(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("php-fpm")?;
    if rest.is_empty() {
        return Some((0, 0));
    }
    let mut it = rest.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = match it.next() {
        Some(m) => m.parse().ok()?,
        None => 0,
    };
    if it.next().is_some() {
        return None;
    }
    Some((major, minor))
}

/// Directory holding the demo gallery's PHP scripts (`src/demo/www` of this crate).
pub fn demo_www() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/demo/www")
}

impl Fpm {
    /// `$WHY502_PHP_FPM`, else the highest-versioned `php-fpm*` in /usr/sbin,
    /// /usr/local/sbin, then `$PATH`. The error says how to install it.
    pub fn binary() -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os("WHY502_PHP_FPM") {
            let p = PathBuf::from(p);
            if is_executable(&p) {
                return Ok(p);
            }
            return Err(format!(
                "$WHY502_PHP_FPM={} is not an executable file. {INSTALL_HINT}",
                p.display()
            ));
        }
        let mut dirs = vec![PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        let mut best: Option<((u32, u32), PathBuf)> = None;
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten().take(10_000) {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(v) = fpm_version(name) else { continue };
                let p = e.path();
                if !is_executable(&p) {
                    continue;
                }
                if best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                    best = Some((v, p));
                }
            }
        }
        best.map(|(_, p)| p).ok_or_else(|| INSTALL_HINT.to_string())
    }

    /// Write `php-fpm.conf` into `dir`, start `<bin> --nodaemonize --fpm-config <conf> -R`
    /// and wait (up to 10 s) until every pool's socket accepts connections.
    /// Relative unix socket paths are put in `dir`; `Tcp(0)` gets a free port.
    pub fn start(dir: &Path, pools: Vec<PoolSpec>) -> io::Result<Fpm> {
        let bin = Fpm::binary().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        let dir = dir.canonicalize()?;
        let log_path = dir.join("php-fpm.log");
        let conf_path = dir.join("php-fpm.conf");
        let pid_path = dir.join("php-fpm.pid");
        if pools.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Fpm::start: no pools",
            ));
        }

        let mut conf = String::new();
        conf.push_str("[global]\n");
        conf.push_str(&format!("pid = {}\n", pid_path.display()));
        conf.push_str(&format!("error_log = {}\n", log_path.display()));
        conf.push_str("log_level = notice\n");
        conf.push_str("daemonize = no\n");
        conf.push_str("process_control_timeout = 1s\n\n");

        let mut resolved = Vec::new();
        for p in &pools {
            let listen = match &p.listen {
                Listen::Unix(path) => {
                    let abs = if path.is_absolute() {
                        path.clone()
                    } else {
                        dir.join(path)
                    };
                    if abs.as_os_str().len() >= 108 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("unix socket path too long (>107 bytes): {}", abs.display()),
                        ));
                    }
                    let _ = std::fs::remove_file(&abs);
                    Listen::Unix(abs)
                }
                Listen::Tcp(0) => {
                    let l = TcpListener::bind("127.0.0.1:0")?;
                    Listen::Tcp(l.local_addr()?.port())
                }
                Listen::Tcp(port) => Listen::Tcp(*port),
            };
            conf.push_str(&p.render(&listen));
            conf.push('\n');
            resolved.push((p.name.clone(), listen));
        }
        std::fs::write(&conf_path, conf)?;
        let _ = std::fs::remove_file(&log_path);

        let mut cmd = Command::new(&bin);
        cmd.arg("--nodaemonize")
            .arg("--fpm-config")
            .arg(&conf_path)
            .arg("-R")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // PHP-FPM dies with its parent (why502 demo exits without running destructors).
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawning {}: {e}", bin.display())))?;

        let mut fpm = Fpm {
            dir,
            child: Some(child),
            pools: resolved,
            log_path,
            conf_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if fpm.pools.iter().all(|(_, l)| l.accepts()) {
                return Ok(fpm);
            }
            let exited = match fpm.child.as_mut() {
                Some(c) => c.try_wait()?.map(|s| s.to_string()),
                None => Some("gone".into()),
            };
            if exited.is_some() || Instant::now() >= deadline {
                let why = match exited {
                    Some(s) => format!("php-fpm exited early ({s})"),
                    None => "php-fpm pools did not accept connections within 10 s".to_string(),
                };
                let tail = fpm.log_tail(4000);
                fpm.stop();
                return Err(io::Error::other(format!(
                    "{why}; binary {}, config {}; log tail:\n{tail}",
                    bin.display(),
                    fpm.conf_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Resolved listen address of a pool (absolute unix path / real port).
    pub fn listen_of(&self, pool: &str) -> Option<&Listen> {
        self.pools.iter().find(|(n, _)| n == pool).map(|(_, l)| l)
    }

    /// PID of the master process (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The directory holding the config, log, pid file and relative sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of FPM's error log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// FPM's error log contents (e.g. to assert "exited on signal 9").
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Wait (bounded) until the log contains `needle`; returns whether it did.
    /// FPM logs a worker's death asynchronously (after SIGCHLD), so assert through this.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self, max: u64) -> String {
        let Ok(mut f) = std::fs::File::open(&self.log_path) else {
            return "(no log file)".into();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// SIGTERM the master, wait up to 5 s, then SIGKILL its whole process group.
    /// Idempotent; also called on Drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        if let Ok(None) = child.try_wait() {
            // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The master was started with process_group(0), so its pgid == its pid.
        // Kill any worker that outlived the master (no-op when none is left).
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
        for (_, l) in &self.pools {
            if let Listen::Unix(p) = l {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parse() {
        assert_eq!(fpm_version("php-fpm8.2"), Some((8, 2)));
        assert_eq!(fpm_version("php-fpm"), Some((0, 0)));
        assert_eq!(fpm_version("php-fpm8.10"), Some((8, 10)));
        assert_eq!(fpm_version("php-fpm.conf"), None);
        assert!(fpm_version("php-fpm8.10") > fpm_version("php-fpm8.2"));
    }
}
