//! How fast ownership recovers: crashes, a leader crash and a planned move, measured from the
//! ownership records of real [`Manager`]s on a real nats-server.
//!
//! ```text
//! cargo run --release -p parti --example ownership_bench               # a summary
//! cargo run --release -p parti --example ownership_bench -- --json     # one JSON object
//! cargo run --release -p parti --example ownership_bench -- --rounds 10 --workers 6 --partitions 128
//! ```
//!
//! Each round starts its own nats-server (found like the test kit finds it:
//! `$PARTI_NATS_SERVER`, `.tools/bin`, then `PATH`) and runs workers with
//! [`Config::fast_for_tests`] timings over P partitions (`--partitions`, default 64), every
//! worker reporting to one [`OwnershipRecorder`]. A round, with N = `--workers` (default 4):
//!
//! 1. N − 1 workers cold-start; the cluster settles (every partition held once, every worker
//!    `Stable` and holding exactly its assignment, one leader — for a quiet period).
//! 2. **Scale-up**: one worker joins (N − 1 → N). `handoff_gap_ms` is the ownership checker's
//!    release → next hold figure over every partition that moved (all rounds together);
//!    `join_to_last_hold_ms` runs from the call that starts the new worker to the last `hold`.
//! 3. **Crash**: a non-leader is [`Manager::kill`]ed (no stop path, nothing released).
//!    `crash_to_held_ms` runs from the kill to the `hold` by another worker of the last
//!    partition the victim held.
//! 4. A replacement joins (N − 1 → N) and the cluster settles again.
//! 5. **Leader crash**: the leader is killed; `leader_crash_to_held_ms` as in 3.
//! 6. The rest stop gracefully and the ownership checker judges every record of the round
//!    (tolerance 0, the tests' gap bound).
//!
//! Figures are the median (the upper middle for an even count) and the max over the rounds,
//! in ms. A violation found by the checker makes the example exit with status 2 after
//! printing.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use parti::ownership::now_ns;
use parti::records::{CLUSTER_KEY, ClusterRecord};
use parti::source::Static;
use parti::store::{Bucket, BucketSpec, NatsStore, Store, WatchEvent};
use parti::{
    Config, Manager, OwnershipEvent, OwnershipRecord, OwnershipRecorder, Partition, State,
};
use parti_testkit::checker::{CheckConfig, FaultRecord, History, Report, VersionRecord, check};
use parti_testkit::{NatsServer, wait_until_sync};
use tokio_util::task::AbortOnDropHandle;

/// Errors of the example: anything, with a message.
type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The longest a cluster may take to settle, or ownership to recover, before the round fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Command-line options.
#[derive(Debug, Clone, Copy)]
struct Options {
    /// Workers in the cluster when a worker is killed.
    workers: usize,
    /// Partitions in the source.
    partitions: usize,
    /// Rounds, each on a fresh nats-server.
    rounds: usize,
    /// One JSON object instead of a summary.
    json: bool,
}

impl Options {
    /// Reads `--workers N`, `--partitions P`, `--rounds R` and `--json`.
    fn parse(args: &[String]) -> Result<Self> {
        let options = Self {
            workers: number(args, "--workers", 4)?,
            partitions: number(args, "--partitions", 64)?,
            rounds: number(args, "--rounds", 5)?,
            json: args.iter().any(|a| a == "--json"),
        };
        if options.workers < 2 {
            return Err("--workers must be at least 2 (a leader and a non-leader)".into());
        }
        if options.partitions < options.workers {
            return Err("--partitions must be at least --workers".into());
        }
        if options.rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        Ok(options)
    }
}

/// The value after `name`, or `default` when `name` is absent.
fn number(args: &[String], name: &str, default: usize) -> Result<usize> {
    let Some(at) = args.iter().position(|a| a == name) else {
        return Ok(default);
    };
    let value = args
        .get(at + 1)
        .ok_or_else(|| format!("{name} needs a value"))?;
    value
        .parse()
        .map_err(|e| format!("{name} {value}: {e}").into())
}

/// What one round measured.
#[derive(Debug)]
struct Round {
    /// Kill of a non-leader → last of its partitions held again, in ns.
    crash_to_held_ns: u64,
    /// Kill of the leader → last of its partitions held again, in ns.
    leader_crash_to_held_ns: u64,
    /// Start of the joining worker → the last `hold` of the scale-up, in ns.
    join_to_last_hold_ns: u64,
    /// The records until the scale-up settled (before any kill), partition IDs prefixed with
    /// the round so that rounds can be judged together.
    scale_up_records: Vec<OwnershipRecord>,
    /// The checker's verdict over every record of the round.
    report: Report,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options::parse(&args)?;
    let config = Config::fast_for_tests();

    let mut rounds = Vec::with_capacity(options.rounds);
    for round in 0..options.rounds {
        let measured = run_round(&options, &config, round).await?;
        eprintln!(
            "round {}: crash {:.1} ms, leader crash {:.1} ms, join → last hold {:.1} ms, {} violation(s)",
            round + 1,
            ms_of(measured.crash_to_held_ns),
            ms_of(measured.leader_crash_to_held_ns),
            ms_of(measured.join_to_last_hold_ns),
            measured.report.violations.len()
        );
        if !measured.report.is_clean() {
            eprintln!("{}", measured.report);
        }
        rounds.push(measured);
    }

    // The planned moves of every round, judged together: the checker's hand-off figures.
    let handoffs = check(
        &History {
            ownership: rounds
                .iter()
                .flat_map(|r| r.scale_up_records.iter().cloned())
                .collect(),
            ..History::default()
        },
        &CheckConfig {
            tolerance_ns: 0,
            gap_bound_ns: gap_bound_ns(&config),
        },
    )
    .counts;

    let crash = Stat::of(rounds.iter().map(|r| r.crash_to_held_ns));
    let leader_crash = Stat::of(rounds.iter().map(|r| r.leader_crash_to_held_ns));
    let join = Stat::of(rounds.iter().map(|r| r.join_to_last_hold_ns));
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for round in &rounds {
        for (kind, n) in round.report.violations_by_kind() {
            *by_kind.entry(kind).or_insert(0) += n;
        }
    }
    let violations: usize = by_kind.values().sum();
    let crash_bound = crash_bound_ns(&config);
    let gap_bound = gap_bound_ns(&config);

    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "workers": options.workers,
                "partitions": options.partitions,
                "rounds": options.rounds,
                "timings_ms": {
                    "heartbeat_interval": ms(config.heartbeat_interval),
                    "heartbeat_ttl": ms(config.heartbeat_ttl),
                    "emergency_grace_period": ms(config.emergency_grace_period()),
                    "lease_margin": ms(lease_margin(&config)),
                    "election_ttl": ms(config.election_ttl),
                    "planned_scale_window": ms(config.planned_scale_window),
                    "min_rebalance_interval": ms(config.assignment.min_rebalance_interval),
                },
                "crash_to_held_ms": crash.json(),
                "leader_crash_to_held_ms": leader_crash.json(),
                "crash_bound_ms": ms_of(crash_bound),
                "checker_gap_bound_ms": ms_of(gap_bound),
                "handoff_gap_ms": {
                    "median": ms_of(handoffs.handoff_gap_median_ns),
                    "max": ms_of(handoffs.handoff_gap_max_ns),
                    "moves": handoffs.handoffs,
                },
                "join_to_last_hold_ms": join.json(),
                "violations": violations,
                "violations_by_kind": by_kind,
            })
        );
    } else {
        println!(
            "{} round(s), {} workers, {} partitions; heartbeatTtl {} ms, grace {} ms, lease margin {} ms, electionTtl {} ms",
            options.rounds,
            options.workers,
            options.partitions,
            ms(config.heartbeat_ttl),
            ms(config.emergency_grace_period()),
            ms(lease_margin(&config)),
            ms(config.election_ttl)
        );
        println!(
            "crash → held:          median {:.1} ms, max {:.1} ms (bound {:.1} ms)",
            crash.median,
            crash.max,
            ms_of(crash_bound)
        );
        println!(
            "leader crash → held:   median {:.1} ms, max {:.1} ms (bound {:.1} ms; checker gap bound {:.1} ms)",
            leader_crash.median,
            leader_crash.max,
            ms_of(crash_bound),
            ms_of(gap_bound)
        );
        println!(
            "scale-up hand-off gap: median {:.1} ms, max {:.1} ms over {} move(s); join → last hold median {:.1} ms, max {:.1} ms",
            ms_of(handoffs.handoff_gap_median_ns),
            ms_of(handoffs.handoff_gap_max_ns),
            handoffs.handoffs,
            join.median,
            join.max
        );
        println!("ownership checker: {violations} violation(s) {by_kind:?}");
    }
    if violations > 0 {
        // Every round's server is already gone: nothing is left behind.
        std::process::exit(2);
    }
    Ok(())
}

/// One round on a fresh nats-server (see the module docs for its steps).
async fn run_round(options: &Options, config: &Config, round: usize) -> Result<Round> {
    let server = NatsServer::start().await?;
    let partitions: Vec<Partition> = (0..options.partitions)
        .map(|i| Partition::new([format!("p{i}")], 100))
        .collect::<parti::Result<_>>()?;
    let ids: Vec<String> = partitions.iter().map(Partition::id).collect();
    let cluster = Cluster {
        server: &server,
        config,
        source: Static::new(partitions),
        recorder: OwnershipRecorder::default(),
        partitions: options.partitions,
        // Long enough for a heartbeat or two to go by without anything moving.
        quiet: config.heartbeat_interval * 2,
    };
    let commits = Arc::new(Mutex::new(Vec::new()));
    let _watch = watch_commits(&server, config, Arc::clone(&commits)).await?;
    let mut faults = Vec::new();

    // 1. Cold start of N − 1 workers.
    let started =
        futures::future::join_all((1..options.workers).map(|_| cluster.start_worker())).await;
    let mut live = started.into_iter().collect::<Result<Vec<_>>>()?;
    cluster
        .settle(&live, None, "the cold start to settle")
        .await?;
    let window_from = now_ns();

    // 2. Scale-up: one worker joins.
    let join_ns = now_ns();
    let joined = cluster.start_worker().await?;
    let newcomer = joined.instance_id().to_owned();
    live.push(joined);
    cluster
        .settle(&live, Some(&newcomer), "the scale-up to settle")
        .await?;
    let scale_up_records: Vec<OwnershipRecord> = cluster
        .recorder
        .records()
        .into_iter()
        .map(|record| tag_partition(record, round))
        .collect();
    let join_to_last_hold_ns = scale_up_records
        .iter()
        .filter(|r| r.at_ns >= join_ns && matches!(r.event, OwnershipEvent::Hold { .. }))
        .map(|r| r.at_ns)
        .max()
        .map_or(0, |last| last - join_ns);

    // 3. A non-leader crashes.
    let victim = live
        .iter()
        .position(|m| !m.is_leader())
        .ok_or("no non-leader to kill")?;
    let crash_to_held_ns = cluster.crash(&mut live, victim, &mut faults).await?;
    cluster.settle(&live, None, "the crash to settle").await?;

    // 4. A replacement joins, so that the leader is killed in a cluster of N again.
    let replacement = cluster.start_worker().await?;
    let replacement_instance = replacement.instance_id().to_owned();
    live.push(replacement);
    cluster
        .settle(
            &live,
            Some(&replacement_instance),
            "the replacement to settle",
        )
        .await?;

    // 5. The leader crashes.
    let leader = live
        .iter()
        .position(Manager::is_leader)
        .ok_or("no leader to kill")?;
    let leader_crash_to_held_ns = cluster.crash(&mut live, leader, &mut faults).await?;
    cluster
        .settle(&live, None, "the leader crash to settle")
        .await?;
    let window_to = now_ns();

    // 6. Graceful stop, then the verdict over everything recorded.
    for (manager, stopped) in live
        .iter()
        .zip(futures::future::join_all(live.iter().map(|m| m.stop())).await)
    {
        if let Err(e) = stopped {
            eprintln!("stopping {}: {e}", manager.worker_id());
        }
    }
    let versions = commits.lock().map(|c| c.clone()).unwrap_or_default();
    let report = check(
        &History {
            ownership: cluster.recorder.records(),
            faults,
            versions,
            partitions: ids,
            window: (window_from, window_to),
            ..History::default()
        },
        &CheckConfig {
            tolerance_ns: 0,
            gap_bound_ns: gap_bound_ns(config),
        },
    );
    Ok(Round {
        crash_to_held_ns,
        leader_crash_to_held_ns,
        join_to_last_hold_ns,
        scale_up_records,
        report,
    })
}

/// What the workers of one round share.
struct Cluster<'a> {
    /// The round's nats-server.
    server: &'a NatsServer,
    /// Every worker's configuration.
    config: &'a Config,
    /// The partitions.
    source: Static,
    /// Every worker's ownership records.
    recorder: OwnershipRecorder,
    /// How many partitions the source has.
    partitions: usize,
    /// How long the cluster must stay settled to count as settled.
    quiet: Duration,
}

impl Cluster<'_> {
    /// Starts one worker on its own connection; returns once it is `Stable`.
    async fn start_worker(&self) -> Result<Manager> {
        let client = self.server.client().await?;
        let manager = Manager::builder(async_nats::jetstream::new(client))
            .config(self.config.clone())
            .source(self.source.clone())
            .ownership_sink(Arc::new(self.recorder.clone()))
            .start()
            .await?;
        Ok(manager)
    }

    /// Waits until [`settled`] has held for `quiet` (and, when given, `newcomer` holds
    /// something).
    async fn settle(&self, live: &[Manager], newcomer: Option<&str>, what: &str) -> Result<()> {
        let mut since: Option<Instant> = None;
        wait_until_sync(DEADLINE, what, || {
            let records = self.recorder.records();
            let holdings = holdings(&records);
            let ready = settled(live, &holdings, self.partitions)
                && newcomer.is_none_or(|n| holdings.get(n).is_some_and(|h| !h.is_empty()));
            if !ready {
                since = None;
                return false;
            }
            since.get_or_insert_with(Instant::now).elapsed() >= self.quiet
        })
        .await?;
        Ok(())
    }

    /// Kills `live[index]` (taking it out of `live`), records the kill for the checker and
    /// returns the time from the kill until every partition it held is held by another worker.
    async fn crash(
        &self,
        live: &mut Vec<Manager>,
        index: usize,
        faults: &mut Vec<FaultRecord>,
    ) -> Result<u64> {
        let victim = live.remove(index);
        let instance = victim.instance_id().to_owned();
        let lost = holdings(&self.recorder.records())
            .remove(&instance)
            .unwrap_or_default();
        if lost.is_empty() {
            return Err(format!("{} held nothing when it was killed", victim.worker_id()).into());
        }
        let killed_ns = now_ns();
        victim.kill().await;
        faults.push(FaultRecord {
            kind: "kill".into(),
            worker: Some(victim.worker_id().to_string()),
            instance: Some(instance.clone()),
            start_ns: killed_ns,
            end_ns: killed_ns,
            ends_process: true,
        });
        let mut last_hold_ns = 0;
        wait_until_sync(
            DEADLINE,
            "the killed worker's partitions to be held again",
            || match reheld(&self.recorder.records(), &lost, &instance, killed_ns) {
                Some(at) => {
                    last_hold_ns = at;
                    true
                }
                None => false,
            },
        )
        .await?;
        Ok(last_hold_ns.saturating_sub(killed_ns))
    }
}

/// What each instance holds after `records` (arrival order is each instance's own order).
fn holdings(records: &[OwnershipRecord]) -> BTreeMap<String, BTreeSet<String>> {
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for record in records {
        match &record.event {
            OwnershipEvent::Hold { partition, .. } => {
                held.entry(record.instance.clone())
                    .or_default()
                    .insert(partition.clone());
            }
            OwnershipEvent::Release { partition, .. } => {
                if let Some(partitions) = held.get_mut(&record.instance) {
                    partitions.remove(partition);
                }
            }
            _ => {}
        }
    }
    held
}

/// Whether the live workers are settled: all `Stable`, exactly one leader, each holding
/// exactly its assignment, together every partition once.
fn settled(
    live: &[Manager],
    holdings: &BTreeMap<String, BTreeSet<String>>,
    partitions: usize,
) -> bool {
    if live.iter().filter(|m| m.is_leader()).count() != 1 {
        return false;
    }
    let mut union = BTreeSet::new();
    let mut total = 0;
    for manager in live {
        if manager.state() != State::Stable {
            return false;
        }
        let assigned: BTreeSet<String> = manager
            .assignment()
            .partitions
            .iter()
            .map(Partition::id)
            .collect();
        let held = holdings
            .get(manager.instance_id())
            .cloned()
            .unwrap_or_default();
        if held != assigned {
            return false;
        }
        total += held.len();
        union.extend(held);
    }
    total == partitions && union.len() == partitions
}

/// When the last of `lost` was first held by an instance other than `victim` at or after
/// `since_ns`; `None` while one of them is not.
fn reheld(
    records: &[OwnershipRecord],
    lost: &BTreeSet<String>,
    victim: &str,
    since_ns: u64,
) -> Option<u64> {
    let mut first: BTreeMap<&str, u64> = BTreeMap::new();
    for record in records {
        if let OwnershipEvent::Hold { partition, .. } = &record.event
            && record.instance != victim
            && record.at_ns >= since_ns
            && lost.contains(partition)
        {
            let at = first.entry(partition.as_str()).or_insert(record.at_ns);
            *at = (*at).min(record.at_ns);
        }
    }
    (first.len() == lost.len())
        .then(|| first.values().copied().max())
        .flatten()
}

/// `record` with its partition ID prefixed by the round (`r2/p17`).
fn tag_partition(mut record: OwnershipRecord, round: usize) -> OwnershipRecord {
    if let OwnershipEvent::Hold { partition, .. } | OwnershipEvent::Release { partition, .. } =
        &mut record.event
    {
        *partition = format!("r{round}/{partition}");
    }
    record
}

/// Records every committed version of the `cluster` key (for the checker's version rule)
/// until the handle is dropped.
async fn watch_commits(
    server: &NatsServer,
    config: &Config,
    commits: Arc<Mutex<Vec<VersionRecord>>>,
) -> Result<AbortOnDropHandle<()>> {
    let store = NatsStore::new(async_nats::jetstream::new(server.client().await?));
    let bucket: Arc<dyn Bucket> = store
        .bucket(
            &BucketSpec::new(config.kv_buckets.assignment.clone())
                .replicas(config.kv_buckets.replicas),
        )
        .await?;
    let mut stream = bucket.watch(CLUSTER_KEY).await?;
    Ok(AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            let Ok(WatchEvent::Put(entry) | WatchEvent::InitApply(entry)) = event else {
                continue;
            };
            let Ok(record) = parti::store::codec::decode::<ClusterRecord>(
                bucket.name(),
                &entry.key,
                &entry.value,
            ) else {
                continue;
            };
            if let Ok(mut commits) = commits.lock()
                && commits.last().is_none_or(|c| c.version != record.version)
            {
                commits.push(VersionRecord {
                    at_ns: now_ns(),
                    source: "cluster".into(),
                    version: record.version,
                });
            }
        }
    })))
}

/// Median and max of a figure over the rounds, in ms.
#[derive(Debug, Clone)]
struct Stat {
    /// The median (the upper middle for an even count).
    median: f64,
    /// The largest.
    max: f64,
    /// Every round's value, in round order.
    rounds: Vec<f64>,
}

impl Stat {
    /// The figures of `values` (ns).
    fn of(values: impl Iterator<Item = u64>) -> Self {
        let rounds: Vec<u64> = values.collect();
        let mut sorted = rounds.clone();
        sorted.sort_unstable();
        Self {
            median: ms_of(sorted.get(sorted.len() / 2).copied().unwrap_or(0)),
            max: ms_of(sorted.last().copied().unwrap_or(0)),
            rounds: rounds.into_iter().map(ms_of).collect(),
        }
    }

    /// `{"median": …, "max": …, "rounds": […]}`.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "median": self.median, "max": self.max, "rounds": self.rounds })
    }
}

/// The lease margin: a worker's lease ends 5 % of `heartbeatTtl` before its heartbeat key
/// can expire (docs/ownership.md).
fn lease_margin(config: &Config) -> Duration {
    config.heartbeat_ttl / 20
}

/// The bound the contract states for a crash: heartbeatTtl + grace + lease margin + 1 s.
fn crash_bound_ns(config: &Config) -> u64 {
    nanos(
        config.heartbeat_ttl
            + config.emergency_grace_period()
            + lease_margin(config)
            + Duration::from_secs(1),
    )
}

/// The checker's gap bound, as the tests use it: heartbeatTtl + grace + electionTtl + 2 s.
fn gap_bound_ns(config: &Config) -> u64 {
    nanos(
        config.heartbeat_ttl
            + config.emergency_grace_period()
            + config.election_ttl
            + Duration::from_secs(2),
    )
}

/// `d` in nanoseconds.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `d` in milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `ns` in milliseconds, rounded to 0.1 ms.
fn ms_of(ns: u64) -> f64 {
    (ns as f64 / 1e5).round() / 10.0
}
