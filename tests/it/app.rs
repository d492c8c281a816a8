//! app.*: diagnosed from PHP's stderr; the app's own status is kept and the
//! cause is added to the response.

use why502::fpm::PoolSpec;

use crate::harness::*;
use crate::header::with_php;
use crate::support;

#[test]
fn memory_exhausted() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(
        dir.path(),
        |s: &mut PoolSpec| s.admin_values.push(("memory_limit".into(), "32M".into())),
        &[],
    );
    let r = p.get("/memory.php");
    let d = assert_diagnosed(&p, &r, "app.memory_exhausted", 500);
    assert!(d.log_line.contains("memory.php"), "{}", d.log_line);
    // File and line are in the details for trusted clients.
    let ps = r.header("Proxy-Status").unwrap_or_default();
    assert!(ps.contains("memory.php"), "{ps}");
}

#[test]
fn max_execution_time() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(
        dir.path(),
        |s: &mut PoolSpec| {
            s.admin_values
                .push(("max_execution_time".into(), "1".into()))
        },
        &[],
    );
    let r = p.get("/timeout.php?s=20");
    // PHP says "1 second" (singular) where the row's wording has "N seconds".
    assert_diagnosed_with(
        &p,
        &r,
        "app.max_execution_time",
        500,
        Some(&["FastCGI sent in stderr: \"PHP message: PHP Fatal error:  Maximum execution time of 1 second exceeded"]),
    );
}

#[test]
fn fatal_error_with_file_and_line() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let r = p.get("/fatal.php");
    let d = assert_diagnosed_with(
        &p,
        &r,
        "app.fatal_error",
        500,
        Some(&[
            "FastCGI sent in stderr: \"PHP message: PHP Fatal error:  Uncaught ",
            "boom from fatal.php",
        ]),
    );
    let ps = r.header("Proxy-Status").unwrap_or_default();
    assert!(ps.contains("fatal.php:"), "file:line in details: {ps}");
    assert!(
        d.event["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("RuntimeException"),
        "{}",
        d.event
    );
}

#[test]
fn script_not_found_is_404() {
    let dir = support::temp_dir();
    let (_f, p) = with_php(dir.path(), |_| {}, &[]);
    let r = p.get("/no-such-script.php");
    assert_diagnosed(&p, &r, "app.script_not_found", 404);
}

#[test]
fn access_denied_by_limit_extensions() {
    // The classic /uploads/x.jpg/y.php: with cgi.fix_pathinfo=1 PHP-FPM walks
    // back to the existing x.txt and refuses it (security.limit_extensions).
    let dir = support::temp_dir();
    let mut spec = pool("www");
    spec.limit_extensions = Some(".php".into());
    let (_f, p) = php_site(dir.path(), spec, &[("upload.txt", "<?php echo 'owned';")]);
    let r = p.get("/upload.txt/x.php");
    assert_diagnosed(&p, &r, "app.access_denied", 403);
    assert!(!r.text().contains("owned"));
}
