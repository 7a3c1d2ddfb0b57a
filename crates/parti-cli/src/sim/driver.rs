//! One run: cold start, the chaos schedule with the recovery time of each fault, the final
//! drain of messages, the end-of-run checks and the graceful stop; and the [`History`] the
//! ownership checker judges (every worker's ownership records, every message sent and handled,
//! every fault, every committed version).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parti::Config;
use parti::ownership::{OwnershipRecorder, now_ns};
use parti::source::Static;
use parti::store::Bucket;
use parti_testkit::checker::{self, History};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::cluster::{Worker, Workers, problems};
use super::ledger::{Ledger, partition_id};
use super::observer;
use super::shared::{Shared, millis};
use super::transport::Transport;
use crate::rng::SplitMix;

/// How long a fault may take to heal before it is a violation.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long the cluster must stay converged to count as recovered.
const HOLD: Duration = Duration::from_secs(1);
/// How often convergence is checked.
const POLL: Duration = Duration::from_millis(100);
/// How long the workers get to handle the last messages once the producer stopped.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The faults, in the order they are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A worker killed without any stop path.
    Crash,
    /// A worker stopped gracefully.
    Leave,
    /// A new worker started.
    Join,
    /// The leader killed.
    LeaderKill,
    /// The server killed and restarted (NATS), or every store client cut off (memory).
    Outage,
}

/// The order the [`Fault`]s are injected in.
pub(crate) const SCHEDULE: [Fault; 5] = [
    Fault::Crash,
    Fault::Leave,
    Fault::Join,
    Fault::LeaderKill,
    Fault::Outage,
];

/// One injected fault, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultLine {
    /// `crash`, `graceful_leave`, `join`, `leader_kill`, `nats_restart` or `store_outage`.
    pub(crate) kind: String,
    /// The worker it hit, if one.
    pub(crate) target: Option<String>,
    /// When it was injected, since the start of the run.
    pub(crate) at_ms: u64,
    /// From the fault until the cluster converged again (`None`: skipped or not recovered).
    pub(crate) recovered_ms: Option<u64>,
    /// Why it was skipped, or what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

/// What a run produced besides what [`Shared`] holds.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// From the start until the first convergence.
    pub(crate) cold_start_ms: Option<u64>,
    /// The faults injected, in order.
    pub(crate) faults: Vec<FaultLine>,
    /// What the ownership checker judges.
    pub(crate) history: History,
    /// Wall time of the run.
    pub(crate) elapsed_ms: u64,
}

/// The settings the driver uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Workers at the start.
    pub(crate) workers: usize,
    /// Partitions (`p0`, `p1`, …).
    pub(crate) partitions: usize,
    /// How long the producer runs.
    pub(crate) duration: Duration,
    /// Messages published per second.
    pub(crate) rate: u32,
}

/// Runs the workers, the producer, the observer and the chaos schedule.
pub(crate) struct Driver {
    /// What to run.
    pub(crate) settings: Settings,
    /// Every choice of the schedule.
    pub(crate) rng: SplitMix,
    /// The workers' configuration.
    pub(crate) config: Config,
    /// The partitions.
    pub(crate) source: Static,
    /// Where coordination and messages go.
    pub(crate) transport: Transport,
    /// Messages sent and handled.
    pub(crate) ledger: Arc<Ledger>,
    /// What the observer, the listeners and the view share.
    pub(crate) shared: Arc<Shared>,
    /// The live workers.
    pub(crate) workers: Arc<Workers>,
    /// The start number of the next worker.
    pub(crate) next_n: usize,
    /// Every worker's ownership records.
    pub(crate) recorder: OwnershipRecorder,
    /// The faults as the checker reads them.
    pub(crate) faults: Vec<checker::FaultRecord>,
}

impl Driver {
    /// The whole run; the workers and the server are stopped when it returns.
    pub(crate) async fn run(mut self) -> anyhow::Result<Outcome> {
        let bucket = self
            .transport
            .assignment_bucket(&self.config)
            .await
            .context("cannot open the assignment bucket")?;
        let observer = AbortOnDropHandle::new(tokio::spawn(observer::observe(
            Arc::clone(&bucket),
            Arc::clone(&self.shared),
        )));
        let stop_producer = CancellationToken::new();
        let producer = AbortOnDropHandle::new(self.transport.spawn_producer(
            Arc::clone(&self.ledger),
            self.settings.partitions,
            self.settings.rate,
            stop_producer.clone(),
        ));

        self.shared.set_phase("cold start");
        let start = Instant::now();
        let starts = (0..self.settings.workers).map(|_| self.start_worker());
        for started in futures::future::join_all(starts).await {
            self.workers.add(started.context("a worker did not start")?);
        }
        let cold_start_ms = self.recover(start, "cold start", &*bucket).await;
        // From here on every partition must be held (but for the faults' gaps).
        let window_start = now_ns();
        let end = start + self.settings.duration;
        let faults = self.chaos(end, &*bucket).await;
        self.shared.set_phase("steady");
        tokio::time::sleep_until(end).await;

        self.shared.set_phase("drain");
        stop_producer.cancel();
        let _ = producer.await;
        let drain_end = Instant::now() + DRAIN_LIMIT;
        while !self.ledger.drained() && Instant::now() < drain_end {
            tokio::time::sleep(POLL).await;
        }
        self.final_check(&*bucket).await;
        // What the final stop publishes is not part of the run.
        drop(observer);
        let window_end = now_ns();
        self.stop_all().await;
        self.shared.set_phase("done");
        let (sent, processed) = self.ledger.records();
        let history = History {
            ownership: self.recorder.records(),
            processed,
            sent,
            faults: std::mem::take(&mut self.faults),
            versions: self.shared.versions(),
            partitions: (0..self.settings.partitions).map(partition_id).collect(),
            window: (window_start, window_end),
        };
        Ok(Outcome {
            cold_start_ms,
            faults,
            history,
            elapsed_ms: self.shared.elapsed_ms(),
        })
    }

    /// The faults of [`SCHEDULE`], spread evenly between now and a little before `end`, each
    /// one no sooner than the previous one healed.
    async fn chaos(&mut self, end: Instant, bucket: &dyn Bucket) -> Vec<FaultLine> {
        let chaos_start = Instant::now();
        let tail = (self.settings.duration / 6).max(Duration::from_secs(2));
        let span = end.saturating_duration_since(chaos_start + tail);
        let slots = u32::try_from(SCHEDULE.len() + 1).unwrap_or(1);
        let mut faults = Vec::new();
        for (i, fault) in (1u32..).zip(SCHEDULE) {
            self.shared.set_phase("steady");
            tokio::time::sleep_until(chaos_start + span * i / slots).await;
            faults.push(self.inject(fault, bucket).await);
        }
        faults
    }

    /// Stops every live worker gracefully, then the server.
    async fn stop_all(&mut self) {
        self.shared.set_phase("stopping");
        let stops = self.workers.take_all().into_iter().map(|w| async move {
            let id = w.manager.worker_id();
            w.stop()
                .await
                .map_err(|e| format!("the graceful stop of {id} failed: {e}"))
        });
        for stopped in futures::future::join_all(stops).await {
            if let Err(e) = stopped {
                self.shared.violate(e);
            }
        }
        self.transport.shutdown().await;
    }

    fn start_worker(&mut self) -> impl Future<Output = anyhow::Result<Worker>> + use<> {
        let n = self.next_n;
        self.next_n += 1;
        let (config, source) = (self.config.clone(), self.source.clone());
        let ledger = Arc::clone(&self.ledger);
        let recorder = self.recorder.clone();
        let shared = Arc::clone(&self.shared);
        let partitions = self.settings.partitions;
        let transport = self.transport.starter();
        async move {
            let (manager, attachment) = transport
                .start_worker(config, source, &ledger, &recorder, partitions)
                .await
                .with_context(|| format!("worker #{n}"))?;
            Ok(Worker::new(n, manager, attachment, shared))
        }
    }

    /// Records a fault for the checker: `kind` done to `target` (worker ID, instance ID) from
    /// `start_ns` until `end_ns`.
    fn record_fault(
        &mut self,
        kind: &str,
        target: Option<(String, String)>,
        (start_ns, end_ns): (u64, u64),
        ends_process: bool,
    ) {
        let (worker, instance) = target.unzip();
        self.faults.push(checker::FaultRecord {
            kind: kind.to_owned(),
            worker,
            instance,
            start_ns,
            end_ns,
            ends_process,
        });
    }

    /// Injects one fault and waits for the cluster to recover from it.
    async fn inject(&mut self, fault: Fault, bucket: &dyn Bucket) -> FaultLine {
        let kind = match fault {
            Fault::Crash => "crash",
            Fault::Leave => "graceful_leave",
            Fault::Join => "join",
            Fault::LeaderKill => "leader_kill",
            Fault::Outage => self.transport.outage_name(),
        };
        let mut record = FaultLine {
            kind: kind.to_owned(),
            target: None,
            at_ms: self.shared.elapsed_ms(),
            recovered_ms: None,
            note: None,
        };
        let needs_victim = matches!(fault, Fault::Crash | Fault::Leave | Fault::LeaderKill);
        if needs_victim && self.workers.live().len() < 2 {
            record.note = Some("skipped: it would leave no worker".into());
            return record;
        }
        let at = Instant::now();
        match fault {
            Fault::Crash | Fault::Leave => {
                let victim = self.pick(|m| !m.is_leader());
                if let Some(worker) = victim.and_then(|n| self.workers.take(n)) {
                    let id = worker.manager.worker_id().to_string();
                    let instance = worker.manager.instance_id().to_owned();
                    self.shared.set_phase(format!("{kind} {id}"));
                    record.target = Some(id.clone());
                    let start_ns = now_ns();
                    let crash = fault == Fault::Crash;
                    if crash {
                        worker.crash().await;
                    } else if let Err(e) = worker.stop().await {
                        record.note = Some(format!("the stop failed: {e}"));
                    }
                    // A kill is stamped once nothing of the worker runs any more.
                    let end_ns = now_ns();
                    let span = if crash {
                        (end_ns, end_ns)
                    } else {
                        (start_ns, end_ns)
                    };
                    self.record_fault(kind, Some((id, instance)), span, crash);
                }
            }
            Fault::LeaderKill => {
                let leader = self.pick(|m| m.is_leader());
                if let Some(worker) = leader.and_then(|n| self.workers.take(n)) {
                    let id = worker.manager.worker_id().to_string();
                    let instance = worker.manager.instance_id().to_owned();
                    self.shared.set_phase(format!("{kind} {id}"));
                    record.target = Some(id.clone());
                    worker.crash().await;
                    let at_ns = now_ns();
                    self.record_fault(kind, Some((id, instance)), (at_ns, at_ns), true);
                } else {
                    record.note = Some("skipped: no leader to kill".into());
                    return record;
                }
            }
            Fault::Join => {
                self.shared.set_phase("join");
                let start_ns = now_ns();
                match self.start_worker().await {
                    Ok(worker) => {
                        let id = worker.manager.worker_id().to_string();
                        let instance = worker.manager.instance_id().to_owned();
                        record.target = Some(id.clone());
                        self.workers.add(worker);
                        let span = (start_ns, now_ns());
                        self.record_fault(kind, Some((id, instance)), span, false);
                    }
                    Err(e) => {
                        self.shared
                            .violate(format!("a joining worker did not start: {e:#}"));
                        return record;
                    }
                }
            }
            Fault::Outage => {
                self.shared.set_phase(kind);
                let start_ns = now_ns();
                match self.transport.outage().await {
                    Ok(lasts) => {
                        let end_ns = now_ns().saturating_add(nanos(lasts));
                        self.record_fault(kind, None, (start_ns, end_ns), false);
                    }
                    Err(e) => {
                        self.shared.violate(format!("{kind} failed: {e:#}"));
                        return record;
                    }
                }
            }
        }
        let what = match &record.target {
            Some(target) => format!("{kind} of {target}"),
            None => kind.to_owned(),
        };
        self.shared.set_phase(format!("recovering from {what}"));
        record.recovered_ms = self.recover(at, &what, bucket).await;
        record
    }

    /// A live worker chosen at random among those `prefer` accepts (any when none does).
    fn pick(&mut self, prefer: impl Fn(&parti::Manager) -> bool) -> Option<usize> {
        let live = self.workers.live();
        let preferred: Vec<usize> = live
            .iter()
            .filter(|(_, m)| prefer(m))
            .map(|(n, _)| *n)
            .collect();
        let pool = if preferred.is_empty() {
            live.iter().map(|(n, _)| *n).collect()
        } else {
            preferred
        };
        self.rng.choose(&pool)
    }

    /// Time from `since` until the cluster is converged and stays so for [`HOLD`]; a violation
    /// if that takes longer than [`RECOVERY_LIMIT`].
    async fn recover(&self, since: Instant, what: &str, bucket: &dyn Bucket) -> Option<u64> {
        let deadline = since + RECOVERY_LIMIT;
        let mut converged_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let found = problems(bucket, &self.workers.live(), self.settings.partitions).await;
            if found.is_empty() {
                let at = *converged_at.get_or_insert(now);
                if now.duration_since(at) >= HOLD {
                    return Some(millis(at.duration_since(since)));
                }
            } else {
                converged_at = None;
                if now >= deadline {
                    self.shared.violate(format!(
                        "not recovered within {}s after {what}: {}",
                        RECOVERY_LIMIT.as_secs(),
                        found.join("; ")
                    ));
                    return None;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// At the end every live worker must be `Stable` with its share of a map over exactly the
    /// live workers (given a little time, in case the drain overlapped a publish).
    async fn final_check(&self, bucket: &dyn Bucket) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = problems(bucket, &self.workers.live(), self.settings.partitions).await;
            if found.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for problem in found {
                    self.shared.violate(format!("at the end: {problem}"));
                }
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Nanoseconds of `d` (saturating).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
