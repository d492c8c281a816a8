//! Free ports for the test servers, shared by `support` and `parity`.

use std::net::TcpListener;

/// A free TCP port on 127.0.0.1, never one this process was given before.
/// The kernel can hand out a port it just handed out (bind `:0`, close,
/// bind `:0`): two servers of one suite then got the same port, the second
/// failed to bind, and its requests went to the first (a CI failure where
/// nginx's `/ret200.json` came back from another server's `return`).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let p = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
    panic!("no port that was not given out before")
}
