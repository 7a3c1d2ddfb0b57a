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
//!
//! [`check`] is pure: give it a [`History`] (load the files with [`read_jsonl`]) and a
//! [`CheckConfig`], read the [`Report`]:
//!
//! ```
//! use parti_testkit::checker::{check, CheckConfig, History, OwnershipEvent, OwnershipRecord};
//!
//! let event = OwnershipEvent::Hold { partition: "p".into(), epoch: 1, valid_until_ns: 100 };
//! let hold = OwnershipRecord::new(10, parti::WorkerId::new("w-0"), "i-0", event);
//! let history = History {
//!     ownership: vec![hold],
//!     partitions: vec!["p".into()],
//!     window: (10, 100),
//!     ..History::default()
//! };
//! let report = check(&history, &CheckConfig { tolerance_ns: 0, gap_bound_ns: 1_000 });
//! assert!(report.is_clean(), "{report}");
//! ```
//!
//! # How holdings are read
//!
//! A *holding* starts at an instance's `hold` record and ends at the earliest of its `release`,
//! its lease deadline (the hold's `validUntilNs`, pushed forward by the instance's `extend`
//! records that arrive in time), the kill of its process (a [`FaultRecord`] with
//! `ends_process`; records stamped after the kill are ignored) and the end of the history. An
//! `extend` arriving after a holding's deadline (+ tolerance) *revives* it: a violation, and a new
//! segment of the holding from the extend on. Holdings belong to instances (processes), not to
//! worker IDs. Every time is in Unix ns; segments are half-open, `[from, to)`.

mod load;
mod report;
mod rules;
mod timeline;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use load::{JsonlFile, load_jsonl, read_jsonl};
pub use parti::ownership::{OwnershipEvent, OwnershipRecord};
pub use report::{Counts, HoldingRef, Report, SegmentEnd, Span, Violation};

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

/// Judges `history`: every violation of the ownership contract (SPEC §13) with its evidence,
/// and counts of what was seen. Pure and deterministic; never panics.
pub fn check(history: &History, config: &CheckConfig) -> Report {
    let timeline = timeline::Timeline::build(history, config.tolerance_ns);
    let mut violations = timeline.violations.clone();
    violations.extend(rules::overlaps(&timeline, config.tolerance_ns));
    violations.extend(rules::epochs(&timeline));
    violations.extend(rules::gaps(&timeline, history, config.gap_bound_ns));
    violations.extend(rules::processed_without_holding(
        &timeline,
        &history.processed,
        config.tolerance_ns,
    ));
    let messages = rules::Messages::tally(&history.sent, &history.processed);
    violations.extend(messages.lost.iter().map(|record| Violation::Lost {
        record: (*record).clone(),
    }));
    violations.extend(rules::version_regressions(&timeline, &history.versions));
    violations.sort_by_key(Violation::at_ns);
    let handoffs = rules::handoff_gaps(&timeline);
    Report {
        counts: Counts {
            holdings: timeline.holdings.len(),
            instances: timeline.instances,
            partitions: timeline.partition_count(&history.partitions),
            messages_sent: messages.sent,
            messages_handled: messages.handled,
            handler_calls: history.processed.len(),
            messages_lost: messages.lost.len(),
            messages_duplicated: messages.duplicated,
            faults: history.faults.len(),
            unmatched_releases: timeline.unmatched_releases,
            records_after_kill: timeline.records_after_kill,
            handoffs: handoffs.len(),
            handoff_gap_median_ns: handoffs.get(handoffs.len() / 2).copied().unwrap_or(0),
            handoff_gap_max_ns: handoffs.last().copied().unwrap_or(0),
        },
        violations,
    }
}
