//! body.*: failures after the response header went out. The client's response
//! must be aborted (no chunked terminator / short of Content-Length, the
//! connection closed) so it can tell, and the failure is logged.

use why502::fake_fcgi::Fault;

use crate::harness::*;
use crate::header::{with_fake, with_php};
use crate::support;

#[test]
fn closed_inside_a_record() {
    // EOF inside a record header after part of the body: no PHP worker dies
    // that precisely, the fake does.
    let dir = support::temp_dir();
    let (_fake, p) = with_fake(dir.path(), Fault::TruncatedHeader, &[]);
    let r = p.get("/index.php");
    assert_aborted(&p, &r, "body.closed");
    assert_eq!(r.text(), "partial body");
}

#[test]
fn reset_when_the_worker_is_killed_mid_body() {
    let dir = support::temp_dir();
    let (f, p) = with_php(dir.path(), |_| {}, &[]);
    let r = p.get("/kill.php?sig=9&when=mid");
    let d = assert_aborted(&p, &r, "body.reset");
    assert!(r.text().starts_with("partial body line"), "{}", r.text());
    assert!(
        d.log_line
            .contains("readv() failed (104: Connection reset by peer)"),
        "{}",
        d.log_line
    );
    assert!(f.wait_log("exited on signal 9", std::time::Duration::from_secs(5)));
    let r = p.get("/kill.php?sig=11&when=mid");
    assert!(!r.is_complete() && r.closed, "{r:?}");
    assert!(f.wait_log("exited on signal 11", std::time::Duration::from_secs(5)));
}

#[test]
fn timeout_while_the_body_stalls() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &["--read-timeout", "1s"]);
    let r = p.get("/slowbody.php?s=5");
    assert_aborted(&p, &r, "body.timeout");
    assert_eq!(r.text(), "first part\n");
}

#[test]
fn no_end_request() {
    let dir = support::temp_dir();
    let (_fake, p) = with_fake(dir.path(), Fault::NoEndRequest, &[]);
    let r = p.get("/index.php");
    assert_aborted(&p, &r, "body.no_end_request");
    assert_eq!(r.body.len(), 4096);
}

#[test]
fn too_short_for_its_content_length() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let r = p.get("/sized.php?bytes=10&claim=1000");
    assert_eq!(r.header("Content-Length"), Some("1000"));
    assert_aborted(&p, &r, "body.too_short");
    assert_eq!(r.body.len(), 10);
}

#[test]
fn too_long_for_its_content_length() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let r = p.get("/sized.php?bytes=1000&claim=10");
    // The client gets exactly the promised 10 bytes (the rest is dropped)
    // and the connection is closed.
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("10"));
    assert_eq!(r.body, b"xxxxxxxxxx");
    assert_eq!(r.raw_body.len(), 10, "extra bytes reached the client");
    let d = assert_logged(&p, "body.too_long", None);
    assert!(r.closed || d.event["status"] == 200, "{r:?}");
    // Nothing more ever arrives on that connection.
    assert!(r.closed, "connection kept open after body.too_long: {r:?}");
}
