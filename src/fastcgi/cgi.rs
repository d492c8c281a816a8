//! Streaming parser for the CGI response header block at the start of a
//! FastCGI responder's STDOUT, with nginx's semantics.
//!
//! This is a small hand-written byte state machine modelled on nginx's
//! `ngx_http_parse_header_line`, not `httparse::parse_headers`: httparse
//! rejects some header names nginx passes through (it requires RFC 7230
//! tokens), and it reports only *that* a header is bad, while nginx's log
//! message needs the line up to the exact offending byte. The state machine
//! is resumable, so each byte is examined once however the block is split
//! across records.
//!
//! Rules (nginx 1.22, plus why502's stricter diagnosis where noted):
//! - Lines end in CRLF or a bare LF; the block ends with an empty line.
//!   A CR not followed by LF is an invalid header (bad byte `\x0d`).
//! - A line may not start with a space, tab or `:` (no obs-fold, no empty
//!   name); a name may not contain bytes <= 0x20 or 0x7f; other bytes pass
//!   through, case preserved.
//! - A line with no colon is an invalid header (the bad byte is its line
//!   terminator). nginx would accept it as a header with an empty value.
//! - Spaces and tabs around a value are trimmed; control bytes other than tab
//!   (and DEL) inside a value are an invalid header.
//! - `Status:` (case-insensitive, first one wins, all are removed from the
//!   headers): its first 3 bytes must be digits giving 100..=999, else
//!   invalid status; the rest, trimmed, is the reason. Without Status, a
//!   `Location` header gives 302, otherwise 200.
//! - The whole block, including FastCGI record headers and padding (the
//!   `overhead` passed to [`CgiHeaderParser::feed`]), must fit in `limit`
//!   bytes (`fastcgi_buffer_size`), else too big header.
//! - why502 only: a first line that is PHP output rather than a header
//!   (`display_errors` output, or HTML) is reported as
//!   [`CgiError::OutputBeforeHeaders`] instead of an invalid or too big
//!   header. See [`CgiHeaderParser`] for the exact patterns.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Where the response status came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusSource {
    /// A `Status:` header.
    Explicit,
    /// No Status, but a `Location` header: 302.
    LocationRedirect,
    /// Neither: 200.
    Default,
}

/// A parsed CGI header block.
#[derive(Clone, PartialEq, Eq)]
pub struct CgiHead {
    pub status: u16,
    /// The reason phrase after the code in `Status:`, if any. `None` for
    /// [`StatusSource::LocationRedirect`] and [`StatusSource::Default`]
    /// (nginx then sends "302 Moved Temporarily" / "200 OK").
    pub reason: Option<String>,
    /// Headers in order, duplicates kept, names as sent, without `Status`.
    /// Names and values are slices of the received bytes (values trimmed).
    pub headers: Vec<(Bytes, Bytes)>,
    pub status_from: StatusSource,
}

impl fmt::Debug for CgiHead {
    /// Header values are left out: only names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CgiHead")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| String::from_utf8_lossy(n))
                    .collect::<Vec<_>>(),
            )
            .field("status_from", &self.status_from)
            .finish()
    }
}

/// Why the header block was rejected.
#[derive(Clone, PartialEq, Eq)]
pub enum CgiError {
    /// `line` is the header line from its start up to and including
    /// `bad_byte`, the first byte nginx would reject.
    InvalidHeader { line: Vec<u8>, bad_byte: u8 },
    /// The whole value of the `Status` header.
    InvalidStatus(String),
    /// The block did not end within the limit.
    TooBig,
    /// The response starts with PHP output (error messages or HTML) instead
    /// of headers. `excerpt`: at most 200 characters of it, control bytes
    /// escaped.
    OutputBeforeHeaders { excerpt: String },
}

/// Appends `bytes` as text: invalid UTF-8 replaced, control bytes escaped
/// (`\n`, `\r`, `\t`, `\xNN`), at most `max_chars` characters in all.
fn push_escaped(out: &mut String, bytes: &[u8], max_chars: usize) {
    let mut n = 0;
    let mut tmp = [0u8; 4];
    for ch in String::from_utf8_lossy(bytes).chars() {
        let esc = match ch {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("\\x{:02x}", c as u32),
            c => c.encode_utf8(&mut tmp).to_string(),
        };
        let len = esc.chars().count();
        if n + len > max_chars {
            break;
        }
        out.push_str(&esc);
        n += len;
    }
}

impl CgiError {
    /// The message nginx logs for this error (without the `while ...`
    /// phase suffix). For [`CgiError::OutputBeforeHeaders`], which nginx
    /// does not distinguish, why502's own wording in nginx's style.
    pub fn nginx_message(&self) -> String {
        match self {
            CgiError::InvalidHeader { line, bad_byte } => {
                // "upstream sent invalid header: \"%*s\\x%02xd...\""
                let prefix = &line[..line.len().saturating_sub(1)];
                format!(
                    "upstream sent invalid header: \"{}\\x{:02x}...\"",
                    String::from_utf8_lossy(prefix),
                    bad_byte
                )
            }
            CgiError::InvalidStatus(s) => format!("upstream sent invalid status \"{s}\""),
            CgiError::TooBig => "upstream sent too big header".into(),
            CgiError::OutputBeforeHeaders { excerpt } => {
                format!("upstream sent output before FastCGI response headers: \"{excerpt}\"")
            }
        }
    }
}

impl fmt::Debug for CgiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgiError::InvalidHeader { line, bad_byte } => {
                let mut s = String::new();
                push_escaped(&mut s, line, 200);
                f.debug_struct("InvalidHeader")
                    .field("line", &s)
                    .field("bad_byte", &format_args!("{bad_byte:#04x}"))
                    .finish()
            }
            CgiError::InvalidStatus(s) => f.debug_tuple("InvalidStatus").field(s).finish(),
            CgiError::TooBig => f.write_str("TooBig"),
            CgiError::OutputBeforeHeaders { excerpt } => f
                .debug_struct("OutputBeforeHeaders")
                .field("excerpt", excerpt)
                .finish(),
        }
    }
}

impl fmt::Display for CgiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgiError::InvalidHeader { line, bad_byte } => {
                let mut s = String::new();
                push_escaped(&mut s, line, 200);
                write!(f, "invalid CGI header line \"{s}\" (byte {bad_byte:#04x})")
            }
            CgiError::InvalidStatus(s) => write!(f, "invalid CGI Status \"{s}\""),
            CgiError::TooBig => f.write_str("CGI header block too big"),
            CgiError::OutputBeforeHeaders { excerpt } => {
                write!(f, "PHP output before the CGI headers: \"{excerpt}\"")
            }
        }
    }
}

impl std::error::Error for CgiError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineState {
    /// At the start of a line.
    Start,
    Name,
    SpaceBeforeValue,
    Value,
    /// After a CR inside a header line.
    Cr,
    /// After a CR that started an (empty) line.
    BlankCr,
}

#[derive(Clone, Copy, Debug)]
struct LineSpan {
    name: (usize, usize),
    value: (usize, usize),
}

fn is_ctl(c: u8) -> bool {
    (c < 0x20 && c != b'\t') || c == 0x7f
}

/// Resumable scan over the buffered block; offsets are from its start.
#[derive(Clone, Debug)]
struct Scanner {
    pos: usize,
    state: LineState,
    line_start: usize,
    name_end: usize,
    value_start: usize,
    value_end: usize,
    /// On the stack for the usual handful of header lines.
    lines: smallvec::SmallVec<[LineSpan; 8]>,
}

impl Scanner {
    fn finish_line(&mut self) {
        self.lines.push(LineSpan {
            name: (self.line_start, self.name_end),
            value: (self.value_start, self.value_end),
        });
        self.state = LineState::Start;
        self.line_start = self.pos + 1;
    }

    /// `Ok(Some(end))`: the block ends before offset `end`. `Err(pos)`: the
    /// byte at `pos` is invalid.
    fn scan(&mut self, b: &[u8]) -> Result<Option<usize>, usize> {
        while let Some(&c) = b.get(self.pos) {
            match self.state {
                LineState::Start => match c {
                    b'\n' => return Ok(Some(self.pos + 1)),
                    b'\r' => self.state = LineState::BlankCr,
                    c if c == b':' || c <= 0x20 || c == 0x7f => return Err(self.pos),
                    _ => self.state = LineState::Name,
                },
                LineState::Name => match c {
                    b':' => {
                        self.name_end = self.pos;
                        self.state = LineState::SpaceBeforeValue;
                    }
                    // Includes CR and LF: a line without a colon.
                    c if c <= 0x20 || c == 0x7f => return Err(self.pos),
                    // The rest of the name in one run, to the byte that ends it.
                    _ => {
                        let rest = &b[self.pos + 1..];
                        self.pos += rest
                            .iter()
                            .position(|&c| c == b':' || c <= 0x20 || c == 0x7f)
                            .unwrap_or(rest.len());
                    }
                },
                LineState::SpaceBeforeValue => match c {
                    b' ' | b'\t' => {}
                    b'\r' => {
                        (self.value_start, self.value_end) = (self.pos, self.pos);
                        self.state = LineState::Cr;
                    }
                    b'\n' => {
                        (self.value_start, self.value_end) = (self.pos, self.pos);
                        self.finish_line();
                    }
                    c if is_ctl(c) => return Err(self.pos),
                    _ => {
                        (self.value_start, self.value_end) = (self.pos, self.pos + 1);
                        self.state = LineState::Value;
                    }
                },
                LineState::Value => match c {
                    b'\r' => self.state = LineState::Cr,
                    b'\n' => self.finish_line(),
                    c if is_ctl(c) => return Err(self.pos),
                    // The run up to the next control byte (CR, LF or an
                    // invalid one) in one step; the value ends after its
                    // last byte that is not a space or tab.
                    _ => {
                        let rest = &b[self.pos..];
                        let run = rest.iter().position(|&c| is_ctl(c)).unwrap_or(rest.len());
                        if let Some(last) =
                            rest[..run].iter().rposition(|&c| c != b' ' && c != b'\t')
                        {
                            self.value_end = self.pos + last + 1;
                        }
                        self.pos += run - 1;
                    }
                },
                LineState::Cr => {
                    if c != b'\n' {
                        return Err(self.pos - 1);
                    }
                    self.finish_line();
                }
                LineState::BlankCr => {
                    if c != b'\n' {
                        return Err(self.pos - 1);
                    }
                    return Ok(Some(self.pos + 1));
                }
            }
            self.pos += 1;
        }
        Ok(None)
    }
}

/// Beginnings of PHP output (display_errors) that are never a header line.
const OUTPUT_PREFIXES: [&[u8]; 3] = [b"PHP ", b"Fatal error:", b"Parse error:"];
/// Beginnings of PHP messages that are also valid header syntax; as a first
/// line they count as output only if the line has PHP's " on line ".
const MESSAGE_PREFIXES: [&[u8]; 3] = [b"Warning:", b"Notice:", b"Deprecated:"];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether the first line `line` (complete or not) is PHP output. With
/// `strict`, Warning/Notice/Deprecated also need " on line ".
fn first_line_is_output(line: &[u8], strict: bool) -> bool {
    line.first() == Some(&b'<')
        || OUTPUT_PREFIXES.iter().any(|p| line.starts_with(p))
        || MESSAGE_PREFIXES
            .iter()
            .any(|p| line.starts_with(p) && (!strict || contains(line, b" on line ")))
}

/// After a blank first line: `Some(true)` output, `Some(false)` body,
/// `None` need more bytes.
fn after_blank_is_output(after: &[u8]) -> Option<bool> {
    let patterns = [
        &b"<"[..],
        b"PHP ",
        b"Warning: ",
        b"Notice: ",
        b"Deprecated: ",
        b"Fatal error: ",
        b"Parse error: ",
    ];
    if patterns.iter().any(|p| after.starts_with(p)) {
        Some(true)
    } else if patterns.iter().any(|p| p.starts_with(after)) {
        None
    } else {
        Some(false)
    }
}

fn output_error(output: &[u8]) -> CgiError {
    let mut excerpt = String::new();
    push_escaped(
        &mut excerpt,
        &output[..output.len().min(EXCERPT_BYTES)],
        200,
    );
    CgiError::OutputBeforeHeaders { excerpt }
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn build_head(block: &Bytes, lines: &[LineSpan]) -> Result<CgiHead, CgiError> {
    let mut status: Option<(u16, Option<String>)> = None;
    let mut location = false;
    let mut headers = Vec::with_capacity(lines.len());
    for l in lines {
        let name = block.slice(l.name.0..l.name.1);
        let value = block.slice(l.value.0..l.value.1);
        if name.eq_ignore_ascii_case(b"status") {
            if status.is_none() {
                status = Some(parse_status(&value)?);
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"location") {
            location = true;
        }
        headers.push((name, value));
    }
    let (status, reason, status_from) = match status {
        Some((code, reason)) => (code, reason, StatusSource::Explicit),
        None if location => (302, None, StatusSource::LocationRedirect),
        None => (200, None, StatusSource::Default),
    };
    Ok(CgiHead {
        status,
        reason,
        headers,
        status_from,
    })
}

/// nginx: `status = ngx_atoi(status_line->data, 3)`, error unless 3 digits.
fn parse_status(value: &[u8]) -> Result<(u16, Option<String>), CgiError> {
    let invalid = || CgiError::InvalidStatus(String::from_utf8_lossy(value).into_owned());
    let code = match value {
        [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            (*a - b'0') as u16 * 100 + (*b - b'0') as u16 * 10 + (*c - b'0') as u16
        }
        _ => return Err(invalid()),
    };
    if code < 100 {
        return Err(invalid());
    }
    let reason = trim(&value[3..]);
    let reason = (!reason.is_empty()).then(|| String::from_utf8_lossy(reason).into_owned());
    Ok((code, reason))
}

/// Streaming CGI header block parser. Feed it STDOUT content as it is
/// decoded; it returns the head and the body bytes that followed the block
/// in the same feed (a zero-copy slice when the block arrived in one piece).
/// When STDOUT ends (empty STDOUT record, END_REQUEST or EOF) before `feed`
/// returned a head, call [`finish`](CgiHeaderParser::finish).
///
/// PHP output detection (why502's addition): the response is
/// [`CgiError::OutputBeforeHeaders`] if
/// - the first line starts with `<`, `PHP `, `Fatal error:` or
///   `Parse error:`; or starts with `Warning:`, `Notice:` or `Deprecated:`
///   and contains " on line " (PHP's message format; a real `Warning`
///   header does not);
/// - or the first line is empty (zero headers) and what follows starts
///   with `<` or one of those prefixes followed by a space, as PHP's
///   `display_errors` output does (`"\n<br />\n<b>Warning</b>: ..."`).
///   To tell, the parser waits for up to 13 bytes after such a blank first
///   line.
///
/// Once output is recognised, the parser collects 200 bytes of it (or
/// until `limit`, or [`finish`](CgiHeaderParser::finish)) for the excerpt,
/// so the excerpt does not depend on how the output was split.
#[derive(Debug)]
pub struct CgiHeaderParser {
    limit: usize,
    buf: BytesMut,
    content: usize,
    overhead: usize,
    scanner: Scanner,
    /// The first line has been classified as header or output.
    first_checked: bool,
    /// Offset where recognised PHP output starts; collecting the excerpt.
    output_start: Option<usize>,
    /// Set once a blank first line ended the block, while waiting for the
    /// bytes that tell body from PHP output.
    blank_end: Option<usize>,
    finished: bool,
}

/// Raw bytes of output collected for the excerpt.
const EXCERPT_BYTES: usize = 200;

/// `line` (the incomplete first line) could still grow into one of the
/// output prefixes.
fn could_become_output(line: &[u8]) -> bool {
    OUTPUT_PREFIXES
        .iter()
        .chain(MESSAGE_PREFIXES.iter())
        .any(|p| p.len() > line.len() && p.starts_with(line))
}

impl CgiHeaderParser {
    /// `limit`: nginx's `fastcgi_buffer_size` (default 4096).
    pub fn new(limit: usize) -> Self {
        CgiHeaderParser {
            limit,
            buf: BytesMut::new(),
            content: 0,
            overhead: 0,
            scanner: Scanner {
                pos: 0,
                state: LineState::Start,
                line_start: 0,
                name_end: 0,
                value_start: 0,
                value_end: 0,
                lines: smallvec::SmallVec::new(),
            },
            first_checked: false,
            output_start: None,
            blank_end: None,
            finished: false,
        }
    }

    /// Content and overhead bytes counted against the limit so far.
    pub fn counted(&self) -> usize {
        self.content + self.overhead
    }

    /// Feeds STDOUT content plus the record overhead (header and padding
    /// bytes) it cost, e.g. from
    /// [`ResponseDecoder::take_stdout_overhead`](super::decoder::ResponseDecoder::take_stdout_overhead).
    /// STDERR records are not counted. `Ok(None)`: the block is not complete
    /// yet. Once this (or `finish`) has returned a head or an error, further
    /// calls return `Ok(None)` and ignore their input.
    pub fn feed(
        &mut self,
        data: Bytes,
        overhead: usize,
    ) -> Result<Option<(CgiHead, Bytes)>, CgiError> {
        if self.finished {
            return Ok(None);
        }
        let r = self.feed_inner(data, overhead);
        if !matches!(r, Ok(None)) {
            self.finished = true;
            self.buf = BytesMut::new();
        }
        r
    }

    /// STDOUT ended before `feed` returned a head. `Err(OutputBeforeHeaders)`
    /// if the output so far is PHP output; `Ok(Some(..))` if the block had
    /// ended with a blank first line (zero headers) and the parser was still
    /// waiting to tell body from output; `Ok(None)` if the block is
    /// incomplete (nginx: "upstream prematurely closed FastCGI stdout").
    pub fn finish(&mut self) -> Result<Option<(CgiHead, Bytes)>, CgiError> {
        if self.finished {
            return Ok(None);
        }
        self.finished = true;
        let buf = std::mem::take(&mut self.buf).freeze();
        if let Some(start) = self.output_start {
            return Err(output_error(&buf[start..]));
        }
        if let Some(end) = self.blank_end {
            let head = build_head(&buf, &self.scanner.lines)?;
            return Ok(Some((head, buf.slice(end..))));
        }
        if self.scanner.lines.is_empty() && first_line_is_output(&buf, false) {
            return Err(output_error(&buf));
        }
        Ok(None)
    }

    fn feed_inner(
        &mut self,
        data: Bytes,
        overhead: usize,
    ) -> Result<Option<(CgiHead, Bytes)>, CgiError> {
        self.content += data.len();
        self.overhead += overhead;
        let full = self.content + self.overhead >= self.limit;
        // Fast path: nothing pending, work on `data` itself.
        let fast = self.buf.is_empty();
        if !fast {
            self.buf.extend_from_slice(&data);
        }
        let bytes: &[u8] = if fast { &data } else { &self.buf };

        // What to do after this feed, decided below.
        enum Next {
            Wait,
            Output(usize),
            Complete(usize),
        }
        let next = if let Some(start) = self.output_start {
            Next::Output(start)
        } else if let Some(end) = self.blank_end {
            Next::Complete(end)
        } else {
            let scanned = self.scanner.scan(bytes);
            let mut output = false;
            let mut wait_for_output = false;
            if !self.first_checked {
                if let Some(first) = self.scanner.lines.first() {
                    self.first_checked = true;
                    output = first_line_is_output(&bytes[..first.value.1], true);
                } else if bytes.first() == Some(&b'<') {
                    output = true;
                } else if scanned.is_err() || full {
                    output = first_line_is_output(bytes, false);
                    wait_for_output = !output && !full && could_become_output(bytes);
                }
            }
            if output {
                Next::Output(0)
            } else if wait_for_output {
                Next::Wait
            } else {
                match scanned {
                    Err(bad) => {
                        let start = self.scanner.line_start;
                        return Err(CgiError::InvalidHeader {
                            line: bytes[start..=bad].to_vec(),
                            bad_byte: bytes[bad],
                        });
                    }
                    Ok(None) if full => return Err(CgiError::TooBig),
                    Ok(None) => Next::Wait,
                    Ok(Some(end)) if end + self.overhead > self.limit => {
                        return Err(CgiError::TooBig)
                    }
                    Ok(Some(end)) => Next::Complete(end),
                }
            }
        };
        let next = match next {
            Next::Complete(end) if self.scanner.lines.is_empty() => {
                match after_blank_is_output(&bytes[end..]) {
                    Some(true) => Next::Output(end),
                    Some(false) => Next::Complete(end),
                    None => {
                        self.blank_end = Some(end);
                        Next::Wait
                    }
                }
            }
            other => other,
        };
        match next {
            Next::Output(start) => {
                if bytes.len() - start >= EXCERPT_BYTES || full {
                    return Err(output_error(&bytes[start..]));
                }
                self.output_start = Some(start);
            }
            Next::Wait => {}
            Next::Complete(end) => {
                let block = if fast {
                    data
                } else {
                    self.buf.split().freeze()
                };
                let head = build_head(&block, &self.scanner.lines)?;
                return Ok(Some((head, block.slice(end..))));
            }
        }
        if fast {
            self.buf.extend_from_slice(&data);
        }
        Ok(None)
    }
}
