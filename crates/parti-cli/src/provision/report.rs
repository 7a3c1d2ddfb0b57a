//! What `parti provision` prints: an aligned table, or with `--json` a document of schema 1
//! (described in `docs/operations.md`, "Provisioning buckets").

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use super::plan::{Action, Field, Policy, Resource, Step};

/// The JSON schema version; raised on any incompatible change.
const SCHEMA: u32 = 1;

/// What carrying out one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The step wrote to the server and succeeded.
    pub(crate) applied: bool,
    /// The step failed with this message.
    pub(crate) error: Option<String>,
}

impl Outcome {
    /// A successful write.
    pub(crate) fn applied() -> Self {
        Self {
            applied: true,
            error: None,
        }
    }

    /// A failed write.
    pub(crate) fn failed(error: String) -> Self {
        Self {
            applied: false,
            error: Some(error),
        }
    }
}

/// Everything one run reports.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    /// `plan` or `apply`.
    pub(crate) command: &'static str,
    /// The drift policy (`warn` for `plan`).
    pub(crate) policy: Policy,
    /// `apply --dry-run`.
    pub(crate) dry_run: bool,
    /// The `--nats` URL(s).
    pub(crate) server: &'a str,
    /// The resources, in order.
    pub(crate) resources: &'a [Resource],
    /// One step per resource.
    pub(crate) steps: &'a [Step],
    /// One outcome per step once `apply` ran them (empty otherwise).
    pub(crate) outcomes: Vec<Outcome>,
    /// Why the whole run was refused, if it was.
    pub(crate) error: Option<String>,
    /// The exit code.
    pub(crate) exit_code: u8,
}

/// The JSON document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Json<'a> {
    schema: u32,
    command: &'a str,
    policy: Policy,
    dry_run: bool,
    server: &'a str,
    resources: Vec<JsonResource<'a>>,
    summary: Summary,
    error: Option<&'a str>,
    exit_code: u8,
}

/// One resource in the JSON document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonResource<'a> {
    kind: &'static str,
    role: &'static str,
    name: &'a str,
    action: Action,
    want: BTreeMap<Field, String>,
    changes: Vec<JsonChange<'a>>,
    remaining: Vec<Field>,
    applied: bool,
    error: Option<&'a str>,
}

/// One differing setting in the JSON document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonChange<'a> {
    field: Field,
    have: &'a str,
    want: &'a str,
    in_place: bool,
}

/// How many resources get each action.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct Summary {
    create: usize,
    ok: usize,
    drift: usize,
    update: usize,
    recreate: usize,
}

impl<'a> Report<'a> {
    /// A report of `steps` with nothing carried out yet.
    pub(crate) fn new(
        server: &'a str,
        resources: &'a [Resource],
        steps: &'a [Step],
        policy: Policy,
    ) -> Self {
        Self {
            command: "plan",
            policy,
            dry_run: false,
            server,
            resources,
            steps,
            outcomes: Vec::new(),
            error: None,
            exit_code: 0,
        }
    }

    /// How many steps have each action.
    fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for step in self.steps {
            *match step.action {
                Action::Create => &mut summary.create,
                Action::Ok => &mut summary.ok,
                Action::Drift => &mut summary.drift,
                Action::Update => &mut summary.update,
                Action::Recreate => &mut summary.recreate,
            } += 1;
        }
        summary
    }

    /// Each step with its resource and its outcome (the default before `apply` ran).
    fn rows(&self) -> impl Iterator<Item = (&'a Resource, &'a Step, Outcome)> + '_ {
        self.steps.iter().enumerate().filter_map(|(i, step)| {
            let resource = self.resources.get(step.index)?;
            Some((
                resource,
                step,
                self.outcomes.get(i).cloned().unwrap_or_default(),
            ))
        })
    }

    /// The JSON document, pretty-printed, with a final newline.
    pub(crate) fn json(&self) -> anyhow::Result<String> {
        let outcomes: Vec<_> = self.rows().collect();
        let resources = outcomes
            .iter()
            .map(|(resource, step, outcome)| JsonResource {
                kind: resource.kind(),
                role: resource.role_name(),
                name: &resource.name,
                action: step.action,
                want: resource.wanted().into_iter().collect(),
                changes: step
                    .changes
                    .iter()
                    .map(|c| JsonChange {
                        field: c.field,
                        have: &c.have,
                        want: &c.want,
                        in_place: c.in_place,
                    })
                    .collect(),
                remaining: step.remaining(),
                applied: outcome.applied,
                error: outcome.error.as_deref(),
            })
            .collect();
        let json = Json {
            schema: SCHEMA,
            command: self.command,
            policy: self.policy,
            dry_run: self.dry_run,
            server: self.server,
            resources,
            summary: self.summary(),
            error: self.error.as_deref(),
            exit_code: self.exit_code,
        };
        let mut text = serde_json::to_string_pretty(&json).context("cannot encode the report")?;
        text.push('\n');
        Ok(text)
    }

    /// The aligned table with a header and a closing summary.
    pub(crate) fn human(&self) -> String {
        let executed = self.command == "apply" && !self.dry_run && self.error.is_none();
        let mut rows: Vec<[String; 4]> = Vec::new();
        let mut details: Vec<Vec<String>> = Vec::new();
        for (resource, step, outcome) in self.rows() {
            let action = match (&outcome.error, outcome.applied, step.action) {
                (Some(_), _, _) => "failed".to_owned(),
                (None, true, Action::Create) => "created".to_owned(),
                (None, true, Action::Update) => "updated".to_owned(),
                (None, true, Action::Recreate) => "recreated".to_owned(),
                (None, _, action) => action.as_str().to_owned(),
            };
            rows.push([
                resource.kind().to_owned(),
                resource.role_name().to_owned(),
                resource.name.clone(),
                action,
            ]);
            let mut lines: Vec<String> = match step.action {
                Action::Create => vec![
                    resource
                        .wanted()
                        .into_iter()
                        .map(|(field, value)| format!("{field}={value}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ],
                _ => step
                    .changes
                    .iter()
                    .map(|c| {
                        let note = match (step.action, c.in_place) {
                            (Action::Drift, true) => "; --policy adopt changes it in place",
                            (Action::Drift, false) => "; only --policy force (recreate) changes it",
                            (Action::Update, true) if executed => "; changed in place",
                            (Action::Update, true) => "; changes in place",
                            (Action::Update, false) => "; cannot change in place, stays",
                            _ => "",
                        };
                        format!("{}: have {}, want {}{note}", c.field, c.have, c.want)
                    })
                    .collect(),
            };
            if let Some(error) = &outcome.error {
                lines.push(format!("error: {error}"));
            }
            details.push(lines);
        }
        let headers = ["KIND", "ROLE", "NAME", "ACTION"];
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let mut out = String::new();
        let how = match (self.command, self.dry_run) {
            ("plan", _) => "plan".to_owned(),
            (_, true) => format!("apply --dry-run --policy {}", policy_name(self.policy)),
            _ => format!("apply --policy {}", policy_name(self.policy)),
        };
        let _ = writeln!(out, "parti provision {how} on {}\n", self.server);
        let line = |cells: [&str; 4], detail: &str| {
            let mut text = String::new();
            for (cell, width) in cells.iter().zip(widths) {
                let _ = write!(text, "{cell:<width$}  ");
            }
            text.push_str(detail);
            text.trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", line(headers, "DETAILS"));
        let indent = widths.iter().map(|w| w + 2).sum::<usize>();
        for (row, lines) in rows.iter().zip(&details) {
            let cells = [
                row[0].as_str(),
                row[1].as_str(),
                row[2].as_str(),
                row[3].as_str(),
            ];
            let mut lines = lines.iter();
            let first = lines.next().map_or("", String::as_str);
            let _ = writeln!(out, "{}", line(cells, first));
            for more in lines {
                let _ = writeln!(out, "{:indent$}{more}", "");
            }
        }
        out.push('\n');
        out.push_str(&self.footer());
        out
    }

    /// The closing lines: the counts and what to do next.
    fn footer(&self) -> String {
        let s = self.summary();
        let executed = self.command == "apply" && !self.dry_run && self.error.is_none();
        let failed = self.outcomes.iter().filter(|o| o.error.is_some()).count();
        let labels = if executed {
            ["created", "updated in place", "recreated"]
        } else {
            ["to create", "to update in place", "to recreate"]
        };
        // Failed writes are counted apart from the ones carried out.
        let done = |action: Action, planned: usize| {
            if executed {
                self.rows()
                    .filter(|(_, step, o)| step.action == action && o.error.is_none())
                    .count()
            } else {
                planned
            }
        };
        let mut counts = Vec::new();
        for (n, what) in [
            (done(Action::Create, s.create), labels[0]),
            (done(Action::Update, s.update), labels[1]),
            (done(Action::Recreate, s.recreate), labels[2]),
            (failed, "failed"),
            (s.drift, "drifting"),
            (s.ok, "ok"),
        ] {
            if n > 0 {
                counts.push(format!("{n} {what}"));
            }
        }
        let mut out = format!("{}.\n", counts.join(", "));
        let left: Vec<String> = self
            .rows()
            .filter(|(_, step, _)| !step.remaining().is_empty())
            .map(|(resource, step, _)| {
                let fields: Vec<&str> = step.remaining().iter().map(|f| f.as_str()).collect();
                format!("{} ({})", resource.name, fields.join(", "))
            })
            .collect();
        if self.command == "plan" {
            if s.create > 0 || s.drift > 0 {
                out.push_str(
                    "Run `parti provision apply` to create what is missing; drift needs \
                     --policy adopt (in place) or --policy force --yes-destroy-data (recreate).\n",
                );
            }
            return out;
        }
        if self.dry_run {
            out.push_str("Dry run: nothing was changed.\n");
        } else if self.error.is_some() {
            out.push_str("Refused: nothing was changed.\n");
        }
        if !left.is_empty() {
            let _ = writeln!(out, "Still differing: {}.", left.join("; "));
        }
        out
    }
}

/// The `--policy` value of a policy.
fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::Warn => "warn",
        Policy::Adopt => "adopt",
        Policy::Force => "force",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parti::store::BucketSpec;

    use super::super::plan::{Observed, plan};
    use super::*;
    use crate::buckets::Role;

    fn resources() -> Vec<Resource> {
        vec![
            Resource::bucket(
                Role::Heartbeat,
                BucketSpec::new("hb").expiring(Duration::from_secs(6)),
            ),
            Resource::bucket(Role::Assignment, BucketSpec::new("as")),
        ]
    }

    fn drifting() -> Observed {
        Observed {
            storage: async_nats::jetstream::stream::StorageType::File,
            replicas: 1,
            max_age: Duration::from_secs(6),
            history: 5,
            limit_markers: true,
            max_consumers: -1,
            retention: async_nats::jetstream::stream::RetentionPolicy::Limits,
            subjects: Default::default(),
        }
    }

    #[test]
    fn the_table_lists_every_resource_with_its_details() {
        let resources = resources();
        let steps = plan(&resources, &[Some(drifting()), None], Policy::Warn);
        let report = Report::new("nats://x:1", &resources, &steps, Policy::Warn);
        assert_eq!(
            report.human(),
            "parti provision plan on nats://x:1\n\
             \n\
             KIND    ROLE        NAME  ACTION  DETAILS\n\
             bucket  heartbeat   hb    drift   history: have 5, want 1; --policy adopt changes it in place\n\
             bucket  assignment  as    create  storage=file replicas=1 max_age=none history=1 limit_markers=off\n\
             \n\
             1 to create, 1 drifting.\n\
             Run `parti provision apply` to create what is missing; drift needs --policy adopt \
             (in place) or --policy force --yes-destroy-data (recreate).\n"
        );
    }

    #[test]
    fn an_applied_update_is_shown_in_the_past_tense() {
        let resources = resources();
        let mut have = drifting();
        have.storage = async_nats::jetstream::stream::StorageType::Memory;
        let steps = plan(&resources, &[Some(have), None], Policy::Adopt);
        let mut report = Report::new("nats://x:1", &resources, &steps, Policy::Adopt);
        report.command = "apply";
        report.outcomes = vec![Outcome::applied(), Outcome::failed("no space".into())];
        // Continuation lines start under DETAILS.
        let pad = " ".repeat(35);
        assert_eq!(
            report.human(),
            format!(
                "parti provision apply --policy adopt on nats://x:1\n\
             \n\
             KIND    ROLE        NAME  ACTION   DETAILS\n\
             bucket  heartbeat   hb    updated  storage: have memory, want file; cannot change in place, stays\n\
             {pad}history: have 5, want 1; changed in place\n\
             bucket  assignment  as    failed   storage=file replicas=1 max_age=none history=1 limit_markers=off\n\
             {pad}error: no space\n\
             \n\
             1 updated in place, 1 failed.\n\
             Still differing: hb (storage).\n"
            )
        );
    }

    #[test]
    fn the_json_document_has_a_stable_shape() {
        let resources = resources();
        let steps = plan(&resources, &[Some(drifting()), None], Policy::Warn);
        let mut report = Report::new("nats://x:1", &resources, &steps, Policy::Warn);
        report.exit_code = 2;
        let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "schema": 1,
                "command": "plan",
                "policy": "warn",
                "dryRun": false,
                "server": "nats://x:1",
                "resources": [
                    {
                        "kind": "bucket",
                        "role": "heartbeat",
                        "name": "hb",
                        "action": "drift",
                        "want": {
                            "storage": "file",
                            "replicas": "1",
                            "max_age": "6s",
                            "history": "1",
                            "limit_markers": "on"
                        },
                        "changes": [
                            {"field": "history", "have": "5", "want": "1", "inPlace": true}
                        ],
                        "remaining": ["history"],
                        "applied": false,
                        "error": null
                    },
                    {
                        "kind": "bucket",
                        "role": "assignment",
                        "name": "as",
                        "action": "create",
                        "want": {
                            "storage": "file",
                            "replicas": "1",
                            "max_age": "none",
                            "history": "1",
                            "limit_markers": "off"
                        },
                        "changes": [],
                        "remaining": [],
                        "applied": false,
                        "error": null
                    }
                ],
                "summary": {"create": 1, "ok": 0, "drift": 1, "update": 0, "recreate": 0},
                "error": null,
                "exitCode": 2
            })
        );
    }
}
