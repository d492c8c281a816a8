//! `cargo fuzz run config`: the two configuration front ends, YAML and
//! nginx.conf, into the internal model. The first byte picks the front end;
//! the rest is the file's text. Any input must give a model or an error,
//! never a panic. Inputs naming `include` are skipped: an include reads
//! real files (`include /dev/zero;` would read for ever, as in nginx).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if text.contains("include") {
        return;
    }
    if which % 2 == 0 {
        if let Err(e) = why502::config::yaml::load_str(text, "fuzz.yaml") {
            let _ = e.to_string();
        }
    } else {
        let file = Path::new("/nonexistent/fuzz/nginx.conf");
        let base = Path::new("/nonexistent/fuzz");
        match why502::nginx::parse_str(text, file, base) {
            Ok(tree) => {
                if let Err(e) = why502::nginx::convert::convert(&tree, "fuzz nginx.conf", base) {
                    let _ = e.to_string();
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
