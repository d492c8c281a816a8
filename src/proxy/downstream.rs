//! The client side of one request, as the handlers see it.
//!
//! Three servers implement it: Pingora's session (TLS, with or without
//! HTTP/2, and the listeners whose servers proxy to HTTP backends, which go
//! through Pingora's proxy machinery), and why502's own HTTP/1.1
//! ([`crate::h1`]) and h2c ([`crate::h2`]) servers, which serve the plain
//! listeners that only route to FastCGI, static files and `return`s.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};

/// See [`Downstream::take_upstream_timer`].
pub type UpstreamTimer = std::pin::Pin<Box<tokio::time::Sleep>>;

/// What the request handlers use of a client connection.
pub trait Downstream: Send {
    /// The request header as parsed.
    fn req_header(&self) -> &RequestHeader;
    /// The client's address (None for a unix-socket client).
    fn client_addr(&self) -> Option<SocketAddr>;
    /// The local address the connection came to.
    fn server_addr(&self) -> Option<SocketAddr>;
    /// The connection is TLS.
    fn is_tls(&self) -> bool;
    /// The request came over HTTP/2.
    fn is_http2(&self) -> bool;
    /// Response headers built without their names' case
    /// (`ResponseHeader::build_no_case`, or from `http` parts) still go out
    /// with the usual capitalisation (`ETag`, `Last-Modified`). Such a
    /// header is cheaper to build; one with names from configuration or an
    /// upstream must keep its case map.
    fn titles_header_names(&self) -> bool;
    /// The whole request body has been read (or there is none).
    fn is_body_done(&mut self) -> bool;
    /// The next piece of the request body; `None` at its end.
    fn read_request_body(
        &mut self,
    ) -> impl Future<Output = pingora_core::Result<Option<Bytes>>> + Send;
    /// Writes the response header (framing: Content-Length, else chunked on
    /// HTTP/1.1, else until close). `end`: no body follows.
    fn write_response_header(
        &mut self,
        h: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = pingora_core::Result<()>> + Send;
    /// Writes a piece of the body; `end` finishes the response (the
    /// chunked terminator).
    fn write_response_body(
        &mut self,
        data: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = pingora_core::Result<()>> + Send;
    /// Ends the response with the body in two pieces, sent one after the
    /// other. By default they are joined and written as one; the own
    /// HTTP/1 server writes them after the header without joining them
    /// (a failure page is a kept part and the request id's).
    fn write_response_body_last(
        &mut self,
        parts: [Bytes; 2],
    ) -> impl Future<Output = pingora_core::Result<()>> + Send {
        let data = match parts {
            [a, b] if b.is_empty() => a,
            [a, b] if a.is_empty() => b,
            [a, b] => {
                let mut joined = bytes::BytesMut::with_capacity(a.len() + b.len());
                joined.extend_from_slice(&a);
                joined.extend_from_slice(&b);
                joined.freeze()
            }
        };
        self.write_response_body((!data.is_empty()).then_some(data), true)
    }
    /// `None`: close the connection after this response.
    fn set_keepalive(&mut self, secs: Option<u64>);
    /// The response header, once written.
    fn response_written(&self) -> Option<&ResponseHeader>;
    /// Body bytes written to the client (without chunk framing).
    fn body_bytes_sent(&self) -> usize;
    /// Body bytes read from the client.
    fn body_bytes_read(&self) -> usize;
    /// The request header as received (HTTP/1; empty for HTTP/2).
    fn raw_request_header(&self) -> Bytes;
    /// A timer the connection keeps for the waits on an upstream's
    /// response, lent to one request at a time and given back with
    /// [`Downstream::put_upstream_timer`]. Moving a registered timer later
    /// only updates its deadline, where a new timer per wait is filed into
    /// tokio's timer wheel and taken out again. `None`: the request makes
    /// its own.
    fn take_upstream_timer(&mut self) -> Option<UpstreamTimer> {
        None
    }
    /// Gives back the timer from [`Downstream::take_upstream_timer`].
    fn put_upstream_timer(&mut self, _t: UpstreamTimer) {}
    /// The connection's serial number (nginx's `*N` in error-log lines and
    /// `$connection`), where the server numbers its connections.
    fn connection_number(&self) -> Option<u64> {
        None
    }
    /// The size of the response header as written, where the server writes
    /// headers that are not in [`Downstream::response_written`]'s map
    /// (`Date`, `Connection`).
    fn sent_header_len(&self) -> Option<usize> {
        None
    }
    /// nginx `keepalive_requests` of the request's server: when this
    /// request is the connection's `max`th (or later), the connection is
    /// closed after it (HTTP/2: GOAWAY). A no-op where the server does not
    /// count (HTTP/2 on Pingora's listeners).
    fn limit_requests(&mut self, _max: u64) {}
    /// nginx `keepalive_timeout` of the request's server: how long the
    /// connection waits for its next request after this one (HTTP/2: stays
    /// open without streams). Zero: closed after this request.
    fn set_idle_timeout(&mut self, _t: std::time::Duration) {}
    /// `$sent_http_connection` where `Connection` is not in the map.
    fn sent_connection(&self) -> Option<&'static str> {
        None
    }
    /// Header lines (`Name: value\r\n` each) the next response header is
    /// written with, after its map's: for headers why502 sets itself under
    /// their usual names (the diagnosis headers), which cost more put in
    /// the map (a name that is not a standard one is hashed byte by byte)
    /// than written out. Empty at each request's start. `None`: the
    /// session writes only its map.
    fn head_lines(&mut self) -> Option<&mut Vec<u8>> {
        None
    }
    /// The value of header `name` (any case) as written from
    /// [`Downstream::head_lines`], for `$sent_http_NAME`.
    fn sent_head_line(&self, _name: &str) -> Option<&[u8]> {
        None
    }
}

/// Sets header `name` (replacing any value) to `value`. A header without a
/// case map or a reason phrase of its own gets it in its `http` map
/// directly: `insert_header` turns the name into its title case and parses
/// that back, several times the cost of the insert.
pub fn set_header(h: &mut ResponseHeader, name: http::HeaderName, value: http::HeaderValue) {
    if h.has_case() || h.get_reason_phrase() != h.status.canonical_reason() {
        let _ = h.insert_header(name, value);
        return;
    }
    let mut parts = http::response::Parts::from(std::mem::replace(
        h,
        ResponseHeader::from(http::Response::new(()).into_parts().0),
    ));
    parts.headers.insert(name, value);
    *h = ResponseHeader::from(parts);
}

/// The request limit of Pingora's listeners: each connection's
/// `keepalive_reuses_remaining` counts down from it, which numbers its
/// requests for `keepalive_requests`.
pub const PINGORA_REQUEST_COUNT: u32 = u32::MAX;

/// A response header with headers whose names why502 sets itself (not
/// from configuration or an upstream). `titled`: built without a case map,
/// for a session that writes the usual capitalisation itself
/// ([`Downstream::titles_header_names`]) and headers that will not get
/// names from configuration: no name is parsed twice or stored twice.
pub fn response_header(
    titled: bool,
    status: http::StatusCode,
    headers: http::HeaderMap,
) -> ResponseHeader {
    if titled {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.headers = headers;
        return ResponseHeader::from(parts);
    }
    let mut h = match ResponseHeader::build(status, Some(headers.len())) {
        Ok(h) => h,
        Err(_) => ResponseHeader::from(http::Response::new(()).into_parts().0),
    };
    let mut last = None;
    for (name, value) in headers {
        // `None`: another value of the previous name
        if let Some(n) = name {
            last = Some(crate::h1::title(&n));
        }
        if let Some(n) = &last {
            let _ = h.append_header(n.clone(), value);
        }
    }
    h
}

fn inet(a: Option<&pingora_core::protocols::l4::socket::SocketAddr>) -> Option<SocketAddr> {
    a.and_then(|a| a.as_inet()).copied()
}

impl Downstream for pingora_proxy::Session {
    fn req_header(&self) -> &RequestHeader {
        self.as_downstream().req_header()
    }
    fn client_addr(&self) -> Option<SocketAddr> {
        inet(self.as_downstream().client_addr())
    }
    fn server_addr(&self) -> Option<SocketAddr> {
        inet(self.as_downstream().server_addr())
    }
    fn is_tls(&self) -> bool {
        self.digest().and_then(|d| d.ssl_digest.as_ref()).is_some()
    }
    fn is_http2(&self) -> bool {
        self.as_downstream().is_http2()
    }
    fn titles_header_names(&self) -> bool {
        // Pingora's HTTP/1 writer titles only a few names; HTTP/2 sends
        // every name in lower case anyway.
        self.as_downstream().is_http2()
    }
    fn is_body_done(&mut self) -> bool {
        self.as_downstream_mut().is_body_done()
    }
    fn read_request_body(
        &mut self,
    ) -> impl Future<Output = pingora_core::Result<Option<Bytes>>> + Send {
        self.as_downstream_mut().read_request_body()
    }
    fn write_response_header(
        &mut self,
        h: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = pingora_core::Result<()>> + Send {
        pingora_proxy::Session::write_response_header(self, h, end)
    }
    fn write_response_body(
        &mut self,
        data: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = pingora_core::Result<()>> + Send {
        pingora_proxy::Session::write_response_body(self, data, end)
    }
    fn set_keepalive(&mut self, secs: Option<u64>) {
        self.as_downstream_mut().set_keepalive(secs)
    }
    fn limit_requests(&mut self, max: u64) {
        // Pingora counts the reuses left down from the service's limit
        // (`server::run` sets it to `PINGORA_REQUEST_COUNT`).
        let Some(left) = self.as_downstream().get_keepalive_reuses_remaining() else {
            return;
        };
        let this = u64::from(PINGORA_REQUEST_COUNT - left) + 1;
        if this >= max {
            self.as_downstream_mut().set_keepalive(None);
        }
    }
    fn set_idle_timeout(&mut self, t: std::time::Duration) {
        // Pingora keeps HTTP/1 connections in whole seconds (0: forever).
        let ds = self.as_downstream_mut();
        if ds.get_keepalive().is_some() {
            ds.set_keepalive(if t.is_zero() {
                None
            } else {
                Some(t.as_secs() + u64::from(t.subsec_nanos() > 0))
            });
        }
    }
    fn response_written(&self) -> Option<&ResponseHeader> {
        self.as_downstream().response_written()
    }
    fn body_bytes_sent(&self) -> usize {
        self.as_downstream().body_bytes_sent()
    }
    fn body_bytes_read(&self) -> usize {
        self.as_downstream().body_bytes_read()
    }
    fn raw_request_header(&self) -> Bytes {
        if self.as_downstream().is_http2() {
            Bytes::new()
        } else {
            self.as_downstream().to_h1_raw()
        }
    }
}
