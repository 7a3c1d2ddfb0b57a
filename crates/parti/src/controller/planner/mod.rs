//! The leader's decision logic (SPEC §6) as a pure state machine.
//!
//! The [`Planner`] is fed [`Input`]s (membership events, partition changes, publish results,
//! timer ticks), each carrying the current time, and answers with [`Decision`]s for the runner
//! to carry out. It never touches NATS, tasks or a clock, so every interleaving is tested
//! synchronously with explicit times.
//!
//! Choices where SPEC §6 leaves room:
//! - **One publish at a time.** After a [`Decision::Publish`] nothing else is published until
//!   [`Input::Published`] arrives; whatever fell due meanwhile is decided then, with the
//!   deadlines it had (a window never closes twice, a cooldown is never skipped).
//! - **Emergency pre-empts a window, which stays open.** A declared crash publishes at once over
//!   the surviving workers of the current map (joiners of the open window excluded, unless no
//!   one else survives); the window still closes at its deadline and balances its joins then.
//!   Emergencies come first when several things are due.
//! - **Folding.** An emergency also declares every other crash suspect still inside its grace
//!   period (one publish instead of a series), and any publish that leaves a suspect out of the
//!   map settles that suspect. A worker that returns before its crash is published keeps its
//!   partitions and clears its timer.
//! - **A cold-start window stretches while joins keep arriving.** SPEC §6 waits
//!   `cold_start_window` from the first join; a fleet whose starts spread over longer would get
//!   its first map without the late starters and then one planned window after another. So a
//!   join less than `cold_start_quiet` before the deadline of a cold-start (or full-restart)
//!   window pushes that deadline back by `cold_start_quiet`, never beyond
//!   `cold_start_max_window` after the window opened. `cold_start_window` stays the minimum, the
//!   window closes at least `cold_start_quiet` after its last join (unless the maximum comes
//!   first), and a window already due is not stretched. The deadline moves in whole quiet
//!   periods rather than to `now + cold_start_quiet` at every join, so the announced phase
//!   changes at most once per quiet period, not once per join. Planned-scale windows never
//!   stretch, and a restart window brought forward (see below) stays so. Crashes are not
//!   delayed: during a cold start no one holds partitions (an expiry just drops the worker, and
//!   does not stretch the window), and once a map exists emergencies pre-empt every window.
//! - **Partition changes** wait for an open window (its publish includes them) and otherwise for
//!   `min_rebalance_interval` after the last publish; an emergency publish does not count as
//!   done for them (it moves only orphans), so they still follow it.
//! - **Leader change.** Live workers missing from the inherited map open a planned-scale window
//!   (reason [`RebalanceReason::LeaderChange`]); map workers that are not live become crash
//!   suspects with a grace period starting now.
//! - **No one live.** No map is ever published over zero workers: a planned window or crash
//!   that falls due then waits for the next join, and a cold start waits for its first join
//!   (announcing no phase until then; rare, since the runner counts the leader itself as live).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::assignment::Lifecycle;
use crate::partition::WorkerId;
use crate::state::ScalingReason;

pub(crate) mod orphans;
mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use types::{ClusterView, CrashHold, Decision, Input, Phase, PlannerConfig, RebalanceReason};

/// The leader's pure state machine: inputs in, decisions out (see the module docs; the
/// whole loop is exercised in `tests/` and `proptests`).
#[derive(Debug, Clone)]
pub struct Planner {
    cfg: PlannerConfig,
    lifecycle: Lifecycle,
    version: u64,
    /// Workers whose heartbeat is present.
    live: BTreeSet<WorkerId>,
    /// Workers of the last confirmed map.
    published: BTreeSet<WorkerId>,
    in_flight: Option<InFlight>,
    /// A publish that failed for good ([`Input::PublishFailed`]): its reason, and when to try
    /// again with the workers live then.
    failed: Option<(RebalanceReason, Instant)>,
    window: Option<Window>,
    /// A cold start (or restart) that waits for its first worker to open the window.
    awaiting_first: Option<ScalingReason>,
    /// Map workers whose heartbeat expired, with when that was noticed (their grace period
    /// runs from then).
    suspects: BTreeMap<WorkerId, Instant>,
    /// The workers of the map a restart window inherited, and when it opened. A leader that
    /// took over right after a store outage saw heartbeats expired, not processes gone: once
    /// enough of them are back that it is no full restart after all, the window is no longer
    /// than a planned one, and once all are back it ends.
    restart_of: Option<(BTreeSet<WorkerId>, Instant)>,
    /// Crash declarations held back around the leader's own degraded spell (SPEC §7).
    hold: Option<CrashHold>,
    partitions_dirty: bool,
    /// The operator's intents changed (or a publish could not honour them): like a partition
    /// change, published with reason `operator` unless the list changed too.
    intents_dirty: bool,
    /// A paced rebalance has another step ready: published with reason `paced` unless
    /// something else is pending too.
    step_dirty: bool,
    /// A worker's capacity or labels changed, or a parked label's grace ran out: published
    /// with reason `placement` unless the list or the intents changed too.
    placement_dirty: bool,
    last_publish: Option<Instant>,
    /// The last announced phase.
    phase: Phase,
}

#[derive(Debug, Clone)]
struct InFlight {
    workers: BTreeSet<WorkerId>,
    emergency: bool,
    reason: RebalanceReason,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    reason: ScalingReason,
    deadline: Instant,
    /// The latest the deadline may be pushed to by joins (the deadline itself for a planned
    /// window, which never stretches).
    limit: Instant,
    /// Opened by a new leader finding live workers missing from the map.
    leader_change: bool,
}

impl Planner {
    /// A planner for a cluster in cold start; feed it [`Input::BecameLeader`] first.
    pub fn new(cfg: PlannerConfig) -> Self {
        Self {
            cfg,
            lifecycle: Lifecycle::ColdStart,
            version: 0,
            live: BTreeSet::new(),
            published: BTreeSet::new(),
            in_flight: None,
            failed: None,
            window: None,
            awaiting_first: Some(ScalingReason::ColdStart),
            suspects: BTreeMap::new(),
            restart_of: None,
            hold: None,
            partitions_dirty: false,
            intents_dirty: false,
            step_dirty: false,
            placement_dirty: false,
            last_publish: None,
            phase: Phase::Stable,
        }
    }

    /// Applies one input and returns what to do, in order: at most one
    /// [`Decision::SetPhase`], then at most one [`Decision::Publish`].
    pub fn handle(&mut self, input: Input) -> Vec<Decision> {
        let now = input.now();
        let mut announce = false;
        match input {
            Input::BecameLeader { cluster, live, now } => {
                self.become_leader(cluster, live, now);
                announce = true;
            }
            Input::Joined { worker, now } => self.on_join(worker, now),
            Input::Left { worker, now } => self.on_leave(worker, now),
            Input::Expired { worker, now } => self.on_expire(worker, now),
            Input::PartitionsChanged { .. } => self.partitions_dirty = true,
            Input::IntentsChanged { .. } => self.intents_dirty = true,
            Input::StepDue { .. } => self.step_dirty = true,
            Input::PlacementChanged { .. } => self.placement_dirty = true,
            Input::Published {
                version,
                workers,
                now,
            } => self.on_published(version, workers, now),
            Input::PublishFailed { now } => self.on_publish_failed(now),
            Input::Republished { version, now } => {
                self.version = self.version.max(version);
                self.last_publish = Some(now);
            }
            Input::HoldCrashes { hold, .. } => {
                self.hold = Some(hold);
            }
            Input::Tick { .. } => {}
        }
        let publish = self.step(now);
        let mut out = Vec::with_capacity(2);
        if self.awaiting_first.is_none() {
            let phase = self.current_phase();
            if announce || phase != self.phase {
                self.phase = phase;
                out.push(Decision::SetPhase(phase));
            }
        }
        out.extend(publish);
        out
    }

    /// When to feed the next [`Input::Tick`]: the earliest pending deadline, or `None` when
    /// nothing is scheduled (or a publish is outstanding). Never earlier than the time of the
    /// last input.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        // With no one live nothing can be published: a due planned window or crash waits for
        // the next join. An empty cold start is re-armed at its deadline.
        let nobody = self.live.is_empty();
        let window = self
            .window
            .filter(|w| !nobody || w.reason != ScalingReason::PlannedScale)
            .map(|w| w.deadline);
        let crashes = (!nobody)
            .then(|| {
                let alone = self.early_alone();
                self.suspects
                    .values()
                    .map(|&d| self.fire_time(d, alone))
                    .min()
            })
            .flatten();
        let retry = self
            .failed
            .filter(|_| !nobody && self.window.is_none())
            .map(|(_, at)| at);
        [window, crashes, retry, self.partition_change_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The last announced phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// `ColdStart` until the first map of this cluster (or of a full restart) is published.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    /// The last published version this planner knows of (inherited or confirmed).
    #[cfg(test)]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The live workers, sorted.
    #[cfg(test)]
    pub fn live(&self) -> impl ExactSizeIterator<Item = &WorkerId> {
        self.live.iter()
    }

    fn become_leader(&mut self, cluster: Option<ClusterView>, live: Vec<WorkerId>, now: Instant) {
        *self = Self::new(self.cfg.clone());
        self.live = live.into_iter().collect();
        let Some(view) = cluster else {
            return self.arm_cold_start(ScalingReason::ColdStart, now);
        };
        self.version = view.version;
        let map: BTreeSet<WorkerId> = view.workers.into_iter().collect();
        if view.lifecycle == Lifecycle::ColdStart {
            return self.arm_cold_start(ScalingReason::ColdStart, now);
        }
        if self.is_full_restart(map.len()) {
            self.restart_of = Some((map, now));
            self.arm_cold_start(ScalingReason::Restart, now);
            return self.shorten_restart(now);
        }
        self.lifecycle = Lifecycle::Running;
        self.awaiting_first = None;
        self.suspects = map
            .difference(&self.live)
            .map(|w| (w.clone(), now))
            .collect();
        if !self.live.is_subset(&map) {
            self.open_planned(now, true);
        }
        self.published = map;
    }

    fn is_full_restart(&self, published: usize) -> bool {
        published >= self.cfg.restart_min_workers
            && (self.live.len() as f64) < self.cfg.restart_detection_ratio * published as f64
    }

    fn arm_cold_start(&mut self, reason: ScalingReason, now: Instant) {
        self.lifecycle = Lifecycle::ColdStart;
        self.awaiting_first = Some(reason);
        if !self.live.is_empty() {
            self.open_cold_start(now);
        }
    }

    fn open_cold_start(&mut self, now: Instant) {
        if let Some(reason) = self.awaiting_first.take() {
            let window = self.cfg.cold_start_window;
            self.window = Some(Window {
                reason,
                deadline: after(now, window),
                limit: after(now, window.max(self.cfg.cold_start_max_window)),
                leader_change: false,
            });
        }
    }

    fn open_planned(&mut self, now: Instant, leader_change: bool) {
        if self.window.is_none() {
            let deadline = after(now, self.cfg.planned_scale_window);
            self.window = Some(Window {
                reason: ScalingReason::PlannedScale,
                deadline,
                limit: deadline,
                leader_change,
            });
        }
    }

    /// A join less than `cold_start_quiet` before the deadline of an open cold-start (or
    /// restart) window pushes the deadline back by `cold_start_quiet`, up to the window's limit.
    fn stretch_cold_start(&mut self, now: Instant) {
        let quiet = self.cfg.cold_start_quiet;
        if let Some(window) = self.window.as_mut()
            && window.reason != ScalingReason::PlannedScale
            && now < window.deadline
            && window.deadline < after(now, quiet)
        {
            window.deadline = after(window.deadline, quiet)
                .min(window.limit)
                .max(window.deadline);
        }
    }

    fn on_join(&mut self, worker: WorkerId, now: Instant) {
        // Hysteresis: a worker that comes back is no longer suspected.
        self.suspects.remove(&worker);
        if !self.live.insert(worker.clone()) {
            return;
        }
        if self.awaiting_first.is_some() {
            self.open_cold_start(now);
            return self.shorten_restart(now);
        }
        self.stretch_cold_start(now);
        if self
            .window
            .is_some_and(|w| w.reason == ScalingReason::Restart)
        {
            return self.shorten_restart(now);
        }
        // Inside a window the join is batched; a map worker still holds its partitions.
        if self.window.is_none() && !self.in_map(&worker) {
            self.open_planned(now, false);
        }
    }

    /// Brings a restart window's deadline forward: to the end of a planned window from its
    /// opening once the live workers are too many for a full restart, to `now` once every
    /// worker of the inherited map is live again. A window brought forward no longer stretches.
    fn shorten_restart(&mut self, now: Instant) {
        let Some((map, since)) = &self.restart_of else {
            return;
        };
        let deadline = if map.is_subset(&self.live) {
            now
        } else if !self.is_full_restart(map.len()) {
            after(*since, self.cfg.planned_scale_window)
        } else {
            return;
        };
        if let Some(window) = self.window.as_mut()
            && window.reason == ScalingReason::Restart
        {
            window.deadline = window.deadline.min(deadline).max(now);
            // Brought forward for good: later joins no longer stretch it.
            window.limit = window.deadline;
        }
    }

    fn on_leave(&mut self, worker: WorkerId, now: Instant) {
        let was_live = self.live.remove(&worker);
        let was_suspect = self.suspects.remove(&worker).is_some();
        let batched = self.window.is_some() || self.awaiting_first.is_some();
        if (was_live || was_suspect) && !batched && self.in_map(&worker) {
            self.open_planned(now, false);
        }
    }

    fn on_expire(&mut self, worker: WorkerId, now: Instant) {
        if self.live.remove(&worker) && self.in_map(&worker) {
            self.suspects.entry(worker).or_insert(now);
        }
    }

    fn on_publish_failed(&mut self, now: Instant) {
        let Some(failed) = self.in_flight.take() else {
            return;
        };
        // Partition changes, paced steps and placement changes wait their cooldown from this
        // attempt, not from the last publish that succeeded: no tight loop of failing publishes.
        self.last_publish = Some(now);
        if self.lifecycle == Lifecycle::ColdStart {
            // A cold start (or restart) that could not publish is a cold start still: a short
            // window of the same kind, which joins extend as they extend any cold start, then
            // its publish over the workers live then.
            let reason = if failed.reason == RebalanceReason::Restart {
                ScalingReason::Restart
            } else {
                ScalingReason::ColdStart
            };
            if self.window.is_none() {
                self.window = Some(Window {
                    reason,
                    deadline: after(now, PUBLISH_RETRY),
                    limit: after(now, PUBLISH_RETRY.max(self.cfg.cold_start_max_window)),
                    leader_change: false,
                });
            }
            return;
        }
        self.failed = Some((failed.reason, after(now, PUBLISH_RETRY)));
    }

    /// The publish that failed for good, again, once its pause is over, over the workers live
    /// now.
    fn retry_failed(&mut self, now: Instant) -> Option<Decision> {
        let (reason, at) = self.failed?;
        // An open window publishes over the workers live when it closes.
        if now < at || self.live.is_empty() || self.window.is_some() {
            return None;
        }
        self.failed = None;
        let workers = self.live.iter().cloned().collect();
        Some(self.publish(workers, reason))
    }

    fn on_published(&mut self, version: u64, workers: Vec<WorkerId>, now: Instant) {
        // Only a publish of a map the planner asked for settles a failed one: an emergency
        // places only the orphans (a republish, hand-offs or repair, is `Republished`).
        if self.in_flight.take().is_some_and(|f| !f.emergency) {
            self.failed = None;
        }
        self.published = workers.into_iter().collect();
        self.version = version;
        self.lifecycle = Lifecycle::Running;
        self.awaiting_first = None;
        self.last_publish = Some(now);
    }

    /// Decides whatever is due at `now`; returns the publish, if any.
    fn step(&mut self, now: Instant) -> Option<Decision> {
        self.prune();
        if self.in_flight.is_some() {
            return None;
        }
        let decision = self
            .emergency(now)
            .or_else(|| self.close_window(now))
            .or_else(|| self.retry_failed(now))
            .or_else(|| self.partition_change(now));
        self.prune();
        decision
    }

    /// Forgets suspects that no longer hold partitions in the map.
    ///
    /// While a publish is in flight, a suspect the published map still gives partitions to is
    /// kept: the publish may fail ([`Input::PublishFailed`]), and the published map is then the
    /// one in force again, with the suspect's grace still counted from when it was noticed.
    fn prune(&mut self) {
        let Self { live, suspects, .. } = self;
        let map = map_in_force(&self.in_flight, self.lifecycle, &self.published);
        let published = (self.in_flight.is_some() && self.lifecycle == Lifecycle::Running)
            .then_some(&self.published);
        suspects.retain(|w, _| {
            !live.contains(w)
                && (map.is_some_and(|m| m.contains(w)) || published.is_some_and(|p| p.contains(w)))
        });
    }

    fn emergency(&mut self, now: Instant) -> Option<Decision> {
        let alone = self.early_alone();
        if !self
            .suspects
            .values()
            .any(|&d| self.fire_time(d, alone) <= now)
        {
            return None;
        }
        let survivors: Vec<WorkerId> = self.live.intersection(&self.published).cloned().collect();
        let workers = if survivors.is_empty() {
            self.live.iter().cloned().collect()
        } else {
            survivors
        };
        if workers.is_empty() {
            return None; // No one to take the orphans: wait for a join.
        }
        self.suspects.clear(); // The others still in grace are folded into this emergency.
        Some(self.publish(workers, RebalanceReason::Emergency))
    }

    fn close_window(&mut self, now: Instant) -> Option<Decision> {
        let window = self.window.filter(|w| w.deadline <= now)?;
        if self.live.is_empty() {
            if window.reason != ScalingReason::PlannedScale {
                self.window = None;
                self.awaiting_first = Some(window.reason);
            }
            return None;
        }
        self.window = None;
        let reason = match window.reason {
            ScalingReason::ColdStart => RebalanceReason::ColdStart,
            ScalingReason::Restart => RebalanceReason::Restart,
            ScalingReason::PlannedScale => {
                let joined = !self.live.is_subset(&self.published);
                let left = !self.published.is_subset(&self.live);
                match (joined, left) {
                    (false, false) => return None, // Rolling update: nothing moves.
                    _ if window.leader_change => RebalanceReason::LeaderChange,
                    (true, false) => RebalanceReason::ScaleUp,
                    (false, true) => RebalanceReason::ScaleDown,
                    (true, true) => RebalanceReason::PlannedScale,
                }
            }
        };
        Some(self.publish(self.live.iter().cloned().collect(), reason))
    }

    fn partition_change(&mut self, now: Instant) -> Option<Decision> {
        // A new leader does not know when the last publish was: no cooldown then.
        let due =
            self.partition_change_pending() && self.partition_change_due().is_none_or(|t| t <= now);
        let reason = if self.partitions_dirty {
            RebalanceReason::PartitionChange
        } else if self.intents_dirty {
            RebalanceReason::Operator
        } else if self.placement_dirty {
            RebalanceReason::Placement
        } else {
            RebalanceReason::Paced
        };
        due.then(|| self.publish(self.live.iter().cloned().collect(), reason))
    }

    /// A partition change waits, and nothing else (a window, an outstanding publish, the cold
    /// start) will include it.
    fn partition_change_pending(&self) -> bool {
        (self.partitions_dirty || self.intents_dirty || self.step_dirty || self.placement_dirty)
            && self.in_flight.is_none()
            && self.window.is_none()
            && self.awaiting_first.is_none()
            && self.lifecycle == Lifecycle::Running
            && !self.live.is_empty()
    }

    /// The end of the cooldown for a pending partition change.
    fn partition_change_due(&self) -> Option<Instant> {
        let last = self
            .last_publish
            .filter(|_| self.partition_change_pending())?;
        Some(after(last, self.cfg.min_rebalance_interval))
    }

    fn publish(&mut self, workers: Vec<WorkerId>, reason: RebalanceReason) -> Decision {
        let orphans_only = reason == RebalanceReason::Emergency;
        if !orphans_only {
            self.partitions_dirty = false;
            self.intents_dirty = false;
            self.step_dirty = false;
            self.placement_dirty = false;
        }
        self.in_flight = Some(InFlight {
            workers: workers.iter().cloned().collect(),
            emergency: orphans_only,
            reason,
        });
        Decision::Publish {
            workers,
            reason,
            orphans_only,
        }
    }

    fn in_map(&self, worker: &WorkerId) -> bool {
        map_in_force(&self.in_flight, self.lifecycle, &self.published)
            .is_some_and(|m| m.contains(worker))
    }

    /// When a crash noticed at `noticed` is declared: after the grace period, and not while
    /// the leader is (or has just been) blind. An expiry noticed before the leader went blind
    /// is not explained by its outage: once it has recovered, that crash is declared without
    /// waiting for the recovery grace — unless a worker whose expiry *was* noticed during or
    /// after the spell would be folded into the same emergency (an emergency drops every
    /// absent worker from the map), which is the mass eviction the grace is there to prevent.
    fn fire_time(&self, noticed: Instant, early_alone: bool) -> Instant {
        let grace_end = after(noticed, self.cfg.emergency_grace_period);
        let Some(hold) = self.hold else {
            return grace_end;
        };
        let held_until = match hold.recovered_at {
            Some(recovered) if noticed < hold.blind_since && early_alone => recovered,
            _ => hold.until,
        };
        grace_end.max(held_until)
    }

    /// Whether every suspect was noticed before the leader went blind (see
    /// [`fire_time`](Self::fire_time)); computed once per question, not once per suspect.
    fn early_alone(&self) -> bool {
        self.hold.is_none_or(|hold| {
            self.suspects
                .values()
                .all(|&noticed| noticed < hold.blind_since)
        })
    }

    fn current_phase(&self) -> Phase {
        match (&self.in_flight, self.window) {
            (Some(f), _) if f.emergency => Phase::Emergency,
            (Some(_), _) => Phase::Rebalancing,
            (None, Some(w)) => Phase::Scaling {
                reason: w.reason,
                until: w.deadline,
            },
            // A failed publish is still owed: the phase stays what it was while it is retried.
            (None, None) => match self.failed {
                Some((RebalanceReason::Emergency, _)) => Phase::Emergency,
                Some(_) => Phase::Rebalancing,
                None => Phase::Stable,
            },
        }
    }
}

/// The workers of the map in force for crash handling: the one being published, else the
/// confirmed one (none during a cold start, when an old map's workers are owed nothing).
fn map_in_force<'a>(
    in_flight: &'a Option<InFlight>,
    lifecycle: Lifecycle,
    published: &'a BTreeSet<WorkerId>,
) -> Option<&'a BTreeSet<WorkerId>> {
    match (in_flight, lifecycle) {
        (Some(f), _) => Some(&f.workers),
        (None, Lifecycle::Running) => Some(published),
        (None, Lifecycle::ColdStart) => None,
    }
}

/// The pause before a publish that failed for good is tried again.
const PUBLISH_RETRY: Duration = Duration::from_secs(1);

/// `t + d`, saturating far in the future instead of overflowing on absurd durations.
fn after(t: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d)
        .or_else(|| t.checked_add(CENTURY))
        .unwrap_or(t)
}
