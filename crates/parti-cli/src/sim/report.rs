//! The final report of `parti sim`: a human summary on stdout and the same as JSON
//! (`--json-report`). Field names are snake_case (but inside `check`, the ownership checker's
//! own report, camelCase); [`SCHEMA`] is bumped on incompatible changes.
//!
//! The message figures come from the checker's counts; the run passes when the checker found
//! no violation and none of the sim's own checks (recovery, convergence, terms, the published
//! maps) failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use parti_testkit::checker::{Report, Violation};
use serde::Serialize;

use super::driver::{FaultLine, Outcome};
use super::shared::Publish;
use crate::text::{age, table};

/// A recovery time: milliseconds below a second, else as [`age`].
fn short(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        age(ms)
    }
}

/// Version of the JSON document (2: the ownership checker's report, message figures from it).
pub(crate) const SCHEMA: u32 = 2;

/// Lost messages named in [`SimReport::lost_examples`].
const LOST_EXAMPLES: usize = 10;

/// Lines of the checker's own report shown in the text report (one per violation).
const CHECK_LINES_SHOWN: usize = 30;

/// The report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimReport {
    /// [`SCHEMA`].
    pub(crate) schema: u32,
    /// True when the ownership checker found nothing and no other check failed (the exit code
    /// is then 0).
    pub(crate) passed: bool,
    /// `nats` or `memory`.
    pub(crate) transport: &'static str,
    /// What exactly the transport was.
    pub(crate) transport_detail: String,
    /// The schedule's seed.
    pub(crate) seed: u64,
    /// Workers at the start.
    pub(crate) workers: usize,
    /// Partitions.
    pub(crate) partitions: usize,
    /// Messages a second the producer aimed at.
    pub(crate) rate: u32,
    /// How long the producer ran.
    pub(crate) duration_ms: u64,
    /// Wall time of the run.
    pub(crate) elapsed_ms: u64,
    /// From the start until the first convergence.
    pub(crate) cold_start_ms: Option<u64>,
    /// Distinct messages sent (acknowledged to the producer).
    pub(crate) messages_sent: u64,
    /// Distinct sent messages handled at least once.
    pub(crate) messages_processed: u64,
    /// Sent, never handled (each one a `lost` violation of the checker).
    pub(crate) messages_lost: u64,
    /// Messages handled more than once (allowed: delivery is at least once).
    pub(crate) duplicates: u64,
    /// Handled, but the producer never saw the publish acknowledged.
    pub(crate) messages_unconfirmed: u64,
    /// A few lost messages, `{partition}#{seq}`.
    pub(crate) lost_examples: Vec<String>,
    /// Publishes seen, plus those missed while the observer reconnected (`unobserved`).
    pub(crate) publishes: u64,
    /// Publishes by their reason.
    pub(crate) publishes_by_reason: BTreeMap<String, u64>,
    /// Summed over the publishes that could be compared with the previous map.
    pub(crate) partitions_moved: u64,
    /// The fewest moves those publishes needed.
    pub(crate) partitions_moved_minimum: u64,
    /// Every publish seen.
    pub(crate) publish_log: Vec<Publish>,
    /// Every fault injected.
    pub(crate) faults: Vec<FaultLine>,
    /// Failures of the sim's own checks (recovery, convergence, terms, published maps).
    pub(crate) invariant_violations: Vec<String>,
    /// The checker's slack for processing near a holding's edges and overlaps.
    pub(crate) tolerance_ms: u64,
    /// The longest a partition may stay unheld after a fault healed.
    pub(crate) gap_bound_ms: u64,
    /// The checker's violations by kind (`overlap`, `gap`, `lost`, …).
    pub(crate) ownership_violations_by_kind: BTreeMap<String, usize>,
    /// The ownership checker's report.
    pub(crate) check: Report,
}

/// The run's settings, for the report.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// `nats` or `memory`.
    pub(crate) transport: &'static str,
    /// What exactly the transport was.
    pub(crate) transport_detail: String,
    /// The schedule's seed.
    pub(crate) seed: u64,
    /// Workers at the start.
    pub(crate) workers: usize,
    /// Partitions.
    pub(crate) partitions: usize,
    /// Messages a second.
    pub(crate) rate: u32,
    /// How long the producer ran.
    pub(crate) duration_ms: u64,
    /// The checker's tolerance.
    pub(crate) tolerance_ms: u64,
    /// The checker's gap bound.
    pub(crate) gap_bound_ms: u64,
}

/// The number `n` as a `u64` (saturating).
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl SimReport {
    /// Assembles the report from the run, what the observer saw, the sim's own violations and
    /// the checker's report.
    pub(crate) fn build(
        header: Header,
        outcome: Outcome,
        publish_log: Vec<Publish>,
        unobserved: u64,
        invariant_violations: Vec<String>,
        check: Report,
    ) -> Self {
        let mut publishes_by_reason: BTreeMap<String, u64> = BTreeMap::new();
        for p in &publish_log {
            *publishes_by_reason.entry(p.reason.clone()).or_default() += 1;
        }
        if unobserved > 0 {
            publishes_by_reason.insert("unobserved".into(), unobserved);
        }
        let by_kind = check.violations_by_kind();
        let lost_examples = check
            .violations
            .iter()
            .filter_map(|v| match v {
                Violation::Lost { record, .. } => {
                    Some(format!("{}#{}", record.partition, record.seq))
                }
                _ => None,
            })
            .take(LOST_EXAMPLES)
            .collect();
        let c = &check.counts;
        let processed = c.messages_sent.saturating_sub(c.messages_lost);
        Self {
            schema: SCHEMA,
            passed: invariant_violations.is_empty() && check.is_clean(),
            transport: header.transport,
            transport_detail: header.transport_detail,
            seed: header.seed,
            workers: header.workers,
            partitions: header.partitions,
            rate: header.rate,
            duration_ms: header.duration_ms,
            elapsed_ms: outcome.elapsed_ms,
            cold_start_ms: outcome.cold_start_ms,
            messages_sent: count(c.messages_sent),
            messages_processed: count(processed),
            messages_lost: count(c.messages_lost),
            duplicates: count(c.messages_duplicated),
            messages_unconfirmed: count(c.messages_handled.saturating_sub(processed)),
            lost_examples,
            publishes: u64::try_from(publish_log.len()).unwrap_or(u64::MAX) + unobserved,
            publishes_by_reason,
            partitions_moved: publish_log.iter().filter_map(|p| p.moved).sum(),
            partitions_moved_minimum: publish_log.iter().filter_map(|p| p.minimum).sum(),
            publish_log,
            faults: outcome.faults,
            invariant_violations,
            tolerance_ms: header.tolerance_ms,
            gap_bound_ms: header.gap_bound_ms,
            ownership_violations_by_kind: by_kind,
            check,
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

        let _ = writeln!(
            out,
            "\nownership checker (tolerance {} ms, gap bound {}):",
            self.tolerance_ms,
            short(self.gap_bound_ms)
        );
        let check = self.check.to_string();
        let lines: Vec<&str> = check.lines().collect();
        for line in lines.iter().take(CHECK_LINES_SHOWN) {
            let _ = writeln!(out, "  {line}");
        }
        if lines.len() > CHECK_LINES_SHOWN {
            let _ = writeln!(
                out,
                "  … {} more lines (every violation is in --json-report)",
                lines.len() - CHECK_LINES_SHOWN
            );
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
        let kinds: Vec<String> = self
            .ownership_violations_by_kind
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        let _ = writeln!(
            out,
            "\nresult: {}{}",
            if self.passed { "PASS" } else { "FAIL" },
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" (ownership: {})", kinds.join(", "))
            }
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
    use parti_testkit::checker::{CheckConfig, History, SentRecord, check};

    use super::*;

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
        let sent = (0..10)
            .map(|seq| SentRecord {
                at_ns: 5,
                partition: "p0".into(),
                seq,
            })
            .collect();
        let processed = (lost..10)
            .map(|seq| parti_testkit::checker::ProcessedRecord {
                at_ns: 6,
                worker: "worker-0".into(),
                instance: "i0".into(),
                partition: "p0".into(),
                seq,
            })
            .collect();
        let history = History {
            sent,
            processed,
            ..History::default()
        };
        let config = CheckConfig {
            tolerance_ns: 0,
            gap_bound_ns: 1,
        };
        let header = Header {
            transport: "memory",
            transport_detail: "in-memory".into(),
            seed: 7,
            workers: 4,
            partitions: 200,
            rate: 100,
            duration_ms: 15_000,
            tolerance_ms: 0,
            gap_bound_ms: 8_375,
        };
        let outcome = Outcome {
            cold_start_ms: Some(2_500),
            faults: vec![FaultLine {
                kind: "crash".into(),
                target: Some("worker-2".into()),
                at_ms: 5_000,
                recovered_ms: Some(2_100),
                note: None,
            }],
            history: History::default(),
            elapsed_ms: 16_000,
        };
        let log = vec![
            publish(1, "cold_start", None, None),
            publish(2, "emergency", Some(50), Some(50)),
            publish(4, "scale_up", Some(40), Some(38)),
        ];
        let mut checked = check(&history, &config);
        // The handlings have no holding behind them: keep only what the tests are about.
        checked
            .violations
            .retain(|v| matches!(v, Violation::Lost { .. }));
        SimReport::build(header, outcome, log, 1, violations, checked)
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
        assert!(text.contains("ownership check: clean"), "{text}");
        assert_eq!(
            json["check"]["violations"].as_array().map(Vec::len),
            Some(0)
        );
        assert!(
            text.contains("partitions moved: 90 (minimum needed: 88)"),
            "{text}"
        );
    }

    #[test]
    fn a_lost_message_or_a_violation_fails_the_run() {
        let lost = report(1, Vec::new());
        assert!(!lost.passed);
        assert_eq!(
            (lost.messages_lost, lost.messages_processed),
            (1, 9),
            "{lost:?}"
        );
        assert_eq!(lost.lost_examples, ["p0#0"]);
        assert!(lost.human().contains("result: FAIL (ownership: 1 lost)"));
        let r = report(0, vec!["two leaders in term 3".into()]);
        assert!(!r.passed);
        assert!(r.human().contains("result: FAIL"));
    }
}
