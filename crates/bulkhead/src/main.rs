//! `bulkhead`: the binary. See the library for the commands.

use clap::Parser;

/// mimalloc instead of the system allocator: a proxy allocates and frees
/// small buffers on every request, and glibc malloc cost ~12% of the CPU in
/// the h1 keep-alive profile (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
