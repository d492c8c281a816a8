//! Static files. Small ones are kept in memory per worker thread
//! (`src/proxy/static_files.rs`) and checked with one `stat()` per request:
//! what is served must still be what the file holds now.

use std::time::Duration;

use crate::harness::Proxy;
use crate::support::{self, Req};

fn site(dir: &std::path::Path, root: &std::path::Path) -> Proxy {
    // One thread: every request meets the same cache.
    Proxy::yaml(
        dir,
        &format!(
            "threads: 1\nservers:\n  - listen: [\"{{listen}}\"]\n    root: {}\n    locations:\n      - prefix: /\n",
            root.display()
        ),
    )
}

#[test]
fn a_small_file_changed_in_place_is_served_fresh() {
    let dir = support::temp_dir();
    let root = dir.path().join("www");
    std::fs::create_dir(&root).expect("mkdir");
    let file = root.join("a.txt");
    std::fs::write(&file, "one-1").expect("write");
    let p = site(dir.path(), &root);
    // A file is kept once its change time is a second old.
    std::thread::sleep(Duration::from_millis(2100));
    let first = p.get("/a.txt");
    assert_eq!((first.status, first.text().as_str()), (200, "one-1"));
    let again = p.get("/a.txt");
    assert_eq!((again.status, again.text().as_str()), (200, "one-1"));
    let etag = first.header("etag").unwrap_or_default().to_string();
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let r = p.req(&Req::get("/a.txt").header("If-None-Match", &etag));
    assert_eq!(r.status, 304);
    let r = p.req(&Req::get("/a.txt").header("Range", "bytes=1-2"));
    assert_eq!((r.status, r.text().as_str()), (206, "ne"));

    // Rewritten in place with the same length, and its modification time
    // put back: only the change time says it changed.
    let mtime = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(&file, "two-2").expect("rewrite");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    let r = p.get("/a.txt");
    assert_eq!((r.status, r.text().as_str()), (200, "two-2"));

    // Kept again once settled, then replaced by a rename.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(p.get("/a.txt").text(), "two-2");
    let next = root.join("a.txt.new");
    std::fs::write(&next, "three").expect("write");
    std::fs::rename(&next, &file).expect("rename");
    assert_eq!(p.get("/a.txt").text(), "three");

    // Gone, then a directory in its place.
    std::fs::remove_file(&file).expect("rm");
    assert_eq!(p.get("/a.txt").status, 404);
    std::fs::create_dir(&file).expect("mkdir");
    let r = p.get("/a.txt");
    assert_eq!(r.status, 301, "directory redirect");
}

#[test]
fn files_larger_than_the_cache_limit_stream_whole() {
    let dir = support::temp_dir();
    let root = dir.path().join("www");
    std::fs::create_dir(&root).expect("mkdir");
    // Just over the in-memory limit (64 KiB), and a large one in chunks.
    for (name, len) in [("edge.bin", 64 * 1024 + 1), ("big.bin", 1 << 20)] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join(name), &data).expect("write");
    }
    let p = site(dir.path(), &root);
    std::thread::sleep(Duration::from_millis(2100));
    for (name, len) in [("edge.bin", 64 * 1024 + 1), ("big.bin", 1 << 20)] {
        for _ in 0..2 {
            let r = p.get(&format!("/{name}"));
            assert_eq!(r.status, 200);
            assert!(r.is_complete());
            let want: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert!(r.body == want, "{name}: {} bytes", r.body.len());
        }
    }
}
