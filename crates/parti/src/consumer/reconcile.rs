//! The reconciler: the one task that changes the durable consumer on the server.
//!
//! It holds the desired subjects (from the last assignment) and what the server has, and
//! brings the server to the desired set: create-or-update in place, hand-off bookkeeping in
//! the metadata, drains for gained subjects, retries with jittered backoff, re-creation after
//! a deletion, and on work-queue streams the wait for (and, after `takeoverAfter`, the
//! takeover of) subjects still held by another consumer of the group.
//!
//! # Layout
//!
//! This is the I/O shell around [`plan`]: the decisions (what to write, which markers, which
//! drains, what to take over) are pure functions there, returning [`plan::Command`]s. Here:
//! reading what a decision needs, executing the commands in order, and everything around
//! them — retries with backoff, re-planning after an overlap or a deletion, the drain tasks,
//! errors, logging and health.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use backon::ExponentialBackoff;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::api::{self, ApiError};
use super::handoff::{self, Gain};
use super::health::ConfigState;
use super::pace::Pacer;
use super::plan::{self, Applied, Command, Write};
use super::subjects::durable_name;
use super::takeover;
use super::{Shared, backoff};
use crate::clock::sleep_until_opt;
use crate::error::{Error, Result};
use crate::partition::WorkerId;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Attempts within one sync for races (an overlap that just cleared, a consumer that vanished).
const SYNC_ATTEMPTS: usize = 4;
/// Pause before re-creating a deleted durable: nats-server may still be removing the old
/// one's store, and would remove the new one's with it.
const RECREATE_DELAY: Duration = Duration::from_millis(250);
/// Longest a [`Command::Pause`] can stop the durable if the write that ends it never comes
/// (this process dies, NATS goes away).
const PAUSE_BOUND: Duration = Duration::from_secs(10);

/// Requests from the [`WorkerConsumer`](super::WorkerConsumer) handle.
pub(crate) enum Request {
    /// Follow this worker's subjects; replies after the first attempt.
    Assign {
        /// The worker (names the durable).
        worker: WorkerId,
        /// Its rendered filter subjects.
        subjects: BTreeSet<String>,
        /// Answered with the first attempt's outcome.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Release every subject and stop.
    Close {
        /// Answered with the release's outcome.
        reply: oneshot::Sender<Result<()>>,
    },
}

/// What executing a plan did, beyond the state it updated.
#[derive(Debug, Default)]
struct Executed {
    /// Subjects taken over from their holders ([`Command::TakeOver`]).
    freed: BTreeSet<String>,
}

/// What the last write of an executed plan reported.
#[derive(Debug, Clone, Copy)]
struct Written {
    /// The durable's delivered stream position ([`plan::Upto::Delivered`]).
    delivered: u64,
    /// Its ack floor ([`Command::ReleaseGated`] resets to it + 1).
    floor: u64,
}

/// The reconciler task's state.
pub(crate) struct Reconciler {
    /// What every task of the consumer shares (stream, config, health, filter, gate).
    shared: Arc<Shared>,
    /// Requests from the handle.
    requests: mpsc::UnboundedReceiver<Request>,
    /// The message loop failed: check the durable now.
    loop_failed: Arc<Notify>,
    /// The durable the message loop reads from (`None`: none).
    consumer_tx: watch::Sender<Option<PullConsumer>>,
    /// The worker whose subjects we follow (set by the first assignment).
    worker: Option<WorkerId>,
    /// Its durable's name.
    durable: Option<String>,
    /// The subjects assigned.
    desired: BTreeSet<String>,
    /// The durable as last seen or written (`None`: not read yet, adopt it first).
    applied: Option<Applied>,
    /// Desired subjects held by another consumer of a work-queue stream, since when.
    blocked: BTreeMap<String, Instant>,
    /// The running drains.
    gains: JoinSet<Gain>,
    /// The next drain's ID.
    next_gain: u64,
    /// Subject → the gain draining it.
    draining: HashMap<String, u64>,
    /// Drained subjects whose pending marker is still to be removed.
    drained: BTreeSet<String>,
    /// When to sync again after a failure or while subjects are blocked.
    retry_at: Option<Instant>,
    /// The delays between those retries.
    delays: ExponentialBackoff,
    /// The last sync's failure, for health.
    error: Option<String>,
    /// The durable was deleted behind our back and must be re-created.
    recreate: bool,
    /// Spaces the syncs under `consumerApiRate`.
    pacer: Pacer,
    /// When a sync deferred by the pacer goes (`None`: none is waiting).
    paced_at: Option<Instant>,
}

impl Reconciler {
    /// A reconciler following nothing yet.
    pub(crate) fn new(
        shared: Arc<Shared>,
        requests: mpsc::UnboundedReceiver<Request>,
        loop_failed: Arc<Notify>,
        consumer_tx: watch::Sender<Option<PullConsumer>>,
    ) -> Self {
        Self {
            shared,
            requests,
            loop_failed,
            consumer_tx,
            worker: None,
            durable: None,
            desired: BTreeSet::new(),
            applied: None,
            blocked: BTreeMap::new(),
            gains: JoinSet::new(),
            next_gain: 0,
            draining: HashMap::new(),
            drained: BTreeSet::new(),
            retry_at: None,
            delays: backoff(MAX_BACKOFF),
            error: None,
            recreate: false,
            pacer: Pacer::default(),
            paced_at: None,
        }
    }

    /// Runs until closed or the handle is dropped.
    pub(crate) async fn run(mut self) {
        let mut check = tokio::time::interval(self.shared.config.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                request = self.requests.recv() => match request {
                    None => return,
                    Some(Request::Assign { worker, subjects, reply }) => {
                        let result = self.assign(worker, subjects).await;
                        self.publish_health();
                        let _ = reply.send(result);
                    }
                    Some(Request::Close { reply }) => {
                        let result = self.close().await;
                        self.publish_health();
                        let _ = reply.send(result);
                        return;
                    }
                },
                () = self.loop_failed.notified() => self.check().await,
                Some(done) = self.gains.join_next(), if !self.gains.is_empty() => self.gain_done(done).await,
                _ = check.tick() => self.check().await,
                () = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    let _ = self.sync().await;
                }
                () = sleep_until_opt(self.paced_at), if self.paced_at.is_some() => {
                    self.paced_at = None;
                    let _ = self.sync().await;
                }
            }
            self.publish_health();
        }
    }

    /// Follows `subjects` of `worker` (a new worker ID: its durable, left to be adopted).
    async fn assign(&mut self, worker: WorkerId, subjects: BTreeSet<String>) -> Result<()> {
        if self.worker.as_ref() != Some(&worker) {
            if let Some(old) = &self.worker {
                // The old durable may belong to another process by now: leave it alone and
                // stop reading from it.
                tracing::warn!(from = %old, to = %worker, "worker ID changed: switching durable consumer");
                self.consumer_tx.send_replace(None);
                self.gains.abort_all();
                self.draining.clear();
                self.drained.clear();
                self.blocked.clear();
            }
            self.durable = Some(durable_name(&self.shared.config.consumer_prefix, &worker));
            self.worker = Some(worker);
            self.applied = None;
        }
        self.desired = subjects;
        self.sync().await
    }

    /// One reconciliation, with the pacing and retry bookkeeping around it. When it is not
    /// this worker's turn under `consumerApiRate` it is deferred to the pacer's slot (answering
    /// `Ok` now): it then reconciles whatever is desired by that time, so changes that arrive
    /// meanwhile are merged into one.
    async fn sync(&mut self) -> Result<()> {
        let spacing = self.shared.pace.spacing();
        let now = Instant::now();
        let slot = self.pacer.slot(spacing, now);
        if slot > now {
            tracing::debug!(consumer = ?self.durable, wait = ?(slot - now), "consumer update paced");
            self.paced_at = Some(slot);
            return Ok(());
        }
        self.paced_at = None;
        self.pacer.went(spacing, now);
        let result = self.try_sync().await;
        match &result {
            Ok(()) => {
                self.error = None;
                if self.blocked.is_empty() {
                    self.delays = backoff(MAX_BACKOFF);
                    self.retry_at = None;
                } else {
                    self.schedule_retry();
                }
            }
            Err(e) => {
                tracing::warn!(consumer = ?self.durable, error = %e, "consumer update failed; retrying");
                self.error = Some(e.to_string());
                self.schedule_retry();
            }
        }
        result
    }

    /// The next sync after the next backoff delay.
    fn schedule_retry(&mut self) {
        let delay = self.delays.next().unwrap_or(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Reads what [`plan::sync`] needs, executes its commands; re-plans after an overlap
    /// (leaving out, or taking over, the subjects held elsewhere) or a deletion.
    async fn try_sync(&mut self) -> Result<()> {
        let (Some(durable), Some(worker)) = (self.durable.clone(), self.worker.clone()) else {
            return Ok(());
        };
        if self.applied.is_none() {
            self.adopt(&durable).await?;
        }
        let mode = self.shared.mode;
        // Subjects found held by another consumer during this sync.
        let mut held: BTreeSet<String> = BTreeSet::new();
        for _ in 0..SYNC_ATTEMPTS {
            let mut applied = self.applied.clone().unwrap_or_else(Applied::missing);
            let target = plan::target(&self.desired, &held);
            let reads = plan::reads(mode, &applied, &target);
            if reads.ack_floor {
                // Released subjects record the ack floor: read it fresh, not from the last check.
                if let Some(current) = api::get(&self.shared.stream, &durable).await? {
                    applied.floor = current.cached_info().ack_floor.stream_sequence;
                }
            }
            let consumers = if reads.consumers {
                api::list(&self.shared.stream).await?
            } else {
                Vec::new()
            };
            let cfg = &self.shared.config;
            let desired = plan::Desired {
                mode,
                group: &cfg.consumer_prefix,
                durable: &durable,
                worker: &worker,
                target: &target,
                max_released: cfg.max_subjects,
            };
            let observed = plan::Observed {
                applied: &applied,
                consumers: &consumers,
                draining: &self.draining,
                drained: &self.drained,
                recreate: self.recreate,
            };
            let commands = plan::sync(&desired, &observed);
            match self.execute(&durable, &applied, &target, commands).await {
                Ok(_) => {
                    self.settle_blocked(&held);
                    return Ok(());
                }
                Err(ApiError::Overlap) => {
                    let gained = plan::gained(&applied, &target);
                    let consumers = api::list(&self.shared.stream).await?;
                    let holders = takeover::holders(
                        &self.shared.config.consumer_prefix,
                        &durable,
                        consumers,
                        &gained,
                    );
                    if holders.is_empty() {
                        // Whoever held it is gone already: try again.
                        continue;
                    }
                    held.extend(holders.keys().cloned());
                    let now = Instant::now();
                    for s in holders.keys() {
                        self.blocked.entry(s.clone()).or_insert(now);
                    }
                    let takeovers = plan::takeover(
                        &self.blocked,
                        &holders,
                        Instant::now(),
                        self.shared.config.takeover_after,
                    );
                    // Takeover failures are logged and leave their subjects held: no error.
                    if let Ok(executed) = self.execute(&durable, &applied, &target, takeovers).await
                    {
                        for s in executed.freed {
                            held.remove(&s);
                        }
                    }
                }
                Err(ApiError::NotFound) => {
                    tracing::warn!(consumer = %durable, "durable consumer is gone: recreating it");
                    self.applied = Some(Applied::missing());
                    self.recreate = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Consumer {
            context: format!("configure {durable}"),
            source: "the configuration did not settle; retrying".into(),
        })
    }

    /// Executes a plan in order, moving from `applied` to `target`; stops at a failed write
    /// (a failed takeover only leaves its subjects held).
    async fn execute(
        &mut self,
        durable: &str,
        applied: &Applied,
        target: &BTreeSet<String>,
        commands: Vec<Command>,
    ) -> std::result::Result<Executed, ApiError> {
        let pausing = commands.contains(&Command::Pause);
        // Nothing after the resume can fail.
        let result = self.execute_all(durable, applied, target, commands).await;
        if pausing && result.is_err() {
            // The write that ends the pause failed: resume now rather than at the bound.
            if let Err(e) = api::resume(&self.shared.stream, durable).await {
                tracing::debug!(consumer = %durable, error = %e.message(), "resume after a failed write failed; the pause ends by itself");
            }
        }
        result
    }

    async fn execute_all(
        &mut self,
        durable: &str,
        applied: &Applied,
        target: &BTreeSet<String>,
        commands: Vec<Command>,
    ) -> std::result::Result<Executed, ApiError> {
        let mut written: Option<Written> = None;
        let mut executed = Executed::default();
        let mut still_held = BTreeSet::new();
        let due = commands
            .iter()
            .filter_map(|c| match c {
                Command::TakeOver { subjects, .. } => Some(subjects),
                _ => None,
            })
            .flatten()
            .collect::<BTreeSet<_>>()
            .len();
        for command in commands {
            match command {
                Command::SkipBelow { subject, below } => self.shared.known.set(&subject, below),
                Command::Pause => api::pause(&self.shared.stream, durable, PAUSE_BOUND).await?,
                Command::Resume => {
                    if let Err(e) = api::resume(&self.shared.stream, durable).await {
                        // The write landed: not worth undoing; the pause ends by itself.
                        tracing::warn!(consumer = %durable, error = %e.message(), bound = ?PAUSE_BOUND, "resuming the durable after a gain failed; it resumes by itself");
                    }
                }
                Command::RewindTo { subjects } => {
                    handoff::rewind_before_gain(&self.shared, durable, &subjects).await?;
                }
                Command::Create(write) => {
                    let config = self.consumer_config(durable, write.clone());
                    let consumer = api::create(&self.shared.stream, config).await?;
                    written = Some(self.written(durable, applied, target, write, &consumer));
                    self.consumer_tx.send_replace(Some(consumer));
                }
                Command::Recreate(write) => {
                    let consumer = self.recreate(durable, write.clone()).await?;
                    written = Some(self.written(durable, applied, target, write, &consumer));
                    self.consumer_tx.send_replace(Some(consumer));
                }
                Command::Update(write) => {
                    let config = self.consumer_config(durable, write.clone());
                    let consumer = api::update(&self.shared.stream, config).await?;
                    written = Some(self.written(durable, applied, target, write, &consumer));
                }
                Command::ReleaseGated { released } => {
                    if self.shared.take_gated(&released) {
                        let floor = written.map_or(applied.floor, |w| w.floor);
                        self.release_gated(durable, floor).await;
                    }
                }
                Command::Drain { from, upto } => {
                    let upto = upto.resolve(written.map(|w| w.delivered));
                    self.spawn_gain(durable, from, upto);
                }
                Command::TakeOver {
                    from,
                    config,
                    subjects,
                } => {
                    let after = self.shared.config.takeover_after;
                    tracing::warn!(from = %from, subjects = due, after = ?after, "taking over assigned subjects still held by another worker's consumer");
                    match api::update(&self.shared.stream, *config).await {
                        Ok(_) | Err(ApiError::NotFound) => {}
                        Err(e) => {
                            tracing::warn!(from = %from, error = %e.message(), "takeover failed");
                            still_held.extend(subjects.iter().cloned());
                        }
                    }
                    executed.freed.extend(subjects);
                }
            }
        }
        executed.freed.retain(|s| !still_held.contains(s));
        Ok(executed)
    }

    /// Bookkeeping after a successful write: the durable now has `write` for `target`.
    fn written(
        &mut self,
        durable: &str,
        applied: &Applied,
        target: &BTreeSet<String>,
        write: Write,
        consumer: &PullConsumer,
    ) -> Written {
        let info = consumer.cached_info();
        let floor = info.ack_floor.stream_sequence;
        self.shared.health.updated();
        tracing::info!(consumer = %durable, subjects = target.len(), gained = target.difference(&applied.subjects).count(), released = applied.subjects.difference(target).count(), "consumer filter updated");
        self.shared.set_filter(target);
        self.applied = Some(Applied {
            exists: true,
            subjects: target.clone(),
            metadata: write.metadata,
            deliver: write.deliver,
            floor,
        });
        self.drained.clear();
        self.draining.retain(|s, _| target.contains(s));
        Written {
            delivered: info.delivered.stream_sequence,
            floor,
        }
    }

    /// The full configuration of a planned write.
    fn consumer_config(&self, durable: &str, write: Write) -> pull::Config {
        plan::consumer_config(durable, &self.shared.config, write)
    }

    /// Creates the durable after a deletion: waits for the server to finish it and checks that
    /// the new consumer's store works (a no-op update), deleting it to retry if not.
    async fn recreate(
        &mut self,
        durable: &str,
        write: Write,
    ) -> std::result::Result<PullConsumer, ApiError> {
        let config = self.consumer_config(durable, write);
        tokio::time::sleep(RECREATE_DELAY).await;
        let consumer = api::create(&self.shared.stream, config.clone()).await?;
        if let Err(e) = api::update(&self.shared.stream, config).await {
            let _ = api::delete(&self.shared.stream, durable).await;
            return Err(ApiError::other(
                "re-create consumer",
                format!(
                    "the new consumer is unusable ({}); deleted to retry",
                    e.message()
                ),
            ));
        }
        self.recreate = false;
        Ok(consumer)
    }

    /// Work queue: messages of released subjects that the gate nak'ed are still pending on the
    /// durable, and a work queue delivers no pending message to another consumer (the gainer
    /// would wait for them until the durable's redeliveries, which JetStream makes even after
    /// the subject left the filter, stop). A reset to the ack floor + 1 drops that pending
    /// state; the durable's own in-flight messages come again and are acked without a second
    /// handling ([`AckMode::Auto`](super::AckMode::Auto)). If it fails, the message loop
    /// resets when such a message comes back.
    async fn release_gated(&self, durable: &str, floor: u64) {
        match api::reset(&self.shared.stream, durable, floor + 1).await {
            Ok(()) => {
                tracing::debug!(consumer = %durable, to = floor + 1, "released the gated messages of released subjects");
            }
            Err(e) => {
                tracing::debug!(consumer = %durable, error = %e.message(), "reset after a release failed; the message loop retries");
            }
        }
    }

    /// Keeps as blocked only the desired subjects still held elsewhere.
    fn settle_blocked(&mut self, held: &BTreeSet<String>) {
        self.blocked.retain(|s, _| held.contains(s));
        if !self.blocked.is_empty() {
            tracing::debug!(
                waiting = self.blocked.len(),
                "assigned subjects still held by another consumer"
            );
        }
    }

    /// Reads the durable from the server, if it exists, and resumes its unfinished drains.
    async fn adopt(&mut self, durable: &str) -> Result<()> {
        let Some(consumer) = api::get(&self.shared.stream, durable).await? else {
            self.applied = Some(Applied::missing());
            return Ok(());
        };
        if consumer.cached_info().paused {
            // Left paused by a gain that did not finish (see `Command::Pause`).
            api::resume(&self.shared.stream, durable).await?;
        }
        let (applied, resume) = plan::adopt(durable, consumer.cached_info());
        self.shared.set_filter(&applied.subjects);
        let resuming: usize = resume
            .iter()
            .map(|c| match c {
                Command::Drain { from, .. } => from.len(),
                _ => 0,
            })
            .sum();
        if resuming > 0 {
            tracing::info!(consumer = %durable, subjects = resuming, "resuming unfinished drains");
        }
        // Only drains (nothing that can fail).
        self.execute(durable, &applied, &applied.subjects, resume)
            .await?;
        self.applied = Some(applied);
        self.consumer_tx.send_replace(Some(consumer));
        Ok(())
    }

    /// Starts draining `from` up to `upto` in the background.
    fn spawn_gain(&mut self, durable: &str, from: BTreeMap<String, u64>, upto: u64) {
        let id = self.next_gain;
        self.next_gain += 1;
        for s in from.keys() {
            self.draining.insert(s.clone(), id);
        }
        let gain = Gain {
            durable: durable.to_owned(),
            id,
            from,
            upto,
        };
        self.gains
            .spawn(handoff::run(Arc::clone(&self.shared), gain));
    }

    /// A drain finished: its subjects lose their pending markers (at the next sync, now).
    async fn gain_done(&mut self, done: std::result::Result<Gain, JoinError>) {
        let gain = match done {
            Ok(gain) => gain,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "a drain task panicked");
                }
                return;
            }
        };
        if self.durable.as_deref() != Some(gain.durable.as_str()) {
            return;
        }
        for s in gain.from.keys() {
            if self.draining.get(s) == Some(&gain.id) {
                self.draining.remove(s);
                self.drained.insert(s.clone());
            }
        }
        if !self.drained.is_empty() {
            tracing::info!(consumer = %gain.durable, subjects = gain.from.len(), "gained subjects drained");
            let _ = self.sync().await;
        }
    }

    /// Periodic (and on loop failure): is the durable still there, with our filter?
    async fn check(&mut self) {
        let Some(durable) = self.durable.clone() else {
            return;
        };
        if !self.applied.as_ref().is_some_and(|a| a.exists) {
            let _ = self.sync().await;
            return;
        }
        match api::get(&self.shared.stream, &durable).await {
            Ok(None) => {
                tracing::warn!(consumer = %durable, "durable consumer was deleted: recreating it");
                self.applied = Some(Applied::missing());
                self.recreate = true;
                let _ = self.sync().await;
            }
            Ok(Some(consumer)) => {
                let seen = plan::seen(&durable, consumer.cached_info());
                let Some(applied) = self.applied.as_mut() else {
                    return;
                };
                applied.floor = seen.floor;
                if seen.subjects != applied.subjects || seen.metadata != applied.metadata {
                    tracing::warn!(consumer = %durable, "consumer configuration changed behind our back: restoring it");
                    applied.subjects = seen.subjects;
                    applied.metadata = seen.metadata;
                    let _ = self.sync().await;
                } else if self.error.is_some() {
                    let _ = self.sync().await;
                }
            }
            Err(e) => {
                self.error = Some(e.message());
            }
        }
    }

    /// Releases every subject (paused filter, released markers); the durable is kept.
    async fn close(&mut self) -> Result<()> {
        self.gains.abort_all();
        self.draining.clear();
        self.blocked.clear();
        self.desired.clear();
        self.retry_at = None;
        let result = if self.applied.as_ref().is_some_and(|a| a.exists) {
            self.try_sync().await
        } else {
            Ok(())
        };
        self.consumer_tx.send_replace(None);
        result
    }

    /// Publishes the filter and the configuration state to health.
    fn publish_health(&self) {
        match &self.applied {
            Some(applied) => self.shared.set_filter(&applied.subjects),
            None => self.shared.set_filter(&BTreeSet::new()),
        }
        self.shared.health.set_config(ConfigState {
            consumer: self.durable.clone(),
            subjects: self.applied.as_ref().map_or(0, |a| a.subjects.len()),
            waiting: self.blocked.len(),
            catching_up: self.draining.len(),
            error: self.error.clone(),
        });
    }
}
