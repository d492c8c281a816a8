//! FastCGI 1.0 record layer: the 8-byte record header, record types, and the
//! encoders for the records a web server sends (BEGIN_REQUEST, PARAMS, STDIN,
//! ABORT_REQUEST).
//!
//! All encoders append to a caller-supplied [`BytesMut`] and reserve the exact
//! space they need up front, so encoding a request costs at most one
//! reallocation of `dst` and no intermediate buffers.
//!
//! ```text
//! typedef struct {
//!     unsigned char version;
//!     unsigned char type;
//!     unsigned char requestIdB1;
//!     unsigned char requestIdB0;
//!     unsigned char contentLengthB1;
//!     unsigned char contentLengthB0;
//!     unsigned char paddingLength;
//!     unsigned char reserved;
//! } FCGI_Header;
//! ```

use bytes::{BufMut, BytesMut};

/// `FCGI_VERSION_1`, the only protocol version there is.
pub const VERSION_1: u8 = 1;
/// Length of a record header (`FCGI_HEADER_LEN`).
pub const HEADER_LEN: usize = 8;
/// Largest content length a single record can carry.
pub const MAX_CONTENT_LEN: usize = u16::MAX as usize;
/// Largest STDIN record content nginx sends (32 KiB); a multiple of 8, so
/// full-size records need no padding.
pub const MAX_STDIN_CHUNK: usize = 32768;
/// Largest PARAMS record content this encoder writes: the biggest multiple of
/// 8 that fits in a record, so that only the last PARAMS record is padded.
pub const MAX_PARAMS_CHUNK: usize = 65528;

/// Role `FCGI_RESPONDER`.
pub const RESPONDER: u16 = 1;
/// Role `FCGI_AUTHORIZER`.
pub const AUTHORIZER: u16 = 2;
/// Role `FCGI_FILTER`.
pub const FILTER: u16 = 3;

/// BEGIN_REQUEST flag `FCGI_KEEP_CONN`: "If zero, the application closes the
/// connection after responding to this request. If not zero, the application
/// does not close the connection after responding to this request".
pub const KEEP_CONN: u8 = 1;

/// Zero bytes to copy padding from (padding is at most 7 bytes for records
/// written by this module).
pub const PADDING: [u8; 8] = [0; 8];

/// Record type byte.
///
/// `from_u8` never yields `Other(n)` for a value that has a named variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
    Other(u8),
}

impl RecordType {
    pub fn from_u8(b: u8) -> RecordType {
        match b {
            1 => RecordType::BeginRequest,
            2 => RecordType::AbortRequest,
            3 => RecordType::EndRequest,
            4 => RecordType::Params,
            5 => RecordType::Stdin,
            6 => RecordType::Stdout,
            7 => RecordType::Stderr,
            8 => RecordType::Data,
            9 => RecordType::GetValues,
            10 => RecordType::GetValuesResult,
            11 => RecordType::UnknownType,
            other => RecordType::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            RecordType::BeginRequest => 1,
            RecordType::AbortRequest => 2,
            RecordType::EndRequest => 3,
            RecordType::Params => 4,
            RecordType::Stdin => 5,
            RecordType::Stdout => 6,
            RecordType::Stderr => 7,
            RecordType::Data => 8,
            RecordType::GetValues => 9,
            RecordType::GetValuesResult => 10,
            RecordType::UnknownType => 11,
            RecordType::Other(b) => b,
        }
    }
}

/// END_REQUEST `protocolStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolStatus {
    /// `FCGI_REQUEST_COMPLETE` (0): normal end of request.
    RequestComplete,
    /// `FCGI_CANT_MPX_CONN` (1): rejecting a new request on a connection that
    /// is already busy (the application does not multiplex).
    CantMpxConn,
    /// `FCGI_OVERLOADED` (2): the application ran out of some resource.
    Overloaded,
    /// `FCGI_UNKNOWN_ROLE` (3): the role in BEGIN_REQUEST is not supported.
    UnknownRole,
    Other(u8),
}

impl ProtocolStatus {
    pub fn from_u8(b: u8) -> ProtocolStatus {
        match b {
            0 => ProtocolStatus::RequestComplete,
            1 => ProtocolStatus::CantMpxConn,
            2 => ProtocolStatus::Overloaded,
            3 => ProtocolStatus::UnknownRole,
            other => ProtocolStatus::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            ProtocolStatus::RequestComplete => 0,
            ProtocolStatus::CantMpxConn => 1,
            ProtocolStatus::Overloaded => 2,
            ProtocolStatus::UnknownRole => 3,
            ProtocolStatus::Other(b) => b,
        }
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub rtype: RecordType,
    pub request_id: u16,
    pub content_length: u16,
    pub padding_length: u8,
}

impl Header {
    /// A version-1 header for `rtype` whose padding rounds `content_length`
    /// up to a multiple of 8.
    pub fn new(rtype: RecordType, request_id: u16, content_length: u16) -> Header {
        Header {
            version: VERSION_1,
            rtype,
            request_id,
            content_length,
            padding_length: padding_for(content_length as usize),
        }
    }

    /// Parses the first 8 bytes of `src`; `None` if there are fewer than 8.
    /// Any 8 bytes parse: validating version, type and id is the caller's job.
    pub fn parse(src: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = src.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            version: h[0],
            rtype: RecordType::from_u8(h[1]),
            request_id: u16::from_be_bytes([h[2], h[3]]),
            content_length: u16::from_be_bytes([h[4], h[5]]),
            padding_length: h[6],
        })
    }

    /// Appends the 8 header bytes (reserved byte 0).
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.to_bytes());
    }

    /// The 8 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [
            self.version,
            self.rtype.as_u8(),
            id[0],
            id[1],
            len[0],
            len[1],
            self.padding_length,
            0,
        ]
    }

    /// Content plus padding: the bytes that follow this header.
    pub fn body_len(&self) -> usize {
        self.content_length as usize + self.padding_length as usize
    }
}

/// Padding that rounds `len` up to a multiple of 8 ("We recommend that
/// records be placed on boundaries that are multiples of eight bytes").
pub fn padding_for(len: usize) -> u8 {
    ((8 - (len % 8)) % 8) as u8
}

/// Bytes needed to encode `len` content bytes as records of at most `chunk`
/// bytes each, each padded to 8 (no terminating empty record).
fn stream_len(len: usize, chunk: usize) -> usize {
    let full = len / chunk;
    let rest = len % chunk;
    let mut total = full * (HEADER_LEN + chunk + padding_for(chunk) as usize);
    if rest > 0 {
        total += HEADER_LEN + rest + padding_for(rest) as usize;
    }
    total
}

/// Appends one record. `content` must be at most [`MAX_CONTENT_LEN`] bytes;
/// longer content is cut there (use the stream encoders to split instead).
pub fn encode_record(dst: &mut BytesMut, rtype: RecordType, request_id: u16, content: &[u8]) {
    let content = &content[..content.len().min(MAX_CONTENT_LEN)];
    let header = Header::new(rtype, request_id, content.len() as u16);
    dst.reserve(HEADER_LEN + header.body_len());
    header.encode(dst);
    dst.put_slice(content);
    dst.put_slice(&PADDING[..header.padding_length as usize]);
}

/// Appends `data` as records of `rtype`, at most `chunk` bytes each.
/// `chunk` must be a multiple of 8 no larger than [`MAX_CONTENT_LEN`].
fn encode_stream(
    dst: &mut BytesMut,
    rtype: RecordType,
    request_id: u16,
    data: &[u8],
    chunk: usize,
) {
    dst.reserve(stream_len(data.len(), chunk));
    for part in data.chunks(chunk) {
        let header = Header::new(rtype, request_id, part.len() as u16);
        header.encode(dst);
        dst.put_slice(part);
        dst.put_slice(&PADDING[..header.padding_length as usize]);
    }
}

/// Appends a BEGIN_REQUEST record:
///
/// ```text
/// typedef struct {
///     unsigned char roleB1;
///     unsigned char roleB0;
///     unsigned char flags;
///     unsigned char reserved[5];
/// } FCGI_BeginRequestBody;
/// ```
pub fn encode_begin_request(dst: &mut BytesMut, request_id: u16, role: u16, keep_conn: bool) {
    let role = role.to_be_bytes();
    let flags = if keep_conn { KEEP_CONN } else { 0 };
    let body = [role[0], role[1], flags, 0, 0, 0, 0, 0];
    encode_record(dst, RecordType::BeginRequest, request_id, &body);
}

/// Appends an ABORT_REQUEST record (no content).
pub fn encode_abort_request(dst: &mut BytesMut, request_id: u16) {
    encode_record(dst, RecordType::AbortRequest, request_id, &[]);
}

/// Appends the whole PARAMS stream: `params` (already name-value encoded,
/// see [`crate::fastcgi::params::encode_pair`]) split into records of at most
/// [`MAX_PARAMS_CHUNK`] bytes, each padded to a multiple of 8, followed by
/// the empty PARAMS record that ends the stream. A name-value pair may span
/// two records: the spec defines a stream as the concatenation of its
/// records' contents.
pub fn encode_params(dst: &mut BytesMut, request_id: u16, params: &[u8]) {
    dst.reserve(stream_len(params.len(), MAX_PARAMS_CHUNK) + HEADER_LEN);
    encode_stream(
        dst,
        RecordType::Params,
        request_id,
        params,
        MAX_PARAMS_CHUNK,
    );
    encode_record(dst, RecordType::Params, request_id, &[]);
}

/// Starts a PARAMS stream whose pairs the caller appends to `dst` in place
/// (see [`crate::fastcgi::params::start_pair`]): reserves the first record's
/// header and returns its offset for [`finish_params`]. This saves building
/// the pairs in a buffer of their own and copying them into records.
pub fn start_params(dst: &mut BytesMut) -> usize {
    let at = dst.len();
    dst.extend_from_slice(&[0; HEADER_LEN]);
    at
}

/// Ends a PARAMS stream begun with [`start_params`] at `at`: everything
/// appended since is the stream's content. Writes the record header and
/// padding, and the empty record that ends the stream; content longer than
/// [`MAX_PARAMS_CHUNK`] is split into records as [`encode_params`] does.
pub fn finish_params(dst: &mut BytesMut, request_id: u16, at: usize) {
    let len = dst.len() - at - HEADER_LEN;
    if len == 0 || len > MAX_PARAMS_CHUNK {
        // No params: only the empty record that ends the stream (an empty
        // record first would end it). Over one record: split.
        let params = dst.split_off(at + HEADER_LEN);
        dst.truncate(at);
        encode_params(dst, request_id, &params);
        return;
    }
    let header = Header::new(RecordType::Params, request_id, len as u16);
    dst[at..at + HEADER_LEN].copy_from_slice(&header.to_bytes());
    dst.put_slice(&PADDING[..header.padding_length as usize]);
    encode_record(dst, RecordType::Params, request_id, &[]);
}

/// Appends `data` as STDIN records of at most [`MAX_STDIN_CHUNK`] bytes,
/// each padded to a multiple of 8, as nginx does. Empty `data` writes
/// nothing (an empty STDIN record would end the stream: that is
/// [`encode_stdin_end`]'s job).
///
/// This copies `data` into `dst`; for large bodies see
/// [`encode_stdin_header`].
pub fn encode_stdin(dst: &mut BytesMut, request_id: u16, data: &[u8]) {
    encode_stream(dst, RecordType::Stdin, request_id, data, MAX_STDIN_CHUNK);
}

/// Appends the empty STDIN record that ends the request body.
pub fn encode_stdin_end(dst: &mut BytesMut, request_id: u16) {
    encode_record(dst, RecordType::Stdin, request_id, &[]);
}

/// Appends only the header of a STDIN record carrying `len` bytes (`len` is
/// cut to [`MAX_STDIN_CHUNK`]) and returns the padding length the caller must
/// write after the payload, for writing a large body without copying it:
///
/// ```
/// # use bytes::{Bytes, BytesMut};
/// # use why502::fastcgi::record::{encode_stdin_header, MAX_STDIN_CHUNK, PADDING};
/// let body = Bytes::from(vec![b'x'; 40_000]);
/// let mut rest = body.clone();
/// let mut wire: Vec<Bytes> = Vec::new(); // e.g. the slices of a vectored write
/// while !rest.is_empty() {
///     let chunk = rest.split_to(rest.len().min(MAX_STDIN_CHUNK));
///     let mut head = BytesMut::new();
///     let pad = encode_stdin_header(&mut head, 1, chunk.len());
///     wire.push(head.freeze());
///     wire.push(chunk); // shares `body`'s memory
///     wire.push(Bytes::from_static(&PADDING[..pad]));
/// }
/// assert_eq!(wire.iter().map(|b| b.len()).sum::<usize>(), 8 + 32768 + 8 + 7232);
/// ```
pub fn encode_stdin_header(dst: &mut BytesMut, request_id: u16, len: usize) -> usize {
    let len = len.min(MAX_STDIN_CHUNK);
    let header = Header::new(RecordType::Stdin, request_id, len as u16);
    header.encode(dst);
    header.padding_length as usize
}
