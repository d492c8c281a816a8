//! The `why502` binary: see `why502 --help`.

use clap::Parser;

/// jemalloc: Pingora allocates a large future per request; glibc's malloc
/// costs 14-21% more CPU per small request here (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = why502::cli::Cli::parse();
    std::process::exit(why502::cli::run(cli));
}
