//! The planner's inputs, outputs and settings.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::assignment::Lifecycle;
use crate::partition::WorkerId;
use crate::state::{ClusterPhase, ScalingReason};

/// The timings and thresholds the planner works with (a plain subset of the configuration).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PlannerConfig {
    /// How long a cold start (or full restart) batches joins, from the first join seen: the
    /// shortest such window.
    pub cold_start_window: Duration,
    /// A join less than this before the end of a cold-start (or full-restart) window pushes the
    /// end back by this much, up to `cold_start_max_window` (zero: windows never stretch).
    pub cold_start_quiet: Duration,
    /// The longest a cold-start (or full-restart) window may stretch to, from its opening
    /// (a value below `cold_start_window` counts as `cold_start_window`).
    pub cold_start_max_window: Duration,
    /// How long a planned scale batches joins and graceful leaves, from the first change.
    pub planned_scale_window: Duration,
    /// How long a crashed worker (expired heartbeat) may take to come back before its
    /// partitions are reassigned.
    pub emergency_grace_period: Duration,
    /// A cluster record with at least `restart_min_workers` workers of which fewer than this
    /// fraction are live is a full restart.
    pub restart_detection_ratio: f64,
    /// The smallest published cluster for which a full restart is detected.
    pub restart_min_workers: usize,
    /// The cooldown between a publish and a partition-change rebalance.
    pub min_rebalance_interval: Duration,
}

impl Default for PlannerConfig {
    /// The SPEC §3 defaults (heartbeat interval 2 s, so a 3 s grace period; startup timeout
    /// 60 s, so a cold-start window stretches to at most 45 s).
    fn default() -> Self {
        Self {
            cold_start_window: Duration::from_secs(30),
            cold_start_quiet: Duration::from_secs(5),
            cold_start_max_window: Duration::from_secs(45),
            planned_scale_window: Duration::from_secs(10),
            emergency_grace_period: Duration::from_secs(3),
            restart_detection_ratio: 0.5,
            restart_min_workers: 10,
            min_rebalance_interval: Duration::from_secs(10),
        }
    }
}

/// What the `cluster` record said when this worker became leader.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClusterView {
    /// The last published version.
    pub version: u64,
    /// The published lifecycle.
    pub lifecycle: Lifecycle,
    /// The workers of the published map.
    pub workers: Vec<WorkerId>,
}

/// Something that happened, fed to [`Planner::handle`](super::Planner::handle).
///
/// Every input carries the current time; the planner never reads a clock. Times must not go
/// backwards between inputs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// This worker won the election. Resets the planner.
    BecameLeader {
        /// The `cluster` record, if there is one.
        cluster: Option<ClusterView>,
        /// The workers whose heartbeat is present now (this worker included).
        live: Vec<WorkerId>,
        /// The current time.
        now: Instant,
    },
    /// A worker's heartbeat appeared.
    Joined {
        /// The worker.
        worker: WorkerId,
        /// The current time.
        now: Instant,
    },
    /// A worker deleted its heartbeat: a graceful leave.
    ///
    /// Also valid for a worker that is not live: the runner may learn after
    /// [`BecameLeader`](Self::BecameLeader) that an absent worker's key was deleted rather than
    /// expired, which turns that crash suspect into a graceful leave.
    Left {
        /// The worker.
        worker: WorkerId,
        /// The current time.
        now: Instant,
    },
    /// A worker's heartbeat expired: a crash, declared after the grace period.
    Expired {
        /// The worker.
        worker: WorkerId,
        /// The current time.
        now: Instant,
    },
    /// The partition list changed (refresh request or source change). Several coalesce.
    PartitionsChanged {
        /// The current time.
        now: Instant,
    },
    /// The operator's intents (drain, pin, freeze) changed, or the last publish could not
    /// honour them. Handled like [`PartitionsChanged`](Self::PartitionsChanged), with reason
    /// [`RebalanceReason::Operator`].
    IntentsChanged {
        /// The current time.
        now: Instant,
    },
    /// A paced rebalance (`maxMovesPerStep`) has more steps and the last one's hand-offs are
    /// complete. Handled like [`PartitionsChanged`](Self::PartitionsChanged), with reason
    /// [`RebalanceReason::Paced`] unless something else is pending too.
    StepDue {
        /// The current time.
        now: Instant,
    },
    /// A live worker's capacity or labels changed, or the partitions of a label no worker has
    /// have been parked for `labelSpillGrace`. Handled like
    /// [`PartitionsChanged`](Self::PartitionsChanged), with reason
    /// [`RebalanceReason::Placement`] unless something else is pending too.
    PlacementChanged {
        /// The current time.
        now: Instant,
    },
    /// The runner's publish of the last [`Decision::Publish`] failed in a way that publishing
    /// the same workers again cannot fix (a worker's value too large for the store, a strategy
    /// error). The planner tries again with the workers live then, after a pause (a join that
    /// shrinks every share may be what fixes it); meanwhile it handles crashes and joins.
    PublishFailed {
        /// The current time.
        now: Instant,
    },
    /// The runner's publish of the last [`Decision::Publish`] succeeded.
    Published {
        /// The version written.
        version: u64,
        /// The workers of the published map.
        workers: Vec<WorkerId>,
        /// The current time.
        now: Instant,
    },
    /// The runner committed the map in force again, unchanged but for its pending sets and
    /// lineages (hand-offs completed, a lost commit repaired): not a [`Decision::Publish`], so
    /// a publish decided meanwhile stays outstanding, and the lifecycle stays as it is (a
    /// republish inside a full-restart window does not end the restart). The version moves on,
    /// and the cooldown before a partition change counts from it as from any commit.
    Republished {
        /// The version written.
        version: u64,
        /// The current time.
        now: Instant,
    },
    /// Hold crash declarations back around the leader's own degraded spell (SPEC §7);
    /// replaces any earlier hold. See [`CrashHold`].
    HoldCrashes {
        /// What is held back, and until when.
        hold: CrashHold,
        /// The current time.
        now: Instant,
    },
    /// A timer fired (the runner sleeps until [`Planner::next_wakeup`](super::Planner::next_wakeup)).
    Tick {
        /// The current time.
        now: Instant,
    },
}

impl Input {
    /// The time the input carries.
    pub fn now(&self) -> Instant {
        match self {
            Input::BecameLeader { now, .. }
            | Input::Joined { now, .. }
            | Input::Left { now, .. }
            | Input::Expired { now, .. }
            | Input::PartitionsChanged { now }
            | Input::IntentsChanged { now }
            | Input::StepDue { now }
            | Input::PlacementChanged { now }
            | Input::Published { now, .. }
            | Input::PublishFailed { now }
            | Input::Republished { now, .. }
            | Input::HoldCrashes { now, .. }
            | Input::Tick { now } => *now,
        }
    }

    /// The same input, happening at `now` instead: the runner feeds the result of a publish
    /// after the news that queued while it was awaited, and times must not go backwards.
    pub fn at(mut self, now: Instant) -> Self {
        match &mut self {
            Input::BecameLeader { now: at, .. }
            | Input::Joined { now: at, .. }
            | Input::Left { now: at, .. }
            | Input::Expired { now: at, .. }
            | Input::PartitionsChanged { now: at }
            | Input::IntentsChanged { now: at }
            | Input::StepDue { now: at }
            | Input::PlacementChanged { now: at }
            | Input::Published { now: at, .. }
            | Input::PublishFailed { now: at }
            | Input::Republished { now: at, .. }
            | Input::HoldCrashes { now: at, .. }
            | Input::Tick { now: at } => *at = now,
        }
        self
    }
}

/// What the runner must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Write this phase into the `cluster` record so every worker can follow it. Emitted only
    /// when the phase changes (and once on [`Input::BecameLeader`], to replace a stale phase
    /// left by the previous leader), always before the `Publish` it announces.
    SetPhase(Phase),
    /// Compute and publish a new map over `workers`, from the partitions as they are when the
    /// runner handles this decision, then feed back [`Input::Published`]. At most one publish
    /// is outstanding: the planner emits no other until that input arrives.
    Publish {
        /// The workers of the new map, sorted and unique (never empty).
        workers: Vec<WorkerId>,
        /// Why (for logs and the `rebalances by reason` metric).
        reason: RebalanceReason,
        /// Keep every worker's partitions where they are and place only the orphans
        /// (see [`reassign_orphans`](super::reassign_orphans)); true exactly for emergencies.
        orphans_only: bool,
    },
}

/// Why a map is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum RebalanceReason {
    /// The cold-start window closed.
    ColdStart,
    /// The window of a full restart closed.
    Restart,
    /// A planned-scale window closed with only joins.
    ScaleUp,
    /// A planned-scale window closed with only graceful leaves.
    ScaleDown,
    /// A planned-scale window closed with joins and leaves.
    PlannedScale,
    /// A crash was declared; only orphans move.
    Emergency,
    /// The partition list changed.
    PartitionChange,
    /// A new leader found the map out of date with the live workers.
    LeaderChange,
    /// An operator drained, pinned or unfroze (see [`control`](crate::control)).
    Operator,
    /// The next step of a rebalance paced by `maxMovesPerStep`.
    Paced,
    /// A worker's capacity or labels changed, or a parked label spilled (see
    /// [`profile`](crate::profile)).
    Placement,
}

impl RebalanceReason {
    /// A lowercase name, e.g. `scale_up` (used in metrics and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            RebalanceReason::ColdStart => "cold_start",
            RebalanceReason::Restart => "restart",
            RebalanceReason::ScaleUp => "scale_up",
            RebalanceReason::ScaleDown => "scale_down",
            RebalanceReason::PlannedScale => "planned_scale",
            RebalanceReason::Emergency => "emergency",
            RebalanceReason::PartitionChange => "partitions_changed",
            RebalanceReason::LeaderChange => "leader_change",
            RebalanceReason::Operator => "operator",
            RebalanceReason::Paced => "paced",
            RebalanceReason::Placement => "placement",
        }
    }
}

impl fmt::Display for RebalanceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The leader's phase, with its deadline as an [`Instant`].
///
/// The published [`ClusterPhase`] carries wall-clock milliseconds instead; the runner converts
/// with [`to_cluster_phase`](Self::to_cluster_phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Phase {
    /// Nothing pending.
    #[default]
    Stable,
    /// Batching changes until `until`.
    Scaling {
        /// Why.
        reason: ScalingReason,
        /// When the window closes.
        until: Instant,
    },
    /// A rebalanced map is being published.
    Rebalancing,
    /// The orphans of crashed workers are being reassigned.
    Emergency,
}

impl Phase {
    /// The published form: `until` becomes wall-clock milliseconds, given that `now` is
    /// `now_unix_ms` milliseconds since the Unix epoch.
    /// (`until` 2 s after `now`, with `now` at 1 000 ms, is `until_ms` 3 000.)
    pub fn to_cluster_phase(self, now: Instant, now_unix_ms: u64) -> ClusterPhase {
        match self {
            Phase::Stable => ClusterPhase::Stable,
            Phase::Rebalancing => ClusterPhase::Rebalancing,
            Phase::Emergency => ClusterPhase::Emergency,
            Phase::Scaling { reason, until } => {
                let ahead = millis(until.saturating_duration_since(now));
                let behind = millis(now.saturating_duration_since(until));
                ClusterPhase::Scaling {
                    reason,
                    until_ms: now_unix_ms.saturating_add(ahead).saturating_sub(behind),
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Crash declarations held back because the leader could not see the cluster (SPEC §7).
///
/// While the leader is degraded it cannot tell a crash from its own outage, so it declares
/// none. When it recovers, workers cut off together with it get `recoveryGracePeriod` to come
/// back before they are declared crashed, so they are not mass-evicted. A crash it had
/// noticed *before* it went blind is its own observation, not an artefact of the outage: that
/// one is declared as soon as the leader has recovered (and its grace period has run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashHold {
    /// When the leader went blind.
    pub blind_since: Instant,
    /// When it recovered; `None` while it is still blind.
    pub recovered_at: Option<Instant>,
    /// No crash noticed at or after `blind_since` is declared before this instant.
    pub until: Instant,
}

impl CrashHold {
    /// Blind since `now`, declaring nothing noticed from now on before `until`.
    pub fn blind(now: Instant, until: Instant) -> Self {
        Self {
            blind_since: now,
            recovered_at: None,
            until,
        }
    }

    /// Recovered at `now`: crashes noticed before the blind spell are declared from now on,
    /// the others not before `until`.
    #[must_use]
    pub fn recovered(self, now: Instant, until: Instant) -> Self {
        Self {
            recovered_at: Some(now),
            until,
            ..self
        }
    }
}
