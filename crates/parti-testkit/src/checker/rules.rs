//! The rules that judge a replayed [`Timeline`], one function each.

use std::collections::{BTreeMap, BTreeSet};

use super::report::{Span, Violation};
use super::timeline::{Holding, Segment, Timeline};
use super::{FaultRecord, History, ProcessedRecord, SentRecord, VersionRecord};

/// A segment with the holding it belongs to.
type Held<'t, 'a> = (&'t Holding<'a>, &'t Segment);

/// Two instances holding one partition at once for longer than `tolerance_ns`.
pub(super) fn overlaps(timeline: &Timeline<'_>, tolerance_ns: u64) -> Vec<Violation> {
    let mut by_partition: BTreeMap<&str, Vec<Held<'_, '_>>> = BTreeMap::new();
    for held in timeline.segments() {
        by_partition.entry(held.0.partition).or_default().push(held);
    }
    let mut violations = Vec::new();
    for (partition, mut segments) in by_partition {
        segments.sort_by_key(|(_, segment)| segment.span.from_ns);
        for (i, &(a, a_segment)) in segments.iter().enumerate() {
            let later = segments.iter().skip(i.saturating_add(1));
            // Sorted by start: once one starts after `a` ends, none of the rest meets it.
            for &(b, b_segment) in later.take_while(|(_, s)| s.span.from_ns < a_segment.span.to_ns)
            {
                // One instance's segments of a partition are disjoint by construction; the
                // instance test states the rule rather than relying on that.
                let overlap = a_segment.span.intersection(&b_segment.span);
                if a.instance != b.instance && overlap.len_ns() > tolerance_ns {
                    violations.push(Violation::Overlap {
                        partition: partition.to_owned(),
                        first: a.evidence(a_segment),
                        second: b.evidence(b_segment),
                        overlap,
                    });
                }
            }
        }
    }
    violations
}

/// Per partition, its holdings in the order they started (on a tie in time, the lower epoch
/// first: only a real step back counts as one).
fn successions<'t, 'a>(timeline: &'t Timeline<'a>) -> BTreeMap<&'a str, Vec<&'t Holding<'a>>> {
    let mut by_partition: BTreeMap<&str, Vec<&Holding<'_>>> = BTreeMap::new();
    for holding in &timeline.holdings {
        by_partition
            .entry(holding.partition)
            .or_default()
            .push(holding);
    }
    for holdings in by_partition.values_mut() {
        holdings.sort_by_key(|holding| (holding.held_at_ns, holding.epoch));
    }
    by_partition
}

/// Per partition, holdings ordered by start must have strictly increasing epochs.
pub(super) fn epochs(timeline: &Timeline<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (partition, holdings) in successions(timeline) {
        for pair in holdings.windows(2) {
            if let [previous, next] = pair
                && next.epoch <= previous.epoch
            {
                violations.push(Violation::EpochNotIncreasing {
                    partition: partition.to_owned(),
                    previous: previous.first_evidence(),
                    next: next.first_evidence(),
                });
            }
        }
    }
    violations
}

/// Every release followed by another process's hold of the partition: the release → acquire
/// gaps of hand-offs, in ns, sorted.
pub(super) fn handoff_gaps(timeline: &Timeline<'_>) -> Vec<u64> {
    let mut gaps = Vec::new();
    for (_, holdings) in successions(timeline) {
        for pair in holdings.windows(2) {
            if let [previous, next] = pair
                && previous.instance != next.instance
                && let Some(released) = previous.released_at_ns
                && next.held_at_ns >= released
            {
                gaps.push(next.held_at_ns - released);
            }
        }
    }
    gaps.sort_unstable();
    gaps
}

/// Per required partition, every stretch of the window nobody held, longer than `bound_ns`
/// past the faults that excuse it.
pub(super) fn gaps(timeline: &Timeline<'_>, history: &History, bound_ns: u64) -> Vec<Violation> {
    let window = Span {
        from_ns: history.window.0,
        to_ns: history.window.1,
    };
    let mut by_partition: BTreeMap<&str, Vec<Span>> = history
        .partitions
        .iter()
        .map(|partition| (partition.as_str(), Vec::new()))
        .collect();
    for (holding, segment) in timeline.segments() {
        if let Some(spans) = by_partition.get_mut(holding.partition) {
            spans.push(segment.span);
        }
    }
    let mut violations = Vec::new();
    for (partition, mut spans) in by_partition {
        spans.sort();
        for gap in unheld(&spans, window) {
            let (excused_until_ns, fault) = excuse(gap, &history.faults);
            if gap.to_ns.saturating_sub(excused_until_ns) > bound_ns {
                violations.push(Violation::Gap {
                    partition: partition.to_owned(),
                    unheld: gap,
                    excused_until_ns,
                    fault: fault.cloned(),
                });
            }
        }
    }
    violations
}

/// The parts of `window` that no span (sorted by start) covers.
pub(super) fn unheld(spans: &[Span], window: Span) -> Vec<Span> {
    let mut gaps = Vec::new();
    let mut covered_until = window.from_ns;
    for span in spans.iter().filter(|span| span.len_ns() > 0) {
        if span.from_ns > covered_until && covered_until < window.to_ns {
            gaps.push(Span {
                from_ns: covered_until,
                to_ns: span.from_ns.min(window.to_ns),
            });
        }
        covered_until = covered_until.max(span.to_ns);
    }
    if covered_until < window.to_ns {
        gaps.push(Span {
            from_ns: covered_until,
            to_ns: window.to_ns,
        });
    }
    gaps
}

/// Until when `gap` is excused: its start, or the latest end of a fault that started before the
/// gap ended; with that fault unless it healed before the gap began.
pub(super) fn excuse(gap: Span, faults: &[FaultRecord]) -> (u64, Option<&FaultRecord>) {
    let latest = faults
        .iter()
        .filter(|fault| fault.start_ns < gap.to_ns)
        .fold(None, |latest: Option<&FaultRecord>, fault| match latest {
            Some(kept) if kept.end_ns >= fault.end_ns => Some(kept),
            _ => Some(fault),
        });
    match latest {
        Some(fault) if fault.end_ns >= gap.from_ns => (fault.end_ns, Some(fault)),
        _ => (gap.from_ns, None),
    }
}

/// Messages handled by an instance with no valid holding of their partition over
/// `[at − tolerance, at]`.
pub(super) fn processed_without_holding(
    timeline: &Timeline<'_>,
    processed: &[ProcessedRecord],
    tolerance_ns: u64,
) -> Vec<Violation> {
    let mut index: BTreeMap<(&str, &str), Vec<Held<'_, '_>>> = BTreeMap::new();
    for held in timeline.segments() {
        let key = (held.0.instance, held.0.partition);
        index.entry(key).or_default().push(held);
    }
    for segments in index.values_mut() {
        segments.sort_by_key(|(_, segment)| segment.span.from_ns);
    }
    let none = Vec::new();
    processed
        .iter()
        .filter_map(|record| {
            let key = (record.instance.as_str(), record.partition.as_str());
            let segments = index.get(&key).unwrap_or(&none);
            let (covering, nearest) = lookup(segments, record.at_ns, tolerance_ns);
            covering
                .is_none()
                .then(|| Violation::ProcessedWithoutHolding {
                    record: record.clone(),
                    nearest: nearest.map(|(holding, segment)| holding.evidence(segment)),
                })
        })
        .collect()
}

/// In one instance's segments of one partition (disjoint, sorted by start): the one valid at
/// `at_ns` give or take `tolerance_ns` after its end, and the one nearest in time.
fn lookup<'t, 'a>(
    segments: &[Held<'t, 'a>],
    at_ns: u64,
    tolerance_ns: u64,
) -> (Option<Held<'t, 'a>>, Option<Held<'t, 'a>>) {
    let after = segments.partition_point(|(_, segment)| segment.span.from_ns <= at_ns);
    let before = after.checked_sub(1).and_then(|i| segments.get(i)).copied();
    let after = segments.get(after).copied();
    let covers =
        |(_, segment): &Held<'_, '_>| at_ns <= segment.span.to_ns.saturating_add(tolerance_ns);
    if let Some(held) = before.filter(covers) {
        return (Some(held), Some(held));
    }
    let nearest = match (before, after) {
        (Some(b), Some(a)) => {
            let since_end = at_ns.saturating_sub(b.1.span.to_ns);
            let until_start = a.1.span.from_ns.saturating_sub(at_ns);
            Some(if since_end <= until_start { b } else { a })
        }
        (b, a) => b.or(a),
    };
    (None, nearest)
}

/// What happened to the messages sent and handled.
#[derive(Debug, Default)]
pub(super) struct Messages<'a> {
    /// Distinct messages sent.
    pub(super) sent: usize,
    /// Distinct messages handled.
    pub(super) handled: usize,
    /// Messages handled more than once.
    pub(super) duplicated: usize,
    /// Messages sent and never handled, in the order they were sent.
    pub(super) lost: Vec<&'a SentRecord>,
}

impl<'a> Messages<'a> {
    /// Matches sent and handled messages by (partition, seq).
    pub(super) fn tally(sent: &'a [SentRecord], processed: &[ProcessedRecord]) -> Self {
        let mut handled: BTreeMap<(&str, u64), usize> = BTreeMap::new();
        for record in processed {
            let calls = handled.entry((&record.partition, record.seq)).or_default();
            *calls = calls.saturating_add(1);
        }
        let mut sent_in_order: Vec<&SentRecord> = sent.iter().collect();
        sent_in_order.sort_by_key(|record| record.at_ns);
        let mut seen = BTreeSet::new();
        let distinct: Vec<&SentRecord> = sent_in_order
            .into_iter()
            .filter(|record| seen.insert((record.partition.as_str(), record.seq)))
            .collect();
        Messages {
            sent: distinct.len(),
            handled: handled.len(),
            duplicated: handled.values().filter(|&&calls| calls > 1).count(),
            lost: distinct
                .into_iter()
                .filter(|record| !handled.contains_key(&(record.partition.as_str(), record.seq)))
                .collect(),
        }
    }
}

/// Per source, in time order, a version lower than the highest seen before. Sources are the
/// observers' (`history.versions`) and each instance's applied versions.
///
/// Version 0 is not a publication: it is the `cluster` record a leader writes to announce the
/// cold-start window of a bucket that has no commit (and no trace of one), and it commits no
/// map. It is not compared; the first real publish after it is, against everything before.
/// (That the leader never writes it over published state is checked where it is written:
/// `a_version_0_announcement_is_never_written_over_published_state` in the publisher.)
pub(super) fn version_regressions(
    timeline: &Timeline<'_>,
    versions: &[VersionRecord],
) -> Vec<Violation> {
    let mut by_source: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for record in versions.iter().filter(|r| r.version > 0) {
        let seen = (record.at_ns, record.version);
        by_source.entry(&record.source).or_default().push(seen);
    }
    for applied in &timeline.applied {
        let seen = (applied.at_ns, applied.version);
        by_source.entry(applied.instance).or_default().push(seen);
    }
    let mut violations = Vec::new();
    for (source, mut seen) in by_source {
        seen.sort_by_key(|&(at_ns, _)| at_ns);
        let mut highest: Option<(u64, u64)> = None;
        for (at_ns, version) in seen {
            match highest {
                Some((highest_before, highest_at_ns)) if version < highest_before => {
                    violations.push(Violation::VersionRegression {
                        source: source.to_owned(),
                        at_ns,
                        version,
                        highest_before,
                        highest_at_ns,
                    });
                }
                Some((highest_before, _)) if version == highest_before => {}
                _ => highest = Some((version, at_ns)),
            }
        }
    }
    violations
}
