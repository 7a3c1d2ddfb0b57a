//! The health report behind `status` and `watch`: raw bucket contents in, a checked view out
//! (ownership consistency, worker health, flags, versions). Depends only on the leaves
//! [`crate::buckets`] and [`crate::text`]; its human form is in [`crate::render`].
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
//! - Flags, each also a top-level field of the document (see [`flags`]): `lagging` (a live
//!   worker behind the committed state; warning), `undecodable` (a key of any bucket that does
//!   not hold what it must; the `undecodableValue` error), `belowFloor` (a committed version
//!   below its floor, a warning; a leader term below a recorded term, an error).
//! - Versions (rolling upgrades): each worker's heartbeat announces its protocol and
//!   capabilities; `versions` groups the workers with a heartbeat by both. More than one group
//!   is a mixed fleet (flag `mixedVersions`, a warning naming what the older workers lack); a
//!   protocol this build does not understand is a `protocolUnsupported` warning (a leader of
//!   this build keeps that worker out of the map).
//! - Values under keys that are not worker IDs of the pool, and values that do not decode, are
//!   never taken as a worker, a lease or a commit: no worker row comes from them alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use parti::records::{CLUSTER_KEY, FLOOR_KEY, Published, worker_key};
use parti::stable_id::StableIdConfig;
use parti::store::Entry;
use parti::store::codec;
use parti::{ClusterPhase, Lifecycle};
use serde::Serialize;

use crate::buckets::Role;

mod flags;

use flags::{Below, BelowFloor, Flags, Lag, LagInput, Undecodable};
pub(crate) use flags::{HoldBack, floor_version};

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
    /// Every live entry of the election bucket by key (the lease is `leader`).
    pub(crate) election: BTreeMap<String, Entry>,
    /// The committed assignment (`None` when the bucket does not exist).
    pub(crate) published: Option<Published>,
    /// Every live entry of the assignment bucket by key (for the checks of each key and the
    /// `floor`; the committed map itself comes from `published`).
    pub(crate) assignment: BTreeMap<String, Entry>,
    /// The worker-ID pool: keys outside it are never workers. `None` accepts any key.
    pub(crate) pool: Option<StableIdConfig>,
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
    /// Live workers behind the committed state.
    pub(crate) lagging: Vec<Lag>,
    /// Keys of any bucket that do not hold what they must.
    pub(crate) undecodable: Vec<Undecodable>,
    /// Versions and terms below a floor recorded elsewhere.
    pub(crate) below_floor: Vec<BelowFloor>,
    /// The workers with a heartbeat, grouped by protocol and capabilities: more than one group
    /// is a mixed fleet (a rolling upgrade in progress).
    pub(crate) versions: Vec<VersionGroup>,
    /// The operator's intents (drain, pin, freeze), when the key holds any; an undecodable key
    /// is listed under `undecodable` instead.
    pub(crate) intents: Option<parti::control::Intents>,
}

/// Workers that announce the same protocol and capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VersionGroup {
    /// The protocol (0 for builds that predate it).
    pub(crate) protocol: u32,
    /// The capability names, sorted.
    pub(crate) capabilities: Vec<String>,
    /// Whether a leader of this build understands the protocol.
    pub(crate) supported: bool,
    /// The capabilities this build knows that the group lacks (hand-offs from these workers
    /// take the fallback path under a leader of this build).
    pub(crate) missing: Vec<String>,
    /// The worker IDs, sorted.
    pub(crate) workers: Vec<String>,
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
    /// Label → partitions parked (no worker has the label; held by no one), when any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub(crate) parked: std::collections::BTreeMap<String, usize>,
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
    /// From the heartbeat, while its state is `degraded`: why (`natsUnreachable`, `kvErrors`;
    /// see `docs/operations.md`). `None` otherwise, and for workers that do not report it.
    pub(crate) degraded_reason: Option<parti::DegradedReason>,
    pub(crate) heartbeat_age_ms: Option<u64>,
    pub(crate) applied_version: Option<u64>,
    /// From the heartbeat: the latest commit it has carried out.
    pub(crate) released: Option<u64>,
    /// From the heartbeat: the protocol it speaks (0 for builds that predate it).
    pub(crate) protocol: Option<u32>,
    /// From the heartbeat: the capabilities it announces, sorted (unknown names included).
    pub(crate) capabilities: Option<Vec<String>>,
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
    let mut flags = Flags::default();
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

    let pool = snapshot.pool.as_ref();
    let facts = collect_facts(snapshot, &mut flags.undecodable);
    let leader = leader_report(snapshot, &mut flags.undecodable);
    let assignment_name = snapshot.bucket_name(Role::Assignment);
    let floor = flags::check_assignment(
        assignment_name,
        &snapshot.assignment,
        pool,
        &mut flags.undecodable,
    );
    let intents = snapshot
        .assignment
        .get(parti::control::INTENTS_KEY)
        .and_then(|e| {
            parti::store::codec::decode(assignment_name, parti::control::INTENTS_KEY, &e.value).ok()
        });
    let published = snapshot.published.as_ref().map(|p| pool_only(p, pool));
    if let Some(p) = &published {
        // What the committed read found undecodable and the key checks did not (yet) see.
        for key in &p.garbage {
            let listed = flags
                .undecodable
                .iter()
                .any(|u| u.role == Role::Assignment && &u.key == key);
            if !listed {
                flags.undecodable.push(Undecodable {
                    role: Role::Assignment,
                    bucket: assignment_name.to_owned(),
                    key: key.clone(),
                    reason: "does not decode (see the workers' logs)".to_owned(),
                });
            }
        }
    }
    let published = published.as_ref();
    let record = published.and_then(|p| p.record.as_ref()).map(|(r, _)| r);
    let heartbeat_ttl = snapshot
        .bucket(Role::Heartbeat)
        .and_then(|b| b.max_age_ms)
        .map(Duration::from_millis);

    let mut workers: Vec<WorkerReport> = Vec::new();
    // A worker is known from a value that decodes, or from the committed map; never from
    // garbage alone.
    let mut ids: BTreeSet<&str> = facts
        .iter()
        .filter(|(_, f)| f.stable_id.is_some() || f.heartbeat.is_some())
        .map(|(id, _)| id.as_str())
        .collect();
    if let Some(record) = record {
        ids.extend(record.workers.keys().map(|w| w.as_str()));
    }
    for id in ids {
        let fact = facts.get(id);
        let stable = fact.and_then(|f| f.stable_id.as_ref());
        let beat = fact.and_then(|f| f.heartbeat.as_ref());
        let has_id = stable.is_some() || fact.is_some_and(|f| f.stable_id_garbage);
        let has_beat = beat.is_some() || fact.is_some_and(|f| f.heartbeat_garbage);
        let committed = published.and_then(|p| p.workers.get(id));
        let in_map = record.is_some_and(|r| r.workers.contains_key(id));
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
            degraded_reason: beat
                .filter(|b| b.state == parti::State::Degraded)
                .and_then(|b| b.degraded_reason),
            heartbeat_age_ms: age,
            applied_version: beat.map(|b| b.applied_version),
            released: beat.map(|b| b.released),
            protocol: beat.map(|b| b.protocol),
            capabilities: beat.map(|b| b.capabilities.iter().cloned().collect()),
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
        // An expulsion marker is the leader's word, not the worker's.
        if let (Some(beat), Some(record)) = (beat, record)
            && matches!(health, Health::Live | Health::Late)
            && !beat.expelled
            && let Some(lag) = flags::lag(&LagInput {
                worker: id,
                beat,
                assigned_version: row.assigned_version,
                committed_version: record.version,
            })
        {
            flags.lagging.push(lag);
        }
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
    flags.below_floor = below_floor(
        snapshot,
        published,
        floor,
        leader.as_ref(),
        &workers,
        &facts,
    );
    issues.extend(flags::issues(&flags));
    let versions = version_groups(&workers);
    version_issues(
        &versions,
        snapshot.bucket_name(Role::Heartbeat),
        &mut issues,
    );
    sort_issues(&mut issues);
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
        lagging: flags.lagging,
        undecodable: flags.undecodable,
        below_floor: flags.below_floor,
        versions,
        intents,
    }
}

/// The workers with a heartbeat, grouped by protocol and capabilities (by protocol, then
/// capabilities).
fn version_groups(workers: &[WorkerReport]) -> Vec<VersionGroup> {
    use parti::heartbeat::protocol::{self, Capability};
    let mut groups: BTreeMap<(u32, Vec<String>), Vec<String>> = BTreeMap::new();
    for w in workers {
        if let (Some(protocol), Some(capabilities)) = (w.protocol, &w.capabilities) {
            groups
                .entry((protocol, capabilities.clone()))
                .or_default()
                .push(w.id.clone());
        }
    }
    groups
        .into_iter()
        .map(|((number, capabilities), workers)| {
            let supported = protocol::understood(number).is_ok();
            let missing = Capability::ALL
                .into_iter()
                .map(Capability::as_str)
                .filter(|c| supported && !capabilities.iter().any(|have| have == c))
                .map(str::to_owned)
                .collect();
            VersionGroup {
                protocol: number,
                capabilities,
                supported,
                missing,
                workers,
            }
        })
        .collect()
}

/// `protocolUnsupported` for each worker of a protocol this build does not understand;
/// `mixedVersions` when the workers do not all announce the same protocol and capabilities.
fn version_issues(versions: &[VersionGroup], heartbeat_bucket: &str, issues: &mut Vec<Issue>) {
    use parti::heartbeat::protocol::understood;
    for group in versions {
        if let Err(refusal) = understood(group.protocol) {
            for worker in &group.workers {
                issues.push(Issue::warning(
                    "protocolUnsupported",
                    worker,
                    format!(
                        "{refusal}: a leader of this build keeps the worker out of the map \
                         (see \"Rolling upgrade\" in docs/operations.md)"
                    ),
                ));
            }
        }
    }
    if versions.len() < 2 {
        return;
    }
    let described: Vec<String> = versions
        .iter()
        .map(|g| {
            let mut text = format!("protocol {} ({} worker(s)", g.protocol, g.workers.len());
            if !g.missing.is_empty() {
                text.push_str(&format!(", lacking {}", g.missing.join(", ")));
            }
            text.push(')');
            text
        })
        .collect();
    issues.push(Issue::warning(
        "mixedVersions",
        heartbeat_bucket,
        format!(
            "workers run different versions: {}; hand-offs from workers lacking a capability \
             take the slower fallback path until every worker is upgraded",
            described.join("; ")
        ),
    ));
}

/// Errors first, then by kind and subject.
fn sort_issues(issues: &mut [Issue]) {
    issues.sort_by(|a, b| (a.severity, a.kind, &a.subject).cmp(&(b.severity, b.kind, &b.subject)));
}

/// The committed state without values under keys that are not worker IDs of the pool (the key
/// checks report those).
fn pool_only(published: &Published, pool: Option<&StableIdConfig>) -> Published {
    let mut published = published.clone();
    let foreign: Vec<parti::WorkerId> = published
        .workers
        .keys()
        .filter(|w| flags::pool_reason(pool, w.as_str()).is_some())
        .cloned()
        .collect();
    for worker in foreign {
        published.workers.remove(&worker);
        published.slots.remove(&worker);
        published.map.remove_worker(&worker);
    }
    published
}

/// The `belowFloor` findings: the committed version against the `floor` key and the versions
/// live workers report; the leader's term against the terms of the assignment bucket.
fn below_floor(
    snapshot: &Snapshot,
    published: Option<&Published>,
    floor: Option<flags::Floor>,
    leader: Option<&LeaderReport>,
    workers: &[WorkerReport],
    facts: &BTreeMap<String, Facts>,
) -> Vec<BelowFloor> {
    let assignment = snapshot.bucket_name(Role::Assignment);
    let mut found = Vec::new();
    let record = published.and_then(|p| p.record.as_ref()).map(|(r, _)| r);
    if let Some(record) = record {
        let subject = format!("{assignment}/{CLUSTER_KEY}");
        if let Some(floor) = floor.filter(|f| f.version > record.version) {
            found.push(BelowFloor {
                what: Below::Version,
                subject: subject.clone(),
                value: record.version,
                floor: floor.version,
                floor_source: format!("{assignment}/{FLOOR_KEY}"),
            });
        }
        // The highest version a live worker reports (it read it from a commit).
        let heartbeat = snapshot.bucket_name(Role::Heartbeat);
        let reported = workers
            .iter()
            .filter(|w| matches!(w.health, Health::Live | Health::Late))
            .filter_map(|w| {
                let beat = facts.get(&w.id)?.heartbeat.as_ref()?;
                Some((beat.applied_version.max(beat.released), &w.id))
            })
            .max();
        if let Some((version, worker)) = reported.filter(|(v, _)| *v > record.version) {
            found.push(BelowFloor {
                what: Below::Version,
                subject,
                value: record.version,
                floor: version,
                floor_source: format!("{heartbeat}/{worker}"),
            });
        }
    }
    if let Some(leader) = leader {
        // Every term the assignment bucket records; the highest (first found on ties) counts.
        let mut terms: Vec<(u64, String)> = Vec::new();
        if let Some(record) = record {
            terms.push((record.term, format!("{assignment}/{CLUSTER_KEY}")));
        }
        if let Some(p) = published {
            for (worker, (_, rec)) in &p.workers {
                if let Some(slot) = p.slots.get(worker) {
                    terms.push((
                        rec.term,
                        format!("{assignment}/{}", worker_key(worker, *slot)),
                    ));
                }
            }
        }
        if let Some(term) = floor.and_then(|f| f.term) {
            terms.push((term, format!("{assignment}/{FLOOR_KEY}")));
        }
        let highest = terms
            .into_iter()
            .reduce(|best, next| if next.0 > best.0 { next } else { best });
        if let Some((term, source)) = highest.filter(|(t, _)| *t > leader.term) {
            found.push(BelowFloor {
                what: Below::Term,
                subject: format!(
                    "{}/{}",
                    snapshot.bucket_name(Role::Election),
                    parti::election::LEADER_KEY
                ),
                value: leader.term,
                floor: term,
                floor_source: source,
            });
        }
    }
    found
}

/// Decodes stable IDs and heartbeats; garbage and keys outside the pool are flagged, never a
/// panic, and keys outside the pool are left out.
fn collect_facts(snapshot: &Snapshot, out: &mut Vec<Undecodable>) -> BTreeMap<String, Facts> {
    let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
    let pool = snapshot.pool.as_ref();
    for role in [Role::StableId, Role::Heartbeat] {
        let name = snapshot.bucket_name(role);
        let entries = match role {
            Role::StableId => &snapshot.stable_ids,
            _ => &snapshot.heartbeats,
        };
        let mut bad = |key: &str, reason: String| {
            out.push(Undecodable {
                role,
                bucket: name.to_owned(),
                key: key.to_owned(),
                reason,
            });
        };
        for (key, entry) in entries {
            if let Some(reason) = flags::pool_reason(pool, key) {
                bad(key, reason);
                continue;
            }
            let fact = facts.entry(key.clone()).or_default();
            if role == Role::StableId {
                match codec::decode(name, key, &entry.value) {
                    Ok(value) => fact.stable_id = Some(value),
                    Err(e) => {
                        fact.stable_id_garbage = true;
                        bad(key, format!("not a stable-ID value: {}", flags::short(&e)));
                    }
                }
            } else {
                match codec::decode(name, key, &entry.value) {
                    Ok(value) => fact.heartbeat = Some(value),
                    Err(e) => {
                        fact.heartbeat_garbage = true;
                        bad(key, format!("not a heartbeat: {}", flags::short(&e)));
                    }
                }
            }
        }
    }
    facts
}

/// The leader lease; every other key of the election bucket, a value that does not decode and
/// a lease naming a key outside the pool are flagged.
fn leader_report(snapshot: &Snapshot, out: &mut Vec<Undecodable>) -> Option<LeaderReport> {
    let name = snapshot.bucket_name(Role::Election);
    let mut bad = |key: &str, reason: String| {
        out.push(Undecodable {
            role: Role::Election,
            bucket: name.to_owned(),
            key: key.to_owned(),
            reason,
        });
    };
    let mut leader = None;
    for (key, entry) in &snapshot.election {
        if key != parti::election::LEADER_KEY {
            bad(
                key,
                format!(
                    "unexpected key: the election bucket holds only {:?}",
                    parti::election::LEADER_KEY
                ),
            );
            continue;
        }
        match codec::decode::<parti::election::LeaderRecord>(name, key, &entry.value) {
            Ok(record) => {
                if let Some(reason) =
                    flags::pool_reason(snapshot.pool.as_ref(), record.worker.as_str())
                {
                    bad(key, format!("the lease names a non-worker: {reason}"));
                    continue;
                }
                leader = Some(LeaderReport {
                    worker: record.worker.to_string(),
                    instance: record.instance,
                    // 0 only in the instant between winning the lease and writing the term
                    // into it; the term is that winning revision.
                    term: if record.term == 0 {
                        entry.revision
                    } else {
                        record.term
                    },
                    acquired_at_ms: record.acquired_at,
                    held_for_ms: snapshot.now_ms.saturating_sub(record.acquired_at),
                });
            }
            Err(e) => bad(key, format!("not a leader lease: {}", flags::short(&e))),
        }
    }
    leader
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
                crate::text::age(row.heartbeat_age_ms.unwrap_or(0))
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
        _ => ("unknown", None, None),
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
        parked: record.parked.clone(),
    })
}

#[cfg(test)]
mod tests;
