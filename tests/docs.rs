//! Documentation drift checks: docs/causes.md against the cause table, and
//! every example config under config/ through `why502 check`.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn causes_doc_matches_the_table() {
    let doc = std::fs::read_to_string(root().join("docs/causes.md")).expect("docs/causes.md");
    let begin = doc.find("<!-- causes:begin -->\n").expect("begin marker")
        + "<!-- causes:begin -->\n".len();
    let end = doc.find("<!-- causes:end -->").expect("end marker");
    let table = why502::cli::causes_table(true);
    assert!(
        doc[begin..end] == table,
        "docs/causes.md is out of date: run `cargo run -- causes --markdown` and paste the table between the markers"
    );
}

#[test]
fn every_cause_is_documented_once() {
    let doc = std::fs::read_to_string(root().join("docs/causes.md")).expect("docs/causes.md");
    for c in why502::cause::Cause::ALL {
        let needle = format!("| `{}` |", c.code());
        assert_eq!(
            doc.matches(&needle).count(),
            1,
            "{} in docs/causes.md",
            c.code()
        );
    }
}

#[test]
fn check_accepts_every_example_config() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("config")).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        let out = Command::new(env!("CARGO_BIN_EXE_why502"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run why502 check");
        assert!(
            out.status.success(),
            "why502 check rejected {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(n > 0, "no example configs found under config/");
}

#[test]
fn check_names_file_and_line_of_a_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "servers:\n  - listen: [127.0.0.1:8080]\n    locations:\n      - regex: '\\.php$'\n        fastcgi:\n          pass: unix:/run/php/php8.2-fpm.sock\n          read_timeout: soon\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_why502"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run why502 check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:7:", path.display())), "{err}");
    assert!(err.contains("read_timeout"), "{err}");
}
