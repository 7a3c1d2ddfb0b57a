//! The `assignment` and `kvBuckets` sections of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

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
}

impl Default for AssignmentConfig {
    fn default() -> Self {
        Self {
            min_rebalance_interval: Duration::from_secs(10),
            min_rebalance_threshold: 0.15,
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
