//! Hand-written histories, one per rule, each failing if its rule were removed.

use std::cmp::Reverse;

use parti::WorkerId;
use proptest::prelude::*;

use super::load::parse_jsonl;
use super::rules::{excuse, unheld};
use super::*;
use crate::TestkitError;

// ---- building histories -------------------------------------------------------------------

fn record(at_ns: u64, instance: &str, event: OwnershipEvent) -> OwnershipRecord {
    OwnershipRecord::new(
        at_ns,
        WorkerId::new(format!("w-{instance}")),
        instance,
        event,
    )
}

fn hold(at_ns: u64, instance: &str, partition: &str, epoch: u64, until: u64) -> OwnershipRecord {
    let event = OwnershipEvent::Hold {
        partition: partition.into(),
        epoch,
        valid_until_ns: until,
    };
    record(at_ns, instance, event)
}

fn release(at_ns: u64, instance: &str, partition: &str, epoch: u64) -> OwnershipRecord {
    let event = OwnershipEvent::Release {
        partition: partition.into(),
        epoch,
    };
    record(at_ns, instance, event)
}

fn extend(at_ns: u64, instance: &str, until: u64) -> OwnershipRecord {
    let event = OwnershipEvent::Extend {
        valid_until_ns: until,
    };
    record(at_ns, instance, event)
}

fn applied(at_ns: u64, instance: &str, version: u64) -> OwnershipRecord {
    record(at_ns, instance, OwnershipEvent::Applied { version })
}

fn processed(at_ns: u64, instance: &str, partition: &str, seq: u64) -> ProcessedRecord {
    ProcessedRecord {
        at_ns,
        worker: format!("w-{instance}"),
        instance: instance.into(),
        partition: partition.into(),
        seq,
    }
}

fn sent(at_ns: u64, partition: &str, seq: u64) -> SentRecord {
    SentRecord {
        at_ns,
        partition: partition.into(),
        seq,
    }
}

fn kill(at_ns: u64, instance: &str) -> FaultRecord {
    FaultRecord {
        kind: "kill".into(),
        worker: Some(format!("w-{instance}")),
        instance: Some(instance.into()),
        start_ns: at_ns,
        end_ns: at_ns,
        ends_process: true,
    }
}

fn fault(kind: &str, start_ns: u64, end_ns: u64) -> FaultRecord {
    FaultRecord {
        kind: kind.into(),
        worker: None,
        instance: None,
        start_ns,
        end_ns,
        ends_process: false,
    }
}

/// Ownership only, ending at 10 000, no gap check.
fn history(ownership: Vec<OwnershipRecord>) -> History {
    History {
        ownership,
        window: (0, 10_000),
        ..History::default()
    }
}

fn strict() -> CheckConfig {
    config(0)
}

fn config(tolerance_ns: u64) -> CheckConfig {
    CheckConfig {
        tolerance_ns,
        gap_bound_ns: 1_000,
    }
}

fn span(from_ns: u64, to_ns: u64) -> Span {
    Span { from_ns, to_ns }
}

fn holding_ref(
    instance: &str,
    epoch: u64,
    held_at_ns: u64,
    released_at_ns: Option<u64>,
    segment: Span,
    ended_by: SegmentEnd,
) -> HoldingRef {
    HoldingRef {
        instance: instance.into(),
        worker: format!("w-{instance}"),
        epoch,
        held_at_ns,
        released_at_ns,
        segment,
        ended_by,
    }
}

// ---- a clean history ----------------------------------------------------------------------

/// Hand-offs with the release before the hold, extends in time, a kill followed by a new
/// holder after the dead process's deadline, a gap within the bound after that fault,
/// duplicates, versions that only go up.
fn clean_history() -> History {
    History {
        ownership: vec![
            applied(100, "i1", 1),
            hold(100, "i1", "p", 1, 1_100),
            hold(100, "i1", "q", 1, 1_100),
            extend(1_000, "i1", 2_100),
            extend(2_000, "i1", 3_100),
            // Hand-off of p to i2: release, then hold, at the same instant.
            applied(2_500, "i1", 2),
            release(2_500, "i1", "p", 1),
            applied(2_500, "i2", 2),
            hold(2_500, "i2", "p", 2, 3_500),
            extend(3_400, "i2", 10_500),
            // i1 is killed at 2 800 while holding q (lease until 3 100); i3 takes q after that.
            applied(3_100, "i3", 3),
            hold(3_100, "i3", "q", 3, 10_500),
        ],
        processed: vec![
            processed(500, "i1", "p", 1),
            processed(2_500, "i1", "p", 5),
            processed(2_600, "i2", "p", 2),
            processed(2_700, "i2", "p", 2),
            processed(2_700, "i1", "q", 4),
            processed(3_200, "i3", "q", 3),
        ],
        sent: vec![
            sent(400, "p", 1),
            sent(2_400, "p", 5),
            sent(2_550, "p", 2),
            sent(2_650, "q", 4),
            sent(3_150, "q", 3),
        ],
        faults: vec![kill(2_800, "i1")],
        versions: vec![
            VersionRecord {
                at_ns: 50,
                source: "cluster".into(),
                version: 1,
            },
            VersionRecord {
                at_ns: 2_400,
                source: "cluster".into(),
                version: 2,
            },
        ],
        partitions: vec!["p".into(), "q".into()],
        window: (100, 10_000),
    }
}

#[test]
fn a_clean_history_reports_no_violation() {
    let report = check(&clean_history(), &config(0));
    assert!(report.is_clean(), "{report}");
    let counts = report.counts;
    assert_eq!(counts.holdings, 4);
    assert_eq!(counts.instances, 3);
    assert_eq!(counts.partitions, 2);
    assert_eq!(counts.messages_sent, 5);
    assert_eq!(counts.messages_handled, 5);
    assert_eq!(counts.handler_calls, 6);
    assert_eq!(counts.messages_duplicated, 1);
    assert_eq!(counts.messages_lost, 0);
    assert_eq!(counts.faults, 1);
}

#[test]
fn the_clean_history_has_a_gap_only_the_bound_excuses() {
    // q is unheld from the kill (2 800) until i3 holds it (3 100): 300 ns after the fault.
    let tight = CheckConfig {
        tolerance_ns: 0,
        gap_bound_ns: 299,
    };
    let report = check(&clean_history(), &tight);
    assert_eq!(
        report.violations,
        [Violation::Gap {
            partition: "q".into(),
            unheld: span(2_800, 3_100),
            excused_until_ns: 2_800,
            fault: Some(kill(2_800, "i1")),
        }]
    );
}

#[test]
fn record_order_in_the_input_does_not_matter() {
    let mut shuffled = clean_history();
    // Latest first, keeping the file order of records with equal timestamps.
    shuffled.ownership.sort_by_key(|r| Reverse(r.at_ns));
    shuffled.processed.reverse();
    shuffled.sent.reverse();
    assert_eq!(
        check(&shuffled, &strict()),
        check(&clean_history(), &strict())
    );
}

#[test]
fn equal_timestamps_keep_file_order() {
    // Release then re-hold at one instant: held on. Reversed, the release would end the new
    // holding and the message at 600 would be handled without holding.
    let mut history = history(vec![
        hold(0, "i1", "p", 1, 20_000),
        release(500, "i1", "p", 1),
        hold(500, "i1", "p", 2, 20_000),
    ]);
    history.processed = vec![processed(600, "i1", "p", 1)];
    assert!(check(&history, &strict()).is_clean());
    history.ownership.swap(1, 2);
    assert!(!check(&history, &strict()).is_clean());
}

// ---- one history per violation ------------------------------------------------------------

#[test]
fn overlap_is_two_instances_holding_at_once() {
    let history = history(vec![
        hold(0, "i1", "p", 1, 1_000),
        hold(500, "i2", "p", 2, 2_000),
    ]);
    let report = check(&history, &strict());
    assert_eq!(
        report.violations,
        [Violation::Overlap {
            partition: "p".into(),
            first: holding_ref("i1", 1, 0, None, span(0, 1_000), SegmentEnd::LeaseExpired),
            second: holding_ref(
                "i2",
                2,
                500,
                None,
                span(500, 2_000),
                SegmentEnd::LeaseExpired
            ),
            overlap: span(500, 1_000),
        }]
    );
}

#[test]
fn extends_in_time_keep_a_holding_and_one_instance_does_not_overlap_itself() {
    // Without i1's extend, its holding would end at 1 000, before i2's starts.
    let mut ownership = vec![
        hold(0, "i1", "p", 1, 1_000),
        extend(900, "i1", 3_000),
        hold(2_000, "i2", "p", 2, 4_000),
    ];
    let report = check(&history(ownership.clone()), &strict());
    assert!(matches!(
        report.violations.as_slice(),
        [Violation::Overlap { overlap, .. }] if *overlap == span(2_000, 3_000)
    ));
    // The same instance re-holding (its process re-claimed a new worker ID) is no overlap.
    ownership[2] = hold(2_000, "i1", "p", 2, 4_000);
    assert!(check(&history(ownership), &strict()).is_clean());
}

#[test]
fn a_kill_ends_the_holdings_of_its_process() {
    let mut history = history(vec![
        hold(0, "i1", "p", 1, 1_000),
        hold(500, "i2", "p", 2, 2_000),
        // Stamped after the kill: ignored.
        release(900, "i1", "p", 1),
    ]);
    history.faults = vec![kill(400, "i1")];
    let report = check(&history, &strict());
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.counts.records_after_kill, 1);
    history.faults.clear();
    assert!(!check(&history, &strict()).is_clean());
}

#[test]
fn revived_is_an_extend_after_the_lease_lapsed() {
    let history = history(vec![
        hold(0, "i1", "p", 1, 1_000),
        hold(0, "i1", "q", 1, 1_000),
        release(500, "i1", "q", 1),
        hold(1_200, "i2", "p", 2, 3_000),
        extend(1_500, "i1", 2_500),
    ]);
    let report = check(&history, &strict());
    assert_eq!(
        report.violations,
        [
            Violation::Revived {
                instance: "i1".into(),
                worker: "w-i1".into(),
                lapsed_at_ns: 1_000,
                extended_at_ns: 1_500,
                valid_until_ns: 2_500,
                holdings: 1,
                partitions: vec!["p".into()],
            },
            // The revived holding overlaps the new holder's.
            Violation::Overlap {
                partition: "p".into(),
                first: holding_ref(
                    "i2",
                    2,
                    1_200,
                    None,
                    span(1_200, 3_000),
                    SegmentEnd::LeaseExpired
                ),
                second: holding_ref(
                    "i1",
                    1,
                    0,
                    None,
                    span(1_500, 2_500),
                    SegmentEnd::LeaseExpired
                ),
                overlap: span(1_500, 2_500),
            },
        ]
    );
}

#[test]
fn no_lease_is_a_hold_valid_only_until_its_start_or_before() {
    let history = history(vec![
        hold(100, "i1", "p", 1, 100),
        hold(100, "i1", "q", 1, 101),
    ]);
    let report = check(&history, &strict());
    assert_eq!(
        report.violations,
        [Violation::NoLease {
            instance: "i1".into(),
            worker: "w-i1".into(),
            partition: "p".into(),
            epoch: 1,
            at_ns: 100,
            valid_until_ns: 100,
        }]
    );
}

#[test]
fn epochs_must_increase_from_one_holder_to_the_next() {
    let history = history(vec![
        hold(0, "i1", "p", 5, 1_000),
        release(400, "i1", "p", 5),
        hold(500, "i2", "p", 5, 2_000),
        release(2_000, "i2", "p", 5),
        hold(2_000, "i1", "p", 6, 3_000),
    ]);
    let report = check(&history, &strict());
    assert_eq!(
        report.violations,
        [Violation::EpochNotIncreasing {
            partition: "p".into(),
            previous: holding_ref("i1", 5, 0, Some(400), span(0, 400), SegmentEnd::Release),
            next: holding_ref(
                "i2",
                5,
                500,
                Some(2_000),
                span(500, 2_000),
                SegmentEnd::Release
            ),
        }]
    );
}

#[test]
fn a_gap_counts_from_the_end_of_the_faults_before_it() {
    let mut history = history(vec![
        hold(0, "i1", "p", 1, 20_000),
        release(1_000, "i1", "p", 1),
        hold(4_000, "i2", "p", 2, 20_000),
        hold(0, "i3", "q", 1, 20_000),
    ]);
    history.partitions = vec!["p".into(), "q".into()];
    let pause = fault("pause", 900, 2_000);
    let late = fault("cut", 5_000, 9_000); // starts after the gap: excuses nothing
    history.faults = vec![pause.clone(), late];
    let bound = |gap_bound_ns| CheckConfig {
        tolerance_ns: 0,
        gap_bound_ns,
    };
    // Unheld [1 000, 4 000); excused until 2 000: 2 000 ns too long for a bound of 1 500.
    assert_eq!(
        check(&history, &bound(1_500)).violations,
        [Violation::Gap {
            partition: "p".into(),
            unheld: span(1_000, 4_000),
            excused_until_ns: 2_000,
            fault: Some(pause),
        }]
    );
    assert!(check(&history, &bound(2_000)).is_clean());
    // Without the fault the whole gap counts.
    history.faults.clear();
    assert!(!check(&history, &bound(2_500)).is_clean());
}

#[test]
fn a_required_partition_nobody_held_is_one_gap_over_the_window() {
    let mut history = history(vec![]);
    history.partitions = vec!["p".into()];
    history.window = (100, 5_000);
    assert_eq!(
        check(&history, &strict()).violations,
        [Violation::Gap {
            partition: "p".into(),
            unheld: span(100, 5_000),
            excused_until_ns: 100,
            fault: None,
        }]
    );
}

#[test]
fn unheld_is_the_window_minus_the_spans() {
    let spans = [
        span(0, 10),
        span(5, 20),
        span(30, 40),
        span(35, 38),
        span(50, 50),
    ];
    assert_eq!(unheld(&spans, span(8, 45)), [span(20, 30), span(40, 45)]);
    assert_eq!(unheld(&spans, span(12, 18)), []);
    assert_eq!(unheld(&[], span(3, 4)), [span(3, 4)]);
    assert_eq!(unheld(&[span(0, 100)], span(0, 0)), []);
}

#[test]
fn the_latest_ending_fault_before_a_gap_ends_excuses_it() {
    let faults = [fault("a", 0, 50), fault("b", 10, 70), fault("c", 100, 500)];
    assert_eq!(excuse(span(60, 100), &faults), (70, faults.get(1)));
    assert_eq!(excuse(span(80, 100), &faults), (80, None));
    assert_eq!(excuse(span(80, 101), &faults), (500, faults.get(2)));
}

#[test]
fn processing_needs_a_holding_of_the_partition() {
    let mut history = history(vec![
        hold(0, "i1", "p", 1, 5_000),
        release(1_000, "i1", "p", 1),
        hold(3_000, "i1", "p", 2, 5_000),
    ]);
    history.processed = vec![
        processed(500, "i1", "p", 1),
        processed(1_000, "i1", "p", 2), // at the release itself: fine
        processed(1_500, "i1", "p", 3),
        processed(600, "i2", "p", 4),
    ];
    let nearest = holding_ref("i1", 1, 0, Some(1_000), span(0, 1_000), SegmentEnd::Release);
    assert_eq!(
        check(&history, &strict()).violations,
        [
            Violation::ProcessedWithoutHolding {
                record: processed(600, "i2", "p", 4),
                nearest: None,
            },
            Violation::ProcessedWithoutHolding {
                record: processed(1_500, "i1", "p", 3),
                nearest: Some(nearest),
            },
        ]
    );
}

#[test]
fn a_message_sent_and_never_handled_is_lost() {
    let mut history = history(vec![hold(0, "i1", "p", 1, 20_000)]);
    history.sent = vec![sent(10, "p", 1), sent(20, "p", 2), sent(30, "p", 3)];
    history.processed = vec![
        processed(40, "i1", "p", 1),
        processed(50, "i1", "p", 3),
        processed(60, "i1", "p", 3),
    ];
    let report = check(&history, &strict());
    assert_eq!(
        report.violations,
        [Violation::Lost {
            record: sent(20, "p", 2)
        }]
    );
    assert_eq!(report.counts.messages_lost, 1);
    assert_eq!(report.counts.messages_duplicated, 1);
}

#[test]
fn versions_never_go_back_per_source() {
    let seen = |at_ns, version| VersionRecord {
        at_ns,
        source: "cluster".into(),
        version,
    };
    let mut history = history(vec![
        applied(20, "i1", 4),
        applied(10, "i1", 5),
        applied(15, "i1", 5),
        // A new process starts fresh.
        applied(50, "i2", 1),
    ]);
    history.versions = vec![seen(30, 2), seen(10, 1), seen(20, 3)];
    assert_eq!(
        check(&history, &strict()).violations,
        [
            Violation::VersionRegression {
                source: "i1".into(),
                at_ns: 20,
                version: 4,
                highest_before: 5,
                highest_at_ns: 10,
            },
            Violation::VersionRegression {
                source: "cluster".into(),
                at_ns: 30,
                version: 2,
                highest_before: 3,
                highest_at_ns: 20,
            },
        ]
    );
}

#[test]
fn a_version_0_announcement_is_no_regression_but_a_lower_publish_after_it_is() {
    let seen = |at_ns, version| VersionRecord {
        at_ns,
        source: "cluster".into(),
        version,
    };
    let mut history = history(vec![]);
    // The bucket was recreated: its first record announces the cold start (version 0), then a
    // publish above everything before.
    history.versions = vec![seen(10, 7), seen(20, 0), seen(30, 9)];
    assert!(check(&history, &strict()).is_clean());
    // The same, but the publish after it went back.
    history.versions = vec![seen(10, 7), seen(20, 0), seen(30, 3)];
    assert_eq!(
        check(&history, &strict()).violations,
        [Violation::VersionRegression {
            source: "cluster".into(),
            at_ns: 30,
            version: 3,
            highest_before: 7,
            highest_at_ns: 10,
        }]
    );
}

// ---- tolerance ----------------------------------------------------------------------------

#[test]
fn tolerance_excuses_up_to_its_length_and_no_more() {
    // Overlap of exactly 100 ns.
    let overlap = history(vec![
        hold(0, "i1", "p", 1, 1_000),
        hold(900, "i2", "p", 2, 2_000),
    ]);
    assert!(check(&overlap, &config(100)).is_clean());
    assert!(!check(&overlap, &config(99)).is_clean());

    // Processing 100 ns after the holding ended.
    let mut late = history(vec![
        hold(0, "i1", "p", 1, 2_000),
        release(1_000, "i1", "p", 1),
    ]);
    late.processed = vec![processed(1_100, "i1", "p", 1)];
    assert!(check(&late, &config(100)).is_clean());
    assert!(!check(&late, &config(99)).is_clean());

    // Extending 100 ns after the deadline.
    let lapsed = history(vec![
        hold(0, "i1", "p", 1, 1_000),
        extend(1_100, "i1", 2_000),
    ]);
    assert!(check(&lapsed, &config(100)).is_clean());
    assert!(matches!(
        check(&lapsed, &config(99)).violations.as_slice(),
        [Violation::Revived { .. }]
    ));
}

// ---- odds and ends ------------------------------------------------------------------------

#[test]
fn a_release_of_a_partition_not_held_is_only_counted() {
    let history = history(vec![release(10, "i1", "p", 1)]);
    let report = check(&history, &strict());
    assert!(report.is_clean());
    assert_eq!(report.counts.unmatched_releases, 1);
}

#[test]
fn the_report_reads_as_json_and_as_text() {
    let history = history(vec![
        hold(0, "i1", "p", 1, 1_000),
        hold(500, "i2", "p", 2, 2_000),
    ]);
    let report = check(&history, &strict());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["violations"][0]["kind"], "overlap");
    assert_eq!(json["violations"][0]["first"]["heldAtNs"], 0);
    assert_eq!(json["violations"][0]["first"]["endedBy"], "leaseExpired");
    assert_eq!(json["violations"][0]["overlap"]["fromNs"], 500);
    assert_eq!(json["counts"]["messagesDuplicated"], 0);
    assert_eq!(serde_json::from_value::<Report>(json).unwrap(), report);

    let text = report.to_string();
    assert!(
        text.starts_with("ownership check: 1 violation(s)\n"),
        "{text}"
    );
    assert!(
        text.contains("overlap on p during [500, 1000) (500ns): instance i1"),
        "{text}"
    );
    let clean = check(&History::default(), &strict()).to_string();
    assert!(clean.starts_with("ownership check: clean\n"), "{clean}");
}

// ---- loading logs -------------------------------------------------------------------------

const TWO_RECORDS: &str = concat!(
    r#"{"atNs":5,"worker":"w","instance":"i","event":"hold","partition":"p","epoch":1,"validUntilNs":9}"#,
    "\n\n",
    r#"{"atNs":6,"worker":"w","instance":"i","event":"extend","validUntilNs":10}"#,
    "\n",
);

#[test]
fn jsonl_skips_a_last_line_cut_short() {
    let text = format!("{TWO_RECORDS}{{\"atNs\":7,\"worker\":\"w\",\"inst");
    let file = parse_jsonl::<OwnershipRecord>(text.as_bytes()).unwrap();
    assert_eq!(file.records.len(), 2);
    assert!(file.truncated_tail);
    assert_eq!(
        file.records.get(1).map(|r| &r.event),
        Some(&OwnershipEvent::Extend { valid_until_ns: 10 })
    );

    let whole = parse_jsonl::<OwnershipRecord>(TWO_RECORDS.as_bytes()).unwrap();
    assert_eq!(whole.records, file.records);
    assert!(!whole.truncated_tail);
}

#[test]
fn jsonl_names_the_file_and_line_of_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.jsonl");
    let garbage = TWO_RECORDS.replacen("\n\n", "\nnot json\n", 1);
    std::fs::write(&path, garbage).unwrap();
    let err = read_jsonl::<OwnershipRecord>(&path).unwrap_err();
    assert!(
        matches!(&err, TestkitError::Jsonl { line: 2, path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: ", path.display())),
        "{err}"
    );

    // A complete last line (newline-terminated) that does not decode is an error too.
    std::fs::write(&path, format!("{TWO_RECORDS}{{\"atNs\":\n")).unwrap();
    let err = read_jsonl::<OwnershipRecord>(&path).unwrap_err();
    assert!(
        matches!(err, TestkitError::Jsonl { line: 4, .. }),
        "{err:?}"
    );

    let missing = read_jsonl::<SentRecord>(&dir.path().join("none.jsonl")).unwrap_err();
    assert!(matches!(missing, TestkitError::Io { .. }), "{missing:?}");
}

#[test]
fn jsonl_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.jsonl");
    std::fs::write(&path, format!("{TWO_RECORDS}{{\"atNs\":7")).unwrap();
    let file = load_jsonl::<OwnershipRecord>(&path).unwrap();
    assert_eq!(file.records.len(), 2);
    assert!(file.truncated_tail);
    assert_eq!(read_jsonl::<OwnershipRecord>(&path).unwrap(), file.records);
}

// ---- any input ----------------------------------------------------------------------------

fn any_ns() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..2_000u64, 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1)]
}

fn any_name(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(names).prop_map(String::from)
}

fn any_ownership() -> impl Strategy<Value = OwnershipRecord> {
    let partition = || any_name(&["p", "q"]);
    let event = prop_oneof![
        (partition(), any_ns(), any_ns()).prop_map(|(partition, epoch, valid_until_ns)| {
            OwnershipEvent::Hold {
                partition,
                epoch,
                valid_until_ns,
            }
        }),
        (partition(), any_ns())
            .prop_map(|(partition, epoch)| OwnershipEvent::Release { partition, epoch }),
        any_ns().prop_map(|valid_until_ns| OwnershipEvent::Extend { valid_until_ns }),
        any_ns().prop_map(|version| OwnershipEvent::Applied { version }),
    ];
    (any_ns(), any_name(&["a", "b", "c"]), event)
        .prop_map(|(at_ns, instance, event)| record(at_ns, &instance, event))
}

fn any_history() -> impl Strategy<Value = History> {
    let processed = (
        any_ns(),
        any_name(&["a", "b"]),
        any_name(&["p", "q"]),
        0..5u64,
    )
        .prop_map(|(at, instance, partition, seq)| processed(at, &instance, &partition, seq));
    let sent = (any_ns(), any_name(&["p", "q"]), 0..5u64)
        .prop_map(|(at, partition, seq)| sent(at, &partition, seq));
    let faults = (any_ns(), any_ns(), any::<bool>(), any_name(&["a", "b"])).prop_map(
        |(start_ns, end_ns, ends_process, instance)| FaultRecord {
            ends_process,
            instance: Some(instance),
            ..fault("f", start_ns, end_ns)
        },
    );
    let versions =
        (any_ns(), any_name(&["cluster", "a"]), any_ns()).prop_map(|(at_ns, source, version)| {
            VersionRecord {
                at_ns,
                source,
                version,
            }
        });
    (
        prop::collection::vec(any_ownership(), 0..40),
        prop::collection::vec(processed, 0..10),
        prop::collection::vec(sent, 0..10),
        prop::collection::vec(faults, 0..4),
        prop::collection::vec(versions, 0..6),
        (any_ns(), any_ns()),
    )
        .prop_map(
            |(ownership, processed, sent, faults, versions, window)| History {
                ownership,
                processed,
                sent,
                faults,
                versions,
                partitions: vec!["p".into(), "q".into()],
                window,
            },
        )
}

proptest! {
    #[test]
    fn any_history_is_judged_without_panic_and_deterministically(
        history in any_history(),
        tolerance_ns in any_ns(),
        gap_bound_ns in any_ns(),
    ) {
        let config = CheckConfig { tolerance_ns, gap_bound_ns };
        let report = check(&history, &config);
        prop_assert_eq!(&report, &check(&history, &config));
        prop_assert!(!report.to_string().is_empty());
        let times: Vec<u64> = report.violations.iter().map(Violation::at_ns).collect();
        prop_assert!(times.is_sorted());
    }

    #[test]
    fn any_bytes_load_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_jsonl::<OwnershipRecord>(&bytes);
    }
}

#[test]
fn hand_off_gaps_are_measured_from_release_to_the_next_hold() {
    let history = History {
        ownership: vec![
            hold(0, "a", "p", 1, 1_000),
            release(10, "a", "p", 1),
            hold(15, "b", "p", 2, 1_000),
            hold(0, "a", "q", 1, 1_000),
            release(20, "a", "q", 1),
            hold(60, "b", "q", 3, 1_000),
            // A kill is not a hand-off.
            hold(0, "c", "r", 1, 1_000),
            hold(900, "b", "r", 4, 1_000),
        ],
        faults: vec![kill(100, "c")],
        window: (0, 0),
        ..History::default()
    };
    let report = check(
        &history,
        &CheckConfig {
            tolerance_ns: 0,
            gap_bound_ns: u64::MAX,
        },
    );
    assert_eq!(report.counts.handoffs, 2);
    assert_eq!(report.counts.handoff_gap_median_ns, 40);
    assert_eq!(report.counts.handoff_gap_max_ns, 40);
}
