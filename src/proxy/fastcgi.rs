//! The FastCGI gateway: sends one request to PHP-FPM (or any FastCGI
//! responder) and streams the response to the client, diagnosing every way
//! the exchange can fail. The wire format is [`crate::fastcgi`]; this file is
//! the I/O, the timeouts and the mapping of each failure onto a [`Cause`].

use std::borrow::Cow;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cause::{Cause, Phase};
use crate::config::template::Vars;
use crate::config::{FastCgi, Server};
use crate::fastcgi::cgi::{CgiError, CgiHead, CgiHeaderParser};
use crate::fastcgi::decoder::{Frame, FramingError, PeerGuess, ResponseDecoder};
use crate::fastcgi::params::{self, encode_pair};
use crate::fastcgi::record::{self, ProtocolStatus};
use crate::report::{self, Failure};
use crate::stderr::{self, StderrDiagnosis};
use crate::upstream::{self, Conn, Dialed, Pick};

use super::downstream::{self, Downstream, UpstreamTimer};
use super::{Abort, ReqCtx, Why502};

/// nginx always uses request id 1.
const REQUEST_ID: u16 = 1;
/// Bytes of stderr kept for the report.
const STDERR_KEEP: usize = 2048;
/// First capacity of the buffer for BEGIN_REQUEST and PARAMS: nginx's
/// default params and a browser's headers fit.
const PRELUDE_CAPACITY: usize = 2048;
/// Read buffer growth step.
const READ_CHUNK: usize = 32 * 1024;

/// Appends the params for a request to `p`: configured params in order, then
/// the request headers as `HTTP_*` (nginx's `fastcgi_pass_request_headers`).
/// Every value is written once, in place (see
/// [`params::start_pair`](crate::fastcgi::params::start_pair)).
pub fn build_params(fc: &FastCgi, vars: &dyn Vars, req: &RequestHeader, p: &mut BytesMut) {
    // A path or arguments that are not UTF-8 go to PHP as their bytes.
    let carried = vars.carried();
    for param in &fc.params {
        let mark = params::start_pair(p, &param.head);
        param.value.eval_into(vars, p);
        let len = params::value_len(p, mark);
        if param.if_not_empty && len == 0 {
            params::cancel_pair(p, mark);
            continue;
        }
        if carried {
            let at = p.len() - len;
            if let Cow::Owned(b) = super::rawtext::bytes_of(&p[at..]) {
                p.truncate(at);
                p.extend_from_slice(&b);
            }
        }
        params::finish_pair(p, mark);
    }
    if !fc.pass_request_headers {
        return;
    }
    let mut name = Vec::with_capacity(64);
    let mut joined = Vec::new();
    // Only configured `HTTP_*` params can suppress a header (usually none).
    let any_configured = fc.params.iter().any(|p| p.name.starts_with("HTTP_"));
    // A name's values come one after the other: joined, as nginx does.
    let mut headers = req.headers.iter().peekable();
    while let Some((key, first)) = headers.next() {
        let k = key.as_str();
        let mut value = first.as_bytes();
        if headers.peek().is_some_and(|(next, _)| *next == key) {
            let sep: &[u8] = if k == "cookie" { b"; " } else { b", " };
            joined.clear();
            joined.extend_from_slice(value);
            while let Some((_, v)) = headers.next_if(|(next, _)| *next == key) {
                joined.extend_from_slice(sep);
                joined.extend_from_slice(v.as_bytes());
            }
            value = &joined;
        }
        // underscores_in_headers off: names outside [A-Za-z0-9-] are dropped.
        if !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            continue;
        }
        name.clear();
        name.extend_from_slice(b"HTTP_");
        name.extend(k.bytes().map(|b| {
            if b == b'-' {
                b'_'
            } else {
                b.to_ascii_uppercase()
            }
        }));
        // httpoxy: never pass a client's Proxy header as HTTP_PROXY.
        if &name[..] == b"HTTP_PROXY" {
            continue;
        }
        // A configured param of the same name suppresses the header.
        if any_configured && fc.params.iter().any(|p| p.name.as_bytes() == &name[..]) {
            continue;
        }
        encode_pair(p, &name, value);
    }
}

/// How one attempt against one server ended.
enum Attempt {
    /// Response complete; `true` if the connection may be reused.
    Done(bool),
    /// Failed before anything reached the client.
    Failed { f: Failure, retryable: bool },
    /// A reused connection turned out to be closed before anything happened.
    StaleReused,
    /// Already handled (response aborted or client gone).
    Aborted,
}

/// The request's first records: BEGIN_REQUEST, the params, and the empty
/// stdin that ends a request without a body.
fn make_prelude<S>(
    build: impl FnOnce(&S, &ReqCtx, &mut BytesMut),
    session: &S,
    ctx: &ReqCtx,
    keep_conn: bool,
    has_body: bool,
) -> Bytes {
    let mut p = BytesMut::with_capacity(PRELUDE_CAPACITY);
    record::encode_begin_request(&mut p, REQUEST_ID, record::RESPONDER, keep_conn);
    let at = record::start_params(&mut p);
    build(session, ctx, &mut p);
    record::finish_params(&mut p, REQUEST_ID, at);
    if !has_body {
        record::encode_stdin_end(&mut p, REQUEST_ID);
    }
    p.freeze()
}

/// Serves a request through FastCGI.
pub async fn serve<S: Downstream>(
    p: &Why502,
    session: &mut S,
    ctx: &mut ReqCtx,
    server: &Server,
    fc: &FastCgi,
    params: impl FnOnce(&S, &ReqCtx, &mut BytesMut),
    buffered: Option<Vec<Bytes>>,
) -> Result<(), Abort> {
    // The connection's timer, if it lends one, goes back on every return.
    let mut timer = session.take_upstream_timer();
    // A labeled block, not an awaited `async` block: that one was made on
    // the stack and copied into this future (3.5 KiB per request).
    let r = 'serve: {
        let Some(up) = p.rt.upstream_state(&fc.upstream).cloned() else {
            let f = Failure::new(
                Cause::ProxyInternal,
                "upstream state missing",
                "upstream state missing",
            );
            break 'serve p.respond_failure(session, ctx, f).await;
        };
        let has_body = buffered.is_some() || !session.is_body_done();
        // The params are built once (below: before or after the connect).
        // They read nothing that the attempts change.
        let mut params = Some(params);
        let mut prelude = Bytes::new();
        let idempotent = matches!(
            session.req_header().method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
        );

        // On the stack for the usual upstream of a few servers.
        let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        let mut last: Option<Failure> = None;
        let mut fresh_retry_used = false;
        let mut force_fresh = false;
        loop {
            let i = match up.pick(&tried) {
                Pick::Server(i) => i,
                Pick::NoneLive(why) => {
                    let f = match last.take() {
                        Some(f) => f,
                        None => {
                            Failure::new(Cause::ConnectNoLiveUpstreams, "no live upstreams", why)
                        }
                    };
                    break 'serve p.respond_failure(session, ctx, f).await;
                }
            };
            tried.push(i);
            let addr = &up.config.servers[i].addr;
            if let (Some(name), Some(hop)) = (up.fastcgi_names.get(i), up.addr_text.get(i)) {
                ctx.summary.upstream = name.clone();
                ctx.summary.next_hop = hop.clone();
            }

            // The request is made before the connect, as nginx makes it,
            // unless this server's last connect failed. A unix connect
            // wakes a PHP-FPM worker waiting in accept(); if it runs before
            // the request is written, it finds nothing to read and sleeps
            // again. Side by side with the build that connected first:
            // 1.4 % more PHP requests a second on a core shared with
            // PHP-FPM (docs/benchmarks.md, twenty-fourth session). A
            // failing server's connects still cost nothing for the params.
            if !up.connect_failing(i) {
                if let Some(build) = params.take() {
                    prelude = make_prelude(build, session, ctx, fc.keep_conn, has_body);
                }
            }
            let t0 = Instant::now();
            let mut reused = false;
            // A request that streams its body takes a fresh connection: a
            // kept one that PHP closes just then (a worker at
            // pm.max_requests) could not be sent the body again.
            let streams_body = has_body && buffered.is_none();
            let dialed = match (fc.keep_conn && !force_fresh && !streams_body)
                .then(|| up.take_idle(i))
                .flatten()
            {
                Some(c) => {
                    reused = true;
                    Dialed::Conn(c)
                }
                None => match upstream::dial(
                    addr,
                    up.tcp_addrs.get(i).copied().flatten(),
                    fc.connect_timeout,
                )
                .await
                {
                    Ok(d) => d,
                    // why502's own limit: no other server would do better,
                    // and this one is not to blame (nginx: a 500, no next).
                    Err(f) if f.cause == Cause::ConnectSocketFailed => {
                        break 'serve p.respond_failure(session, ctx, f).await;
                    }
                    Err(f) => {
                        up.connect_went(i, true);
                        up.failed(i, &f.nginx_message);
                        last = Some(f);
                        continue; // next server, or "no live upstreams" reports `last`
                    }
                },
            };
            force_fresh = false;
            if let Some(build) = params.take() {
                prelude = make_prelude(build, session, ctx, fc.keep_conn, has_body);
            }
            // A new connection is written the request before tokio has it;
            // a TCP connect still under way is waited for here (see
            // `upstream::dial`).
            let (mut conn, presend) =
                match dialed.register(addr, &prelude, fc.connect_timeout).await {
                    Ok(r) => r,
                    Err(f) => {
                        up.connect_went(i, true);
                        up.failed(i, &f.nginx_message);
                        last = Some(f);
                        continue;
                    }
                };
            if !reused {
                up.connect_went(i, false);
            }
            // Up to here: a TCP connect may finish only now. After a failed
            // connect, a new connection's time includes building the params
            // (microseconds).
            ctx.summary.connect_ms = Some(crate::report::ms_since(t0));

            let mut ex = Exchange {
                p,
                fc,
                server,
                conn: &mut conn,
                timer: &mut timer,
                reused,
                presend: Some(presend),
                body_consumed: false,
                diag: None,
                stderr: String::new(),
                stdout_seen: false,
                head_sent: false,
                declared_len: None,
                body_sent: 0,
                body_ended: false,
                head_only: session.req_header().method == http::Method::HEAD,
                buffered: buffered.as_deref(),
                pending: smallvec::SmallVec::new(),
                head: None,
                needs_framing: false,
            };
            match ex.run(session, ctx, &prelude, has_body).await {
                Attempt::Done(reusable) => {
                    up.succeeded(i);
                    if reusable {
                        up.put_idle(i, conn);
                    }
                    break 'serve Ok(());
                }
                Attempt::Aborted => break 'serve Err(Abort),
                Attempt::StaleReused if !fresh_retry_used => {
                    // Retry once on a fresh connection to the same server.
                    fresh_retry_used = true;
                    force_fresh = true;
                    tried.pop();
                    continue;
                }
                Attempt::StaleReused => {
                    let f = Failure::new(
                        Cause::HeaderClosedEmpty,
                        "upstream prematurely closed connection",
                        "a kept-alive connection and a fresh one both closed without a response",
                    );
                    break 'serve p.respond_failure(session, ctx, f).await;
                }
                Attempt::Failed { mut f, retryable } => {
                    if !ex.stderr.is_empty() {
                        ctx.summary.stderr_excerpt = ex.stderr.clone();
                        if let Some(d) = &ex.diag {
                            f.details = format!("{}; PHP said: {}", f.details, d.message).into();
                        }
                    }
                    // Like nginx's max_fails: only "error" and "timeout" failures count,
                    // not an application's invalid response.
                    if retryable {
                        up.failed(i, &f.nginx_message);
                    }
                    if retryable
                        && idempotent
                        && !ex.body_consumed
                        && tried.len() < up.config.servers.len()
                    {
                        last = Some(f);
                        continue;
                    }
                    break 'serve p.respond_failure(session, ctx, f).await;
                }
            }
        }
    };
    if let Some(t) = timer.take() {
        session.put_upstream_timer(t);
    }
    r
}

struct Exchange<'a> {
    p: &'a Why502,
    fc: &'a FastCgi,
    server: &'a Server,
    conn: &'a mut Conn,
    /// The connection's timer for the response waits, if it keeps one.
    timer: &'a mut Option<UpstreamTimer>,
    reused: bool,
    /// What [`Dialed::register`] wrote of the request before tokio had the
    /// connection: bytes, or the write's error.
    presend: Option<std::io::Result<usize>>,
    /// Body read from the client and sent: a retry could not send it
    /// again (a body read whole first can be).
    body_consumed: bool,
    diag: Option<StderrDiagnosis>,
    stderr: String,
    stdout_seen: bool,
    head_sent: bool,
    declared_len: Option<u64>,
    body_sent: u64,
    /// The client's response was ended with its last body data (the
    /// upstream's END_REQUEST came in the same read): one write, and over
    /// HTTP/2 one DATA frame with END_STREAM, as nginx sends.
    body_ended: bool,
    head_only: bool,
    /// A chunked request body, read whole before the request (see
    /// [`read_whole_body`]); sent from here instead of the client.
    buffered: Option<&'a [Bytes]>,
    /// Body data decoded from one read, written to the client as one piece.
    pending: smallvec::SmallVec<[Bytes; 4]>,
    /// The response header, decided but not yet written: it goes out with
    /// the body data of the same upstream read (see [`Exchange::flush_head`]).
    head: Option<PendingHead>,
    /// The response needs framing chosen at flush time (no Content-Length
    /// from the app, a body allowed, HTTP/1.x).
    needs_framing: bool,
}

/// A response header decided but not yet written.
enum PendingHead {
    /// Built, with a case map or with changes made after it was built
    /// (a reason phrase, diagnosis, `add_header`).
    Built(Box<ResponseHeader>),
    /// Still a map (the usual PHP response): the framing header is put in
    /// it before the header is built. Set on a built header without a case
    /// map, it moves the whole header out and back (460 instructions).
    Map(http::StatusCode, http::HeaderMap),
}

fn send_failure(e: &std::io::Error) -> Failure {
    let errno = upstream::errno_text(e);
    let cause = match e.raw_os_error() {
        Some(libc::EPIPE) => Cause::SendBrokenPipe,
        _ => Cause::SendReset,
    };
    Failure::new(
        cause,
        format!("writev() failed {errno}"),
        format!("writing the request: {errno}"),
    )
}

fn framing_failure(e: &FramingError) -> Failure {
    let cause = match e {
        FramingError::NotFastCgi {
            guess: PeerGuess::Http,
            ..
        } => Cause::FramingNotFastcgiHttp,
        FramingError::NotFastCgi {
            guess: PeerGuess::Ssh,
            ..
        } => Cause::FramingNotFastcgiSsh,
        FramingError::NotFastCgi {
            guess: PeerGuess::Tls,
            ..
        } => Cause::FramingNotFastcgiTls,
        FramingError::NotFastCgi { .. } => Cause::FramingNotFastcgi,
        FramingError::UnsupportedVersion(_) => Cause::FramingBadVersion,
        FramingError::UnknownRecordType(_) => Cause::FramingUnknownRecordType,
        FramingError::UnexpectedRequestId(_) => Cause::FramingBadRequestId,
        FramingError::TruncatedRecord { .. } => Cause::FramingTruncatedRecord,
        FramingError::BadEndRequest => Cause::FramingUnknownRecordType,
    };
    let msg = match e {
        FramingError::TruncatedRecord { .. } => {
            "upstream prematurely closed connection".to_string()
        }
        _ => e.nginx_message(),
    };
    Failure::new(cause, msg, e.to_string())
}

fn cgi_failure(e: &CgiError) -> Failure {
    let cause = match e {
        CgiError::InvalidHeader { .. } => Cause::HeaderInvalid,
        CgiError::InvalidStatus(_) => Cause::HeaderInvalidStatus,
        CgiError::TooBig => Cause::HeaderTooBig,
        CgiError::OutputBeforeHeaders { .. } => Cause::HeaderOutputBeforeHeaders,
    };
    let details = match e {
        CgiError::OutputBeforeHeaders { excerpt } => format!("output before headers: {excerpt}"),
        CgiError::TooBig => "the header block did not end within buffer_size".to_string(),
        _ => e.nginx_message(),
    };
    let msg = match e {
        // nginx does not tell this case apart: the output's first line is, to
        // it, an invalid header. Keep its wording so existing greps match.
        CgiError::OutputBeforeHeaders { excerpt } => {
            format!("upstream sent invalid header: \"{excerpt}\" (output before the FastCGI response headers)")
        }
        _ => e.nginx_message(),
    };
    Failure::new(cause, msg, details)
}

impl Exchange<'_> {
    async fn run<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        prelude: &Bytes,
        has_body: bool,
    ) -> Attempt {
        self.exchange(session, ctx, prelude, has_body).await
    }

    async fn exchange<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        prelude: &Bytes,
        has_body: bool,
    ) -> Attempt {
        let fc = self.fc;
        // ---- send ----
        let sent = match self.presend.take() {
            Some(Ok(n)) => n,
            Some(Err(e)) => return self.fail(ctx, send_failure(&e), true),
            None => 0,
        };
        let rest = prelude.get(sent..).unwrap_or_default();
        if !rest.is_empty() {
            match tokio::time::timeout(fc.send_timeout, self.conn.write_all(rest)).await {
                Err(_) => {
                    return self.fail(
                        ctx,
                        upstream::timeout_failure(Cause::SendTimeout, "while sending the request"),
                        true,
                    )
                }
                Ok(Err(e)) => {
                    if self.reused {
                        return Attempt::StaleReused;
                    }
                    return self.fail(ctx, send_failure(&e), true);
                }
                Ok(Ok(())) => {}
            }
        }
        if has_body {
            if let Some(a) = self.send_body(session, ctx).await {
                return a;
            }
        }
        if fc.half_close && !fc.keep_conn {
            // The whole request is sent: PHP-FPM finds the end of file
            // when it looks for it after its response (see `half_close`).
            // A failure here shows in the response read that follows.
            let _ = self.conn.shutdown_write();
        }
        // ---- receive ----
        let mut dec = if self.reused {
            ResponseDecoder::new_on_reused_connection(REQUEST_ID)
        } else {
            ResponseDecoder::new(REQUEST_ID)
        };
        let mut parser = CgiHeaderParser::new(fc.buffer_size);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if let Some(a) = self
                            .on_frame(session, ctx, frame, &mut dec, &mut parser)
                            .await
                        {
                            return a;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if let Some(a) = self.write_pending(session, ctx, false).await {
                            return a;
                        }
                        return self.fail(ctx, framing_failure(&e), false);
                    }
                }
            }
            if let Some(a) = self.write_pending(session, ctx, dec.is_done()).await {
                return a;
            }
            if dec.is_done() {
                return self.finish(session, ctx).await;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(READ_CHUNK);
            }
            // fastcgi_read_timeout: between two successive reads.
            let read = match self.timer.as_mut() {
                Some(t) => {
                    t.as_mut()
                        .reset(tokio::time::Instant::now() + fc.read_timeout);
                    tokio::select! {
                        biased;
                        r = self.conn.read_buf(&mut buf) => Ok(r),
                        _ = t.as_mut() => Err(()),
                    }
                }
                None => tokio::time::timeout(fc.read_timeout, self.conn.read_buf(&mut buf))
                    .await
                    .map_err(|_| ()),
            };
            if ctx.summary.first_byte_ms.is_none() {
                if let Some(s) = ctx.start {
                    ctx.summary.first_byte_ms = Some(crate::report::ms_since(s));
                }
            }
            match read {
                Err(_) => {
                    let cause = if self.head_sent {
                        Cause::BodyTimeout
                    } else {
                        Cause::HeaderTimeout
                    };
                    return self.fail(
                        ctx,
                        upstream::timeout_failure(cause, "while reading the response"),
                        true,
                    );
                }
                Ok(Err(e)) => {
                    if !self.head_sent && self.reused && !dec.saw_any_byte() && !self.body_consumed
                    {
                        return Attempt::StaleReused;
                    }
                    let errno = upstream::errno_text(&e);
                    let (cause, what) = if self.head_sent {
                        (Cause::BodyReset, "readv()")
                    } else {
                        (Cause::HeaderReset, "recv()")
                    };
                    let f = Failure::new(
                        cause,
                        format!("{what} failed {errno}"),
                        format!("reading the response: {errno}"),
                    );
                    return self.fail(ctx, f, true);
                }
                Ok(Ok(0)) => return self.on_eof(ctx, &dec, &mut parser),
                Ok(Ok(n)) => ctx.summary.bytes_received += n as u64,
            }
        }
    }

    /// Sends `chunk` as STDIN records.
    async fn send_stdin(
        &mut self,
        ctx: &mut ReqCtx,
        chunk: &[u8],
        out: &mut BytesMut,
    ) -> Option<Attempt> {
        for piece in chunk.chunks(record::MAX_STDIN_CHUNK) {
            out.clear();
            record::encode_stdin(out, REQUEST_ID, piece);
            match tokio::time::timeout(self.fc.send_timeout, self.conn.write_all(out)).await {
                Err(_) => {
                    return Some(self.fail(
                        ctx,
                        upstream::timeout_failure(
                            Cause::SendTimeout,
                            "while sending the request body",
                        ),
                        false,
                    ))
                }
                // A kept connection closed under a body still in hand (read
                // whole first): sent again on a fresh one, as after the
                // params.
                Ok(Err(_)) if self.reused && !self.body_consumed && !self.stdout_seen => {
                    return Some(Attempt::StaleReused)
                }
                Ok(Err(e)) => return Some(self.fail(ctx, send_failure(&e), false)),
                Ok(Ok(())) => {}
            }
        }
        None
    }

    /// Streams the request body as STDIN records.
    async fn send_body<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
    ) -> Option<Attempt> {
        let limit = self.server.client_max_body_size;
        let mut total: u64 = 0;
        let mut out = BytesMut::with_capacity(record::MAX_STDIN_CHUNK + 16);
        let mut next_buffered = 0;
        loop {
            if let Some(b) = self.buffered {
                let Some(chunk) = b.get(next_buffered) else {
                    break;
                };
                next_buffered += 1;
                // Kept: it can be sent again (not `body_consumed`).
                if let Some(a) = self.send_stdin(ctx, chunk, &mut out).await {
                    return Some(a);
                }
                continue;
            }
            let piece =
                next_body_piece(session, self.server.client_body_timeout, &mut total, limit).await;
            let chunk = match piece {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(f) => {
                    ctx.summary.bytes_sent = total;
                    return Some(self.fail(ctx, f, false));
                }
            };
            self.body_consumed = true;
            ctx.summary.bytes_sent = total;
            if let Some(a) = self.send_stdin(ctx, &chunk, &mut out).await {
                return Some(a);
            }
        }
        out.clear();
        record::encode_stdin_end(&mut out, REQUEST_ID);
        match tokio::time::timeout(self.fc.send_timeout, self.conn.write_all(&out)).await {
            Err(_) => Some(self.fail(
                ctx,
                upstream::timeout_failure(Cause::SendTimeout, "while sending the request body"),
                false,
            )),
            Ok(Err(e)) => Some(self.fail(ctx, send_failure(&e), false)),
            Ok(Ok(())) => None,
        }
    }

    async fn on_frame<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        frame: Frame,
        dec: &mut ResponseDecoder,
        parser: &mut CgiHeaderParser,
    ) -> Option<Attempt> {
        match frame {
            Frame::Stdout(data) => {
                self.stdout_seen = true;
                if self.head_sent {
                    if !data.is_empty() && !self.head_only {
                        self.pending.push(data);
                    }
                    return None;
                }
                let overhead = dec.take_stdout_overhead();
                match parser.feed(data, overhead) {
                    Ok(None) => None,
                    Ok(Some((head, rest))) => self.head_and_rest(session, ctx, head, rest).await,
                    Err(e) => Some(self.fail(ctx, cgi_failure(&e), false)),
                }
            }
            Frame::StdoutEof => {
                if self.head_sent {
                    None
                } else {
                    match parser.finish() {
                        Err(e) => return Some(self.fail(ctx, cgi_failure(&e), false)),
                        Ok(Some((head, rest))) => {
                            return self.head_and_rest(session, ctx, head, rest).await
                        }
                        Ok(None) => {}
                    }
                    let f = Failure::new(
                        Cause::HeaderStdoutClosed,
                        "upstream prematurely closed FastCGI stdout",
                        "an empty STDOUT record arrived before the end of the header block",
                    );
                    Some(self.fail(ctx, f, false))
                }
            }
            Frame::Stderr(data) => {
                self.on_stderr(ctx, &data);
                None
            }
            Frame::StderrEof => None,
            Frame::End {
                app_status,
                protocol_status,
            } => {
                if self.head_sent {
                    return None; // finish() runs when the decoder reports done
                }
                let (cause, what) = match protocol_status {
                    ProtocolStatus::CantMpxConn => (Cause::FramingCantMpxConn, "CANT_MPX_CONN"),
                    ProtocolStatus::Overloaded => (Cause::FramingOverloaded, "OVERLOADED"),
                    ProtocolStatus::UnknownRole => (Cause::FramingUnknownRole, "UNKNOWN_ROLE"),
                    _ => match parser.finish() {
                        Err(e) => return Some(self.fail(ctx, cgi_failure(&e), false)),
                        Ok(Some((head, rest))) => {
                            return self.head_and_rest(session, ctx, head, rest).await
                        }
                        Ok(None) => (Cause::FramingEndBeforeHeaders, "REQUEST_COMPLETE"),
                    },
                };
                let f = Failure::new(
                    cause,
                    "upstream sent unexpected FastCGI record: 3",
                    format!("END_REQUEST (protocolStatus {what}, appStatus {app_status}) before the header block ended"),
                );
                Some(self.fail(ctx, f, false))
            }
        }
    }

    async fn head_and_rest<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        head: CgiHead,
        rest: Bytes,
    ) -> Option<Attempt> {
        if let Some(a) = self.send_head(session, ctx, head).await {
            return Some(a);
        }
        if !rest.is_empty() && !self.head_only {
            self.pending.push(rest);
        }
        None
    }

    /// Writes the header if it is still pending, then the body data queued
    /// from one read as one piece. `complete`: the upstream's END_REQUEST
    /// came in the same read, so this is the whole body.
    async fn write_pending<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        complete: bool,
    ) -> Option<Attempt> {
        if let Some(a) = self.flush_head(session, ctx, complete).await {
            return Some(a);
        }
        let data = match self.pending.len() {
            0 => return None,
            1 => self.pending.pop().unwrap_or_default(),
            _ => {
                let len = self.pending.iter().map(Bytes::len).sum();
                let mut all = BytesMut::with_capacity(len);
                for d in self.pending.drain(..) {
                    all.extend_from_slice(&d);
                }
                all.freeze()
            }
        };
        self.write_body(session, ctx, data, complete).await
    }

    fn on_stderr(&mut self, ctx: &mut ReqCtx, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let text = stderr::nginx_trim(&text);
        if self.stderr.len() < STDERR_KEEP {
            if !self.stderr.is_empty() {
                self.stderr.push('\n');
            }
            let room = STDERR_KEEP - self.stderr.len();
            let mut end = text.len().min(room);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            self.stderr.push_str(&text[..end]);
        }
        let found = stderr::classify(text);
        let mut suffix = String::new();
        if let Some(d) = found {
            if self.diag.as_ref().is_none_or(|cur| {
                cur.cause == Cause::AppFatalError && d.cause != Cause::AppFatalError
            }) {
                suffix = format!(
                    ", cause: {}, request_id: {}",
                    d.cause.code(),
                    ctx.summary.request_id
                );
                self.diag = Some(d);
            }
        }
        let phase = if self.head_sent {
            Phase::Body
        } else {
            Phase::Header
        };
        let mut line = report::nginx_line(
            "error",
            &format!("FastCGI sent in stderr: \"{text}\""),
            Some(phase.nginx_while()),
            &ctx.summary,
        );
        if !suffix.is_empty() {
            line.pop();
            line.push_str(&suffix);
            line.push('\n');
        }
        self.p.rt.errlog.for_req(&ctx.summary).write_line(&line);
        ctx.summary.stderr_excerpt = self.stderr.clone();
    }

    async fn send_head<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        head: CgiHead,
    ) -> Option<Attempt> {
        // error_page without `=`: the original error status wins over the page's.
        let status = ctx.error_status.unwrap_or(head.status);
        let invalid = |status| {
            Failure::new(
                Cause::HeaderInvalidStatus,
                format!("upstream sent invalid status \"{status}\""),
                "status out of range",
            )
        };
        let Ok(code) = http::StatusCode::from_u16(status) else {
            return Some(self.fail(ctx, invalid(head.status), false));
        };
        // Without a case map when the session writes names in their usual
        // capitalisation and every name the app sent is written back as
        // sent that way (`X-Powered-By`; `Content-type` is written
        // `Content-Type` as nginx does): a case map costs each header a
        // second map entry and its name parsed twice.
        let diag = &self.p.rt.config.diagnostics;
        let titled = self.p.titles_all_names(session, ctx)
            && head.headers.iter().all(|(n, _)| {
                n.eq_ignore_ascii_case(b"content-type")
                    || n.eq_ignore_ascii_case(b"content-length")
                    || crate::h1::writes_as_sent(n)
            });
        let mut cased = if titled {
            None
        } else {
            match ResponseHeader::build(code, Some(head.headers.len() + 4)) {
                Ok(h) => Some(h),
                Err(_) => return Some(self.fail(ctx, invalid(head.status), false)),
            }
        };
        let mut map =
            http::HeaderMap::with_capacity(if titled { head.headers.len() + 8 } else { 0 });
        for (name, value) in head.headers {
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if name
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"x-accel-"))
                || is("status")
                || is("connection")
                || is("keep-alive")
                || is("transfer-encoding")
                || self
                    .fc
                    .hide_headers
                    .iter()
                    .any(|x| x.as_bytes().eq_ignore_ascii_case(&name))
            {
                continue;
            }
            let content_length = is("content-length");
            if content_length {
                let parsed = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match (parsed, self.declared_len) {
                    (Some(n), None) => self.declared_len = Some(n),
                    (Some(n), Some(m)) if n == m => continue,
                    _ => {
                        let f = Failure::new(
                            Cause::HeaderInvalid,
                            "upstream sent invalid \"Content-Length\" header",
                            format!("Content-Length: {}", String::from_utf8_lossy(&value)),
                        );
                        return Some(self.fail(ctx, f, false));
                    }
                }
            }
            let hv = match http::HeaderValue::from_maybe_shared(value) {
                Ok(v) => v,
                Err(_) => continue,
            };
            // nginx prints these two with canonical names; others keep the app's case.
            let canonical = if is("content-type") {
                Some(http::header::CONTENT_TYPE)
            } else if content_length {
                Some(http::header::CONTENT_LENGTH)
            } else {
                None
            };
            match &mut cased {
                Some(h) => {
                    let _ = match canonical {
                        Some(n) => h.append_header(n, hv),
                        None => h.append_header(String::from_utf8_lossy(&name).into_owned(), hv),
                    };
                }
                None => {
                    let n = match canonical {
                        Some(n) => n,
                        None => match http::HeaderName::from_bytes(&name) {
                            Ok(n) => n,
                            Err(_) => continue,
                        },
                    };
                    let _ = map.try_append(n, hv);
                }
            }
        }
        let reason = head.reason.as_deref().filter(|r| !r.is_empty());
        let diagnosed = self.diag.is_some() && diag.enabled;
        let bodyless = matches!(head.status, 100..=199 | 204 | 304);
        self.needs_framing =
            self.declared_len.is_none() && !self.head_only && !bodyless && !session.is_http2();
        let mut h = match cased {
            Some(h) => h,
            None => {
                let _ = map.try_insert(http::header::SERVER, HeaderValue::from_static("why502"));
                if reason.is_none() && !diagnosed && !self.p.decorates(ctx) {
                    ctx.summary.status = status;
                    self.head = Some(PendingHead::Map(code, map));
                    self.head_sent = true;
                    return None;
                }
                downstream::response_header(true, code, map)
            }
        };
        if let Some(r) = reason {
            let _ = h.set_reason_phrase(Some(r));
        }
        if let (Some(d), true) = (&self.diag, diag.enabled) {
            let mut f = Failure::new(d.cause, "", d.location.clone().unwrap_or_default());
            f.upstream_status = Some(head.status);
            let trusted = report::is_trusted(diag, ctx.summary.client);
            let _ = h.insert_header(diag.cause_header.clone(), d.cause.code());
            let _ = h.insert_header(
                diag.request_id_header.clone(),
                ctx.summary.request_id.clone(),
            );
            let _ = h.insert_header(
                "Proxy-Status",
                report::proxy_status(&f, &ctx.summary.next_hop, trusted),
            );
        }
        if h.has_case() {
            let _ = h.insert_header(http::header::SERVER, "why502");
        }
        self.p.decorate_response(ctx, &mut h);
        ctx.summary.status = status;
        self.head = Some(PendingHead::Built(Box::new(h)));
        self.head_sent = true;
        None
    }

    /// Writes the pending response header. Without a Content-Length from
    /// the app, the framing is chosen here: when the whole body is already in
    /// hand (`complete`), Content-Length, so header and body leave in one
    /// write (Pingora flushes a chunked header and every chunk on its own);
    /// otherwise chunked for HTTP/1.1, or close-delimited for HTTP/1.0.
    async fn flush_head<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        complete: bool,
    ) -> Option<Attempt> {
        let head = self.head.take()?;
        let mut framing = None;
        if self.needs_framing {
            if complete {
                let len: usize = self.pending.iter().map(Bytes::len).sum();
                framing = Some((http::header::CONTENT_LENGTH, len.into()));
            } else if session.req_header().version == http::Version::HTTP_11 {
                framing = Some((
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                ));
            } else {
                session.set_keepalive(None);
            }
        }
        let h = match head {
            PendingHead::Built(mut h) => {
                if let Some((name, value)) = framing {
                    downstream::set_header(&mut h, name, value);
                }
                h
            }
            PendingHead::Map(code, mut map) => {
                if let Some((name, value)) = framing {
                    map.insert(name, value);
                }
                Box::new(downstream::response_header(true, code, map))
            }
        };
        if session.write_response_header(h, false).await.is_err() {
            return Some(self.client_gone(ctx));
        }
        None
    }

    async fn write_body<S: Downstream>(
        &mut self,
        session: &mut S,
        ctx: &mut ReqCtx,
        mut data: Bytes,
        complete: bool,
    ) -> Option<Attempt> {
        if self.head_only {
            return None;
        }
        let mut too_long = false;
        if let Some(cl) = self.declared_len {
            let room = cl.saturating_sub(self.body_sent);
            if data.len() as u64 > room {
                data.truncate(room as usize);
                too_long = true;
            }
        }
        if !data.is_empty() {
            self.body_sent += data.len() as u64;
            // The whole body, as long as announced: it ends the response.
            // One longer or shorter than announced does not: it fails
            // below or in `finish`, and the response is aborted.
            let end =
                complete && !too_long && self.declared_len.is_none_or(|cl| self.body_sent >= cl);
            if session.write_response_body(Some(data), end).await.is_err() {
                return Some(self.client_gone(ctx));
            }
            self.body_ended = end;
        }
        if too_long {
            let f = Failure::new(
                Cause::BodyTooLong,
                "upstream sent more data than specified in \"Content-Length\" header",
                format!("Content-Length {} exceeded", self.declared_len.unwrap_or(0)),
            );
            return Some(self.fail(ctx, f, false));
        }
        None
    }

    fn on_eof(
        &mut self,
        ctx: &mut ReqCtx,
        dec: &ResponseDecoder,
        parser: &mut CgiHeaderParser,
    ) -> Attempt {
        if let Err(e) = dec.eof() {
            if !self.head_sent {
                if matches!(e, FramingError::TruncatedRecord { .. })
                    || matches!(e, FramingError::NotFastCgi { .. })
                {
                    return self.fail(ctx, framing_failure(&e), true);
                }
            } else {
                let f = Failure::new(
                    Cause::BodyClosed,
                    "upstream prematurely closed connection",
                    e.to_string(),
                );
                return self.fail(ctx, f, false);
            }
        }
        if self.head_sent {
            let f = Failure::new(
                Cause::BodyNoEndRequest,
                "upstream prematurely closed connection",
                format!(
                    "EOF without END_REQUEST after {} body bytes",
                    self.body_sent
                ),
            );
            return self.fail(ctx, f, false);
        }
        if let Err(e) = parser.finish() {
            return self.fail(ctx, cgi_failure(&e), false);
        }
        if !dec.saw_any_byte() && self.reused && !self.body_consumed {
            return Attempt::StaleReused;
        }
        let cause = if parser.counted() == 0 {
            Cause::HeaderClosedEmpty
        } else {
            Cause::HeaderClosedPartial
        };
        let details = if parser.counted() == 0 {
            "the connection closed before any response".to_string()
        } else {
            format!(
                "the connection closed after {} bytes of the header block",
                parser.counted()
            )
        };
        self.fail(
            ctx,
            Failure::new(cause, "upstream prematurely closed connection", details),
            true,
        )
    }

    async fn finish<S: Downstream>(&mut self, session: &mut S, ctx: &mut ReqCtx) -> Attempt {
        if let Some(cl) = self.declared_len {
            if self.body_sent < cl && !self.head_only {
                let f = Failure::new(
                    Cause::BodyTooShort,
                    "upstream prematurely closed FastCGI request",
                    format!("Content-Length {cl}, body {} bytes", self.body_sent),
                );
                return self.fail(ctx, f, false);
            }
        }
        if !self.body_ended && session.write_response_body(None, true).await.is_err() {
            return self.client_gone(ctx);
        }
        ctx.summary.bytes_sent = self.body_sent;
        if let Some(d) = self.diag.take() {
            // The app's own status went out; the cause is reported as an event.
            let mut f = Failure::new(
                d.cause,
                "FastCGI sent in stderr",
                d.location.clone().unwrap_or_default(),
            );
            f.upstream_status = Some(ctx.summary.status);
            self.p.finish_timing(ctx);
            report::event(&f, &ctx.summary);
            ctx.failure = Some(f);
        }
        Attempt::Done(self.fc.keep_conn)
    }

    fn client_gone(&mut self, ctx: &mut ReqCtx) -> Attempt {
        let f = Failure::new(
            Cause::ClientClosed,
            "client prematurely closed connection",
            "writing the response to the client failed",
        );
        ctx.summary.status = 499;
        self.p.finish_timing(ctx);
        report::log_failure(&self.p.rt.errlog, &f, &ctx.summary);
        ctx.failure = Some(f);
        Attempt::Aborted
    }

    /// A failure: before the header it becomes an error response (by the
    /// caller); after the header it is logged and the response aborted.
    fn fail(&mut self, ctx: &mut ReqCtx, f: Failure, retryable: bool) -> Attempt {
        if !self.head_sent || self.head.take().is_some() {
            // Nothing reached the client yet: an error response is still possible.
            self.head_sent = false;
            return Attempt::Failed { f, retryable };
        }
        ctx.summary.bytes_sent = self.body_sent;
        if !self.stderr.is_empty() {
            ctx.summary.stderr_excerpt = self.stderr.clone();
        }
        self.p.finish_timing(ctx);
        report::log_failure(&self.p.rt.errlog, &f, &ctx.summary);
        ctx.failure = Some(f);
        ctx.logged = true;
        Attempt::Aborted
    }
}

/// The most of a chunked request body [`read_whole_body`] keeps in memory
/// when `client_max_body_size` is 0 (unlimited).
pub const CHUNKED_BODY_MAX: u64 = 64 << 20;

/// The largest body (by its Content-Length) read whole before it is sent
/// to a kept connection, so that the request can be sent again if that
/// connection turns out closed. Larger bodies stream.
pub const KEPT_CONN_BODY_MAX: u64 = 64 << 10;

/// The next piece of the request body, within `timeout`, counted into
/// `total` and checked against `limit` (0: none).
async fn next_body_piece<S: Downstream>(
    session: &mut S,
    timeout: std::time::Duration,
    total: &mut u64,
    limit: u64,
) -> Result<Option<Bytes>, Failure> {
    let b = match tokio::time::timeout(timeout, session.read_request_body()).await {
        Err(_) => {
            return Err(Failure::new(
                Cause::ClientBodyTimeout,
                "client timed out (110: Connection timed out)",
                "reading the request body",
            ))
        }
        Ok(Err(e)) => {
            return Err(Failure::new(
                Cause::ClientClosed,
                "client prematurely closed connection",
                e.to_string(),
            ))
        }
        Ok(Ok(None)) => return Ok(None),
        Ok(Ok(Some(b))) => b,
    };
    *total += b.len() as u64;
    if limit > 0 && *total > limit {
        return Err(Failure::new(
            Cause::ClientBodyTooLarge,
            format!("client intended to send too large chunked body: {total} bytes"),
            format!("request body > client_max_body_size {limit}"),
        ));
    }
    Ok(Some(b))
}

/// Reads a chunked request body whole, as nginx does before passing it to
/// FastCGI: PHP needs `CONTENT_LENGTH` to read a body at all. Bounded by
/// `client_max_body_size` (or [`CHUNKED_BODY_MAX`] when that is 0).
pub async fn read_whole_body<S: Downstream>(
    session: &mut S,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<(Vec<Bytes>, u64), Failure> {
    let cap = if limit == 0 { CHUNKED_BODY_MAX } else { limit };
    let mut parts = Vec::new();
    let mut total: u64 = 0;
    while let Some(b) = next_body_piece(session, timeout, &mut total, cap).await? {
        parts.push(b);
    }
    Ok((parts, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Addr, Param, Upstream};
    use crate::fastcgi::decode_pairs;

    struct NoVars;
    impl Vars for NoVars {
        fn var(&self, _: &crate::config::template::Var) -> std::borrow::Cow<'_, str> {
            "".into()
        }
    }

    /// The request headers' params, in order.
    fn header_params(fc: &FastCgi, head: &str) -> Vec<(String, String)> {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for line in head.lines() {
            let (n, v) = line.split_once(": ").expect("header line");
            req.append_header(n.to_string(), v).expect("header");
        }
        let mut p = BytesMut::new();
        build_params(fc, &NoVars, &req, &mut p);
        decode_pairs(&p)
            .expect("well-formed params")
            .into_iter()
            .map(|(n, v)| {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (s(n), s(v))
            })
            .filter(|(n, _)| n.starts_with("HTTP_"))
            .collect()
    }

    #[test]
    fn request_headers_become_params_like_nginx() {
        let mut fc = FastCgi::new(std::sync::Arc::new(Upstream::single(Addr::Tcp(
            "x:9000".into(),
        ))));
        let got = header_params(
            &fc,
            "Host: h\nX-Multi: a\nCookie: a=1\nUser-Agent: u\nX-Multi: b\nCookie: b=2\n\
             X-Multi: c\nProxy: evil\nX_Under: no\nAccept: */*",
        );
        let want = [
            ("HTTP_HOST", "h"),
            ("HTTP_X_MULTI", "a, b, c"),
            ("HTTP_COOKIE", "a=1; b=2"),
            ("HTTP_USER_AGENT", "u"),
            ("HTTP_ACCEPT", "*/*"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        // A configured param of the same name suppresses the header; the
        // configured one is sent in its place.
        fc.params.push(Param::new(
            "HTTP_HOST",
            crate::config::template::Template::literal("configured"),
            false,
        ));
        let got = header_params(&fc, "Host: h\nAccept: a\nAccept: b");
        assert_eq!(
            got,
            [
                ("HTTP_HOST".to_string(), "configured".to_string()),
                ("HTTP_ACCEPT".to_string(), "a, b".to_string()),
            ]
        );
    }
}
