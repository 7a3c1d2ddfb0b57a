//! The deterministic cluster simulation (DESIGN.md "Time, tests and the two stores"): many
//! managers over one in-memory store on tokio's paused clock, seeded faults, and at the end of
//! each seed the ownership checker (`parti_testkit::checker`) over what every worker *held*.
//! See `sim/mod.rs` for the schedule and the checks, `sim/known.rs` for the failures today's
//! protocol is known to show.
//!
//! - `PARTI_SIM_SEEDS=N` runs seeds `0..N` (default 500), split over the shard tests so that a
//!   parallel runner uses every core;
//! - `PARTI_SIM_SEED=S` runs seed `S` alone, prints its trace as it goes and the checker's
//!   report at the end.
//!
//! A shard fails on a violation that `known.rs` does not explain, printing the seed, the
//! violations and the event trace. At its end it prints how many seeds showed known violations,
//! by kind, with the first few seeds of each kind to replay. The schedule, the store's faults
//! and the partitions follow from the seed; tokio's `select!` branch order follows from it too
//! only when built with `RUSTFLAGS="--cfg tokio_unstable"` (tokio seeds it at random
//! otherwise), so which seeds show a known violation varies from run to run: the gate is on
//! kinds, not on seeds.

#![allow(clippy::unwrap_used, clippy::expect_used, unexpected_cfgs)]

mod sim;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEFAULT_SEEDS: u64 = 500;
const SHARDS: u64 = 4;
/// Seeds listed per violation kind in a shard's summary.
const LISTED_SEEDS: usize = 8;
/// Wall time one seed may take before the run is declared hung (a task that spins without
/// yielding stops the paused clock).
const SEED_WALL_LIMIT: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn run_shard(shard: u64) {
    let (seeds, verbose): (Vec<u64>, bool) = match env_u64("PARTI_SIM_SEED") {
        Some(seed) if shard == 0 => {
            // `RUST_LOG=parti=debug` adds the library's own logs to the trace.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .without_time()
                .with_test_writer()
                .try_init();
            (vec![seed], true)
        }
        Some(_) => return,
        None => {
            let count = env_u64("PARTI_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            ((0..count).filter(|s| s % SHARDS == shard).collect(), false)
        }
    };
    let (progress, watched) = mpsc::channel::<Option<u64>>();
    let watchdog = std::thread::spawn(move || {
        let mut current = None;
        loop {
            match watched.recv_timeout(SEED_WALL_LIMIT) {
                Ok(Some(seed)) => current = Some(seed),
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprintln!(
                        "simulation seed {current:?} hung for {SEED_WALL_LIMIT:?} of wall time"
                    );
                    std::process::exit(101);
                }
            }
        }
    });
    let started = Instant::now();
    let (mut simulated, mut events, mut publishes) = (Duration::ZERO, 0, 0);
    let mut failures = Vec::new();
    let mut known = Known::default();
    for &seed in &seeds {
        progress.send(Some(seed)).unwrap();
        match sim::run_seed(seed, verbose) {
            Ok(outcome) => {
                simulated += outcome.simulated;
                events += outcome.events;
                publishes += outcome.publishes;
                known.add(seed, &outcome);
            }
            Err(report) => {
                eprintln!("{report}");
                failures.push(seed);
            }
        }
    }
    progress.send(None).unwrap();
    watchdog.join().unwrap();
    println!(
        "shard {shard}: {} seeds, {:.1} simulated hours, {events} events, {publishes} publishes, {:.1}s wall",
        seeds.len(),
        simulated.as_secs_f64() / 3600.0,
        started.elapsed().as_secs_f64()
    );
    println!("{}", known.summary(shard));
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

/// The known violations a shard saw: per kind, the seeds and the faults those seeds injected.
#[derive(Default)]
struct Known {
    seeds: usize,
    by_kind: BTreeMap<String, KindTally>,
}

#[derive(Default)]
struct KindTally {
    seeds: Vec<u64>,
    violations: usize,
    /// Fault kind → how many of those seeds injected it.
    faults: BTreeMap<String, usize>,
}

impl Known {
    fn add(&mut self, seed: u64, outcome: &sim::Outcome) {
        if outcome.known.is_empty() {
            return;
        }
        self.seeds += 1;
        for (kind, &count) in &outcome.known {
            let tally = self.by_kind.entry(kind.clone()).or_default();
            tally.seeds.push(seed);
            tally.violations += count;
            for fault in &outcome.faults {
                *tally.faults.entry(fault.clone()).or_default() += 1;
            }
        }
    }

    fn summary(&self, shard: u64) -> String {
        let mut out = format!(
            "shard {shard}: {} seeds with known violations (sim/known.rs)",
            self.seeds
        );
        for (kind, tally) in &self.by_kind {
            let first: Vec<String> = tally
                .seeds
                .iter()
                .take(LISTED_SEEDS)
                .map(u64::to_string)
                .collect();
            let mut faults: Vec<(&String, &usize)> = tally.faults.iter().collect();
            faults.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let faults: BTreeSet<String> = faults
                .iter()
                .take(4)
                .map(|(f, n)| format!("{f} in {n}"))
                .collect();
            out.push_str(&format!(
                "\n  {kind}: {} violations in {} seeds (replay with PARTI_SIM_SEED=S: {}); \
                 most common faults: {}\n    why: {}",
                tally.violations,
                tally.seeds.len(),
                first.join(", "),
                faults.into_iter().collect::<Vec<_>>().join(", "),
                sim::known::reason(kind).unwrap_or("?")
            ));
        }
        out
    }
}

#[test]
fn simulated_cluster_shard_0() {
    run_shard(0);
}

#[test]
fn simulated_cluster_shard_1() {
    run_shard(1);
}

#[test]
fn simulated_cluster_shard_2() {
    run_shard(2);
}

#[test]
fn simulated_cluster_shard_3() {
    run_shard(3);
}
