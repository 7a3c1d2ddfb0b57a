//! The reconciler: the one task that changes the durable consumer on the server.
//!
//! It holds the desired subjects (from the last assignment) and what the server has, and
//! brings the server to the desired set: create-or-update in place, hand-off bookkeeping in
//! the metadata, drains for gained subjects, retries with jittered backoff, re-creation after
//! a deletion, and on work-queue streams the wait for (and, after `takeoverAfter`, the
//! takeover of) subjects still held by another consumer of the group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, pull};
use backon::ExponentialBackoff;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::api::{self, ApiError};
use super::handoff::{self, Gain};
use super::health::ConfigState;
use super::subjects::{durable_name, paused_subject};
use super::takeover;
use super::{Mode, Shared, backoff, markers};
use crate::error::{Error, Result};
use crate::partition::WorkerId;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Attempts within one sync for races (an overlap that just cleared, a consumer that vanished).
const SYNC_ATTEMPTS: usize = 4;
/// Pause before re-creating a deleted durable: nats-server may still be removing the old
/// one's store, and would remove the new one's with it.
const RECREATE_DELAY: Duration = Duration::from_millis(250);

/// Requests from the [`WorkerConsumer`](super::WorkerConsumer) handle.
pub(crate) enum Command {
    /// Follow this worker's subjects; replies after the first attempt.
    Assign {
        worker: WorkerId,
        subjects: BTreeSet<String>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Release every subject and stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// The durable as last seen on, or written to, the server.
#[derive(Debug, Clone)]
struct Applied {
    exists: bool,
    subjects: BTreeSet<String>,
    metadata: HashMap<String, String>,
    deliver: DeliverPolicy,
    floor: u64,
}

impl Applied {
    fn missing() -> Self {
        Self {
            exists: false,
            subjects: BTreeSet::new(),
            metadata: HashMap::new(),
            deliver: DeliverPolicy::All,
            floor: 0,
        }
    }
}

pub(crate) struct Reconciler {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    loop_failed: Arc<Notify>,
    consumer_tx: watch::Sender<Option<PullConsumer>>,
    worker: Option<WorkerId>,
    durable: Option<String>,
    desired: BTreeSet<String>,
    applied: Option<Applied>,
    /// Desired subjects held by another consumer of a work-queue stream, since when.
    blocked: BTreeMap<String, Instant>,
    gains: JoinSet<Gain>,
    next_gain: u64,
    /// Subject → the gain draining it.
    draining: HashMap<String, u64>,
    /// Drained subjects whose pending marker is still to be removed.
    drained: BTreeSet<String>,
    retry_at: Option<Instant>,
    delays: ExponentialBackoff,
    error: Option<String>,
    /// The durable was deleted behind our back and must be re-created.
    recreate: bool,
}

impl Reconciler {
    pub(crate) fn new(
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
        loop_failed: Arc<Notify>,
        consumer_tx: watch::Sender<Option<PullConsumer>>,
    ) -> Self {
        Self {
            shared,
            commands,
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
        }
    }

    pub(crate) async fn run(mut self) {
        let mut check = tokio::time::interval(self.shared.config.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => return,
                    Some(Command::Assign { worker, subjects, reply }) => {
                        let result = self.assign(worker, subjects).await;
                        self.publish_health();
                        let _ = reply.send(result);
                    }
                    Some(Command::Close { reply }) => {
                        let result = self.close().await;
                        self.publish_health();
                        let _ = reply.send(result);
                        return;
                    }
                },
                () = self.loop_failed.notified() => self.check().await,
                Some(done) = self.gains.join_next(), if !self.gains.is_empty() => self.gain_done(done).await,
                _ = check.tick() => self.check().await,
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    let _ = self.sync().await;
                }
            }
            self.publish_health();
        }
    }

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

    /// One reconciliation, with the retry bookkeeping around it.
    async fn sync(&mut self) -> Result<()> {
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

    fn schedule_retry(&mut self) {
        let delay = self.delays.next().unwrap_or(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + delay);
    }

    async fn try_sync(&mut self) -> Result<()> {
        let Some(durable) = self.durable.clone() else {
            return Ok(());
        };
        if self.applied.is_none() {
            self.adopt(&durable).await?;
        }
        // Subjects found held by another consumer during this sync.
        let mut held: BTreeSet<String> = BTreeSet::new();
        for _ in 0..SYNC_ATTEMPTS {
            let mut applied = self.applied.clone().unwrap_or_else(Applied::missing);
            let target: BTreeSet<String> = self.desired.difference(&held).cloned().collect();
            if applied.exists
                && self.shared.mode == Mode::Replay
                && !applied.subjects.is_subset(&target)
            {
                // Released subjects record the ack floor: read it fresh, not from the last check.
                if let Some(current) = api::get(&self.shared.stream, &durable).await? {
                    applied.floor = current.cached_info().ack_floor.stream_sequence;
                }
            }
            let gained: BTreeSet<String> = target.difference(&applied.subjects).cloned().collect();
            let fresh = !applied.exists;
            let from = self.lower_bounds(&durable, &applied, &gained).await?;
            let deliver = match (fresh, self.shared.mode) {
                (false, _) => applied.deliver,
                (true, Mode::WorkQueue) => DeliverPolicy::All,
                // Nobody processed any of these yet: the durable itself starts from the start.
                (true, Mode::Replay) if from.values().all(|n| *n == 0) => DeliverPolicy::All,
                (true, Mode::Replay) => DeliverPolicy::New,
            };
            // A fresh durable that delivers everything has no backlog behind it.
            let drain = !(gained.is_empty() || fresh && deliver == DeliverPolicy::All);
            let drained_from = if drain { from } else { BTreeMap::new() };
            let metadata = self.next_metadata(&applied, &target, &drained_from);
            if !fresh
                && gained.is_empty()
                && target == applied.subjects
                && metadata == applied.metadata
            {
                self.settle_blocked(&held);
                return Ok(());
            }
            if self.shared.mode == Mode::Replay {
                for s in &gained {
                    self.shared
                        .known
                        .set(s, drained_from.get(s).copied().unwrap_or(0));
                }
            }
            let config = self.consumer_config(&durable, &target, metadata.clone(), deliver);
            let result = if fresh {
                self.create(&durable, config).await
            } else {
                api::update(&self.shared.stream, config).await
            };
            match result {
                Ok(consumer) => {
                    let info = consumer.cached_info();
                    // A paused durable's reported position stays at its last delivery while the
                    // server moves it past everything stored meanwhile: on a work queue, treat
                    // anything stored before this gain as possibly behind it.
                    let was_paused = applied.exists && applied.subjects.is_empty();
                    let upto = if self.shared.mode == Mode::WorkQueue && was_paused {
                        u64::MAX
                    } else {
                        info.delivered.stream_sequence
                    };
                    let floor = info.ack_floor.stream_sequence;
                    self.shared.health.updated();
                    tracing::info!(consumer = %durable, subjects = target.len(), gained = gained.len(), released = applied.subjects.difference(&target).count(), "consumer filter updated");
                    self.shared.set_filter(&target);
                    let released: BTreeSet<String> =
                        applied.subjects.difference(&target).cloned().collect();
                    if self.shared.mode == Mode::WorkQueue && self.shared.take_gated(&released) {
                        self.release_gated(&durable, floor).await;
                    }
                    self.applied = Some(Applied {
                        exists: true,
                        subjects: target.clone(),
                        metadata,
                        deliver,
                        floor,
                    });
                    self.drained.clear();
                    self.draining.retain(|s, _| target.contains(s));
                    if fresh {
                        self.consumer_tx.send_replace(Some(consumer));
                    }
                    if drain {
                        self.spawn_gain(&durable, drained_from, upto);
                    }
                    self.settle_blocked(&held);
                    return Ok(());
                }
                Err(ApiError::Overlap) => {
                    let holders = takeover::holders(&self.shared, &durable, &gained).await?;
                    if holders.is_empty() {
                        // Whoever held it is gone already: try again.
                        continue;
                    }
                    held.extend(holders.keys().cloned());
                    let now = Instant::now();
                    for s in holders.keys() {
                        self.blocked.entry(s.clone()).or_insert(now);
                    }
                    for s in takeover::take_over(&self.shared, &self.blocked, &holders).await {
                        held.remove(&s);
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
        Err(Error::Consumer(format!(
            "the configuration of {durable} did not settle; retrying"
        )))
    }

    /// Creates the durable; after a deletion, waits for the server to finish it and checks that
    /// the new consumer's store works (a no-op update), deleting it to retry if not.
    async fn create(
        &mut self,
        durable: &str,
        config: pull::Config,
    ) -> std::result::Result<PullConsumer, ApiError> {
        if !self.recreate {
            return api::create(&self.shared.stream, config).await;
        }
        tokio::time::sleep(RECREATE_DELAY).await;
        let consumer = api::create(&self.shared.stream, config.clone()).await?;
        if let Err(e) = api::update(&self.shared.stream, config).await {
            let _ = api::delete(&self.shared.stream, durable).await;
            return Err(ApiError::Other(format!(
                "re-created consumer is unusable ({}); deleted to retry",
                e.message()
            )));
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
        let info = consumer.cached_info().clone();
        let subjects = server_subjects(durable, &info.config);
        let resume: BTreeMap<String, u64> = markers::pending_subjects(&info.config.metadata)
            .into_iter()
            .filter(|s| subjects.contains(s))
            .map(|s| {
                let from = markers::pending(&info.config.metadata, &s).unwrap_or(0);
                (s, from)
            })
            .collect();
        self.shared.set_filter(&subjects);
        self.applied = Some(Applied {
            exists: true,
            subjects,
            metadata: markers::ours(&info.config.metadata),
            deliver: info.config.deliver_policy,
            floor: info.ack_floor.stream_sequence,
        });
        if !resume.is_empty() {
            tracing::info!(consumer = %durable, subjects = resume.len(), "resuming unfinished drains");
            self.spawn_gain(durable, resume, info.delivered.stream_sequence);
        }
        self.consumer_tx.send_replace(Some(consumer));
        Ok(())
    }

    /// Where the drain of each gained subject starts (work queues need no bound: they only
    /// store what was not processed).
    async fn lower_bounds(
        &self,
        durable: &str,
        applied: &Applied,
        gained: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, u64>> {
        if gained.is_empty() || self.shared.mode == Mode::WorkQueue {
            return Ok(gained.iter().map(|s| (s.clone(), 0)).collect());
        }
        let consumers = api::list(&self.shared.stream).await?;
        Ok(markers::lower_bounds(
            &self.shared.config.consumer_prefix,
            durable,
            &consumers,
            &applied.metadata,
            gained,
        ))
    }

    /// The metadata after moving from `applied` to `target`: released subjects get a released
    /// marker (their drain start if still draining, else the ack floor + 1), gained ones a
    /// pending marker, drained ones lose theirs.
    fn next_metadata(
        &self,
        applied: &Applied,
        target: &BTreeSet<String>,
        gained: &BTreeMap<String, u64>,
    ) -> HashMap<String, String> {
        let cfg = &self.shared.config;
        let mut m = applied.metadata.clone();
        m.insert(markers::GROUP.into(), cfg.consumer_prefix.clone());
        if let Some(worker) = &self.worker {
            m.insert(markers::WORKER.into(), worker.to_string());
        }
        let releasing: BTreeSet<String> = applied
            .subjects
            .difference(target)
            .cloned()
            .chain(
                markers::pending_subjects(&m)
                    .into_iter()
                    .filter(|s| !target.contains(s)),
            )
            .collect();
        for s in &releasing {
            let from = markers::pending(&m, s);
            m.remove(&markers::pending_key(s));
            if self.shared.mode == Mode::Replay {
                m.insert(
                    markers::released_key(s),
                    from.unwrap_or(applied.floor + 1).to_string(),
                );
            }
        }
        for s in &self.drained {
            if target.contains(s) && !self.draining.contains_key(s) {
                m.remove(&markers::pending_key(s));
            }
        }
        for (s, from) in gained {
            m.remove(&markers::released_key(s));
            m.insert(markers::pending_key(s), from.to_string());
        }
        markers::prune_released(&mut m, cfg.max_subjects);
        m
    }

    fn consumer_config(
        &self,
        durable: &str,
        target: &BTreeSet<String>,
        metadata: HashMap<String, String>,
        deliver: DeliverPolicy,
    ) -> pull::Config {
        let cfg = &self.shared.config;
        let filter_subjects = if target.is_empty() {
            vec![paused_subject(durable)]
        } else {
            target.iter().cloned().collect()
        };
        pull::Config {
            durable_name: Some(durable.to_owned()),
            description: Some("parti: the partitions of one worker".into()),
            deliver_policy: deliver,
            ack_policy: AckPolicy::Explicit,
            ack_wait: cfg.ack_wait,
            max_ack_pending: cfg.max_ack_pending,
            filter_subjects,
            metadata,
            ..Default::default()
        }
    }

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
                let info = consumer.cached_info();
                let server = server_subjects(&durable, &info.config);
                let Some(applied) = self.applied.as_mut() else {
                    return;
                };
                applied.floor = info.ack_floor.stream_sequence;
                let metadata = markers::ours(&info.config.metadata);
                if server != applied.subjects || metadata != applied.metadata {
                    tracing::warn!(consumer = %durable, "consumer configuration changed behind our back: restoring it");
                    applied.subjects = server;
                    applied.metadata = metadata;
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

/// The subjects in a durable's server-side filter, without the paused placeholder.
fn server_subjects(durable: &str, config: &consumer::Config) -> BTreeSet<String> {
    let paused = paused_subject(durable);
    api::info_filters(config)
        .into_iter()
        .filter(|s| *s != paused)
        .collect()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
