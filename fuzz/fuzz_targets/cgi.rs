//! `cargo fuzz run cgi`: the CGI header parser, input fed in two parts
//! split at a point chosen by the first byte, then STDOUT end.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use why502::fastcgi::cgi::CgiHeaderParser;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let cut = split as usize % (input.len() + 1);
    let mut parser = CgiHeaderParser::new(4096);
    for part in [&input[..cut], &input[cut..]] {
        match parser.feed(Bytes::copy_from_slice(part), 8) {
            Ok(Some(_)) => return,
            Err(e) => {
                let _ = e.nginx_message();
                return;
            }
            Ok(None) => {}
        }
    }
    if let Err(e) = parser.finish() {
        let _ = e.nginx_message();
    }
});
