//! Balance, movement and speed of the built-in assignment strategies.
//!
//! ```text
//! cargo run --release -p parti --example strategy_report                 # rows and ring
//! cargo run --release -p parti --example strategy_report -- --json       # as one JSON object
//! cargo run --release -p parti --example strategy_report -- --ring --large  # only these two
//! ```
//!
//! Three sections; `--rows`, `--ring` and `--large` pick which run (default: `--rows --ring`).
//! `--json` prints them as the fields `rows`, `ring` and `large` of one object (`null` when not
//! run).
//!
//! - `rows`: one row per (strategy, workers, partitions, weights) case. `uniform` gives every
//!   partition weight 100; `skewed` gives 5% of them (picked with a fixed seed) 100 times that.
//!   Times are medians; `reassign_ms` is the assignment with `previous` after one worker joined.
//!   Moved ratios: weight that changed owner on n→n+1 ÷ W/(n+1), and on n→n−1 ÷ the weight the
//!   removed worker held (1.0 is the minimum for both). `max_over_mean` is the balance of the
//!   cold start, `up_max_over_mean` and `down_max_over_mean` that after the two changes.
//! - `ring`: [`ConsistentHash`] side by side with a plain xxh3 ring of the same virtual nodes
//!   ([`plain_ring`], textbook code kept here) on 1,000 workers × 100,000 partitions, both
//!   returning the same [`AssignmentMap`]: interleaved runs, medians and their ratio, and
//!   whether the two maps are equal. Also the plain ring's owner lookups alone
//!   ([`plain_ring_owners`], no map) and the ratio to those.
//! - `large` (slow): [`WeightedConsistentHash`] on 10,000 workers × 1,000,000 partitions,
//!   uniform then skewed, with the fields of `rows`.

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
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// One measured case.
#[derive(Debug, Serialize)]
pub struct Row {
    strategy: String,
    workers: usize,
    partitions: usize,
    weights: &'static str,
    assign_ms: f64,
    reassign_ms: f64,
    /// `AssignmentMap::verify` of the cold map (the leader runs it before every publish).
    verify_ms: f64,
    max_over_mean: f64,
    up_max_over_mean: f64,
    down_max_over_mean: f64,
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

/// The cases of the `large` section.
pub fn large_cases() -> Vec<Case> {
    [false, true]
        .map(|skewed| Case {
            workers: 10_000,
            partitions: 1_000_000,
            skewed,
        })
        .to_vec()
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

fn median_ms<T>(
    runs: usize,
    mut f: impl FnMut() -> Result<T, parti::Error>,
) -> Result<f64, parti::Error> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(time_ms(&mut f)?);
    }
    Ok(median(times))
}

/// Milliseconds taken by one call of `f`, dropping its result outside the timing.
fn time_ms<T>(f: impl FnOnce() -> Result<T, parti::Error>) -> Result<f64, parti::Error> {
    let start = Instant::now();
    let map = black_box(f()?);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    drop(map);
    Ok(ms)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
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

/// The heaviest load of `map` over its mean load.
fn max_over_mean(map: &AssignmentMap, total: u64) -> f64 {
    let max = map.iter().map(|(w, _)| map.load(w)).max().unwrap_or(0);
    max as f64 * map.len() as f64 / total as f64
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
    let share = total as f64 / (case.workers + 1) as f64;

    Ok(Row {
        strategy: strategy.name().to_owned(),
        workers: case.workers,
        partitions: case.partitions,
        weights: if case.skewed { "skewed" } else { "uniform" },
        assign_ms: median_ms(runs, || strategy.assign(&before, &parts, None))?,
        reassign_ms: median_ms(runs, || strategy.assign(&grown, &parts, Some(&cold)))?,
        verify_ms: median_ms(runs, || cold.verify(&before, &parts))?,
        max_over_mean: max_over_mean(&cold, total),
        up_max_over_mean: max_over_mean(&up, total),
        down_max_over_mean: max_over_mean(&down, total),
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

/// The `large` section: [`WeightedConsistentHash`] on every large case.
pub fn large_report(runs: usize) -> Result<Vec<Row>, parti::Error> {
    let strategy = WeightedConsistentHash::default();
    large_cases()
        .into_iter()
        .map(|case| measure(&strategy, case, runs))
        .collect()
}

/// The textbook consistent-hash ring the `ring` section compares [`ConsistentHash`] with: the
/// same points (`virtual_nodes` xxh3 hashes of each worker ID) and the same partition hashes,
/// a binary search per partition, the owners grouped into an [`AssignmentMap`]. No duplicate
/// check, no tricks.
pub fn plain_ring(
    workers: &[WorkerId],
    parts: &[Partition],
    virtual_nodes: u32,
    seed: u64,
) -> AssignmentMap {
    let mut workers = workers.to_vec();
    workers.sort_unstable();
    workers.dedup();
    let owners = plain_ring_owners(&workers, parts, virtual_nodes, seed);
    let mut lists = vec![Vec::new(); workers.len()];
    for (p, owner) in parts.iter().zip(owners) {
        lists[owner].push(p.clone());
    }
    // Collecting sorts each worker's list, as every strategy's map is.
    workers.into_iter().zip(lists).collect()
}

/// The ring part of [`plain_ring`] alone: for each partition, the index of its owner in
/// `workers` (sorted and de-duplicated, not empty).
pub fn plain_ring_owners(
    workers: &[WorkerId],
    parts: &[Partition],
    virtual_nodes: u32,
    seed: u64,
) -> Vec<usize> {
    let mut points: Vec<(u64, usize)> = Vec::new();
    for (index, worker) in workers.iter().enumerate() {
        for v in 0..virtual_nodes.max(1) {
            // The point seeds of `ConsistentHash`, so that both give the same map.
            let point_seed = seed ^ u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            points.push((
                xxh3_64_with_seed(worker.as_str().as_bytes(), point_seed),
                index,
            ));
        }
    }
    points.sort_unstable();
    parts
        .iter()
        .map(|p| {
            let hash = p.hash_with_seed(seed);
            let at = points.partition_point(|&(h, _)| h < hash);
            points
                .get(at)
                .or(points.first())
                .map_or(0, |&(_, owner)| owner)
        })
        .collect()
}

/// The `ring` section: [`ConsistentHash`] and [`plain_ring`] side by side.
#[derive(Debug, Serialize)]
pub struct RingComparison {
    workers: usize,
    partitions: usize,
    virtual_nodes: u32,
    runs: usize,
    consistent_hash_ms: f64,
    /// [`plain_ring`]: the same map.
    plain_ring_ms: f64,
    /// `consistent_hash_ms / plain_ring_ms`.
    ratio: f64,
    /// [`plain_ring_owners`]: the owners only, no map (a lower bound for any ring strategy).
    plain_ring_owners_ms: f64,
    /// `consistent_hash_ms / plain_ring_owners_ms`.
    ratio_to_owners: f64,
    /// Whether [`ConsistentHash`] and [`plain_ring`] gave equal maps.
    same_map: bool,
}

/// Times [`ConsistentHash`] (default settings), [`plain_ring`] and [`plain_ring_owners`] with
/// the same virtual nodes on 1,000 workers × 100,000 uniform partitions, taking turns, `runs`
/// times each.
pub fn compare_ring(runs: usize) -> Result<RingComparison, parti::Error> {
    let case = Case {
        workers: 1_000,
        partitions: 100_000,
        skewed: false,
    };
    let parts = partitions(case)?;
    let ws = workers(case.workers);
    let strategy = ConsistentHash::default();
    let (vnodes, seed) = (strategy.virtual_nodes(), strategy.seed());
    let same_map = strategy.assign(&ws, &parts, None)? == plain_ring(&ws, &parts, vnodes, seed);
    let mut sorted = ws.clone();
    sorted.sort_unstable();
    let mut times = [(); 3].map(|()| Vec::with_capacity(runs));
    for _ in 0..runs {
        times[0].push(time_ms(|| strategy.assign(&ws, &parts, None))?);
        times[1].push(time_ms(|| Ok(plain_ring(&ws, &parts, vnodes, seed)))?);
        times[2].push(time_ms(|| {
            Ok(plain_ring_owners(&sorted, &parts, vnodes, seed))
        })?);
    }
    let [ours, plain, owners] = times.map(median);
    Ok(RingComparison {
        workers: case.workers,
        partitions: case.partitions,
        virtual_nodes: vnodes,
        runs,
        consistent_hash_ms: ours,
        plain_ring_ms: plain,
        ratio: ours / plain,
        plain_ring_owners_ms: owners,
        ratio_to_owners: ours / owners,
        same_map,
    })
}

/// Prints the rows as an aligned table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<25} {:>7} {:>9} {:>8} {:>10} {:>12} {:>9} {:>8} {:>8} {:>9} {:>9} {:>6}",
        "strategy",
        "workers",
        "parts",
        "weights",
        "assign_ms",
        "reassign_ms",
        "max/mean",
        "up_max",
        "dn_max",
        "up_moved",
        "dn_moved",
        "once"
    );
    for r in rows {
        println!(
            "{:<25} {:>7} {:>9} {:>8} {:>10.3} {:>12.3} {:>9.3} {:>8.3} {:>8.3} {:>9.3} {:>9.3} {:>6}",
            r.strategy,
            r.workers,
            r.partitions,
            r.weights,
            r.assign_ms,
            r.reassign_ms,
            r.max_over_mean,
            r.up_max_over_mean,
            r.down_max_over_mean,
            r.scale_up_moved_ratio,
            r.scale_down_moved_ratio,
            r.exactly_once
        );
    }
}

/// Prints the `ring` section on one line.
pub fn print_ring(r: &RingComparison) {
    println!(
        "ring, {} workers × {} partitions, {} virtual nodes, median of {}: consistent_hash \
         {:.3} ms, plain ring {:.3} ms (ratio {:.2}, same map: {}), plain ring owners only \
         {:.3} ms (ratio {:.2})",
        r.workers,
        r.partitions,
        r.virtual_nodes,
        r.runs,
        r.consistent_hash_ms,
        r.plain_ring_ms,
        r.ratio,
        r.same_map,
        r.plain_ring_owners_ms,
        r.ratio_to_owners
    );
}

/// Everything one run of the report measured.
#[derive(Debug, Serialize)]
struct Report {
    rows: Option<Vec<Row>>,
    ring: Option<RingComparison>,
    large: Option<Vec<Row>>,
}

/// What `--help` prints.
const USAGE: &str = "\
usage: strategy_report [--rows] [--ring] [--large] [--json]

  --rows   every strategy on every case: balance, movement, assign/reassign times
  --ring   ConsistentHash side by side with a plain xxh3 ring of the same virtual nodes
           (1,000 workers x 100,000 partitions): both times, their ratio, same map or not
  --large  WeightedConsistentHash on 10,000 workers x 1,000,000 partitions (slow)
  --json   print the sections run as one JSON object (fields rows, ring, large)

Without --rows, --ring or --large: --rows --ring.";

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    if flag("--help") || flag("-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let known = ["--rows", "--ring", "--large", "--json"];
    if let Some(unknown) = args.iter().find(|a| !known.contains(&a.as_str())) {
        eprintln!("unknown argument {unknown:?}\n\n{USAGE}");
        std::process::exit(2);
    }
    let chosen = flag("--rows") || flag("--ring") || flag("--large");
    let report = Report {
        rows: (!chosen || flag("--rows"))
            .then(|| report(15))
            .transpose()?,
        ring: (!chosen || flag("--ring"))
            .then(|| compare_ring(31))
            .transpose()?,
        large: flag("--large").then(|| large_report(5)).transpose()?,
    };
    if flag("--json") {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for rows in [&report.rows, &report.large].into_iter().flatten() {
        print_table(rows);
    }
    if let Some(ring) = &report.ring {
        print_ring(ring);
    }
    Ok(())
}
