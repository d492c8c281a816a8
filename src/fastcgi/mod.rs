//! FastCGI codec: the bytes between why502 and PHP-FPM, with no I/O and no
//! proxy-framework types.
//!
//! - [`record`]: FastCGI 1.0 record headers and the request-side encoders
//!   (BEGIN_REQUEST, PARAMS, STDIN, ABORT_REQUEST).
//! - [`params`]: name-value pair encoding for the PARAMS stream.
//! - [`decoder`]: sans-IO streaming decoder of the response records (STDOUT,
//!   STDERR, END_REQUEST), zero-copy, with nginx's framing checks and
//!   detection of peers that are not FastCGI at all.
//! - [`cgi`]: streaming parser of the CGI header block at the start of
//!   STDOUT, with nginx's semantics and limits.
//!
//! Every error type has a `nginx_message()` giving nginx's error-log wording,
//! so the proxy can log what nginx would have logged next to its own cause.
//! No input makes any of these panic: every byte sequence gives
//! "need more", a value, or an error.

pub mod cgi;
pub mod decoder;
pub mod params;
pub mod record;

#[cfg(test)]
mod tests;

pub use cgi::{CgiError, CgiHead, CgiHeaderParser, StatusSource};
pub use decoder::{Frame, FramingError, PeerGuess, ResponseDecoder};
pub use params::{decode_pairs, encode_pair, ParamsError};
pub use record::{
    encode_abort_request, encode_begin_request, encode_params, encode_stdin, encode_stdin_end,
    encode_stdin_header, Header, ProtocolStatus, RecordType, HEADER_LEN, KEEP_CONN,
    MAX_STDIN_CHUNK, RESPONDER, VERSION_1,
};
