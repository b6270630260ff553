//! `bulkhead`: the command-line front of the segmentation-first load balancer.
//!
//! The offline commands (`check`, `explain`, `test`, `graph`) load the config
//! into the same `Snapshot` the data plane serves from and run the same
//! `decide()`, so what they say is what the proxy does.

mod cli;
mod explain;
mod graph;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
