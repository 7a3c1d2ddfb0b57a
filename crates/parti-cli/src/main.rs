//! The `parti` command: inspect and run Parti clusters.
//!
//! - `parti status [--json]` — who owns what, who leads, what is wrong (see [`status`]).
//! - `parti watch` — the same view, redrawn live on KV events.
//! - `parti worker` — one worker process from a config and a partition list.
//! - `parti sim` — the demo: workers, messages and chaos in one process, then a report.
//! - `parti chaos` — real worker processes under real faults, judged by the ownership checker.
//! - `parti bench` — real worker processes measured: start-up, KV writes, CPU, RSS, crash recovery.
//! - `parti provision plan|apply` — create the buckets ahead of time, report and fix drift.
//! - `parti validate [--live]` — check a configuration; exit 3 when invalid (see [`validate`]).
//! - `parti partitions list|add|remove|set` — edit the partition list kept in NATS KV.
//! - `parti drain|undrain|pin|unpin|freeze|unfreeze` — the operator's placement intents.
//! - `parti plan` — what the leader would publish now or after a hypothetical change.
//! - `parti history [--follow]` — the last publishes, each move with its reason.
//!
//! Every subcommand lives in its own module (`status`, `watch`, `worker`, `sim/`, `chaos/`) with an
//! `Args` type for clap and an `async fn run(args, &Global) -> anyhow::Result<ExitCode>`; adding
//! one means a module, a variant of [`cli::Command`] and a line in [`run`].
//!
//! Exit codes: 0 success, 1 error (message on stderr), and for `status` 2 when an inconsistency
//! is flagged, 3 when no Parti cluster exists on the server (see [`status`]).
//!
//! # Layout
//!
//! Dependencies point down this list only (`main` → `cli` → subcommands → shared views →
//! leaves); no module imports one above it.
//!
//! - `main` — the entry point: parses the [`cli::Cli`], sets up logging and the runtime, calls
//!   the subcommand's `run`, turns an error into exit code 1.
//! - [`cli`] — the clap definition: the top-level parser and one variant per subcommand; depends
//!   on each subcommand's `Args` type and on [`global`].
//! - Subcommands, each `Args` + `run(args, &Global)`; they depend on the layers below, and
//!   on another subcommand only where noted:
//!   - [`status`] — `parti status`: reads the buckets, checks them with [`health`], prints with
//!     [`render`]; also the bucket-reading helpers `watch` reuses.
//!   - [`watch`] — `parti watch`: the `status` view redrawn live (→ [`status`]).
//!   - [`worker`] — `parti worker`: one worker process, with [`metrics_server`].
//!   - [`sim`] — `parti sim`: the in-process demo. Under `sim/`, each layer depends only on later
//!     ones: `report` (the run's final report), `view` → `driver` → `cluster`, `observer` →
//!     `transport` → `producer` → `memlog` → `ledger`, `holdings`, `shared`, `server`.
//!   - [`chaos`] — `parti chaos`: real worker processes under real faults. Under `chaos/`:
//!     `faults` (the fault-injecting half of `mod`'s `Runner`) → `fleet` → `nats`; `plan`;
//!     `report` (the run's final report) → `recovery`; `observer`, `producer`; `bench` (`parti
//!     bench`: the same servers, fleet and `Runner`, measured instead of judged).
//!   - [`provision`] — `parti provision plan|apply`: `plan` (pure decisions) and `report` (what it
//!     prints) under `provision/`.
//!   - [`validate`] — `parti validate`: configuration checks; `--live` reuses the provisioning
//!     plan (→ [`provision`]).
//!   - [`control`] — `parti drain|undrain|pin|unpin|freeze|unfreeze`: edits the intents in the
//!     assignment bucket (→ [`buckets`]); its `describe` is what `status` prints of them.
//!   - [`history`] — `parti history`: the leader's publish history (→ [`buckets`]).
//!   - [`plan`] — `parti plan`: reads the cluster as the leader does, previews the map with
//!     the library's placement (→ [`buckets`], [`status`], [`partitions`]).
//!   - [`partitions`] — `parti partitions`: the partition list in NATS KV; its `file` module
//!     (the partition list file format) is a leaf that `worker` and `chaos` use too.
//! - Shared views, used by `status` and `watch`:
//!   - [`render`] — the human text of a health report (→ [`health`], [`text`]).
//!   - [`health`] — the health report of a live cluster: raw bucket contents in, a checked
//!     view (consistency, worker health, flags, versions) out; pure (→ [`buckets`], [`text`]).
//! - Leaves (nothing in the crate, except [`global`] → [`connect`]):
//!   - [`global`] — the options every subcommand takes ([`global::Global`]): connection and
//!     configuration file.
//!   - [`connect`] — NATS connection options and connecting.
//!   - [`buckets`] — reading a cluster's KV buckets without creating them.
//!   - [`metrics_server`] — the worker's HTTP endpoints.
//!   - [`output`] — writing to stdout safely; an error as one line.
//!   - [`signal`] — waiting for SIGINT/SIGTERM.
//!   - [`rng`] — the seeded generator of the `sim` and `chaos` fault schedules.
//!   - [`text`] — short ages and aligned tables for every human-readable output.

mod buckets;
mod chaos;
mod cli;
mod connect;
mod control;
mod global;
mod health;
mod history;
mod metrics_server;
mod output;
mod partitions;
mod plan;
mod provision;
mod render;
mod rng;
mod signal;
mod sim;
mod status;
mod text;
mod validate;
mod watch;
mod worker;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};
use control::Intent;
use parti::WorkerId;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's live view and report tell its story; the library's retry warnings (which
    // its chaos provokes on purpose) would only scroll through it.
    let default_level = if matches!(
        cli.command,
        Command::Sim(_) | Command::Chaos(_) | Command::Bench(_)
    ) {
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
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Status(args) => status::run(args, &cli.global).await,
        Command::Watch(args) => watch::run(args, &cli.global).await,
        Command::Worker(args) => worker::run(args, &cli.global).await,
        Command::Sim(args) => sim::run(args, &cli.global).await,
        Command::Chaos(args) => chaos::run(args, &cli.global).await,
        Command::Bench(args) => chaos::bench::run(args, &cli.global).await,
        Command::Provision(args) => provision::run(args, &cli.global).await,
        Command::Validate(args) => validate::run(args, &cli.global).await,
        Command::Partitions(args) => partitions::run(args, &cli.global).await,
        Command::Drain(a) => control::run(Intent::Drain(WorkerId::new(a.worker)), a.json, g).await,
        Command::Undrain(a) => {
            control::run(Intent::Undrain(WorkerId::new(a.worker)), a.json, g).await
        }
        Command::Pin(a) => {
            let intent = Intent::Pin(a.partition, WorkerId::new(a.worker));
            control::run(intent, a.json, g).await
        }
        Command::Unpin(a) => control::run(Intent::Unpin(a.partition), a.json, g).await,
        Command::Freeze(a) => control::run(Intent::Freeze(true), a.json, g).await,
        Command::Unfreeze(a) => control::run(Intent::Freeze(false), a.json, g).await,
        Command::Plan(args) => plan::run(args, g).await,
        Command::History(args) => history::run(args, g).await,
    }
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
