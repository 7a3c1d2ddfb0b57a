//! `parti sim`: the demo. N workers in this process over M partitions, a producer of sequenced
//! messages, a chaos schedule, a live view on stderr and a report on stdout.
//!
//! - Transport: a local `nats-server` started for the run (found by [`server::find`]) with a
//!   JetStream stream `sim-events` (work-queue retention: a message is stored until a worker
//!   acks it) and a `WorkerConsumer` per worker; or, with `--memory` or when no server is
//!   found, the in-memory store and an in-process log (see `memlog`).
//! - Chaos, spread over the run, each fault once the previous one healed: a worker crash, a
//!   graceful leave, a join, a leader kill, a NATS restart (SIGKILL, down for 1 s, then the same
//!   port and store; in memory: every store client cut off for 2 s).
//! - Recovery time of a fault: until the committed map covers exactly the live workers and
//!   every partition, every live worker is `Stable` with its share, one leads — and that held
//!   for a second.
//! - The verdict on ownership is the one checker's, `parti_testkit::checker::check`, as for
//!   `parti chaos`: every worker's ownership records (one shared recorder), every message
//!   handled (with the handling worker's instance) and sent, every fault, every committed
//!   version. Tolerance 0 in memory (one clock, one process), [`NATS_TOLERANCE`] on NATS; gap
//!   bound [`gap_bound`]. The sim itself checks what the checker does not: recovery within a
//!   bound, convergence at the end, one leader per term, the terms and size of the published
//!   maps, and counts partitions moved against the minimum.
//! - Exit codes: 0 when the checker found nothing and every other check held, 2 otherwise, 1
//!   on error.

mod cluster;
mod driver;
mod holdings;
mod ledger;
mod memlog;
mod observer;
mod producer;
mod report;
mod server;
mod shared;
mod transport;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use parti::ownership::OwnershipRecorder;
use parti::{Config, Partition};
use parti_testkit::checker::{self, CheckConfig};

use crate::global::Global;
use crate::output::print;
use crate::rng::{SplitMix, random_seed};
use crate::signal::stop_requested;

use driver::{Driver, Settings, nanos};
use ledger::Ledger;
use report::{Header, SimReport};
use shared::{Shared, millis};
use transport::Transport;

/// Highest worker count: the IDs of the default pool (100) must cover the joins too.
const MAX_WORKERS: usize = 90;
/// The checker's tolerance on NATS: the workers share this process's clock, but a handler's
/// stamp and the gate it passed are not one instant.
const NATS_TOLERANCE: Duration = Duration::from_millis(20);

/// Options of `parti sim`.
#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Workers at the start.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS as i64))]
    pub(crate) workers: u16,
    /// Partitions (`p0`, `p1`, …, weight 100 each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) partitions: u32,
    /// How long the producer runs; faults are spread over it (the run lasts longer when a
    /// fault takes long to heal, plus the final drain).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Messages published per second, round-robin over the partitions (at most 20 a second
    /// per partition).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) rate: u32,
    /// Use the in-memory store (and an in-process message log) instead of a nats-server.
    #[arg(long)]
    pub(crate) memory: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_report: Option<PathBuf>,
    /// Seed of the chaos schedule's choices (random by default; printed in the report).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

/// Runs the demo. The global connection options do not apply: the demo starts its own server.
pub(crate) async fn run(args: SimArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    let settings = Settings {
        workers: usize::from(args.workers),
        partitions: usize::try_from(args.partitions)?,
        duration: args.duration,
        rate: args.rate,
    };
    let seed = args.seed.unwrap_or_else(random_seed);
    let transport = if args.memory {
        Transport::memory(seed, settings.partitions)
    } else {
        match server::find() {
            Ok(binary) => Transport::nats(binary).await?,
            Err(tried) => {
                let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                eprintln!(
                    "no nats-server found (tried {}; run scripts/setup or set {}): using the in-memory store",
                    tried.join(", "),
                    server::NATS_SERVER_ENV
                );
                Transport::memory(seed, settings.partitions)
            }
        }
    };
    let config = demo_config();
    let tolerance = if transport.name() == "memory" {
        Duration::ZERO
    } else {
        NATS_TOLERANCE
    };
    let check_config = CheckConfig {
        tolerance_ns: nanos(tolerance),
        gap_bound_ns: nanos(gap_bound(&config)),
    };
    let header = Header {
        transport: transport.name(),
        transport_detail: transport.detail(),
        seed,
        workers: settings.workers,
        partitions: settings.partitions,
        rate: settings.rate,
        duration_ms: millis(settings.duration),
        tolerance_ms: millis(tolerance),
        gap_bound_ms: millis(gap_bound(&config)),
    };
    eprintln!("transport: {}", header.transport_detail);

    let partitions: Vec<Partition> = (0..settings.partitions)
        .map(|i| Partition::new([format!("p{i}")], 100))
        .collect::<Result<_, _>>()?;
    let shared = Arc::new(Shared::new());
    let ledger = Arc::new(Ledger::new(settings.partitions));
    let workers = Arc::new(cluster::Workers::default());
    let view = view::View::spawn(
        transport.name(),
        Arc::clone(&shared),
        Arc::clone(&workers),
        Arc::clone(&ledger),
    );
    let driver = Driver {
        settings,
        rng: SplitMix(seed),
        config,
        source: parti::source::Static::new(partitions),
        transport,
        ledger,
        shared: Arc::clone(&shared),
        workers,
        next_n: 0,
        recorder: OwnershipRecorder::default(),
        faults: Vec::new(),
    };
    let outcome = tokio::select! {
        outcome = driver.run() => outcome,
        signal = stop_requested() => {
            view.finish().await;
            eprintln!("{signal}: stopped (workers and server killed, no report)");
            return Ok(ExitCode::from(130));
        }
    };
    view.finish().await;
    let outcome = outcome?;
    let check = checker::check(&outcome.history, &check_config);
    let report = SimReport::build(
        header,
        outcome,
        shared.publishes(),
        shared.unobserved_count(),
        shared.violations(),
        check,
    );
    print(&report.human())?;
    if let Some(path) = &args.json_report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Timings that make the demo readable: heartbeats every 500 ms, a crash noticed within about
/// two seconds, a 2 s cold-start window and 1 s planned-scale window.
fn demo_config() -> Config {
    let ms = Duration::from_millis;
    let mut config = Config::fast_for_tests();
    config.worker_id_ttl = ms(3_000);
    config.heartbeat_interval = ms(500);
    config.heartbeat_ttl = ms(1_500);
    config.cold_start_window = ms(2_000);
    config.planned_scale_window = ms(1_000);
    config.election_ttl = ms(2_000);
    config.startup_timeout = ms(20_000);
    config.shutdown_timeout = ms(5_000);
    config.operation_timeout = ms(1_000);
    config.assignment.min_rebalance_interval = ms(200);
    config
}

/// The checker's gap bound for workers running `config`: the longest a partition may stay
/// unheld after the last fault healed — two heartbeat TTLs, the emergency grace period, the
/// election TTL and 2 s.
fn gap_bound(config: &Config) -> Duration {
    config.heartbeat_ttl * 2
        + config.emergency_grace_period()
        + config.election_ttl
        + Duration::from_secs(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid() {
        demo_config().validate().unwrap();
    }
}
