//! The `assignment` and `kvBuckets` sections of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use crate::profile::UnlabelledPolicy;

/// How often and when the leader rebalances (`assignment`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AssignmentConfig {
    /// Cooldown between two rebalances (default 10s; `> 0`, `≤ plannedScaleWindow`). A change
    /// inside the cooldown schedules a deferred rebalance; it is never dropped. The Go library
    /// calls it `rebalanceCooldown`, accepted here as an alias.
    #[serde(with = "duration", alias = "rebalanceCooldown")]
    pub min_rebalance_interval: Duration,
    /// A partition-source refresh whose rebalance would move less than this fraction of the
    /// imbalance is skipped (default 0.15; in `[0, 1)`).
    pub min_rebalance_threshold: f64,
    /// The most partitions one publish moves from a live owner to another (default: no
    /// limit). A larger rebalance is published as a sequence of steps towards the same target,
    /// each a complete hand-off: the next step follows once every move of the previous one is
    /// held by its gainer (and `minRebalanceInterval` has passed). A count (`500`) or a
    /// percentage of the total partition weight (`"10%"`). Partitions without a live owner (a crash, a
    /// new partition) are placed at once, never paced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_moves_per_step: Option<MovesPerStep>,
    /// Where partitions without a label go: `dedicated` (default: to workers without labels;
    /// to every worker when all have labels) or `shared` (to every worker). See
    /// [`profile`](crate::profile).
    pub unlabelled_policy: UnlabelledPolicy,
    /// How long the partitions of a label that no live worker has stay parked (held by no
    /// one) before they spill to where unlabelled partitions go (default 60s; `> 0`). A worker
    /// with the label coming back takes them again.
    #[serde(with = "duration")]
    pub label_spill_grace: Duration,
}

/// A limit on the moves of one publish (`assignment.maxMovesPerStep`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawMoves", into = "RawMoves")]
#[non_exhaustive]
pub enum MovesPerStep {
    /// At most this many partitions (at least 1).
    Count(u32),
    /// At most this fraction of the total partition weight, rounded up (in `(0, 1]`); with
    /// equal weights, that fraction of the partitions.
    Fraction(f64),
}

impl MovesPerStep {
    /// What one step may move over `partitions`: [`Count`](Self::Count) partitions, or
    /// [`Fraction`](Self::Fraction) of their total effective weight (rounded up; at least 1).
    pub fn budget(self, partitions: &[crate::Partition]) -> StepBudget {
        match self {
            Self::Count(n) => StepBudget::Moves((n as usize).max(1)),
            Self::Fraction(f) => {
                let total: u128 = partitions
                    .iter()
                    .map(|p| u128::from(p.effective_weight()))
                    .sum();
                // Float-to-int `as` saturates; totals beyond 2^53 round, which is fine here.
                StepBudget::Weight(((total as f64 * f).ceil() as u128).max(1))
            }
        }
    }
}

/// What one paced step may move (see [`MovesPerStep::budget`]). A step always makes at least
/// one move, even one that alone exceeds the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepBudget {
    /// At most this many partitions.
    Moves(usize),
    /// At most this much effective weight.
    Weight(u128),
}

impl StepBudget {
    /// What moving `partition` costs: 1, or its effective weight.
    pub fn cost(self, partition: &crate::Partition) -> u128 {
        match self {
            Self::Moves(_) => 1,
            Self::Weight(_) => u128::from(partition.effective_weight()),
        }
    }

    /// The most one step may spend.
    pub fn cap(self) -> u128 {
        match self {
            Self::Moves(n) => n as u128,
            Self::Weight(w) => w,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawMoves {
    Count(u64),
    Text(String),
}

impl TryFrom<RawMoves> for MovesPerStep {
    type Error = String;
    fn try_from(raw: RawMoves) -> Result<Self, String> {
        match raw {
            RawMoves::Count(0) => Err("maxMovesPerStep must be at least 1".into()),
            RawMoves::Count(n) => u32::try_from(n)
                .map(Self::Count)
                .map_err(|_| format!("maxMovesPerStep {n} is too large")),
            RawMoves::Text(text) => {
                let t = text.trim();
                if let Some(percent) = t.strip_suffix('%') {
                    match percent.trim().parse::<f64>() {
                        Ok(p) if p > 0.0 && p <= 100.0 => Ok(Self::Fraction(p / 100.0)),
                        _ => Err(format!(
                            "maxMovesPerStep {text:?}: a percentage must be in (0%, 100%]"
                        )),
                    }
                } else {
                    match t.parse::<u64>() {
                        Ok(n) => Self::try_from(RawMoves::Count(n)),
                        Err(_) => Err(format!(
                            "maxMovesPerStep {text:?}: expected a count (500) or a percentage (\"10%\")"
                        )),
                    }
                }
            }
        }
    }
}

impl From<MovesPerStep> for RawMoves {
    fn from(m: MovesPerStep) -> Self {
        match m {
            MovesPerStep::Count(n) => RawMoves::Count(u64::from(n)),
            // Rounded, so that 0.07 is written "7%", not "7.000000000000001%".
            MovesPerStep::Fraction(f) => {
                RawMoves::Text(format!("{}%", (f * 100.0 * 1e6).round() / 1e6))
            }
        }
    }
}

impl Default for AssignmentConfig {
    fn default() -> Self {
        Self {
            min_rebalance_interval: Duration::from_secs(10),
            min_rebalance_threshold: 0.15,
            max_moves_per_step: None,
            unlabelled_policy: UnlabelledPolicy::Dedicated,
            label_spill_grace: Duration::from_secs(60),
        }
    }
}

/// Names and replication of the NATS KV buckets (`kvBuckets`).
///
/// Each name must be a valid bucket name (`[A-Za-z0-9_-]+`) and the four must differ. The Go
/// library's `stableIdBucket`, `electionBucket`, … are accepted as aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct KvBucketConfig {
    /// Bucket of stable worker-ID claims (default `parti-stableid`).
    #[serde(alias = "stableIdBucket")]
    pub stable_id: String,
    /// Bucket of the leader lease (default `parti-election`).
    #[serde(alias = "electionBucket")]
    pub election: String,
    /// Bucket of worker heartbeats (default `parti-heartbeat`).
    #[serde(alias = "heartbeatBucket")]
    pub heartbeat: String,
    /// Bucket of published assignments (default `parti-assignment`).
    #[serde(alias = "assignmentBucket")]
    pub assignment: String,
    /// Replicas of every bucket (default 1; `1..=5`; use 3 on a NATS cluster).
    pub replicas: usize,
}

impl Default for KvBucketConfig {
    fn default() -> Self {
        Self {
            stable_id: "parti-stableid".to_owned(),
            election: "parti-election".to_owned(),
            heartbeat: "parti-heartbeat".to_owned(),
            assignment: "parti-assignment".to_owned(),
            replicas: 1,
        }
    }
}

impl KvBucketConfig {
    /// The four bucket names with their field names, e.g. `("stableId", "parti-stableid")`.
    pub fn names(&self) -> [(&'static str, &str); 4] {
        [
            ("stableId", &self.stable_id),
            ("election", &self.election),
            ("heartbeat", &self.heartbeat),
            ("assignment", &self.assignment),
        ]
    }
}
