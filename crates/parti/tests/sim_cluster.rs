//! The deterministic cluster simulation (DESIGN.md "Time, tests and the two stores"): many
//! managers over one in-memory store on tokio's paused clock, seeded faults, invariants checked
//! all along. See `sim/mod.rs` for the schedule and the checks.
//!
//! - `PARTI_SIM_SEEDS=N` runs seeds `0..N` (default 500), split over the shard tests so that a
//!   parallel runner uses every core;
//! - `PARTI_SIM_SEED=S` runs seed `S` alone and prints its trace as it goes;
//! - `PARTI_SIM_SLOW_STORE=1` gives one seed in five a slow store (see `sim/mod.rs`: it finds a
//!   known publisher weakness, so it is off by default).
//!
//! A failure prints the seed and the event trace. The schedule, the store's faults and the
//! partitions follow from the seed; tokio's `select!` branch order follows from it too when
//! built with `RUSTFLAGS="--cfg tokio_unstable"` (tokio seeds it at random otherwise).

#![allow(clippy::unwrap_used, clippy::expect_used, unexpected_cfgs)]

mod sim;

use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEFAULT_SEEDS: u64 = 500;
const SHARDS: u64 = 4;
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
    for &seed in &seeds {
        progress.send(Some(seed)).unwrap();
        match sim::run_seed(seed, verbose) {
            Ok(outcome) => {
                simulated += outcome.simulated;
                events += outcome.events;
                publishes += outcome.publishes;
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
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
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
