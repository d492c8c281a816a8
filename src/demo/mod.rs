//! `why502 demo`: the failure gallery. Starts a real PHP-FPM (a normal pool
//! and a one-worker pool kept saturated), a misbehaving FastCGI responder for
//! the framing faults PHP-FPM cannot produce, and why502 in front of them,
//! serving `src/demo/www/index.php`: a page whose links trigger each class of
//! failure for real.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Addr, Config, FastCgi, Location, Match, Return, Template, Upstream};
use crate::fake_fcgi::FakeFcgi;
use crate::fpm::{self, Fpm, PoolSpec};

/// The gallery's PHP files, embedded so the binary works from any directory.
const WWW: &[(&str, &str)] = &[
    ("index.php", include_str!("www/index.php")),
    ("_lib.php", include_str!("www/_lib.php")),
    ("hello.php", include_str!("www/hello.php")),
    ("info.php", include_str!("www/info.php")),
    ("echo.php", include_str!("www/echo.php")),
    ("upload.php", include_str!("www/upload.php")),
    ("big.php", include_str!("www/big.php")),
    ("sized.php", include_str!("www/sized.php")),
    ("headers.php", include_str!("www/headers.php")),
    ("status.php", include_str!("www/status.php")),
    ("location.php", include_str!("www/location.php")),
    ("memory.php", include_str!("www/memory.php")),
    ("timeout.php", include_str!("www/timeout.php")),
    ("fatal.php", include_str!("www/fatal.php")),
    ("sleep.php", include_str!("www/sleep.php")),
    ("slowbody.php", include_str!("www/slowbody.php")),
    ("kill.php", include_str!("www/kill.php")),
    ("warning.php", include_str!("www/warning.php")),
];

/// Writes the gallery's files into `www` (plus an upload directory with an image,
/// for the `/uploads/avatar.jpg/x.php` attack).
pub fn write_www(www: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(www.join("uploads"))?;
    for (name, text) in WWW {
        std::fs::write(www.join(name), text)?;
    }
    std::fs::write(
        www.join("uploads/avatar.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )?;
    std::fs::write(www.join("style.txt"), b"a static file\n")?;
    Ok(())
}

fn fcgi(addr: Addr) -> FastCgi {
    let mut fc = FastCgi::php(Arc::new(Upstream::single(addr)));
    fc.read_timeout = Duration::from_secs(5);
    fc
}

fn exact(path: &str, fc: FastCgi) -> Location {
    let mut l = Location::new(
        Match::Exact(path.into()),
        config::Origin {
            file: "<demo>".into(),
            line: 0,
        },
    );
    l.fastcgi = Some(Arc::new(fc));
    l
}

/// The ports and paths the gallery's config points at.
pub struct Upstreams {
    pub www: PathBuf,
    pub tiny: PathBuf,
    pub missing: PathBuf,
    pub stale: PathBuf,
    pub refused: String,
    pub blackhole: String,
    pub fake: String,
}

/// The gallery's configuration.
pub fn config(listen: &str, www: &Path, u: &Upstreams) -> Result<Config, String> {
    let addr = config::yaml::parse_listen_addr(listen)?;
    let origin = config::Origin {
        file: "<demo>".into(),
        line: 0,
    };
    let mut site = config::php_site_locations(fcgi(Addr::Unix(u.www.clone())), &origin);
    let mut fake = Location::new(Match::PrefixNoRegex("/fake/".into()), origin.clone());
    let mut fake_fc = fcgi(Addr::Tcp(u.fake.clone()));
    fake_fc.read_timeout = Duration::from_secs(3);
    fake_fc.send_timeout = Duration::from_secs(3);
    fake.fastcgi = Some(Arc::new(fake_fc));

    let mut timeout_fc = fcgi(Addr::Tcp(u.blackhole.clone()));
    timeout_fc.connect_timeout = Duration::from_secs(2);
    let mut permission = Location::new(
        Match::Exact("/connect/permission-denied".into()),
        origin.clone(),
    );
    permission.ret = Some(Return {
        code: 501,
        text: Some(Template::literal(
            "connect.permission_denied needs why502 to run as a user that may not open the socket;\n\
             the demo runs as root, and root may open any socket. The integration test\n\
             tests/it/connect.rs runs why502 as nobody to trigger it for real.\n",
        )),
    });
    let php = site.pop();
    let mut locations = site;
    locations.extend([
        exact(
            "/connect/socket-missing",
            fcgi(Addr::Unix(u.missing.clone())),
        ),
        exact("/connect/stale-socket", fcgi(Addr::Unix(u.stale.clone()))),
        exact("/connect/refused", fcgi(Addr::Tcp(u.refused.clone()))),
        exact("/connect/backlog-full", fcgi(Addr::Unix(u.tiny.clone()))),
        exact("/connect/timeout", timeout_fc),
        permission,
        fake,
    ]);
    // The .php regex goes last: nginx checks regexes in order, after prefixes.
    locations.extend(php);
    let mut cfg = Config::single_server("<demo>", addr, www.to_path_buf(), locations);
    cfg.servers[0].index = vec!["index.php".into()];
    cfg.servers[0].client_max_body_size = 64 << 20;
    cfg.servers[0].client_body_timeout = Duration::from_secs(30);
    cfg.threads = 2;
    Ok(cfg)
}

/// A TCP listener whose accept queue is full: further connects hang (SYNs
/// are dropped), so connecting to it times out. Returns the address.
fn blackhole() -> std::io::Result<(String, Vec<std::net::TcpStream>, socket2::Socket)> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    s.listen(0)?;
    let addr = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("no addr"))?;
    let mut held = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    Ok((addr.to_string(), held, s))
}

/// Keeps the one-worker pool busy with long requests so its backlog stays
/// full (uses fastcgi-client: an independent FastCGI client is fine here).
fn saturate(sock: PathBuf, www: PathBuf) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let script = www.join("sleep.php").to_string_lossy().into_owned();
            let mut tasks = Vec::new();
            for _ in 0..2 {
                let sock = sock.clone();
                let script = script.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..10_000 {
                        if let Ok(stream) = tokio::net::UnixStream::connect(&sock).await {
                            let client = fastcgi_client::Client::new_tokio(stream);
                            let params = fastcgi_client::Params::default()
                                .request_method("GET")
                                .script_filename(script.as_str())
                                .script_name("/sleep.php")
                                .query_string("s=600")
                                .request_uri("/sleep.php?s=600");
                            let _ = client
                                .execute_once(fastcgi_client::Request::new_tokio(
                                    params,
                                    tokio::io::empty(),
                                ))
                                .await;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
}

/// Runs the gallery until interrupted.
pub fn run(listen: &str, dir: Option<PathBuf>) -> Result<(), String> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("why502-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let www = dir.join("www");
    write_www(&www).map_err(|e| format!("writing the gallery to {}: {e}", www.display()))?;

    let mut main_pool = PoolSpec::new("www", fpm::Listen::Unix(dir.join("php8.2-fpm.sock")));
    main_pool.admin_values = vec![
        ("memory_limit".into(), "32M".into()),
        ("max_execution_time".into(), "2".into()),
    ];
    let mut tiny = PoolSpec::new("tiny", fpm::Listen::Unix(dir.join("tiny.sock")));
    tiny.max_children = 1;
    tiny.listen_backlog = 0;
    let fpm =
        Fpm::start(&dir, vec![main_pool, tiny]).map_err(|e| format!("starting PHP-FPM: {e}"))?;

    // A stale socket: bound, then closed, so the file stays with nobody listening.
    let stale = dir.join("stale.sock");
    let _ = std::fs::remove_file(&stale);
    drop(
        std::os::unix::net::UnixListener::bind(&stale)
            .map_err(|e| format!("{}: {e}", stale.display()))?,
    );
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.to_string()
    };
    let (blackhole, _held, _bh) = blackhole().map_err(|e| format!("blackhole listener: {e}"))?;

    let fake_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let fake: FakeFcgi = fake_rt
        .block_on(FakeFcgi::start_router_tcp())
        .map_err(|e| format!("fake FastCGI responder: {e}"))?;

    let u = Upstreams {
        www: fpm
            .listen_of("www")
            .map(listen_path)
            .ok_or("www pool has no unix socket")?,
        tiny: fpm
            .listen_of("tiny")
            .map(listen_path)
            .ok_or("tiny pool has no unix socket")?,
        missing: dir.join("php7.4-fpm.sock"),
        stale,
        refused,
        blackhole,
        fake: fake.addr(),
    };
    saturate(u.tiny.clone(), www.clone());
    let cfg = config(listen, &www, &u)?;
    eprintln!(
        "why502 demo: the failure gallery is at http://{listen}/  (PHP-FPM log: {}; Ctrl-C to stop)",
        fpm.log_path().display()
    );
    // `run` does not return; PHP-FPM dies with us (PR_SET_PDEATHSIG in fpm.rs).
    let _keep = (fpm, fake, fake_rt);
    crate::server::run(cfg)
}

fn listen_path(l: &fpm::Listen) -> PathBuf {
    match l {
        fpm::Listen::Unix(p) => p.clone(),
        fpm::Listen::Tcp(_) => PathBuf::new(),
    }
}
