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

/// The commit as it concerns one worker: what a follower needs of every commit, read from its
/// [`CommitPage`].
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
    /// What `page` says to `me`. `me` must belong to the page (see [`page_of`]): a page
    /// names only its own workers.
    pub(crate) fn of_page(page: &CommitPage, me: &WorkerId) -> Self {
        Self {
            version: page.version,
            term: page.term,
            phase: page.phase,
            lifecycle: page.lifecycle,
            workers: page.worker_count,
            mine: page.workers.get(me).copied(),
            lineage: page.lineages.get(me).cloned(),
        }
    }
}

/// How many pages a commit is copied into (see [`CommitPage`]). Part of the protocol: leader
/// and followers must agree on it.
pub const COMMIT_PAGES: usize = 256;

/// Prefix of the commit pages: `commit.{page}`, `page` in `0..COMMIT_PAGES`.
pub const PAGE_KEY_PREFIX: &str = "commit.";

/// The key of commit page `page`.
///
/// ```
/// use parti::{WorkerId, records::{page_key, page_of, parse_page_key}};
/// let page = page_of(&WorkerId::new("worker-3"));
/// assert_eq!(parse_page_key(&page_key(page)), Some(page));
/// assert_eq!(parse_page_key("commit.256"), None);
/// ```
pub fn page_key(page: usize) -> String {
    format!("{PAGE_KEY_PREFIX}{page}")
}

/// The page of a commit page key, if it is one.
pub fn parse_page_key(key: &str) -> Option<usize> {
    let page = key.strip_prefix(PAGE_KEY_PREFIX)?;
    if page.len() > 1 && page.starts_with('0') {
        return None;
    }
    page.parse().ok().filter(|p| *p < COMMIT_PAGES)
}

/// The commit page that names `worker`: a stable hash of its ID (xxh3), so that every build
/// agrees on it.
pub fn page_of(worker: &WorkerId) -> usize {
    let hash = xxhash_rust::xxh3::xxh3_64(worker.as_str().as_bytes());
    // The remainder is below COMMIT_PAGES, which is a usize.
    usize::try_from(hash % COMMIT_PAGES as u64).unwrap_or(0)
}

/// `commit.{page}`: a copy of the committed `cluster` record for the workers of one page
/// ([`page_of`]).
///
/// The `cluster` record names every worker of the map; were every follower to read it, each
/// commit and phase change would send O(N) bytes to each of N followers. A follower reads its
/// page instead: the leader writes the pages of the workers of the new map and of the previous
/// one after each commit, each page written with a revision check and only over a page that
/// copies an older commit ([`order`](Self::order)), so a page never goes back. A page only
/// ever copies a record that was committed, so a late write by a deposed leader cannot give a
/// worker anything a commit did not; a page that lags (the leader stopped between the commit
/// and the pages) is written by the next leader, and a page overwritten or deleted under the
/// leader is written again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CommitPage {
    /// The commit's version.
    pub version: u64,
    /// Term of the leader that wrote the commit.
    pub term: u64,
    /// What the leader is doing.
    pub phase: ClusterPhase,
    /// Cluster lifecycle.
    pub lifecycle: Lifecycle,
    /// Revision of the `cluster` record this page copies.
    pub commit: u64,
    /// How many workers the whole commit names.
    pub worker_count: usize,
    /// This page's workers of the commit → revision of their committed `worker.{id}` value.
    pub workers: BTreeMap<WorkerId, u64>,
    /// This page's workers of the commit → the lineage the commit speaks to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lineages: BTreeMap<WorkerId, Lineage>,
}

impl CommitPage {
    /// The order of pages: a page is written only over one of a lower order. Versions first
    /// (they never go back, even over a lost `cluster` record), then the `cluster` revision
    /// (a phase change keeps the version).
    pub fn order(&self) -> (u64, u64) {
        (self.version, self.commit)
    }

    /// The pages `pages` of `record`, committed at `revision`: each with the workers of the
    /// record that belong to it (possibly none).
    pub fn pages_of(
        record: &ClusterRecord,
        revision: u64,
        pages: &std::collections::BTreeSet<usize>,
    ) -> BTreeMap<usize, CommitPage> {
        let mut out: BTreeMap<usize, CommitPage> = pages
            .iter()
            .map(|page| {
                let empty = CommitPage {
                    version: record.version,
                    term: record.term,
                    phase: record.phase,
                    lifecycle: record.lifecycle,
                    commit: revision,
                    worker_count: record.workers.len(),
                    workers: BTreeMap::new(),
                    lineages: BTreeMap::new(),
                };
                (*page, empty)
            })
            .collect();
        for (worker, rev) in &record.workers {
            if let Some(page) = out.get_mut(&page_of(worker)) {
                page.workers.insert(worker.clone(), *rev);
                if let Some(lineage) = record.lineages.get(worker) {
                    page.lineages.insert(worker.clone(), lineage.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use super::*;

    fn record(workers: usize) -> ClusterRecord {
        ClusterRecord {
            version: 7,
            term: 3,
            phase: ClusterPhase::Stable,
            reason: "test".into(),
            workers: (0..workers)
                .map(|i| (WorkerId::new(format!("worker-{i}")), 100 + i as u64))
                .collect(),
            partition_count: 10,
            lifecycle: Lifecycle::Running,
            first_assignment_at: Some(1),
            lineages: (0..workers)
                .map(|i| {
                    let lineage = Lineage {
                        instance: format!("i{i}"),
                        lapses: i as u64,
                    };
                    (WorkerId::new(format!("worker-{i}")), lineage)
                })
                .collect(),
            parked: BTreeMap::new(),
        }
    }

    #[test]
    fn every_worker_reads_from_its_page_exactly_what_the_record_says_of_it() {
        let record = record(1_000);
        let all: BTreeSet<usize> = (0..COMMIT_PAGES).collect();
        let pages = CommitPage::pages_of(&record, 42, &all);
        assert_eq!(pages.len(), COMMIT_PAGES);
        let named: usize = pages.values().map(|p| p.workers.len()).sum();
        assert_eq!(named, 1_000, "each worker is on exactly one page");
        for (worker, rev) in &record.workers {
            let page = &pages[&page_of(worker)];
            let mine = MyCluster::of_page(page, worker);
            assert_eq!(mine.mine, Some(*rev));
            assert_eq!(mine.lineage.as_ref(), record.lineages.get(worker));
            assert_eq!(
                (mine.version, mine.term, mine.workers),
                (7, 3, 1_000),
                "{worker}"
            );
            assert_eq!(page.order(), (7, 42));
        }
        // A page is far smaller than the record it copies.
        let largest = pages
            .values()
            .map(|p| codec::encode(p).unwrap().len())
            .max()
            .unwrap();
        let whole = codec::encode(&record).unwrap().len();
        assert!(largest * 40 < whole, "page {largest} B, record {whole} B");
    }

    #[test]
    fn a_page_that_is_asked_for_and_names_nobody_is_written_empty() {
        let record = record(3);
        let lone = (0..COMMIT_PAGES)
            .find(|p| record.workers.keys().all(|w| page_of(w) != *p))
            .unwrap();
        let pages = CommitPage::pages_of(&record, 9, &BTreeSet::from([lone]));
        assert_eq!(pages.len(), 1);
        let page = &pages[&lone];
        assert!(page.workers.is_empty() && page.lineages.is_empty());
        assert_eq!(page.worker_count, 3);
        let stranger = MyCluster::of_page(page, &WorkerId::new("worker-0"));
        assert_eq!((stranger.mine, stranger.version), (None, 7));
    }

    #[test]
    fn page_keys_round_trip_and_refuse_what_is_no_page() {
        for page in [0, 1, 17, COMMIT_PAGES - 1] {
            assert_eq!(parse_page_key(&page_key(page)), Some(page));
        }
        for key in [
            "commit.",
            "commit.01",
            "commit.-1",
            "commit.x",
            "commit.256",
            "cluster",
        ] {
            assert_eq!(parse_page_key(key), None, "{key}");
        }
        // The page of an ID is part of the protocol: it must not change between builds.
        assert_eq!(
            page_of(&WorkerId::new("worker-0")),
            page_of(&WorkerId::new("worker-0"))
        );
        let spread: BTreeSet<usize> = (0..1_000)
            .map(|i| page_of(&WorkerId::new(format!("worker-{i}"))))
            .collect();
        assert!(spread.len() > 200, "1,000 IDs over {} pages", spread.len());
    }

    #[test]
    fn a_page_round_trips_through_the_codec() {
        let record = record(5);
        let pages = CommitPage::pages_of(&record, 1, &(0..COMMIT_PAGES).collect());
        for page in pages.values() {
            let bytes = codec::encode(page).unwrap();
            assert_eq!(
                &codec::decode::<CommitPage>("a", "commit.0", &bytes).unwrap(),
                page
            );
        }
    }
}
