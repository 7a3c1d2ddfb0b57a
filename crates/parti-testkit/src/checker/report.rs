//! What the checker found: [`Report`], its [`Violation`]s and their evidence.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{FaultRecord, ProcessedRecord, SentRecord};

/// The checker's verdict: counts of what it saw and every violation, ordered by when it
/// happened.
///
/// Serializes to JSON with camelCase keys; its `Display` is a text summary with one line per
/// violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Report {
    /// What the history held.
    pub counts: Counts,
    /// Every violation found, ordered by [`Violation::at_ns`].
    pub violations: Vec<Violation>,
}

impl Report {
    /// How many violations of each kind (the `kind` tag of their JSON form).
    pub fn violations_by_kind(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_kind = std::collections::BTreeMap::new();
        for violation in &self.violations {
            *by_kind.entry(violation.kind().to_owned()).or_insert(0) += 1;
        }
        by_kind
    }

    /// No violation was found. Duplicated messages are allowed (at-least-once) and only counted.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// How much of everything the history held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Counts {
    /// Holdings (`hold` records that counted).
    pub holdings: usize,
    /// Instances (processes) that wrote ownership records.
    pub instances: usize,
    /// Distinct partitions, held or required.
    pub partitions: usize,
    /// Distinct messages sent.
    pub messages_sent: usize,
    /// Distinct messages handled at least once.
    pub messages_handled: usize,
    /// Handler calls (processed records), duplicates included.
    pub handler_calls: usize,
    /// Messages sent and never handled.
    pub messages_lost: usize,
    /// Messages handled more than once (allowed: delivery is at least once).
    pub messages_duplicated: usize,
    /// Faults the runner injected.
    pub faults: usize,
    /// `release` records for a partition the instance did not hold (ignored).
    pub unmatched_releases: usize,
    /// Ownership records stamped after their process was killed (ignored).
    pub records_after_kill: usize,
    /// Hand-offs: a holding that ended by its `release`, followed by another process's holding
    /// of the partition.
    pub handoffs: usize,
    /// The median time from such a release to the next holder's `hold`, in ns.
    pub handoff_gap_median_ns: u64,
    /// The longest such time, in ns.
    pub handoff_gap_max_ns: u64,
}

/// A time interval `[from_ns, to_ns)` in Unix ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// Its start (included).
    pub from_ns: u64,
    /// Its end (excluded).
    pub to_ns: u64,
}

impl Span {
    /// How long it lasts (0 when empty).
    pub fn len_ns(&self) -> u64 {
        self.to_ns.saturating_sub(self.from_ns)
    }

    /// The part of both spans, empty (`len_ns() == 0`) when they do not meet.
    pub fn intersection(&self, other: &Span) -> Span {
        let from_ns = self.from_ns.max(other.from_ns);
        Span {
            from_ns,
            to_ns: self.to_ns.min(other.to_ns).max(from_ns),
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.from_ns, self.to_ns)
    }
}

/// Why a segment of a holding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum SegmentEnd {
    /// The instance released the partition.
    Release,
    /// The lease deadline passed before anything else ended the holding.
    LeaseExpired,
    /// The instance's process was killed.
    ProcessKilled,
    /// The instance wrote a new `hold` for the partition without releasing it first.
    Reheld,
    /// The history ended first.
    EndOfHistory,
}

impl fmt::Display for SegmentEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Release => "release",
            Self::LeaseExpired => "lease expiry",
            Self::ProcessKilled => "process kill",
            Self::Reheld => "a new hold",
            Self::EndOfHistory => "end of history",
        })
    }
}

/// One valid stretch (segment) of a holding, with what a reader needs to find it in the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HoldingRef {
    /// The process that held.
    pub instance: String,
    /// Its worker ID in the `hold` record.
    pub worker: String,
    /// The holding's epoch.
    pub epoch: u64,
    /// The `atNs` of the `hold` record.
    pub held_at_ns: u64,
    /// The `atNs` of the `release` record, if the holding was released.
    pub released_at_ns: Option<u64>,
    /// The segment meant (the whole holding unless it lapsed and was revived); empty for a
    /// holding that never had a valid lease.
    pub segment: Span,
    /// What ended the segment.
    pub ended_by: SegmentEnd,
}

impl fmt::Display for HoldingRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "instance {} (worker {}, epoch {}, hold at {}, valid {} ended by {}",
            self.instance, self.worker, self.epoch, self.held_at_ns, self.segment, self.ended_by
        )?;
        if let Some(at) = self.released_at_ns {
            write!(f, ", release at {at}")?;
        }
        f.write_str(")")
    }
}

/// One breach of the ownership contract, with its evidence.
///
/// Serialized with a `kind` tag (`overlap`, `revived`, `noLease`, `epochNotIncreasing`, `gap`,
/// `processedWithoutHolding`, `lost`, `versionRegression`) and camelCase fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum Violation {
    /// Two instances held `partition` at once for longer than the tolerance.
    #[non_exhaustive]
    Overlap {
        /// The partition.
        partition: String,
        /// The segment that started first (on a tie, the one read first).
        first: HoldingRef,
        /// The other one.
        second: HoldingRef,
        /// When both held it.
        overlap: Span,
    },
    /// An instance extended its lease after it had lapsed, still believing it held partitions:
    /// they count as held again from the extend on.
    #[non_exhaustive]
    Revived {
        /// The process.
        instance: String,
        /// Its worker ID in the `extend` record.
        worker: String,
        /// The earliest deadline that had passed.
        lapsed_at_ns: u64,
        /// The `atNs` of the late `extend` record.
        extended_at_ns: u64,
        /// Its `validUntilNs`.
        valid_until_ns: u64,
        /// How many unreleased holdings it revived.
        holdings: usize,
        /// Their partitions.
        partitions: Vec<String>,
    },
    /// A holding started with a lease deadline not after its start.
    #[non_exhaustive]
    NoLease {
        /// The process.
        instance: String,
        /// Its worker ID in the `hold` record.
        worker: String,
        /// The partition.
        partition: String,
        /// The holding's epoch.
        epoch: u64,
        /// The `atNs` of the `hold` record.
        at_ns: u64,
        /// Its `validUntilNs`.
        valid_until_ns: u64,
    },
    /// A holding of `partition` did not have a higher epoch than the holding before it.
    #[non_exhaustive]
    EpochNotIncreasing {
        /// The partition.
        partition: String,
        /// The earlier holding (its first segment).
        previous: HoldingRef,
        /// The later holding (its first segment).
        next: HoldingRef,
    },
    /// `partition` went unheld longer than the bound after the faults before it healed.
    #[non_exhaustive]
    Gap {
        /// The partition.
        partition: String,
        /// When nobody held it (within the window).
        unheld: Span,
        /// Until when the gap was excused: its start, or the latest end of a fault that started
        /// before the gap ended.
        excused_until_ns: u64,
        /// The fault that excused it longest, if one did.
        fault: Option<FaultRecord>,
    },
    /// A message was handled by an instance that did not hold its partition then.
    #[non_exhaustive]
    ProcessedWithoutHolding {
        /// The processed record.
        record: ProcessedRecord,
        /// The instance's holding segment of the partition nearest in time, if it had one.
        nearest: Option<HoldingRef>,
    },
    /// A message was sent and never handled.
    #[non_exhaustive]
    Lost {
        /// The sent record.
        record: SentRecord,
    },
    /// A source saw a version lower than one it had seen before.
    #[non_exhaustive]
    VersionRegression {
        /// `cluster` (or another observer), or an instance ID for its applied versions.
        source: String,
        /// When the lower version was seen.
        at_ns: u64,
        /// The lower version.
        version: u64,
        /// The highest version seen before.
        highest_before: u64,
        /// When that was first seen.
        highest_at_ns: u64,
    },
}

impl Violation {
    /// The kind, as its JSON `kind` tag says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Overlap { .. } => "overlap",
            Violation::Revived { .. } => "revived",
            Violation::NoLease { .. } => "noLease",
            Violation::EpochNotIncreasing { .. } => "epochNotIncreasing",
            Violation::Gap { .. } => "gap",
            Violation::ProcessedWithoutHolding { .. } => "processedWithoutHolding",
            Violation::Lost { .. } => "lost",
            Violation::VersionRegression { .. } => "versionRegression",
        }
    }

    /// When it happened (the start of the overlap or gap, the time of the offending record):
    /// what reports are ordered by.
    pub fn at_ns(&self) -> u64 {
        match self {
            Self::Overlap { overlap, .. } => overlap.from_ns,
            Self::Revived { extended_at_ns, .. } => *extended_at_ns,
            Self::NoLease { at_ns, .. } | Self::VersionRegression { at_ns, .. } => *at_ns,
            Self::EpochNotIncreasing { next, .. } => next.held_at_ns,
            Self::Gap { unheld, .. } => unheld.from_ns,
            Self::ProcessedWithoutHolding { record, .. } => record.at_ns,
            Self::Lost { record } => record.at_ns,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overlap {
                partition,
                first,
                second,
                overlap,
            } => write!(
                f,
                "overlap on {partition} during {overlap} ({}): {first} and {second}",
                Duration(overlap.len_ns())
            ),
            Self::Revived {
                instance,
                worker,
                lapsed_at_ns,
                extended_at_ns,
                valid_until_ns,
                holdings,
                partitions,
            } => write!(
                f,
                "revived: instance {instance} (worker {worker}) extended its lease at \
                 {extended_at_ns} (until {valid_until_ns}), {} after it lapsed at {lapsed_at_ns}, \
                 still holding {holdings} partition(s): {}",
                Duration(extended_at_ns.saturating_sub(*lapsed_at_ns)),
                partitions.join(", ")
            ),
            Self::NoLease {
                instance,
                worker,
                partition,
                epoch,
                at_ns,
                valid_until_ns,
            } => write!(
                f,
                "no lease: instance {instance} (worker {worker}) started holding {partition} at \
                 epoch {epoch} at {at_ns} valid only until {valid_until_ns}"
            ),
            Self::EpochNotIncreasing {
                partition,
                previous,
                next,
            } => write!(
                f,
                "epoch not increasing on {partition}: {next} came after {previous}"
            ),
            Self::Gap {
                partition,
                unheld,
                excused_until_ns,
                fault,
            } => {
                write!(
                    f,
                    "gap on {partition}: unheld during {unheld} ({}), {} after it was excused \
                     until {excused_until_ns}",
                    Duration(unheld.len_ns()),
                    Duration(unheld.to_ns.saturating_sub(*excused_until_ns))
                )?;
                match fault {
                    Some(fault) => write!(
                        f,
                        " (by fault {} during [{}, {}])",
                        fault.kind, fault.start_ns, fault.end_ns
                    ),
                    None => f.write_str(" (no fault before it)"),
                }
            }
            Self::ProcessedWithoutHolding { record, nearest } => {
                write!(
                    f,
                    "processed without holding: instance {} (worker {}) handled {} seq {} at {}; ",
                    record.instance, record.worker, record.partition, record.seq, record.at_ns
                )?;
                match nearest {
                    Some(holding) => write!(f, "nearest holding: {holding}"),
                    None => f.write_str("it never held that partition"),
                }
            }
            Self::Lost { record } => write!(
                f,
                "lost: {} seq {} sent at {} was never handled",
                record.partition, record.seq, record.at_ns
            ),
            Self::VersionRegression {
                source,
                at_ns,
                version,
                highest_before,
                highest_at_ns,
            } => write!(
                f,
                "version regression: {source} saw version {version} at {at_ns} after \
                 {highest_before} at {highest_at_ns}"
            ),
        }
    }
}

/// How many violations the text summary lists before it refers to the JSON report.
const LISTED_VIOLATIONS: usize = 200;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        match self.violations.len() {
            0 => writeln!(f, "ownership check: clean")?,
            n => writeln!(f, "ownership check: {n} violation(s)")?,
        }
        writeln!(
            f,
            "  {} instance(s), {} partition(s), {} holding(s), {} fault(s)",
            c.instances, c.partitions, c.holdings, c.faults
        )?;
        writeln!(
            f,
            "  messages: {} sent, {} handled ({} handler calls), {} lost, {} duplicated",
            c.messages_sent,
            c.messages_handled,
            c.handler_calls,
            c.messages_lost,
            c.messages_duplicated
        )?;
        if c.handoffs > 0 {
            writeln!(
                f,
                "  hand-offs: {} (release → next hold: median {:.1} ms, max {:.1} ms)",
                c.handoffs,
                c.handoff_gap_median_ns as f64 / 1e6,
                c.handoff_gap_max_ns as f64 / 1e6
            )?;
        }
        if c.unmatched_releases > 0 || c.records_after_kill > 0 {
            writeln!(
                f,
                "  ignored: {} release(s) of partitions not held, {} record(s) after a kill",
                c.unmatched_releases, c.records_after_kill
            )?;
        }
        for violation in self.violations.iter().take(LISTED_VIOLATIONS) {
            writeln!(f, "  - {violation}")?;
        }
        let unlisted = self.violations.len().saturating_sub(LISTED_VIOLATIONS);
        if unlisted > 0 {
            writeln!(f, "  … and {unlisted} more (see the JSON report)")?;
        }
        Ok(())
    }
}

/// A length of time in ns, shown in the largest unit that keeps it ≥ 1.
struct Duration(u64);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Precision loss is irrelevant for display.
        #[allow(clippy::cast_precision_loss)]
        let ns = self.0 as f64;
        match self.0 {
            0..1_000 => write!(f, "{}ns", self.0),
            1_000..1_000_000 => write!(f, "{:.3}µs", ns / 1e3),
            1_000_000..1_000_000_000 => write!(f, "{:.3}ms", ns / 1e6),
            _ => write!(f, "{:.3}s", ns / 1e9),
        }
    }
}
