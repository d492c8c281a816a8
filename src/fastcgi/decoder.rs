//! Sans-IO streaming decoder for the records a FastCGI responder sends back:
//! STDOUT, STDERR and END_REQUEST.
//!
//! The decoder never buffers a whole record. STDOUT and STDERR content is
//! returned as soon as any of it is in the input buffer, as a [`Bytes`] split
//! off that buffer (no copy); only the 8-byte record header and the 8-byte
//! END_REQUEST body (plus its padding) must be complete before they are
//! decoded. Record padding is skipped as it arrives.
//!
//! Driving it:
//!
//! ```
//! # use bytes::BytesMut;
//! # use why502::fastcgi::decoder::{Frame, ResponseDecoder};
//! let mut dec = ResponseDecoder::new(1);
//! let mut buf = BytesMut::from(&b"\x01\x06\x00\x01\x00\x02\x06\x00hi\0\0\0\0\0\0"[..]);
//! // after each read from the socket into `buf`:
//! while let Some(frame) = dec.decode(&mut buf)? {
//!     match frame {
//!         Frame::Stdout(data) => assert_eq!(&data[..], b"hi"),
//!         Frame::End { .. } => break, // stop reading: see below
//!         _ => {}
//!     }
//! }
//! // when the read returns 0 (peer closed):
//! dec.eof()?;
//! # Ok::<(), why502::fastcgi::decoder::FramingError>(())
//! ```
//!
//! After [`Frame::End`] the decoder is done: later calls to `decode` return
//! `Ok(None)` and leave `buf` alone. The caller stops reading; any bytes left
//! in `buf` then mean the peer sent records after END_REQUEST, so the
//! connection must not be reused for keep-alive.
//!
//! After an error the decoder is poisoned: `decode` and `eof` keep returning
//! the same error.
//!
//! Checks follow nginx's order (ngx_http_fastcgi_process_record): version,
//! then type, then request id, each reported as soon as the byte carrying it
//! has arrived, even before the rest of the header.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use super::record::{ProtocolStatus, RecordType, HEADER_LEN, VERSION_1};

/// Content length of FCGI_EndRequestBody:
///
/// ```text
/// typedef struct {
///     unsigned char appStatusB3;
///     unsigned char appStatusB2;
///     unsigned char appStatusB1;
///     unsigned char appStatusB0;
///     unsigned char protocolStatus;
///     unsigned char reserved[3];
/// } FCGI_EndRequestBody;
/// ```
const END_REQUEST_BODY_LEN: usize = 8;

/// One decoded piece of the response.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// Some STDOUT content (never empty).
    Stdout(Bytes),
    /// An empty STDOUT record: the application closed its stdout.
    StdoutEof,
    /// Some STDERR content (never empty).
    Stderr(Bytes),
    /// An empty STDERR record.
    StderrEof,
    /// END_REQUEST, with its padding consumed: the connection is at a record
    /// boundary.
    End {
        app_status: u32,
        protocol_status: ProtocolStatus,
    },
}

impl fmt::Debug for Frame {
    /// Payload bytes are left out: only their length is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Stdout(b) => write!(f, "Stdout({} bytes)", b.len()),
            Frame::StdoutEof => f.write_str("StdoutEof"),
            Frame::Stderr(b) => write!(f, "Stderr({} bytes)", b.len()),
            Frame::StderrEof => f.write_str("StderrEof"),
            Frame::End {
                app_status,
                protocol_status,
            } => f
                .debug_struct("End")
                .field("app_status", app_status)
                .field("protocol_status", protocol_status)
                .finish(),
        }
    }
}

/// What the first bytes of a connection that is not FastCGI look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerGuess {
    /// Starts with `HTTP/`: an HTTP server answering our request with an error.
    Http,
    /// Starts with `SSH-`: an SSH server's banner.
    Ssh,
    /// A TLS record (0x15 alert or 0x16 handshake, then 0x03 0x00..=0x04).
    Tls,
    /// Another text protocol: the first byte is printable ASCII.
    Other,
}

impl PeerGuess {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerGuess::Http => "HTTP",
            PeerGuess::Ssh => "SSH",
            PeerGuess::Tls => "TLS",
            PeerGuess::Other => "a text protocol",
        }
    }
}

/// A FastCGI framing error. What went wrong, not what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FramingError {
    /// The very first record header of the connection does not start with
    /// version 1 and looks like another protocol. `version` is the first
    /// byte, which nginx reports as the protocol version.
    NotFastCgi { guess: PeerGuess, version: u8 },
    /// A version byte other than 1 (after the first record, or a first
    /// record that looks like no known protocol).
    UnsupportedVersion(u8),
    /// A record type a responder must not send: anything but STDOUT (6),
    /// STDERR (7) and END_REQUEST (3).
    UnknownRecordType(u8),
    /// A record for another request id than ours (the id received).
    UnexpectedRequestId(u16),
    /// The peer closed the connection inside a record: inside its 8-byte
    /// header (`in_header`) or its content/padding. `missing` bytes short.
    TruncatedRecord { in_header: bool, missing: usize },
    /// END_REQUEST whose content length is not 8.
    BadEndRequest,
}

impl FramingError {
    /// The message nginx logs for this error (without the `while ...`
    /// phase suffix, which the caller adds).
    ///
    /// Request ids are reported the way nginx, which always uses request
    /// id 1, splits them: a non-zero high byte is reported as the high
    /// byte, otherwise the low byte is.
    ///
    /// nginx does not check END_REQUEST's length; for [`BadEndRequest`]
    /// this returns why502's own wording in nginx's style.
    ///
    /// [`BadEndRequest`]: FramingError::BadEndRequest
    pub fn nginx_message(&self) -> String {
        match *self {
            FramingError::NotFastCgi { version, .. }
            | FramingError::UnsupportedVersion(version) => {
                format!("upstream sent unsupported FastCGI protocol version: {version}")
            }
            FramingError::UnknownRecordType(t) => {
                format!("upstream sent invalid FastCGI record type: {t}")
            }
            FramingError::UnexpectedRequestId(id) => {
                let [hi, lo] = id.to_be_bytes();
                if hi != 0 {
                    format!("upstream sent unexpected FastCGI request id high byte: {hi}")
                } else {
                    format!("upstream sent unexpected FastCGI request id low byte: {lo}")
                }
            }
            FramingError::TruncatedRecord { .. } => "upstream prematurely closed connection".into(),
            FramingError::BadEndRequest => {
                "upstream sent invalid FastCGI END_REQUEST record length".into()
            }
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FramingError::NotFastCgi { guess, version } => write!(
                f,
                "peer is not a FastCGI server: it speaks {} (first byte {version:#04x})",
                guess.as_str()
            ),
            FramingError::UnsupportedVersion(v) => {
                write!(f, "unsupported FastCGI protocol version {v}")
            }
            FramingError::UnknownRecordType(t) => {
                write!(f, "FastCGI record type {t} is not one a responder may send")
            }
            FramingError::UnexpectedRequestId(id) => {
                write!(f, "FastCGI record for unexpected request id {id}")
            }
            FramingError::TruncatedRecord { in_header, missing } => write!(
                f,
                "connection closed inside a FastCGI record {}, {missing} bytes missing",
                if in_header { "header" } else { "body" }
            ),
            FramingError::BadEndRequest => {
                f.write_str("FastCGI END_REQUEST record with content length other than 8")
            }
        }
    }
}

impl std::error::Error for FramingError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a record boundary, waiting for a header.
    Header,
    /// Inside STDOUT/STDERR content.
    Content {
        stream: Stream,
        remaining: usize,
        padding: usize,
    },
    /// Skipping padding.
    Padding {
        stream: Stream,
        remaining: usize,
    },
    /// END_REQUEST header read; waiting for its body and padding.
    EndBody {
        padding: usize,
    },
    /// END_REQUEST decoded.
    Done,
    Failed(FramingError),
}

/// Streaming decoder of one request's response. See the module docs.
#[derive(Clone, Debug)]
pub struct ResponseDecoder {
    request_id: u16,
    state: State,
    /// No record header has been decoded yet on this connection.
    first_record: bool,
    raw: u64,
    /// Bytes of an incomplete header / END_REQUEST body that were in the
    /// buffer at the last `Ok(None)`.
    buffered: usize,
    /// Copy of the first bytes of an incomplete header, for `eof`.
    partial_header: [u8; HEADER_LEN],
    stdout_overhead: usize,
}

/// `Some(guess)` if `prefix` surely is that protocol, `None` if it surely is
/// none of them, `Err(())` if more bytes are needed to tell.
fn match_signature(prefix: &[u8], at_eof: bool) -> Result<Option<PeerGuess>, ()> {
    let mut undecided = false;
    for (sig, guess) in [
        (&b"HTTP/"[..], PeerGuess::Http),
        (&b"SSH-"[..], PeerGuess::Ssh),
    ] {
        if prefix.starts_with(sig) {
            return Ok(Some(guess));
        }
        if sig.starts_with(prefix) {
            undecided = true;
        }
    }
    match prefix {
        [0x15 | 0x16, 0x03, 0x00..=0x04, ..] => return Ok(Some(PeerGuess::Tls)),
        [0x15 | 0x16] | [0x15 | 0x16, 0x03] => undecided = true,
        _ => {}
    }
    if undecided && !at_eof && prefix.len() < HEADER_LEN {
        Err(())
    } else {
        Ok(None)
    }
}

/// Classifies the first record's bytes when its version byte is not 1.
/// `None`: need more bytes.
fn classify_first(prefix: &[u8], at_eof: bool) -> Option<FramingError> {
    let version = *prefix.first()?;
    match match_signature(prefix, at_eof) {
        Err(()) => None,
        Ok(Some(guess)) => Some(FramingError::NotFastCgi { guess, version }),
        Ok(None) if (0x20..=0x7e).contains(&version) => Some(FramingError::NotFastCgi {
            guess: PeerGuess::Other,
            version,
        }),
        Ok(None) => Some(FramingError::UnsupportedVersion(version)),
    }
}

impl ResponseDecoder {
    /// A decoder for the response to request `request_id` (nginx uses 1),
    /// on a connection on which nothing has been read yet.
    pub fn new(request_id: u16) -> Self {
        ResponseDecoder {
            request_id,
            state: State::Header,
            first_record: true,
            raw: 0,
            buffered: 0,
            partial_header: [0; HEADER_LEN],
            stdout_overhead: 0,
        }
    }

    /// A decoder for a further request on a kept-alive connection: the
    /// not-FastCGI guess is not made.
    pub fn new_on_reused_connection(request_id: u16) -> Self {
        ResponseDecoder {
            first_record: false,
            ..Self::new(request_id)
        }
    }

    pub fn request_id(&self) -> u16 {
        self.request_id
    }

    /// Bytes consumed from the input so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw
    }

    /// Whether any byte has been received: consumed, or waiting in the
    /// buffer as of the last `decode` call.
    pub fn saw_any_byte(&self) -> bool {
        self.raw > 0 || self.buffered > 0
    }

    /// END_REQUEST has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Record header and padding bytes of STDOUT records consumed since the
    /// last call, for [`CgiHeaderParser::feed`]'s `overhead` (STDERR and
    /// END_REQUEST records are not counted).
    ///
    /// [`CgiHeaderParser::feed`]: super::cgi::CgiHeaderParser::feed
    pub fn take_stdout_overhead(&mut self) -> usize {
        std::mem::take(&mut self.stdout_overhead)
    }

    fn fail(&mut self, e: FramingError) -> Result<Option<Frame>, FramingError> {
        self.state = State::Failed(e);
        Err(e)
    }

    fn consumed(&mut self, n: usize) {
        self.raw += n as u64;
    }

    /// Checks the header bytes available so far, in nginx's order.
    /// `Ok(false)`: need more bytes before deciding.
    fn check_header_prefix(&self, h: &[u8]) -> Result<bool, FramingError> {
        let Some(&version) = h.first() else {
            return Ok(true);
        };
        // "This document specifies FCGI_VERSION_1."
        if version != VERSION_1 {
            if !self.first_record {
                return Err(FramingError::UnsupportedVersion(version));
            }
            return match classify_first(&h[..h.len().min(HEADER_LEN)], false) {
                Some(e) => Err(e),
                None => Ok(false),
            };
        }
        if let Some(&t) = h.get(1) {
            match RecordType::from_u8(t) {
                RecordType::Stdout | RecordType::Stderr | RecordType::EndRequest => {}
                _ => return Err(FramingError::UnknownRecordType(t)),
            }
        }
        if let (Some(&hi), Some(&lo)) = (h.get(2), h.get(3)) {
            let id = u16::from_be_bytes([hi, lo]);
            if id != self.request_id {
                return Err(FramingError::UnexpectedRequestId(id));
            }
        }
        Ok(true)
    }

    /// Decodes the next frame from `buf`, advancing it past what was used.
    /// `Ok(None)`: more bytes are needed (or the decoder is done).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        loop {
            match self.state {
                State::Failed(e) => return Err(e),
                State::Done => return Ok(None),
                State::Header => {
                    match self.check_header_prefix(buf) {
                        Err(e) => return self.fail(e),
                        Ok(_) if buf.len() < HEADER_LEN => {
                            self.buffered = buf.len();
                            self.partial_header[..buf.len()].copy_from_slice(buf);
                            return Ok(None);
                        }
                        Ok(_) => {}
                    }
                    let b = &buf[..HEADER_LEN];
                    let rtype = b[1];
                    let content = u16::from_be_bytes([b[4], b[5]]) as usize;
                    let padding = b[6] as usize;
                    buf.advance(HEADER_LEN);
                    self.consumed(HEADER_LEN);
                    self.buffered = 0;
                    self.first_record = false;
                    let stream = match RecordType::from_u8(rtype) {
                        RecordType::Stdout => Stream::Stdout,
                        RecordType::Stderr => Stream::Stderr,
                        _ => {
                            // END_REQUEST (the only other type that passed the check).
                            if content != END_REQUEST_BODY_LEN {
                                return self.fail(FramingError::BadEndRequest);
                            }
                            self.state = State::EndBody { padding };
                            continue;
                        }
                    };
                    if stream == Stream::Stdout {
                        self.stdout_overhead += HEADER_LEN;
                    }
                    if content == 0 {
                        self.state = State::Padding {
                            stream,
                            remaining: padding,
                        };
                        return Ok(Some(match stream {
                            Stream::Stdout => Frame::StdoutEof,
                            Stream::Stderr => Frame::StderrEof,
                        }));
                    }
                    self.state = State::Content {
                        stream,
                        remaining: content,
                        padding,
                    };
                }
                State::Content {
                    stream,
                    remaining,
                    padding,
                } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(buf.len());
                    let data = buf.split_to(n).freeze();
                    self.consumed(n);
                    self.state = if n == remaining {
                        State::Padding {
                            stream,
                            remaining: padding,
                        }
                    } else {
                        State::Content {
                            stream,
                            remaining: remaining - n,
                            padding,
                        }
                    };
                    return Ok(Some(match stream {
                        Stream::Stdout => Frame::Stdout(data),
                        Stream::Stderr => Frame::Stderr(data),
                    }));
                }
                State::Padding { stream, remaining } => {
                    if remaining == 0 {
                        self.state = State::Header;
                        continue;
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(buf.len());
                    buf.advance(n);
                    self.consumed(n);
                    if stream == Stream::Stdout {
                        self.stdout_overhead += n;
                    }
                    self.state = State::Padding {
                        stream,
                        remaining: remaining - n,
                    };
                }
                State::EndBody { padding } => {
                    let need = END_REQUEST_BODY_LEN + padding;
                    if buf.len() < need {
                        self.buffered = buf.len();
                        return Ok(None);
                    }
                    let app_status = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let protocol_status = ProtocolStatus::from_u8(buf[4]);
                    buf.advance(need);
                    self.consumed(need);
                    self.buffered = 0;
                    self.state = State::Done;
                    return Ok(Some(Frame::End {
                        app_status,
                        protocol_status,
                    }));
                }
            }
        }
    }

    /// The peer closed the connection. Call after `decode` has returned
    /// `Ok(None)` for everything received. `Ok(())` at a record boundary
    /// (including before any byte and after END_REQUEST: whether the
    /// response was complete is the caller's decision), an error inside a
    /// record. A first record of fewer than 8 bytes that does not start
    /// with version 1 is still classified ([`FramingError::NotFastCgi`] or
    /// [`FramingError::UnsupportedVersion`]).
    pub fn eof(&self) -> Result<(), FramingError> {
        match self.state {
            State::Failed(e) => Err(e),
            State::Done => Ok(()),
            State::Header if self.buffered == 0 => Ok(()),
            State::Header => {
                let prefix = &self.partial_header[..self.buffered.min(HEADER_LEN)];
                if self.first_record && prefix.first() != Some(&VERSION_1) {
                    if let Some(e) = classify_first(prefix, true) {
                        return Err(e);
                    }
                }
                Err(FramingError::TruncatedRecord {
                    in_header: true,
                    missing: HEADER_LEN.saturating_sub(self.buffered),
                })
            }
            State::Content {
                remaining, padding, ..
            } => Err(FramingError::TruncatedRecord {
                in_header: false,
                missing: remaining + padding,
            }),
            State::Padding { remaining: 0, .. } => Ok(()),
            State::Padding { remaining, .. } => Err(FramingError::TruncatedRecord {
                in_header: false,
                missing: remaining,
            }),
            State::EndBody { padding } => Err(FramingError::TruncatedRecord {
                in_header: false,
                missing: (END_REQUEST_BODY_LEN + padding).saturating_sub(self.buffered),
            }),
        }
    }
}
