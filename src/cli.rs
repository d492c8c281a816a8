//! The command line: `why502` (run), `why502 check`, `why502 demo`,
//! `why502 causes`. `main` is a thin wrapper around [`run`].

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::cause::Cause;
use crate::config::units::{parse_duration, parse_size};
use crate::config::{self, Addr, Config, FastCgi, Upstream};

#[derive(Parser, Debug)]
#[command(
    name = "why502",
    version,
    about = "A reverse proxy for PHP-FPM that tells you why every 502 happened"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub source: Source,
    #[command(flatten)]
    pub quick: Quick,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a configuration and exit (like `nginx -t`).
    Check {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        quick: Quick,
    },
    /// Start PHP-FPM and why502 serving the bundled failure gallery.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Working directory for the gallery's files and sockets (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the cause table (`--markdown` for docs/causes.md).
    Causes {
        #[arg(long)]
        markdown: bool,
    },
    /// Print what why502 understood of a configuration, as YAML
    /// (`why502 convert --nginx-conf site.conf`).
    Convert {
        #[command(flatten)]
        source: Source,
    },
}

/// Where the configuration comes from.
#[derive(Args, Debug, Default, Clone)]
pub struct Source {
    /// A why502 YAML configuration file.
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// An nginx configuration (nginx.conf or a single site file).
    #[arg(long = "nginx-conf", global = true, conflicts_with = "config")]
    pub nginx_conf: Option<PathBuf>,
}

/// The one-liner: a standard PHP site without a config file.
#[derive(Args, Debug, Default, Clone)]
pub struct Quick {
    /// Address to listen on (host:port).
    #[arg(long)]
    pub listen: Option<String>,
    /// PHP-FPM address: unix:/path or host:port.
    #[arg(long)]
    pub fastcgi: Option<String>,
    /// Document root.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Connect timeout (nginx style: 500ms, 2s, 1m). Default 60s.
    #[arg(long)]
    pub connect_timeout: Option<String>,
    /// Send timeout. Default 60s.
    #[arg(long)]
    pub send_timeout: Option<String>,
    /// Read timeout. Default 60s.
    #[arg(long)]
    pub read_timeout: Option<String>,
    /// Response header buffer (fastcgi_buffer_size). Default 4k.
    #[arg(long)]
    pub buffer_size: Option<String>,
    /// Keep FastCGI connections open between requests (fastcgi_keep_conn).
    #[arg(long)]
    pub keep_conn: bool,
    /// For PHP-FPM without keep-conn: end each FastCGI request with a
    /// half-close, so that PHP-FPM's workers do not wait for the close.
    /// Applies to every FastCGI location, from --config and --nginx-conf
    /// too; in YAML, `half_close: true` in a `fastcgi` block. Not for other
    /// FastCGI servers (docs/nginx-compat.md).
    #[arg(long)]
    pub fastcgi_half_close: bool,
    /// nginx-format error log file (default: stderr); the main level's:
    /// servers with their own error_log keep it.
    #[arg(long)]
    pub error_log: Option<PathBuf>,
    /// Structured JSON events file (default: stderr).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Access log file, why502's format: combined + cause + request id
    /// (default: off); the http level's: servers and locations with their
    /// own access_log keep it.
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Answer failures like nginx: no cause header, no Proxy-Status, nginx's
    /// plain error page (logs and events stay). For measuring what the
    /// diagnosis costs; in YAML, `diagnostics: {enabled: false}`.
    #[arg(long)]
    pub no_diagnostics: bool,
}

fn flag_err(flag: &str, e: String) -> String {
    format!("--{flag}: {e}")
}

/// The configuration the one-liner describes: static files from the root,
/// `.php` to PHP-FPM, `try_files $uri $uri/ /index.php?$args`.
pub fn quick_config(q: &Quick) -> Result<Config, String> {
    let listen = q.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let addr = config::yaml::parse_listen_addr(listen).map_err(|e| flag_err("listen", e))?;
    let fcgi = q
        .fastcgi
        .as_deref()
        .unwrap_or("unix:/run/php/php8.2-fpm.sock");
    let up = Addr::parse(fcgi).map_err(|e| flag_err("fastcgi", e))?;
    let root = q.root.clone().unwrap_or_else(|| PathBuf::from("."));
    let root =
        std::fs::canonicalize(&root).map_err(|e| format!("--root {}: {e}", root.display()))?;

    let mut fc = FastCgi::php(Arc::new(Upstream::single(up)));
    if let Some(t) = &q.connect_timeout {
        fc.connect_timeout = parse_duration(t).map_err(|e| flag_err("connect-timeout", e))?;
    }
    if let Some(t) = &q.send_timeout {
        fc.send_timeout = parse_duration(t).map_err(|e| flag_err("send-timeout", e))?;
    }
    if let Some(t) = &q.read_timeout {
        fc.read_timeout = parse_duration(t).map_err(|e| flag_err("read-timeout", e))?;
    }
    if let Some(b) = &q.buffer_size {
        let n = parse_size(b).map_err(|e| flag_err("buffer-size", e))?;
        fc.buffer_size = usize::try_from(n).unwrap_or(usize::MAX).max(64);
    }
    fc.keep_conn = q.keep_conn;
    let origin = config::Origin {
        file: "<command line>".into(),
        line: 0,
    };
    let locations = config::php_site_locations(fc, &origin);
    Ok(Config::single_server(
        "<command line>",
        addr,
        root,
        locations,
    ))
}

/// Loads the configuration named by the flags.
pub fn load(source: &Source, quick: &Quick) -> Result<Config, String> {
    let mut cfg = match (&source.config, &source.nginx_conf) {
        (Some(p), _) => config::yaml::load_file(p).map_err(|e| e.to_string())?,
        (None, Some(p)) => crate::nginx::convert::load_file(p).map_err(|e| e.to_string())?,
        (None, None) => quick_config(quick)?,
    };
    // Logging flags apply to every source.
    if let Some(p) = &quick.error_log {
        cfg.logging.error_log = Some(p.clone());
    }
    if let Some(p) = &quick.events {
        cfg.logging.events = Some(p.clone());
    }
    // --access-log is the http level's access log (why502's format):
    // servers and locations with their own access_log keep them.
    if let Some(p) = &quick.access_log {
        cfg.logging.access_log = vec![config::AccessLog {
            path: p.clone(),
            format: config::LogFormat::why502(),
            condition: None,
        }];
    }
    if let Some(t) = quick.threads {
        cfg.threads = t;
    }
    if quick.no_diagnostics {
        cfg.diagnostics.enabled = false;
    }
    if quick.fastcgi_half_close {
        for s in &mut cfg.servers {
            set_half_close(&mut s.locations);
        }
    }
    Ok(cfg)
}

/// `--fastcgi-half-close`: every FastCGI location, nested ones too.
fn set_half_close(locs: &mut [config::Location]) {
    for l in locs {
        if let Some(fc) = &mut l.fastcgi {
            Arc::make_mut(fc).half_close = true;
        }
        set_half_close(&mut l.locations);
    }
}

/// Prints the cause table as text or Markdown.
pub fn causes_table(markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        out.push_str(
            "| code | phase | status | Proxy-Status error | nginx logs | explanation | hint |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|\n");
    }
    for c in Cause::ALL {
        let i = c.info();
        let status = match i.status {
            0 => "app's own".to_string(),
            s => s.to_string(),
        };
        let ps = if i.proxy_status.is_empty() {
            "(received-status)"
        } else {
            i.proxy_status
        };
        if markdown {
            let esc = |s: &str| s.replace('|', "\\|");
            out.push_str(&format!(
                "| `{}` | {} | {} | `{}` | `{}` | {} | {} |\n",
                i.code,
                i.phase.as_str(),
                status,
                ps,
                esc(i.nginx),
                esc(i.explanation),
                esc(i.hint)
            ));
        } else {
            out.push_str(&format!(
                "{:32} {:8} {:10} {}\n",
                i.code,
                i.phase.as_str(),
                status,
                i.explanation
            ));
        }
    }
    out
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Some(Command::Causes { markdown }) => {
            print!("{}", causes_table(markdown));
            0
        }
        Some(Command::Check { source, quick }) => {
            let source = if source.config.is_some() || source.nginx_conf.is_some() {
                source
            } else {
                cli.source
            };
            match load(&source, &quick) {
                Ok(cfg) => {
                    for w in &cfg.warnings {
                        eprintln!("why502: warning: {w}");
                    }
                    println!("why502: the configuration {} is ok", cfg.source);
                    0
                }
                Err(e) => {
                    eprintln!("why502: {e}");
                    1
                }
            }
        }
        Some(Command::Convert { source }) => {
            let source = if source.config.is_some() || source.nginx_conf.is_some() {
                source
            } else {
                cli.source
            };
            if source.config.is_none() && source.nginx_conf.is_none() {
                eprintln!("why502 convert: give --nginx-conf FILE (or --config FILE)");
                return 2;
            }
            match load(&source, &Quick::default()) {
                Ok(cfg) => {
                    for w in &cfg.warnings {
                        eprintln!("why502: warning: {w}");
                    }
                    print!("{}", crate::nginx::emit::to_yaml(&cfg));
                    0
                }
                Err(e) => {
                    eprintln!("why502: {e}");
                    1
                }
            }
        }
        Some(Command::Demo { listen, dir }) => match crate::demo::run(&listen, dir) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("why502 demo: {e}");
                1
            }
        },
        None => match load(&cli.source, &cli.quick).and_then(crate::server::run) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("why502: {e}");
                1
            }
        },
    }
}
