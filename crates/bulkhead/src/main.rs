//! `bulkhead`: the binary. See the library for the commands.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = bulkhead::cli::Cli::parse();
    match bulkhead::cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
