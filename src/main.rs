//! The `why502` binary: see `why502 --help`.

use clap::Parser;

fn main() {
    let cli = why502::cli::Cli::parse();
    std::process::exit(why502::cli::run(cli));
}
