//! The cause taxonomy: why502's public vocabulary for "why did this request fail".
//!
//! Every failure why502 reports maps to exactly one [`Cause`]. Each cause has a
//! stable dotted code (`phase.name`), the phase it happens in, the HTTP status
//! nginx would answer with, the RFC 9209 `Proxy-Status` error type, the wording
//! nginx uses in its error log for the same event, a one-line explanation and a
//! hint saying what to check. The table below is the single source of truth:
//! `docs/causes.md` is checked against it by a test, and every cause has an
//! integration test that triggers it for real.
//!
//! Codes are part of the public API: never rename or reuse one; add new ones.

use std::fmt;

/// Where in the request's life a failure happened (nginx's "while ..." phrase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Opening the connection to the upstream.
    Connect,
    /// The TLS handshake with an `https://` upstream (after the TCP connect).
    Tls,
    /// Writing the request (params, body) to the upstream.
    Send,
    /// Waiting for / reading the response header block.
    Header,
    /// Streaming the response body after the header was sent to the client.
    Body,
    /// Diagnosed from what the application said (PHP's stderr), on any status.
    App,
    /// The client side of the exchange.
    Client,
    /// why502 itself (configuration, internal errors).
    Proxy,
}

impl Phase {
    /// Stable lower-case name, used in logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Send => "send",
            Phase::Header => "header",
            Phase::Body => "body",
            Phase::App => "app",
            Phase::Client => "client",
            Phase::Proxy => "proxy",
        }
    }

    /// nginx's phrase for this phase in error-log lines.
    pub fn nginx_while(self) -> &'static str {
        match self {
            Phase::Connect => "while connecting to upstream",
            Phase::Tls => "while SSL handshaking to upstream",
            Phase::Send => "while sending request to upstream",
            Phase::Header | Phase::App => "while reading response header from upstream",
            Phase::Body => "while reading upstream",
            Phase::Client => "while reading client request body",
            Phase::Proxy => "while processing request",
        }
    }
}

/// One row of the cause table.
#[derive(Debug, Clone, Copy)]
pub struct CauseInfo {
    pub code: &'static str,
    pub phase: Phase,
    /// Status answered to the client when the failure happens before the
    /// response header was sent (nginx-compatible). `0` means the upstream's own
    /// status is kept (App causes) or the client is gone (499 is logged only).
    pub status: u16,
    /// RFC 9209 Proxy-Status error type; empty for App causes, whose response
    /// came from the upstream (reported as `received-status` instead).
    pub proxy_status: &'static str,
    /// nginx's error-log wording for the same event (without the "while ..." phrase).
    pub nginx: &'static str,
    pub explanation: &'static str,
    pub hint: &'static str,
}

macro_rules! causes {
    ($( $(#[$m:meta])* $variant:ident => {
        code: $code:literal, phase: $phase:ident, status: $status:literal, proxy_status: $ps:literal,
        nginx: $nginx:literal, explanation: $expl:literal, hint: $hint:literal $(,)?
    } ),* $(,)?) => {
        /// Every cause why502 can report. See the module docs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Cause { $( $(#[$m])* $variant ),* }

        impl Cause {
            /// All causes, in documentation order.
            pub const ALL: &'static [Cause] = &[ $( Cause::$variant ),* ];

            /// The table row for this cause.
            pub fn info(self) -> &'static CauseInfo {
                match self {
                    $( Cause::$variant => &CauseInfo {
                        code: $code, phase: Phase::$phase, status: $status, proxy_status: $ps,
                        nginx: $nginx, explanation: $expl, hint: $hint,
                    } ),*
                }
            }
        }
    };
}

causes! {
    // ---- connect ----------------------------------------------------------
    /// ENOENT on a unix socket path.
    ConnectSocketMissing => { code: "connect.socket_missing", phase: Connect, status: 502, proxy_status: "destination_not_found",
        nginx: "connect() to {upstream} failed (2: No such file or directory)",
        explanation: "The upstream's unix socket file does not exist: PHP-FPM is not running, or it listens on another path.",
        hint: "Check that PHP-FPM is running (systemctl status php*-fpm) and that its pool's `listen` path matches the configured socket; after a PHP upgrade the socket name changes (php7.4-fpm.sock -> php8.2-fpm.sock)." },
    /// EACCES on a unix socket.
    ConnectPermissionDenied => { code: "connect.permission_denied", phase: Connect, status: 502, proxy_status: "connection_refused",
        nginx: "connect() to {upstream} failed (13: Permission denied)",
        explanation: "why502 is not allowed to open the upstream's unix socket.",
        hint: "Set listen.owner / listen.group / listen.mode in the PHP-FPM pool so the user why502 runs as can write to the socket (and can traverse its directory)." },
    /// ECONNREFUSED on an existing unix socket path.
    ConnectSocketStale => { code: "connect.socket_stale", phase: Connect, status: 502, proxy_status: "connection_refused",
        nginx: "connect() to {upstream} failed (111: Connection refused)",
        explanation: "The socket file exists but nothing is listening on it: a stale socket left behind by a crashed or stopped PHP-FPM.",
        hint: "Restart PHP-FPM (it recreates the socket); check its log for why the master exited." },
    /// ECONNREFUSED on TCP.
    ConnectRefused => { code: "connect.refused", phase: Connect, status: 502, proxy_status: "connection_refused",
        nginx: "connect() failed (111: Connection refused)",
        explanation: "Nothing is listening on the upstream's TCP address.",
        hint: "Check that the upstream is running and listens on this host and port (ss -ltnp); PHP-FPM's pool `listen` may be a unix socket instead." },
    /// EAGAIN on a unix socket: the listen backlog is full.
    ConnectBacklogFull => { code: "connect.backlog_full", phase: Connect, status: 502, proxy_status: "connection_limit_reached",
        nginx: "connect() to {upstream} failed (11: Resource temporarily unavailable)",
        explanation: "The upstream's listen queue is full: every PHP-FPM worker is busy and the backlog cannot take more connections.",
        hint: "The pool is saturated: look for 'server reached pm.max_children' in the PHP-FPM log, raise pm.max_children (if memory allows) or listen.backlog, and find the slow requests (request_slowlog_timeout)." },
    /// The connect did not complete within connect_timeout.
    ConnectTimeout => { code: "connect.timeout", phase: Connect, status: 504, proxy_status: "connection_timeout",
        nginx: "upstream timed out (110: Connection timed out)",
        explanation: "The connection to the upstream was not established within the connect timeout.",
        hint: "The upstream host is unreachable or its accept queue is stuck; check the network path and the upstream's load, or raise connect_timeout." },
    /// Any other connect error (errno given in the details).
    ConnectFailed => { code: "connect.failed", phase: Connect, status: 502, proxy_status: "destination_unavailable",
        nginx: "connect() to {upstream} failed",
        explanation: "Connecting to the upstream failed for a reason not covered by a more specific cause (see details for the errno).",
        hint: "Read the errno in the details; check the upstream address in the configuration." },
    /// socket() failed for the upstream connection: EMFILE or ENFILE, most
    /// often. why502's own limit, not the upstream's: a 500, as nginx answers.
    ConnectSocketFailed => { code: "connect.socket_failed", phase: Connect, status: 500, proxy_status: "proxy_internal_error",
        nginx: "socket() failed (24: Too many open files)",
        explanation: "why502 could not create a socket to connect to the upstream, almost always because it has used up its open-files limit (24: Too many open files) or the system its own (23: Too many open files in system). Nothing reached the upstream, which is not marked as failed.",
        hint: "Raise why502's open-files limit (worker_rlimit_nofile in nginx.conf, max_open_files in YAML, or the hard limit it starts with: systemd LimitNOFILE=, ulimit -Hn), then compare ls /proc/$(pidof why502)/fd | wc -l with the number of open connections to find what holds descriptors." },
    /// The upstream's host name does not resolve (HTTP upstreams).
    ConnectDnsError => { code: "connect.dns_error", phase: Connect, status: 502, proxy_status: "dns_error",
        nginx: "{host} could not be resolved (3: Host not found)",
        explanation: "The upstream's host name could not be resolved to an address.",
        hint: "Check the host name in proxy_pass / the upstream's server entry (typo, a container or service name that this host cannot see) and the resolver (/etc/resolv.conf, /etc/hosts)." },
    /// EHOSTUNREACH / ENETUNREACH on TCP.
    ConnectUnreachable => { code: "connect.unreachable", phase: Connect, status: 502, proxy_status: "destination_ip_unroutable",
        nginx: "connect() failed (113: No route to host)",
        explanation: "There is no network route to the upstream's address (or a firewall rejects it with an ICMP unreachable).",
        hint: "Check the upstream's IP address, that the host is up, the routing table (ip route get ADDR) and firewalls between why502 and the upstream." },
    /// Every server of the upstream is marked down after failures.
    ConnectNoLiveUpstreams => { code: "connect.no_live_upstreams", phase: Connect, status: 502, proxy_status: "destination_unavailable",
        nginx: "no live upstreams",
        explanation: "Every server of the upstream failed recently (max_fails within fail_timeout) and is marked down; the details name each server's last failure.",
        hint: "Fix the servers' own failures named in the details; they are retried after fail_timeout." },
    // ---- TLS to the upstream (https:// backends) ---------------------------
    /// The TLS handshake failed (alert from the server, no common protocol or cipher).
    TlsHandshakeFailed => { code: "tls.handshake_failed", phase: Tls, status: 502, proxy_status: "tls_protocol_error",
        nginx: "SSL_do_handshake() failed (SSL: error:0A000410:SSL routines::sslv3 alert handshake failure)",
        explanation: "The TLS handshake with the upstream failed: the server aborted it (no common protocol version or cipher, or it requires a client certificate).",
        hint: "Compare the upstream's TLS settings (protocols, ciphers, client certificate requirement) with why502's; `openssl s_client -connect host:port` shows the server's side." },
    /// The certificate's notAfter is in the past.
    TlsCertificateExpired => { code: "tls.certificate_expired", phase: Tls, status: 502, proxy_status: "tls_certificate_error",
        nginx: "upstream SSL certificate verify error: (10:certificate has expired)",
        explanation: "The upstream's TLS certificate has expired.",
        hint: "Renew the upstream's certificate (and check that the renewed file is the one its server loads; reload it after renewal)." },
    /// Self-signed certificate or one issued by a CA that is not trusted.
    TlsCertificateUntrusted => { code: "tls.certificate_untrusted", phase: Tls, status: 502, proxy_status: "tls_certificate_error",
        nginx: "upstream SSL certificate verify error: (18:self-signed certificate)",
        explanation: "The upstream's certificate is self-signed or issued by a CA that why502 does not trust (or the server does not send its intermediate certificates).",
        hint: "Add the issuing CA to ssl_trusted_certificate (proxy_ssl_trusted_certificate), or make the upstream send its full chain." },
    /// The certificate does not name the host why502 expects.
    TlsCertificateNameMismatch => { code: "tls.certificate_name_mismatch", phase: Tls, status: 502, proxy_status: "tls_certificate_error",
        nginx: "upstream SSL certificate does not match \"{name}\"",
        explanation: "The upstream's certificate is valid but issued for another host name than the one why502 verifies (ssl_name, by default the proxy_pass host).",
        hint: "Set ssl_name (proxy_ssl_name) to a name the certificate covers, or reissue the certificate with this name in its subjectAltName." },
    /// Any other certificate verification error (not yet valid, bad signature, revoked...).
    TlsCertificateInvalid => { code: "tls.certificate_invalid", phase: Tls, status: 502, proxy_status: "tls_certificate_error",
        nginx: "upstream SSL certificate verify error: (9:certificate is not yet valid)",
        explanation: "The upstream's certificate failed verification for a reason other than expiry, trust or name (see details for OpenSSL's verify code).",
        hint: "Read the verify code in the details; `openssl s_client -connect host:port -verify_return_error` reproduces it. A 'not yet valid' certificate usually means a clock skew." },
    /// TLS was spoken to a port that answers in plain HTTP.
    TlsPlainHttpUpstream => { code: "tls.plain_http_upstream", phase: Tls, status: 502, proxy_status: "tls_protocol_error",
        nginx: "SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number)",
        explanation: "why502 started TLS (https://) but the upstream's port speaks plain HTTP: it answered the TLS ClientHello with an HTTP response.",
        hint: "Use http:// for this upstream, or point it at the backend's TLS port." },
    /// The TLS handshake did not complete within connect_timeout.
    TlsTimeout => { code: "tls.timeout", phase: Tls, status: 504, proxy_status: "connection_timeout",
        nginx: "upstream timed out (110: Connection timed out)",
        explanation: "The TCP connection was established but the TLS handshake did not complete within the connect timeout.",
        hint: "The port accepts connections but does not speak TLS (it waits for a plain request), or the upstream is overloaded; check the port and the upstream's load." },
    // ---- send -------------------------------------------------------------
    /// ECONNRESET while writing params or body.
    SendReset => { code: "send.reset", phase: Send, status: 502, proxy_status: "connection_terminated",
        nginx: "writev() failed (104: Connection reset by peer)",
        explanation: "The upstream reset the connection while why502 was still sending the request.",
        hint: "The worker died or refused the request mid-upload; check the upstream's log (PHP-FPM: 'exited on signal', post_max_size/upload limits)." },
    /// EPIPE while writing params or body.
    SendBrokenPipe => { code: "send.broken_pipe", phase: Send, status: 502, proxy_status: "connection_terminated",
        nginx: "writev() failed (32: Broken pipe)",
        explanation: "The upstream closed the connection while why502 was still sending the request.",
        hint: "The worker exited before reading the whole request (crash, pm.max_requests recycling, request_terminate_timeout); check the upstream's log." },
    /// The request could not be written within send_timeout.
    SendTimeout => { code: "send.timeout", phase: Send, status: 504, proxy_status: "connection_write_timeout",
        nginx: "upstream timed out (110: Connection timed out)",
        explanation: "The upstream stopped reading the request body for longer than the send timeout.",
        hint: "The worker is busy or stuck before reading its input; raise send_timeout for large uploads or find what blocks the script." },
    // ---- before the response header ---------------------------------------
    /// EOF before a single byte of response.
    HeaderClosedEmpty => { code: "header.closed_empty", phase: Header, status: 502, proxy_status: "connection_terminated",
        nginx: "upstream prematurely closed connection",
        explanation: "The upstream closed the connection without sending any response.",
        hint: "The worker process died (OOM killer, segfault, SIGKILL) or the upstream drops connections: check the PHP-FPM log for 'exited on signal' and dmesg for the OOM killer." },
    /// ECONNRESET before the header block was complete.
    HeaderReset => { code: "header.reset", phase: Header, status: 502, proxy_status: "connection_terminated",
        nginx: "recv() failed (104: Connection reset by peer)",
        explanation: "The upstream reset the connection before the response header was complete.",
        hint: "The worker was killed mid-request (SIGKILL, SIGSEGV, request_terminate_timeout): check the PHP-FPM log for 'exited on signal' or 'execution timed out'." },
    /// EOF in the middle of the header block.
    HeaderClosedPartial => { code: "header.closed_partial", phase: Header, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream prematurely closed connection",
        explanation: "The upstream closed the connection part-way through the response header.",
        hint: "The worker died while sending headers; check the upstream's log for a crash." },
    /// An empty STDOUT record before the header block ended.
    HeaderStdoutClosed => { code: "header.stdout_closed", phase: Header, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream prematurely closed FastCGI stdout",
        explanation: "The FastCGI upstream ended its output stream before the header block was complete.",
        hint: "The application produced no (or an incomplete) CGI header; check its error log." },
    /// A TLS record came back to a plain HTTP request.
    HeaderTlsUpstream => { code: "header.tls_upstream", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent no valid HTTP/1.0 header",
        explanation: "why502 sent plain HTTP (http://) but the upstream's port speaks TLS.",
        hint: "Use https:// for this upstream (proxy_pass https://...), or point it at the backend's plain HTTP port." },
    /// The response does not start with an `HTTP/1.x NNN` status line.
    HeaderInvalidStatusLine => { code: "header.invalid_status_line", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent no valid HTTP/1.0 header",
        explanation: "The upstream's response does not start with a valid HTTP status line (`HTTP/1.1 200 OK`): it is not an HTTP server, or it answered in HTTP/0.9 style without a header.",
        hint: "Check that the upstream's port belongs to an HTTP server (not Redis, SSH, FastCGI...); the first bytes are in the details." },
    /// Both Content-Length and Transfer-Encoding (request-smuggling vector).
    HeaderConflictingLength => { code: "header.conflicting_length", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time",
        explanation: "The upstream's response has both Content-Length and Transfer-Encoding: its length is ambiguous, so why502 refuses it (a response-splitting / smuggling vector).",
        hint: "Fix the application or the layer that adds the second header (a framework adding Content-Length to a streamed response, or a middleware chunking a response that already has a length)." },
    /// HTTP/2: RST_STREAM (or GOAWAY with an error) before the response header.
    HeaderStreamReset => { code: "header.stream_reset", phase: Header, status: 502, proxy_status: "connection_terminated",
        nginx: "upstream rejected request with error 2",
        explanation: "The HTTP/2 upstream reset the request's stream (RST_STREAM), or shut the connection down (GOAWAY), before sending the response header; the details name the HTTP/2 error code.",
        hint: "The backend refused or cancelled the request: look for it in the backend's log. INTERNAL_ERROR (2) usually means the handler failed; REFUSED_STREAM (7) or ENHANCE_YOUR_CALM (11) that it limits concurrent streams or is overloaded; a GOAWAY that it is shutting down or restarting." },
    /// HTTP/2: a response header block HTTP/2 forbids (Transfer-Encoding...), or broken framing.
    HeaderInvalidH2 => { code: "header.invalid_h2", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent invalid header",
        explanation: "The HTTP/2 upstream sent a response HTTP/2 forbids: a connection-specific header field (Transfer-Encoding, Connection, Keep-Alive, Upgrade, Proxy-Connection), TE other than `trailers`, misplaced pseudo-headers, or frames that break the protocol; why502 refused it.",
        hint: "The backend (or a middleware) copies HTTP/1 framing headers such as `Transfer-Encoding: chunked` or `Connection: keep-alive` into its HTTP/2 responses: remove them, or talk HTTP/1.1 to this backend (h2: false)." },
    /// HTTP/2 with prior knowledge (h2c) answered in HTTP/1.
    HeaderHttp1Upstream => { code: "header.http1_upstream", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent an HTTP/1 response to an HTTP/2 request",
        explanation: "why502 spoke HTTP/2 with prior knowledge (h2c: `h2: true` on an http:// backend) but the upstream answered in HTTP/1: it does not speak h2c on this port.",
        hint: "Set h2: false for this backend, or enable h2c on it (nginx: `listen PORT http2`; Go: h2c.NewHandler; Node.js: http2.createServer), or use https:// where HTTP/2 is negotiated by ALPN." },
    /// A request that is not safe to retry hit a keep-alive connection the upstream had closed.
    HeaderStaleKeepalive => { code: "header.stale_keepalive", phase: Header, status: 502, proxy_status: "connection_terminated",
        nginx: "upstream prematurely closed connection",
        explanation: "The request (not idempotent, e.g. POST) was sent on a reused keep-alive connection that the upstream closed without answering; it is not retried because the upstream may have processed it.",
        hint: "The upstream closes idle connections earlier than why502 reuses them: make its keep-alive timeout longer than why502's (keepalive_timeout in the upstream block), or lower why502's." },
    /// No header within read_timeout.
    HeaderTimeout => { code: "header.timeout", phase: Header, status: 504, proxy_status: "connection_read_timeout",
        nginx: "upstream timed out (110: Connection timed out)",
        explanation: "The upstream accepted the request but sent no response header within the read timeout.",
        hint: "The script is slow or stuck (database, external API, lock): check PHP-FPM's slow log (request_slowlog_timeout), or raise read_timeout together with max_execution_time." },
    /// Header block larger than buffer_size.
    HeaderTooBig => { code: "header.too_big", phase: Header, status: 502, proxy_status: "http_response_header_section_size",
        nginx: "upstream sent too big header",
        explanation: "The response header block is larger than the header buffer (buffer_size).",
        hint: "Raise buffer_size (fastcgi_buffer_size) or send fewer / smaller headers (large cookies, debug headers)." },
    /// A header line that is not `Name: value`, or that contains control bytes.
    HeaderInvalid => { code: "header.invalid", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent invalid header",
        explanation: "The upstream sent a header line that is not a valid `Name: value` pair.",
        hint: "Look at the header named in the details; something in the application emits a malformed header." },
    /// PHP output (a warning or notice) before the header block.
    HeaderOutputBeforeHeaders => { code: "header.output_before_headers", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent invalid header",
        explanation: "The upstream printed output (a PHP warning or notice) before its CGI headers.",
        hint: "Turn display_errors off in production (log_errors on instead) and fix the warning shown in the details." },
    /// `Status:` that does not start with a 3-digit code.
    HeaderInvalidStatus => { code: "header.invalid_status", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent invalid status",
        explanation: "The upstream's `Status:` header does not start with a three-digit status code.",
        hint: "Fix the code that sets the Status header (header('Status: ...') or http_response_code())." },
    // ---- FastCGI framing ---------------------------------------------------
    FramingBadVersion => { code: "framing.bad_version", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent unsupported FastCGI protocol version",
        explanation: "A FastCGI record had a version other than 1: the stream is corrupt.",
        hint: "Check that the upstream is a FastCGI server and that nothing else writes to its socket." },
    FramingUnknownRecordType => { code: "framing.unknown_record_type", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent invalid FastCGI record type",
        explanation: "The upstream sent a FastCGI record type a responder must not send.",
        hint: "The upstream's FastCGI implementation is broken or the stream is corrupt." },
    FramingBadRequestId => { code: "framing.bad_request_id", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent unexpected FastCGI request id",
        explanation: "The upstream answered with a request id that was never sent.",
        hint: "The upstream's FastCGI implementation is broken (or multiplexes requests why502 did not make)." },
    FramingTruncatedRecord => { code: "framing.truncated_record", phase: Header, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream prematurely closed connection",
        explanation: "The connection closed in the middle of a FastCGI record.",
        hint: "The worker died while writing; check the upstream's log for a crash." },
    FramingEndBeforeHeaders => { code: "framing.end_before_headers", phase: Header, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream sent unexpected FastCGI record: 3",
        explanation: "The upstream ended the request (END_REQUEST) before sending a complete header block.",
        hint: "The application exited without output; check its error log (and the stderr excerpt in the details)." },
    FramingCantMpxConn => { code: "framing.cant_mpx_conn", phase: Header, status: 502, proxy_status: "connection_limit_reached",
        nginx: "upstream sent unexpected FastCGI record: 3",
        explanation: "The upstream rejected the request with END_REQUEST status CANT_MPX_CONN (it does not multiplex connections).",
        hint: "Turn keep_conn off for this upstream, or use one request per connection." },
    FramingOverloaded => { code: "framing.overloaded", phase: Header, status: 502, proxy_status: "connection_limit_reached",
        nginx: "upstream sent unexpected FastCGI record: 3",
        explanation: "The upstream rejected the request with END_REQUEST status OVERLOADED.",
        hint: "The FastCGI application is out of capacity: add workers or shed load." },
    FramingUnknownRole => { code: "framing.unknown_role", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent unexpected FastCGI record: 3",
        explanation: "The upstream rejected the request with END_REQUEST status UNKNOWN_ROLE (it does not act as a FastCGI responder).",
        hint: "The upstream is an authorizer or filter, not a responder; point why502 at a responder (PHP-FPM)." },
    FramingNotFastcgiHttp => { code: "framing.not_fastcgi_http", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent unsupported FastCGI protocol version: 72",
        explanation: "The upstream answered with HTTP, not FastCGI: it is a web server.",
        hint: "Use an HTTP upstream (proxy_pass) for this address, or point the FastCGI upstream at PHP-FPM's listen address." },
    FramingNotFastcgiSsh => { code: "framing.not_fastcgi_ssh", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent unsupported FastCGI protocol version: 83",
        explanation: "The upstream answered with an SSH banner: the port belongs to an SSH server.",
        hint: "The FastCGI upstream's port is wrong; check PHP-FPM's `listen` setting." },
    FramingNotFastcgiTls => { code: "framing.not_fastcgi_tls", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent unsupported FastCGI protocol version: 21",
        explanation: "The upstream answered with TLS: the port belongs to a TLS server.",
        hint: "The FastCGI upstream's port is wrong (a TLS port, e.g. 443); check PHP-FPM's `listen` setting." },
    FramingNotFastcgi => { code: "framing.not_fastcgi", phase: Header, status: 502, proxy_status: "http_protocol_error",
        nginx: "upstream sent unsupported FastCGI protocol version",
        explanation: "The upstream's first bytes are not a FastCGI record: it speaks another protocol.",
        hint: "Check that the configured address is PHP-FPM's `listen` address." },
    // ---- after the header was sent ----------------------------------------
    BodyClosed => { code: "body.closed", phase: Body, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream prematurely closed connection",
        explanation: "The upstream closed the connection in the middle of the response body; the client's response was aborted.",
        hint: "The worker died while sending output (OOM killer, segfault, SIGKILL): check the PHP-FPM log and dmesg." },
    BodyReset => { code: "body.reset", phase: Body, status: 502, proxy_status: "connection_terminated",
        nginx: "readv() failed (104: Connection reset by peer)",
        explanation: "The upstream reset the connection in the middle of the response body; the client's response was aborted.",
        hint: "The worker was killed mid-response; check the PHP-FPM log for 'exited on signal' or 'execution timed out'." },
    /// HTTP/2: RST_STREAM (or GOAWAY with an error) in the middle of the body.
    BodyStreamReset => { code: "body.stream_reset", phase: Body, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream rejected request with error 2",
        explanation: "The HTTP/2 upstream reset the response's stream (RST_STREAM), or shut the connection down (GOAWAY), in the middle of the body; the client's response was aborted.",
        hint: "The handler failed while streaming (an exception after the first bytes, a timeout inside the backend, a cancelled call upstream of it): look for the request in the backend's log; the HTTP/2 error code is in the details." },
    BodyTimeout => { code: "body.timeout", phase: Body, status: 504, proxy_status: "connection_read_timeout",
        nginx: "upstream timed out (110: Connection timed out)",
        explanation: "The upstream stopped sending the response body for longer than the read timeout; the client's response was aborted.",
        hint: "The script stalls while streaming (a slow query between flushes); raise read_timeout or find the stall." },
    BodyNoEndRequest => { code: "body.no_end_request", phase: Body, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream prematurely closed connection",
        explanation: "The FastCGI upstream closed the connection without END_REQUEST: the body may be truncated, so the client's response was aborted.",
        hint: "The worker died after sending part of the output; check the PHP-FPM log for 'exited on signal'." },
    BodyTooShort => { code: "body.too_short", phase: Body, status: 502, proxy_status: "http_response_incomplete",
        nginx: "upstream prematurely closed FastCGI request",
        explanation: "The response ended before the length its Content-Length promised; the client's response was aborted.",
        hint: "The application sends a wrong Content-Length (or output buffering / compression changed the body after it was computed)." },
    BodyTooLong => { code: "body.too_long", phase: Body, status: 502, proxy_status: "http_response_body_size",
        nginx: "upstream sent more data than specified in \"Content-Length\" header",
        explanation: "The response body is longer than its Content-Length; the extra bytes were dropped and the connection closed.",
        hint: "The application sends a wrong Content-Length (output after it was computed, or a compression layer)." },
    // ---- from PHP's stderr -------------------------------------------------
    AppMemoryExhausted => { code: "app.memory_exhausted", phase: App, status: 0, proxy_status: "",
        nginx: "FastCGI sent in stderr: \"PHP message: PHP Fatal error:  Allowed memory size of N bytes exhausted\"",
        explanation: "The PHP script hit memory_limit and was stopped.",
        hint: "Raise memory_limit for this script or reduce its memory use (large arrays, unbounded queries); the file and line are in the details." },
    AppMaxExecutionTime => { code: "app.max_execution_time", phase: App, status: 0, proxy_status: "",
        nginx: "FastCGI sent in stderr: \"PHP message: PHP Fatal error:  Maximum execution time of N seconds exceeded\"",
        explanation: "The PHP script ran longer than max_execution_time and was stopped.",
        hint: "Find what is slow at the file and line in the details, or raise max_execution_time (and read_timeout with it)." },
    AppFatalError => { code: "app.fatal_error", phase: App, status: 0, proxy_status: "",
        nginx: "FastCGI sent in stderr: \"PHP message: PHP Fatal error:  Uncaught Error ...\"",
        explanation: "The PHP script stopped with a fatal error (uncaught exception, parse error, call to undefined function...).",
        hint: "Fix the error at the file and line in the details." },
    AppScriptNotFound => { code: "app.script_not_found", phase: App, status: 0, proxy_status: "",
        nginx: "FastCGI sent in stderr: \"Primary script unknown\"",
        explanation: "PHP-FPM could not find the script named by SCRIPT_FILENAME.",
        hint: "Check root and SCRIPT_FILENAME ($document_root$fastcgi_script_name): the file must exist where PHP-FPM runs (chroot, container paths)." },
    AppAccessDenied => { code: "app.access_denied", phase: App, status: 0, proxy_status: "",
        nginx: "FastCGI sent in stderr: \"Access to the script '...' has been denied (see security.limit_extensions)\"",
        explanation: "PHP-FPM refused to run the script because its extension is not in security.limit_extensions.",
        hint: "A non-.php path was sent to PHP (e.g. /uploads/x.jpg/y.php): add `try_files $fastcgi_script_name =404` to the PHP location; don't widen limit_extensions." },
    // ---- client side -------------------------------------------------------
    ClientClosed => { code: "client.closed", phase: Client, status: 499, proxy_status: "proxy_internal_response",
        nginx: "client prematurely closed connection",
        explanation: "The client closed the connection before the response was complete.",
        hint: "Usually the user navigated away or a client timeout fired; compare the request's duration with the client's timeout." },
    ClientBodyTimeout => { code: "client.body_timeout", phase: Client, status: 408, proxy_status: "proxy_internal_response",
        nginx: "client timed out (110: Connection timed out)",
        explanation: "The client stopped sending the request body for longer than the client body timeout.",
        hint: "A slow or stalled client; raise client_body_timeout if uploads come over slow links." },
    ClientBodyTooLarge => { code: "client.body_too_large", phase: Client, status: 413, proxy_status: "proxy_internal_response",
        nginx: "client intended to send too large body",
        explanation: "The request body is larger than client_max_body_size.",
        hint: "Raise client_max_body_size (and PHP's post_max_size / upload_max_filesize with it) if such uploads are expected." },
    // ---- why502 itself -----------------------------------------------------
    ProxyInternal => { code: "proxy.internal_error", phase: Proxy, status: 500, proxy_status: "proxy_internal_error",
        nginx: "internal error",
        explanation: "why502 failed internally while handling the request.",
        hint: "This is a bug in why502; please report it with the request id and the error log line." },
}

impl Cause {
    /// The stable code, e.g. `connect.socket_missing`.
    pub fn code(self) -> &'static str {
        self.info().code
    }

    pub fn phase(self) -> Phase {
        self.info().phase
    }

    /// Looks a cause up by its code.
    pub fn from_code(code: &str) -> Option<Cause> {
        Cause::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// Status answered to the client for this cause when nothing was sent yet;
    /// `upstream_status` is used for App causes (the app's own status is kept).
    pub fn status(self, upstream_status: Option<u16>) -> u16 {
        match self.info().status {
            0 => upstream_status.unwrap_or(502),
            s => s,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for c in Cause::ALL {
            let code = c.code();
            assert!(seen.insert(code), "duplicate code {code}");
            let (phase, name) = code.split_once('.').expect("code has a dot");
            // Lower case, `_`, and digits after the first letter (`invalid_h2`).
            assert!(
                name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{code}"
            );
            assert!([
                "connect", "tls", "send", "header", "framing", "body", "app", "client", "proxy"
            ]
            .contains(&phase));
            assert_eq!(Cause::from_code(code), Some(*c));
        }
    }

    #[test]
    fn statuses_are_nginx_compatible() {
        for c in Cause::ALL {
            let i = c.info();
            let timeout = c.code().ends_with(".timeout");
            match i.phase {
                Phase::App => assert_eq!(i.status, 0, "{}", i.code),
                Phase::Client | Phase::Proxy => {}
                _ if timeout => assert_eq!(i.status, 504, "{}", i.code),
                // nginx finalizes a failed socket() with a 500: the
                // failure is its own, not the upstream's.
                _ if *c == Cause::ConnectSocketFailed => assert_eq!(i.status, 500),
                _ => assert_eq!(i.status, 502, "{}", i.code),
            }
        }
    }
}
