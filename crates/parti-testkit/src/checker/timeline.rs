//! Replays each instance's ownership records into holdings and their valid segments.

use std::collections::{BTreeMap, BTreeSet};

use super::report::{HoldingRef, SegmentEnd, Span, Violation};
use super::{History, OwnershipEvent, OwnershipRecord};

/// One holding: from an instance's `hold` record to whatever ended it.
#[derive(Debug)]
pub(super) struct Holding<'a> {
    pub(super) instance: &'a str,
    pub(super) worker: &'a str,
    pub(super) partition: &'a str,
    pub(super) epoch: u64,
    pub(super) held_at_ns: u64,
    pub(super) released_at_ns: Option<u64>,
    /// In time order, disjoint; more than one when the holding lapsed and was revived. The
    /// first may be empty (a hold without a valid lease).
    pub(super) segments: Vec<Segment>,
}

/// A stretch of a holding during which it was valid.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment {
    pub(super) span: Span,
    pub(super) ended_by: SegmentEnd,
}

impl Holding<'_> {
    /// The evidence for `segment` of this holding.
    pub(super) fn evidence(&self, segment: &Segment) -> HoldingRef {
        HoldingRef {
            instance: self.instance.to_owned(),
            worker: self.worker.to_owned(),
            epoch: self.epoch,
            held_at_ns: self.held_at_ns,
            released_at_ns: self.released_at_ns,
            segment: segment.span,
            ended_by: segment.ended_by,
        }
    }

    /// The evidence for the holding as a whole: its first segment.
    pub(super) fn first_evidence(&self) -> HoldingRef {
        let empty = Segment {
            span: Span {
                from_ns: self.held_at_ns,
                to_ns: self.held_at_ns,
            },
            ended_by: SegmentEnd::EndOfHistory,
        };
        self.evidence(self.segments.first().unwrap_or(&empty))
    }
}

/// A version an instance applied.
#[derive(Debug, Clone, Copy)]
pub(super) struct Applied<'a> {
    pub(super) instance: &'a str,
    pub(super) at_ns: u64,
    pub(super) version: u64,
}

/// Every instance's holdings, and what replaying the records found on the way.
#[derive(Debug, Default)]
pub(super) struct Timeline<'a> {
    pub(super) holdings: Vec<Holding<'a>>,
    /// `noLease` and `revived` violations, found while replaying.
    pub(super) violations: Vec<Violation>,
    /// Applied versions, per instance in time order.
    pub(super) applied: Vec<Applied<'a>>,
    pub(super) instances: usize,
    pub(super) unmatched_releases: usize,
    pub(super) records_after_kill: usize,
}

impl<'a> Timeline<'a> {
    /// Replays every instance's records, each sorted by time (stable).
    pub(super) fn build(history: &'a History, tolerance_ns: u64) -> Self {
        let end_ns = history_end_ns(history);
        let kills = kills(history);
        let mut by_instance: BTreeMap<&str, Vec<&OwnershipRecord>> = BTreeMap::new();
        for record in &history.ownership {
            by_instance
                .entry(&record.instance)
                .or_default()
                .push(record);
        }
        let mut timeline = Timeline {
            instances: by_instance.len(),
            ..Timeline::default()
        };
        for (instance, mut records) in by_instance {
            records.sort_by_key(|record| record.at_ns);
            let kill_ns = kills.get(instance).copied();
            let mut replay = Replay {
                tolerance_ns,
                out: &mut timeline,
                open: BTreeMap::new(),
            };
            for record in records {
                if kill_ns.is_some_and(|kill| record.at_ns > kill) {
                    replay.out.records_after_kill += 1;
                } else {
                    replay.record(record);
                }
            }
            replay.finish(kill_ns, end_ns);
        }
        timeline
    }

    /// Every non-empty segment, with its holding.
    pub(super) fn segments(&self) -> impl Iterator<Item = (&Holding<'a>, &Segment)> {
        self.holdings.iter().flat_map(|holding| {
            holding
                .segments
                .iter()
                .filter(|segment| segment.span.len_ns() > 0)
                .map(move |segment| (holding, segment))
        })
    }

    /// Distinct partitions, held or `required`.
    pub(super) fn partition_count(&self, required: &[String]) -> usize {
        let held = self.holdings.iter().map(|holding| holding.partition);
        held.chain(required.iter().map(String::as_str))
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// The last instant the history speaks of: holdings still open then end there.
fn history_end_ns(history: &History) -> u64 {
    let times = [
        history.window.1,
        max_of(history.ownership.iter().map(|r| r.at_ns)),
        max_of(history.processed.iter().map(|r| r.at_ns)),
        max_of(history.sent.iter().map(|r| r.at_ns)),
        max_of(history.versions.iter().map(|r| r.at_ns)),
        max_of(history.faults.iter().map(|f| f.start_ns.max(f.end_ns))),
    ];
    max_of(times.into_iter())
}

fn max_of(times: impl Iterator<Item = u64>) -> u64 {
    times.max().unwrap_or(0)
}

/// When each killed instance's process ended (its first kill).
fn kills(history: &History) -> BTreeMap<&str, u64> {
    let mut kills: BTreeMap<&str, u64> = BTreeMap::new();
    let killed = history
        .faults
        .iter()
        .filter(|fault| fault.ends_process)
        .filter_map(|fault| Some((fault.instance.as_deref()?, fault.start_ns)));
    for (instance, at_ns) in killed {
        let first = kills.entry(instance).or_insert(at_ns);
        *first = (*first).min(at_ns);
    }
    kills
}

/// A holding not yet closed, in its current segment.
#[derive(Debug, Clone, Copy)]
struct Open {
    holding: usize,
    from_ns: u64,
    deadline_ns: u64,
}

/// Replays one instance's records, in time order.
struct Replay<'a, 't> {
    tolerance_ns: u64,
    out: &'t mut Timeline<'a>,
    open: BTreeMap<&'a str, Open>,
}

impl<'a> Replay<'a, '_> {
    fn record(&mut self, record: &'a OwnershipRecord) {
        match &record.event {
            OwnershipEvent::Hold {
                partition,
                epoch,
                valid_until_ns,
            } => self.hold(record, partition, *epoch, *valid_until_ns),
            OwnershipEvent::Release { partition, .. } => self.release(record.at_ns, partition),
            OwnershipEvent::Extend { valid_until_ns } => self.extend(record, *valid_until_ns),
            OwnershipEvent::Applied { version } => self.out.applied.push(Applied {
                instance: &record.instance,
                at_ns: record.at_ns,
                version: *version,
            }),
            // Events added later say nothing about holdings yet.
            _ => {}
        }
    }

    fn hold(&mut self, record: &'a OwnershipRecord, partition: &'a str, epoch: u64, until: u64) {
        let at_ns = record.at_ns;
        if let Some(open) = self.open.remove(partition) {
            self.close(open, at_ns, SegmentEnd::Reheld);
        }
        if until <= at_ns {
            self.out.violations.push(Violation::NoLease {
                instance: record.instance.clone(),
                worker: record.worker.to_string(),
                partition: partition.to_owned(),
                epoch,
                at_ns,
                valid_until_ns: until,
            });
        }
        self.open.insert(
            partition,
            Open {
                holding: self.out.holdings.len(),
                from_ns: at_ns,
                deadline_ns: until,
            },
        );
        self.out.holdings.push(Holding {
            instance: &record.instance,
            worker: record.worker.as_str(),
            partition,
            epoch,
            held_at_ns: at_ns,
            released_at_ns: None,
            segments: Vec::new(),
        });
    }

    fn release(&mut self, at_ns: u64, partition: &str) {
        let Some(open) = self.open.remove(partition) else {
            self.out.unmatched_releases += 1;
            return;
        };
        if let Some(holding) = self.out.holdings.get_mut(open.holding) {
            holding.released_at_ns = Some(at_ns);
        }
        self.close(open, at_ns, SegmentEnd::Release);
    }

    /// An extend in time (by the deadline + tolerance) pushes the deadline; a late one revives
    /// every holding whose lease had lapsed, in a new segment.
    fn extend(&mut self, record: &OwnershipRecord, until: u64) {
        let at_ns = record.at_ns;
        let mut lapsed_at_ns = u64::MAX;
        let mut revived = Vec::new();
        for (partition, open) in &mut self.open {
            if at_ns <= open.deadline_ns.saturating_add(self.tolerance_ns) {
                open.deadline_ns = open.deadline_ns.max(until);
                continue;
            }
            let lapsed = open.deadline_ns.max(open.from_ns);
            push_segment(
                &mut self.out.holdings,
                open.holding,
                Span {
                    from_ns: open.from_ns,
                    to_ns: lapsed,
                },
                SegmentEnd::LeaseExpired,
            );
            lapsed_at_ns = lapsed_at_ns.min(lapsed);
            *open = Open {
                from_ns: at_ns,
                deadline_ns: until,
                ..*open
            };
            revived.push((*partition).to_owned());
        }
        if !revived.is_empty() {
            self.out.violations.push(Violation::Revived {
                instance: record.instance.clone(),
                worker: record.worker.to_string(),
                lapsed_at_ns,
                extended_at_ns: at_ns,
                valid_until_ns: until,
                holdings: revived.len(),
                partitions: revived,
            });
        }
    }

    /// Ends `open` at `at_ns` (by `by`), or at its deadline if that came first.
    fn close(&mut self, open: Open, at_ns: u64, by: SegmentEnd) {
        let (to_ns, by) = if open.deadline_ns < at_ns {
            (open.deadline_ns, SegmentEnd::LeaseExpired)
        } else {
            (at_ns, by)
        };
        let span = Span {
            from_ns: open.from_ns,
            to_ns: to_ns.max(open.from_ns),
        };
        push_segment(&mut self.out.holdings, open.holding, span, by);
    }

    /// Ends what is still open: at the kill of the process, else at the end of the history.
    fn finish(mut self, kill_ns: Option<u64>, end_ns: u64) {
        let (at_ns, by) = match kill_ns {
            Some(kill_ns) => (kill_ns, SegmentEnd::ProcessKilled),
            None => (end_ns, SegmentEnd::EndOfHistory),
        };
        for open in std::mem::take(&mut self.open).into_values() {
            self.close(open, at_ns, by);
        }
    }
}

fn push_segment(holdings: &mut [Holding<'_>], holding: usize, span: Span, ended_by: SegmentEnd) {
    if let Some(holding) = holdings.get_mut(holding) {
        holding.segments.push(Segment { span, ended_by });
    }
}
