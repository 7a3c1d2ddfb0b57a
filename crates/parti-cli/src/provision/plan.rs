//! The provisioning decisions, without I/O: what to do to each resource, given what it should be
//! and what the server says it is.
//!
//! Like the consumer reconciler of the library (`parti::consumer`'s `plan` and `reconcile`), the
//! work is split in two: this module takes plain values — the [`Resource`]s wanted and the
//! [`Observed`] settings of those that exist — and returns one [`Step`] per resource; the shell
//! in [`super`] reads the server, calls [`plan`], and carries the steps out. Every case is a
//! unit test comparing whole outputs.
//!
//! Compared fields, each JetStream stream setting under the name the reports use:
//!
//! | field | stream setting | resources | changes in place |
//! |---|---|---|---|
//! | `storage` | `storage` | all | no |
//! | `replicas` | `num_replicas` | all | yes (the cluster must have the peers) |
//! | `max_age` | `max_age` | buckets | yes |
//! | `history` | `max_msgs_per_subject` | buckets | yes |
//! | `limit_markers` | `allow_msg_ttl` + `subject_delete_marker_ttl` | buckets | yes |
//! | `max_consumers` | `max_consumers` | buckets | yes |
//! | `retention` | `retention` | streams | only between `limits` and `interest` |
//! | `subjects` | `subjects` | streams | yes |
//!
//! The bucket rules are those of the library's compatibility check, so that a bucket reported
//! `ok` is one a worker opens: replicas 0 and 1 are the same, and limit markers a bucket does not
//! need (the assignment bucket) are not drift, and a consumer limit is drift only when the server
//! sets one (≥ 2.15 does by default) below what the pool of worker IDs needs (a worker raises it
//! itself when it opens the bucket). `storage` is the one bucket field that check does
//! not look at (a worker opens a memory bucket); `parti validate --live`, which reuses this
//! comparison to tell whether workers would start, leaves it out.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use parti::store::BucketSpec;
use serde::Serialize;

use crate::buckets::Role;

/// A stream's retention policy, as `--retention` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Retention {
    /// A message is kept until one consumer acknowledges it (what `WorkerConsumer` hands off
    /// without replay).
    WorkQueue,
    /// Messages are kept until a limit (age, count, size) removes them.
    Limits,
    /// A message is kept until every consumer interested in it acknowledges it.
    Interest,
}

impl Retention {
    /// The JetStream policy.
    pub(crate) fn policy(self) -> RetentionPolicy {
        match self {
            Retention::WorkQueue => RetentionPolicy::WorkQueue,
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
        }
    }

    /// The policy's name in reports.
    fn name(policy: RetentionPolicy) -> &'static str {
        match policy {
            RetentionPolicy::WorkQueue => "work-queue",
            RetentionPolicy::Limits => "limits",
            RetentionPolicy::Interest => "interest",
        }
    }
}

/// What a stream must be (the bucket counterpart is the library's [`BucketSpec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamSpec {
    /// The subjects it captures.
    pub(crate) subjects: BTreeSet<String>,
    /// Its retention policy.
    pub(crate) retention: RetentionPolicy,
    /// Its number of replicas.
    pub(crate) replicas: usize,
}

/// The settings a resource must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    /// A KV bucket, as the library opens it (file storage).
    Bucket(BucketSpec),
    /// A plain stream (file storage).
    Stream(StreamSpec),
}

/// One resource to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resource {
    /// Which of the cluster's buckets it is; `None` for the stream a `WorkerConsumer` reads.
    pub(crate) role: Option<Role>,
    /// The bucket or stream name.
    pub(crate) name: String,
    /// Its settings.
    pub(crate) want: Want,
}

impl Resource {
    /// A bucket resource.
    pub(crate) fn bucket(role: Role, spec: BucketSpec) -> Self {
        Self {
            role: Some(role),
            name: spec.name.clone(),
            want: Want::Bucket(spec),
        }
    }

    /// The four buckets of a configuration, as a worker opens them, in [`Role::ALL`] order.
    pub(crate) fn buckets(config: &parti::Config) -> Vec<Self> {
        Role::ALL
            .into_iter()
            .zip(config.bucket_specs())
            .map(|(role, spec)| Self::bucket(role, spec))
            .collect()
    }

    /// The role's name in reports (`stableId`, …, `stream`).
    pub(crate) fn role_name(&self) -> &'static str {
        self.role.map_or("stream", Role::as_str)
    }

    /// The name of the JetStream stream behind it (`KV_<bucket>` for a bucket).
    pub(crate) fn stream_name(&self) -> String {
        match self.want {
            Want::Bucket(_) => format!("KV_{}", self.name),
            Want::Stream(_) => self.name.clone(),
        }
    }

    /// `bucket` or `stream`.
    pub(crate) fn kind(&self) -> &'static str {
        match self.want {
            Want::Bucket(_) => "bucket",
            Want::Stream(_) => "stream",
        }
    }

    /// Every compared field with the value it must have, in report order.
    pub(crate) fn wanted(&self) -> Vec<(Field, String)> {
        let mut out = vec![(Field::Storage, show_storage(StorageType::File))];
        match &self.want {
            Want::Bucket(spec) => {
                out.push((Field::Replicas, spec.replicas.max(1).to_string()));
                out.push((Field::MaxAge, show_age(spec.max_age.unwrap_or_default())));
                out.push((Field::History, spec.history.to_string()));
                out.push((Field::LimitMarkers, show_on(spec.limit_markers)));
                if let Some(n) = spec.min_consumers {
                    out.push((Field::MaxConsumers, format!(">={n}")));
                }
            }
            Want::Stream(spec) => {
                out.push((Field::Replicas, spec.replicas.max(1).to_string()));
                out.push((Field::Retention, Retention::name(spec.retention).to_owned()));
                out.push((Field::Subjects, show_subjects(&spec.subjects)));
            }
        }
        out
    }
}

/// The compared settings of an existing stream (a bucket's or a plain one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Storage backend.
    pub(crate) storage: StorageType,
    /// `num_replicas`.
    pub(crate) replicas: usize,
    /// `max_age` (zero: none).
    pub(crate) max_age: Duration,
    /// `max_msgs_per_subject` (a bucket's history).
    pub(crate) history: i64,
    /// Whether expiries leave markers: `allow_msg_ttl` with a subject delete marker TTL (how
    /// the library creates expiring buckets and recognises them).
    pub(crate) limit_markers: bool,
    /// `max_consumers` (zero or less: the server's default, unlimited before 2.15).
    pub(crate) max_consumers: i32,
    /// Retention policy.
    pub(crate) retention: RetentionPolicy,
    /// Captured subjects.
    pub(crate) subjects: BTreeSet<String>,
}

impl Observed {
    /// The compared settings of a stream configuration as the server reports it.
    pub(crate) fn from_config(config: &stream::Config) -> Self {
        Self {
            storage: config.storage,
            replicas: config.num_replicas,
            max_age: config.max_age,
            history: config.max_messages_per_subject,
            limit_markers: config.allow_message_ttl && config.subject_delete_marker_ttl.is_some(),
            max_consumers: config.max_consumers,
            retention: config.retention,
            subjects: config.subjects.iter().cloned().collect(),
        }
    }
}

/// A compared setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub(crate) enum Field {
    /// Storage backend (`file`, `memory`).
    #[serde(rename = "storage")]
    Storage,
    /// Number of replicas.
    #[serde(rename = "replicas")]
    Replicas,
    /// Expiry of values (`none` when they never expire).
    #[serde(rename = "max_age")]
    MaxAge,
    /// Values kept per key.
    #[serde(rename = "history")]
    History,
    /// Whether expiries leave markers (`on`, `off`).
    #[serde(rename = "limit_markers")]
    LimitMarkers,
    /// Consumers the stream accepts at once (`>=N` wanted; a bucket needs that many watches).
    #[serde(rename = "max_consumers")]
    MaxConsumers,
    /// Retention policy (`work-queue`, `limits`, `interest`).
    #[serde(rename = "retention")]
    Retention,
    /// Captured subjects.
    #[serde(rename = "subjects")]
    Subjects,
}

impl Field {
    /// The name used in reports.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Field::Storage => "storage",
            Field::Replicas => "replicas",
            Field::MaxAge => "max_age",
            Field::History => "history",
            Field::LimitMarkers => "limit_markers",
            Field::MaxConsumers => "max_consumers",
            Field::Retention => "retention",
            Field::Subjects => "subjects",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One setting that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The setting.
    pub(crate) field: Field,
    /// What the server has, as reports show it.
    pub(crate) have: String,
    /// What it must be.
    pub(crate) want: String,
    /// Whether NATS can change it on the existing stream (otherwise only a recreate can).
    pub(crate) in_place: bool,
}

impl Change {
    /// A change of `field` from `have` to `want`.
    fn new(field: Field, have: String, want: String, in_place: bool) -> Self {
        Self {
            field,
            have,
            want,
            in_place,
        }
    }
}

/// What happens to drifting resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Policy {
    /// Report the drift, change nothing.
    Warn,
    /// Change what NATS can change in place; report the rest.
    Adopt,
    /// Delete and recreate the drifting resource (destroys its data).
    Force,
}

/// What is done to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Action {
    /// It is missing: create it.
    Create,
    /// It matches: nothing to do.
    Ok,
    /// It differs and stays so (policy `warn`, or nothing of it can change in place).
    Drift,
    /// It differs: change in place what can be (the rest stays, see [`Step::remaining`]).
    Update,
    /// It differs: delete and create it again, losing its data.
    Recreate,
}

impl Action {
    /// The name used in reports.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Ok => "ok",
            Action::Drift => "drift",
            Action::Update => "update",
            Action::Recreate => "recreate",
        }
    }
}

/// The decision for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// Index of the resource in the list given to [`plan`].
    pub(crate) index: usize,
    /// What to do.
    pub(crate) action: Action,
    /// Every differing setting (empty for `create` and `ok`).
    pub(crate) changes: Vec<Change>,
}

impl Step {
    /// The settings that still differ once the step is carried out.
    pub(crate) fn remaining(&self) -> Vec<Field> {
        match self.action {
            Action::Create | Action::Ok | Action::Recreate => Vec::new(),
            Action::Drift => self.changes.iter().map(|c| c.field).collect(),
            Action::Update => self
                .changes
                .iter()
                .filter(|c| !c.in_place)
                .map(|c| c.field)
                .collect(),
        }
    }

    /// Whether the step writes to the server.
    pub(crate) fn writes(&self) -> bool {
        matches!(
            self.action,
            Action::Create | Action::Update | Action::Recreate
        )
    }
}

/// Every setting of `have` that differs from `want`, in report order.
pub(crate) fn diff(want: &Want, have: &Observed) -> Vec<Change> {
    let mut changes = Vec::new();
    if have.storage != StorageType::File {
        changes.push(Change::new(
            Field::Storage,
            show_storage(have.storage),
            show_storage(StorageType::File),
            false,
        ));
    }
    let replicas = match want {
        Want::Bucket(spec) => spec.replicas,
        Want::Stream(spec) => spec.replicas,
    };
    if have.replicas.max(1) != replicas.max(1) {
        changes.push(Change::new(
            Field::Replicas,
            have.replicas.to_string(),
            replicas.max(1).to_string(),
            true,
        ));
    }
    match want {
        Want::Bucket(spec) => {
            let max_age = spec.max_age.unwrap_or_default();
            if have.max_age != max_age {
                changes.push(Change::new(
                    Field::MaxAge,
                    show_age(have.max_age),
                    show_age(max_age),
                    true,
                ));
            }
            if have.history != i64::from(spec.history) {
                changes.push(Change::new(
                    Field::History,
                    have.history.to_string(),
                    spec.history.to_string(),
                    true,
                ));
            }
            if spec.limit_markers && !have.limit_markers {
                changes.push(Change::new(
                    Field::LimitMarkers,
                    show_on(false),
                    show_on(true),
                    true,
                ));
            }
            if let Some(n) = spec.min_consumers
                && have.max_consumers > 0
                && i64::from(have.max_consumers) < i64::from(n)
            {
                changes.push(Change::new(
                    Field::MaxConsumers,
                    have.max_consumers.to_string(),
                    n.to_string(),
                    true,
                ));
            }
        }
        Want::Stream(spec) => {
            if have.retention != spec.retention {
                let involves_work_queue =
                    [have.retention, spec.retention].contains(&RetentionPolicy::WorkQueue);
                changes.push(Change::new(
                    Field::Retention,
                    Retention::name(have.retention).to_owned(),
                    Retention::name(spec.retention).to_owned(),
                    !involves_work_queue,
                ));
            }
            if have.subjects != spec.subjects {
                changes.push(Change::new(
                    Field::Subjects,
                    show_subjects(&have.subjects),
                    show_subjects(&spec.subjects),
                    true,
                ));
            }
        }
    }
    changes
}

/// The step for every resource: `observed[i]` is what the server has for `resources[i]`
/// (`None`: it does not exist). `plan` itself uses the `warn` policy.
pub(crate) fn plan(
    resources: &[Resource],
    observed: &[Option<Observed>],
    policy: Policy,
) -> Vec<Step> {
    resources
        .iter()
        .enumerate()
        .map(|(index, resource)| {
            let Some(have) = observed.get(index).and_then(Option::as_ref) else {
                return Step {
                    index,
                    action: Action::Create,
                    changes: Vec::new(),
                };
            };
            let changes = diff(&resource.want, have);
            let action = if changes.is_empty() {
                Action::Ok
            } else {
                match policy {
                    Policy::Warn => Action::Drift,
                    Policy::Adopt if changes.iter().any(|c| c.in_place) => Action::Update,
                    Policy::Adopt => Action::Drift,
                    Policy::Force => Action::Recreate,
                }
            };
            Step {
                index,
                action,
                changes,
            }
        })
        .collect()
}

/// The stream configuration an in-place update writes: the existing one with every in-place
/// change of `step` made, everything else (limits, description, placement…) kept as it is.
///
/// A shorter `max_age` shortens a longer duplicates window to it, as NATS requires. A bucket's
/// marker TTL is set the way the library creates a bucket — its `max_age`, at least
/// one second (NATS's floor) — when markers are turned on or `max_age` changes.
pub(crate) fn patched(
    mut config: stream::Config,
    want: &Want,
    changes: &[Change],
) -> stream::Config {
    for change in changes.iter().filter(|c| c.in_place) {
        match (change.field, want) {
            (Field::Replicas, Want::Bucket(spec)) => config.num_replicas = spec.replicas.max(1),
            (Field::Replicas, Want::Stream(spec)) => config.num_replicas = spec.replicas.max(1),
            (Field::MaxAge, Want::Bucket(spec)) => {
                config.max_age = spec.max_age.unwrap_or_default();
                // NATS refuses a duplicates window longer than max_age (and, creating a stream,
                // shortens it to max_age itself).
                if !config.max_age.is_zero() && config.duplicate_window > config.max_age {
                    config.duplicate_window = config.max_age;
                }
                if spec.limit_markers && config.subject_delete_marker_ttl.is_some() {
                    config.subject_delete_marker_ttl = Some(marker_ttl(spec));
                }
            }
            (Field::MaxConsumers, Want::Bucket(spec)) => {
                if let Some(n) = spec.min_consumers.and_then(|n| i32::try_from(n).ok()) {
                    config.max_consumers = n;
                }
            }
            (Field::History, Want::Bucket(spec)) => {
                config.max_messages_per_subject = i64::from(spec.history);
            }
            (Field::LimitMarkers, Want::Bucket(spec)) => {
                config.allow_message_ttl = true;
                config.subject_delete_marker_ttl = Some(marker_ttl(spec));
            }
            (Field::Retention, Want::Stream(spec)) => config.retention = spec.retention,
            (Field::Subjects, Want::Stream(spec)) => {
                config.subjects = spec.subjects.iter().cloned().collect();
            }
            _ => {}
        }
    }
    config
}

/// The subject delete marker TTL the library gives an expiring bucket.
fn marker_ttl(spec: &BucketSpec) -> Duration {
    spec.max_age.unwrap_or_default().max(Duration::from_secs(1))
}

/// What to do about the whole plan, and the exit code it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing left to do (exit 0).
    Clean,
    /// Something differs or is missing and stays so (exit 2 when it counts).
    Pending,
    /// The plan destroys data without `--yes-destroy-data`: refused, nothing done (exit 1).
    Refused(String),
}

/// The verdict of `steps` for `apply` (also with `--dry-run`): refused when a recreate lacks
/// the consent, pending when a setting still differs after the steps, clean otherwise.
pub(crate) fn apply_verdict(steps: &[Step], resources: &[Resource], yes_destroy: bool) -> Verdict {
    let destroyed: Vec<&str> = steps
        .iter()
        .filter(|s| s.action == Action::Recreate)
        .filter_map(|s| resources.get(s.index))
        .map(|r| r.name.as_str())
        .collect();
    if !destroyed.is_empty() && !yes_destroy {
        return Verdict::Refused(format!(
            "--policy force would delete and recreate {}, destroying the data in it; \
             pass --yes-destroy-data to do it, or use --policy adopt to change what can be \
             changed in place. Nothing was changed.",
            destroyed.join(", ")
        ));
    }
    if steps.iter().any(|s| !s.remaining().is_empty()) {
        Verdict::Pending
    } else {
        Verdict::Clean
    }
}

/// The verdict of `steps` for `plan`: pending when anything must be created or differs.
pub(crate) fn plan_verdict(steps: &[Step]) -> Verdict {
    if steps.iter().any(|s| s.action != Action::Ok) {
        Verdict::Pending
    } else {
        Verdict::Clean
    }
}

/// A storage type as reports show it.
fn show_storage(storage: StorageType) -> String {
    match storage {
        StorageType::File => "file".into(),
        StorageType::Memory => "memory".into(),
    }
}

/// A `max_age` as reports show it (`none` for zero).
fn show_age(age: Duration) -> String {
    if age.is_zero() {
        "none".into()
    } else {
        humantime::format_duration(age).to_string()
    }
}

/// A switch as reports show it.
fn show_on(on: bool) -> String {
    if on { "on" } else { "off" }.into()
}

/// Subjects as reports show them: sorted, comma-joined.
fn show_subjects(subjects: &BTreeSet<String>) -> String {
    subjects.iter().cloned().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The four buckets of the default configuration.
    fn buckets() -> Vec<Resource> {
        Resource::buckets(&parti::Config::default())
    }

    fn stream(subjects: &[&str], retention: RetentionPolicy) -> Resource {
        Resource {
            role: None,
            name: "events".into(),
            want: Want::Stream(StreamSpec {
                subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
                retention,
                replicas: 1,
            }),
        }
    }

    /// What the library creates for a spec.
    fn as_created(want: &Want) -> Observed {
        match want {
            Want::Bucket(spec) => Observed {
                storage: StorageType::File,
                replicas: spec.replicas,
                max_age: spec.max_age.unwrap_or_default(),
                history: i64::from(spec.history),
                limit_markers: spec.limit_markers,
                max_consumers: spec
                    .min_consumers
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(-1),
                retention: RetentionPolicy::Limits,
                subjects: BTreeSet::from([format!("$KV.{}.>", spec.name)]),
            },
            Want::Stream(spec) => Observed {
                storage: StorageType::File,
                replicas: spec.replicas,
                max_age: Duration::ZERO,
                history: -1,
                limit_markers: false,
                max_consumers: -1,
                retention: spec.retention,
                subjects: spec.subjects.clone(),
            },
        }
    }

    fn step(index: usize, action: Action, changes: Vec<Change>) -> Step {
        Step {
            index,
            action,
            changes,
        }
    }

    fn change(field: Field, have: &str, want: &str, in_place: bool) -> Change {
        Change::new(field, have.into(), want.into(), in_place)
    }

    #[test]
    fn an_empty_server_needs_everything_created() {
        let resources = buckets();
        let steps = plan(&resources, &[None, None, None, None], Policy::Warn);
        let expected: Vec<Step> = (0..4).map(|i| step(i, Action::Create, vec![])).collect();
        assert_eq!(steps, expected);
        assert_eq!(plan_verdict(&steps), Verdict::Pending);
        assert_eq!(apply_verdict(&steps, &resources, false), Verdict::Clean);
    }

    #[test]
    fn buckets_as_the_library_creates_them_are_ok() {
        let resources = buckets();
        let observed: Vec<_> = resources
            .iter()
            .map(|r| Some(as_created(&r.want)))
            .collect();
        for policy in [Policy::Warn, Policy::Adopt, Policy::Force] {
            let steps = plan(&resources, &observed, policy);
            let expected: Vec<Step> = (0..4).map(|i| step(i, Action::Ok, vec![])).collect();
            assert_eq!(steps, expected, "{policy:?}");
            assert_eq!(plan_verdict(&steps), Verdict::Clean);
            assert_eq!(apply_verdict(&steps, &resources, false), Verdict::Clean);
        }
    }

    #[test]
    fn every_bucket_difference_is_reported_with_both_values() {
        let resources = buckets();
        let mut heartbeat = as_created(&resources[2].want);
        heartbeat.history = 5;
        heartbeat.max_age = secs(60);
        heartbeat.limit_markers = false;
        heartbeat.replicas = 3;
        heartbeat.storage = StorageType::Memory;
        let observed = [
            Some(as_created(&resources[0].want)),
            None,
            Some(heartbeat),
            Some(as_created(&resources[3].want)),
        ];
        let changes = vec![
            change(Field::Storage, "memory", "file", false),
            change(Field::Replicas, "3", "1", true),
            change(Field::MaxAge, "1m", "6s", true),
            change(Field::History, "5", "1", true),
            change(Field::LimitMarkers, "off", "on", true),
        ];
        let steps = plan(&resources, &observed, Policy::Warn);
        assert_eq!(
            steps,
            vec![
                step(0, Action::Ok, vec![]),
                step(1, Action::Create, vec![]),
                step(2, Action::Drift, changes.clone()),
                step(3, Action::Ok, vec![]),
            ]
        );
        assert_eq!(
            steps[2].remaining(),
            [
                Field::Storage,
                Field::Replicas,
                Field::MaxAge,
                Field::History,
                Field::LimitMarkers
            ]
        );
        assert_eq!(apply_verdict(&steps, &resources, false), Verdict::Pending);

        // adopt changes what it can; storage stays.
        let steps = plan(&resources, &observed, Policy::Adopt);
        assert_eq!(steps[2], step(2, Action::Update, changes.clone()));
        assert_eq!(steps[2].remaining(), [Field::Storage]);
        assert_eq!(apply_verdict(&steps, &resources, false), Verdict::Pending);

        // force recreates, only with consent.
        let steps = plan(&resources, &observed, Policy::Force);
        assert_eq!(steps[2], step(2, Action::Recreate, changes));
        assert!(steps[2].remaining().is_empty());
        let Verdict::Refused(message) = apply_verdict(&steps, &resources, false) else {
            panic!("force without consent must be refused");
        };
        assert!(message.contains("parti-heartbeat"), "{message}");
        assert!(message.contains("--yes-destroy-data"), "{message}");
        assert_eq!(apply_verdict(&steps, &resources, true), Verdict::Clean);
    }

    #[test]
    fn the_library_compatibility_rules_apply() {
        let resources = buckets();
        let mut observed: Vec<_> = resources
            .iter()
            .map(|r| Some(as_created(&r.want)))
            .collect();
        // Replicas 0 (server default) is 1; markers on a bucket that does not need them are fine.
        if let Some(o) = observed[0].as_mut() {
            o.replicas = 0;
        }
        if let Some(o) = observed[3].as_mut() {
            o.limit_markers = true;
        }
        let steps = plan(&resources, &observed, Policy::Warn);
        assert!(steps.iter().all(|s| s.action == Action::Ok), "{steps:?}");
    }

    #[test]
    fn a_bucket_that_should_not_expire_reports_none() {
        let resources = buckets();
        let mut assignment = as_created(&resources[3].want);
        assignment.max_age = secs(30);
        let steps = plan(&resources[3..], &[Some(assignment)], Policy::Adopt);
        assert_eq!(
            steps,
            vec![step(
                0,
                Action::Update,
                vec![change(Field::MaxAge, "30s", "none", true)]
            )]
        );
    }

    #[test]
    fn a_consumer_limit_below_the_pool_is_drift_and_no_limit_is_not() {
        let resources = buckets();
        let mut limited = as_created(&resources[3].want);
        limited.max_consumers = 1000;
        let mut config = parti::Config::default();
        config.worker_id_max = 999;
        let big = Resource::buckets(&config);
        let steps = plan(&big[3..], &[Some(limited.clone())], Policy::Adopt);
        assert_eq!(
            steps,
            vec![step(
                0,
                Action::Update,
                vec![change(Field::MaxConsumers, "1000", "4064", true)]
            )]
        );
        let mut unlimited = limited.clone();
        unlimited.max_consumers = -1;
        let steps = plan(&big[3..], &[Some(unlimited)], Policy::Warn);
        assert_eq!(steps, vec![step(0, Action::Ok, vec![])]);
        // The default pool (100 IDs) fits under the default limit.
        let steps = plan(&resources[3..], &[Some(limited)], Policy::Warn);
        assert_eq!(steps, vec![step(0, Action::Ok, vec![])]);
    }

    #[test]
    fn adopt_without_anything_changeable_leaves_drift() {
        let resources = buckets();
        let mut stable = as_created(&resources[0].want);
        stable.storage = StorageType::Memory;
        let steps = plan(&resources[..1], &[Some(stable)], Policy::Adopt);
        assert_eq!(
            steps,
            vec![step(
                0,
                Action::Drift,
                vec![change(Field::Storage, "memory", "file", false)]
            )]
        );
    }

    #[test]
    fn stream_differences() {
        let want = stream(&["b.>", "a.>"], RetentionPolicy::WorkQueue);
        let mut have = as_created(&want.want);
        have.subjects = BTreeSet::from(["a.>".to_owned()]);
        have.retention = RetentionPolicy::Limits;
        // max_age, history and markers are the operator's business on a plain stream.
        have.max_age = secs(3600);
        have.history = 10;
        let steps = plan(std::slice::from_ref(&want), &[Some(have)], Policy::Adopt);
        assert_eq!(
            steps,
            vec![step(
                0,
                Action::Update,
                vec![
                    change(Field::Retention, "limits", "work-queue", false),
                    change(Field::Subjects, "a.>", "a.>,b.>", true),
                ]
            )]
        );
        assert_eq!(steps[0].remaining(), [Field::Retention]);

        // limits ↔ interest changes in place.
        let want = stream(&["a.>"], RetentionPolicy::Interest);
        let mut have = as_created(&want.want);
        have.retention = RetentionPolicy::Limits;
        let steps = plan(std::slice::from_ref(&want), &[Some(have)], Policy::Adopt);
        assert_eq!(
            steps,
            vec![step(
                0,
                Action::Update,
                vec![change(Field::Retention, "limits", "interest", true)]
            )]
        );
    }

    #[test]
    fn wanted_settings_are_listed_for_creation() {
        let resources = buckets();
        let shown = |r: &Resource| {
            r.wanted()
                .into_iter()
                .map(|(f, v)| format!("{f}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            shown(&resources[0]),
            "storage=file replicas=1 max_age=30s history=1 limit_markers=on max_consumers=>=464"
        );
        assert_eq!(
            shown(&resources[3]),
            "storage=file replicas=1 max_age=none history=1 limit_markers=off max_consumers=>=464"
        );
        assert_eq!(
            shown(&stream(&["b.>", "a.>"], RetentionPolicy::WorkQueue)),
            "storage=file replicas=1 retention=work-queue subjects=a.>,b.>"
        );
    }

    #[test]
    fn an_update_changes_only_the_in_place_fields() {
        let resources = buckets();
        let existing = stream::Config {
            name: "KV_parti-heartbeat".into(),
            subjects: vec!["$KV.parti-heartbeat.>".into()],
            max_messages_per_subject: 5,
            max_age: secs(60),
            duplicate_window: secs(60),
            storage: StorageType::Memory,
            description: Some("kept".into()),
            deny_delete: true,
            num_replicas: 1,
            ..Default::default()
        };
        let changes = diff(&resources[2].want, &Observed::from_config(&existing));
        let updated = patched(existing.clone(), &resources[2].want, &changes);
        let expected = stream::Config {
            max_messages_per_subject: 1,
            max_age: secs(6),
            duplicate_window: secs(6),
            allow_message_ttl: true,
            subject_delete_marker_ttl: Some(secs(6)),
            ..existing
        };
        assert_eq!(updated, expected);
        // What is left is what cannot change in place.
        let left = diff(&resources[2].want, &Observed::from_config(&updated));
        assert_eq!(left, vec![change(Field::Storage, "memory", "file", false)]);
    }

    #[test]
    fn a_marker_ttl_follows_a_new_max_age_and_has_a_floor() {
        let spec = BucketSpec::new("b").expiring(Duration::from_millis(300));
        let want = Want::Bucket(spec);
        let existing = stream::Config {
            max_messages_per_subject: 1,
            max_age: secs(60),
            allow_message_ttl: true,
            subject_delete_marker_ttl: Some(secs(60)),
            num_replicas: 1,
            ..Default::default()
        };
        let changes = diff(&want, &Observed::from_config(&existing));
        assert_eq!(changes, vec![change(Field::MaxAge, "1m", "300ms", true)]);
        let updated = patched(existing, &want, &changes);
        assert_eq!(
            (updated.max_age, updated.subject_delete_marker_ttl),
            (Duration::from_millis(300), Some(secs(1)))
        );
    }
}
