//! The final report of `parti sim`: a human summary on stdout and the same as JSON
//! (`--json-report`). Field names are snake_case; [`SCHEMA`] is bumped on incompatible changes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::driver::{FaultRecord, Outcome};
use super::observer::Publish;
use crate::render::{age, table};

/// A recovery time: milliseconds below a second, else as [`age`].
fn short(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        age(ms)
    }
}

/// Version of the JSON document.
pub(crate) const SCHEMA: u32 = 1;

/// The report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimReport {
    pub(crate) schema: u32,
    /// True when no invariant failed and no message was lost (the exit code is then 0).
    pub(crate) passed: bool,
    /// `nats` or `memory`.
    pub(crate) transport: &'static str,
    pub(crate) transport_detail: String,
    pub(crate) seed: u64,
    pub(crate) workers: usize,
    pub(crate) partitions: usize,
    /// Messages a second the producer aimed at.
    pub(crate) rate: u32,
    pub(crate) duration_ms: u64,
    pub(crate) elapsed_ms: u64,
    /// From the start until the first convergence.
    pub(crate) cold_start_ms: Option<u64>,
    pub(crate) messages_sent: u64,
    /// Distinct sent messages handled at least once.
    pub(crate) messages_processed: u64,
    pub(crate) messages_lost: u64,
    /// Handlings beyond the first.
    pub(crate) duplicates: u64,
    /// Handled, but the producer never saw the publish acknowledged.
    pub(crate) messages_unconfirmed: u64,
    pub(crate) lost_examples: Vec<String>,
    /// Publishes seen, plus those missed while the observer reconnected (`unobserved`).
    pub(crate) publishes: u64,
    pub(crate) publishes_by_reason: BTreeMap<String, u64>,
    /// Summed over the publishes that could be compared with the previous map.
    pub(crate) partitions_moved: u64,
    pub(crate) partitions_moved_minimum: u64,
    pub(crate) publish_log: Vec<Publish>,
    pub(crate) faults: Vec<FaultRecord>,
    pub(crate) invariant_violations: Vec<String>,
}

/// The run's settings, for the report.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) transport: &'static str,
    pub(crate) transport_detail: String,
    pub(crate) seed: u64,
    pub(crate) workers: usize,
    pub(crate) partitions: usize,
    pub(crate) rate: u32,
    pub(crate) duration_ms: u64,
}

impl SimReport {
    pub(crate) fn build(
        header: Header,
        outcome: Outcome,
        publish_log: Vec<Publish>,
        unobserved: u64,
        invariant_violations: Vec<String>,
    ) -> Self {
        let mut publishes_by_reason: BTreeMap<String, u64> = BTreeMap::new();
        for p in &publish_log {
            *publishes_by_reason.entry(p.reason.clone()).or_default() += 1;
        }
        if unobserved > 0 {
            publishes_by_reason.insert("unobserved".into(), unobserved);
        }
        let tally = outcome.tally;
        Self {
            schema: SCHEMA,
            passed: invariant_violations.is_empty() && tally.lost == 0,
            transport: header.transport,
            transport_detail: header.transport_detail,
            seed: header.seed,
            workers: header.workers,
            partitions: header.partitions,
            rate: header.rate,
            duration_ms: header.duration_ms,
            elapsed_ms: outcome.elapsed_ms,
            cold_start_ms: outcome.cold_start_ms,
            messages_sent: tally.sent,
            messages_processed: tally.processed,
            messages_lost: tally.lost,
            duplicates: tally.duplicates,
            messages_unconfirmed: tally.unconfirmed,
            lost_examples: tally.lost_examples,
            publishes: u64::try_from(publish_log.len()).unwrap_or(u64::MAX) + unobserved,
            publishes_by_reason,
            partitions_moved: publish_log.iter().filter_map(|p| p.moved).sum(),
            partitions_moved_minimum: publish_log.iter().filter_map(|p| p.minimum).sum(),
            publish_log,
            faults: outcome.faults,
            invariant_violations,
        }
    }

    /// The human form.
    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "parti sim: {} workers, {} partitions, {} messages/s, ran {} (seed {})",
            self.workers,
            self.partitions,
            self.rate,
            age(self.elapsed_ms),
            self.seed
        );
        let _ = writeln!(
            out,
            "transport: {} ({})",
            self.transport, self.transport_detail
        );
        if let Some(ms) = self.cold_start_ms {
            let _ = writeln!(out, "cold start converged after {}", short(ms));
        }

        let _ = writeln!(out, "\nassignment publishes: {}", self.publishes);
        let rows: Vec<Vec<String>> = self
            .publish_log
            .iter()
            .map(|p| {
                vec![
                    format!("v{}", p.version),
                    p.term.to_string(),
                    p.reason.clone(),
                    age(p.at_ms),
                    p.workers.to_string(),
                    opt(p.moved),
                    opt(p.minimum),
                ]
            })
            .collect();
        push_indented(
            &mut out,
            &table(
                &[
                    "VERSION", "TERM", "REASON", "AT", "WORKERS", "MOVED", "MINIMUM",
                ],
                &rows,
            ),
        );
        let by_reason: Vec<String> = self
            .publishes_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(out, "  by reason: {}", by_reason.join(", "));
        let _ = writeln!(
            out,
            "  partitions moved: {} (minimum needed: {})",
            self.partitions_moved, self.partitions_moved_minimum
        );

        let _ = writeln!(out, "\nfaults:");
        let rows: Vec<Vec<String>> = self
            .faults
            .iter()
            .map(|f| {
                vec![
                    f.kind.clone(),
                    f.target.clone().unwrap_or_else(|| "-".into()),
                    age(f.at_ms),
                    match (f.recovered_ms, &f.note) {
                        (Some(ms), _) => short(ms),
                        (None, Some(note)) => note.clone(),
                        (None, None) => "NOT RECOVERED".into(),
                    },
                ]
            })
            .collect();
        push_indented(
            &mut out,
            &table(&["FAULT", "TARGET", "AT", "RECOVERED IN"], &rows),
        );

        let _ = writeln!(
            out,
            "\nmessages: sent {}, processed {}, duplicates {}, lost {}",
            self.messages_sent, self.messages_processed, self.duplicates, self.messages_lost
        );
        if self.messages_unconfirmed > 0 {
            let _ = writeln!(
                out,
                "  ({} handled whose publish was never acknowledged)",
                self.messages_unconfirmed
            );
        }
        if !self.lost_examples.is_empty() {
            let _ = writeln!(out, "  lost, e.g.: {}", self.lost_examples.join(" "));
        }

        if self.invariant_violations.is_empty() {
            let _ = writeln!(out, "\ninvariant violations: none");
        } else {
            let _ = writeln!(
                out,
                "\ninvariant violations: {}",
                self.invariant_violations.len()
            );
            for v in &self.invariant_violations {
                let _ = writeln!(out, "  {v}");
            }
        }
        let _ = writeln!(
            out,
            "\nresult: {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        out
    }
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

fn push_indented(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::ledger::Tally;

    fn publish(version: u64, reason: &str, moved: Option<u64>, minimum: Option<u64>) -> Publish {
        Publish {
            version,
            term: 3,
            reason: reason.into(),
            at_ms: version * 1000,
            workers: 4,
            moved,
            minimum,
        }
    }

    fn report(lost: u64, violations: Vec<String>) -> SimReport {
        let header = Header {
            transport: "memory",
            transport_detail: "in-memory".into(),
            seed: 7,
            workers: 4,
            partitions: 200,
            rate: 100,
            duration_ms: 15_000,
        };
        let outcome = Outcome {
            cold_start_ms: Some(2_500),
            faults: vec![FaultRecord {
                kind: "crash".into(),
                target: Some("worker-2".into()),
                at_ms: 5_000,
                recovered_ms: Some(2_100),
                note: None,
            }],
            tally: Tally {
                sent: 10,
                processed: 10 - lost,
                duplicates: 1,
                lost,
                ..Tally::default()
            },
            elapsed_ms: 16_000,
        };
        let log = vec![
            publish(1, "cold_start", None, None),
            publish(2, "emergency", Some(50), Some(50)),
            publish(4, "scale_up", Some(40), Some(38)),
        ];
        SimReport::build(header, outcome, log, 1, violations)
    }

    #[test]
    fn totals_and_reasons_are_summed() {
        let r = report(0, Vec::new());
        assert!(r.passed);
        assert_eq!(r.publishes, 4);
        assert_eq!(
            r.publishes_by_reason,
            BTreeMap::from([
                ("cold_start".into(), 1),
                ("emergency".into(), 1),
                ("scale_up".into(), 1),
                ("unobserved".into(), 1),
            ])
        );
        assert_eq!((r.partitions_moved, r.partitions_moved_minimum), (90, 88));
        let json = serde_json::to_value(&r).unwrap();
        for field in [
            "invariant_violations",
            "messages_sent",
            "messages_processed",
            "messages_lost",
            "duplicates",
            "faults",
            "transport",
            "publishes_by_reason",
            "partitions_moved",
            "partitions_moved_minimum",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["faults"][0]["kind"], "crash");
        assert_eq!(json["faults"][0]["recovered_ms"], 2_100);
        let text = r.human();
        assert!(text.contains("result: PASS"), "{text}");
        assert!(
            text.contains("partitions moved: 90 (minimum needed: 88)"),
            "{text}"
        );
    }

    #[test]
    fn a_lost_message_or_a_violation_fails_the_run() {
        assert!(!report(1, Vec::new()).passed);
        let r = report(0, vec!["two leaders in term 3".into()]);
        assert!(!r.passed);
        assert!(r.human().contains("result: FAIL"));
    }
}
