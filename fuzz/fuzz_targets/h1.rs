//! `cargo fuzz run h1`: why502's own HTTP/1.1 (and h2c) server with the
//! real request handlers, fed one client connection per input over
//! loopback.
//!
//! The input is what the client sends, in two writes split at a point
//! chosen by its first byte, then the client's half-close. The server
//! serves a small site: static files with `try_files` and an index, a
//! `return`, a header added with variables, an access log in JSON with many
//! variables, and PHP locations whose upstream socket does not exist (the
//! diagnosed 502 page). It must answer and close without a panic, and
//! within a few seconds: a connection still open after that is a hang,
//! reported as a crash.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use why502::proxy::{Runtime, Why502};

struct Harness {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    app: Arc<Why502>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // One directory for every run (and every job of `-jobs`): the
        // same files, written again, and no socket is ever made there.
        let dir = std::env::temp_dir().join("why502-fuzz-h1");
        let www = dir.join("www");
        std::fs::create_dir_all(www.join("sub")).expect("temp dir");
        std::fs::write(www.join("index.html"), "<p>index</p>\n").expect("write");
        std::fs::write(www.join("a.txt"), "0123456789".repeat(100)).expect("write");
        std::fs::write(www.join("sub/index.html"), "sub\n").expect("write");
        std::fs::write(www.join("x.php"), "<?php echo 1;\n").expect("write");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = std_listener.local_addr().expect("addr").port();
        let yaml = format!(
            r#"
threads: 1
log:
  error_log: {{ path: /dev/null, level: debug }}
  events: /dev/null
  access_log: {{ path: /dev/null, format: json }}
  log_formats:
    json:
      format: '{{"r":"$request","u":"$uri","a":"$args","q":"$request_uri","h":"$host","c":"$http_cookie","ua":"$http_user_agent","s":$status,"b":$body_bytes_sent,"x":"$why502_cause","i":"$request_id","t":"$request_time","n":"$arg_name","m":"$request_method","l":"$content_length"}}'
      escape: json
upstreams:
  php:
    servers: [unix:{dead}]
servers:
  - listen: [127.0.0.1:{port}]
    server_name: [fuzz.test]
    root: {root}
    index: [index.php, index.html]
    client_max_body_size: 1k
    add_headers:
      - {{ name: X-Seen, value: "$uri|$args|$host|$arg_name", always: true }}
    error_pages:
      - {{ codes: [404], uri: /missing.html }}
      - {{ codes: [502], uri: /fail.php }}
    locations:
      - prefix: /
        try_files: [$uri, $uri/, /index.php?$args]
      - prefix: /old/
        script:
          - set: {{ name: page, value: $arg_p }}
          - rewrite: {{ regex: '^/old/(\d+)/(.*)$', replacement: /new.php?id=$1&rest=$2&p=$page, flag: last }}
          - rewrite: {{ regex: '^/old/(.*)$', replacement: /$1, flag: redirect }}
      - exact: /r
        return: {{ code: 302, text: "http://$host$request_uri" }}
      - prefix: /t/
        return: {{ code: 200, text: "t $request_uri $http_x_a $cookie_a\n" }}
      - regex: '\.php(/|$)'
        fastcgi:
          pass: php
          split_path_info: '^(.+?\.php)(/.*)$'
          params:
            PATH_INFO: $fastcgi_path_info
"#,
            dead = dir.join("dead.sock").display(),
            root = www.display(),
        );
        let config = why502::config::yaml::load_str(&yaml, "fuzz.yaml")
            .unwrap_or_else(|e| panic!("the fuzz config does not load: {e}"));
        let app = Arc::new(Why502 {
            rt: Arc::new(Runtime::new(config).expect("runtime")),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = {
            let _g = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).expect("listener")
        };
        Harness { rt, listener, app }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let cut = split as usize % (input.len() + 1);
    let h = harness();
    h.rt.block_on(async {
        let addr = h.listener.local_addr().expect("addr");
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), h.listener.accept());
        let (mut client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
        let app = h.app.clone();
        let served = tokio::spawn(async move {
            why502::h1::serve_connection(&*app, server, true).await;
        });
        let talk = async {
            for part in [&input[..cut], &input[cut..]] {
                if client.write_all(part).await.is_err() {
                    break;
                }
            }
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        if tokio::time::timeout(Duration::from_secs(5), talk)
            .await
            .is_err()
        {
            panic!("the connection was still open after 5 s: a hang");
        }
        match tokio::time::timeout(Duration::from_secs(5), served).await {
            Err(_) => panic!("the server kept the connection after the client's close: a hang"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
        }
    });
});
