//! The `bulkhead` command line, as a library so that the end-to-end tests
//! can use the same demo backends and certificate helpers.
//!
//! The offline commands (`check`, `explain`, `test`, `graph`, `audit`) load the config
//! into the same `Snapshot` the data plane serves from and run the same
//! `decide()`, so what they say is what the proxy does.

pub mod audit;
pub mod backend;
pub mod cli;
pub mod demo;
pub mod diff;
mod explain;
mod graph;
mod output;
pub mod pki;
pub mod run;
