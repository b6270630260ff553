//! Command-line arguments and dispatch (DESIGN §6). Exit codes: 0 success;
//! 1 an invalid config, failed test cases, or (`diff`, `audit`) a
//! difference; 2 usage or connection errors.

use crate::{audit, diff, explain, graph, output};
use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// bulkhead: a load balancer whose first job is segmentation.
#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config and print lint warnings; exit 1 on any error.
    Check {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show the full decision for one request, step by step.
    Explain(Box<explain::ExplainArgs>),
    /// Run route test cases; prints `N passed, M failed`, exit 1 if any failed.
    Test {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// The test cases file.
        cases: PathBuf,
        /// Also run every case in its attacker's spellings (encodings, dot segments, Host/SNI tricks).
        #[arg(long)]
        variants: bool,
    },
    /// Serve: bind every listener and proxy until SIGTERM/SIGINT (then drain).
    Run {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Reload when the config file or one of its certificates changes.
        #[arg(long)]
        watch: bool,
    },
    /// A complete local demo: sample segmented config, certificates, backends; prints what to curl.
    Demo {
        /// Write the demo's config, certificates and access log here (kept) instead of a temporary folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the effective reachability graph.
    Graph {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Table)]
        format: GraphFormat,
    },
    /// Drift between a config file and a running instance (its admin API's `GET /config`); exit 1 if they differ.
    Diff(diff::DiffArgs),
    /// Replay an access log against a config; report lines it would not reproduce; exit 1 if any.
    Audit(audit::AuditArgs),
}

/// `graph --format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GraphFormat {
    /// A human table.
    Table,
    /// `{"edges": [...]}` (DESIGN §6).
    Json,
    /// Graphviz.
    Dot,
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Explain(args) => explain::run(&args),
        Command::Run { config, watch } => crate::run::run(&config, watch),
        Command::Demo { dir } => {
            crate::run::init_tracing();
            crate::run::runtime(None)?.block_on(crate::demo::run(dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            config,
            cases,
            variants,
        } => Ok(test(&config, &cases, variants)),
        Command::Graph { config, format } => {
            let Some(snapshot) = output::load_or_report(&config) else {
                return Ok(ExitCode::from(1));
            };
            print!("{}", graph::render(&snapshot, format)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff(args) => diff::run(&args),
        Command::Audit(args) => audit::run(&args),
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    let Some(snapshot) = output::load_or_report(config) else {
        return ExitCode::from(1);
    };
    let lints = bulkhead_core::lint::lints(&snapshot);
    for l in &lints {
        println!(
            "{}:{}:{}: warning: {}",
            snapshot.config.file, l.pos.line, l.pos.col, l.message
        );
    }
    let routes: usize = snapshot.tenants.iter().map(|t| t.routes.len()).sum();
    let allowed = snapshot.edges.iter().filter(|e| e.allowed).count();
    println!(
        "{}: ok — {} listeners, {} tenants, {} routes, {} target groups, {} invariants hold; {} of {} graph edges allowed; {} warning{}",
        snapshot.config.file,
        snapshot.listeners.len(),
        snapshot.tenants.len(),
        routes,
        snapshot.groups.len(),
        snapshot.config.invariants.len(),
        allowed,
        snapshot.edges.len(),
        lints.len(),
        if lints.len() == 1 { "" } else { "s" }
    );
    ExitCode::SUCCESS
}

fn test(config: &std::path::Path, cases_file: &std::path::Path, variants: bool) -> ExitCode {
    let Some(snapshot) = output::load_or_report(config) else {
        return ExitCode::from(1);
    };
    let cases = match bulkhead_config::cases::load_cases(cases_file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let mut bad_input = false;
    for c in &cases {
        if snapshot.listener_id(&c.request.listener.value).is_none() {
            let p = c.request.listener.pos;
            eprintln!(
                "{}:{}:{}: case `{}` names unknown listener `{}`",
                cases_file.display(),
                p.line,
                p.col,
                c.name,
                c.request.listener.value
            );
            bad_input = true;
        }
        if let Some(d) = &c.expect.decision {
            if bulkhead_core::DecisionKind::parse(&d.value).is_none() {
                let names: Vec<&str> = bulkhead_core::ALL_DECISIONS
                    .iter()
                    .map(|k| k.as_str())
                    .collect();
                eprintln!(
                    "{}:{}:{}: unknown decision `{}` — use one of {}",
                    cases_file.display(),
                    d.pos.line,
                    d.pos.col,
                    d.value,
                    names.join(", ")
                );
                bad_input = true;
            }
        }
        if let Some(s) = &c.request.source {
            if s.value.parse::<std::net::IpAddr>().is_err() {
                eprintln!(
                    "{}:{}:{}: source `{}` is not an IP address",
                    cases_file.display(),
                    s.pos.line,
                    s.pos.col,
                    s.value
                );
                bad_input = true;
            }
        }
    }
    if bad_input {
        return ExitCode::from(1);
    }
    let (mut passed, mut failed, mut variants_run) = (0, 0, 0);
    for c in &cases {
        let r = snapshot.run_case(c, variants);
        variants_run += r.variants_run;
        for w in &r.warnings {
            println!(
                "WARN {} ({}:{})\n      {w}",
                r.name,
                cases_file.display(),
                r.line
            );
        }
        if r.passed() {
            passed += 1;
            println!("ok   {}", r.name);
        } else {
            failed += 1;
            println!("FAIL {} ({}:{})", r.name, cases_file.display(), r.line);
            for f in &r.failures {
                println!("      {f}");
            }
        }
    }
    if variants {
        println!("({variants_run} attack variants checked)");
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
