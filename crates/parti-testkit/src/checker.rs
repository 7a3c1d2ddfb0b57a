//! The ownership checker: the one judge of whether workers kept Parti's promise.
//!
//! It reads what every worker *held* and *processed* (not the map the leader published), plus
//! what the test or chaos runner did to them, and reports every violation with its evidence:
//!
//! - **overlap**: two instances holding one partition at the same instant, each holding cut at
//!   its lease deadline (and at the kill of its process);
//! - **epochs**: per partition, epochs strictly increase from one holding to the next;
//! - **gaps**: a partition nobody holds for longer than a bound after the last fault healed;
//! - **processing**: a message handled by an instance that did not hold its partition then; a
//!   message never handled (lost); handled twice (counted: at-least-once allows it);
//! - **versions**: a committed or applied version going backwards;
//! - **revived**: a holding whose lease ran out, used again (extended) without a new hold.
//!
//! Used by unit tests, the simulation, `parti sim` and `parti chaos`.
//!
//! The records are the library's [`OwnershipRecord`]s (one JSON object per line in
//! `--ownership-log` files), [`ProcessedRecord`]s (`--process-log`), [`SentRecord`]s (from the
//! producer), [`FaultRecord`]s (from the runner) and [`VersionRecord`]s (an observer of the
//! `cluster` key).

use serde::{Deserialize, Serialize};

pub use parti::ownership::{OwnershipEvent, OwnershipRecord};

/// A message a worker handled, as written to `--process-log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessedRecord {
    /// When the handler ran, in Unix ns.
    pub at_ns: u64,
    /// The worker's stable ID then.
    pub worker: String,
    /// The process (instance ID, as in the ownership records).
    pub instance: String,
    /// The partition ID of the message's subject.
    pub partition: String,
    /// The message's stream sequence.
    pub seq: u64,
}

/// A message the producer published (and JetStream acknowledged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentRecord {
    /// When it was acknowledged, in Unix ns.
    pub at_ns: u64,
    /// Its partition ID.
    pub partition: String,
    /// Its stream sequence.
    pub seq: u64,
}

/// Something a test or chaos runner did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRecord {
    /// What was done: `kill`, `pause`, `cut`, `natsRestart`, `nodeKill`, `garbage`, … (free
    /// text; shown in reports).
    pub kind: String,
    /// The worker it was done to, if one.
    pub worker: Option<String>,
    /// The process it was done to, if one.
    pub instance: Option<String>,
    /// When it started, in Unix ns.
    pub start_ns: u64,
    /// When it healed (the process resumed, the link came back…); equal to `start_ns` for an
    /// instant fault such as a kill.
    pub end_ns: u64,
    /// The process ended at `start_ns` without writing anything more (`kill -9`): its holdings
    /// end there.
    pub ends_process: bool,
}

/// A version seen at a time: the committed `cluster` version seen by an observer, or one
/// worker's applied version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    /// When it was seen, in Unix ns.
    pub at_ns: u64,
    /// Whose version: `cluster`, or an instance ID.
    pub source: String,
    /// The version.
    pub version: u64,
}

/// Everything the checker judges.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every worker's ownership records, in any order.
    pub ownership: Vec<OwnershipRecord>,
    /// Every handled message, in any order.
    pub processed: Vec<ProcessedRecord>,
    /// Every message sent; empty when no producer ran (then nothing is "lost").
    pub sent: Vec<SentRecord>,
    /// What was done to the cluster.
    pub faults: Vec<FaultRecord>,
    /// Committed versions seen by an observer.
    pub versions: Vec<VersionRecord>,
    /// The partition IDs that must be held (for gaps).
    pub partitions: Vec<String>,
    /// Gaps count only inside `[from_ns, to_ns)`: from when the cluster should hold everything
    /// (after its cold start) until the runner began stopping it.
    pub window: (u64, u64),
}

/// How strict to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    /// Slack allowed on overlaps and on processing near a holding's edges (clock skew between
    /// processes). 0 in the simulation.
    pub tolerance_ns: u64,
    /// The longest a partition may go unheld after the last fault healed (SPEC: heartbeatTtl +
    /// grace + electionTtl + 2 s unless the scenario says more).
    pub gap_bound_ns: u64,
}
