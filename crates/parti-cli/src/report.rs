//! The cluster report behind `status` and `watch`: raw bucket contents in, a checked view out.
//!
//! [`analyze`] is pure (the time is an argument), so every rule below is unit-tested without a
//! server. Its output is also the `status --json` document, whose fields are part of the CLI's
//! contract: see `docs/cli-status-json.md`, and bump [`SCHEMA`] on any incompatible change.
//!
//! Rules:
//! - A worker is anyone with a stable ID, a heartbeat or a place in the committed map.
//! - Its health is `live` (heartbeat and stable ID), `late` (heartbeat older than half the
//!   heartbeat TTL: at least one beat missed), `expired` (no heartbeat, but still holding its
//!   stable ID — a crash not yet cleaned up), `stale` (neither heartbeat nor stable ID, but
//!   still in the map — it left or expired and no new map was published yet) or `unclaimed` (a
//!   heartbeat without a stable ID: the ID was lost).
//! - Errors (they make `status` exit 2): a partition owned by two workers; fewer distinct
//!   partitions in the map than its `partitionCount` (unowned ones) or more; a worker of the
//!   `cluster` record whose committed value is missing; a value that does not decode.
//! - Warnings: expired, stale, late and unclaimed workers; a heartbeat whose instance differs
//!   from the stable ID's; no leader while workers run; a leader without a heartbeat; a map but
//!   no live worker (the cluster is stopped); a missing bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use parti::records::Published;
use parti::store::Entry;
use parti::store::codec;
use parti::{ClusterPhase, Lifecycle};
use serde::Serialize;

use crate::buckets::Role;

/// Version of the JSON document; bumped on incompatible changes only.
pub(crate) const SCHEMA: u32 = 1;

/// What was read from the buckets, as raw entries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// When it was read (Unix ms); heartbeat ages are relative to it.
    pub(crate) now_ms: u64,
    /// The buckets as found.
    pub(crate) buckets: Vec<BucketReport>,
    /// Live stable-ID entries by key.
    pub(crate) stable_ids: BTreeMap<String, Entry>,
    /// Live heartbeat entries by key.
    pub(crate) heartbeats: BTreeMap<String, Entry>,
    /// The `leader` entry of the election bucket.
    pub(crate) leader: Option<Entry>,
    /// The committed assignment (`None` when the bucket does not exist).
    pub(crate) published: Option<Published>,
    /// Whether the partition keys of each worker go into the report.
    pub(crate) with_partitions: bool,
}

impl Snapshot {
    fn bucket(&self, role: Role) -> Option<&BucketReport> {
        self.buckets.iter().find(|b| b.role == role)
    }

    fn bucket_name(&self, role: Role) -> &str {
        self.bucket(role).map_or("?", |b| b.name.as_str())
    }
}

/// The whole report (the `status --json` document).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Report {
    pub(crate) schema: u32,
    pub(crate) generated_at_ms: u64,
    /// False when none of the four buckets exists: no cluster has run with these names.
    pub(crate) found: bool,
    /// True when no error-severity issue was found.
    pub(crate) consistent: bool,
    pub(crate) buckets: Vec<BucketReport>,
    pub(crate) cluster: Option<ClusterReport>,
    pub(crate) leader: Option<LeaderReport>,
    pub(crate) workers: Vec<WorkerReport>,
    pub(crate) issues: Vec<Issue>,
}

/// One bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BucketReport {
    pub(crate) role: Role,
    pub(crate) name: String,
    pub(crate) exists: bool,
    /// TTL of the bucket's values, when it has one.
    pub(crate) max_age_ms: Option<u64>,
}

/// The committed `cluster` record and what the map covers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterReport {
    pub(crate) version: u64,
    pub(crate) term: u64,
    /// `stable`, `scaling`, `rebalancing` or `emergency`.
    pub(crate) phase: &'static str,
    /// While scaling: `cold_start`, `restart` or `planned_scale`.
    pub(crate) scaling_reason: Option<String>,
    /// While scaling: when the window closes (Unix ms).
    pub(crate) scaling_until_ms: Option<u64>,
    /// Why the last publish happened.
    pub(crate) reason: String,
    /// `coldStart` or `running`.
    pub(crate) lifecycle: Lifecycle,
    pub(crate) partition_count: usize,
    /// Distinct partitions owned in the committed map.
    pub(crate) owned_partitions: usize,
    pub(crate) total_weight: u64,
    /// Workers in the map.
    pub(crate) workers: usize,
    pub(crate) first_assignment_at_ms: Option<u64>,
}

/// The leader lease.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LeaderReport {
    pub(crate) worker: String,
    pub(crate) instance: String,
    pub(crate) term: u64,
    pub(crate) acquired_at_ms: u64,
    /// How long it has led.
    pub(crate) held_for_ms: u64,
}

/// A worker's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Health {
    Live,
    Late,
    Expired,
    Stale,
    Unclaimed,
}

impl Health {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::Live => "live",
            Health::Late => "late",
            Health::Expired => "expired",
            Health::Stale => "stale",
            Health::Unclaimed => "unclaimed",
        }
    }
}

/// One worker.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkerReport {
    pub(crate) id: String,
    pub(crate) health: Health,
    pub(crate) leader: bool,
    /// From the heartbeat, else from the stable ID.
    pub(crate) instance: Option<String>,
    /// From the stable ID.
    pub(crate) host: Option<String>,
    pub(crate) id_claimed_at_ms: Option<u64>,
    /// From the heartbeat (`stable`, `scaling`, …).
    pub(crate) state: Option<&'static str>,
    pub(crate) heartbeat_age_ms: Option<u64>,
    pub(crate) applied_version: Option<u64>,
    /// Version of the publish that last changed its partitions.
    pub(crate) assigned_version: Option<u64>,
    pub(crate) in_map: bool,
    pub(crate) partitions: Option<usize>,
    pub(crate) weight: Option<u64>,
    /// Partition subject keys (`a.b`), only with `--partitions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) partition_keys: Option<Vec<String>>,
}

/// How serious an issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Severity {
    Error,
    Warning,
}

/// Something an operator should look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Issue {
    pub(crate) severity: Severity,
    /// Stable identifier of the rule, e.g. `duplicateOwner`.
    pub(crate) kind: &'static str,
    /// What it is about: a worker ID, a partition key, a `bucket/key`.
    pub(crate) subject: String,
    pub(crate) message: String,
}

impl Issue {
    fn error(kind: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            kind,
            subject: subject.into(),
            message: message.into(),
        }
    }

    fn warning(kind: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(kind, subject, message)
        }
    }
}

/// Everything known about one worker ID while building the report.
#[derive(Default)]
struct Facts {
    stable_id: Option<parti::stable_id::StableIdValue>,
    heartbeat: Option<parti::heartbeat::HeartbeatValue>,
    /// Key present but undecodable.
    stable_id_garbage: bool,
    heartbeat_garbage: bool,
}

/// Builds the report.
pub(crate) fn analyze(snapshot: &Snapshot) -> Report {
    let mut issues = Vec::new();
    let found = snapshot.buckets.iter().any(|b| b.exists);
    if found {
        for bucket in snapshot.buckets.iter().filter(|b| !b.exists) {
            issues.push(Issue::warning(
                "bucketMissing",
                &bucket.name,
                format!(
                    "the {:?} bucket {} does not exist",
                    bucket.role, bucket.name
                ),
            ));
        }
    }

    let facts = collect_facts(snapshot, &mut issues);
    let leader = leader_report(snapshot, &mut issues);
    let heartbeat_ttl = snapshot
        .bucket(Role::Heartbeat)
        .and_then(|b| b.max_age_ms)
        .map(Duration::from_millis);

    let published = snapshot.published.as_ref();
    let mut workers: Vec<WorkerReport> = Vec::new();
    let mut ids: BTreeSet<&str> = facts.keys().map(String::as_str).collect();
    if let Some((record, _)) = published.and_then(|p| p.record.as_ref()) {
        ids.extend(record.workers.keys().map(|w| w.as_str()));
    }
    for id in ids {
        let fact = facts.get(id);
        let stable = fact.and_then(|f| f.stable_id.as_ref());
        let beat = fact.and_then(|f| f.heartbeat.as_ref());
        let has_id = stable.is_some() || fact.is_some_and(|f| f.stable_id_garbage);
        let has_beat = beat.is_some() || fact.is_some_and(|f| f.heartbeat_garbage);
        let committed = published.and_then(|p| p.workers.get(id));
        let in_map = published
            .and_then(|p| p.record.as_ref())
            .is_some_and(|(r, _)| r.workers.contains_key(id));
        let age = beat.map(|b| snapshot.now_ms.saturating_sub(b.ts));
        let health = match (has_beat, has_id) {
            (false, true) => Health::Expired,
            (false, false) => Health::Stale,
            (true, false) => Health::Unclaimed,
            (true, true) => match (age, heartbeat_ttl) {
                (Some(age), Some(ttl)) if u128::from(age) * 2 > ttl.as_millis() => Health::Late,
                _ => Health::Live,
            },
        };
        let row = WorkerReport {
            id: id.to_owned(),
            health,
            leader: leader.as_ref().is_some_and(|l| l.worker == id),
            instance: beat
                .map(|b| b.instance.clone())
                .or_else(|| stable.map(|s| s.instance.clone())),
            host: stable.map(|s| s.host.clone()),
            id_claimed_at_ms: stable.map(|s| s.claimed_at),
            state: beat.map(|b| b.state.as_str()),
            heartbeat_age_ms: age,
            applied_version: beat.map(|b| b.applied_version),
            assigned_version: committed.map(|(_, rec)| rec.version),
            in_map,
            partitions: committed.map(|(_, rec)| rec.partitions.len()),
            weight: committed.map(|(_, rec)| {
                rec.partitions
                    .iter()
                    .map(parti::Partition::effective_weight)
                    .sum()
            }),
            partition_keys: committed
                .filter(|_| snapshot.with_partitions)
                .map(|(_, rec)| rec.partitions.iter().map(|p| p.subject_key()).collect()),
        };
        worker_issues(&row, stable, beat, &mut issues);
        workers.push(row);
    }

    if let Some(leader) = &leader {
        let beating = workers
            .iter()
            .any(|w| w.id == leader.worker && w.heartbeat_age_ms.is_some());
        if !beating {
            issues.push(Issue::warning(
                "leaderWithoutHeartbeat",
                &leader.worker,
                format!(
                    "the leader {} has no heartbeat: its lease lapses within the election TTL",
                    leader.worker
                ),
            ));
        }
    } else if workers.iter().any(|w| w.heartbeat_age_ms.is_some())
        && snapshot.bucket(Role::Election).is_some_and(|b| b.exists)
    {
        issues.push(Issue::warning(
            "noLeader",
            snapshot.bucket_name(Role::Election),
            "workers are running but nobody holds the leader lease",
        ));
    }

    let cluster = published.and_then(|p| cluster_report(snapshot, p, &mut issues));
    if cluster.is_some() && !workers.iter().any(|w| w.heartbeat_age_ms.is_some()) {
        issues.push(Issue::warning(
            "noLiveWorkers",
            snapshot.bucket_name(Role::Heartbeat),
            "no worker is running: the map shown is the last one published",
        ));
    }
    issues.sort_by(|a, b| (a.severity, a.kind, &a.subject).cmp(&(b.severity, b.kind, &b.subject)));
    Report {
        schema: SCHEMA,
        generated_at_ms: snapshot.now_ms,
        found,
        consistent: !issues.iter().any(|i| i.severity == Severity::Error),
        buckets: snapshot.buckets.clone(),
        cluster,
        leader,
        workers,
        issues,
    }
}

/// Decodes stable IDs and heartbeats; garbage is an issue, never a panic.
fn collect_facts(snapshot: &Snapshot, issues: &mut Vec<Issue>) -> BTreeMap<String, Facts> {
    let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
    let name = snapshot.bucket_name(Role::StableId);
    for (key, entry) in &snapshot.stable_ids {
        let fact = facts.entry(key.clone()).or_default();
        match codec::decode(name, key, &entry.value) {
            Ok(value) => fact.stable_id = Some(value),
            Err(e) => {
                fact.stable_id_garbage = true;
                issues.push(garbage(name, key, &e));
            }
        }
    }
    let name = snapshot.bucket_name(Role::Heartbeat);
    for (key, entry) in &snapshot.heartbeats {
        let fact = facts.entry(key.clone()).or_default();
        match codec::decode(name, key, &entry.value) {
            Ok(value) => fact.heartbeat = Some(value),
            Err(e) => {
                fact.heartbeat_garbage = true;
                issues.push(garbage(name, key, &e));
            }
        }
    }
    facts
}

fn garbage(bucket: &str, key: &str, error: &dyn std::fmt::Display) -> Issue {
    Issue::error(
        "undecodableValue",
        format!("{bucket}/{key}"),
        format!("value does not decode (ignored by workers): {error}"),
    )
}

fn leader_report(snapshot: &Snapshot, issues: &mut Vec<Issue>) -> Option<LeaderReport> {
    let entry = snapshot.leader.as_ref()?;
    let name = snapshot.bucket_name(Role::Election);
    match codec::decode::<parti::election::LeaderRecord>(name, &entry.key, &entry.value) {
        Ok(record) => Some(LeaderReport {
            worker: record.worker.to_string(),
            instance: record.instance,
            // 0 only in the instant between winning the lease and writing the term into it;
            // the term is that winning revision.
            term: if record.term == 0 {
                entry.revision
            } else {
                record.term
            },
            acquired_at_ms: record.acquired_at,
            held_for_ms: snapshot.now_ms.saturating_sub(record.acquired_at),
        }),
        Err(e) => {
            issues.push(garbage(name, &entry.key, &e));
            None
        }
    }
}

/// The issues of one worker row; `stable` and `beat` are its decoded values.
fn worker_issues(
    row: &WorkerReport,
    stable: Option<&parti::stable_id::StableIdValue>,
    beat: Option<&parti::heartbeat::HeartbeatValue>,
    issues: &mut Vec<Issue>,
) {
    let id = row.id.as_str();
    let in_map = row.in_map;
    match row.health {
        Health::Expired => issues.push(Issue::warning(
            "expiredWorker",
            id,
            format!(
                "no heartbeat, but still holds its stable ID{} (crashed or cut off: the ID \
                 expires by TTL, the leader reassigns its partitions)",
                if in_map {
                    " and partitions in the map"
                } else {
                    ""
                }
            ),
        )),
        Health::Stale => issues.push(Issue::warning(
            "staleMapEntry",
            id,
            "in the map without heartbeat or stable ID (it left or expired; the next publish \
             drops it)",
        )),
        Health::Unclaimed => issues.push(Issue::warning(
            "heartbeatWithoutId",
            id,
            "heartbeats without holding its stable ID (the ID was lost; it must re-claim)",
        )),
        Health::Late => issues.push(Issue::warning(
            "lateHeartbeat",
            id,
            format!(
                "last heartbeat {} ago",
                crate::render::age(row.heartbeat_age_ms.unwrap_or(0))
            ),
        )),
        Health::Live => {}
    }
    if let (Some(stable), Some(beat)) = (stable, beat)
        && stable.instance != beat.instance
    {
        issues.push(Issue::warning(
            "instanceMismatch",
            id,
            format!(
                "the stable ID is held by instance {} but instance {} heartbeats",
                stable.instance, beat.instance
            ),
        ));
    }
    if in_map && row.assigned_version.is_none() {
        issues.push(Issue::error(
            "uncommittedWorker",
            id,
            "in the cluster record, but its committed worker value is missing or stale",
        ));
    }
}

fn cluster_report(
    snapshot: &Snapshot,
    published: &Published,
    issues: &mut Vec<Issue>,
) -> Option<ClusterReport> {
    let name = snapshot.bucket_name(Role::Assignment);
    for key in &published.garbage {
        issues.push(garbage(name, key, &"see the workers' logs"));
    }
    let (record, _) = published.record.as_ref()?;

    // Who owns each partition, by keys (equal keys are the same partition whatever the weight).
    let mut owners: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut total_weight = 0;
    for (worker, (_, rec)) in &published.workers {
        for partition in &rec.partitions {
            owners
                .entry(partition.subject_key())
                .or_default()
                .push(worker.as_str());
            total_weight += partition.effective_weight();
        }
    }
    for (partition, who) in owners.iter().filter(|(_, who)| who.len() > 1) {
        issues.push(Issue::error(
            "duplicateOwner",
            partition,
            format!("owned by {} workers: {}", who.len(), who.join(", ")),
        ));
    }
    let owned = owners.len();
    let complete = record.workers.len() == published.workers.len();
    if owned < record.partition_count && complete {
        issues.push(Issue::error(
            "unownedPartitions",
            name,
            format!(
                "{} of {} partitions have no owner in the map",
                record.partition_count - owned,
                record.partition_count
            ),
        ));
    } else if owned > record.partition_count {
        issues.push(Issue::error(
            "extraPartitions",
            name,
            format!(
                "the map holds {owned} distinct partitions but the cluster record says {}",
                record.partition_count
            ),
        ));
    }

    let (phase, scaling_reason, scaling_until_ms) = match record.phase {
        ClusterPhase::Stable => ("stable", None, None),
        ClusterPhase::Scaling { reason, until_ms } => {
            ("scaling", Some(reason.to_string()), Some(until_ms))
        }
        ClusterPhase::Rebalancing => ("rebalancing", None, None),
        ClusterPhase::Emergency => ("emergency", None, None),
    };
    Some(ClusterReport {
        version: record.version,
        term: record.term,
        phase,
        scaling_reason,
        scaling_until_ms,
        reason: record.reason.clone(),
        lifecycle: record.lifecycle,
        partition_count: record.partition_count,
        owned_partitions: owned,
        total_weight,
        workers: record.workers.len(),
        first_assignment_at_ms: record.first_assignment_at,
    })
}

#[cfg(test)]
mod tests;
