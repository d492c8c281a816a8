//! Vector tests for the FastCGI codec, in httparse's style: each vector is
//! checked whole, at every split point, one byte at a time, and (for valid
//! input) at every prefix, which must ask for more bytes and never fail.

use bytes::{Bytes, BytesMut};

use super::cgi::{CgiError, CgiHeaderParser, StatusSource};
use super::decoder::{Frame, FramingError, PeerGuess, ResponseDecoder};
use super::params::{decode_pairs, encode_pair, ParamsError};
use super::record::*;

// ---------------------------------------------------------------- helpers

fn rec(t: u8, id: u16, content: &[u8], pad: u8) -> Vec<u8> {
    let mut v = vec![1, t];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&(content.len() as u16).to_be_bytes());
    v.extend_from_slice(&[pad, 0]);
    v.extend_from_slice(content);
    v.extend(std::iter::repeat_n(0xEE, pad as usize));
    v
}

fn out(s: &[u8]) -> Vec<u8> {
    rec(6, 1, s, padding_for(s.len()))
}

fn err(s: &[u8]) -> Vec<u8> {
    rec(7, 1, s, 0)
}

fn end(app: u32, ps: u8) -> Vec<u8> {
    let mut body = app.to_be_bytes().to_vec();
    body.extend_from_slice(&[ps, 0, 0, 0]);
    rec(3, 1, &body, 0)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Decoder events, with adjacent data frames coalesced so that results do
/// not depend on how the input was split.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Out(Vec<u8>),
    OutEof,
    Err(Vec<u8>),
    ErrEof,
    End(u32, ProtocolStatus),
}

/// How a run ended: the error from `decode`/`eof`, or Ok.
type Outcome = (Vec<Ev>, Result<(), FramingError>);

fn push_ev(evs: &mut Vec<Ev>, f: Frame) {
    match (evs.last_mut(), f) {
        (Some(Ev::Out(v)), Frame::Stdout(b)) => v.extend_from_slice(&b),
        (Some(Ev::Err(v)), Frame::Stderr(b)) => v.extend_from_slice(&b),
        (_, Frame::Stdout(b)) => {
            assert!(!b.is_empty(), "empty Stdout frame");
            evs.push(Ev::Out(b.to_vec()))
        }
        (_, Frame::Stderr(b)) => {
            assert!(!b.is_empty(), "empty Stderr frame");
            evs.push(Ev::Err(b.to_vec()))
        }
        (_, Frame::StdoutEof) => evs.push(Ev::OutEof),
        (_, Frame::StderrEof) => evs.push(Ev::ErrEof),
        (
            _,
            Frame::End {
                app_status,
                protocol_status,
            },
        ) => evs.push(Ev::End(app_status, protocol_status)),
    }
}

/// Feeds `chunks` in order, then signals EOF (unless END_REQUEST came).
fn run_chunks(chunks: &[&[u8]]) -> Outcome {
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::new();
    let mut evs = Vec::new();
    let mut consumed = 0u64;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    consumed += (before - buf.len()) as u64;
                    assert_eq!(dec.raw_bytes(), consumed);
                    let done = matches!(f, Frame::End { .. });
                    push_ev(&mut evs, f);
                    if done {
                        return (evs, Ok(()));
                    }
                }
                Ok(None) => {
                    consumed += (before - buf.len()) as u64;
                    break;
                }
                Err(e) => return (evs, Err(e)),
            }
        }
    }
    (evs, dec.eof())
}

fn run_whole(input: &[u8]) -> Outcome {
    run_chunks(&[input])
}

/// Asserts that every way of splitting `input` gives `expected`.
fn check_splits(input: &[u8], expected: &Outcome) {
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(&run_chunks(&[a, b]), expected, "split at {i}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(&run_chunks(&bytes), expected, "one byte at a time");
    // Deterministic pseudo-random three-way splits.
    let mut rng = Rng(input.len() as u64 + 1);
    for _ in 0..50 {
        let mut cuts = [rng.below(input.len() + 1), rng.below(input.len() + 1)];
        cuts.sort();
        let parts = [
            &input[..cuts[0]],
            &input[cuts[0]..cuts[1]],
            &input[cuts[1]..],
        ];
        assert_eq!(&run_chunks(&parts), expected, "cuts at {cuts:?}");
    }
}

/// Record spans `(start, end)` of a valid stream.
fn record_spans(input: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut pos = 0;
    while let Some(h) = Header::parse(&input[pos..]) {
        let end = pos + HEADER_LEN + h.body_len();
        spans.push((pos, end));
        pos = end;
    }
    assert_eq!(pos, input.len(), "vector is not whole records");
    spans
}

/// Every prefix: `decode` never fails and `eof` says exactly how many bytes
/// of the current record are missing.
fn check_prefixes(input: &[u8]) {
    let spans = record_spans(input);
    for p in 0..input.len() {
        let mut dec = ResponseDecoder::new(1);
        let mut buf = BytesMut::from(&input[..p]);
        let mut ended = false;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Frame::End { .. })) => {
                    ended = true;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("prefix {p}: {e:?}"),
            }
        }
        let expected = match spans.iter().find(|(s, e)| *s < p && p < *e) {
            _ if ended => Ok(()),
            None => Ok(()),
            Some(&(s, _)) if p < s + HEADER_LEN => Err(FramingError::TruncatedRecord {
                in_header: true,
                missing: s + HEADER_LEN - p,
            }),
            Some(&(_, e)) => Err(FramingError::TruncatedRecord {
                in_header: false,
                missing: e - p,
            }),
        };
        assert_eq!(dec.eof(), expected, "eof after prefix {p}");
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

// ---------------------------------------------------------------- decoder vectors

macro_rules! decoder_ok {
    ($($name:ident: $input:expr => [$($ev:expr),* $(,)?];)*) => {$(
        #[test]
        fn $name() {
            let input: Vec<u8> = $input;
            let expected: Outcome = (vec![$($ev),*], Ok(()));
            assert_eq!(run_whole(&input), expected);
            check_splits(&input, &expected);
            check_prefixes(&input);
        }
    )*};
}

macro_rules! decoder_err {
    ($($name:ident: $input:expr => [$($ev:expr),* $(,)?], $err:expr;)*) => {$(
        #[test]
        fn $name() {
            let input: Vec<u8> = $input;
            let expected: Outcome = (vec![$($ev),*], Err($err));
            assert_eq!(run_whole(&input), expected);
            check_splits(&input, &expected);
        }
    )*};
}

const OK: ProtocolStatus = ProtocolStatus::RequestComplete;

decoder_ok! {
    dec_simple: cat(&[out(b"Status: 200\r\n\r\nhi"), out(b""), end(0, 0)])
        => [Ev::Out(b"Status: 200\r\n\r\nhi".to_vec()), Ev::OutEof, Ev::End(0, OK)];
    dec_multiple_records: cat(&[out(b"a"), out(b"bc"), out(b"defghijk"), out(b""), end(0, 0)])
        => [Ev::Out(b"abcdefghijk".to_vec()), Ev::OutEof, Ev::End(0, OK)];
    dec_no_padding_odd_len: cat(&[rec(6, 1, b"abc", 0), end(0, 0)])
        => [Ev::Out(b"abc".to_vec()), Ev::End(0, OK)];
    dec_big_padding: cat(&[rec(6, 1, b"abc", 255), rec(6, 1, b"", 200), end(7, 0)])
        => [Ev::Out(b"abc".to_vec()), Ev::OutEof, Ev::End(7, OK)];
    dec_stderr_interleaved: cat(&[err(b"PHP Notice: x"), out(b"A: b\n\n"), err(b"warn"), out(b"body"), err(b""), out(b""), end(0, 0)])
        => [Ev::Err(b"PHP Notice: x".to_vec()), Ev::Out(b"A: b\n\n".to_vec()), Ev::Err(b"warn".to_vec()),
            Ev::Out(b"body".to_vec()), Ev::ErrEof, Ev::OutEof, Ev::End(0, OK)];
    dec_end_only: end(0, 0) => [Ev::End(0, OK)];
    dec_end_app_status: end(0xdead_beef, 0) => [Ev::End(0xdead_beef, OK)];
    dec_end_cant_mpx: end(0, 1) => [Ev::End(0, ProtocolStatus::CantMpxConn)];
    dec_end_overloaded: end(0, 2) => [Ev::End(0, ProtocolStatus::Overloaded)];
    dec_end_unknown_role: end(0, 3) => [Ev::End(0, ProtocolStatus::UnknownRole)];
    dec_end_other_status: end(0, 9) => [Ev::End(0, ProtocolStatus::Other(9))];
    dec_end_padded: cat(&[out(b"x"), rec(3, 1, &[0, 0, 0, 1, 0, 0, 0, 0], 8)])
        => [Ev::Out(b"x".to_vec()), Ev::End(1, OK)];
    dec_max_record: cat(&[rec(6, 1, &[b'z'; 65535], 1), end(0, 0)])
        => [Ev::Out(vec![b'z'; 65535]), Ev::End(0, OK)];
    // No END_REQUEST but closed at a record boundary: not a framing error
    // (whether the response is complete is the caller's decision).
    dec_eof_at_boundary: cat(&[out(b"hi"), out(b"")]) => [Ev::Out(b"hi".to_vec()), Ev::OutEof];
    dec_nothing: vec![] => [];
}

decoder_err! {
    dec_wrong_version_later: cat(&[out(b"hi"), vec![2, 6, 0, 1, 0, 0, 0, 0]])
        => [Ev::Out(b"hi".to_vec())], FramingError::UnsupportedVersion(2);
    dec_wrong_version_first_binary: vec![0, 6, 0, 1, 0, 0, 0, 0]
        => [], FramingError::UnsupportedVersion(0);
    dec_wrong_type_params: rec(4, 1, b"", 0) => [], FramingError::UnknownRecordType(4);
    dec_wrong_type_getvalues_result: cat(&[out(b"a"), rec(10, 1, b"", 0)])
        => [Ev::Out(b"a".to_vec())], FramingError::UnknownRecordType(10);
    dec_wrong_type_unknown: rec(200, 1, b"", 0) => [], FramingError::UnknownRecordType(200);
    dec_wrong_type_stdin: rec(5, 1, b"", 0) => [], FramingError::UnknownRecordType(5);
    dec_wrong_request_id_lo: rec(6, 2, b"x", 0) => [], FramingError::UnexpectedRequestId(2);
    dec_wrong_request_id_hi: rec(6, 0x0101, b"x", 0) => [], FramingError::UnexpectedRequestId(0x0101);
    dec_wrong_request_id_zero: cat(&[out(b"a"), rec(3, 0, &[0; 8], 0)])
        => [Ev::Out(b"a".to_vec())], FramingError::UnexpectedRequestId(0);
    dec_bad_end_short: rec(3, 1, &[0; 4], 4) => [], FramingError::BadEndRequest;
    dec_bad_end_empty: rec(3, 1, b"", 0) => [], FramingError::BadEndRequest;
    dec_bad_end_long: rec(3, 1, &[0; 16], 0) => [], FramingError::BadEndRequest;
    dec_http_peer: b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()
        => [], FramingError::NotFastCgi { guess: PeerGuess::Http, version: b'H' };
    dec_ssh_peer: b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec()
        => [], FramingError::NotFastCgi { guess: PeerGuess::Ssh, version: 83 };
    dec_tls_alert: vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46, 0x15]
        => [], FramingError::NotFastCgi { guess: PeerGuess::Tls, version: 0x15 };
    // A TLS alert is 7 bytes: classified at EOF.
    dec_tls_alert_7_bytes: vec![0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]
        => [], FramingError::NotFastCgi { guess: PeerGuess::Tls, version: 0x15 };
    dec_tls_handshake: vec![0x16, 0x03, 0x04, 0x00, 0x30, 0x02, 0x00, 0x00, 0x2c]
        => [], FramingError::NotFastCgi { guess: PeerGuess::Tls, version: 0x16 };
    dec_http_7_bytes_then_eof: b"HTTP/1.".to_vec()
        => [], FramingError::NotFastCgi { guess: PeerGuess::Http, version: b'H' };
    dec_smtp_banner: b"220 mail.example ESMTP\r\n".to_vec()
        => [], FramingError::NotFastCgi { guess: PeerGuess::Other, version: b'2' };
    dec_http_prefix_only_at_eof: b"HT".to_vec()
        => [], FramingError::NotFastCgi { guess: PeerGuess::Other, version: b'H' };
    dec_not_tls_16_then_eof: vec![0x16]
        => [], FramingError::UnsupportedVersion(0x16);
    // Detection only applies to the first record.
    dec_http_later_is_version: cat(&[out(b"x"), b"HTTP/1.1 200 OK\r\n".to_vec()])
        => [Ev::Out(b"x".to_vec())], FramingError::UnsupportedVersion(b'H');
    dec_truncated_content: rec(6, 1, b"abcdef", 2)[..10].to_vec()
        => [Ev::Out(b"ab".to_vec())], FramingError::TruncatedRecord { in_header: false, missing: 6 };
    dec_truncated_header: vec![1, 6, 0]
        => [], FramingError::TruncatedRecord { in_header: true, missing: 5 };
    dec_truncated_end: end(0, 0)[..12].to_vec()
        => [], FramingError::TruncatedRecord { in_header: false, missing: 4 };
}

#[test]
fn dec_records_after_end_are_left_in_buffer() {
    let mut input = cat(&[out(b"x"), end(0, 0)]);
    input.extend_from_slice(&out(b"more"));
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::from(&input[..]);
    assert!(matches!(dec.decode(&mut buf), Ok(Some(Frame::Stdout(_)))));
    assert!(matches!(dec.decode(&mut buf), Ok(Some(Frame::End { .. }))));
    assert!(dec.is_done());
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), out(b"more").len());
    assert_eq!(dec.eof(), Ok(()));
}

#[test]
fn dec_error_is_sticky() {
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::from(&rec(9, 1, b"", 0)[..]);
    let e = FramingError::UnknownRecordType(9);
    assert_eq!(dec.decode(&mut buf), Err(e));
    buf.extend_from_slice(&out(b"x"));
    assert_eq!(dec.decode(&mut buf), Err(e));
    assert_eq!(dec.eof(), Err(e));
}

#[test]
fn dec_errors_reported_before_whole_header() {
    // nginx checks byte by byte; so do we.
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::from(&[1u8, 9][..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(FramingError::UnknownRecordType(9))
    );
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::from(&b"SSH-"[..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(FramingError::NotFastCgi { .. })
    ));
}

#[test]
fn dec_zero_copy() {
    let input = cat(&[out(b"hello world"), end(0, 0)]);
    let mut buf = BytesMut::from(&input[..]);
    let base = buf.as_ptr() as usize;
    let mut dec = ResponseDecoder::new(1);
    match dec.decode(&mut buf) {
        Ok(Some(Frame::Stdout(b))) => assert_eq!(b.as_ptr() as usize, base + HEADER_LEN),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dec_stdout_overhead() {
    let input = cat(&[out(b"abc"), err(b"zz"), out(b""), end(0, 0)]);
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::from(&input[..]);
    while let Ok(Some(_)) = dec.decode(&mut buf) {}
    // Two STDOUT headers and 5 bytes of padding; STDERR and END not counted.
    assert_eq!(dec.take_stdout_overhead(), 8 + 5 + 8);
    assert_eq!(dec.take_stdout_overhead(), 0);
}

#[test]
fn dec_reused_connection_skips_guess() {
    let mut dec = ResponseDecoder::new_on_reused_connection(1);
    let mut buf = BytesMut::from(&b"HTTP/1.1"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(FramingError::UnsupportedVersion(b'H'))
    );
}

#[test]
fn framing_nginx_messages() {
    let cases = [
        (
            FramingError::NotFastCgi {
                guess: PeerGuess::Ssh,
                version: 83,
            },
            "upstream sent unsupported FastCGI protocol version: 83",
        ),
        (
            FramingError::UnsupportedVersion(2),
            "upstream sent unsupported FastCGI protocol version: 2",
        ),
        (
            FramingError::UnknownRecordType(9),
            "upstream sent invalid FastCGI record type: 9",
        ),
        (
            FramingError::UnexpectedRequestId(0x0101),
            "upstream sent unexpected FastCGI request id high byte: 1",
        ),
        (
            FramingError::UnexpectedRequestId(2),
            "upstream sent unexpected FastCGI request id low byte: 2",
        ),
        (
            FramingError::TruncatedRecord {
                in_header: true,
                missing: 3,
            },
            "upstream prematurely closed connection",
        ),
    ];
    for (e, msg) in cases {
        assert_eq!(e.nginx_message(), msg);
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn frame_debug_hides_payload() {
    let f = Frame::Stdout(Bytes::from_static(b"secret"));
    assert_eq!(format!("{f:?}"), "Stdout(6 bytes)");
}

// ---------------------------------------------------------------- record encoders

#[test]
fn header_roundtrip() {
    let h = Header::new(RecordType::Stdin, 0x1234, 13);
    assert_eq!(h.padding_length, 3);
    let mut dst = BytesMut::new();
    h.encode(&mut dst);
    assert_eq!(&dst[..], &[1, 5, 0x12, 0x34, 0, 13, 3, 0]);
    assert_eq!(Header::parse(&dst), Some(h));
    assert_eq!(Header::parse(&dst[..7]), None);
    for b in 0..=255u8 {
        assert_eq!(RecordType::from_u8(b).as_u8(), b);
        assert_eq!(ProtocolStatus::from_u8(b).as_u8(), b);
    }
}

#[test]
fn begin_and_abort() {
    let mut dst = BytesMut::new();
    encode_begin_request(&mut dst, 1, RESPONDER, false);
    assert_eq!(&dst[..], &[1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    dst.clear();
    encode_begin_request(&mut dst, 1, RESPONDER, true);
    assert_eq!(dst[10], KEEP_CONN);
    dst.clear();
    encode_abort_request(&mut dst, 1);
    assert_eq!(&dst[..], &[1, 2, 0, 1, 0, 0, 0, 0]);
}

/// Splits an encoded stream into (header, content) records, checking
/// padding and alignment.
fn parse_records(mut src: &[u8]) -> Vec<(Header, Vec<u8>)> {
    let mut v = Vec::new();
    while let Some(h) = Header::parse(src) {
        assert_eq!(
            (h.content_length as usize + h.padding_length as usize) % 8,
            0
        );
        let content = src[HEADER_LEN..HEADER_LEN + h.content_length as usize].to_vec();
        src = &src[HEADER_LEN + h.body_len()..];
        v.push((h, content));
    }
    assert!(src.is_empty());
    v
}

#[test]
fn stdin_splits_at_32k() {
    for len in [1usize, 7, 8, 32767, 32768, 32769, 65536, 100_000] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut dst = BytesMut::new();
        encode_stdin(&mut dst, 1, &data);
        encode_stdin_end(&mut dst, 1);
        let recs = parse_records(&dst);
        assert_eq!(recs.len(), len.div_ceil(MAX_STDIN_CHUNK) + 1, "len {len}");
        assert!(recs.iter().all(|(h, _)| h.rtype == RecordType::Stdin));
        assert!(recs
            .iter()
            .all(|(h, _)| h.content_length as usize <= MAX_STDIN_CHUNK));
        assert_eq!(recs.last().map(|(h, _)| h.content_length), Some(0));
        let joined: Vec<u8> = recs.iter().flat_map(|(_, c)| c.clone()).collect();
        assert_eq!(joined, data);
    }
    let mut dst = BytesMut::new();
    encode_stdin(&mut dst, 1, b"");
    assert!(dst.is_empty());
}

#[test]
fn stdin_header_for_vectored_write() {
    let data = vec![b'q'; 32768 + 5];
    let mut expected = BytesMut::new();
    encode_stdin(&mut expected, 1, &data);
    let mut wire = BytesMut::new();
    for chunk in data.chunks(MAX_STDIN_CHUNK) {
        let pad = encode_stdin_header(&mut wire, 1, chunk.len());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(&PADDING[..pad]);
    }
    assert_eq!(wire, expected);
}

#[test]
fn params_split_into_records() {
    for len in [0usize, 5, 65528, 65535, 65536, 200_000] {
        let params: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut dst = BytesMut::new();
        encode_params(&mut dst, 1, &params);
        let recs = parse_records(&dst);
        assert!(recs
            .iter()
            .all(|(h, _)| h.rtype == RecordType::Params && h.request_id == 1));
        assert_eq!(recs.last().map(|(h, _)| h.content_length), Some(0));
        assert_eq!(
            recs.iter().filter(|(h, _)| h.content_length == 0).count(),
            1
        );
        let joined: Vec<u8> = recs.iter().flat_map(|(_, c)| c.clone()).collect();
        assert_eq!(joined, params);
    }
}

// ---------------------------------------------------------------- params

#[test]
fn params_short_and_long_lengths() {
    let long_name = vec![b'N'; 128];
    let long_value = vec![b'v'; 70_000];
    let mut dst = BytesMut::new();
    encode_pair(&mut dst, b"SCRIPT_FILENAME", b"/var/www/index.php");
    encode_pair(&mut dst, b"EMPTY", b"");
    encode_pair(&mut dst, &long_name, b"x");
    encode_pair(&mut dst, b"L", &long_value);
    encode_pair(&mut dst, &[b'a'; 127], &[b'b'; 127]);
    assert_eq!(&dst[..2], &[15, 18]);
    let pairs = decode_pairs(&dst).expect("valid");
    assert_eq!(pairs.len(), 5);
    assert_eq!(
        pairs[0],
        (&b"SCRIPT_FILENAME"[..], &b"/var/www/index.php"[..])
    );
    assert_eq!(pairs[1], (&b"EMPTY"[..], &b""[..]));
    assert_eq!(pairs[2], (&long_name[..], &b"x"[..]));
    assert_eq!(pairs[3].1.len(), 70_000);
    // 128-byte name: 4-byte length with the high bit set.
    let mut one = BytesMut::new();
    encode_pair(&mut one, &long_name, b"");
    assert_eq!(&one[..5], &[0x80, 0, 0, 128, 0]);
    let mut one = BytesMut::new();
    encode_pair(&mut one, &[b'a'; 127], &[b'b'; 127]);
    assert_eq!(&one[..2], &[127, 127]);
    assert_eq!(one.len(), 2 + 254);
}

#[test]
fn params_written_in_place_match_encode_pair() {
    use super::params::{cancel_pair, finish_pair, pair_head, start_pair, value_len};
    let long_name = vec![b'N'; 128];
    let cases: [(&[u8], Vec<u8>); 7] = [
        (b"SCRIPT_FILENAME", b"/var/www/index.php".to_vec()),
        (b"EMPTY", Vec::new()),
        (b"V127", vec![b'v'; 127]),
        (b"V128", vec![b'v'; 128]),
        (b"V70000", vec![b'v'; 70_000]),
        (&long_name, b"x".to_vec()),
        (&long_name, vec![b'w'; 300]),
    ];
    let mut want = BytesMut::new();
    let mut got = BytesMut::from(&b"before"[..]);
    want.extend_from_slice(b"before");
    for (name, value) in &cases {
        encode_pair(&mut want, name, value);
        let mark = start_pair(&mut got, &pair_head(name));
        // The value comes in pieces, as a template's do.
        for piece in value.chunks(100) {
            got.extend_from_slice(piece);
        }
        assert_eq!(value_len(&got, mark), value.len());
        finish_pair(&mut got, mark);
        // A pair taken back leaves nothing.
        let mark = start_pair(&mut got, &pair_head(b"HTTPS"));
        got.extend_from_slice(b"on");
        cancel_pair(&mut got, mark);
    }
    assert_eq!(got, want);
}

#[test]
fn params_finished_in_place_match_encode_params() {
    for len in [0usize, 5, 8, 65528, 65529, 200_000] {
        let params: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut want = BytesMut::from(&b"begin"[..]);
        encode_params(&mut want, 1, &params);
        let mut got = BytesMut::from(&b"begin"[..]);
        let at = start_params(&mut got);
        got.extend_from_slice(&params);
        finish_params(&mut got, 1, at);
        assert_eq!(got, want, "{len} bytes of params");
    }
}

#[test]
fn params_truncated() {
    assert_eq!(
        decode_pairs(&[0x80, 0]),
        Err(ParamsError::TruncatedLength { offset: 0 })
    );
    assert_eq!(
        decode_pairs(&[1]),
        Err(ParamsError::TruncatedLength { offset: 1 })
    );
    assert_eq!(
        decode_pairs(&[1, 1, b'a']),
        Err(ParamsError::TruncatedData { offset: 0 })
    );
    assert_eq!(
        decode_pairs(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        Err(ParamsError::TruncatedData { offset: 2 })
    );
    assert_eq!(decode_pairs(&[]), Ok(vec![]));
}

// ---------------------------------------------------------------- CGI headers

/// (status, reason, headers, source, body) of a successful parse.
type Parsed = (
    u16,
    Option<String>,
    Vec<(String, Vec<u8>)>,
    StatusSource,
    Vec<u8>,
);

/// Feeds `chunks` with `overhead` per chunk; collects the body that
/// followed the block plus any later chunks.
fn cgi_run(chunks: &[&[u8]], limit: usize, overhead: usize) -> Result<Option<Parsed>, CgiError> {
    cgi_run_opt(chunks, limit, overhead, true)
}

/// With `finish`, STDOUT ends after the last chunk.
fn cgi_run_opt(
    chunks: &[&[u8]],
    limit: usize,
    overhead: usize,
    finish: bool,
) -> Result<Option<Parsed>, CgiError> {
    let mut p = CgiHeaderParser::new(limit);
    let mut result: Option<Parsed> = None;
    let conv = |(head, body): (super::cgi::CgiHead, Bytes)| -> Parsed {
        let headers = head
            .headers
            .iter()
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
            .collect();
        (
            head.status,
            head.reason,
            headers,
            head.status_from,
            body.to_vec(),
        )
    };
    for c in chunks {
        match &mut result {
            Some(r) => r.4.extend_from_slice(c),
            None => result = p.feed(Bytes::copy_from_slice(c), overhead)?.map(conv),
        }
    }
    if result.is_none() && finish {
        result = p.finish()?.map(conv);
    }
    Ok(result)
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

macro_rules! cgi_ok {
    ($($name:ident: $input:expr => ($status:expr, $reason:expr, $headers:expr, $src:expr, $body:expr);)*) => {$(
        #[test]
        fn $name() {
            let input: &[u8] = $input;
            let expected: Parsed = ($status, $reason.map(String::from), h($headers), $src, $body.to_vec());
            assert_eq!(cgi_run(&[input], 4096, 0), Ok(Some(expected.clone())));
            // Every prefix of the header block is Partial, never an error.
            let block_end = input.len() - expected.4.len();
            for p in 0..block_end {
                assert_eq!(cgi_run_opt(&[&input[..p]], 4096, 0, false), Ok(None), "prefix {p}");
            }
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(cgi_run(&[a, b], 4096, 0), Ok(Some(expected.clone())), "split at {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(cgi_run(&bytes, 4096, 0), Ok(Some(expected)), "byte by byte");
        }
    )*};
}

macro_rules! cgi_err {
    ($($name:ident: $input:expr => $err:expr;)*) => {$(
        #[test]
        fn $name() {
            let input: &[u8] = $input;
            let expected: CgiError = $err;
            assert_eq!(cgi_run(&[input], 4096, 0), Err(expected.clone()));
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(cgi_run(&[a, b], 4096, 0), Err(expected.clone()), "split at {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(cgi_run(&bytes, 4096, 0), Err(expected), "byte by byte");
        }
    )*};
}

use StatusSource::*;

cgi_ok! {
    cgi_typical_php: b"X-Powered-By: PHP/8.2.7\r\nContent-type: text/html; charset=UTF-8\r\n\r\n<html>"
        => (200, None::<&str>, &[("X-Powered-By", "PHP/8.2.7"), ("Content-type", "text/html; charset=UTF-8")], Default, b"<html>");
    cgi_lf_only: b"A: 1\nB: 2\n\nbody"
        => (200, None::<&str>, &[("A", "1"), ("B", "2")], Default, b"body");
    cgi_mixed_endings: b"A: 1\r\nB: 2\n\r\nbody\r\n"
        => (200, None::<&str>, &[("A", "1"), ("B", "2")], Default, b"body\r\n");
    cgi_status_with_reason: b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope"
        => (404, Some("Not Found"), &[("Content-Type", "text/plain")], Explicit, b"nope");
    cgi_status_code_only: b"Status: 503\r\n\r\n"
        => (503, None::<&str>, &[], Explicit, b"");
    cgi_status_lowercase_name: b"status:418   I'm a teapot  \n\n"
        => (418, Some("I'm a teapot"), &[], Explicit, b"");
    cgi_status_first_wins: b"Status: 201 Created\nStatus: 500\n\n"
        => (201, Some("Created"), &[], Explicit, b"");
    cgi_status_999: b"Status: 999 Odd\n\n" => (999, Some("Odd"), &[], Explicit, b"");
    cgi_location_302: b"Location: /login\r\n\r\n"
        => (302, None::<&str>, &[("Location", "/login")], LocationRedirect, b"");
    cgi_location_with_status: b"Location: https://x.test/\nStatus: 301 Moved Permanently\n\n"
        => (301, Some("Moved Permanently"), &[("Location", "https://x.test/")], Explicit, b"");
    cgi_duplicates_kept: b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nset-cookie: c=3\r\n\r\n"
        => (200, None::<&str>, &[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("set-cookie", "c=3")], Default, b"");
    cgi_empty_value: b"X-Empty:\r\nX-Space:   \r\n\r\n"
        => (200, None::<&str>, &[("X-Empty", ""), ("X-Space", "")], Default, b"");
    cgi_tab_in_value: b"X-T: a\tb\t\n\n" => (200, None::<&str>, &[("X-T", "a\tb")], Default, b"");
    cgi_odd_name_chars_pass: b"X_Under@Score: v\n\n"
        => (200, None::<&str>, &[("X_Under@Score", "v")], Default, b"");
    cgi_utf8_value: "X-Name: caf\u{e9}\n\n".as_bytes()
        => (200, None::<&str>, &[("X-Name", "caf\u{e9}")], Default, b"");
    cgi_warning_header_is_a_header: b"Warning: 199 - \"misc\"\n\n"
        => (200, None::<&str>, &[("Warning", "199 - \"misc\"")], Default, b"");
    cgi_empty_block_then_text: b"\r\nhello" => (200, None::<&str>, &[], Default, b"hello");
}

cgi_err! {
    cgi_nul_in_value: b"X-Foo: a\0b\r\n\r\n"
        => CgiError::InvalidHeader { line: b"X-Foo: a\0".to_vec(), bad_byte: 0 };
    cgi_nul_in_name: b"X-Foo\0: b\r\n\r\n"
        => CgiError::InvalidHeader { line: b"X-Foo\0".to_vec(), bad_byte: 0 };
    cgi_control_in_value: b"A: 1\nX: a\x01\n\n"
        => CgiError::InvalidHeader { line: b"X: a\x01".to_vec(), bad_byte: 1 };
    cgi_space_in_name: b"Bad Name: x\n\n"
        => CgiError::InvalidHeader { line: b"Bad ".to_vec(), bad_byte: b' ' };
    cgi_no_colon: b"A: 1\r\nnocolon\r\n\r\n"
        => CgiError::InvalidHeader { line: b"nocolon\r".to_vec(), bad_byte: b'\r' };
    cgi_no_colon_lf: b"nocolon\n\n"
        => CgiError::InvalidHeader { line: b"nocolon\n".to_vec(), bad_byte: b'\n' };
    cgi_continuation_line: b"A: 1\n folded\n\n"
        => CgiError::InvalidHeader { line: b" ".to_vec(), bad_byte: b' ' };
    cgi_empty_name: b": v\n\n" => CgiError::InvalidHeader { line: b":".to_vec(), bad_byte: b':' };
    cgi_bare_cr: b"A: 1\rB: 2\n\n" => CgiError::InvalidHeader { line: b"A: 1\r".to_vec(), bad_byte: b'\r' };
    cgi_invalid_status_text: b"Status: abc\n\n" => CgiError::InvalidStatus("abc".into());
    cgi_invalid_status_short: b"Status: 20\n\n" => CgiError::InvalidStatus("20".into());
    cgi_invalid_status_low: b"Status: 099 Low\n\n" => CgiError::InvalidStatus("099 Low".into());
    cgi_invalid_status_empty: b"Status:\n\n" => CgiError::InvalidStatus("".into());
    cgi_output_html: b"<!DOCTYPE html>\n<html>"
        => CgiError::OutputBeforeHeaders { excerpt: "<!DOCTYPE html>\\n<html>".into() };
    cgi_output_php_warning: b"PHP Warning:  Undefined variable $x in /var/www/a.php on line 3\n"
        => CgiError::OutputBeforeHeaders { excerpt: "PHP Warning:  Undefined variable $x in /var/www/a.php on line 3\\n".into() };
    cgi_output_warning_on_line: b"Warning: Undefined variable $x in /a.php on line 3\n"
        => CgiError::OutputBeforeHeaders { excerpt: "Warning: Undefined variable $x in /a.php on line 3\\n".into() };
    cgi_output_fatal: b"Fatal error: Uncaught Error in /a.php:2\n"
        => CgiError::OutputBeforeHeaders { excerpt: "Fatal error: Uncaught Error in /a.php:2\\n".into() };
    cgi_output_br_blank_prefixed: b"\n<br />\n<b>Warning</b>:  oops in <b>/a.php</b> on line <b>3</b><br />\n"
        => CgiError::OutputBeforeHeaders { excerpt: "<br />\\n<b>Warning</b>:  oops in <b>/a.php</b> on line <b>3</b><br />\\n".into() };
    cgi_output_text_blank_prefixed: b"\r\nNotice: Undefined index in /a.php on line 9\r\n"
        => CgiError::OutputBeforeHeaders { excerpt: "Notice: Undefined index in /a.php on line 9\\r\\n".into() };
}

#[test]
fn cgi_too_big_counts_overhead() {
    let block = b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nbody"; // block is 42 bytes
    assert!(matches!(cgi_run(&[block], 42, 0), Ok(Some(_))));
    assert_eq!(cgi_run(&[block], 41, 0), Err(CgiError::TooBig));
    // 8 bytes of record header push it over.
    assert_eq!(cgi_run(&[block], 42, 8), Err(CgiError::TooBig));
    assert!(matches!(cgi_run(&[block], 50, 8), Ok(Some(_))));
    // Split in records of 6 bytes, each costing 8 + 2 padding.
    let chunks: Vec<&[u8]> = block.chunks(6).collect();
    assert_eq!(cgi_run(&chunks, 100, 10), Err(CgiError::TooBig));
    assert!(matches!(cgi_run(&chunks, 42 + 7 * 10, 10), Ok(Some(_))));
    // Incomplete and the buffer is full: too big, not partial.
    assert_eq!(cgi_run(&[&block[..30]], 30, 0), Err(CgiError::TooBig));
    // A first line of PHP output that never ends is still output.
    let long = [&b"PHP Fatal error: "[..], &[b'x'; 5000][..]].concat();
    assert!(matches!(
        cgi_run(&[&long], 4096, 0),
        Err(CgiError::OutputBeforeHeaders { .. })
    ));
}

#[test]
fn cgi_excerpt_is_capped() {
    let long = [&b"<html>"[..], &[b'x'; 1000][..]].concat();
    match cgi_run(&[&long], 4096, 0) {
        Err(CgiError::OutputBeforeHeaders { excerpt }) => assert_eq!(excerpt.chars().count(), 200),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cgi_blank_first_line_waits_for_disambiguation() {
    assert_eq!(cgi_run_opt(&[b"\n"], 4096, 0, false), Ok(None));
    assert_eq!(cgi_run_opt(&[b"\n", b"Warn"], 4096, 0, false), Ok(None));
    // STDOUT ended: zero headers, and the body so far.
    assert_eq!(
        cgi_run(&[b"\n", b"Warn"], 4096, 0),
        Ok(Some((200, None, vec![], Default, b"Warn".to_vec())))
    );
    // Incomplete block at the end of STDOUT.
    assert_eq!(cgi_run(&[b"A: b\r\n"], 4096, 0), Ok(None));
    assert!(matches!(
        cgi_run(&[b"\n", b"Warn", b"ing: x"], 4096, 0),
        Err(CgiError::OutputBeforeHeaders { .. })
    ));
    assert!(matches!(cgi_run(&[b"\n", b"Warp"], 4096, 0), Ok(Some(_))));
}

#[test]
fn cgi_body_is_zero_copy_in_one_piece() {
    let data = Bytes::from_static(b"A: b\r\n\r\nbody");
    let mut p = CgiHeaderParser::new(4096);
    let (head, body) = p.feed(data.clone(), 8).expect("ok").expect("complete");
    assert_eq!(body.as_ptr() as usize, data.as_ptr() as usize + 8);
    assert_eq!(
        head.headers[0].1.as_ptr() as usize,
        data.as_ptr() as usize + 3
    );
    // Finished: later input is ignored.
    assert_eq!(p.feed(Bytes::from_static(b"more"), 8), Ok(None));
}

#[test]
fn cgi_nginx_messages() {
    let e = CgiError::InvalidHeader {
        line: b"X-Foo: a\0".to_vec(),
        bad_byte: 0,
    };
    assert_eq!(
        e.nginx_message(),
        "upstream sent invalid header: \"X-Foo: a\\x00...\""
    );
    let e = CgiError::InvalidHeader {
        line: b"Bad ".to_vec(),
        bad_byte: b' ',
    };
    assert_eq!(
        e.nginx_message(),
        "upstream sent invalid header: \"Bad\\x20...\""
    );
    assert_eq!(
        CgiError::InvalidStatus("abc".into()).nginx_message(),
        "upstream sent invalid status \"abc\""
    );
    assert_eq!(
        CgiError::TooBig.nginx_message(),
        "upstream sent too big header"
    );
    assert_eq!(
        format!("{e:?}"),
        "InvalidHeader { line: \"Bad \", bad_byte: 0x20 }"
    );
}

// ---------------------------------------------------------------- end to end

#[test]
fn decoder_feeds_cgi_parser() {
    let input = cat(&[
        err(b"PHP Notice: something"),
        out(b"Status: 404 Not Found\r\nContent-"),
        out(b"Type: text/html\r\n\r\n<h1>404</h1>"),
        out(b""),
        end(0, 0),
    ]);
    let mut dec = ResponseDecoder::new(1);
    let mut cgi = CgiHeaderParser::new(4096);
    let mut buf = BytesMut::from(&input[..]);
    let mut head = None;
    while let Some(f) = dec.decode(&mut buf).expect("valid") {
        if let Frame::Stdout(data) = f {
            if let Some(r) = cgi.feed(data, dec.take_stdout_overhead()).expect("valid") {
                head = Some(r);
            }
        }
    }
    let (head, body) = head.expect("complete");
    assert_eq!(head.status, 404);
    assert_eq!(
        head.headers,
        vec![(
            Bytes::from_static(b"Content-Type"),
            Bytes::from_static(b"text/html")
        )]
    );
    assert_eq!(&body[..], b"<h1>404</h1>");
}

// ---------------------------------------------------------------- no panics

/// Deterministic stand-in for the fuzz targets: 100k inputs, random and
/// mutated-valid, fed to both parsers in random splits. Must not panic.
#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let valid = cat(&[
        err(b"x"),
        out(b"Status: 200 OK\r\nA: b\r\n\r\nbody"),
        out(b""),
        end(0, 0),
    ]);
    for i in 0..100_000 {
        let len = rng.below(64);
        let mut input: Vec<u8> = if i % 2 == 0 {
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let mut v = valid.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(v.len());
                v[at] = rng.next() as u8;
            }
            v.truncate(rng.below(v.len() + 1));
            v
        };
        if i % 7 == 0 {
            input.insert(0, 1); // more likely to get past the version check
        }
        let cut = rng.below(input.len() + 1);
        let (a, b) = input.split_at(cut);

        let mut dec = ResponseDecoder::new(1);
        let mut buf = BytesMut::new();
        let mut cgi = CgiHeaderParser::new(1 + rng.below(64));
        'outer: for part in [a, b] {
            buf.extend_from_slice(part);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(Frame::Stdout(d))) => {
                        let _ = cgi.feed(d, dec.take_stdout_overhead());
                    }
                    Ok(Some(Frame::End { .. })) | Err(_) => break 'outer,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
        }
        if let Err(e) = dec.eof() {
            let _ = (e.nginx_message(), e.to_string());
        }

        let mut cgi = CgiHeaderParser::new(4096);
        for part in [a, b] {
            match cgi.feed(Bytes::copy_from_slice(part), rng.below(16)) {
                Err(e) => {
                    let _ = (e.nginx_message(), e.to_string(), format!("{e:?}"));
                    break;
                }
                Ok(Some(_)) => break,
                Ok(None) => {}
            }
        }
        let _ = decode_pairs(&input);
    }
}
