//! why502: a reverse proxy for PHP-FPM (FastCGI) and HTTP backends that names
//! the precise cause of every failed request.
//!
//! Where things live:
//! - [`fastcgi`]: the FastCGI codec (records, params, CGI headers), no I/O.
//! - [`cause`]: the cause taxonomy, the product's public vocabulary.
//! - [`config`]: the internal configuration model and its YAML front end;
//!   [`nginx`] is the nginx.conf front end into the same model.
//! - [`upstream`]: connecting to upstreams, pools, server selection.
//! - [`proxy`]: the Pingora wiring: routing (nginx's rules), static files, the
//!   FastCGI gateway (`proxy::fastcgi`) and HTTP backends (`proxy::http_proxy`).
//! - [`report`]: cause header, Proxy-Status, error page, logs;
//!   [`accesslog`]: `log_format` / `access_log` as nginx writes them;
//!   [`stderr`]: diagnosis from PHP's stderr.
//! - [`cli`], [`server`]: the command line and the Pingora server; [`h1`]:
//!   why502's own HTTP/1.1 server for the plain listeners, [`h2`] its
//!   HTTP/2 (h2c) side;
//!   [`demo`] the failure gallery; [`fpm`] and [`fake_fcgi`] start a real
//!   PHP-FPM and a misbehaving FastCGI responder (demo and tests).

pub mod accesslog;
pub mod cause;
pub mod cli;
pub mod config;
pub mod demo;
pub mod events;
pub mod fake_fcgi;
pub mod fastcgi;
pub mod fpm;
pub mod h1;
pub mod h2;
pub mod nginx;
pub mod proxy;
pub mod report;
pub mod server;
pub mod stderr;
pub mod upstream;
