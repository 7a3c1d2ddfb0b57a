//! Configuration files of the Go library (up to v2): its keys that have no field of that name
//! here, and what becomes of each (see `docs/configuration-go-compat.md`).
//!
//! A Go key that has a meaning here is mapped onto our field, unless our own key is also set
//! (then ours wins and the Go key is reported). A Go key without a meaning here is accepted and
//! reported as a [`ConfigWarning`]. Anything else stays an unknown key, hence an error.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize as _;
use serde_yaml_ng::Value;

use super::Config;
use super::duration::{HumanDuration, format};
use super::filter::{Level, Seen};
use super::suggest;
use crate::error::ConfigViolation;

/// Go keys of the document that have no field of that name here.
const ROOT_KEYS: &[&str] = &[
    "rebalanceCooldown",
    "enableTwoPhaseHandoff",
    "handoff",
    "assignmentTtl",
    "workerLabels",
    "unlabeledPartitionPolicy",
    "labelSpillGrace",
];

/// Go keys of `kvBuckets` that have no field of that name here.
const KV_BUCKET_KEYS: &[&str] = &["handoffBucket", "handoffTtl", "assignmentTtl"];

/// Keys of the Go library's `handoff` section; `timeout` maps to `handoffTimeout`, the others
/// tune its two-phase handoff coordinator.
const HANDOFF_KEYS: &[&str] = &[
    "timeout",
    "sweepInterval",
    "maxRetries",
    "baseBackoff",
    "maxBackoff",
    "jitter",
    "delayAfterPrepare",
    "delayBeforeStable",
    "claimWritePerSec",
    "claimWriteBurst",
    "claimWriteClusterRate",
];

/// The Go keys of a map of the document.
pub(super) fn go_keys(level: Level) -> &'static [&'static str] {
    match level {
        Level::Root => ROOT_KEYS,
        Level::KvBuckets => KV_BUCKET_KEYS,
        Level::Assignment => &[],
    }
}

/// Whether `key` of the map at `level` is a Go key without a field of that name here.
pub(super) fn is_go_key(level: Level, key: &str) -> bool {
    go_keys(level).contains(&key)
}

/// Known keys of the map at the path `parent` that serde does not list in its unknown-field
/// message: the Go keys (so that a misspelt one is suggested too).
pub(super) fn extra_candidates(parent: &str) -> &'static [&'static str] {
    match parent {
        "" => ROOT_KEYS,
        "kvBuckets" => KV_BUCKET_KEYS,
        "handoff" => HANDOFF_KEYS,
        _ => &[],
    }
}

/// A key of the Go library's configuration that was accepted but does not take effect as
/// written: it has no counterpart here, or our own key for the same setting is also set.
///
/// [`Config::from_yaml_str`] and [`Config::from_yaml_file`] log these with `tracing::warn!`;
/// [`Config::from_yaml_str_with_warnings`] returns them.
///
/// ```
/// let report = parti::Config::from_yaml_str_with_warnings("kvBuckets: { handoffTtl: 2m }")?;
/// assert_eq!(report.warnings[0].field, "kvBuckets.handoffTtl");
/// assert!(report.warnings[0].message.starts_with("ignored"));
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigWarning {
    /// The key's path as written, e.g. `enableTwoPhaseHandoff` or `kvBuckets.handoffTtl`.
    pub field: String,
    /// What became of it, starting with `ignored` (e.g. `ignored: there is no handoff bucket…`).
    pub message: String,
}

impl ConfigWarning {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A configuration read from YAML, with the [warnings](ConfigWarning) about keys of the Go
/// library that were accepted but do not take effect as written.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LoadReport {
    /// The configuration.
    pub config: Config,
    /// Go keys that were ignored, in document order.
    pub warnings: Vec<ConfigWarning>,
}

/// Lays the Go keys the filter took out over `config`: maps those with a meaning here, reports
/// the others. A Go key with a value of the wrong type, or an unknown key inside `handoff`, is a
/// violation.
pub(super) fn apply(
    config: &mut Config,
    seen: Seen,
) -> Result<Vec<ConfigWarning>, Vec<ConfigViolation>> {
    let mut out = Outcome::default();
    let mut paths = BTreeSet::new();
    for (path, value) in seen.go {
        if !paths.insert(path.clone()) {
            let key = path.rsplit('.').next().unwrap_or(&path).to_owned();
            out.violation(&path, format!("duplicate field `{key}`"));
            continue;
        }
        match path.as_str() {
            "rebalanceCooldown" => {
                let ours = [
                    "assignment.minRebalanceInterval",
                    "assignment.rebalanceCooldown",
                ];
                if let Some(d) = out.duration(&path, value) {
                    if let Some(set) = ours.iter().find(|k| seen.ours.contains(**k)) {
                        out.warn(&path, overridden(set, d));
                    } else {
                        config.assignment.min_rebalance_interval = d;
                    }
                }
            }
            "enableTwoPhaseHandoff" => match value {
                Value::Bool(on) => out.warn(&path, two_phase(on)),
                other => out.violation(&path, invalid_type(&other, "true or false")),
            },
            "handoff" => handoff(config, &seen.ours, value, &mut out),
            "assignmentTtl" | "kvBuckets.assignmentTtl" => out.warn(
                &path,
                "ignored: assignments never expire here (the assignment bucket has no max_age), \
                 as with the Go default of 0",
            ),
            "kvBuckets.handoffBucket" => out.warn(
                &path,
                "ignored: there is no handoff bucket; a move is coordinated through the \
                 heartbeat and assignment buckets (release-then-acquire)",
            ),
            "kvBuckets.handoffTtl" => out.warn(
                &path,
                "ignored: there is no handoff bucket; handoffTimeout bounds how long a release \
                 may take",
            ),
            "workerLabels" => worker_labels(config, &seen.ours, value, &mut out),
            "unlabeledPartitionPolicy" => {
                let ours = "assignment.unlabelledPolicy";
                match value {
                    Value::String(policy) => {
                        let parsed = match policy.as_str() {
                            "dedicated" => Some(crate::UnlabelledPolicy::Dedicated),
                            "shared" => Some(crate::UnlabelledPolicy::Shared),
                            _ => None,
                        };
                        match parsed {
                            Some(_) if seen.ours.contains(ours) => out.warn(
                                &path,
                                format!("ignored: {ours} is also set and takes precedence"),
                            ),
                            Some(parsed) => config.assignment.unlabelled_policy = parsed,
                            None => out.violation(
                                &path,
                                format!("unknown policy {policy:?} (dedicated or shared)"),
                            ),
                        }
                    }
                    other => out.violation(&path, invalid_type(&other, "dedicated or shared")),
                }
            }
            "labelSpillGrace" => {
                let ours = "assignment.labelSpillGrace";
                if let Some(d) = out.duration(&path, value) {
                    if seen.ours.contains(ours) {
                        out.warn(&path, overridden(ours, d));
                    } else if d.is_zero() {
                        // The Go library reads 0 in a file as "the default".
                        out.warn(
                            &path,
                            "ignored: 0 means the default (60s) in the Go library's files",
                        );
                    } else {
                        config.assignment.label_spill_grace = d;
                    }
                }
            }
            // The filter only takes out the keys listed above.
            _ => out.warn(
                &path,
                "ignored: a key of the Go library without a meaning here",
            ),
        }
    }
    if out.violations.is_empty() {
        Ok(out.warnings)
    } else {
        Err(out.violations)
    }
}

/// The Go library's `handoff` section: `timeout` maps to `handoffTimeout`; the other known keys
/// are reported together, in one warning.
fn handoff(config: &mut Config, ours: &BTreeSet<String>, value: Value, out: &mut Outcome) {
    let map = match value {
        Value::Mapping(map) => map,
        Value::Null => Default::default(),
        other => {
            out.violation("handoff", invalid_type(&other, "a map of handoff settings"));
            return;
        }
    };
    let mut ignored = Vec::new();
    let mut seen_keys = BTreeSet::new();
    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_owned) else {
            out.violation("handoff", invalid_type(&key, "a key name"));
            continue;
        };
        let path = format!("handoff.{key}");
        if !seen_keys.insert(key.clone()) {
            out.violation(&path, format!("duplicate field `{key}`"));
            continue;
        }
        match key.as_str() {
            "timeout" => {
                if let Some(d) = out.duration(&path, value) {
                    if ours.contains("handoffTimeout") {
                        out.warn(&path, overridden("handoffTimeout", d));
                    } else {
                        config.handoff_timeout = d;
                    }
                }
            }
            known if HANDOFF_KEYS.contains(&known) => ignored.push(key),
            unknown => out.violation(&path, suggest::unknown_field(unknown, HANDOFF_KEYS)),
        }
    }
    let message = if ignored.is_empty() {
        if !seen_keys.is_empty() {
            return; // only `timeout`, mapped
        }
        "ignored: an empty section".to_owned()
    } else {
        format!(
            "ignored: {} tune{} the Go library's two-phase handoff coordinator, which has no \
             counterpart here (handoff.timeout maps to handoffTimeout)",
            ignored.join(", "),
            if ignored.len() == 1 { "s" } else { "" }
        )
    };
    out.warn("handoff", message);
}

/// The Go library's `workerLabels`: a list of names becomes `labels` (unless `labels` is set
/// too); key=value maps (an older draft) have no counterpart.
fn worker_labels(config: &mut Config, ours: &BTreeSet<String>, value: Value, out: &mut Outcome) {
    const PATH: &str = "workerLabels";
    match value {
        Value::Null => {}
        Value::Sequence(items) => {
            let mut labels = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(label) => labels.push(label),
                    other => return out.violation(PATH, invalid_type(&other, "a label name")),
                }
            }
            if ours.contains("labels") {
                out.warn(PATH, "ignored: labels is also set and takes precedence");
            } else {
                // Checked with `labels` when the profile is built.
                config.labels = labels;
            }
        }
        Value::Mapping(_) => out.warn(
            PATH,
            "ignored: key=value labels have no counterpart here; list plain label names \
             (labels: [gpu, zone-a])",
        ),
        other => out.violation(PATH, invalid_type(&other, "a list of labels")),
    }
}

fn two_phase(on: bool) -> &'static str {
    if on {
        "ignored: always on here — a moved partition is released by its old holder before its \
         new holder starts (release-then-acquire, bounded by handoffTimeout)"
    } else {
        "ignored: cannot be turned off here — a moved partition is always released by its old \
         holder before its new holder starts (release-then-acquire, bounded by handoffTimeout)"
    }
}

fn overridden(ours: &str, value: Duration) -> String {
    format!(
        "ignored: {ours} is also set and takes precedence over this {}",
        format(value)
    )
}

fn invalid_type(value: &Value, expected: &str) -> String {
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    };
    format!("invalid type: {found}, expected {expected}")
}

/// Warnings and violations collected while applying the Go keys.
#[derive(Default)]
struct Outcome {
    warnings: Vec<ConfigWarning>,
    violations: Vec<ConfigViolation>,
}

impl Outcome {
    fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.warnings.push(ConfigWarning::new(field, message));
    }

    fn violation(&mut self, field: &str, reason: impl Into<String>) {
        self.violations.push(ConfigViolation::new(field, reason));
    }

    /// A duration string, as our own duration fields take it; a violation otherwise.
    fn duration(&mut self, field: &str, value: Value) -> Option<Duration> {
        match HumanDuration::deserialize(value) {
            Ok(d) => Some(d.0),
            Err(e) => {
                self.violation(field, e.to_string());
                None
            }
        }
    }
}
