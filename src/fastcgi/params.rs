//! FastCGI name-value pairs, the content of the PARAMS stream.
//!
//! "FastCGI transmits a name-value pair as the length of the name, followed
//! by the length of the value, followed by the name, followed by the value.
//! Lengths of 127 bytes and less can be encoded in one byte, while longer
//! lengths are always encoded in four bytes". A four-byte length has its
//! high bit set, leaving 31 bits for the length.

use std::fmt;

use bytes::{BufMut, BytesMut};

/// Largest name or value length the 4-byte encoding can express (2^31 - 1).
pub const MAX_PAIR_LEN: usize = 0x7fff_ffff;

/// Why a PARAMS stream could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamsError {
    /// The stream ends inside a length field that starts at `offset`.
    TruncatedLength { offset: usize },
    /// The stream ends inside the name or value of the pair that starts at
    /// `offset`.
    TruncatedData { offset: usize },
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamsError::TruncatedLength { offset } => {
                write!(
                    f,
                    "FastCGI params truncated in a length field at offset {offset}"
                )
            }
            ParamsError::TruncatedData { offset } => {
                write!(f, "FastCGI params truncated in the pair at offset {offset}")
            }
        }
    }
}

impl std::error::Error for ParamsError {}

fn length_len(len: usize) -> usize {
    if len < 128 {
        1
    } else {
        4
    }
}

fn put_length(dst: &mut BytesMut, len: usize) {
    if len < 128 {
        dst.put_u8(len as u8);
    } else {
        dst.put_u32(len as u32 | 0x8000_0000);
    }
}

/// Encoded size of one pair (after the [`MAX_PAIR_LEN`] cut).
pub fn pair_len(name: &[u8], value: &[u8]) -> usize {
    let n = name.len().min(MAX_PAIR_LEN);
    let v = value.len().min(MAX_PAIR_LEN);
    length_len(n) + length_len(v) + n + v
}

/// Appends one name-value pair. Empty values are encoded (nginx sends them).
///
/// A name or value longer than [`MAX_PAIR_LEN`] (2 GiB) cannot be expressed
/// and is cut to that length, so the stream stays well-formed; HTTP header
/// limits keep real input far below it.
pub fn encode_pair(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    let name = &name[..name.len().min(MAX_PAIR_LEN)];
    let value = &value[..value.len().min(MAX_PAIR_LEN)];
    dst.reserve(pair_len(name, value));
    if name.len() < 128 && value.len() < 128 {
        // Nearly every pair: both lengths in one two-byte write.
        dst.extend_from_slice(&[name.len() as u8, value.len() as u8]);
    } else {
        put_length(dst, name.len());
        put_length(dst, value.len());
    }
    dst.extend_from_slice(name);
    dst.extend_from_slice(value);
}

/// Where a pair begun with [`start_pair`] keeps its value length.
#[derive(Clone, Copy, Debug)]
pub struct PairMark {
    /// Offset of the pair's first byte (for [`cancel_pair`]).
    start: usize,
    /// Offset of the value length, written as one byte until the value is
    /// known.
    len_at: usize,
    /// Offset of the value's first byte.
    value_at: usize,
}

/// The start of a pair whose value is written in place: the name's length,
/// a one-byte placeholder for the value's, and the name. A param's name is
/// known when the config is read, so this is made once per param.
pub fn pair_head(name: &[u8]) -> Vec<u8> {
    let name = &name[..name.len().min(MAX_PAIR_LEN)];
    let mut b = BytesMut::with_capacity(length_len(name.len()) + 1 + name.len());
    put_length(&mut b, name.len());
    b.put_u8(0);
    b.extend_from_slice(name);
    b.to_vec()
}

/// Starts a pair from its [`pair_head`]; the caller then appends the value
/// to `dst` itself (so a value made from variables is written once, in
/// place, not built elsewhere and copied), and [`finish_pair`] writes its
/// length.
pub fn start_pair(dst: &mut BytesMut, head: &[u8]) -> PairMark {
    let start = dst.len();
    dst.extend_from_slice(head);
    // The value's length follows the name's (one byte, or four).
    let len_at = start
        + if head.first().is_some_and(|b| b & 0x80 != 0) {
            4
        } else {
            1
        };
    PairMark {
        start,
        len_at,
        value_at: dst.len(),
    }
}

/// Ends a pair begun with [`start_pair`]: what was appended since is its
/// value. A value of 128 bytes or more takes the four-byte length (the bytes
/// after the length move up by three); one longer than [`MAX_PAIR_LEN`] is
/// cut there, as in [`encode_pair`].
pub fn finish_pair(dst: &mut BytesMut, mark: PairMark) {
    let len = dst.len() - mark.value_at;
    if len < 128 {
        dst[mark.len_at] = len as u8;
        return;
    }
    let len = len.min(MAX_PAIR_LEN);
    dst.truncate(mark.value_at + len);
    let end = dst.len();
    dst.extend_from_slice(&[0; 3]);
    dst.copy_within(mark.len_at + 1..end, mark.len_at + 4);
    dst[mark.len_at..mark.len_at + 4].copy_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
}

/// The length of the value appended since [`start_pair`].
pub fn value_len(dst: &BytesMut, mark: PairMark) -> usize {
    dst.len() - mark.value_at
}

/// Takes back a pair begun with [`start_pair`] (a param sent only if not
/// empty).
pub fn cancel_pair(dst: &mut BytesMut, mark: PairMark) {
    dst.truncate(mark.start);
}

fn read_length(src: &[u8], pos: &mut usize) -> Result<usize, ParamsError> {
    let offset = *pos;
    let first = *src
        .get(offset)
        .ok_or(ParamsError::TruncatedLength { offset })?;
    if first & 0x80 == 0 {
        *pos += 1;
        return Ok(first as usize);
    }
    let b = src
        .get(offset..offset + 4)
        .ok_or(ParamsError::TruncatedLength { offset })?;
    *pos += 4;
    Ok((u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff) as usize)
}

/// One decoded `(name, value)` pair, borrowing the input.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Decodes a whole PARAMS stream (the concatenated contents of its records)
/// into `(name, value)` slices, in order.
pub fn decode_pairs(src: &[u8]) -> Result<Vec<Pair<'_>>, ParamsError> {
    let mut pairs = Vec::new();
    let mut pos = 0;
    while pos < src.len() {
        let start = pos;
        let name_len = read_length(src, &mut pos)?;
        let value_len = read_length(src, &mut pos)?;
        let truncated = ParamsError::TruncatedData { offset: start };
        let name_end = pos.checked_add(name_len).ok_or(truncated)?;
        let value_end = name_end.checked_add(value_len).ok_or(truncated)?;
        let name = src.get(pos..name_end).ok_or(truncated)?;
        let value = src.get(name_end..value_end).ok_or(truncated)?;
        pairs.push((name, value));
        pos = value_end;
    }
    Ok(pairs)
}
