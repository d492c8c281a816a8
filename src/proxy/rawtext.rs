//! Request paths that are not UTF-8, carried in `String`s without loss.
//!
//! nginx works on the decoded URI as bytes: `/caf%E9.php` (Latin-1) or a
//! raw `\xE9` in the request line is routed, matched, passed to PHP and
//! logged like any other path. why502's router, variables and templates are
//! text, so each byte of the decoded path that is not part of valid UTF-8 is
//! carried as one private-use character, U+10FF80 + (byte − 0x80), and turned
//! back into that byte where the path leaves why502: FastCGI params, file
//! names, response headers, access-log lines.
//!
//! The mapping is exact both ways. A path that really holds one of those 128
//! characters (valid UTF-8 `F4 8F BE 80` … `F4 8F BF BF`) has each of its
//! four bytes carried the same way, so it comes back as those bytes too.
//! Matching differs from nginx's PCRE only where a regex counts characters
//! (`.` is one carried byte, as it is one byte for PCRE).

use std::borrow::Cow;
use std::ffi::OsStr;

/// The first carried character (byte 0x80).
const BASE: u32 = 0x10_FF80;

/// UTF-8 of a carried character: `F4 8F BE xx` or `F4 8F BF xx`.
fn carried_at(b: &[u8], i: usize) -> Option<u8> {
    match b.get(i..i + 4)? {
        [0xF4, 0x8F, third @ (0xBE | 0xBF), fourth] => {
            Some(0x80 | ((third & 1) << 6) | (fourth & 0x3F))
        }
        _ => None,
    }
}

/// Text for decoded path bytes: valid UTF-8 as it is, every other byte (and
/// every byte of a character in the carried range) as its carried character.
/// `true` when anything was carried.
pub fn from_bytes(bytes: Vec<u8>) -> (String, bool) {
    match String::from_utf8(bytes) {
        Ok(s) if !carries(&s) => (s, false),
        Ok(s) => (carry(s.as_bytes()), true),
        Err(e) => (carry(e.as_bytes()), true),
    }
}

fn carry(mut b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 8);
    let push_byte = |out: &mut String, x: u8| {
        out.push(char::from_u32(BASE + u32::from(x - 0x80)).unwrap_or('\u{FFFD}'));
    };
    while !b.is_empty() {
        let (good, rest) = match std::str::from_utf8(b) {
            Ok(s) => (s, &b[b.len()..]),
            Err(e) => {
                let (g, r) = b.split_at(e.valid_up_to());
                // `valid_up_to` bytes are UTF-8.
                (std::str::from_utf8(g).unwrap_or_default(), r)
            }
        };
        for c in good.chars() {
            if (BASE..=BASE + 0x7F).contains(&u32::from(c)) {
                let mut buf = [0u8; 4];
                for &x in c.encode_utf8(&mut buf).as_bytes() {
                    push_byte(&mut out, x);
                }
            } else {
                out.push(c);
            }
        }
        // One byte that does not start valid UTF-8 (never ASCII).
        if let Some((&x, r)) = rest.split_first() {
            if x.is_ascii() {
                out.push(char::from(x));
            } else {
                push_byte(&mut out, x);
            }
            b = r;
        } else {
            b = rest;
        }
    }
    out
}

/// True if `s` carries bytes (cheap: one search for 0xF4).
pub fn carries(s: &str) -> bool {
    let b = s.as_bytes();
    b.contains(&0xF4) && (0..b.len()).any(|i| carried_at(b, i).is_some())
}

/// The bytes `s` stands for: carried characters back to their bytes.
pub fn to_bytes(s: &str) -> Cow<'_, [u8]> {
    bytes_of(s.as_bytes())
}

/// [`to_bytes`] of text already turned into bytes.
pub fn bytes_of(b: &[u8]) -> Cow<'_, [u8]> {
    if !b.contains(&0xF4) {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match carried_at(b, i) {
            Some(x) => {
                out.push(x);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// `s` with carried characters percent-encoded (`%E9`), for a URI that must
/// stay text.
pub fn percent_carried(s: &str) -> Cow<'_, str> {
    if !carries(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let n = u32::from(c);
        if (BASE..=BASE + 0x7F).contains(&n) {
            // As `escape_uri` writes it.
            out.push_str(&format!("%{:02X}", 0x80 + (n - BASE)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`to_bytes`] as a file name.
pub fn to_os(s: &str) -> Cow<'_, OsStr> {
    use std::os::unix::ffi::OsStrExt;
    match to_bytes(s) {
        Cow::Borrowed(b) => Cow::Borrowed(OsStr::from_bytes(b)),
        Cow::Owned(v) => Cow::Owned(std::os::unix::ffi::OsStringExt::from_vec(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) -> (String, bool) {
        let (s, carried) = from_bytes(bytes.to_vec());
        assert_eq!(&to_bytes(&s)[..], bytes, "{bytes:?} via {s:?}");
        assert_eq!(carries(&s), carried, "{bytes:?}");
        (s, carried)
    }

    #[test]
    fn utf8_is_left_alone() {
        for s in ["/", "/a/b.php", "/caf\u{e9}", "/\u{10FF7F}", "/\u{10FFFF}x"] {
            let (out, carried) = round_trip(s.as_bytes());
            // The carried range itself is the one exception.
            if s.contains('\u{10FFFF}') {
                assert!(carried);
                assert_ne!(out, s);
            } else {
                assert!(!carried, "{s}");
                assert_eq!(out, s);
            }
        }
    }

    #[test]
    fn every_byte_survives_everywhere() {
        for x in 0u8..=255 {
            for bytes in [
                vec![x],
                vec![b'/', x, b'.', b'p'],
                vec![0xC3, x],
                vec![x, 0xA9],
                vec![0xF4, 0x8F, 0xBF, x],
                vec![0xF4, 0x8F, x, 0xBF],
                vec![0xE2, 0x82, x],
            ] {
                round_trip(&bytes);
            }
        }
    }

    #[test]
    fn latin1_byte_is_one_character() {
        let (s, carried) = round_trip(b"/caf\xE9.php");
        assert!(carried);
        assert_eq!(s.chars().count(), "/caf?.php".len());
        assert!(s.ends_with(".php") && s.starts_with("/caf"));
        assert_eq!(to_os(&s).as_encoded_bytes(), b"/caf\xE9.php");
        assert_eq!(percent_carried(&s), "/caf%E9.php");
        assert_eq!(percent_carried("/caf\u{e9}"), "/caf\u{e9}");
    }
}
