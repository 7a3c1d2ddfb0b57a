//! Recovery times: after each fault, how long until every partition was held again.
//!
//! Read from the same evidence as the checker and the same way: a holding runs from its
//! `hold` to the earliest of its `release`, its lease deadline (pushed by `extend` records
//! that arrive in time; a late one starts a new stretch), and the kill of its process. A
//! partition is *covered* while some holding of it runs. Pure: records in, spans out.

use std::collections::BTreeMap;

use parti::ownership::{OwnershipEvent, OwnershipRecord};
use parti_testkit::checker::FaultRecord;
use serde::Serialize;

/// `[from, to)` in Unix ns.
type Span = (u64, u64);

/// How a fault's effect on coverage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub(crate) enum Recovery {
    /// Every partition stayed held.
    NoGap,
    /// Partitions went unheld; all were held again this long after the fault started.
    Recovered {
        /// From the fault's start until the last gap it opened closed.
        after_ms: u64,
    },
    /// A partition was still unheld when the run began to stop.
    NotRecovered,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoGap => f.write_str("no gap"),
            Self::Recovered { after_ms } => write!(f, "{:.1} s", *after_ms as f64 / 1000.0),
            Self::NotRecovered => f.write_str("NOT RECOVERED"),
        }
    }
}

/// The recovery of each fault (same order as `faults`, which must be in start order): the
/// gaps in coverage that open between its start and the next fault's (or the window's end),
/// measured until the last of them closes.
pub(crate) fn recoveries(
    ownership: &[OwnershipRecord],
    faults: &[FaultRecord],
    partitions: &[String],
    window: Span,
) -> Vec<Recovery> {
    let gaps = uncovered(ownership, faults, partitions, window);
    faults
        .iter()
        .enumerate()
        .map(|(i, fault)| {
            let until = faults.get(i + 1).map_or(window.1, |next| next.start_ns);
            let opened: Vec<&Span> = gaps
                .iter()
                .filter(|(from, _)| {
                    *from >= fault.start_ns && *from < until.max(fault.start_ns + 1)
                })
                .collect();
            match opened.iter().map(|(_, to)| *to).max() {
                None => Recovery::NoGap,
                Some(end) if end >= window.1 => Recovery::NotRecovered,
                Some(end) => Recovery::Recovered {
                    after_ms: end.saturating_sub(fault.start_ns) / 1_000_000,
                },
            }
        })
        .collect()
}

/// The spans inside `window` when at least one of `partitions` was not held, merged.
pub(crate) fn uncovered(
    ownership: &[OwnershipRecord],
    faults: &[FaultRecord],
    partitions: &[String],
    window: Span,
) -> Vec<Span> {
    let held = holdings(ownership, faults, window.1);
    let mut gaps: Vec<Span> = Vec::new();
    for partition in partitions {
        let mut covered: Vec<Span> = held.get(partition.as_str()).cloned().unwrap_or_default();
        covered.sort_unstable();
        let mut at = window.0;
        for (from, to) in covered {
            if from > at {
                gaps.push((at, from.min(window.1)));
            }
            at = at.max(to);
            if at >= window.1 {
                break;
            }
        }
        if at < window.1 {
            gaps.push((at, window.1));
        }
    }
    merge(gaps.into_iter().filter(|(from, to)| from < to).collect())
}

/// Partition → the stretches some holding of it ran.
fn holdings<'a>(
    ownership: &'a [OwnershipRecord],
    faults: &[FaultRecord],
    end: u64,
) -> BTreeMap<&'a str, Vec<Span>> {
    let mut by_instance: BTreeMap<&str, Vec<&OwnershipRecord>> = BTreeMap::new();
    for record in ownership {
        by_instance
            .entry(&record.instance)
            .or_default()
            .push(record);
    }
    let mut out: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for (instance, mut records) in by_instance {
        records.sort_by_key(|r| r.at_ns);
        let killed = faults
            .iter()
            .filter(|f| f.ends_process && f.instance.as_deref() == Some(instance))
            .map(|f| f.start_ns)
            .min()
            .unwrap_or(u64::MAX);
        let stop = killed.min(end);
        // Partition → (stretch start, lease deadline).
        let mut open: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut close = |partition: &'a str, from: u64, to: u64| {
            if from < to {
                out.entry(partition).or_default().push((from, to));
            }
        };
        for record in records.into_iter().take_while(|r| r.at_ns <= stop) {
            let at = record.at_ns;
            match &record.event {
                OwnershipEvent::Hold {
                    partition,
                    valid_until_ns,
                    ..
                } => {
                    if let Some((from, until)) = open.insert(partition, (at, *valid_until_ns)) {
                        close(partition, from, until.min(at));
                    }
                }
                OwnershipEvent::Release { partition, .. } => {
                    if let Some((from, until)) = open.remove(partition.as_str()) {
                        close(partition, from, until.min(at));
                    }
                }
                OwnershipEvent::Extend { valid_until_ns } => {
                    for (partition, (from, until)) in open.iter_mut() {
                        if *until < at {
                            close(partition, *from, *until);
                            *from = at;
                        }
                        *until = *valid_until_ns;
                    }
                }
                _ => {}
            }
        }
        for (partition, (from, until)) in open {
            close(partition, from, until.min(stop));
        }
    }
    out
}

/// Sorts and merges overlapping or touching spans.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for (from, to) in spans {
        match out.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use parti::WorkerId;

    use super::*;

    fn record(at: u64, instance: &str, event: OwnershipEvent) -> OwnershipRecord {
        OwnershipRecord::new(at, WorkerId::new("w"), instance, event)
    }

    fn hold(at: u64, instance: &str, partition: &str, until: u64) -> OwnershipRecord {
        record(
            at,
            instance,
            OwnershipEvent::Hold {
                partition: partition.into(),
                epoch: 1,
                valid_until_ns: until,
            },
        )
    }

    fn extend(at: u64, instance: &str, until: u64) -> OwnershipRecord {
        record(
            at,
            instance,
            OwnershipEvent::Extend {
                valid_until_ns: until,
            },
        )
    }

    fn fault(start: u64, instance: Option<&str>, ends_process: bool) -> FaultRecord {
        FaultRecord {
            kind: "kill".into(),
            worker: None,
            instance: instance.map(Into::into),
            start_ns: start,
            end_ns: start,
            ends_process,
        }
    }

    #[test]
    fn a_kill_opens_a_gap_until_the_next_hold() {
        let parts = vec!["a".to_owned(), "b".to_owned()];
        let records = vec![
            hold(0, "i1", "a", 50),
            hold(0, "i2", "b", 50),
            extend(40, "i1", 90),
            extend(40, "i2", 90),
            extend(80, "i2", 200),
            // i1 is killed at 60; i2 takes a over at 75.
            hold(75, "i2", "a", 200),
        ];
        let faults = vec![fault(60, Some("i1"), true), fault(150, None, false)];
        assert_eq!(
            uncovered(&records, &faults, &parts, (0, 200)),
            vec![(60, 75)]
        );
        let r = recoveries(&records, &faults, &parts, (0, 200));
        assert_eq!(r[1], Recovery::NoGap);
        assert!(matches!(r[0], Recovery::Recovered { .. }));
    }

    #[test]
    fn a_lapsed_lease_ends_coverage_and_a_late_extend_restarts_it() {
        let parts = vec!["a".to_owned()];
        let records = vec![hold(0, "i1", "a", 50), extend(70, "i1", 120)];
        let faults = vec![fault(40, Some("i1"), false)];
        assert_eq!(
            uncovered(&records, &faults, &parts, (0, 100)),
            vec![(50, 70)]
        );
        // Never held again after the window: not recovered.
        let records = vec![hold(0, "i1", "a", 50)];
        assert_eq!(
            recoveries(&records, &faults, &parts, (0, 100)),
            vec![Recovery::NotRecovered]
        );
    }

    #[test]
    fn a_release_ends_a_holding_and_spans_merge() {
        let parts = vec!["a".to_owned(), "b".to_owned()];
        let records = vec![
            hold(0, "i1", "a", 100),
            hold(0, "i1", "b", 100),
            record(
                10,
                "i1",
                OwnershipEvent::Release {
                    partition: "a".into(),
                    epoch: 1,
                },
            ),
            record(
                12,
                "i1",
                OwnershipEvent::Release {
                    partition: "b".into(),
                    epoch: 1,
                },
            ),
            hold(20, "i2", "a", 100),
            hold(25, "i2", "b", 100),
        ];
        assert_eq!(merge(vec![(5, 8), (1, 3), (3, 4)]), vec![(1, 4), (5, 8)]);
        assert_eq!(uncovered(&records, &[], &parts, (0, 100)), vec![(10, 25)]);
    }
}
