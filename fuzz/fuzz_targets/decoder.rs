//! `cargo fuzz run decoder`: the response decoder, input fed in two parts
//! split at a point chosen by the first byte, then EOF.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use why502::fastcgi::decoder::{Frame, ResponseDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let cut = split as usize % (input.len() + 1);
    let mut dec = ResponseDecoder::new(1);
    let mut buf = BytesMut::new();
    for part in [&input[..cut], &input[cut..]] {
        buf.extend_from_slice(part);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Frame::End { .. })) | Err(_) => return,
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
    }
    if let Err(e) = dec.eof() {
        let _ = e.nginx_message();
    }
});
