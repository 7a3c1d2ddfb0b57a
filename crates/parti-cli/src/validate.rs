//! `parti validate [--live] [--json]`: checks a configuration the way `parti worker` loads it.
//!
//! The configuration is the global `--config` file (or the defaults), then the `PARTI_…`
//! environment variables laid over it, as [`Global::load_config`] does; unlike it, every problem
//! is reported, not only the first kind: each violated rule of the file, each bad or unknown
//! `PARTI_…` variable, each rule the result violates. An unknown key comes with "did you mean"
//! when a known key is close. Keys of the Go library that are accepted but ignored are warnings.
//!
//! With `--live` it also connects to NATS (the global connection options) and compares each of
//! the four KV buckets with the settings the configuration implies, without creating or changing
//! anything. A missing bucket is fine (a worker creates it); an existing one that differs would
//! make a worker fail to start. The server is read and compared by `parti provision`'s
//! [`survey`]; of its differences, those a worker checks (replicas, `max_age`, history, limit
//! markers — not storage) are reported.
//!
//! Exit codes (see [`ValidateArgs`]): 0 valid, 1 another error, 3 invalid (or, with `--live`, a
//! bucket that differs), 4 NATS unreachable with `--live`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args;
use parti::config::ConfigWarning;
use parti::{Config, ConfigViolation};
use serde::Serialize;

use crate::buckets::Role;
use crate::global::Global;
use crate::provision::plan::{Action, Change, Field, Policy, Resource};
use crate::provision::survey;

/// Exit code of an invalid configuration (or, with `--live`, a bucket that differs).
pub(crate) const EXIT_INVALID: u8 = 3;
/// Exit code when `--live` cannot reach NATS.
pub(crate) const EXIT_UNREACHABLE: u8 = 4;

/// Options of `parti validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// Also connect to NATS and compare the four KV buckets with the configuration (read-only).
    #[arg(long)]
    pub(crate) live: bool,
    /// Print one JSON document: `valid`, `violations` (`field`, `reason`, `suggestion`),
    /// `warnings` (`field`, `message`) and `live` (null without --live).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Everything `parti validate` found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    /// Version of this document's shape.
    schema: u32,
    /// Whether the configuration is valid (without regard to `live`).
    valid: bool,
    /// The configuration file, if one was given.
    config: Option<String>,
    violations: Vec<Violation>,
    warnings: Vec<Warning>,
    /// The comparison with the server (`--live`).
    live: Option<Live>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Violation {
    field: String,
    reason: String,
    /// The known key or variable a misspelt one is closest to.
    suggestion: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Warning {
    field: String,
    message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Live {
    /// The server URL(s), as given.
    nats: String,
    /// Null when not checked (an invalid configuration is not compared).
    reachable: Option<bool>,
    /// Why NATS could not be reached, or why it was not checked.
    error: Option<String>,
    /// Null when the check did not run (NATS unreachable, or an invalid configuration).
    compatible: Option<bool>,
    buckets: Vec<BucketCheck>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BucketCheck {
    role: Role,
    name: String,
    exists: bool,
    /// Settings of an existing bucket that differ from what the configuration implies.
    differences: Vec<Difference>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Difference {
    /// `replicas`, `maxAge`, `history` or `limitMarkers`.
    setting: &'static str,
    expected: String,
    actual: String,
}

impl Difference {
    /// A difference `parti provision` found, if it is one a worker checks (as the library's
    /// compatibility check does: not storage, which a worker accepts either way).
    fn of(change: Change) -> Option<Self> {
        let setting = match change.field {
            Field::Replicas => "replicas",
            Field::MaxAge => "maxAge",
            Field::History => "history",
            Field::LimitMarkers => "limitMarkers",
            // A worker raises the consumer limit itself when it opens the bucket.
            Field::Storage | Field::MaxConsumers | Field::Retention | Field::Subjects => {
                return None;
            }
        };
        Some(Self {
            setting,
            expected: change.want,
            actual: change.have,
        })
    }
}

/// Runs `parti validate`.
pub(crate) async fn run(args: ValidateArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let (mut outcome, config) = check_config(global.config.as_deref())?;
    let mut unreachable = false;
    if args.live {
        let live = match &config {
            Some(config) if outcome.valid => check_live(global, config).await?,
            _ => Live {
                nats: global.connect.nats.clone(),
                reachable: None,
                error: Some("not checked: the configuration is invalid".to_owned()),
                compatible: None,
                buckets: Vec::new(),
            },
        };
        unreachable = live.reachable == Some(false);
        outcome.live = Some(live);
    }
    let text = if args.json {
        let mut json =
            serde_json::to_string_pretty(&outcome).context("cannot encode the result")?;
        json.push('\n');
        json
    } else {
        human(&outcome)
    };
    crate::output::print(&text)?;
    let compatible = outcome
        .live
        .as_ref()
        .is_none_or(|l| l.compatible != Some(false));
    Ok(if !outcome.valid || !compatible {
        ExitCode::from(EXIT_INVALID)
    } else if unreachable {
        ExitCode::from(EXIT_UNREACHABLE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads the file and the environment, collecting every problem; the effective configuration
/// when it loads at all.
fn check_config(path: Option<&Path>) -> anyhow::Result<(Outcome, Option<Config>)> {
    let mut violations = Vec::new();
    let mut warnings = Vec::new();
    let base = match path {
        Some(path) => {
            let yaml = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration {}", path.display()))?;
            match Config::parse_yaml_str(&yaml) {
                Ok(report) => {
                    warnings = report.warnings;
                    if let Err(e) = report.config.validate() {
                        violations.extend(config_violations(e)?);
                    }
                    Some(report.config)
                }
                Err(e) => {
                    violations.extend(config_violations(e)?);
                    None
                }
            }
        }
        None => Some(Config::default()),
    };
    // The environment is laid over the file, as `parti worker` does; its own problems (and the
    // rules the result violates) are added to the file's, each once.
    let env_base = base.clone().unwrap_or_default();
    let effective = match env_base.with_env_overrides() {
        Ok(config) => base.is_some().then_some(config),
        Err(e) => {
            for v in config_violations(e)? {
                if !violations.contains(&v) {
                    violations.push(v);
                }
            }
            None
        }
    };
    let outcome = Outcome {
        schema: 1,
        valid: violations.is_empty(),
        config: path.map(|p| p.display().to_string()),
        violations: violations.into_iter().map(violation).collect(),
        warnings: warnings.into_iter().map(warning).collect(),
        live: None,
    };
    Ok((outcome, effective))
}

/// The violations of an `InvalidConfig` error; any other error is passed on.
fn config_violations(error: parti::Error) -> anyhow::Result<Vec<ConfigViolation>> {
    match error {
        parti::Error::InvalidConfig { violations } => Ok(violations),
        other => Err(anyhow::Error::new(other).context("cannot load the configuration")),
    }
}

fn violation(v: ConfigViolation) -> Violation {
    Violation {
        suggestion: suggestion(&v.reason),
        field: v.field,
        reason: v.reason,
    }
}

fn warning(w: ConfigWarning) -> Warning {
    Warning {
        field: w.field,
        message: w.message,
    }
}

/// The name in a reason's "did you mean NAME?" (backquoted for a key, bare for a variable).
fn suggestion(reason: &str) -> Option<String> {
    let (_, rest) = reason.split_once("did you mean ")?;
    let (name, _) = rest.split_once('?')?;
    let name = name.trim().trim_matches('`');
    (!name.is_empty()).then(|| name.to_owned())
}

/// Connects and compares the four buckets. Unreachable NATS is a result (`reachable: false`);
/// a server that cannot answer about its buckets is an error.
async fn check_live(global: &Global, config: &Config) -> anyhow::Result<Live> {
    let nats = global.connect.nats.clone();
    let client = match global.connect.connect("parti validate").await {
        Ok(client) => client,
        Err(e) => {
            return Ok(Live {
                nats,
                reachable: Some(false),
                error: Some(crate::output::error_chain(&e)),
                compatible: None,
                buckets: Vec::new(),
            });
        }
    };
    let js = jetstream::new(client);
    let resources = Resource::buckets(config);
    let (_, steps) = survey(&js, &resources, config.operation_timeout, Policy::Warn).await?;
    let buckets: Vec<BucketCheck> = resources
        .into_iter()
        .zip(steps)
        .filter_map(|(resource, step)| {
            Some(BucketCheck {
                role: resource.role?,
                name: resource.name,
                exists: step.action != Action::Create,
                differences: step
                    .changes
                    .into_iter()
                    .filter_map(Difference::of)
                    .collect(),
            })
        })
        .collect();
    Ok(Live {
        nats,
        reachable: Some(true),
        error: None,
        compatible: Some(buckets.iter().all(|b| b.differences.is_empty())),
        buckets,
    })
}

/// The text report.
fn human(outcome: &Outcome) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let source = outcome
        .config
        .as_deref()
        .map_or_else(|| "defaults".to_owned(), str::to_owned);
    line(format!("configuration: {source} (with PARTI_* overrides)"));
    for w in &outcome.warnings {
        line(format!("warning: {}: {}", w.field, w.message));
    }
    for v in &outcome.violations {
        line(format!("invalid: {}: {}", v.field, v.reason));
    }
    if let Some(live) = &outcome.live {
        match (&live.error, live.reachable) {
            (Some(error), Some(false)) => line(format!("nats: {} unreachable: {error}", live.nats)),
            (Some(error), None) => line(format!("nats: {} {error}", live.nats)),
            _ => line(format!("nats: {}", live.nats)),
        }
        let width = live.buckets.iter().map(|b| b.name.len()).max().unwrap_or(0);
        for b in &live.buckets {
            let role = format!("{:?}", b.role);
            let state = if !b.exists {
                "missing (a worker creates it)".to_owned()
            } else if b.differences.is_empty() {
                "ok".to_owned()
            } else {
                let diffs: Vec<String> = b
                    .differences
                    .iter()
                    .map(|d| format!("{} is {}, expected {}", d.setting, d.actual, d.expected))
                    .collect();
                format!("differs: {}", diffs.join(", "))
            };
            line(format!("bucket {role:<10} {:<width$}  {state}", b.name));
        }
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let warnings = plural(outcome.warnings.len(), "warning");
    let verdict = if !outcome.valid {
        format!(
            "invalid ({}, {warnings})",
            plural(outcome.violations.len(), "violation")
        )
    } else if outcome
        .live
        .as_ref()
        .is_some_and(|l| l.compatible == Some(false))
    {
        format!("valid, but a bucket on the server differs ({warnings})")
    } else if outcome
        .live
        .as_ref()
        .is_some_and(|l| l.reachable == Some(false))
    {
        format!("valid ({warnings}); NATS unreachable")
    } else {
        format!("valid ({warnings})")
    };
    line(format!("result: {verdict}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_read_from_the_reason() {
        assert_eq!(
            suggestion("unknown field `a`, did you mean `abc`? at line 2 column 1").as_deref(),
            Some("abc")
        );
        assert_eq!(
            suggestion("unknown Parti environment variable; did you mean PARTI_HEARTBEAT_TTL?")
                .as_deref(),
            Some("PARTI_HEARTBEAT_TTL")
        );
        assert_eq!(suggestion("must be greater than 0"), None);
    }

    #[test]
    fn only_the_settings_a_worker_checks_differ() {
        use std::time::Duration;

        use async_nats::jetstream::stream::{RetentionPolicy, StorageType};

        use crate::provision::plan::{Observed, plan};

        let resources = Resource::buckets(&Config::default());
        let heartbeat = &resources[2];
        assert_eq!(heartbeat.role, Some(Role::Heartbeat));
        let have = Observed {
            storage: StorageType::Memory,
            replicas: 3,
            max_age: Duration::from_secs(10),
            history: 1,
            limit_markers: false,
            max_consumers: -1,
            retention: RetentionPolicy::Limits,
            subjects: Default::default(),
        };
        let [step] = &plan(std::slice::from_ref(heartbeat), &[Some(have)], Policy::Warn)[..] else {
            panic!("one resource, one step");
        };
        let differences: Vec<_> = step
            .changes
            .iter()
            .cloned()
            .filter_map(Difference::of)
            .collect();
        let difference = |setting, expected: &str, actual: &str| Difference {
            setting,
            expected: expected.into(),
            actual: actual.into(),
        };
        // Storage is left out: a worker opens a memory bucket.
        assert_eq!(
            differences,
            [
                difference("replicas", "1", "3"),
                difference("maxAge", "6s", "10s"),
                difference("limitMarkers", "on", "off"),
            ]
        );
    }
}
