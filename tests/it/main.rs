//! why502's integration suite: every cause in `why502::cause` is triggered for
//! real against the why502 binary (real PHP-FPM where it can produce the
//! failure, the fake FastCGI responder or a hand-written peer where it cannot)
//! and checked on every reporting surface.
//!
//! One test binary (`cargo test --test it`); tests run in parallel, each with
//! its own temp dir, ports, PHP-FPM and why502.

#[path = "../support/mod.rs"]
mod support;

mod harness;

mod app;
mod body;
mod client;
mod connect;
mod files;
mod framing;
mod h1;
mod h2;
mod header;
mod process;
mod send;
mod streaming;
mod surfaces;
mod tls;

use std::path::Path;

/// Causes no test can trigger for real, with the reason. Keep this list short
/// and justified: the product promise is that every cause is triggered.
const NOT_TRIGGERABLE: &[(&str, &str)] = &[(
    "proxy.internal_error",
    "why502's own bug path (a missing upstream state, an error Pingora hands to \
     fail_to_proxy): no request can reach it without a bug to trigger",
)];

/// Every `*.rs` file under `dir`, recursively (bounded).
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out, depth + 1);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Adding a cause without a test that triggers it fails CI: every code of
/// `Cause::ALL` must appear as a string literal (`"phase.name"`) in a test
/// file under tests/, other than this file (which names them all at run time).
#[test]
fn every_cause_has_a_test() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let me = tests.join("it").join("main.rs");
    let mut files = Vec::new();
    rust_files(&tests, &mut files, 0);
    let text: String = files
        .iter()
        .filter(|p| **p != me)
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<&str> = why502::cause::Cause::ALL
        .iter()
        .map(|c| c.code())
        .filter(|code| !text.contains(&format!("\"{code}\"")))
        .filter(|code| !NOT_TRIGGERABLE.iter().any(|(c, _)| c == code))
        .collect();
    assert!(
        missing.is_empty(),
        "causes without an integration test that triggers them: {missing:?}"
    );
    for (code, why) in NOT_TRIGGERABLE {
        assert!(
            why502::cause::Cause::from_code(code).is_some(),
            "NOT_TRIGGERABLE names an unknown cause {code}"
        );
        assert!(!why.is_empty());
    }
}
