//! `bulkhead`: the binary. See the library for the commands.

use clap::Parser;

/// jemalloc instead of the system allocator: a proxy allocates and frees
/// small buffers on every request, and glibc malloc cost ~12% of the CPU in
/// the h1 keep-alive profile. jemalloc rather than mimalloc: as fast per
/// request (mimalloc's Rust binding takes its slow aligned path for every
/// block over 1 KiB), and no huge-page arena, so 1,000 idle connections
/// take 16 MiB instead of 19–23 (docs/benchmarks.md, fourth session).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
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
