//! framing.*: FastCGI records PHP-FPM never sends, and peers that are not
//! FastCGI servers at all. PHP-FPM cannot be made to produce these, so the
//! fake responder (src/fake_fcgi.rs) and a hand-written peer do.

use std::io::Write;

use why502::fake_fcgi::Fault;

use crate::harness::*;
use crate::header::with_fake;
use crate::support;

fn fake_case(fault: Fault, code: &str) -> Diagnosed {
    let dir = support::temp_dir();
    let (_fake, p) = with_fake(dir.path(), fault, &[]);
    let r = p.get("/index.php");
    assert_diagnosed(&p, &r, code, 502)
}

#[test]
fn bad_version() {
    let d = fake_case(Fault::BadVersion, "framing.bad_version");
    assert!(d.log_line.contains("version: 2"), "{}", d.log_line);
}

#[test]
fn unknown_record_type() {
    let d = fake_case(Fault::UnknownRecordType, "framing.unknown_record_type");
    assert!(d.log_line.contains("type: 42"), "{}", d.log_line);
}

#[test]
fn bad_request_id() {
    fake_case(Fault::WrongRequestId, "framing.bad_request_id");
}

#[test]
fn truncated_record() {
    fake_case(Fault::TruncatedRecord, "framing.truncated_record");
}

#[test]
fn end_before_headers() {
    fake_case(Fault::EndBeforeHeaders, "framing.end_before_headers");
}

#[test]
fn cant_mpx_conn() {
    let d = fake_case(Fault::EndCantMpxConn, "framing.cant_mpx_conn");
    assert!(
        d.event["details"]
            .as_str()
            .unwrap_or("")
            .contains("CANT_MPX_CONN"),
        "{}",
        d.event
    );
}

#[test]
fn overloaded() {
    fake_case(Fault::EndOverloaded, "framing.overloaded");
}

#[test]
fn unknown_role() {
    fake_case(Fault::EndUnknownRole, "framing.unknown_role");
}

#[test]
fn not_fastcgi_http() {
    fake_case(Fault::HttpPeer, "framing.not_fastcgi_http");
}

#[test]
fn not_fastcgi_ssh() {
    // The SSH server talks first, right on accept.
    fake_case(Fault::SshPeer, "framing.not_fastcgi_ssh");
}

#[test]
fn not_fastcgi_tls() {
    fake_case(Fault::TlsPeer, "framing.not_fastcgi_tls");
}

#[test]
fn not_fastcgi_other_protocol() {
    // A Redis server on the FastCGI port answers the unknown "command".
    let dir = support::temp_dir();
    let srv = RawServer::start(|_, mut s| {
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut s, &mut buf);
        let _ = s.write_all(b"-ERR unknown command '\\x01\\x01', with args beginning with: \r\n");
        graceful_close(s);
    });
    let p = Proxy::flags(dir.path(), &["--fastcgi", &srv.addr(), "--root", &www()]);
    let r = p.get("/index.php");
    let d = assert_diagnosed(&p, &r, "framing.not_fastcgi", 502);
    assert!(d.log_line.contains("version: 45"), "{}", d.log_line);
}
