//! Command-line definition (clap): the top-level parser and one variant per subcommand.
//!
//! Depends on every subcommand module (for its `Args` type) and on [`crate::global`]; nothing
//! but `main` depends on it.

use clap::{Parser, Subcommand};

use crate::global::Global;

/// Inspect and run Parti clusters: weighted partitions handed to a changing set of workers,
/// coordinated through NATS JetStream KV.
#[derive(Debug, Parser)]
#[command(name = "parti", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show workers, leader, assignment version, phase and anything inconsistent.
    ///
    /// Exit codes: 0 consistent, 1 error, 2 an inconsistency is flagged, 3 no cluster found.
    Status(crate::status::StatusArgs),
    /// Show the same view as `status`, redrawn live on KV events, until Ctrl-C.
    Watch(crate::watch::WatchArgs),
    /// Run one worker from a config and a partition list; stops gracefully on SIGTERM/SIGINT.
    Worker(crate::worker::WorkerArgs),
    /// The demo: N workers over M partitions with a producer and a chaos schedule (crash,
    /// graceful leave, join, leader kill, NATS restart), a live view and a final report.
    ///
    /// Starts its own nats-server (or, with --memory or when none is found, uses the in-memory
    /// store). Exit codes: 0 every invariant held and no message was lost, 2 otherwise, 1 error.
    Sim(crate::sim::SimArgs),
    /// Real `parti worker` processes under real faults (kill -9, SIGSTOP, cut links, NATS
    /// restarts, garbage in the buckets, rolling restarts), judged by the ownership checker.
    ///
    /// Starts its own nats-server (or with --cluster a 3-node cluster) and runs each worker
    /// behind its own fault proxy; reports every fault with its recovery time and every
    /// violation of the ownership contract. Exit codes: 0 no violation, 2 violations, 1 error.
    Chaos(crate::chaos::ChaosArgs),
    /// Real `parti worker` processes (up to 200), measured: start-up, the cold start's
    /// publishes, KV writes per bucket, the steady state's writes and CPU, RSS per process,
    /// and how long a killed follower's and a killed leader's partitions stay unheld.
    ///
    /// Starts its own nats-server (or with --cluster a 3-node cluster). Exit codes: 0 the
    /// ownership checker found nothing, 2 it found violations, 1 error.
    Bench(crate::chaos::bench::BenchArgs),
    /// Create the KV buckets (and a WorkerConsumer stream) ahead of time and find drift:
    /// `plan` compares the server with the configuration, `apply` creates what is missing and
    /// handles drift by --policy warn|adopt|force.
    ///
    /// Exit codes: 0 nothing to do / everything matches; 2 `plan --fail-on-drift` found something
    /// missing or drifting, or `apply` left drift; 1 error (also `--policy force` without
    /// --yes-destroy-data); 3 bad configuration; 4 NATS unreachable.
    Provision(crate::provision::ProvisionArgs),
    /// Check a configuration (--config plus PARTI_* variables) as `parti worker` loads it:
    /// every violation, "did you mean" for a misspelt key, warnings for keys of the Go library
    /// that are ignored. With --live also compare the four KV buckets on the server (read-only).
    ///
    /// Exit codes: 0 valid (warnings allowed); 3 invalid, or with --live a bucket whose
    /// max_age, history, replicas or limit markers differ from the configuration; 4 NATS
    /// unreachable (--live); 1 another error (e.g. an unreadable file).
    Validate(crate::validate::ValidateArgs),
    /// The partition list kept in NATS KV, which workers started with --partitions-bucket
    /// follow: `list`, `add`, `remove`, `set --file F`. Edits are revision-checked; a
    /// duplicate or an unknown partition is refused with its name and nothing is written.
    Partitions(crate::partitions::PartitionsArgs),
    /// Drain a worker: the leader moves its partitions to the others through the normal
    /// hand-off and gives it none until `undrain`. Kept in the cluster's KV; survives leader
    /// changes and the worker's restarts.
    Drain(crate::control::WorkerArgs),
    /// End a worker's drain; the next publish gives it its share again.
    Undrain(crate::control::WorkerArgs),
    /// Pin a partition (keys joined with `.`) to a worker: it goes there whenever that worker
    /// is live and not drained.
    Pin(crate::control::PinArgs),
    /// Remove a partition's pin.
    Unpin(crate::control::PartitionArgs),
    /// Maintenance mode: nothing with a live owner moves (no scale-up, no list-change
    /// rebalance, no drain or pin); crashed or departed workers' partitions are still placed.
    Freeze(crate::control::FreezeArgs),
    /// End maintenance mode; the next publish catches up with everything that waited.
    Unfreeze(crate::control::FreezeArgs),
    /// What the leader would publish now, or after a hypothetical change (--add-worker,
    /// --remove-worker, --drain, --partitions FILE): every move with its weight and reason,
    /// the balance before and after, the number of steps. Nothing is written.
    Plan(crate::plan::PlanArgs),
    /// The last publishes (version, term, time, reason) with every partition moved, from →
    /// to and why; --follow prints new ones as they land. Nothing is written.
    History(crate::history::HistoryArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before = Cli::try_parse_from(["parti", "--nats", "nats://a:1", "status", "--json"]);
        let after = Cli::try_parse_from(["parti", "status", "--json", "--nats", "nats://a:1"]);
        for cli in [before, after] {
            let cli = cli.unwrap();
            assert_eq!(cli.global.connect.nats, "nats://a:1");
            assert!(matches!(cli.command, Command::Status(ref s) if s.json));
        }
    }
}
