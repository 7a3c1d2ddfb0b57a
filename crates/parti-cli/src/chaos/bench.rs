//! `parti bench`: a fleet of real `parti worker` processes, measured.
//!
//! The servers, the fleet, the observer and the logs are those of `parti chaos`, and so are
//! its fast timings unless `--default-timings`; there is no producer and no fault schedule. Once the fleet is stable, two faults: a follower is killed
//! (`kill -9`), then the leader, each restarted at once as a supervisor would. The figures:
//!
//! - `allAppliedMs`, `consistentMs`: from the first process's start until every process has
//!   applied an assignment, and until the committed map is stable, names every process's
//!   worker and places every partition.
//! - `coldStartPublishes`: the maps published until then (the `history.*` entries).
//! - `kvWritesAtStart`: messages appended to each bucket's stream until then;
//!   `stableIdWritesPerWorker` the stable-ID bucket's share of one worker.
//! - `steadyKvWritesPerSec`, `steadyCpuPercent` (`natsServer`, all nodes; `fleet`, all worker
//!   processes; percent of one core): over `--steady` of steady state.
//! - `rssKb`: the worker processes' resident sets (`mean`, `max`), once steady.
//! - `crashToHeldMs`, `leaderCrashToHeldMs`: from each kill until every partition the killed
//!   process held was held by another one, read from the workers' ownership logs (`"not
//!   recovered"` when some never was). Only the victim's partitions count: the restarted
//!   process comes back under a new ID (its old one is still held), and the rebalance its join
//!   starts is not the crash's recovery.
//! - `violations`: what the ownership checker finds over the whole run (0 expected).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use backon::Retryable as _;
use clap::Args;
use parti::ownership::{OwnershipEvent, OwnershipRecord, now_ns};
use parti_testkit::checker::{self, CheckConfig, FaultRecord, History};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::fleet::Fleet;
use super::nats::Backend;
use super::plan::{FaultKind, Timings};
use super::{Runner, millis, nanos, observer, plan, read_logs};
use crate::global::Global;
use crate::output::print;
use crate::rng::{SplitMix, random_seed};
use crate::signal::stop_requested;

/// Options of `parti bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(3..=200))]
    pub(crate) workers: u16,
    /// Partitions (`p0`, `p1`, …, weight 100 each).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) partitions: u32,
    /// Run against a 3-node NATS cluster (every bucket and the stream at 3 replicas).
    #[arg(long)]
    pub(crate) cluster: bool,
    /// How long the steady state is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) steady: Duration,
    /// The library's default timings (`coldStartWindow` 30 s, `heartbeatTtl` 6 s,
    /// `electionTtl` 10 s, …) instead of the chaos run's fast ones. Fast timings on a small
    /// machine leave a fleet of 100 processes no room: leases of 1 s lapse under the load.
    #[arg(long)]
    pub(crate) default_timings: bool,
    /// Seed of the choice of the killed follower (random by default).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep the run directory (configuration, every worker's logs and output, and the
    /// checker's violations in `violations.json`) and print its path.
    #[arg(long)]
    pub(crate) keep_dir: bool,
}

/// Runs `parti bench`. The global connection options do not apply: it starts its own servers.
pub(crate) async fn run(args: BenchArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("parti-bench-")
        .tempdir()
        .context("cannot create the run directory")?;
    let figures = tokio::select! {
        figures = execute(&args, dir.path()) => figures,
        signal = stop_requested() => {
            eprintln!("{signal}: stopped (workers and servers killed, no figures)");
            return Ok(ExitCode::from(130));
        }
    };
    if args.keep_dir {
        eprintln!("run directory kept: {}", dir.keep().display());
    }
    let figures = figures?;
    if args.json {
        print(&serde_json::to_string_pretty(&figures).context("cannot encode the figures")?)?;
    } else {
        print(&text(&figures))?;
    }
    let clean = figures["violations"].as_u64() == Some(0);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_VIOLATIONS)
    })
}

/// The run; returns the figures.
async fn execute(args: &BenchArgs, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let n = usize::from(args.workers);
    let p = usize::try_from(args.partitions).context("too many partitions")?;
    let partitions: Vec<String> = (0..args.partitions).map(|i| format!("p{i}")).collect();
    let mut config = if args.default_timings {
        let mut config = parti::Config::default();
        config.kv_buckets.replicas = if args.cluster { 3 } else { 1 };
        config
    } else {
        plan::worker_config(args.cluster)
    };
    // Room in the ID pool for every process and for the restarted ones, whose old IDs are
    // still held until they expire.
    let pool = u32::from(args.workers) * 2;
    config.worker_id_max = config.worker_id_max.max(config.worker_id_min + pool);
    let timings = Timings::new(&config);
    let launch = super::write_files(dir, &config, &partitions)?;
    let backend = Backend::start(args.cluster).await?;
    eprintln!("bench: {}; {n} workers, {p} partitions", backend.describe());
    let (js, assignment) = super::open_run(&backend, &config, "parti bench").await?;
    let b = &config.kv_buckets;
    let names = [
        b.stable_id.clone(),
        b.heartbeat.clone(),
        b.election.clone(),
        b.assignment.clone(),
    ];
    let (latest_tx, latest) = watch::channel(None);
    let cancel_observer = CancellationToken::new();
    let observer = AbortOnDropHandle::new(tokio::spawn(observer::run(
        std::sync::Arc::clone(&assignment),
        latest_tx,
        cancel_observer.clone(),
    )));

    // The buckets do not exist yet (the workers create them): every write of the start is
    // counted from sequence 0.
    let began = Instant::now();
    let fleet = Fleet::start(launch, &backend.addrs(), n).await?;
    let mut runner = Runner {
        backend,
        fleet,
        rng: SplitMix(args.seed.unwrap_or_else(random_seed)),
        timings,
        config,
        js: js.clone(),
        latest,
        exits: Vec::new(),
    };

    // Start-up: every process applied, then the map consistent.
    let deadline = began + runner.config.startup_timeout + timings.settle;
    let mut all_applied = None;
    let consistent = loop {
        if all_applied.is_none() && runner.fleet.all_applied() {
            all_applied = Some(began.elapsed());
        }
        let complete = runner.latest.borrow().as_ref().is_some_and(|c| {
            c.workers.len() == n && c.partition_count == p && c.phase == parti::ClusterPhase::Stable
        });
        if complete && all_applied.is_some() {
            break began.elapsed();
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the {n} workers did not start and agree on one map within {:?} (see the *.out \
                 files in {})",
                deadline - began,
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The checker's window opens once the fleet holds everything: partitions are unheld
    // during the cold start by design.
    let window_start = now_ns();
    let seq_started = sequences(&js, &names).await?;
    let (history, _) = parti::records::read_history(assignment.as_ref())
        .await
        .context("cannot read the publish history")?;
    eprintln!(
        "bench: consistent after {:.1} s, {} publishes",
        consistent.as_secs_f64(),
        history.len()
    );

    // Steady state.
    let nats_pids = runner.backend.pids();
    let fleet_pids = runner.fleet.pids();
    let ticks = |pids: &[u32]| pids.iter().filter_map(|pid| cpu_ticks(*pid)).sum::<u64>();
    let cpu_from = (ticks(&nats_pids), ticks(&fleet_pids));
    let steady_from = Instant::now();
    tokio::time::sleep(args.steady).await;
    let seq_steady = sequences(&js, &names).await?;
    let cpu_to = (ticks(&nats_pids), ticks(&fleet_pids));
    let steady_secs = steady_from.elapsed().as_secs_f64();
    let rss: Vec<u64> = fleet_pids.iter().filter_map(|pid| rss_kb(*pid)).collect();

    // The two crashes, each once the fleet settled and every partition is held again.
    let mut faults = Vec::new();
    for (kind, what) in [
        (FaultKind::Kill, "a follower"),
        (FaultKind::LeaderKill, "the leader"),
    ] {
        runner.settle(timings.settle).await?;
        eprintln!("bench: killing {what}");
        let injected = runner.inject(kind).await?;
        if injected.record.kind != kind.name() {
            // No leader could be read (a busy server): a follower died instead, and its
            // figure must not pass for a leader's.
            eprintln!("bench: {}", injected.detail);
        }
        let fault = injected.record;
        held_again(dir, &fault, timings.settle).await?;
        faults.push(fault);
    }
    let window_end = now_ns();
    runner.fleet.stop_all(timings.stop).await;
    cancel_observer.cancel();
    let versions = observer.await.context("the observer failed")?;
    drop(runner);

    let (ownership, processed) = read_logs(dir)?;
    let window = (window_start, window_end);
    let leader_killed = faults
        .get(1)
        .is_some_and(|f| f.kind == FaultKind::LeaderKill.name());
    let recoveries: Vec<Option<u64>> = faults
        .iter()
        .map(|f| victim_held_again_ms(&ownership, f))
        .collect();
    let check = checker::check(
        &History {
            ownership,
            processed,
            faults,
            versions,
            partitions,
            window,
            ..History::default()
        },
        &CheckConfig {
            tolerance_ns: nanos(Duration::from_millis(50)),
            gap_bound_ns: nanos(timings.gap_bound),
        },
    );

    let violations = serde_json::to_vec_pretty(&check.violations)
        .context("cannot encode the checker's violations")?;
    std::fs::write(dir.join("violations.json"), violations)
        .context("cannot write violations.json")?;

    let per_sec =
        |i: usize| round1(seq_steady[i].saturating_sub(seq_started[i]) as f64 / steady_secs);
    let cpu = |from: u64, to: u64| round1(to.saturating_sub(from) as f64 / steady_secs);
    let at_start = seq_started;
    let recovered = |r: &Option<u64>| r.map_or_else(|| json!("not recovered"), |ms| json!(ms));
    Ok(json!({
        "nats": if args.cluster { "3-node cluster, R3" } else { "single server" },
        "workers": n,
        "partitions": p,
        "allAppliedMs": all_applied.map(millis),
        "consistentMs": millis(consistent),
        "coldStartPublishes": history.len(),
        "kvWritesAtStart": {
            "stableId": at_start[0],
            "heartbeat": at_start[1],
            "election": at_start[2],
            "assignment": at_start[3],
        },
        "stableIdWritesPerWorker": round1(at_start[0] as f64 / n as f64),
        "steadyKvWritesPerSec": {
            "stableId": per_sec(0),
            "heartbeat": per_sec(1),
            "election": per_sec(2),
            "assignment": per_sec(3),
            "total": round1((0..4).map(per_sec).sum()),
        },
        "steadyCpuPercent": {
            "natsServer": cpu(cpu_from.0, cpu_to.0),
            "fleet": cpu(cpu_from.1, cpu_to.1),
        },
        "rssKb": {
            "mean": rss.iter().sum::<u64>() / (rss.len().max(1) as u64),
            "max": rss.iter().max(),
        },
        "crashToHeldMs": recoveries.first().map(recovered),
        "leaderCrashToHeldMs": if leader_killed {
            recoveries.get(1).map(recovered)
        } else {
            Some(json!("no leader found: a follower was killed instead"))
        },
        "violations": check.violations.len(),
        "violationsByKind": check.violations_by_kind(),
    }))
}

/// Waits (up to `within`) until every partition the victim of `fault` held was held by
/// another process, as the ownership logs in `dir` show.
async fn held_again(dir: &Path, fault: &FaultRecord, within: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + within;
    loop {
        let (ownership, _) = read_logs(dir)?;
        if victim_held_again_ms(&ownership, fault).is_some() || Instant::now() >= end {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How long after `fault` every partition its victim process held then was held by another
/// process (the first such hold of each), in ms; `None` while some is not, or when the fault
/// names no process.
fn victim_held_again_ms(ownership: &[OwnershipRecord], fault: &FaultRecord) -> Option<u64> {
    let victim = fault.instance.as_deref()?;
    let mut own: Vec<&OwnershipRecord> = ownership
        .iter()
        .filter(|r| r.instance == victim && r.at_ns <= fault.start_ns)
        .collect();
    own.sort_by_key(|r| r.at_ns);
    let mut held = std::collections::BTreeSet::new();
    for r in own {
        match &r.event {
            OwnershipEvent::Hold { partition, .. } => {
                held.insert(partition.as_str());
            }
            OwnershipEvent::Release { partition, .. } => {
                held.remove(partition.as_str());
            }
            _ => {}
        }
    }
    let mut first = std::collections::BTreeMap::new();
    for r in ownership
        .iter()
        .filter(|r| r.instance != victim && r.at_ns >= fault.start_ns)
    {
        if let OwnershipEvent::Hold { partition, .. } = &r.event
            && held.contains(partition.as_str())
        {
            let at = first.entry(partition.as_str()).or_insert(r.at_ns);
            *at = (*at).min(r.at_ns);
        }
    }
    if first.len() < held.len() {
        return None;
    }
    let last = first.values().copied().max().unwrap_or(fault.start_ns);
    Some(last.saturating_sub(fault.start_ns) / 1_000_000)
}

/// The figures as lines.
fn text(f: &serde_json::Value) -> String {
    let get = |path: &str| {
        f.pointer(path)
            .map_or_else(String::new, ToString::to_string)
    };
    [
        format!(
            "{} workers, {} partitions, {}",
            get("/workers"),
            get("/partitions"),
            get("/nats")
        ),
        format!(
            "all applied {} ms, consistent {} ms, {} cold-start publishes",
            get("/allAppliedMs"),
            get("/consistentMs"),
            get("/coldStartPublishes")
        ),
        format!(
            "stable-ID writes per worker {}",
            get("/stableIdWritesPerWorker")
        ),
        format!("steady KV writes/s {}", get("/steadyKvWritesPerSec")),
        format!("steady CPU % {}", get("/steadyCpuPercent")),
        format!("RSS per worker (kB) {}", get("/rssKb")),
        format!(
            "crash → held {} ms, leader crash → held {} ms",
            get("/crashToHeldMs"),
            get("/leaderCrashToHeldMs")
        ),
        format!("ownership violations {}", get("/violations")),
    ]
    .join("\n")
}

/// `last_sequence` of each bucket's stream (`KV_<bucket>`), in the order of `names`.
///
/// Each read is retried a few times: with a large fleet starting or failing over, a
/// stream-info request can time out on a busy server, and one slow answer must not end a run
/// that took minutes to set up.
async fn sequences(js: &jetstream::Context, names: &[String; 4]) -> anyhow::Result<[u64; 4]> {
    let mut out = [0; 4];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = (|| last_sequence(js, name))
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(5),
            )
            .notify(|e, after| tracing::warn!(error = %e, ?after, "reading a bucket's stream"))
            .await?;
    }
    Ok(out)
}

/// `last_sequence` of the stream of bucket `name`.
async fn last_sequence(js: &jetstream::Context, name: &str) -> anyhow::Result<u64> {
    let mut stream = js
        .get_stream(format!("KV_{name}"))
        .await
        .with_context(|| format!("no stream for bucket {name}"))?;
    Ok(stream
        .info()
        .await
        .with_context(|| format!("cannot read the stream of bucket {name}"))?
        .state
        .last_sequence)
}

/// User plus system CPU time of process `pid` so far, in clock ticks (`None` once it is gone).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces): state is field 3 of stat(5), utime 14
    // and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
}

/// The resident set (VmRSS) of process `pid`, in kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `x` rounded to one decimal.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn hold(at_ns: u64, instance: &str, partition: &str) -> OwnershipRecord {
        let event = OwnershipEvent::Hold {
            partition: partition.into(),
            epoch: 1,
            valid_until_ns: at_ns + S,
        };
        OwnershipRecord::new(at_ns, "w".into(), instance, event)
    }

    fn release(at_ns: u64, instance: &str, partition: &str) -> OwnershipRecord {
        let event = OwnershipEvent::Release {
            partition: partition.into(),
            epoch: 1,
        };
        OwnershipRecord::new(at_ns, "w".into(), instance, event)
    }

    fn kill(at_ns: u64, instance: &str) -> FaultRecord {
        FaultRecord {
            kind: "kill".into(),
            worker: Some("w".into()),
            instance: Some(instance.into()),
            start_ns: at_ns,
            end_ns: at_ns,
            ends_process: true,
        }
    }

    /// Only what the victim held at the kill counts, each until its first hold elsewhere; a
    /// partition it had released, or others' later moves, do not.
    #[test]
    fn a_crash_is_recovered_once_every_partition_of_the_victim_is_held_elsewhere() {
        let mut logs = vec![
            hold(S, "dead", "a"),
            hold(S, "dead", "b"),
            hold(S, "dead", "c"),
            release(2 * S, "dead", "c"),
            hold(3 * S, "other", "c"),
            hold(12 * S, "other", "a"),
        ];
        let fault = kill(5 * S, "dead");
        assert_eq!(victim_held_again_ms(&logs, &fault), None, "b is not held");
        logs.push(hold(14 * S, "new", "b"));
        // A later move of `a` (a rebalance) is not the crash's recovery.
        logs.push(release(30 * S, "other", "a"));
        logs.push(hold(31 * S, "third", "a"));
        assert_eq!(victim_held_again_ms(&logs, &fault), Some(9_000));
        let nobody = FaultRecord {
            instance: None,
            ..fault
        };
        assert_eq!(victim_held_again_ms(&logs, &nobody), None);
    }
}
