//! One run: cold start, the chaos schedule with the recovery time of each fault, the final
//! drain of messages, the end-of-run checks and the graceful stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parti::Config;
use parti::source::Static;
use parti::store::Bucket;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::cluster::{Worker, Workers, problems};
use super::ledger::{Ledger, Tally};
use super::shared::{Shared, millis};
use super::transport::Transport;
use super::{Settings, SplitMix, observer};

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

pub(crate) const SCHEDULE: [Fault; 5] = [
    Fault::Crash,
    Fault::Leave,
    Fault::Join,
    Fault::LeaderKill,
    Fault::Outage,
];

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultRecord {
    pub(crate) kind: String,
    /// The worker it hit, if one.
    pub(crate) target: Option<String>,
    /// When it was injected, since the start of the run.
    pub(crate) at_ms: u64,
    /// From the fault until the cluster converged again (`None`: skipped or not recovered).
    pub(crate) recovered_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

/// What a run produced besides what [`Shared`] holds.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) cold_start_ms: Option<u64>,
    pub(crate) faults: Vec<FaultRecord>,
    pub(crate) tally: Tally,
    pub(crate) elapsed_ms: u64,
}

pub(crate) struct Driver {
    pub(crate) settings: Settings,
    pub(crate) rng: SplitMix,
    pub(crate) config: Config,
    pub(crate) source: Static,
    pub(crate) transport: Transport,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) workers: Arc<Workers>,
    pub(crate) next_n: usize,
}

impl Driver {
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
        self.stop_all().await;
        self.shared.set_phase("done");
        Ok(Outcome {
            cold_start_ms,
            faults,
            tally: self.ledger.tally(),
            elapsed_ms: self.shared.elapsed_ms(),
        })
    }

    /// The faults of [`SCHEDULE`], spread evenly between now and a little before `end`, each
    /// one no sooner than the previous one healed.
    async fn chaos(&mut self, end: Instant, bucket: &dyn Bucket) -> Vec<FaultRecord> {
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
        let shared = Arc::clone(&self.shared);
        let partitions = self.settings.partitions;
        let transport = self.transport.starter();
        async move {
            let (manager, attachment) = transport
                .start_worker(config, source, &ledger, partitions)
                .await
                .with_context(|| format!("worker #{n}"))?;
            Ok(Worker::new(n, manager, attachment, shared))
        }
    }

    /// Injects one fault and waits for the cluster to recover from it.
    async fn inject(&mut self, fault: Fault, bucket: &dyn Bucket) -> FaultRecord {
        let kind = match fault {
            Fault::Crash => "crash",
            Fault::Leave => "graceful_leave",
            Fault::Join => "join",
            Fault::LeaderKill => "leader_kill",
            Fault::Outage => self.transport.outage_name(),
        };
        let mut record = FaultRecord {
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
                    self.shared.set_phase(format!("{kind} {id}"));
                    record.target = Some(id);
                    if fault == Fault::Crash {
                        worker.crash().await;
                    } else if let Err(e) = worker.stop().await {
                        record.note = Some(format!("the stop failed: {e}"));
                    }
                }
            }
            Fault::LeaderKill => {
                let leader = self.pick(|m| m.is_leader());
                if let Some(worker) = leader.and_then(|n| self.workers.take(n)) {
                    let id = worker.manager.worker_id().to_string();
                    self.shared.set_phase(format!("{kind} {id}"));
                    record.target = Some(id);
                    worker.crash().await;
                } else {
                    record.note = Some("skipped: no leader to kill".into());
                    return record;
                }
            }
            Fault::Join => {
                self.shared.set_phase("join");
                match self.start_worker().await {
                    Ok(worker) => {
                        record.target = Some(worker.manager.worker_id().to_string());
                        self.workers.add(worker);
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
                if let Err(e) = self.transport.outage().await {
                    self.shared.violate(format!("{kind} failed: {e:#}"));
                    return record;
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
