//! One leader term's state and its operations: the [`Leader`].
//!
//! The [`runner`](super::runner) reads the channels and turns each event into one call here;
//! everything those calls decide from lives in the `Leader`. The decisions themselves are the
//! [`Planner`]'s and [`handoff`]'s; a `Leader` only feeds them, carries out what they decide
//! (phase writes, fenced publishes, hand-off republishes, lease revocations) and feeds the
//! results back.
//!
//! The `async` methods make the store and source calls. The runner races each of them against
//! the term's cancellation (all but [`Leader::departed_gracefully`], whose stable-ID reads at
//! takeover never were): one dropped mid-way leaves the committed map as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::compat::{self, Fence, Standing};
use super::handoff::{self, Members};
use super::history::{HistorySender, Publish};
use super::placement;
use super::planner::{
    ClusterView, Decision, Input, Phase, Planner, PlannerConfig, RebalanceReason,
};
use super::publisher::{PublishMeta, Publisher};
use crate::assignment::{AssignmentMap, Lifecycle};
use crate::clock::{now, unix_ms};
use crate::config::MovesPerStep;
use crate::election::ElectionAgent;
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::heartbeat::{HeartbeatValue, MembershipEvent};
use crate::partition::{Partition, WorkerId};
use crate::profile::{PlacementRules, UnlabelledPolicy, WorkerProfile};
use crate::records::Intents;
use crate::records::{Lineage, WorkerRecord};
use crate::source::{PartitionSource, load_checked};
use crate::stable_id::StableIdValue;
use crate::state::ScalingReason;
use crate::store::{Bucket, WatchEvent, WatchStream, codec};
use crate::strategy::AssignmentStrategy;

/// Everything the leader needs; built by the manager.
#[derive(Debug, Clone)]
pub(crate) struct LeaderContext {
    pub(crate) assignment_bucket: Arc<dyn Bucket>,
    pub(crate) heartbeat_bucket: Arc<dyn Bucket>,
    /// Tells a graceful leave (ID released) from a crash (ID still held) for workers that
    /// were already gone when this leader took over.
    pub(crate) stable_id_bucket: Arc<dyn Bucket>,
    pub(crate) strategy: Arc<dyn AssignmentStrategy>,
    pub(crate) source: Arc<dyn PartitionSource>,
    pub(crate) agent: Arc<dyn ElectionAgent>,
    pub(crate) planner: PlannerConfig,
    pub(crate) membership_resync: Duration,
    /// The commit version this worker had applied when it became leader: a version floor its
    /// own heartbeat may not show yet (right after a cut-off its key has expired).
    pub(crate) applied_before: u64,
    /// Bound on one partition-source call (`operationTimeout`).
    pub(crate) source_timeout: Duration,
    /// How long a loser may keep a gainer waiting before it is expelled (`handoffTimeout`).
    pub(crate) handoff_timeout: Duration,
    pub(crate) min_rebalance_threshold: f64,
    /// `assignment.maxMovesPerStep`: `None` publishes every rebalance in one step.
    pub(crate) max_moves_per_step: Option<MovesPerStep>,
    /// `assignment.unlabelledPolicy`.
    pub(crate) unlabelled_policy: UnlabelledPolicy,
    /// `assignment.labelSpillGrace`: how long a label no worker has stays parked.
    pub(crate) label_spill_grace: Duration,
    pub(crate) events: EventSink,
    /// Where publishes go for the publish history; set by the runner for its term (`None`:
    /// no history is written).
    pub(crate) history: Option<HistorySender>,
    /// Set by the manager while it is degraded and when it recovers: which crashes are held
    /// back, and until when (see [`CrashHold`](super::CrashHold)).
    pub(crate) crash_hold: watch::Receiver<Option<super::CrashHold>>,
}

/// The longest a completed release waits for the others of its batch before its gainer is
/// let in alone.
const HANDOFF_BATCH: Duration = Duration::from_millis(100);

/// The leader of one term: what it decides from, and the operations that act on it.
pub(crate) struct Leader {
    /// Buckets, source, strategy and settings: fixed for the term.
    ctx: LeaderContext,
    /// Ends a retry back-off at once when the term ends (stop or leadership lost), so that a
    /// decision being retried does not outlive the term.
    cancel: CancellationToken,
    /// The term's fenced writer, and the commit it last read or made: the base every publish
    /// and hand-off republish builds on.
    publisher: Publisher,
    /// When to announce a phase and when to publish: fed every event, asked after every wake.
    planner: Planner,
    /// The partition list the last publish was built from (at takeover: what the inherited map
    /// covers). The source check compares the source with it, and a membership publish places
    /// it over the new workers when the source is down. `None` until there is one.
    partitions: Option<Vec<Partition>>,
    /// The map this leader last published (at takeover: the inherited one): moves are counted
    /// against it.
    last_map: AssignmentMap,
    /// The lifecycle of the last publish: a hand-off republish must not change it.
    lifecycle: Lifecycle,
    /// What the live workers' heartbeats say: released versions, lineages, the version floor.
    members: Members,
    /// Since when some hand-offs could be completed (waiting for the rest of the batch).
    handoff_ready_since: Option<Instant>,
    /// When the last hand-off commit was made: at most one per [`HANDOFF_BATCH`].
    last_handoff: Option<Instant>,
    /// Each member's current lineage and since when this leader has seen it: a newcomer under
    /// a mapped ID is named only once the previous process's lease has provably run out.
    lineage_seen: BTreeMap<WorkerId, (Lineage, Instant)>,
    /// IDs whose last process left gracefully (released everything): a newcomer under one of
    /// them is named at once.
    left_gracefully: BTreeSet<WorkerId>,
    /// Each live loser that keeps some gainer waiting (see [`handoff::waited_on`]): since
    /// when, and the highest version it has yet to release. It is expelled once that lasts
    /// `handoffTimeout`.
    waiting: BTreeMap<WorkerId, (Instant, u64)>,
    /// Losers whose lease this leader revoked: once a revocation has run out, the loser counts
    /// as released up to its version. Each is kept (not replaced by a later one), so a later
    /// revocation never delays what an earlier one already covers.
    expelled: BTreeMap<WorkerId, Vec<Expulsion>>,
    /// Revocations whose write failed or could not be made: not before then again.
    retry_at: BTreeMap<WorkerId, Instant>,
    /// Revocations whose outcome is unknown (the write may have landed): the lineage aimed at
    /// and the version it would cover. Seeing that worker under a later lineage of the same
    /// process settles it without another marker.
    attempted: BTreeMap<WorkerId, (Lineage, u64)>,
    /// Mapped workers missing from the takeover's heartbeat snapshot, and until when they may
    /// still hold what they had (one heartbeat TTL after the takeover): a key missing from a
    /// snapshot proves nothing (a recreated bucket, a value overwritten), while any renewal
    /// such a worker made started before the snapshot, so its lease has run out by then.
    unproven: BTreeMap<WorkerId, Instant>,
    /// The operator's intents as last read (the last good read: a garbled key keeps them);
    /// every publish re-reads them first.
    intents: Intents,
    /// The last publish could not honour the intents (a crash recovery moves only orphans):
    /// a publish with reason `operator` follows.
    intents_owed: bool,
    /// The rebalance being paced (`maxMovesPerStep`): its target, and the inputs it was
    /// computed from (a step is taken towards it while they stay the same).
    paced: Option<Paced>,
    /// A phase announcement the runner left to the publish that came with it (see
    /// [`carry_phase`](Self::carry_phase)): announced after all if that publish fails.
    unannounced: Option<Phase>,
    /// A paced rebalance has steps left: the next one is fed to the planner once the last
    /// one's hand-offs are complete.
    step_owed: bool,
    /// Labels of listed partitions that no target worker has: parked until `labelSpillGrace`
    /// after this leader first saw them so, then spilled. A new leader starts the grace again
    /// (it errs on the side of parking).
    missing_labels: BTreeMap<String, MissingLabel>,
    /// The profiles (capacity, labels) the last publish was placed with: a change of a live
    /// worker's profile is a rebalance with reason `placement`.
    placed_profiles: BTreeMap<WorkerId, WorkerProfile>,
    /// A `placement` publish was asked for and has not been made yet: a partition-change
    /// publish that is skipped (source down, re-weight below the threshold) asks again.
    placement_owed: bool,
    /// The publish `placement_owed` asked for was skipped: ask again.
    placement_rearm: bool,
    /// The source failed at its last read: not asked again by the periodic check (nor by a
    /// membership publish) before `retry_at`.
    source_down: Option<SourceDown>,
}

/// A source that failed (see [`Leader::load_source`]).
#[derive(Debug)]
struct SourceDown {
    retry_at: Instant,
    /// The pauses after the next failures.
    delays: crate::retry::Delays,
}

/// The target of a paced rebalance and what it was computed from.
#[derive(Debug)]
struct Paced {
    target: AssignmentMap,
    workers: Vec<WorkerId>,
    partitions: Vec<Partition>,
    intents: Intents,
    rules: PlacementRules,
}

/// A label that no target worker has (see [`Leader::missing_labels`]).
#[derive(Debug, Clone, Copy)]
struct MissingLabel {
    /// When a publish first found it so.
    since: Instant,
    /// The publish that spills it has been asked for.
    spill_asked: bool,
    /// A publish spilled it (announced).
    spilled: bool,
}

/// A loser whose lease was revoked: it holds nothing it lost up to `version` from `fenced_at`
/// on — one heartbeat TTL after the revocation was written, since every renewal it made
/// before then started before the write, and none can succeed after it.
#[derive(Debug, Clone, Copy)]
struct Expulsion {
    version: u64,
    fenced_at: Instant,
}

impl Leader {
    /// A leader over what `publisher` read and what the heartbeats say (`members`); feed it
    /// [`take_over`](Self::take_over) first.
    pub(crate) fn new(
        ctx: LeaderContext,
        publisher: Publisher,
        members: Members,
        cancel: CancellationToken,
    ) -> Self {
        let planner = Planner::new(ctx.planner.clone());
        let committed = publisher.committed();
        // What the inherited map covers, so that the source check notices a change made
        // before this term (a refresh request lost while the old leader was going away).
        let partitions = (!committed.map.is_empty()).then(|| {
            let mut covered: Vec<Partition> = committed
                .map
                .iter()
                .flat_map(|(_, ps)| ps.iter().cloned())
                .collect();
            covered.sort();
            covered
        });
        let last_map = committed.map.clone();
        let lifecycle = committed
            .record
            .as_ref()
            .map_or(Lifecycle::ColdStart, |(r, _)| r.lifecycle);
        let takeover = now();
        // What the inherited map was placed with is unknown: the profiles as they are now (a
        // later change is one), and the labels it parked, parked from now.
        let placed_profiles = members.profiles.clone();
        let missing_labels = committed
            .record
            .as_ref()
            .map(|(r, _)| r.parked.keys())
            .into_iter()
            .flatten()
            .map(|l| {
                let missing = MissingLabel {
                    since: takeover,
                    spill_asked: false,
                    spilled: false,
                };
                (l.clone(), missing)
            })
            .collect();
        let lineage_seen = members
            .lineages
            .iter()
            .map(|(w, l)| (w.clone(), (l.clone(), takeover)))
            .collect();
        let unproven_until = takeover + ctx.membership_resync;
        let unproven = committed
            .workers
            .iter()
            .flat_map(|(w, (_, record))| {
                let waited_on = record.pending.values().flat_map(|waits| waits.keys());
                std::iter::once(w).chain(waited_on)
            })
            .filter(|w| !members.released.contains_key(*w))
            .map(|w| (w.clone(), unproven_until))
            .collect();
        Self {
            ctx,
            cancel,
            publisher,
            planner,
            partitions,
            last_map,
            lifecycle,
            members,
            handoff_ready_since: None,
            last_handoff: None,
            lineage_seen,
            left_gracefully: BTreeSet::new(),
            waiting: BTreeMap::new(),
            expelled: BTreeMap::new(),
            retry_at: BTreeMap::new(),
            attempted: BTreeMap::new(),
            unproven,
            intents: Intents::default(),
            intents_owed: false,
            paced: None,
            unannounced: None,
            step_owed: false,
            missing_labels,
            placed_profiles,
            placement_owed: false,
            placement_rearm: false,
            source_down: None,
        }
    }

    /// Starts the planner's term from the committed record and the `live` set.
    pub(crate) fn take_over(&mut self, live: &BTreeSet<WorkerId>) -> Vec<Decision> {
        let members = self.members.clone();
        announce_standings(&self.ctx.events, &Members::default(), &members);
        let refused: BTreeSet<&WorkerId> = members.refused().map(|(w, _)| w).collect();
        let live: BTreeSet<WorkerId> = live
            .iter()
            .filter(|w| !refused.contains(w))
            .cloned()
            .collect();
        let cluster = match &self.publisher.committed().record {
            Some((r, _)) => Some(ClusterView {
                version: r.version,
                lifecycle: r.lifecycle,
                workers: r.workers.keys().cloned().collect(),
            }),
            // The commit is lost (garbage, or its bucket deleted and created again) while
            // workers report versions: a running cluster whose map is unknown, not a cold
            // start. The planner publishes after a planned window, and every partition waits
            // for every live worker to release (`Publisher::unknown_holders`).
            None if self.members.floor.max(self.ctx.applied_before) > 0 => Some(ClusterView {
                version: self.members.floor.max(self.ctx.applied_before),
                lifecycle: Lifecycle::Running,
                workers: Vec::new(),
            }),
            None => None,
        };
        self.planner.handle(Input::BecameLeader {
            cluster,
            live: live.iter().cloned().collect(),
            now: now(),
        })
    }

    /// A published worker that is gone (not in `live`) and released its stable ID left
    /// gracefully (a rolling update in progress): a planned change, not a crash. So did one
    /// whose ID another process has claimed since (a restart of it under the same ID).
    ///
    /// An ID whose last change is an expiry lapsed: that worker crashed, however long ago. A
    /// leader elected late, after a crashed worker's ID expired, must still see a crash:
    /// taken for a leave, it would wait out a planned window instead of the grace period. An
    /// ID deleted by its owner, or of which nothing is left (the tombstone aged out after
    /// `workerIdTtl`, or the bucket was created again), counts as released.
    ///
    /// Its takeover doubt (`unproven`) is kept: the stable-ID read may come from
    /// a replica that is behind (a NATS cluster serves direct gets from any replica), so a
    /// missing key is no proof that it released everything; what it gave up waits at most one
    /// heartbeat TTL after the takeover.
    pub(crate) async fn departed_gracefully(&mut self, live: &BTreeSet<WorkerId>) -> Vec<Decision> {
        let absent: Vec<(WorkerId, Option<String>)> = self
            .publisher
            .committed()
            .record
            .as_ref()
            .map(|(r, _)| {
                r.workers
                    .keys()
                    .filter(|w| !live.contains(*w))
                    .map(|w| (w.clone(), r.lineages.get(w).map(|l| l.instance.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut decisions = Vec::new();
        for (worker, committed_instance) in absent {
            let left = match self.ctx.stable_id_bucket.last_change(worker.as_str()).await {
                Ok(None | Some(WatchEvent::Deleted { .. })) => true,
                // Claimed again by another process, which has not heartbeated yet: the one
                // the commit names is gone and held nothing (its ID was released, or expired
                // long after its heartbeat lease), and its successor is about to join. A crash
                // suspect would be declared if that join came later than the grace period.
                Ok(Some(WatchEvent::Put(entry))) => committed_instance.is_some_and(|committed| {
                    codec::decode::<StableIdValue>(
                        self.ctx.stable_id_bucket.name(),
                        &entry.key,
                        &entry.value,
                    )
                    .is_ok_and(|claim| claim.instance != committed)
                }),
                _ => false,
            };
            tracing::debug!(%worker, left, "a committed worker is absent at the takeover");
            if left {
                decisions.extend(self.planner.handle(Input::Left { worker, now: now() }));
            }
        }
        decisions
    }

    /// Feeds one input to the planner.
    pub(crate) fn handle(&mut self, input: Input) -> Vec<Decision> {
        self.planner.handle(input)
    }

    /// The planner input for a membership event; remembers which IDs left gracefully.
    pub(crate) fn on_membership(&mut self, event: MembershipEvent) -> Input {
        match event {
            // A worker this leader does not understand never joins the planner's live set.
            MembershipEvent::Joined(worker)
                if matches!(self.members.standing(&worker), Standing::Refused(_)) =>
            {
                Input::Tick { now: now() }
            }
            MembershipEvent::Joined(worker) => Input::Joined { worker, now: now() },
            MembershipEvent::Left(worker) => {
                self.left_gracefully.insert(worker.clone());
                Input::Left { worker, now: now() }
            }
            MembershipEvent::Expired(worker) => {
                self.left_gracefully.remove(&worker);
                Input::Expired { worker, now: now() }
            }
        }
    }

    /// Takes in what the heartbeats now say, noting since when each new lineage has been seen.
    /// Returns the planner inputs for workers whose protocol this leader stopped or started
    /// understanding (see [`compat`]): a refused worker leaves the planner's live set (the next
    /// map leaves it out), one understood again joins it. Everything else is for hand-offs.
    pub(crate) fn on_heartbeats(&mut self, members: Members) -> Vec<Input> {
        if members == self.members {
            return Vec::new();
        }
        announce_standings(&self.ctx.events, &self.members, &members);
        let seen_at = now();
        let inputs = refusal_inputs(&self.members, &members, seen_at);
        for (worker, lineage) in &members.lineages {
            let fresh = self
                .lineage_seen
                .get(worker)
                .is_none_or(|(l, _)| l != lineage);
            if fresh {
                self.lineage_seen
                    .insert(worker.clone(), (lineage.clone(), seen_at));
            }
        }
        self.members = members;
        inputs
    }

    /// Asks the source whether it changed by itself since the map was built: the input to
    /// feed when it did. A source error is reported and counts as no change.
    ///
    /// After a failure the periodic check (`noticed` false) leaves the source alone until the
    /// back-off ends: a source that hangs must not keep the loop busy (a crash waits behind
    /// every call). A change notice (`noticed`) asks at once.
    pub(crate) async fn source_changed(&mut self, noticed: bool) -> Option<Input> {
        if !noticed
            && self
                .source_down
                .as_ref()
                .is_some_and(|d| now() < d.retry_at)
        {
            return None;
        }
        match self.load_source().await {
            Ok(fresh) if self.partitions.as_ref().is_some_and(|p| *p != fresh) => {
                Some(Input::PartitionsChanged { now: now() })
            }
            Ok(_) => None,
            Err(e) => {
                self.ctx.events.error(e);
                None
            }
        }
    }

    /// Reads the source, bounded by `operationTimeout`, and keeps track of its failures: after
    /// one, the periodic check and membership publishes leave it alone for a back-off (1 s,
    /// doubling up to 8 s), so that a hung source costs one timeout, not one per check.
    async fn load_source(&mut self) -> Result<Vec<Partition>> {
        let loaded = load_checked(&*self.ctx.source, self.ctx.source_timeout).await;
        match &loaded {
            Ok(_) => self.source_down = None,
            Err(_) => {
                let down = self.source_down.get_or_insert_with(|| SourceDown {
                    retry_at: now(),
                    delays: crate::retry::doubling(Duration::from_secs(1), Duration::from_secs(8)),
                });
                down.retry_at = now() + down.delays.next_delay();
            }
        }
        loaded
    }

    /// When the leader must look again by itself: the planner's next deadline, a hand-off
    /// batch falling due, an expulsion falling due or a revoked lease running out.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        let handoff_due = self.handoff_ready_since.map(|since| since + HANDOFF_BATCH);
        let now_at = now();
        let doubt_ends = self
            .unproven
            .values()
            .filter(|until| **until > now_at)
            .min()
            .copied();
        [
            self.planner.next_wakeup(),
            handoff_due,
            self.expulsion_due(now_at),
            doubt_ends,
            self.spill_due(),
            self.publisher.pages_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Carries out one decision; returns the planner inputs its result makes, for the caller to
    /// feed (after whatever membership news queued up meanwhile: see `runner::plan`).
    /// `Error::LeadershipLost` ends the term; `Error::Shutdown` when cancelled in a back-off.
    pub(crate) async fn execute(&mut self, decision: Decision) -> Result<Vec<Input>> {
        match decision {
            Decision::SetPhase(phase) => {
                self.announce(phase).await?;
                Ok(Vec::new())
            }
            Decision::Publish {
                workers,
                reason,
                orphans_only,
            } => {
                let mut delays =
                    crate::retry::doubling(Duration::from_millis(50), Duration::from_secs(5));
                loop {
                    match self.publish(&workers, reason.as_str(), orphans_only).await {
                        Ok(version) => {
                            // A new version carried the phase. An unchanged one is a skipped
                            // publish (a re-weight below the threshold, a refresh without the
                            // source): nothing was written, and the phase it would have carried
                            // is over — the planner announces the next one.
                            self.unannounced = None;
                            metrics::counter!("parti_rebalances_total", "reason" => reason.as_str())
                                .increment(1);
                            let mut next = vec![Input::Published {
                                version,
                                workers,
                                now: now(),
                            }];
                            if std::mem::take(&mut self.intents_owed) {
                                next.push(Input::IntentsChanged { now: now() });
                            }
                            return Ok(next);
                        }
                        Err(Error::LeadershipLost) => return Err(Error::LeadershipLost),
                        Err(e) if publishing_again_cannot_fix(&e) => {
                            self.announce_carried().await?;
                            // The planner tries again later, over the workers live then;
                            // crashes and joins are handled meanwhile.
                            tracing::warn!(error = %e, reason = reason.as_str(), "publish failed; the map stays as it was");
                            self.ctx.events.error(e);
                            return Ok(vec![Input::PublishFailed { now: now() }]);
                        }
                        Err(e) => {
                            // Retried with backoff until it succeeds or leadership is lost; the
                            // last good map stays in force meanwhile.
                            self.ctx.events.error(e);
                            self.announce_carried().await?;
                            if !self.ctx.agent.is_leader() {
                                return Err(Error::LeadershipLost);
                            }
                            tokio::select! {
                                () = self.cancel.cancelled() => return Err(Error::Shutdown),
                                () = tokio::time::sleep(delays.next_delay()) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    /// Leaves the announcement of `phase` to the publish the planner decided with it: the
    /// commit carries the phase anyway, and announcing it first would send every follower the
    /// whole `cluster` record once more just before the commit — at 1,000 workers a burst of
    /// decoding that delayed the crash publish behind it by most of a second. Announced after
    /// all if that publish fails (see [`announce_carried`](Self::announce_carried)).
    /// Returns false, leaving the announcement to the caller, while this term has not written
    /// the `cluster` record yet: its first write stamps the new term into the record at once,
    /// so that a deposed leader's commit still in flight fails its revision check early.
    pub(crate) fn carry_phase(&mut self, phase: Phase) -> bool {
        if !self.publisher.wrote_this_term() {
            return false;
        }
        self.unannounced = Some(phase);
        true
    }

    /// Announces a phase left to a publish that did not commit.
    async fn announce_carried(&mut self) -> Result<()> {
        match self.unannounced.take() {
            Some(phase) => self.announce(phase).await,
            None => Ok(()),
        }
    }

    /// Writes `phase` into the `cluster` record. A phase write is informational: four tries
    /// (50 to 400 ms apart), then it is reported and the next publish carries the phase anyway.
    async fn announce(&mut self, phase: Phase) -> Result<()> {
        let published = phase.to_cluster_phase(now(), unix_ms());
        let mut delays =
            crate::retry::doubling(Duration::from_millis(50), Duration::from_millis(400));
        let mut tries = 0;
        loop {
            let floor = self.members_at(now()).floor;
            tries += 1;
            match self.publisher.set_phase(published, floor).await {
                Ok(()) => {
                    tracing::debug!(phase = ?published, "phase announced");
                    return Ok(());
                }
                Err(Error::LeadershipLost) => return Err(Error::LeadershipLost),
                Err(e) if tries > 4 => {
                    self.ctx.events.error(e);
                    return Ok(());
                }
                Err(_) => {
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(Error::Shutdown),
                        () = tokio::time::sleep(delays.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// One attempt at publishing a map over `workers` from a fresh partition list; returns the
    /// committed version (unchanged when the publish was skipped).
    async fn publish(
        &mut self,
        workers: &[WorkerId],
        reason: &str,
        orphans_only: bool,
    ) -> Result<u64> {
        let entered = std::time::Instant::now();
        let phase = self.planner.phase();
        if !self.ctx.agent.is_leader() || self.ctx.agent.term() != Some(self.publisher.agent_term())
        {
            return Err(Error::LeadershipLost);
        }
        // A membership publish (a crash above all) does not wait for a source that just
        // failed: it places the last good list at once.
        let source_down = self
            .source_down
            .as_ref()
            .is_some_and(|d| now() < d.retry_at);
        let loaded = if source_down && reason != RebalanceReason::PartitionChange.as_str() {
            Err(Error::Source(
                "the partition source failed recently; placing the last good list".into(),
            ))
        } else {
            self.load_source().await
        };
        let fresh = match loaded {
            Ok(fresh) => fresh,
            // A refresh cannot happen without the source: report it, keep the map; the periodic
            // source check notices the change once the source answers again.
            Err(e) if reason == RebalanceReason::PartitionChange.as_str() => {
                self.ctx.events.error(e);
                self.rearm_after_skip(workers);
                return Ok(self.publisher.committed().version());
            }
            // Membership changes (a crash above all) must not wait for the source: place the
            // last good partition list over the new workers.
            Err(e) => match self.partitions.clone() {
                Some(last_good) => {
                    self.ctx.events.error(e);
                    last_good
                }
                None => return Err(e),
            },
        };
        self.read_intents().await;
        let rules = self.rules(now());
        // Without a readable commit: this term's own last map, or else the map the worker
        // values left still describe (a stickiness hint only; see `last_known_map`).
        let last_known;
        let previous = if self.publisher.committed().record.is_some() {
            &self.publisher.committed().map
        } else if !self.last_map.is_empty() {
            &self.last_map
        } else {
            last_known = self.publisher.last_known_map().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the worker values left; placing afresh");
                None
            });
            last_known.as_ref().unwrap_or(&self.last_map)
        };
        let placed = placement::place(
            &*self.ctx.strategy,
            workers,
            &fresh,
            previous,
            &self.intents,
            &rules,
            orphans_only,
        )?;
        let covered = placed.placed(&fresh);
        let map = placed.map;
        // Never publish a broken map, whatever the strategy returned.
        map.verify(workers, &covered)?;
        if reason == RebalanceReason::PartitionChange.as_str()
            && !self.placement_owed
            && let Some(gain) = reweight_gain(previous, &map, &covered)
            && gain < self.ctx.min_rebalance_threshold
        {
            // Only weights changed, and rebalancing would improve the worst load by less than
            // `minRebalanceThreshold`: keep the map as it is.
            tracing::info!(
                gain,
                threshold = self.ctx.min_rebalance_threshold,
                "re-weight below threshold; rebalance skipped"
            );
            self.partitions = Some(fresh);
            self.rearm_after_skip(workers);
            return Ok(self.publisher.committed().version());
        }
        // A paced step is checked as well; a map published as placed was checked above (once:
        // on a large map the check costs a fair part of the placement).
        let (map, paced) = self.paced_step(workers, &fresh, map, &rules, orphans_only);
        if paced {
            map.verify(workers, &covered)?;
        }
        let started = std::time::Instant::now();
        let moved = moved_partitions(&self.last_map, &map);
        let lifecycle = Lifecycle::Running;
        let meta = PublishMeta {
            phase: phase.to_cluster_phase(now(), unix_ms()),
            reason: reason.to_owned(),
            lifecycle,
            parked: placed.parked.clone(),
        };
        let members = self.members_at(now());
        let version = self.publisher.publish(&map, meta, &members).await?;
        metrics::histogram!("parti_rebalance_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("parti_partitions_moved_total").increment(moved as u64);
        metrics::gauge!("parti_assignment_version").set(version as f64);
        tracing::info!(
            version,
            reason,
            moved,
            workers = workers.len(),
            partitions = fresh.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            placed_ms = started.duration_since(entered).as_millis() as u64,
            "published assignment"
        );
        self.intents_owed = !self.intents.frozen
            && !self.step_owed
            && !placement::honoured(&map, workers, &self.intents, &rules);
        self.note_labels(workers, &fresh, &placed.parked, &rules);
        self.placed_profiles = rules.profiles;
        self.placement_owed = false;
        let before = std::mem::replace(&mut self.last_map, map);
        if let Some(history) = &self.ctx.history {
            history.record(Publish {
                before,
                after: self.last_map.clone(),
                intents: self.intents.clone(),
                version,
                term: self.publisher.agent_term(),
                at_ms: unix_ms(),
                reason: reason.to_owned(),
            });
        }
        self.lifecycle = lifecycle;
        self.partitions = Some(fresh);
        Ok(version)
    }

    /// After a partition-change publish that was skipped (the source failed, or a re-weight
    /// below the threshold): the planner cleared every pending cause with it, so an intent
    /// the committed map does not honour, or a paced step, is owed again.
    fn rearm_after_skip(&mut self, workers: &[WorkerId]) {
        let committed = &self.publisher.committed().map;
        self.intents_owed = !self.intents.frozen
            && self.paced.is_none()
            && !placement::honoured(committed, workers, &self.intents, &self.rules(now()));
        if self.paced.is_some() {
            self.step_owed = true;
        }
        if self.placement_owed {
            self.placement_rearm = true;
        }
    }

    /// With `maxMovesPerStep`, the step of `map` to publish now: towards the target being
    /// paced while the inputs are those it was computed from, otherwise towards `map`. A crash
    /// recovery (orphans only) or a frozen cluster is never paced; a paced rebalance it
    /// interrupts is taken up again by the next step. Returns the map to publish and whether
    /// it is a step (not `map` as it was given).
    fn paced_step(
        &mut self,
        workers: &[WorkerId],
        fresh: &[Partition],
        map: AssignmentMap,
        rules: &PlacementRules,
        orphans_only: bool,
    ) -> (AssignmentMap, bool) {
        let Some(limit) = self.ctx.max_moves_per_step else {
            return (map, false);
        };
        if orphans_only || self.intents.frozen {
            return (map, false);
        }
        let target = match self.paced.take() {
            Some(p)
                if p.workers == workers
                    && p.partitions == fresh
                    && p.intents == self.intents
                    && p.rules == *rules =>
            {
                p.target
            }
            _ => map,
        };
        let current = &self.publisher.committed().map;
        let allowed = placement::Allowed::new(workers, &self.intents, rules);
        let (step, more) = placement::pace(current, &target, limit.budget(fresh), &allowed);
        self.step_owed = more;
        if more {
            self.paced = Some(Paced {
                target,
                workers: workers.to_vec(),
                partitions: fresh.to_vec(),
                intents: self.intents.clone(),
                rules: rules.clone(),
            });
        }
        (step, true)
    }

    /// The next paced step, once the last one's hand-offs are complete (every moved partition
    /// held by its gainer): what the planner decides on it.
    pub(crate) fn step_due(&mut self) -> Vec<Decision> {
        if !self.step_owed {
            return Vec::new();
        }
        let committed = self.publisher.committed();
        let settled = committed
            .workers
            .values()
            .all(|(_, record)| record.pending.is_empty());
        if !settled {
            return Vec::new();
        }
        self.step_owed = false;
        self.planner.handle(Input::StepDue { now: now() })
    }

    /// The capacity and labels in force at `now`: the live workers' profiles, the configured
    /// unlabelled policy, and the labels whose grace has run out.
    fn rules(&self, now: Instant) -> PlacementRules {
        let spilled = self
            .missing_labels
            .iter()
            .filter(|(_, m)| now >= m.since + self.ctx.label_spill_grace)
            .map(|(l, _)| l.clone())
            .collect();
        PlacementRules::new()
            .with_profiles(self.members.profiles.clone())
            .with_unlabelled_policy(self.ctx.unlabelled_policy)
            .with_spilled(spilled)
    }

    /// After a publish placed with `rules`: which labels no target worker had (`parked`, or
    /// spilled), announcing the newly parked and the newly spilled.
    fn note_labels(
        &mut self,
        workers: &[WorkerId],
        partitions: &[Partition],
        parked: &BTreeMap<String, usize>,
        rules: &PlacementRules,
    ) {
        let now_at = now();
        let mut missing: BTreeMap<&str, usize> =
            parked.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        let had: BTreeSet<&str> = placement::targets(workers, &self.intents)
            .iter()
            .filter_map(|w| rules.labels_of(w))
            .flatten()
            .map(String::as_str)
            .collect();
        for l in partitions.iter().filter_map(Partition::label) {
            if rules.spilled.contains(l) && !had.contains(l) {
                *missing.entry(l).or_default() += 1;
            }
        }
        self.missing_labels
            .retain(|l, _| missing.contains_key(l.as_str()));
        for (&label, &count) in &missing {
            let entry = self
                .missing_labels
                .entry(label.to_owned())
                .or_insert_with(|| {
                    self.ctx.events.emit(Event::LabelParked {
                        label: label.to_owned(),
                        partitions: count,
                        spill_in: self.ctx.label_spill_grace,
                    });
                    MissingLabel {
                        since: now_at,
                        spill_asked: false,
                        spilled: false,
                    }
                });
            if rules.spilled.contains(label) && !entry.spilled {
                entry.spilled = true;
                self.ctx.events.emit(Event::LabelSpilled {
                    label: label.to_owned(),
                    partitions: count,
                });
            }
        }
        metrics::gauge!("parti_parked_partitions").set(parked.values().sum::<usize>() as f64);
    }

    /// When a parked label's grace runs out (one not asked for yet).
    fn spill_due(&self) -> Option<Instant> {
        self.missing_labels
            .values()
            .filter(|m| !m.spill_asked)
            .map(|m| m.since + self.ctx.label_spill_grace)
            .min()
    }

    /// A rebalance owed to the placement rules: a live worker's capacity or labels are not
    /// those the last publish was placed with, or a parked label's grace has run out. What the
    /// planner decides on it (asked once per change).
    pub(crate) fn placement_due(&mut self) -> Vec<Decision> {
        if self.last_map.is_empty() {
            return Vec::new();
        }
        let now_at = now();
        let changed = self.members.profiles.iter().any(|(w, profile)| {
            self.last_map.contains_worker(w)
                && self.placed_profiles.get(w).is_some_and(|p| p != profile)
        });
        let mut spill = false;
        for m in self.missing_labels.values_mut() {
            if !m.spill_asked && now_at >= m.since + self.ctx.label_spill_grace {
                m.spill_asked = true;
                spill = true;
            }
        }
        let rearm = std::mem::take(&mut self.placement_rearm);
        if !(changed || spill || rearm) {
            return Vec::new();
        }
        if changed {
            self.placed_profiles = self.members.profiles.clone();
        }
        self.placement_owed = true;
        self.planner.handle(Input::PlacementChanged { now: now_at })
    }

    /// Re-reads the operator's intents into [`intents`](Self::intents); a failed read or a
    /// garbled key is reported and keeps the last good ones.
    async fn read_intents(&mut self) {
        match crate::records::read_intents(&*self.ctx.assignment_bucket).await {
            Ok(read) => {
                let intents = read.map(|(i, _)| i).unwrap_or_default();
                if intents != self.intents {
                    metrics::gauge!("parti_intents_drained_workers")
                        .set(intents.drained.len() as f64);
                    metrics::gauge!("parti_intents_pinned_partitions")
                        .set(intents.pinned.len() as f64);
                    metrics::gauge!("parti_intents_frozen")
                        .set(f64::from(u8::from(intents.frozen)));
                    self.ctx.events.emit(Event::IntentsApplied {
                        intents: Arc::new(intents.clone()),
                    });
                    self.intents = intents;
                }
            }
            Err(e) => self.ctx.events.error(e),
        }
    }

    /// Reads the operator's intents at takeover; the input to feed when the inherited map
    /// does not honour them (a drain or pin written while there was no leader). With
    /// `maxMovesPerStep`, an inherited map that is not where the strategy would take it (the
    /// previous leader was gone in the middle of a paced rebalance) owes the next step.
    pub(crate) async fn intents_at_takeover(&mut self) -> Vec<Decision> {
        self.read_intents().await;
        let workers: Vec<WorkerId> = self.last_map.workers().cloned().collect();
        if self.ctx.max_moves_per_step.is_some()
            && !self.intents.frozen
            && !workers.is_empty()
            && let Some(partitions) = &self.partitions
            && let Ok(target) = placement::place(
                &*self.ctx.strategy,
                &workers,
                partitions,
                &self.last_map,
                &self.intents,
                &self.rules(now()),
                false,
            )
            && target.map.owners() != self.last_map.owners()
        {
            self.step_owed = true;
        }
        let owed = !self.intents.frozen
            && !workers.is_empty()
            && !placement::honoured(&self.last_map, &workers, &self.intents, &self.rules(now()));
        if owed {
            self.planner.handle(Input::IntentsChanged { now: now() })
        } else {
            Vec::new()
        }
    }

    /// Asks whether the operator's intents changed since they were last read: the input to
    /// feed when they did.
    pub(crate) async fn intents_changed(&mut self) -> Option<Input> {
        let before = self.intents.clone();
        self.read_intents().await;
        (self.intents != before).then(|| Input::IntentsChanged { now: now() })
    }

    /// Republishes the committed map when that lets someone hold more: a moved partition whose
    /// previous holders all released, or a worker back with a new lineage (SPEC §13). Expels
    /// the losers that keep a gainer waiting too long on the way.
    /// Returns the planner inputs a republish makes, for the caller to feed.
    pub(crate) async fn complete_handoffs(&mut self) -> Result<Vec<Input>> {
        // Called on every round of the term's loop (every heartbeat change at the least): the
        // committed records are read in place, never copied — at 100k partitions a copy per
        // round was most of the leader's work.
        let committed = self.publisher.committed();
        let Some((record, _)) = &committed.record else {
            return Ok(Vec::new());
        };
        if committed.map.is_empty() {
            return Ok(Vec::new());
        }
        let committed_version = record.version;
        // A cold start (or full restart) window ends in one publish that names every lineage:
        // republishing the old map for returning workers meanwhile would only add moves.
        // (Also while a restart waits for its first worker: no phase is announced then.)
        let cold = self.planner.lifecycle() == Lifecycle::ColdStart
            || matches!(
                self.planner.phase(),
                Phase::Scaling {
                    reason: ScalingReason::ColdStart | ScalingReason::Restart,
                    ..
                }
            );
        let ttl = self.ctx.membership_resync;
        let now_at = now();
        let settled = |w: &WorkerId| {
            self.left_gracefully.contains(w)
                || self
                    .lineage_seen
                    .get(w)
                    .is_some_and(|(_, since)| now_at >= *since + ttl)
        };
        let stale = !cold
            && handoff::lineage_stale(
                self.committed_records(),
                &record.lineages,
                &self.members,
                settled,
            );
        let newcomer = !stale
            && !cold
            && handoff::lineage_stale(
                self.committed_records(),
                &record.lineages,
                &self.members,
                |_| true,
            );
        if newcomer {
            // A newcomer under a mapped ID waits out the previous process's lease: look again
            // then.
            let due = self.lineage_seen.values().map(|(_, since)| *since).max();
            if let Some(due) = due {
                self.handoff_ready_since
                    .get_or_insert(due + ttl - HANDOFF_BATCH.min(ttl));
            }
        }
        // Losers of one publish release within moments of each other: complete their hand-offs
        // in one commit, unless some keep the others waiting for longer than `HANDOFF_BATCH`.
        // Mostly nothing is pending: the members' view is then not even built. (Expelling
        // writes only heartbeats: the committed records stay as they are.)
        let anything_pending = self.anything_pending();
        self.expel_overdue(committed_version, anything_pending)
            .await;
        let (ready, pending) = if anything_pending {
            handoff::resolvable(self.committed_records(), &self.members_at(now()))
        } else {
            (0, 0)
        };
        let batch_due = match (ready, self.handoff_ready_since) {
            (0, _) => {
                self.handoff_ready_since = None;
                false
            }
            (_, None) => {
                self.handoff_ready_since = Some(now());
                ready == pending
            }
            (_, Some(since)) => ready == pending || now() >= since + HANDOFF_BATCH,
        };
        if !stale && !batch_due {
            return Ok(Vec::new());
        }
        // At most one such commit per `HANDOFF_BATCH`: lineages that keep changing (a worker
        // whose lease keeps lapsing) must not turn into a stream of publishes.
        if let Some(last) = self.last_handoff
            && now() < last + HANDOFF_BATCH
        {
            // Looked at again once the limit allows: a `since` from before the last commit
            // would be due at once, and every round would wake to find it still too early.
            self.handoff_ready_since = Some(self.handoff_ready_since.map_or(last, |s| s.max(last)));
            return Ok(Vec::new());
        }
        tracing::debug!(stale, ready, pending, "completing hand-offs");
        self.handoff_ready_since = None;
        self.last_handoff = Some(now());
        let map = self.publisher.committed().map.clone();
        let members = self.members_at(now());
        // Tried again at the next heartbeat change or decision when it fails.
        self.republish(map, "handoff", &members).await
    }

    /// Commits `map` again, unchanged but for the pending sets and lineages `members` decide;
    /// returns the `Republished` input for the planner. A failure other than a lost leadership
    /// is reported and left for the caller's next round.
    async fn republish(
        &mut self,
        map: AssignmentMap,
        reason: &str,
        members: &Members,
    ) -> Result<Vec<Input>> {
        let meta = PublishMeta {
            phase: self.planner.phase().to_cluster_phase(now(), unix_ms()),
            reason: reason.to_owned(),
            lifecycle: self.lifecycle,
            parked: self
                .publisher
                .committed()
                .record
                .as_ref()
                .map(|(r, _)| r.parked.clone())
                .unwrap_or_default(),
        };
        match self.publisher.publish(&map, meta, members).await {
            Ok(version) => {
                tracing::debug!(version, reason, "map committed again");
                Ok(vec![Input::Republished {
                    version,
                    now: now(),
                }])
            }
            Err(Error::LeadershipLost) => Err(Error::LeadershipLost),
            Err(e) => {
                self.ctx.events.error(e);
                Ok(Vec::new())
            }
        }
    }

    /// Commits the last map again when the `cluster` record is no longer the one this leader
    /// last read or wrote (gone with its bucket, garbage): followers keep holding what the
    /// lost commit gave them, and a later leader must find a commit to build on rather than
    /// start cold. The republish builds on what is there now, so every partition waits for
    /// every live worker that might hold it (see `Publisher::publish`). Also when a committed
    /// worker value was destroyed under the leader ([`note_slot_write`](Self::note_slot_write)):
    /// the republish writes it anew. Tried again at the next source check when it fails.
    /// Stale commit pages are written first (see [`repair_pages`](Self::repair_pages)).
    /// Returns the planner inputs the republish makes, for the caller to feed.
    pub(crate) async fn repair_commit(&mut self) -> Result<Vec<Input>> {
        self.repair_pages().await;
        // In a cold start or restart window the window's own publish comes next.
        if self.last_map.is_empty() || self.planner.lifecycle() == Lifecycle::ColdStart {
            return Ok(Vec::new());
        }
        // A destroyed worker value (see `note_slot_write`) is repaired the same way: the
        // republish writes it anew.
        let damaged = self.publisher.has_damage();
        let intact = match self.publisher.commit_intact().await {
            Ok(intact) => intact,
            Err(e) => {
                tracing::debug!(error = %e, "cannot check the commit");
                return Ok(Vec::new());
            }
        };
        match (intact, damaged) {
            (true, false) => return Ok(Vec::new()),
            (false, _) => tracing::warn!(
                "the committed `cluster` record is gone or was overwritten; committing again"
            ),
            (true, true) => {
                tracing::info!("committing again to write a destroyed worker value anew")
            }
        }
        let members = self.members_at(now());
        // Tried again at the next check when it fails.
        self.republish(self.last_map.clone(), "repair", &members)
            .await
    }

    /// A write or delete of an assignment key was seen (the runner watches the whole
    /// bucket): whether it destroyed a committed worker value (see
    /// [`Publisher::slot_written`]) or changed a commit page under the leader (see
    /// [`Publisher::page_written`]); then [`repair_commit`](Self::repair_commit) writes it
    /// again.
    pub(crate) fn note_slot_write(&mut self, key: &str, revision: u64) -> bool {
        self.publisher.slot_written(key, revision) | self.publisher.page_written(key, revision)
    }

    /// Writes the commit pages that lag the commit or were changed under the leader (see
    /// [`Publisher::repair_pages`]); the ones that still fail are tried again soon after
    /// ([`pages_due`](Self::pages_due)). The first check after a takeover also finds the pages
    /// the last leader left behind (it may have stopped between a commit and its pages).
    pub(crate) async fn repair_pages(&mut self) {
        if self.publisher.has_stale_pages() {
            self.publisher.repair_pages().await;
        }
    }

    /// Whether [`repair_pages`](Self::repair_pages) is due now.
    pub(crate) fn pages_due(&self) -> bool {
        self.publisher.pages_due().is_some_and(|at| at <= now())
    }

    /// A watch of the whole assignment bucket (worker values and commit pages), for
    /// [`note_slot_write`](Self::note_slot_write); `None` when it cannot be opened now.
    pub(crate) async fn watch_slots(&self) -> Option<WatchStream> {
        self.ctx.assignment_bucket.watch(">").await.ok()
    }

    /// Whether any committed record has a partition pending (waiting for a release).
    fn anything_pending(&self) -> bool {
        self.committed_records().any(|(_, r)| !r.pending.is_empty())
    }

    /// Each committed worker's record, read in place.
    fn committed_records(&self) -> impl Iterator<Item = (&WorkerId, &WorkerRecord)> {
        self.publisher
            .committed()
            .workers
            .iter()
            .map(|(w, (_, r))| (w, r))
    }

    /// Revokes the lease of every live loser that has kept a gainer waiting for
    /// `handoffTimeout` (SPEC §13, expulsion): an expulsion marker written over its heartbeat,
    /// revision-checked against the value read, so that no renewal of that lineage can succeed
    /// after it. One heartbeat TTL later the loser holds nothing it lost up to `committed` (the
    /// latest commit, which names no later lineage of it: a later lineage would have shown in
    /// the heartbeat the write was checked against).
    /// `anything_pending`: whether any committed record has a pending partition (nobody to
    /// expel otherwise).
    async fn expel_overdue(&mut self, committed: u64, anything_pending: bool) {
        let now_at = now();
        let ttl = self.ctx.membership_resync;
        self.settle_attempts(now_at);
        let waited = if anything_pending {
            handoff::waited_on(self.committed_records(), &self.members_at(now_at))
        } else {
            BTreeMap::new()
        };
        self.waiting.retain(|w, _| waited.contains_key(w));
        self.retry_at
            .retain(|w, at| waited.contains_key(w) && *at > now_at);
        let raw = &self.members;
        self.expelled.retain(|w, list| {
            list.retain(|e| {
                now_at < e.fenced_at || raw.released.get(w).is_some_and(|r| *r < e.version)
            });
            !list.is_empty()
        });
        for (worker, version) in waited {
            let entry = self
                .waiting
                .entry(worker.clone())
                .or_insert((now_at, version));
            entry.1 = version;
            let due = self.attempt_due(&worker);
            if due.is_none_or(|at| now_at < at) {
                if compat::fence(&self.members, &worker) == Fence::Never {
                    tracing::debug!(
                        %worker,
                        version,
                        "loser cannot be fenced (capability missing): waiting for it"
                    );
                }
                continue;
            }
            let lineage = self.members.lineages.get(&worker).cloned();
            match revoke_lease(&*self.ctx.heartbeat_bucket, &worker).await {
                Ok(Some(revoked)) => {
                    tracing::warn!(
                        %worker,
                        version,
                        lapses = revoked.lapses,
                        "hand-off not released within handoffTimeout: lease revoked"
                    );
                    metrics::counter!("parti_expulsions_total").increment(1);
                    self.attempted.remove(&worker);
                    self.expelled.entry(worker).or_default().push(Expulsion {
                        version: committed,
                        fenced_at: now() + ttl,
                    });
                }
                Ok(None) => {
                    self.retry_at.insert(worker, now() + ttl / 4);
                }
                Err(e) => {
                    // The marker may have landed: a later lineage of the same process, seen
                    // next, settles it (see `settle_attempts`).
                    tracing::debug!(%worker, error = %e, "lease revocation failed");
                    if let Some(lineage) = lineage {
                        self.attempted.insert(worker.clone(), (lineage, committed));
                    }
                    self.retry_at.insert(worker, now() + ttl / 4);
                }
            }
        }
    }

    /// Revocations of uncertain outcome whose worker now shows a later lineage of the same
    /// process: that lineage lapsed (by its deadline, or by our marker), and whatever it held
    /// ends within one heartbeat TTL of now — its renewals all came before the lapse we see.
    fn settle_attempts(&mut self, now_at: Instant) {
        let ttl = self.ctx.membership_resync;
        let lineages = &self.members.lineages;
        let settled: Vec<(WorkerId, u64)> = self
            .attempted
            .iter()
            .filter_map(|(w, (aimed, version))| {
                let current = lineages.get(w)?;
                (current.instance == aimed.instance && current.lapses > aimed.lapses)
                    .then(|| (w.clone(), *version))
            })
            .collect();
        for (worker, version) in settled {
            self.attempted.remove(&worker);
            self.expelled.entry(worker).or_default().push(Expulsion {
                version,
                fenced_at: now_at + ttl,
            });
        }
    }

    /// When `worker`, waited on, is to be revoked next: `None` while an expulsion (run out
    /// or not) already covers what it is waited on for.
    fn attempt_due(&self, worker: &WorkerId) -> Option<Instant> {
        let (since, version) = self.waiting.get(worker)?;
        let covered = self
            .expelled
            .get(worker)
            .is_some_and(|list| list.iter().any(|e| e.version >= *version));
        if covered {
            return None;
        }
        let fence = compat::fence(&self.members, worker);
        let overdue = compat::revocation_due(fence, *since, self.ctx.handoff_timeout)?;
        Some(match self.retry_at.get(worker) {
            Some(retry) => overdue.max(*retry),
            None => overdue,
        })
    }

    /// The members as hand-offs see them: an expelled loser whose lease has provably run out
    /// counts as having released, whatever its heartbeat says; a mapped worker missing from the
    /// takeover snapshot may hold anything until its doubt runs out.
    fn members_at(&self, now: Instant) -> Members {
        let mut members = self.members.clone();
        members.floor = members.floor.max(self.ctx.applied_before);
        members.unproven = self
            .unproven
            .iter()
            .filter(|(w, until)| now < **until && !members.released.contains_key(*w))
            .map(|(w, _)| w.clone())
            .collect();
        for (worker, list) in &self.expelled {
            for expulsion in list.iter().filter(|e| now >= e.fenced_at) {
                members.fenced(worker, expulsion.version);
            }
        }
        members
    }

    /// When an expulsion falls due or a revoked lease runs out (never in the past: a due
    /// attempt is made before this is asked, and moves its own time on).
    fn expulsion_due(&self, now: Instant) -> Option<Instant> {
        let attempts = self.waiting.keys().filter_map(|w| self.attempt_due(w));
        let fenced = self.expelled.values().flatten().map(|e| e.fenced_at);
        attempts.chain(fenced).filter(|at| *at > now).min()
    }
}

/// The planner inputs for the standings that changed from `before` to `after`: a live worker
/// now refused leaves the planner's live set, a live worker no longer refused joins it.
fn refusal_inputs(before: &Members, after: &Members, now: Instant) -> Vec<Input> {
    let refused = |m: &Members, w: &WorkerId| matches!(m.standing(w), Standing::Refused(_));
    after
        .released
        .keys()
        .filter_map(
            |worker| match (refused(before, worker), refused(after, worker)) {
                (false, true) => Some(Input::Left {
                    worker: worker.clone(),
                    now,
                }),
                (true, false) => Some(Input::Joined {
                    worker: worker.clone(),
                    now,
                }),
                _ => None,
            },
        )
        .collect()
}

/// Makes every standing that changed from `before` to `after` visible: a warning and an
/// [`Event`] for a worker refused or one relied on only partly.
fn announce_standings(events: &EventSink, before: &Members, after: &Members) {
    for (worker, standing) in &after.standing {
        if before.standing(worker) == *standing {
            continue;
        }
        match *standing {
            Standing::Refused(refusal) => {
                tracing::warn!(%worker, %refusal, "worker kept out of the map");
                events.emit(Event::WorkerRefused {
                    worker: worker.clone(),
                    refusal,
                });
            }
            Standing::Trusted { .. } => {
                let missing = standing.missing();
                let names: Vec<&str> = missing.iter().map(|c| c.as_str()).collect();
                tracing::warn!(
                    %worker,
                    missing = %names.join(","),
                    "worker lacks capabilities: hand-offs from it take the fallback path"
                );
                events.emit(Event::CapabilityFallback {
                    worker: worker.clone(),
                    missing,
                });
            }
        }
    }
}

/// Writes the expulsion marker over `worker`'s heartbeat, checked against the revision read
/// (also over a marker already there: a stale read must not count as a revocation). Returns
/// the lineage revoked; `None` when there is no live heartbeat to revoke (the membership
/// watcher deals with it).
async fn revoke_lease(bucket: &dyn Bucket, worker: &WorkerId) -> Result<Option<Lineage>> {
    let key = worker.as_str();
    let Some(entry) = bucket.get(key).await? else {
        return Ok(None);
    };
    let Ok(value) = crate::store::codec::decode::<HeartbeatValue>(bucket.name(), key, &entry.value)
    else {
        return Ok(None);
    };
    let marker = crate::store::codec::encode(&value.expel())?;
    bucket.update(key, marker, entry.revision).await?;
    Ok(Some(Lineage {
        instance: value.instance,
        lapses: value.lapses,
    }))
}

/// For a change that only re-weights partitions (same keys, same workers): how much the
/// proposed map lowers the worst worker's load relative to the mean, compared with keeping the
/// current placement under the new weights. `None` when keys or workers changed.
fn reweight_gain(
    current: &AssignmentMap,
    proposed: &AssignmentMap,
    fresh: &[Partition],
) -> Option<f64> {
    // Keys and labels: a relabelled partition may have to move whatever the weights say.
    let current_keys: BTreeSet<(&[String], Option<&str>)> = current
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(|p| (p.keys(), p.label())))
        .collect();
    let fresh_keys: BTreeSet<(&[String], Option<&str>)> =
        fresh.iter().map(|p| (p.keys(), p.label())).collect();
    if current_keys != fresh_keys || !current.workers().eq(proposed.workers()) || current.is_empty()
    {
        return None;
    }
    let weight: BTreeMap<&[String], u64> = fresh
        .iter()
        .map(|p| (p.keys(), p.effective_weight()))
        .collect();
    let total: u64 = weight.values().sum();
    let mean = total as f64 / current.len() as f64;
    if mean == 0.0 {
        return None;
    }
    let worst = |map: &AssignmentMap| {
        map.iter()
            .map(|(_, ps)| {
                ps.iter()
                    .map(|p| weight.get(p.keys()).copied().unwrap_or(0))
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0) as f64
            / mean
    };
    Some(worst(current) - worst(proposed))
}

/// Partitions whose owner differs between two maps (new partitions count, removed do not).
pub(crate) fn moved_partitions(before: &AssignmentMap, after: &AssignmentMap) -> usize {
    let owners = before.owners();
    after
        .iter()
        .map(|(worker, parts)| {
            parts
                .iter()
                .filter(|p| owners.get(p.keys()).is_some_and(|w| *w != worker))
                .count()
        })
        .sum()
}

/// Whether a publish failed in a way that publishing the same workers again cannot fix: a
/// worker's value too large for the store, the strategy refusing the input, a partition it
/// cannot place. (A store that is down or slow, a lost race: retried.)
fn publishing_again_cannot_fix(e: &Error) -> bool {
    matches!(
        e,
        Error::Store(crate::StoreError::ValueTooLarge { .. })
            | Error::Strategy(_)
            | Error::InvalidPartition { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::protocol::Refusal;

    fn members(refused: &[&str], live: &[&str]) -> Members {
        let refusal = Refusal::ProtocolTooNew {
            protocol: 9,
            max: 1,
        };
        Members {
            released: live.iter().map(|w| (WorkerId::new(*w), 0)).collect(),
            standing: refused
                .iter()
                .map(|w| (WorkerId::new(*w), Standing::Refused(refusal)))
                .collect(),
            ..Members::default()
        }
    }

    #[test]
    fn a_worker_refused_leaves_the_planner_and_one_understood_again_joins_it() {
        let t = now();
        let before = members(&["a"], &["a", "b", "c"]);
        let after = members(&["b"], &["a", "b", "c"]);
        let inputs = refusal_inputs(&before, &after, t);
        assert_eq!(
            inputs,
            [
                Input::Joined {
                    worker: WorkerId::new("a"),
                    now: t
                },
                Input::Left {
                    worker: WorkerId::new("b"),
                    now: t
                },
            ]
        );
        assert!(refusal_inputs(&after, &after, t).is_empty());
        // A refused worker that departed is the membership watcher's business.
        let gone = members(&[], &["a", "c"]);
        assert!(refusal_inputs(&after, &gone, t).is_empty());
    }
}
