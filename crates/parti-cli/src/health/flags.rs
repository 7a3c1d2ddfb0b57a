//! The three flags an operator must see, beside the other issues of a [`Report`](super::Report):
//!
//! - **lagging** — a live worker that has not caught up with the committed state: its heartbeat's
//!   `appliedVersion` is below the version of its committed value, or its `released` is below
//!   the committed `cluster` version (it has not carried out the latest commit). `status` is a
//!   snapshot, so it flags any lag with its size in versions; `watch` ([`HoldBack`]) only lag
//!   that lasts longer than one heartbeat interval.
//! - **undecodable** — a key of any of the four buckets that holds something other than what
//!   that key must hold: a value that does not decode, a key that is not a worker ID of the
//!   pool, a key the bucket never holds. Such a value is never taken as a worker, a lease or a
//!   commit.
//! - **belowFloor** — a committed version below a version recorded elsewhere (the `floor` key,
//!   or a live worker's heartbeat), or a leader term below a term recorded in the assignment
//!   bucket (the `cluster` record, the committed worker values, the `floor` key when it records
//!   one). A version below its floor is a warning: a publish that wrote its floor and failed to
//!   commit leaves exactly that, and the next publish continues above it. A term below is an
//!   error: that leader is fenced out and cannot publish.

use std::collections::BTreeMap;

use parti::records::{
    CLUSTER_KEY, COMMIT_PAGES, ClusterRecord, CommitPage, FLOOR_KEY, HISTORY_KEY_PREFIX,
    HistoryEntry, INTENTS_KEY, Intents, PAGE_KEY_PREFIX, REFRESH_KEY, RefreshRequest, VersionFloor,
    WorkerRecord, parse_page_key, parse_worker_key,
};
use parti::stable_id::StableIdConfig;
use parti::store::{Entry, codec};
use serde::{Deserialize, Serialize};

use super::{Issue, Report, Severity, sort_issues};
use crate::buckets::Role;

/// A live worker behind the committed state (`lagging` in the JSON document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Lag {
    /// The worker ID.
    pub(crate) worker: String,
    /// From its heartbeat: the version of the assignment it applied.
    pub(crate) applied_version: u64,
    /// The version of its committed value (what it should have applied); `None` when the
    /// committed map does not name it.
    pub(crate) assigned_version: Option<u64>,
    /// From its heartbeat: the latest commit it has carried out.
    pub(crate) released: u64,
    /// The committed `cluster` version.
    pub(crate) committed_version: u64,
    /// How many versions behind: the larger of `assignedVersion − appliedVersion` and
    /// `committedVersion − released`.
    pub(crate) behind: u64,
}

/// A key whose value is not what that key must hold (`undecodable` in the JSON document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Undecodable {
    /// The bucket's role.
    pub(crate) role: Role,
    /// The bucket's name.
    pub(crate) bucket: String,
    /// The key.
    pub(crate) key: String,
    /// Why, in a few words.
    pub(crate) reason: String,
}

/// What is below its floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Below {
    /// The committed `cluster` version.
    Version,
    /// The leader lease's term.
    Term,
}

/// A version or term lower than one recorded elsewhere (`belowFloor` in the JSON document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BelowFloor {
    /// A version or a term.
    pub(crate) what: Below,
    /// Where the low value is: `bucket/cluster` (a version) or `bucket/leader` (a term).
    pub(crate) subject: String,
    /// The low value.
    pub(crate) value: u64,
    /// The higher value recorded elsewhere.
    pub(crate) floor: u64,
    /// Where that is recorded: `bucket/key`.
    pub(crate) floor_source: String,
}

impl BelowFloor {
    fn severity(&self) -> Severity {
        match self.what {
            Below::Version => Severity::Warning,
            Below::Term => Severity::Error,
        }
    }
}

/// The flags of a report; each also becomes an issue (see [`issues`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Flags {
    /// Live workers behind the committed state.
    pub(crate) lagging: Vec<Lag>,
    /// Keys that do not hold what they must.
    pub(crate) undecodable: Vec<Undecodable>,
    /// Versions and terms below their floor.
    pub(crate) below_floor: Vec<BelowFloor>,
}

/// The issue of each flag: `lagging` (warning), `undecodableValue` (error) and `belowFloor`
/// (warning for a version, error for a term).
pub(crate) fn issues(flags: &Flags) -> Vec<Issue> {
    let mut issues = Vec::new();
    for lag in &flags.lagging {
        let applied = match lag.assigned_version {
            Some(assigned) if lag.applied_version < assigned => {
                format!("applied {} of its assigned {assigned}", lag.applied_version)
            }
            _ => format!("applied {}", lag.applied_version),
        };
        issues.push(Issue::warning(
            "lagging",
            &lag.worker,
            format!(
                "{} version(s) behind: {applied}, released {} of the committed {}",
                lag.behind, lag.released, lag.committed_version
            ),
        ));
    }
    for u in &flags.undecodable {
        issues.push(Issue::error(
            "undecodableValue",
            format!("{}/{}", u.bucket, u.key),
            format!("{}; workers ignore it", u.reason),
        ));
    }
    for b in &flags.below_floor {
        let message = match b.what {
            Below::Version => format!(
                "the committed version {} is below {} recorded in {}: a publish began and did not \
                 commit (failed, or still in flight), or the cluster record went back; the next \
                 publish continues above {}",
                b.value, b.floor, b.floor_source, b.floor
            ),
            Below::Term => format!(
                "the leader's term {} is below term {} recorded in {}: this leader is fenced out \
                 and cannot publish (was the election bucket recreated? clear the cluster record \
                 to recover, see docs/ownership.md)",
                b.value, b.floor, b.floor_source
            ),
        };
        issues.push(Issue {
            severity: b.severity(),
            kind: "belowFloor",
            subject: b.subject.clone(),
            message,
        });
    }
    issues
}

/// Whether `key` may name a worker: a worker ID of the pool when the pool is known.
pub(crate) fn pool_reason(pool: Option<&StableIdConfig>, key: &str) -> Option<String> {
    let pool = pool?;
    (!pool.is_pool_id(key)).then(|| {
        format!(
            "{key:?} is not a worker ID of the pool {p}-{}…{p}-{} (pass the --config the \
             cluster uses if its pool differs)",
            pool.min,
            pool.max,
            p = pool.prefix
        )
    })
}

/// The short reason of a decoding error.
pub(crate) fn short(error: &parti::Error) -> String {
    match error {
        parti::Error::Decode { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The floor key as found: its version, and its term if it records one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Floor {
    /// The version floor.
    pub(crate) version: u64,
    /// The term, when the value records one.
    pub(crate) term: Option<u64>,
}

/// A term, in any value that records one beside what it must hold.
#[derive(Deserialize)]
struct MaybeTerm {
    #[serde(default)]
    term: Option<u64>,
}

/// Decodes the `floor` value.
pub(crate) fn decode_floor(bucket: &str, value: &[u8]) -> Result<Floor, parti::Error> {
    let floor: VersionFloor = codec::decode(bucket, FLOOR_KEY, value)?;
    let term = codec::decode::<MaybeTerm>(bucket, FLOOR_KEY, value)
        .ok()
        .and_then(|t| t.term);
    Ok(Floor {
        version: floor.version,
        term,
    })
}

/// The version of the `floor` key among `entries`, if it decodes.
pub(crate) fn floor_version(entries: &BTreeMap<String, Entry>) -> Option<u64> {
    let entry = entries.get(FLOOR_KEY)?;
    decode_floor("", &entry.value).ok().map(|f| f.version)
}

/// Checks every key of the assignment bucket; returns the floor.
pub(crate) fn check_assignment(
    bucket: &str,
    entries: &BTreeMap<String, Entry>,
    pool: Option<&StableIdConfig>,
    out: &mut Vec<Undecodable>,
) -> Option<Floor> {
    let mut floor = None;
    let mut bad = |key: &str, reason: String| {
        out.push(Undecodable {
            role: Role::Assignment,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            reason,
        });
    };
    for (key, entry) in entries {
        let value = &entry.value;
        match key.as_str() {
            CLUSTER_KEY => {
                if let Err(e) = codec::decode::<ClusterRecord>(bucket, key, value) {
                    bad(key, format!("not a cluster record: {}", short(&e)));
                }
            }
            FLOOR_KEY => match decode_floor(bucket, value) {
                Ok(f) => floor = Some(f),
                Err(e) => bad(key, format!("not a version floor: {}", short(&e))),
            },
            REFRESH_KEY => match codec::decode::<RefreshRequest>(bucket, key, value) {
                Ok(request) => {
                    if let Some(reason) = pool_reason(pool, request.requested_by.as_str()) {
                        bad(
                            key,
                            format!("a refresh request from a non-worker: {reason}"),
                        );
                    }
                }
                Err(e) => bad(key, format!("not a refresh request: {}", short(&e))),
            },
            _ if key.starts_with(HISTORY_KEY_PREFIX) => {
                if let Err(e) = codec::decode::<HistoryEntry>(bucket, key, value) {
                    bad(key, format!("not a history entry: {}", short(&e)));
                }
            }
            INTENTS_KEY => {
                if let Err(e) = codec::decode::<Intents>(bucket, key, value) {
                    bad(key, format!("not operator intents: {}", short(&e)));
                }
            }
            _ if key.starts_with(PAGE_KEY_PREFIX) => match parse_page_key(key) {
                Some(_) => {
                    if let Err(e) = codec::decode::<CommitPage>(bucket, key, value) {
                        bad(key, format!("not a commit page: {}", short(&e)));
                    }
                }
                None => bad(
                    key,
                    format!(
                        "not a commit page key (commit.0 to commit.{})",
                        COMMIT_PAGES - 1
                    ),
                ),
            },
            _ => match parse_worker_key(key) {
                None => bad(
                    key,
                    "unexpected key: the assignment bucket holds cluster, floor, refresh, \
                     intents, history.{version}, commit.{page} and worker.{id}.a|b"
                        .to_owned(),
                ),
                Some((worker, _)) => {
                    if let Some(reason) = pool_reason(pool, worker.as_str()) {
                        bad(key, reason);
                    } else if let Err(e) = codec::decode::<WorkerRecord>(bucket, key, value) {
                        bad(key, format!("not a worker assignment: {}", short(&e)));
                    }
                }
            },
        }
    }
    floor
}

/// What the lag check needs of one worker.
pub(crate) struct LagInput<'a> {
    /// The worker ID.
    pub(crate) worker: &'a str,
    /// Its heartbeat.
    pub(crate) beat: &'a parti::heartbeat::HeartbeatValue,
    /// The version of its committed value, if the map names it.
    pub(crate) assigned_version: Option<u64>,
    /// The committed `cluster` version.
    pub(crate) committed_version: u64,
}

/// The lag of a live worker, if it lags.
pub(crate) fn lag(input: &LagInput<'_>) -> Option<Lag> {
    let applied = input.beat.applied_version;
    let released = input.beat.released;
    let behind = input
        .assigned_version
        .map_or(0, |a| a.saturating_sub(applied))
        .max(input.committed_version.saturating_sub(released));
    (behind > 0).then(|| Lag {
        worker: input.worker.to_owned(),
        applied_version: applied,
        assigned_version: input.assigned_version,
        released,
        committed_version: input.committed_version,
        behind,
    })
}

/// Holds `lagging` and `belowFloor` findings back until they have lasted longer than a grace
/// period (one heartbeat interval): for `parti watch`, which sees every instant of a publish,
/// including those in which a worker has not applied it yet.
#[derive(Debug)]
pub(crate) struct HoldBack {
    grace_ms: u64,
    /// Finding → when it was first seen (report time, Unix ms).
    since: BTreeMap<(&'static str, String), u64>,
}

impl HoldBack {
    /// A hold-back of `grace`.
    pub(crate) fn new(grace: std::time::Duration) -> Self {
        Self {
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            since: BTreeMap::new(),
        }
    }

    /// Drops from `report` the findings first seen less than the grace period ago (and their
    /// issues); forgets those that are gone.
    pub(crate) fn apply(&mut self, report: &mut Report) {
        let now = report.generated_at_ms;
        let lag_key = |l: &Lag| ("lagging", l.worker.clone());
        let floor_key = |b: &BelowFloor| ("belowFloor", format!("{:?} {}", b.what, b.floor_source));
        let seen: Vec<(&'static str, String)> = report
            .lagging
            .iter()
            .map(lag_key)
            .chain(report.below_floor.iter().map(floor_key))
            .collect();
        self.since.retain(|k, _| seen.contains(k));
        for key in seen {
            self.since.entry(key).or_insert(now);
        }
        let grace = self.grace_ms;
        let since = &self.since;
        let lasted = |key: &(&'static str, String)| {
            since
                .get(key)
                .is_some_and(|t| now.saturating_sub(*t) > grace)
        };
        report.lagging.retain(|l| lasted(&lag_key(l)));
        report.below_floor.retain(|b| lasted(&floor_key(b)));
        report
            .issues
            .retain(|i| i.kind != "lagging" && i.kind != "belowFloor");
        let flags = Flags {
            lagging: report.lagging.clone(),
            below_floor: report.below_floor.clone(),
            undecodable: Vec::new(),
        };
        report.issues.extend(issues(&flags));
        sort_issues(&mut report.issues);
        report.consistent = !report.issues.iter().any(|i| i.severity == Severity::Error);
    }
}
