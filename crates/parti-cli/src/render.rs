//! The human form of a health [`Report`] (`status`, `watch`): a few summary lines, an aligned
//! table of workers, the issues. Depends on [`crate::health`] and [`crate::text`].

use std::fmt::Write as _;

use crate::health::{Report, Severity, WorkerReport};
use crate::text::{age, table};

/// The value, or `-` when there is none.
fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The full human report.
pub(crate) fn human(report: &Report, server: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "server     {server}");
    match &report.cluster {
        Some(c) => {
            let mut phase = c.phase.to_owned();
            if let (Some(reason), Some(until)) = (&c.scaling_reason, c.scaling_until_ms) {
                let left = until.saturating_sub(report.generated_at_ms);
                let _ = write!(phase, " ({reason}, {} left)", age(left));
            }
            let lifecycle = match c.lifecycle {
                parti::Lifecycle::ColdStart => "cold start",
                parti::Lifecycle::Running => "running",
                _ => "unknown",
            };
            let _ = writeln!(
                out,
                "cluster    version {}, term {}, phase {phase}, lifecycle {lifecycle}, last publish: {}",
                c.version, c.term, c.reason
            );
            let _ = writeln!(
                out,
                "map        {} workers, {} of {} partitions owned, weight {}",
                c.workers, c.owned_partitions, c.partition_count, c.total_weight
            );
            for (label, count) in &c.parked {
                let _ = writeln!(
                    out,
                    "parked     {count} partition(s) labelled {label}: no worker has the label"
                );
            }
        }
        None => {
            let _ = writeln!(out, "cluster    no assignment published yet");
        }
    }
    match &report.leader {
        Some(l) => {
            let _ = writeln!(
                out,
                "leader     {}, term {}, for {}",
                l.worker,
                l.term,
                age(l.held_for_ms)
            );
        }
        None => {
            let _ = writeln!(out, "leader     none");
        }
    }
    if let Some(intents) = report.intents.as_ref().filter(|i| !i.is_empty()) {
        for line in self::intents(intents).lines() {
            let _ = writeln!(out, "intents    {line}");
        }
    }
    let flags = flags(report);
    if !flags.is_empty() {
        let _ = writeln!(out, "flags      {} (see the issues)", flags.join(", "));
    }
    out.push('\n');
    if report.workers.is_empty() {
        out.push_str("no workers\n");
    } else {
        out.push_str(&workers_table(report));
    }
    if report.workers.iter().any(|w| w.partition_keys.is_some()) {
        out.push('\n');
        for w in &report.workers {
            if let Some(keys) = &w.partition_keys {
                let _ = writeln!(out, "{}: {}", w.id, keys.join(" "));
            }
        }
    }
    out.push('\n');
    if report.issues.is_empty() {
        out.push_str("no issues\n");
    } else {
        let _ = writeln!(out, "{} issue(s):", report.issues.len());
        let rows: Vec<Vec<String>> = report
            .issues
            .iter()
            .map(|i| {
                let severity = match i.severity {
                    Severity::Error => "ERROR",
                    Severity::Warning => "warning",
                };
                vec![
                    format!("  {severity}"),
                    i.kind.to_owned(),
                    format!("{}: {}", i.subject, i.message),
                ]
            })
            .collect();
        let text = table(&["", "", ""], &rows);
        // Skip the empty header line.
        for line in text.lines().skip(1) {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// The flags raised, by name and count: `lagging 1`, `undecodable 3`, `belowFloor 1`,
/// `mixedVersions 2` (two versions among the workers).
fn flags(report: &Report) -> Vec<String> {
    [
        ("lagging", report.lagging.len()),
        ("undecodable", report.undecodable.len()),
        ("belowFloor", report.below_floor.len()),
        // The number of distinct versions, raised only when there are several.
        (
            "mixedVersions",
            if report.versions.len() > 1 {
                report.versions.len()
            } else {
                0
            },
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{name} {n}"))
    .collect()
}

/// The STATE cell: the heartbeat's state, with the reason next to a degraded one
/// (`degraded (natsUnreachable)`).
fn state(worker: &WorkerReport) -> String {
    match (worker.state, worker.degraded_reason) {
        (Some(state), Some(reason)) => format!("{state} ({reason})"),
        (state, _) => opt(state),
    }
}

/// The PROTOCOL cell: the heartbeat's protocol, with what differs from this build's
/// capabilities: `1`, `0 (-leaseRevocation -releaseAck)`, `1 (+newThing)`.
fn protocol(worker: &WorkerReport) -> String {
    use parti::heartbeat::protocol::Capability;
    let (Some(number), Some(capabilities)) = (worker.protocol, &worker.capabilities) else {
        return "-".to_owned();
    };
    let mut diff: Vec<String> = Capability::ALL
        .into_iter()
        .map(Capability::as_str)
        .filter(|known| !capabilities.iter().any(|c| c == known))
        .map(|c| format!("-{c}"))
        .collect();
    diff.sort();
    diff.extend(
        capabilities
            .iter()
            .filter(|c| Capability::from_name(c).is_none())
            .map(|c| format!("+{c}")),
    );
    if diff.is_empty() {
        number.to_string()
    } else {
        format!("{number} ({})", diff.join(" "))
    }
}

fn workers_table(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.health.as_str().to_owned(),
                if w.leader { "*" } else { "" }.to_owned(),
                state(w),
                opt(w.heartbeat_age_ms.map(age)),
                opt(w.applied_version),
                opt(w.assigned_version),
                opt(w.partitions),
                opt(w.weight),
                protocol(w),
                opt(w.instance.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "WORKER",
            "HEALTH",
            "LEADER",
            "STATE",
            "HEARTBEAT",
            "APPLIED",
            "ASSIGNED",
            "PARTITIONS",
            "WEIGHT",
            "PROTOCOL",
            "INSTANCE",
        ],
        &rows,
    )
}

/// The operator's intents in force, one per line (`parti status` and the `parti drain`…
/// commands print them).
pub(crate) fn intents(intents: &parti::control::Intents) -> String {
    if intents.is_empty() {
        return "none\n".to_owned();
    }
    let mut text = String::new();
    if intents.frozen {
        text.push_str("frozen: only orphans are placed until `parti unfreeze`\n");
    }
    if !intents.drained.is_empty() {
        let drained: Vec<&str> = intents
            .drained
            .iter()
            .map(parti::WorkerId::as_str)
            .collect();
        let _ = writeln!(text, "drained: {}", drained.join(", "));
    }
    for (partition, worker) in &intents.pinned {
        let _ = writeln!(text, "pinned: {partition} → {worker}");
    }
    text
}
