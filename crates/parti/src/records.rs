//! The values Parti writes into the `assignment` bucket (SPEC §5.4).
//!
//! Public with the `tools` feature, so that tools (the `parti status` command, dashboards) can
//! read a cluster's state.
//! All values are JSON with `"v": 1` (see [`store::codec`](crate::store::codec)).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::assignment::{AssignmentMap, Lifecycle};
use crate::error::Result;
use crate::partition::{Partition, WorkerId};
use crate::state::ClusterPhase;
use crate::store::{Bucket, codec};

/// Key of the cluster record.
pub const CLUSTER_KEY: &str = "cluster";
/// Key a follower writes to ask the leader for a partition refresh.
pub const REFRESH_KEY: &str = "refresh";
/// Key of the version floor: each publish writes its version here before it commits, so that
/// versions (and the epochs built on them) never start again below it when the `cluster`
/// record is lost or garbage.
pub const FLOOR_KEY: &str = "floor";

/// Key of the operator's intents ([`Intents`]): drained workers, pinned partitions, freeze.
pub const INTENTS_KEY: &str = "intents";

/// `intents`: what operators asked of the leader's placement, applied around the strategy on
/// every publish (see [`control`](crate::control)). Written with revision checks by
/// [`Control`](crate::control::Control) and `parti drain|pin|freeze`; it survives leader
/// changes. A missing key means no intents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Intents {
    /// Workers that get no partitions while live (their partitions move off through the normal
    /// hand-off). Ignored while *every* live worker is drained.
    #[serde(default)]
    pub drained: std::collections::BTreeSet<WorkerId>,
    /// Partitions (by [`subject_key`](Partition::subject_key)) that go to the named worker
    /// whenever it is live and not drained; otherwise the strategy places them.
    #[serde(default)]
    pub pinned: BTreeMap<String, WorkerId>,
    /// Maintenance mode: no partition that has a live owner moves; only orphans (partitions
    /// of crashed or departed workers, new partitions) are placed. Drain and pins wait.
    #[serde(default)]
    pub frozen: bool,
}

impl Intents {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Prefix of the publish history: one key `history.<version>` (20 digits) per publish that
/// changed the map, the last [`HISTORY_KEEP`] kept (see [`HistoryEntry`]).
pub const HISTORY_KEY_PREFIX: &str = "history.";
/// How many publishes the history keeps.
pub const HISTORY_KEEP: usize = 64;
/// How many moves one history entry lists (the count is always exact).
pub const HISTORY_MOVES_LISTED: usize = 1_000;

/// The history key of `version`.
pub fn history_key(version: u64) -> String {
    format!("{HISTORY_KEY_PREFIX}{version:020}")
}

/// `history.<version>`: one publish as the leader made it — when, why, and every partition it
/// moved with the reason for that move. Written by the leader after each publish (best effort:
/// a failed write loses the entry, never the publish); read by `parti history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The committed version.
    pub version: u64,
    /// The publishing leader's term.
    pub term: u64,
    /// When it was committed (Unix milliseconds, the leader's clock).
    pub at_ms: u64,
    /// Why it was published (`cold_start`, `scale_up`, `emergency`, `operator`, `paced`, …).
    pub reason: String,
    /// Workers in the map.
    pub workers: usize,
    /// Partitions in the map.
    pub partitions: usize,
    /// Partitions whose owner changed or that got a first owner.
    pub moved: usize,
    /// The first [`HISTORY_MOVES_LISTED`] of them, in key order.
    pub moves: Vec<HistoryMove>,
}

/// One partition a published map moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HistoryMove {
    /// The partition's keys joined with `.`.
    pub partition: String,
    /// Its previous owner (`None`: a new partition, or one without an owner before).
    pub from: Option<WorkerId>,
    /// Its new owner.
    pub to: WorkerId,
    /// Why it moved: `new partition`, `crash of worker-3`, `worker-3 left`, `drain of
    /// worker-3`, `pin`, `worker-3 joined`, `pacing step`, `partition list change`,
    /// `rebalance`.
    pub why: String,
}

/// The history entries in the bucket, oldest first, and the history keys that did not decode.
///
/// # Errors
///
/// The store's error when the keys cannot be listed.
#[cfg_attr(not(feature = "tools"), allow(dead_code))]
pub async fn read_history(bucket: &dyn Bucket) -> Result<(Vec<HistoryEntry>, Vec<String>)> {
    let mut entries = Vec::new();
    let mut garbage = Vec::new();
    for entry in bucket.list(&format!("{HISTORY_KEY_PREFIX}>")).await? {
        match codec::decode::<HistoryEntry>(bucket.name(), &entry.key, &entry.value) {
            Ok(h) => entries.push(h),
            Err(_) => garbage.push(entry.key),
        }
    }
    entries.sort_by_key(|h| h.version);
    Ok((entries, garbage))
}

/// `floor`: the highest version a publish may have committed, and the term it was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionFloor {
    /// The version.
    pub version: u64,
    /// The publishing leader's term (0 in floors written before terms were recorded here).
    #[serde(default)]
    pub term: u64,
}

/// The highest leader term recorded in the assignment bucket (the `cluster` record and the
/// `floor` key; an undecodable value counts as none): new terms must start above it, even when
/// the election bucket was recreated and its revisions started again.
pub(crate) async fn term_floor(bucket: &dyn Bucket) -> Result<u64> {
    let name = bucket.name();
    let cluster = match bucket.get(CLUSTER_KEY).await? {
        Some(e) => codec::decode::<ClusterRecord>(name, CLUSTER_KEY, &e.value)
            .inspect_err(garbage_seen)
            .map_or(0, |r| r.term),
        None => 0,
    };
    let floor = match bucket.get(FLOOR_KEY).await? {
        Some(e) => codec::decode::<VersionFloor>(name, FLOOR_KEY, &e.value)
            .inspect_err(garbage_seen)
            .map_or(0, |f| f.term),
        None => 0,
    };
    Ok(cluster.max(floor))
}
/// Prefix of the per-worker assignment keys.
pub const WORKER_KEY_PREFIX: &str = "worker.";

/// One of the two keys a worker's assignment alternates between.
///
/// A publish writes the slot that is *not* committed, then commits with the `cluster` record:
/// a publish that fails half-way (store outage, lost lease) leaves the committed values
/// untouched, so the committed map always stays readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// `worker.{id}.a`
    A,
    /// `worker.{id}.b`
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// The assignment key of a worker's slot: `worker.{id}.{a|b}`.
///
/// ```
/// use parti::{WorkerId, records::{Slot, parse_worker_key, worker_key}};
/// let key = worker_key(&WorkerId::new("worker-3"), Slot::B);
/// assert_eq!(key, "worker.worker-3.b");
/// assert_eq!(parse_worker_key(&key), Some((WorkerId::new("worker-3"), Slot::B)));
/// assert_eq!(parse_worker_key("worker.worker-3"), None);
/// ```
pub fn worker_key(id: &WorkerId, slot: Slot) -> String {
    format!("{WORKER_KEY_PREFIX}{id}.{}", slot.suffix())
}

/// The pattern matching both slots of a worker.
pub fn worker_pattern(id: &WorkerId) -> String {
    format!("{WORKER_KEY_PREFIX}{id}.*")
}

/// The worker and slot of an assignment key, if it is one.
pub fn parse_worker_key(key: &str) -> Option<(WorkerId, Slot)> {
    let rest = key.strip_prefix(WORKER_KEY_PREFIX)?;
    let (id, slot) = rest.rsplit_once('.')?;
    let slot = match slot {
        "a" => Slot::A,
        "b" => Slot::B,
        _ => return None,
    };
    (!id.is_empty() && !id.contains('.')).then(|| (WorkerId::new(id), slot))
}

/// `worker.{id}.{slot}`: one worker's partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    /// The publish version that last changed this worker's partitions.
    pub version: u64,
    /// Term of the leader that wrote it.
    pub term: u64,
    /// Cluster lifecycle at that publish.
    pub lifecycle: Lifecycle,
    /// The partitions, sorted.
    pub partitions: Vec<Partition>,
    /// Partitions of `partitions` this worker must not hold yet, by partition ID: each maps the
    /// workers that may still hold it to the version at which they lost it. The worker holds
    /// such a partition only once a later commit lists it without them — after each released
    /// it (its heartbeat's `released` reached that version) or provably stopped (its heartbeat
    /// expired). Release-then-acquire (SPEC §13).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending: BTreeMap<String, BTreeMap<WorkerId, u64>>,
}

/// Which run of a worker a commit speaks to: the process (`instance`) and how many times its
/// lease lapsed (`lapses`). A worker holds what a commit gives it only when the commit names
/// its current lineage, so after a lapse it holds nothing until a leader that has seen it come
/// back commits again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Lineage {
    /// The process's instance ID.
    pub instance: String,
    /// How many times its lease lapsed.
    pub lapses: u64,
}

/// `cluster`: the commit record of a publish, written last with a revision check.
///
/// `workers` maps every worker of the map to the KV revision of its `worker.{id}` value that
/// belongs to this publish. A worker applies its own value only when the revision matches, so
/// a write by a deposed leader (which cannot commit a `cluster` record) is never applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    /// The latest publish version; one more with every publish, across leaders. A group's
    /// first version, and the first after its commit was lost or garbage, is at least the
    /// publishing leader's clock in Unix milliseconds, so that versions never start again
    /// below earlier ones. 0 in the record announcing a cold start before anything was
    /// published.
    pub version: u64,
    /// Term of the leader that wrote it.
    pub term: u64,
    /// What the leader is doing.
    pub phase: ClusterPhase,
    /// Why the last publish happened (e.g. `cold_start`, `emergency`).
    pub reason: String,
    /// Worker → revision of its committed `worker.{id}` value.
    pub workers: BTreeMap<WorkerId, u64>,
    /// Number of partitions in the map.
    pub partition_count: usize,
    /// Cluster lifecycle.
    pub lifecycle: Lifecycle,
    /// When the first assignment of this cluster was published (Unix ms), if it was.
    pub first_assignment_at: Option<u64>,
    /// Worker → the lineage this commit speaks to (from its heartbeat when the leader
    /// published). A worker whose lineage differs holds nothing under this commit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lineages: BTreeMap<WorkerId, Lineage>,
    /// Label → how many of its partitions this map leaves parked: no worker that may receive
    /// partitions has the label, and its `labelSpillGrace` has not run out (see
    /// [`profile`](crate::profile)). They are not in `partitionCount`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parked: BTreeMap<String, usize>,
}

/// `refresh`: a follower's request for a partition refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RefreshRequest {
    /// Who asked.
    pub requested_by: WorkerId,
    /// When (Unix ms).
    pub at: u64,
}

/// The committed state of an assignment bucket, as [`read_published`] finds it.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The cluster record and the revision of the `cluster` key (`None` before the first
    /// publish, or when the record does not decode).
    pub record: Option<(ClusterRecord, u64)>,
    /// Revision of the `cluster` key even when its value was garbage (so it can be healed).
    pub cluster_revision: Option<u64>,
    /// The committed map. Workers of the record whose value is missing, garbage or not the
    /// committed revision are absent (the next publish rewrites them).
    pub map: AssignmentMap,
    /// Worker → (revision, value) of the committed values.
    pub workers: BTreeMap<WorkerId, (u64, WorkerRecord)>,
    /// Worker → the slot holding its committed value.
    pub slots: BTreeMap<WorkerId, Slot>,
    /// Keys whose values did not decode.
    pub garbage: Vec<String>,
}

impl Published {
    /// The committed version (0 before the first publish).
    pub fn version(&self) -> u64 {
        self.record.as_ref().map_or(0, |(r, _)| r.version)
    }

    /// True when the bucket holds exactly `map`, every worker's value committed.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn matches(&self, map: &AssignmentMap) -> bool {
        let Some((record, _)) = &self.record else {
            return false;
        };
        record.workers.len() == map.len()
            && map.iter().all(|(w, parts)| {
                self.workers
                    .get(w)
                    .is_some_and(|(_, rec)| rec.partitions == parts)
            })
    }
}

/// Reads what is committed in an assignment bucket. Values that do not decode are logged,
/// counted, listed in [`Published::garbage`] and otherwise ignored.
///
/// ```no_run
/// # async fn demo(bucket: &dyn parti::store::Bucket) -> parti::Result<()> {
/// let published = parti::records::read_published(bucket).await?;
/// println!("version {} over {} workers", published.version(), published.map.len());
/// # Ok(()) }
/// ```
pub async fn read_published(bucket: &dyn Bucket) -> Result<Published> {
    let mut published = Published::default();
    let Some(entry) = bucket.get(CLUSTER_KEY).await? else {
        return Ok(published);
    };
    published.cluster_revision = Some(entry.revision);
    let record = match codec::decode::<ClusterRecord>(bucket.name(), CLUSTER_KEY, &entry.value) {
        Ok(record) => record,
        Err(e) => {
            garbage_seen(&e);
            published.garbage.push(CLUSTER_KEY.to_owned());
            return Ok(published);
        }
    };
    let pattern = format!("{WORKER_KEY_PREFIX}>");
    for entry in bucket.list(&pattern).await? {
        let Some((worker, slot)) = parse_worker_key(&entry.key) else {
            continue;
        };
        match codec::decode::<WorkerRecord>(bucket.name(), &entry.key, &entry.value) {
            Ok(rec) if record.workers.get(&worker) == Some(&entry.revision) => {
                published.map.set(worker.clone(), rec.partitions.clone());
                published.slots.insert(worker.clone(), slot);
                published.workers.insert(worker, (entry.revision, rec));
            }
            Ok(_) => {}
            Err(e) => {
                garbage_seen(&e);
                published.garbage.push(entry.key.clone());
            }
        }
    }
    published.record = Some((record, entry.revision));
    Ok(published)
}

/// Logs and counts a value that does not decode.
pub(crate) fn garbage_seen(error: &crate::Error) {
    tracing::warn!(%error, "ignoring undecodable value");
    metrics::counter!("parti_kv_decode_errors_total").increment(1);
}

/// The intents and their revision; `None` when the key is missing.
pub(crate) async fn read_intents(bucket: &dyn Bucket) -> Result<Option<(Intents, u64)>> {
    match bucket.get(INTENTS_KEY).await? {
        Some(entry) => {
            let intents = codec::decode::<Intents>(bucket.name(), INTENTS_KEY, &entry.value)?;
            Ok(Some((intents, entry.revision)))
        }
        None => Ok(None),
    }
}

/// The `cluster` record as it concerns one worker: what a follower needs of every commit.
///
/// A full [`ClusterRecord`] names every worker of the fleet twice (`workers`, `lineages`), and
/// every follower reads every commit and phase change: decoding it whole costs each of N
/// followers O(N) allocations per change. [`for_worker`](Self::for_worker) reads the same
/// bytes, checks them exactly as the full decode would, and keeps only this worker's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MyCluster {
    /// The commit's version.
    pub(crate) version: u64,
    /// Term of the leader that wrote it.
    pub(crate) term: u64,
    /// What the leader is doing.
    pub(crate) phase: ClusterPhase,
    /// Cluster lifecycle.
    pub(crate) lifecycle: Lifecycle,
    /// How many workers the commit names.
    pub(crate) workers: usize,
    /// The revision of this worker's committed value, if the commit names it.
    pub(crate) mine: Option<u64>,
    /// The lineage the commit names for this worker.
    pub(crate) lineage: Option<Lineage>,
}

impl MyCluster {
    /// What `record` says to `me`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn of(record: &ClusterRecord, me: &WorkerId) -> Self {
        Self {
            version: record.version,
            term: record.term,
            phase: record.phase,
            lifecycle: record.lifecycle,
            workers: record.workers.len(),
            mine: record.workers.get(me).copied(),
            lineage: record.lineages.get(me).cloned(),
        }
    }

    /// Decodes a `cluster` value for `me`: an error exactly when decoding it as a
    /// [`ClusterRecord`] fails, otherwise [`MyCluster::of`] that record.
    pub(crate) fn for_worker(bucket: &str, key: &str, bytes: &[u8], me: &WorkerId) -> Result<Self> {
        codec::decode_seed(bucket, key, bytes, project::ForWorker(me.as_str()))
    }
}

/// The seeds behind [`MyCluster::for_worker`]: serde visitors that parse and check every field
/// of a [`ClusterRecord`] as its derived `Deserialize` does (types, required fields, duplicate
/// fields) while keeping only one worker's entries: the other workers' keys are borrowed from
/// the input (one vector of them, to count them), their values checked and dropped.
mod project {
    use std::borrow::Cow;
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    use super::{ClusterPhase, Lifecycle, Lineage, MyCluster};

    #[derive(Deserialize)]
    #[serde(field_identifier, rename_all = "camelCase")]
    enum Field {
        Version,
        Term,
        Phase,
        Reason,
        Workers,
        PartitionCount,
        Lifecycle,
        FirstAssignmentAt,
        Lineages,
        Parked,
        #[serde(other)]
        Other,
    }

    /// A [`Lineage`] checked in place: its fields as the derived `Deserialize` reads them,
    /// borrowing the instance where the input allows.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LineageShape<'a> {
        #[serde(borrow)]
        instance: Cow<'a, str>,
        lapses: u64,
    }

    /// A map key, borrowed from the input when it has no escapes.
    struct Key;

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Cow<'de, str>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            cow_str(d)
        }
    }

    /// A string, borrowed from the input when it has no escapes (serde's own `Cow<str>`
    /// always copies).
    fn cow_str<'de, D: de::Deserializer<'de>>(d: D) -> Result<Cow<'de, str>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V)
    }

    /// A `{worker: T}` map: counts its distinct keys and keeps the value under `.0` (the last
    /// one, as a `BTreeMap` would), checking every value as a `T`. The keys are collected
    /// borrowed; a key written twice (or once escaped) counts once, as in the map.
    struct Only<'m, T>(&'m str, std::marker::PhantomData<T>);

    impl<'de, T> DeserializeSeed<'de> for Only<'_, T>
    where
        T: Deserialize<'de>,
    {
        type Value = (usize, Option<T>);
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, T> Visitor<'de> for Only<'_, T>
    where
        T: Deserialize<'de>,
    {
        type Value = (usize, Option<T>);
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map by worker ID")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys: Vec<Cow<'de, str>> = Vec::with_capacity(map.size_hint().unwrap_or(0));
            // Every record a leader writes lists its keys in ascending order (a serialized
            // `BTreeMap`): then they are distinct without a check. Otherwise they are counted
            // after sorting.
            let mut ascending = true;
            let mut mine = None;
            while let Some(key) = map.next_key_seed(Key)? {
                let value = map.next_value::<T>()?;
                if key == self.0 {
                    mine = Some(value);
                }
                if keys.last().is_some_and(|last| *last >= key) {
                    ascending = false;
                }
                keys.push(key);
            }
            if !ascending {
                keys.sort_unstable();
                keys.dedup();
            }
            Ok((keys.len(), mine))
        }
    }

    /// The whole record, for worker `.0`.
    pub(super) struct ForWorker<'m>(pub(super) &'m str);

    impl<'de> DeserializeSeed<'de> for ForWorker<'_> {
        type Value = MyCluster;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<MyCluster, D::Error> {
            d.deserialize_map(self)
        }
    }

    /// Takes a field's value, refusing a second one as the derived `Deserialize` does.
    fn once<'de, A: MapAccess<'de>, T>(
        slot: &mut Option<T>,
        name: &'static str,
        value: impl FnOnce(&mut A) -> Result<T, A::Error>,
        map: &mut A,
    ) -> Result<(), A::Error> {
        if slot.is_some() {
            return Err(de::Error::duplicate_field(name));
        }
        *slot = Some(value(map)?);
        Ok(())
    }

    impl<'de> Visitor<'de> for ForWorker<'_> {
        type Value = MyCluster;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("struct ClusterRecord")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MyCluster, A::Error> {
            let me = self.0;
            let mut version = None;
            let mut term = None;
            let mut phase = None;
            let mut reason: Option<IgnoredAny> = None;
            let mut workers = None;
            let mut partition_count: Option<usize> = None;
            let mut lifecycle = None;
            let mut first_assignment_at: Option<Option<u64>> = None;
            let mut lineages = None;
            let mut parked: Option<BTreeMap<String, usize>> = None;
            while let Some(field) = map.next_key::<Field>()? {
                let m = &mut map;
                match field {
                    Field::Version => once(&mut version, "version", |m| m.next_value::<u64>(), m)?,
                    Field::Term => once(&mut term, "term", |m| m.next_value::<u64>(), m)?,
                    Field::Phase => {
                        once(&mut phase, "phase", |m| m.next_value::<ClusterPhase>(), m)?
                    }
                    Field::Reason => once(
                        &mut reason,
                        "reason",
                        |m| m.next_value::<StrShape>().map(|_| IgnoredAny),
                        m,
                    )?,
                    Field::Workers => once(
                        &mut workers,
                        "workers",
                        |m| m.next_value_seed(Only::<u64>(me, Default::default())),
                        m,
                    )?,
                    Field::PartitionCount => once(
                        &mut partition_count,
                        "partitionCount",
                        |m| m.next_value(),
                        m,
                    )?,
                    Field::Lifecycle => once(
                        &mut lifecycle,
                        "lifecycle",
                        |m| m.next_value::<Lifecycle>(),
                        m,
                    )?,
                    Field::FirstAssignmentAt => once(
                        &mut first_assignment_at,
                        "firstAssignmentAt",
                        |m| m.next_value(),
                        m,
                    )?,
                    Field::Lineages => once(
                        &mut lineages,
                        "lineages",
                        |m| m.next_value_seed(Only::<LineageShape<'de>>(me, Default::default())),
                        m,
                    )?,
                    Field::Parked => once(&mut parked, "parked", |m| m.next_value(), m)?,
                    Field::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let (count, mine) = workers.ok_or_else(|| de::Error::missing_field("workers"))?;
            reason.ok_or_else(|| de::Error::missing_field("reason"))?;
            partition_count.ok_or_else(|| de::Error::missing_field("partitionCount"))?;
            let lineage = lineages.and_then(|(_, mine)| mine).map(|l| Lineage {
                instance: l.instance.into_owned(),
                lapses: l.lapses,
            });
            Ok(MyCluster {
                version: version.ok_or_else(|| de::Error::missing_field("version"))?,
                term: term.ok_or_else(|| de::Error::missing_field("term"))?,
                phase: phase.ok_or_else(|| de::Error::missing_field("phase"))?,
                lifecycle: lifecycle.ok_or_else(|| de::Error::missing_field("lifecycle"))?,
                workers: count,
                mine,
                lineage,
            })
        }
    }

    /// A string checked in place (the `reason`).
    struct StrShape;

    impl<'de> Deserialize<'de> for StrShape {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            cow_str(d).map(|_| StrShape)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn full(bytes: &[u8], me: &WorkerId) -> Option<MyCluster> {
        codec::decode::<ClusterRecord>("a", CLUSTER_KEY, bytes)
            .ok()
            .map(|r| MyCluster::of(&r, me))
    }

    fn projected(bytes: &[u8], me: &WorkerId) -> Option<MyCluster> {
        MyCluster::for_worker("a", CLUSTER_KEY, bytes, me).ok()
    }

    fn record(workers: &[(&str, u64)], lineages: &[(&str, u64)]) -> ClusterRecord {
        ClusterRecord {
            version: 7,
            term: 3,
            phase: ClusterPhase::Emergency,
            reason: "emergency".into(),
            workers: workers
                .iter()
                .map(|(w, r)| (WorkerId::new(*w), *r))
                .collect(),
            partition_count: 10,
            lifecycle: Lifecycle::Running,
            first_assignment_at: Some(5),
            lineages: lineages
                .iter()
                .map(|(w, lapses)| {
                    let lineage = Lineage {
                        instance: format!("i-{w}"),
                        lapses: *lapses,
                    };
                    (WorkerId::new(*w), lineage)
                })
                .collect(),
            parked: [("gpu".to_owned(), 2)].into(),
        }
    }

    /// Values of every JSON type, to put where another was expected.
    fn wrong_values() -> Vec<Value> {
        vec![
            Value::Null,
            json!(true),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!([]),
            json!({}),
            json!({"kind": "stable"}),
        ]
    }

    /// The record as JSON, broken in every way one field can be: each field missing, or of
    /// each JSON type; each worker's and lineage's value of each type; plus duplicates,
    /// escapes, unknown fields and trailing input.
    fn variants(base: &ClusterRecord) -> Vec<Vec<u8>> {
        let good: Value = serde_json::from_slice(&codec::encode(base).unwrap()).unwrap();
        let Value::Object(fields) = &good else {
            unreachable!()
        };
        let mut out = vec![serde_json::to_vec(&good).unwrap()];
        for (name, value) in fields {
            let mut without = fields.clone();
            without.remove(name);
            out.push(serde_json::to_vec(&without).unwrap());
            for wrong in wrong_values() {
                let mut changed = fields.clone();
                changed.insert(name.clone(), wrong.clone());
                out.push(serde_json::to_vec(&changed).unwrap());
                if let Value::Object(entries) = value {
                    for key in entries.keys() {
                        let mut inner = entries.clone();
                        inner.insert(key.clone(), wrong.clone());
                        let mut changed = fields.clone();
                        changed.insert(name.clone(), Value::Object(inner));
                        out.push(serde_json::to_vec(&changed).unwrap());
                    }
                }
            }
            // The field twice.
            let text = serde_json::to_string(&good).unwrap();
            let again = format!("{{\"{name}\":{value},{}", &text[1..]);
            out.push(again.into_bytes());
        }
        let text = serde_json::to_string(&good).unwrap();
        out.push(format!("{text} x").into_bytes());
        out.push(format!("{text}  ").into_bytes());
        out.push(
            text.replacen('{', "{\"extra\":[1,{\"a\":2}],", 1)
                .into_bytes(),
        );
        // An escaped key that reads as a worker's ID.
        out.push(text.replace("\"w-1\"", "\"w\\u002d1\"").into_bytes());
        // A lineage missing a field, or with one unknown.
        out.push(
            text.replace("\"lapses\":1", "\"lapses\":1,\"x\":0")
                .into_bytes(),
        );
        out.push(text.replace(",\"lapses\":1", "").into_bytes());
        out.push(
            text.replace("\"emergency\"", "\"emerg\\nency\"")
                .into_bytes(),
        );
        out.push(b"[1,7,3]".to_vec());
        // A worker written twice inside a map, plainly and escaped.
        out.push(
            text.replace("\"w-0\":10", "\"w-0\":10,\"w-0\":12")
                .into_bytes(),
        );
        out.push(
            text.replace("\"w-0\":10", "\"w-0\":10,\"w\\u002d0\":13")
                .into_bytes(),
        );
        out
    }

    #[test]
    fn the_projection_refuses_and_takes_exactly_what_the_full_decode_does() {
        let base = record(
            &[("w-0", 10), ("w-1", 11), ("w-2", 12)],
            &[("w-1", 1), ("w-2", 4)],
        );
        let mut checked = 0;
        for bytes in variants(&base) {
            for me in ["w-0", "w-1", "w-2", "w-9"] {
                let me = WorkerId::new(me);
                assert_eq!(
                    projected(&bytes, &me),
                    full(&bytes, &me),
                    "{} for {me}",
                    String::from_utf8_lossy(&bytes)
                );
                checked += 1;
            }
        }
        assert!(checked > 400, "{checked}");
        let me = WorkerId::new("w-1");
        let mine = projected(&codec::encode(&base).unwrap(), &me).unwrap();
        assert_eq!(mine.mine, Some(11));
        assert_eq!(mine.workers, 3);
        assert_eq!(mine.lineage.unwrap().lapses, 1);
        assert_eq!(mine.phase, ClusterPhase::Emergency);
    }

    proptest! {
        #[test]
        fn the_projection_of_any_record_is_what_it_says_to_the_worker(
            workers in prop::collection::btree_map("w-[0-9]{1,3}", any::<u64>(), 0..40),
            lineages in prop::collection::btree_map("w-[0-9]{1,3}", any::<u64>(), 0..40),
            me in "w-[0-9]{1,3}",
        ) {
            let workers: Vec<(&str, u64)> = workers.iter().map(|(w, r)| (w.as_str(), *r)).collect();
            let lineages: Vec<(&str, u64)> = lineages.iter().map(|(w, l)| (w.as_str(), *l)).collect();
            let base = record(&workers, &lineages);
            let me = WorkerId::new(me);
            let bytes = codec::encode(&base).unwrap();
            prop_assert_eq!(projected(&bytes, &me), Some(MyCluster::of(&base, &me)));
        }
    }

    /// What a follower's decode of one commit costs at 1,000 workers, whole against projected:
    /// `cargo test --release -p parti --lib cluster_decode_at_scale -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run it in release"]
    fn cluster_decode_at_scale() {
        let names: Vec<String> = (0..1000).map(|i| format!("worker-{i}")).collect();
        let workers: Vec<(&str, u64)> = names.iter().map(|w| (w.as_str(), 123_456)).collect();
        let lineages: Vec<(&str, u64)> = names.iter().map(|w| (w.as_str(), 0)).collect();
        let bytes = codec::encode(&record(&workers, &lineages)).unwrap();
        let me = WorkerId::new("worker-500");
        let rounds = 2000;
        let time = |f: &dyn Fn() -> Option<MyCluster>| {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                assert!(f().is_some());
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
        };
        let whole = time(&|| full(&bytes, &me));
        let part = time(&|| projected(&bytes, &me));
        println!(
            "{}",
            json!({"bytes": bytes.len(), "wholeUs": whole, "projectedUs": part, "ratio": whole / part})
        );
    }
}
