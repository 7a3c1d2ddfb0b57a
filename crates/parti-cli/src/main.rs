//! The `parti` command: inspect and run Parti clusters.
//!
//! - `parti status [--json]` — who owns what, who leads, what is wrong (see [`status`]).
//! - `parti watch` — the same view, redrawn live on KV events.
//! - `parti worker` — one worker process from a config and a partition list.
//! - `parti sim` — the demo: workers, messages and chaos in one process, then a report.
//! - `parti chaos` — real worker processes under real faults, judged by the ownership checker.
//! - `parti provision plan|apply` — create the buckets ahead of time, report and fix drift.
//! - `parti validate [--live]` — check a configuration; exit 3 when invalid (see [`validate`]).
//!
//! Every subcommand lives in its own module (`status`, `watch`, `worker`, `sim/`, `chaos/`) with an
//! `Args` type for clap and an `async fn run(args, &Global) -> anyhow::Result<ExitCode>`; adding
//! one means a module, a variant of [`cli::Command`] and a line in [`run`].
//!
//! Exit codes: 0 success, 1 error (message on stderr), and for `status` 2 when an inconsistency
//! is flagged, 3 when no Parti cluster exists on the server (see [`status`]).

mod buckets;
mod chaos;
mod cli;
mod connect;
mod metrics_server;
mod output;
mod partitions;
mod provision;
mod render;
mod report;
mod signal;
mod sim;
mod status;
mod validate;
mod watch;
mod worker;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's live view and report tell its story; the library's retry warnings (which
    // its chaos provokes on purpose) would only scroll through it.
    let default_level = if matches!(cli.command, Command::Sim(_) | Command::Chaos(_)) {
        "error"
    } else {
        "warn"
    };
    init_tracing(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Status(args) => status::run(args, &cli.global).await,
        Command::Watch(args) => watch::run(args, &cli.global).await,
        Command::Worker(args) => worker::run(args, &cli.global).await,
        Command::Sim(args) => sim::run(args, &cli.global).await,
        Command::Chaos(args) => chaos::run(args, &cli.global).await,
        Command::Provision(args) => provision::run(args, &cli.global).await,
        Command::Validate(args) => validate::run(args, &cli.global).await,
    }
}

/// The error and its causes joined with `: `, skipping a cause whose text the previous message
/// already contains (some libraries print their source in their own message).
fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if previous.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

/// Logs go to stderr (stdout is the command's output); `RUST_LOG` overrides the default `warn`.
fn init_tracing(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_causes_are_printed_once() {
        let inner = std::io::Error::other("refused");
        let e = anyhow::Error::new(inner)
            .context("IO error: refused")
            .context("cannot connect");
        assert_eq!(super::error_chain(&e), "cannot connect: IO error: refused");
    }
}
