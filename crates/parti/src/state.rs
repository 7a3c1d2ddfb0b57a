//! The worker state machine (SPEC §4) and the cluster phase the leader publishes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of one worker.
///
/// Transitions are restricted to the table in [`State::can_transition_to`]; anything else is a
/// bug, which the manager logs and refuses.
///
/// ```
/// use parti::State;
/// assert!(State::Stable.can_transition_to(State::Scaling));
/// assert!(!State::Shutdown.can_transition_to(State::Stable));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum State {
    /// Created, not started.
    Init,
    /// Claiming a stable ID from the pool.
    ClaimingId,
    /// Taking part in leader election.
    Election,
    /// Waiting for the first assignment.
    WaitingAssignment,
    /// Working on a settled assignment.
    Stable,
    /// The leader is batching joins or leaves inside a window.
    Scaling,
    /// The leader is publishing a rebalanced assignment.
    Rebalancing,
    /// A worker crashed; its partitions are being reassigned at once.
    Emergency,
    /// NATS is unreachable or failing; the last assignment stays in force. Why: a
    /// [`DegradedReason`].
    Degraded,
    /// Stopping or stopped.
    Shutdown,
}

impl State {
    /// Every state, in declaration order.
    pub const ALL: [State; 10] = [
        State::Init,
        State::ClaimingId,
        State::Election,
        State::WaitingAssignment,
        State::Stable,
        State::Scaling,
        State::Rebalancing,
        State::Emergency,
        State::Degraded,
        State::Shutdown,
    ];

    /// Whether a worker in this state has joined the cluster: it holds a stable ID, its
    /// heartbeat runs and it takes part in the election (`WaitingAssignment` and every state
    /// after it, except `Shutdown`). What [`ManagerBuilder::spawn`](crate::ManagerBuilder::spawn)
    /// waits for.
    ///
    /// ```
    /// use parti::State;
    /// assert!(!State::ClaimingId.has_joined());
    /// assert!(State::WaitingAssignment.has_joined());
    /// assert!(State::Degraded.has_joined());
    /// assert!(!State::Shutdown.has_joined());
    /// ```
    pub fn has_joined(self) -> bool {
        !matches!(
            self,
            State::Init | State::ClaimingId | State::Election | State::Shutdown
        )
    }

    /// The states reachable from `self` in one step (SPEC §4).
    pub fn allowed_next(self) -> &'static [State] {
        use State::*;
        match self {
            Init => &[ClaimingId, Shutdown],
            ClaimingId => &[Election, Shutdown],
            Election => &[WaitingAssignment, Shutdown],
            WaitingAssignment => &[
                Stable,
                Scaling,
                Rebalancing,
                Emergency,
                Degraded,
                ClaimingId,
                Shutdown,
            ],
            Stable => &[
                Scaling,
                Rebalancing,
                Emergency,
                Degraded,
                ClaimingId,
                Shutdown,
            ],
            Scaling => &[
                Rebalancing,
                Emergency,
                Stable,
                Degraded,
                ClaimingId,
                Shutdown,
            ],
            Rebalancing => &[Stable, Emergency, Degraded, ClaimingId, Shutdown],
            Emergency => &[Stable, Rebalancing, Degraded, ClaimingId, Shutdown],
            Degraded => &[
                WaitingAssignment,
                Stable,
                Scaling,
                Rebalancing,
                Emergency,
                ClaimingId,
                Shutdown,
            ],
            Shutdown => &[],
        }
    }

    /// Whether `self → next` is an allowed transition.
    pub fn can_transition_to(self, next: State) -> bool {
        self.allowed_next().contains(&next)
    }

    /// True for the states in which the worker processes its assignment.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            State::Stable
                | State::Scaling
                | State::Rebalancing
                | State::Emergency
                | State::Degraded
        )
    }

    /// A lowercase name, e.g. `waiting_assignment` (used in metrics and the CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::ClaimingId => "claiming_id",
            State::Election => "election",
            State::WaitingAssignment => "waiting_assignment",
            State::Stable => "stable",
            State::Scaling => "scaling",
            State::Rebalancing => "rebalancing",
            State::Emergency => "emergency",
            State::Degraded => "degraded",
            State::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a worker entered [`State::Degraded`]: the fixed, documented set of conditions the
/// manager detects (SPEC §7; the table in `docs/operations.md`).
///
/// The reason is decided when the worker enters Degraded and stays the same until it leaves.
/// It is visible through [`Manager::degraded_reason`](crate::Manager::degraded_reason),
/// [`Event::DegradedEntered`](crate::Event::DegradedEntered),
/// [`Hooks::on_degraded`](crate::Hooks::on_degraded), the worker's heartbeat value (and so
/// `parti status`) and the metrics `parti_degraded_reason{reason}` and
/// `parti_degraded_entered_total{reason}`. Its name (`as_str`, Display and serde) is camelCase.
///
/// ```
/// use parti::DegradedReason;
/// assert_eq!(DegradedReason::NatsUnreachable.as_str(), "natsUnreachable");
/// assert_eq!(DegradedReason::KvErrors.to_string(), "kvErrors");
/// let back: DegradedReason = serde_json::from_str("\"kvErrors\"")?;
/// assert_eq!(back, DegradedReason::KvErrors);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum DegradedReason {
    /// The client has had no connection to NATS for `degradedBehavior.enterThreshold`; also
    /// when the KV errors below pile up while the connection is down (they are its symptom).
    NatsUnreachable,
    /// `degradedBehavior.kvErrorThreshold` KV calls failed within
    /// `degradedBehavior.kvErrorWindow` while the client was connected. The calls counted are
    /// the worker's lease renewals: heartbeat writes and stable-ID renewals.
    KvErrors,
    /// A bucket the worker uses does not exist (deleted under it); the worker creates it
    /// again. Which bucket is logged and counted (`parti_bucket_lost_total`).
    BucketMissing,
    /// A bucket was deleted and created again: everything in it is gone. The worker restores
    /// the assignment bucket's version and term floor before leaving Degraded.
    BucketRecreated,
}

impl DegradedReason {
    /// Every reason, in declaration order.
    pub const ALL: [DegradedReason; 4] = [
        DegradedReason::NatsUnreachable,
        DegradedReason::KvErrors,
        DegradedReason::BucketMissing,
        DegradedReason::BucketRecreated,
    ];

    /// The reason's name, e.g. `natsUnreachable` (as in JSON, metrics and the CLI).
    pub const fn as_str(self) -> &'static str {
        match self {
            DegradedReason::NatsUnreachable => "natsUnreachable",
            DegradedReason::KvErrors => "kvErrors",
            DegradedReason::BucketMissing => "bucketMissing",
            DegradedReason::BucketRecreated => "bucketRecreated",
        }
    }

    /// The reason named `name` (see [`as_str`](Self::as_str)); `None` for a name this version
    /// does not know, e.g. one written by a newer worker.
    ///
    /// ```
    /// use parti::DegradedReason;
    /// assert_eq!(DegradedReason::from_name("natsUnreachable"), Some(DegradedReason::NatsUnreachable));
    /// assert_eq!(DegradedReason::from_name("solarFlare"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for DegradedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the leader is in a scaling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ScalingReason {
    /// First start of the cluster: batching all joins.
    ColdStart,
    /// Most workers restarted at once: treated as a cold start.
    Restart,
    /// Workers joined or left gracefully.
    PlannedScale,
}

impl fmt::Display for ScalingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScalingReason::ColdStart => "cold_start",
            ScalingReason::Restart => "restart",
            ScalingReason::PlannedScale => "planned_scale",
        })
    }
}

/// What the leader is doing, published in the `cluster` record so every worker can follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ClusterPhase {
    /// Nothing pending.
    #[default]
    Stable,
    /// Waiting for a window to close before publishing.
    Scaling {
        /// Why.
        reason: ScalingReason,
        /// When the window closes, in milliseconds since the Unix epoch.
        until_ms: u64,
    },
    /// Publishing a rebalanced map.
    Rebalancing,
    /// Reassigning the partitions of crashed workers.
    Emergency,
}

impl ClusterPhase {
    /// The worker state that mirrors this phase.
    pub fn worker_state(self) -> State {
        match self {
            ClusterPhase::Stable => State::Stable,
            ClusterPhase::Scaling { .. } => State::Scaling,
            ClusterPhase::Rebalancing => State::Rebalancing,
            ClusterPhase::Emergency => State::Emergency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of SPEC §4, written out as (from, to) pairs independently of `allowed_next`.
    const SPEC_TABLE: &[(State, &[State])] = {
        use State::*;
        &[
            (Init, &[ClaimingId, Shutdown]),
            (ClaimingId, &[Election, Shutdown]),
            (Election, &[WaitingAssignment, Shutdown]),
            (
                WaitingAssignment,
                &[
                    Stable,
                    Scaling,
                    Rebalancing,
                    Emergency,
                    Degraded,
                    ClaimingId,
                    Shutdown,
                ],
            ),
            (
                Stable,
                &[
                    Scaling,
                    Rebalancing,
                    Emergency,
                    Degraded,
                    ClaimingId,
                    Shutdown,
                ],
            ),
            (
                Scaling,
                &[
                    Rebalancing,
                    Emergency,
                    Stable,
                    Degraded,
                    ClaimingId,
                    Shutdown,
                ],
            ),
            (
                Rebalancing,
                &[Stable, Emergency, Degraded, ClaimingId, Shutdown],
            ),
            (
                Emergency,
                &[Stable, Rebalancing, Degraded, ClaimingId, Shutdown],
            ),
            (
                Degraded,
                &[
                    WaitingAssignment,
                    Stable,
                    Scaling,
                    Rebalancing,
                    Emergency,
                    ClaimingId,
                    Shutdown,
                ],
            ),
            (Shutdown, &[]),
        ]
    };

    #[test]
    fn all_100_pairs_match_the_spec_table() {
        let mut checked = 0;
        for from in State::ALL {
            let allowed = SPEC_TABLE
                .iter()
                .find(|(f, _)| *f == from)
                .map(|(_, to)| *to)
                .unwrap();
            for to in State::ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    allowed.contains(&to),
                    "{from} -> {to}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 100);
    }

    #[test]
    fn no_self_transitions_and_shutdown_is_terminal() {
        for s in State::ALL {
            assert!(!s.can_transition_to(s), "{s} -> {s}");
        }
        assert!(State::Shutdown.allowed_next().is_empty());
        for s in State::ALL {
            if s != State::Shutdown {
                assert!(s.can_transition_to(State::Shutdown), "{s} -> shutdown");
            }
        }
    }

    #[test]
    fn degraded_reasons_have_stable_camel_case_names() {
        for reason in DegradedReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(reason.to_string(), reason.as_str());
            assert_eq!(DegradedReason::from_name(reason.as_str()), Some(reason));
            assert_eq!(
                serde_json::from_str::<DegradedReason>(&json).unwrap(),
                reason
            );
        }
        let names: Vec<&str> = DegradedReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "natsUnreachable",
                "kvErrors",
                "bucketMissing",
                "bucketRecreated"
            ]
        );
    }

    #[test]
    fn phase_maps_to_state() {
        assert_eq!(ClusterPhase::Emergency.worker_state(), State::Emergency);
        let scaling = ClusterPhase::Scaling {
            reason: ScalingReason::ColdStart,
            until_ms: 5,
        };
        assert_eq!(scaling.worker_state(), State::Scaling);
        let json = serde_json::to_string(&scaling).unwrap();
        assert_eq!(
            serde_json::from_str::<ClusterPhase>(&json).unwrap(),
            scaling
        );
    }
}
