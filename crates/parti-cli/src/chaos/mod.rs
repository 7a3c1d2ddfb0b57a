//! `parti chaos`: real `parti worker` processes, real faults, and the ownership checker's
//! verdict on what the workers actually held.
//!
//! - Servers: a nats-server (or with `--cluster` a 3-node cluster, replicas 3) started for the
//!   run, a JetStream stream `chaos-events` (work-queue retention) with one subject per
//!   partition.
//! - Workers: N `parti worker` OS processes (this binary), each behind its own fault proxies,
//!   each writing `--ownership-log` and `--process-log` into the run directory. A killed
//!   worker is restarted at once, so N keep running.
//! - A producer publishes sequenced messages to every partition and records each acknowledged
//!   one; an observer records every committed `cluster` version.
//! - A seeded schedule of faults (see [`plan`]): kill -9 of a worker and of the leader,
//!   SIGSTOP past the leases (once with the link cut too, still cut on resume), a link cut
//!   past `workerIdTtl`, a NATS restart or node kill, garbage in every bucket, a rolling
//!   restart.
//! - At the end: the producer stops, the stream drains (bounded), the workers stop gracefully,
//!   and every log goes through `parti_testkit::checker::check`. The report lists each fault
//!   with its recovery time (until every partition was held again) and every violation.
//! - Exit codes: 0 no violation, 2 violations found, 1 error; 130 on Ctrl-C.

pub(crate) mod bench;
mod faults;
mod fleet;
mod nats;
mod observer;
mod plan;
mod producer;
mod recovery;
mod report;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use clap::Args;
use futures::StreamExt as _;
use parti::Config;
use parti::ownership::{OwnershipRecord, now_ns};
use parti::records::ClusterRecord;
use parti::store::{BucketSpec, NatsStore, Store as _};
use parti_testkit::checker::{self, CheckConfig, History, ProcessedRecord, SentRecord};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::global::Global;
use crate::output::print;
use crate::rng::{SplitMix, random_seed};
use crate::signal::stop_requested;

use fleet::{Fleet, Launch, OWNERSHIP_SUFFIX, PROCESS_SUFFIX};
use nats::Backend;
use plan::{FaultKind, Timings};
use report::{ChaosReport, ConsumerLeft, FaultLine, Header, Leftover};

/// The stream the workers consume.
const STREAM: &str = "chaos-events";
/// Subject prefix of the messages; partition `p7` gets `chaos.events.p7`.
const SUBJECT_PREFIX: &str = "chaos.events.";
/// The consumers' ack wait (and takeover delay): short, so that redeliveries after a kill
/// happen within the final drain.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// The longest the final drain waits for the stream to empty: several ack waits and takeover
/// delays. A message still in the stream after that is stranded (and reported lost).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the drain looks at the stream and the logs.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// Exit code when the checker found violations.
const EXIT_VIOLATIONS: u8 = 2;

/// Options of `parti chaos`.
#[derive(Debug, Args)]
pub(crate) struct ChaosArgs {
    /// Worker processes kept running.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) workers: u16,
    /// Partitions (`p0`, `p1`, …, weight 100 each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) partitions: u32,
    /// How long the fault schedule and the producer run (the run lasts longer when faults
    /// take long, plus start-up and the final drain). Every fault kind runs at least once.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Messages published per second, round-robin over the partitions.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) rate: u32,
    /// Run against a 3-node NATS cluster (replicas 3); the server fault kills one node.
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Seed of the schedule and of every choice (random by default; printed in the report).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Only these fault kinds, comma-separated (e.g. `nodeKill,leaderKill`), to study one
    /// recovery; every kind of the topology by default.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault_kind)]
    pub(crate) faults: Vec<FaultKind>,
    /// The checker's slack for clock skew between processes.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub(crate) tolerance: Duration,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_report: Option<PathBuf>,
    /// Keep the run directory (configuration, every worker's logs and output) and print it.
    #[arg(long)]
    pub(crate) keep_dir: bool,
}

/// Runs `parti chaos`. The global connection options do not apply: it starts its own servers.
pub(crate) async fn run(args: ChaosArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(random_seed);
    let dir = tempfile::Builder::new()
        .prefix("parti-chaos-")
        .tempdir()
        .context("cannot create the run directory")?;
    let outcome = tokio::select! {
        outcome = execute(&args, seed, dir.path()) => outcome,
        signal = stop_requested() => {
            eprintln!("{signal}: stopped (workers and servers killed, no report)");
            return Ok(ExitCode::from(130));
        }
    };
    let kept = args.keep_dir.then(|| dir.keep());
    let mut report = match outcome {
        Ok(report) => report,
        Err(e) => {
            if let Some(path) = &kept {
                eprintln!("run directory kept: {}", path.display());
            }
            return Err(e);
        }
    };
    report.header.kept = kept.is_some();
    print(&report.to_string())?;
    if let Some(path) = &args.json_report {
        let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VIOLATIONS)
    })
}

/// Everything a run needs while faults are injected. Owns the servers, the fleet and the
/// generator; the producer and the observer are tasks owned by [`execute`].
pub(crate) struct Runner {
    /// The servers.
    backend: Backend,
    /// The worker processes and their links.
    fleet: Fleet,
    /// Every choice of the run (schedule order, targets) comes from it.
    rng: SplitMix,
    /// How long faults last and waits may take.
    timings: Timings,
    /// The workers' configuration (bucket names, timeouts).
    config: Config,
    /// The runner's own (direct) connection.
    js: jetstream::Context,
    /// The latest committed `cluster` record, from the observer.
    latest: watch::Receiver<Option<ClusterRecord>>,
    /// Processes that exited on their own, restarted.
    exits: Vec<String>,
}

/// A fault kind by its report name (`nodeKill`, `kill`, …).
fn parse_fault_kind(name: &str) -> Result<FaultKind, String> {
    FaultKind::every()
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = FaultKind::every()
                .into_iter()
                .map(FaultKind::name)
                .collect();
            format!("unknown fault kind {name:?}; known: {}", names.join(", "))
        })
}

/// The run itself; returns the report (with `kept` still false).
async fn execute(args: &ChaosArgs, seed: u64, dir: &Path) -> anyhow::Result<ChaosReport> {
    let began = Instant::now();
    let workers = usize::from(args.workers);
    let partitions: Vec<String> = (0..args.partitions).map(|i| format!("p{i}")).collect();
    let config = plan::worker_config(args.cluster);
    let timings = Timings::new(&config);
    let launch = write_files(dir, &config, &partitions)?;

    let backend = Backend::start(args.cluster).await?;
    eprintln!(
        "chaos: {}; run directory {}",
        backend.describe(),
        dir.display()
    );
    let (js, assignment) = open_run(&backend, &config, "parti chaos").await?;
    // The observer first, so that it sees the first commit.
    let (latest_tx, latest) = watch::channel(None);
    let cancel_observer = CancellationToken::new();
    let observer = AbortOnDropHandle::new(tokio::spawn(observer::run(
        assignment,
        latest_tx,
        cancel_observer.clone(),
    )));

    let fleet = Fleet::start(launch, &backend.addrs(), workers).await?;
    let mut runner = Runner {
        backend,
        fleet,
        rng: SplitMix(seed),
        timings,
        config,
        js: js.clone(),
        latest,
        exits: Vec::new(),
    };
    let startup = runner.config.startup_timeout + timings.settle;
    if !runner.settle(startup).await? {
        anyhow::bail!(
            "the {workers} workers did not start within {startup:?} (see the *.out files in {})",
            dir.display()
        );
    }
    let window_start = now_ns();
    let settled = Instant::now();
    eprintln!("chaos: {workers} workers settled; producing and injecting faults");

    let cancel_producer = CancellationToken::new();
    let producer = AbortOnDropHandle::new(tokio::spawn(producer::run(
        js.clone(),
        producer::Plan {
            partitions: partitions.clone(),
            subject_prefix: SUBJECT_PREFIX.into(),
            rate: args.rate,
        },
        cancel_producer.clone(),
    )));

    let kinds = if args.faults.is_empty() {
        FaultKind::all(args.cluster)
    } else {
        args.faults.clone()
    };
    let schedule = plan::schedule(&mut runner.rng, &kinds, args.duration);
    let mut done = Vec::with_capacity(schedule.len());
    for planned in &schedule {
        tokio::time::sleep_until(settled + planned.at).await;
        let settled = runner.settle(timings.settle).await?;
        eprintln!("chaos: {}", planned.kind.name());
        let mut fault = runner.inject(planned.kind).await?;
        if !settled {
            fault.detail.push_str(&format!(
                " (the fleet had not settled within {:?} before it)",
                timings.settle
            ));
        }
        done.push(fault);
    }
    tokio::time::sleep_until(settled + args.duration).await;
    runner.settle(timings.settle).await?;

    cancel_producer.cancel();
    let sent = producer.await.context("the producer failed")?;
    let leftover = drain(&js, dir, &sent).await;
    let window_end = now_ns();
    let unstopped = runner.fleet.stop_all(timings.stop).await;
    cancel_observer.cancel();
    let versions = observer.await.context("the observer failed")?;
    let elapsed = began.elapsed();
    let Runner {
        fleet,
        backend,
        exits,
        ..
    } = runner;
    drop(fleet);
    drop(backend);

    let (ownership, processed) = read_logs(dir)?;
    let faults: Vec<_> = done.iter().map(|d| d.record.clone()).collect();
    let window = (window_start, window_end);
    let recoveries = recovery::recoveries(&ownership, &faults, &partitions, window);
    let history = History {
        ownership,
        processed,
        sent,
        faults,
        versions,
        partitions: partitions.clone(),
        window,
    };
    let check_config = CheckConfig {
        tolerance_ns: nanos(args.tolerance),
        gap_bound_ns: nanos(timings.gap_bound),
    };
    let check = checker::check(&history, &check_config);
    let lines = done
        .into_iter()
        .zip(recoveries)
        .map(|(fault, recovery)| FaultLine {
            at_ms: fault.record.start_ns.saturating_sub(window_start) / 1_000_000,
            lasted_ms: fault.record.end_ns.saturating_sub(fault.record.start_ns) / 1_000_000,
            record: fault.record,
            detail: fault.detail,
            recovery,
        })
        .collect();
    let mut scheduled: Vec<String> = schedule.iter().map(|p| p.kind.name().to_owned()).collect();
    scheduled.sort();
    scheduled.dedup();
    let header = Header {
        nats: if args.cluster {
            "3-node NATS cluster, replicas 3".into()
        } else {
            "single nats-server".into()
        },
        cluster: args.cluster,
        seed,
        workers,
        partitions: partitions.len(),
        duration_ms: millis(args.duration),
        elapsed_ms: millis(elapsed),
        run_dir: dir.display().to_string(),
        kept: false,
        tolerance_ms: millis(args.tolerance),
        gap_bound_ms: millis(timings.gap_bound),
    };
    Ok(ChaosReport::new(
        header, lines, scheduled, exits, unstopped, leftover, check,
    ))
}

impl Runner {
    /// Waits up to `within` until the fleet is settled: every process runs and has applied an
    /// assignment, and the committed map names N workers with the phase stable. Processes that
    /// exited on their own are restarted first. Returns whether it settled.
    async fn settle(&mut self, within: Duration) -> anyhow::Result<bool> {
        let exited = self.fleet.restart_exited()?;
        for name in &exited {
            eprintln!("chaos: {name} exited on its own; restarted");
        }
        self.exits.extend(exited);
        let n = self.fleet.slots.len();
        let end = Instant::now() + within;
        loop {
            let committed =
                self.latest.borrow().as_ref().is_some_and(|c| {
                    c.workers.len() == n && c.phase == parti::ClusterPhase::Stable
                });
            if committed && self.fleet.all_applied() {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded by the settle time) until the process in `slot` has applied an
    /// assignment.
    async fn wait_applied(&mut self, slot: usize) {
        let end = Instant::now() + self.timings.settle;
        while Instant::now() < end {
            let waiting = self
                .fleet
                .process_mut(slot)
                .is_some_and(|p| p.is_running() && !p.has_applied());
            if !waiting {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The runner's own connection to `backend` (named `client_name`), the stream the workers
/// consume (created), and the assignment bucket (opened, for the observer).
async fn open_run(
    backend: &Backend,
    config: &Config,
    client_name: &str,
) -> anyhow::Result<(jetstream::Context, std::sync::Arc<dyn parti::store::Bucket>)> {
    let js = jetstream::new(backend.client(client_name).await?);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{SUBJECT_PREFIX}>")],
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: backend.replicas(),
        ..Default::default()
    })
    .await
    .context("cannot create the stream")?;
    let b = &config.kv_buckets;
    let assignment = NatsStore::new(js.clone())
        .with_operation_timeout(config.operation_timeout)
        .bucket(&BucketSpec::new(b.assignment.clone()).replicas(b.replicas))
        .await
        .context("cannot open the assignment bucket")?;
    Ok((js, assignment))
}

/// Writes the workers' configuration and partition list into `dir`.
fn write_files(dir: &Path, config: &Config, partitions: &[String]) -> anyhow::Result<Launch> {
    let config_path = dir.join("parti.yaml");
    let yaml = config
        .to_yaml_string()
        .context("cannot encode the worker configuration")?;
    std::fs::write(&config_path, yaml)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let partitions_path = dir.join("partitions.yaml");
    let list: String = partitions
        .iter()
        .map(|p| format!("- keys: [{p}]\n  weight: 100\n"))
        .collect();
    std::fs::write(&partitions_path, list)
        .with_context(|| format!("cannot write {}", partitions_path.display()))?;
    Ok(Launch {
        exe: std::env::current_exe().context("cannot find the parti binary")?,
        dir: dir.to_owned(),
        config: config_path,
        partitions: partitions_path,
        stream: STREAM.into(),
        subject_template: format!("{SUBJECT_PREFIX}{{partition}}"),
        ack_wait: ACK_WAIT,
    })
}

/// Waits until every message sent was handled (the process logs name it) or the work-queue
/// stream is empty, within [`DRAIN_TIMEOUT`]. Returns `None` when drained, otherwise what the
/// stream still holds.
async fn drain(js: &jetstream::Context, dir: &Path, sent: &[SentRecord]) -> Option<Leftover> {
    let wanted: BTreeSet<(&str, u64)> =
        sent.iter().map(|s| (s.partition.as_str(), s.seq)).collect();
    let end = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let left = leftover(js).await;
        let handled = || -> bool {
            let Ok((_, processed)) = read_logs(dir) else {
                return false;
            };
            let seen: BTreeSet<(&str, u64)> = processed
                .iter()
                .map(|p| (p.partition.as_str(), p.seq))
                .collect();
            wanted.is_subset(&seen)
        };
        if left.as_ref().is_some_and(|l| l.messages == 0) || handled() {
            return None;
        }
        if Instant::now() >= end {
            return Some(left.unwrap_or_default());
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// What the stream holds now, and where (`None` when it cannot be read).
async fn leftover(js: &jetstream::Context) -> Option<Leftover> {
    let mut stream = js.get_stream(STREAM).await.ok()?;
    let messages = stream.info().await.ok()?.state.messages;
    let mut left = Leftover {
        messages,
        ..Leftover::default()
    };
    if messages == 0 {
        return Some(left);
    }
    let mut filtered = BTreeSet::new();
    let mut infos = stream.consumers();
    while let Some(Ok(info)) = infos.next().await {
        let mut filters = info.config.filter_subjects;
        filters
            .extend((!info.config.filter_subject.is_empty()).then_some(info.config.filter_subject));
        left.consumers.push(ConsumerLeft {
            name: info.name,
            subjects: filters.len(),
            ack_pending: info.num_ack_pending,
            pending: info.num_pending,
        });
        filtered.extend(filters);
    }
    if let Ok(mut subjects) = stream.info_with_subjects(">").await {
        while let Some(Ok((subject, count))) = subjects.next().await {
            if count == 0 {
                continue;
            }
            left.subjects += 1;
            if !filtered.contains(&subject) {
                left.uncovered_count += 1;
                if left.uncovered.len() < report::SUBJECTS_SHOWN {
                    left.uncovered.push(subject);
                }
            }
        }
    }
    Some(left)
}

/// Every ownership and process record in the run directory.
fn read_logs(dir: &Path) -> anyhow::Result<(Vec<OwnershipRecord>, Vec<ProcessedRecord>)> {
    let mut ownership = Vec::new();
    let mut processed = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let name = path.to_string_lossy();
        if name.ends_with(OWNERSHIP_SUFFIX) {
            ownership.extend(
                checker::read_jsonl::<OwnershipRecord>(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
        } else if name.ends_with(PROCESS_SUFFIX) {
            processed.extend(
                checker::read_jsonl::<ProcessedRecord>(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
        }
    }
    Ok((ownership, processed))
}

/// Whole milliseconds of `d` (saturating).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Nanoseconds of `d` (saturating).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The report must keep serializing the fields that `tests/chaos.rs` and scripts read.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_a_worker_reads_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = plan::worker_config(false);
        let launch = write_files(dir.path(), &config, &["p0".into(), "p1".into()]).unwrap();
        let read = Config::from_yaml_file(&launch.config).unwrap();
        assert_eq!(read, config);
        let parts = crate::partitions::file::load(&launch.partitions).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].id(), "p1");
    }
}
