//! Balance, movement and speed of the built-in assignment strategies.
//!
//! ```text
//! cargo run --release -p parti --example strategy_report            # a table
//! cargo run --release -p parti --example strategy_report -- --json  # one JSON array
//! ```
//!
//! One row per (strategy, workers, partitions, weights) case. `uniform` gives every partition
//! weight 100; `skewed` gives 5% of them (picked with a fixed seed) 100 times that. Times are
//! medians; `reassign_ms` is the assignment with `previous` after one worker joined. Moved
//! ratios: weight that changed owner on n→n+1 ÷ W/(n+1), and on n→n−1 ÷ the weight the
//! removed worker held (1.0 is the minimum for both).

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use parti::{
    AssignmentMap, AssignmentStrategy, ConsistentHash, Partition, RoundRobin,
    WeightedConsistentHash, WorkerId,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One measured case.
#[derive(Debug, Serialize)]
pub struct Row {
    strategy: String,
    workers: usize,
    partitions: usize,
    weights: &'static str,
    assign_ms: f64,
    reassign_ms: f64,
    max_over_mean: f64,
    scale_up_moved_ratio: f64,
    scale_down_moved_ratio: f64,
    exactly_once: bool,
}

/// The workload of one case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Worker count before scaling.
    pub workers: usize,
    /// Partition count.
    pub partitions: usize,
    /// `true` for the skewed weights.
    pub skewed: bool,
}

/// The cases of the report (issue 3).
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (workers, partitions) in [(30, 5_000), (1_000, 100_000)] {
        for skewed in [false, true] {
            cases.push(Case {
                workers,
                partitions,
                skewed,
            });
        }
    }
    cases
}

/// The strategies, with their default settings.
pub fn strategies() -> Vec<Box<dyn AssignmentStrategy>> {
    vec![
        Box::new(ConsistentHash::default()),
        Box::new(RoundRobin),
        Box::new(WeightedConsistentHash::default()),
    ]
}

fn workers(n: usize) -> Vec<WorkerId> {
    (0..n)
        .map(|i| WorkerId::new(format!("worker-{i}")))
        .collect()
}

fn partitions(case: Case) -> Result<Vec<Partition>, parti::Error> {
    let mut weights = vec![100u64; case.partitions];
    if case.skewed {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut indices: Vec<usize> = (0..case.partitions).collect();
        indices.shuffle(&mut rng);
        for &i in &indices[..case.partitions / 20] {
            weights[i] = 10_000;
        }
    }
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Partition::new([format!("tenant-{}", i % 97), format!("p-{i}")], w))
        .collect()
}

fn median_ms(
    runs: usize,
    mut f: impl FnMut() -> Result<AssignmentMap, parti::Error>,
) -> Result<f64, parti::Error> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let map = black_box(f()?);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(map);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn moved_weight(before: &AssignmentMap, after: &AssignmentMap) -> u64 {
    let old = before.owners();
    after
        .iter()
        .flat_map(|(w, list)| list.iter().map(move |p| (w, p)))
        .filter(|(w, p)| old.get(p.keys()) != Some(w))
        .map(|(_, p)| p.effective_weight())
        .sum()
}

/// Measures one strategy on one case, timing `runs` assignments of each kind.
pub fn measure(
    strategy: &dyn AssignmentStrategy,
    case: Case,
    runs: usize,
) -> Result<Row, parti::Error> {
    let parts = partitions(case)?;
    let total: u64 = parts.iter().map(Partition::effective_weight).sum();
    let before = workers(case.workers);
    let grown = workers(case.workers + 1);
    let removed = WorkerId::new(format!(
        "worker-{}",
        StdRng::seed_from_u64(case.workers as u64).random_range(0..case.workers)
    ));
    let shrunk: Vec<WorkerId> = before.iter().filter(|w| **w != removed).cloned().collect();

    let cold = strategy.assign(&before, &parts, None)?;
    let up = strategy.assign(&grown, &parts, Some(&cold))?;
    let down = strategy.assign(&shrunk, &parts, Some(&cold))?;
    let exactly_once = cold.verify(&before, &parts).is_ok()
        && up.verify(&grown, &parts).is_ok()
        && down.verify(&shrunk, &parts).is_ok();

    let mean = total as f64 / case.workers as f64;
    let max_load = before.iter().map(|w| cold.load(w)).max().unwrap_or(0);
    let share = total as f64 / (case.workers + 1) as f64;

    Ok(Row {
        strategy: strategy.name().to_owned(),
        workers: case.workers,
        partitions: case.partitions,
        weights: if case.skewed { "skewed" } else { "uniform" },
        assign_ms: median_ms(runs, || strategy.assign(&before, &parts, None))?,
        reassign_ms: median_ms(runs, || strategy.assign(&grown, &parts, Some(&cold)))?,
        max_over_mean: max_load as f64 / mean,
        scale_up_moved_ratio: moved_weight(&cold, &up) as f64 / share,
        scale_down_moved_ratio: moved_weight(&cold, &down) as f64 / cold.load(&removed) as f64,
        exactly_once,
    })
}

/// Every case with every strategy.
pub fn report(runs: usize) -> Result<Vec<Row>, parti::Error> {
    let mut rows = Vec::new();
    for case in cases() {
        for strategy in strategies() {
            rows.push(measure(strategy.as_ref(), case, runs)?);
        }
    }
    Ok(rows)
}

/// Prints the rows as an aligned table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<25} {:>7} {:>9} {:>8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>6}",
        "strategy",
        "workers",
        "parts",
        "weights",
        "assign_ms",
        "reassign_ms",
        "max/mean",
        "up_moved",
        "dn_moved",
        "once"
    );
    for r in rows {
        println!(
            "{:<25} {:>7} {:>9} {:>8} {:>10.3} {:>12.3} {:>9.3} {:>9.3} {:>9.3} {:>6}",
            r.strategy,
            r.workers,
            r.partitions,
            r.weights,
            r.assign_ms,
            r.reassign_ms,
            r.max_over_mean,
            r.scale_up_moved_ratio,
            r.scale_down_moved_ratio,
            r.exactly_once
        );
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let rows = report(15)?;
    if std::env::args().any(|a| a == "--json") {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}
