//! nginx variables for one request (`$uri`, `$document_root`, `$http_host`...).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use bytes::BytesMut;

use crate::config::template::{Var, Vars};
use crate::config::{FastCgi, Server};

use super::downstream::Downstream;
use super::{ReqCtx, Runtime};

/// The version reported as `$nginx_version` (SERVER_SOFTWARE=nginx/$nginx_version):
/// Debian 12's nginx, so applications that parse it see a plausible value.
pub const NGINX_VERSION: &str = "1.22.1";

pub struct ReqVars<'a> {
    pub req: &'a pingora_http::RequestHeader,
    pub uri: &'a str,
    pub args: Option<&'a str>,
    pub root: &'a Path,
    pub captures: &'a [Option<String>],
    pub script_name: Cow<'a, str>,
    pub path_info: String,
    pub server_name: &'a str,
    pub hostname: &'a str,
    pub request_id: &'a str,
    pub client: Option<std::net::SocketAddr>,
    pub local: Option<std::net::SocketAddr>,
    pub https: bool,
    /// `set $name` values.
    pub user: &'a HashMap<String, String>,
    /// `$request_method` (GET while serving an `error_page`, like nginx).
    pub method: &'a str,
    /// The length of a chunked request body read whole.
    pub body_len: Option<u64>,
    /// See [`ReqCtx::carried`].
    pub carried: bool,
}

impl<'a> ReqVars<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new<S: Downstream>(
        rt: &'a Runtime,
        session: &'a S,
        ctx: &'a ReqCtx,
        server: &'a Server,
        uri: &'a str,
        args: Option<&'a str>,
        root: &'a Path,
        captures: &'a [Option<String>],
        fc: Option<&FastCgi>,
    ) -> ReqVars<'a> {
        let mut script_name = Cow::Borrowed(uri);
        let mut path_info = String::new();
        if let Some(fc) = fc {
            if let Some(re) = &fc.split_path_info {
                if let Some(c) = re.captures(uri) {
                    script_name =
                        Cow::Owned(c.get(1).map(|m| m.as_str().to_string()).unwrap_or_default());
                    path_info = c.get(2).map(|m| m.as_str().to_string()).unwrap_or_default();
                }
            }
            if script_name.ends_with('/') {
                if let Some(i) = &fc.index {
                    script_name.to_mut().push_str(i);
                }
            }
        }
        let https = session.is_tls();
        ReqVars {
            req: session.req_header(),
            uri,
            args,
            root,
            captures,
            script_name,
            path_info,
            server_name: server.names.first().map(String::as_str).unwrap_or(""),
            hostname: &rt.hostname,
            request_id: &ctx.summary.request_id,
            client: session.client_addr(),
            local: session.server_addr(),
            https,
            user: &ctx.user_vars,
            method: if ctx.as_get && session.req_header().method != http::Method::HEAD {
                "GET"
            } else {
                session.req_header().method.as_str()
            },
            body_len: ctx.body_len,
            carried: ctx.carried,
        }
    }

    pub fn header(&self, name: impl http::header::AsHeaderName) -> Option<&str> {
        self.req.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `$host`: Host header without port, lower-case; else the server name.
    pub fn host(&self) -> Cow<'_, str> {
        match self
            .header(http::header::HOST)
            .or_else(|| self.req.uri.host())
        {
            Some(h) => {
                let bare = host_part(h);
                if bare.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(bare.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(bare)
                }
            }
            None => Cow::Borrowed(self.server_name),
        }
    }
}

/// A Host value without its port, lower-case (`$host` when there is one).
pub fn host_without_port(h: &str) -> String {
    host_part(h).to_ascii_lowercase()
}

/// A Host value without its port.
fn host_part(h: &str) -> &str {
    if h.starts_with('[') {
        h.split_once(']')
            .map(|(a, _)| &h[..a.len() + 1])
            .unwrap_or(h)
    } else {
        h.split(':').next().unwrap_or(h)
    }
}

/// An IP address as text, without `core::fmt` for IPv4 (the `Display` impl
/// pads and aligns and showed up in profiles: two addresses per request).
pub fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let (buf, n) = v4_text(v4);
            // Digits and dots only.
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
        v6 => v6.to_string(),
    }
}

/// Appends an IP address as text, as bytes (a FastCGI param).
fn put_ip(out: &mut BytesMut, ip: std::net::IpAddr) {
    match ip {
        // The digits as bytes, without checking them as UTF-8 first.
        std::net::IpAddr::V4(v4) => {
            let (buf, n) = v4_text(v4);
            out.extend_from_slice(&buf[..n]);
        }
        v6 => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// An IPv4 address as text in a stack buffer (the first `n` bytes): pushing
/// each octet and dot was a dozen small copies per request.
fn v4_text(v4: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    (buf, n)
}

/// A port (or any u16) as text.
pub fn u16_text(n: u16) -> String {
    itoa::Buffer::new().format(n).to_owned()
}

fn arg_value<'s>(args: &'s str, name: &str) -> Option<&'s str> {
    args.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

impl Vars for ReqVars<'_> {
    fn var(&self, v: &Var) -> Cow<'_, str> {
        use Var::*;
        match v {
            Uri | DocumentUri => Cow::Borrowed(self.uri),
            RequestUri if !self.req.raw_path_is_utf8() => {
                Cow::Owned(super::rawtext::from_bytes(self.req.raw_path().to_vec()).0)
            }
            RequestUri => Cow::Borrowed(
                self.req
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
            ),
            Args | QueryString => Cow::Borrowed(self.args.unwrap_or("")),
            IsArgs => Cow::Borrowed(if self.args.is_some_and(|a| !a.is_empty()) {
                "?"
            } else {
                ""
            }),
            // `to_str` first: `to_string_lossy` walks the path in chunks.
            DocumentRoot => match self.root.to_str() {
                Some(r) => Cow::Borrowed(r),
                None => self.root.to_string_lossy(),
            },
            RealpathRoot => Cow::Owned(
                std::fs::canonicalize(self.root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| self.root.to_string_lossy().into_owned()),
            ),
            FastcgiScriptName => Cow::Borrowed(&self.script_name),
            FastcgiPathInfo => Cow::Borrowed(&self.path_info),
            Host => self.host(),
            Hostname => Cow::Borrowed(self.hostname),
            RemoteAddr => Cow::Owned(self.client.map(|a| ip_text(a.ip())).unwrap_or_default()),
            RemotePort => Cow::Owned(self.client.map(|a| u16_text(a.port())).unwrap_or_default()),
            RemoteUser => Cow::Borrowed(""),
            ServerAddr => Cow::Owned(self.local.map(|a| ip_text(a.ip())).unwrap_or_default()),
            ServerPort => Cow::Owned(self.local.map(|a| u16_text(a.port())).unwrap_or_default()),
            ServerName => Cow::Borrowed(self.server_name),
            ServerProtocol => Cow::Borrowed(match self.req.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            }),
            Scheme => Cow::Borrowed(if self.https { "https" } else { "http" }),
            Https => Cow::Borrowed(if self.https { "on" } else { "" }),
            RequestMethod => Cow::Borrowed(self.method),
            ContentType => Cow::Borrowed(self.header(http::header::CONTENT_TYPE).unwrap_or("")),
            ContentLength => match (self.header(http::header::CONTENT_LENGTH), self.body_len) {
                (Some(v), _) => Cow::Borrowed(v),
                (None, Some(n)) => Cow::Owned(n.to_string()),
                (None, None) => Cow::Borrowed(""),
            },
            RequestId => Cow::Borrowed(self.request_id),
            NginxVersion => Cow::Borrowed(NGINX_VERSION),
            Http(name) => {
                let h = name.replace('_', "-");
                let mut it = self
                    .req
                    .headers
                    .get_all(h.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                match (it.next(), it.next()) {
                    (None, _) => Cow::Borrowed(""),
                    (Some(a), None) => Cow::Borrowed(a),
                    (Some(a), Some(b)) => {
                        let sep = if h == "cookie" { "; " } else { ", " };
                        let mut s = format!("{a}{sep}{b}");
                        for v in it {
                            s.push_str(sep);
                            s.push_str(v);
                        }
                        Cow::Owned(s)
                    }
                }
            }
            Arg(name) => Cow::Borrowed(self.args.and_then(|a| arg_value(a, name)).unwrap_or("")),
            Cookie(name) => Cow::Owned(
                self.req
                    .headers
                    .get_all("cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == name).then(|| v.to_string())
                    })
                    .unwrap_or_default(),
            ),
            Capture(n) => Cow::Borrowed(
                self.captures
                    .get(*n)
                    .and_then(|c| c.as_deref())
                    .unwrap_or(""),
            ),
            User(name) => Cow::Borrowed(self.user.get(name).map(String::as_str).unwrap_or("")),
        }
    }

    fn carried(&self) -> bool {
        self.carried
    }

    fn append(&self, v: &Var, out: &mut BytesMut) {
        use Var::*;
        let port = |out: &mut BytesMut, n: u16| {
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
        };
        match v {
            RemoteAddr => self.client.iter().for_each(|a| put_ip(out, a.ip())),
            RemotePort => self.client.iter().for_each(|a| port(out, a.port())),
            ServerAddr => self.local.iter().for_each(|a| put_ip(out, a.ip())),
            ServerPort => self.local.iter().for_each(|a| port(out, a.port())),
            v => out.extend_from_slice(self.var(v).as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_and_port_text_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("test address");
            assert_eq!(ip_text(ip), ip.to_string());
            let mut b = BytesMut::new();
            put_ip(&mut b, ip);
            assert_eq!(b, ip.to_string().as_bytes());
        }
        // Every octet value (one, two and three digits) in every place.
        for o in 0..=255u8 {
            for place in 0..4 {
                let mut octets = [1, 22, 133, 0];
                octets[place] = o;
                let ip = std::net::IpAddr::from(octets);
                assert_eq!(ip_text(ip), ip.to_string());
                let mut b = BytesMut::from(&b"x"[..]);
                put_ip(&mut b, ip);
                assert_eq!(b, format!("x{ip}").as_bytes());
            }
        }
        for n in [0u16, 7, 10, 99, 100, 8080, 65535] {
            assert_eq!(u16_text(n), n.to_string());
        }
    }
}
