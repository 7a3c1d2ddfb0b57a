//! The report of a chaos run: what ran, each fault with its recovery time, and the checker's
//! verdict with its counts of violations by kind.

use std::collections::BTreeMap;
use std::fmt;

use parti_testkit::checker::{FaultRecord, Report};
use serde::Serialize;

use super::recovery::Recovery;

/// Subjects named in [`Leftover::uncovered`].
pub(crate) const SUBJECTS_SHOWN: usize = 10;

/// Lines of the checker's own report shown in the text report (one per violation).
const CHECK_LINES_SHOWN: usize = 30;

/// What a run was.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Header {
    /// Servers used.
    pub(crate) nats: String,
    /// Whether it was a 3-node cluster.
    pub(crate) cluster: bool,
    /// The schedule's seed.
    pub(crate) seed: u64,
    /// Worker processes kept running.
    pub(crate) workers: usize,
    /// Partitions.
    pub(crate) partitions: usize,
    /// Planned duration of the fault schedule and the producer.
    pub(crate) duration_ms: u64,
    /// Wall time of the whole run, start-up and drain included.
    pub(crate) elapsed_ms: u64,
    /// Where the logs are (removed after the run unless `--keep-dir`).
    pub(crate) run_dir: String,
    /// Whether the run directory was kept.
    pub(crate) kept: bool,
    /// The checker's tolerance.
    pub(crate) tolerance_ms: u64,
    /// The checker's gap bound.
    pub(crate) gap_bound_ms: u64,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FaultLine {
    /// The fault as recorded for the checker.
    #[serde(flatten)]
    pub(crate) record: FaultRecord,
    /// What exactly was done (which process or node).
    pub(crate) detail: String,
    /// When it started, since the fleet first settled.
    pub(crate) at_ms: u64,
    /// How long it lasted (0 for an instant fault).
    pub(crate) lasted_ms: u64,
    /// Until every partition was held again.
    pub(crate) recovery: Recovery,
}

/// What was still in the stream when the final drain gave up: where undelivered or unacked
/// messages sit (a durable nobody pulls any more strands its messages).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Leftover {
    /// Messages still stored (on a work queue: not acknowledged by anyone).
    pub(crate) messages: u64,
    /// Subjects that still hold messages.
    pub(crate) subjects: usize,
    /// Those of them in no consumer's filter (nobody will ever deliver them): up to
    /// [`SUBJECTS_SHOWN`] names.
    pub(crate) uncovered: Vec<String>,
    /// How many subjects with messages are in no consumer's filter.
    pub(crate) uncovered_count: usize,
    /// Every consumer of the stream then.
    pub(crate) consumers: Vec<ConsumerLeft>,
}

/// One consumer of the stream when the drain gave up.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConsumerLeft {
    /// Its durable name (`{prefix}-{workerId}`).
    pub(crate) name: String,
    /// How many filter subjects it has.
    pub(crate) subjects: usize,
    /// Messages delivered to it and not acknowledged.
    pub(crate) ack_pending: usize,
    /// Messages matching its filter not yet delivered.
    pub(crate) pending: u64,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChaosReport {
    /// What ran.
    pub(crate) header: Header,
    /// Every fault injected, in order.
    pub(crate) faults: Vec<FaultLine>,
    /// Fault kinds the schedule held.
    pub(crate) scheduled: Vec<String>,
    /// Worker processes that exited on their own (restarted by the runner).
    pub(crate) unexpected_exits: Vec<String>,
    /// Worker processes that did not stop within the bound at the end (killed).
    pub(crate) unstopped: Vec<String>,
    /// Whether, before the workers were stopped, every message sent had been handled or the
    /// stream had emptied.
    pub(crate) drained: bool,
    /// When not drained: what the stream still held.
    pub(crate) leftover: Option<Leftover>,
    /// Violations by kind (`overlap`, `gap`, `lost`, `versionRegression`, …).
    pub(crate) violations_by_kind: BTreeMap<String, usize>,
    /// The checker's report.
    pub(crate) check: Report,
    /// No violation was found.
    pub(crate) clean: bool,
}

impl ChaosReport {
    /// Assembles the report; counts the checker's violations by their `kind` tag.
    pub(crate) fn new(
        header: Header,
        faults: Vec<FaultLine>,
        scheduled: Vec<String>,
        unexpected_exits: Vec<String>,
        unstopped: Vec<String>,
        leftover: Option<Leftover>,
        check: Report,
    ) -> Self {
        let violations_by_kind = check.violations_by_kind();
        let clean = check.is_clean();
        Self {
            header,
            faults,
            scheduled,
            unexpected_exits,
            unstopped,
            drained: leftover.is_none(),
            leftover,
            violations_by_kind,
            check,
            clean,
        }
    }

    /// How many violations of `kind`.
    fn count(&self, kind: &str) -> usize {
        self.violations_by_kind.get(kind).copied().unwrap_or(0)
    }
}

/// Milliseconds as seconds with one decimal.
fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        writeln!(f, "parti chaos report")?;
        writeln!(f, "  nats:        {}", h.nats)?;
        writeln!(
            f,
            "  run:         {} worker processes, {} partitions, seed {}, schedule {}, wall time {}",
            h.workers,
            h.partitions,
            h.seed,
            secs(h.duration_ms),
            secs(h.elapsed_ms)
        )?;
        writeln!(
            f,
            "  logs:        {}{}",
            h.run_dir,
            if h.kept {
                ""
            } else {
                " (removed; --keep-dir keeps them)"
            }
        )?;
        writeln!(
            f,
            "  checker:     tolerance {} ms, gap bound {}",
            h.tolerance_ms,
            secs(h.gap_bound_ms)
        )?;
        writeln!(f)?;
        writeln!(f, "faults ({}):", self.faults.len())?;
        writeln!(
            f,
            "  {:>8}  {:<15} {:>7}  {:<14} target",
            "at", "kind", "lasted", "recovery"
        )?;
        for line in &self.faults {
            writeln!(
                f,
                "  {:>8}  {:<15} {:>7}  {:<14} {}",
                secs(line.at_ms),
                line.record.kind,
                secs(line.lasted_ms),
                line.recovery.to_string(),
                line.detail
            )?;
        }
        if !self.unexpected_exits.is_empty() {
            writeln!(
                f,
                "  exited on their own (restarted): {}",
                self.unexpected_exits.join(", ")
            )?;
        }
        if !self.unstopped.is_empty() {
            writeln!(
                f,
                "  did not stop gracefully at the end (killed): {}",
                self.unstopped.join(", ")
            )?;
        }
        let c = &self.check.counts;
        writeln!(f)?;
        writeln!(
            f,
            "holdings:      {} over {} processes",
            c.holdings, c.instances
        )?;
        writeln!(
            f,
            "overlaps:      {}   revived: {}   gaps: {}   epochs: {}   version regressions: {}",
            self.count("overlap"),
            self.count("revived"),
            self.count("gap"),
            self.count("epochNotIncreasing"),
            self.count("versionRegression")
        )?;
        writeln!(
            f,
            "messages:      sent {}, handled {}, lost {}, duplicated {}, handled without holding {}{}",
            c.messages_sent,
            c.messages_handled,
            c.messages_lost,
            c.messages_duplicated,
            self.count("processedWithoutHolding"),
            if self.drained {
                ""
            } else {
                " (the stream was not drained in time)"
            }
        )?;
        if let Some(left) = &self.leftover {
            let consumers: Vec<String> = left
                .consumers
                .iter()
                .map(|c| {
                    format!(
                        "{} ({} subjects, {} unacked, {} undelivered)",
                        c.name, c.subjects, c.ack_pending, c.pending
                    )
                })
                .collect();
            writeln!(
                f,
                "stream after the drain: {} messages left on {} subjects, {} of them in no consumer's filter{}",
                left.messages,
                left.subjects,
                left.uncovered_count,
                if left.uncovered.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", left.uncovered.join(", "))
                }
            )?;
            writeln!(
                f,
                "  consumers: {}",
                if consumers.is_empty() {
                    "none".to_owned()
                } else {
                    consumers.join(", ")
                }
            )?;
        }
        writeln!(f)?;
        let check = self.check.to_string();
        let lines: Vec<&str> = check.lines().collect();
        for line in lines.iter().take(CHECK_LINES_SHOWN) {
            writeln!(f, "{line}")?;
        }
        if lines.len() > CHECK_LINES_SHOWN {
            writeln!(
                f,
                "  … {} more lines (every violation is in --json-report)",
                lines.len() - CHECK_LINES_SHOWN
            )?;
        }
        writeln!(f)?;
        if self.clean {
            writeln!(f, "result: CLEAN — no violation of the ownership contract")
        } else {
            let kinds: Vec<String> = self
                .violations_by_kind
                .iter()
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            writeln!(
                f,
                "result: {} VIOLATIONS ({})",
                self.check.violations.len(),
                kinds.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use parti_testkit::checker::{CheckConfig, History, SentRecord, check};

    use super::*;

    fn report(history: &History) -> ChaosReport {
        let header = Header {
            nats: "single nats-server".into(),
            cluster: false,
            seed: 1,
            workers: 2,
            partitions: 1,
            duration_ms: 1_000,
            elapsed_ms: 2_000,
            run_dir: "/tmp/x".into(),
            kept: false,
            tolerance_ms: 50,
            gap_bound_ms: 4_875,
        };
        let fault = FaultLine {
            record: FaultRecord {
                kind: "kill".into(),
                worker: Some("worker-0".into()),
                instance: Some("i0".into()),
                start_ns: 10,
                end_ns: 10,
                ends_process: true,
            },
            detail: "w0-1".into(),
            at_ms: 0,
            lasted_ms: 0,
            recovery: Recovery::Recovered { after_ms: 1_250 },
        };
        let config = CheckConfig {
            tolerance_ns: 0,
            gap_bound_ns: 1,
        };
        ChaosReport::new(
            header,
            vec![fault],
            vec!["kill".into()],
            Vec::new(),
            Vec::new(),
            None,
            check(history, &config),
        )
    }

    #[test]
    fn a_clean_run_says_so() {
        let r = report(&History::default());
        assert!(r.clean);
        let text = r.to_string();
        assert!(text.contains("kill") && text.contains("1.2 s"), "{text}");
        assert!(text.contains("result: CLEAN"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["faults"][0]["kind"], "kill");
        assert_eq!(json["faults"][0]["endsProcess"], true);
        assert_eq!(json["faults"][0]["recovery"]["outcome"], "recovered");
        assert_eq!(json["clean"], true);
    }

    #[test]
    fn violations_are_counted_by_kind() {
        let history = History {
            sent: vec![SentRecord {
                at_ns: 5,
                partition: "p0".into(),
                seq: 1,
            }],
            ..History::default()
        };
        let r = report(&history);
        assert!(!r.clean);
        assert_eq!(r.violations_by_kind.get("lost"), Some(&1));
        let text = r.to_string();
        assert!(text.contains("lost 1"), "{text}");
        assert!(text.contains("result: 1 VIOLATIONS (1 lost)"), "{text}");
    }
}
