//! `why502 demo`: PHP-FPM plus why502 serving the failure gallery.

use std::path::PathBuf;

pub fn run(_listen: &str, _dir: Option<PathBuf>) -> Result<(), String> {
    Err("not yet".into())
}
