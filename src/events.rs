//! The structured failure events (`--events FILE`, else stderr): one JSON
//! line per `tracing` event of target `why502::failure`.
//!
//! A small `tracing` layer writes them instead of `tracing-subscriber`'s JSON
//! formatter: the same keys (`timestamp`, `level`, the event's fields,
//! `target`), but written straight into a reused buffer, and to a file
//! through the access logs' buffered writer (flushed every 100 ms and at
//! exit) instead of one `write()` per event. On the 502 path that was a
//! fifth of why502's CPU per request (docs/benchmarks.md).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::accesslog::{escape_json, LogFile};

/// The target of the failure events.
pub const TARGET: &str = "why502::failure";

/// Where the events go.
pub enum Sink {
    File(Arc<LogFile>),
    Stderr,
}

/// The layer writing failure events as JSON lines.
pub struct EventsLayer {
    sink: Sink,
}

impl EventsLayer {
    pub fn new(sink: Sink) -> EventsLayer {
        EventsLayer { sink }
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// `2026-11-21T22:49:11` of the current second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-21T22:49:11.123456Z`, as tracing-subscriber writes it.
fn push_timestamp(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1.clear();
            if let Some(t) = chrono::DateTime::from_timestamp(secs as i64, 0) {
                let _ = write!(c.1, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
            }
            c.0 = secs;
        }
        out.extend_from_slice(c.1.as_bytes());
    });
    let micros = now.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.push(b'.');
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

impl<S: Subscriber> Layer<S> for EventsLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        LINE.with(|l| {
            let Ok(mut out) = l.try_borrow_mut() else {
                return;
            };
            out.clear();
            out.extend_from_slice(b"{\"timestamp\":\"");
            push_timestamp(&mut out);
            out.extend_from_slice(b"\",\"level\":\"");
            out.extend_from_slice(event.metadata().level().as_str().as_bytes());
            out.push(b'"');
            event.record(&mut JsonFields(&mut out));
            out.extend_from_slice(b",\"target\":\"");
            escape_json(event.metadata().target().as_bytes(), &mut out);
            out.extend_from_slice(b"\"}\n");
            match &self.sink {
                Sink::File(f) => f.write_line(&out),
                Sink::Stderr => {
                    let _ = std::io::stderr().lock().write_all(&out);
                }
            }
            if out.capacity() > 64 * 1024 {
                *out = Vec::new();
            }
        });
    }
}

/// Appends `,"name":value` for each field.
struct JsonFields<'a>(&'a mut Vec<u8>);

impl JsonFields<'_> {
    fn key(&mut self, f: &Field) {
        // Field names are Rust identifiers (`tracing` checks them at
        // compile time): nothing to escape.
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(f.name().as_bytes());
        self.0.extend_from_slice(b"\":");
    }
}

/// Escapes what is formatted into it as a JSON string's content.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_json(s.as_bytes(), self.0);
        Ok(())
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.key(f);
        self.0.push(b'"');
        escape_json(v.as_bytes(), self.0);
        self.0.push(b'"');
    }
    // Numbers through itoa and ryu: `fmt` costs several times more.
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.key(f);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.key(f);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.key(f);
        if v.is_finite() {
            self.0
                .extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
        } else {
            self.0.extend_from_slice(b"null");
        }
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.key(f);
        self.0
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.key(f);
        self.0.push(b'"');
        let _ = write!(Escaping(self.0), "{v:?}");
        self.0.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_are_json_lines_with_the_fields() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("events.log");
        let file = LogFile::open(&path).expect("open");
        let sub = tracing_subscriber::registry().with(EventsLayer::new(Sink::File(file.clone())));
        tracing::subscriber::with_default(sub, || {
            tracing::event!(
                target: "why502::failure",
                tracing::Level::ERROR,
                cause = "connect.refused",
                status = 502u64,
                total_ms = 1.5f64,
                missing = None::<f64>,
                uri = %"/a\"b\n",
            );
        });
        file.flush();
        let text = std::fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(v["cause"], "connect.refused");
        assert_eq!(v["status"], 502);
        assert_eq!(v["total_ms"], 1.5);
        assert_eq!(v["uri"], "/a\"b\n");
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["target"], "why502::failure");
        assert!(v.get("missing").is_none(), "{v}");
        let ts = v["timestamp"].as_str().expect("timestamp");
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
