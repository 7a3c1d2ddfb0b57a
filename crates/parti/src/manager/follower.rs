//! Follows the published assignment: the `cluster` record and this worker's `worker.{id}` key.
//!
//! Two list-then-watch streams feed one view. A worker's value counts only when the `cluster`
//! record commits its revision (see [`controller::publisher`](crate::controller)); garbage
//! values are logged, counted and ignored.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::holding::MyCommit;
use crate::assignment::Assignment;
use crate::partition::WorkerId;
use crate::records::{
    CLUSTER_KEY, ClusterRecord, Slot, WorkerRecord, garbage_seen, parse_worker_key, worker_pattern,
};
use crate::store::{Bucket, Entry, WatchEvent, WatchStream, codec};

/// What the follower knows of the published state.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FollowerView {
    /// The latest cluster record (`None` before the first one, or while it is garbage).
    pub(crate) cluster: Option<ClusterRecord>,
    /// This worker's latest value in each slot, with its revision.
    pub(crate) mine: BTreeMap<Slot, (u64, WorkerRecord)>,
    /// True once both watches delivered their first snapshot.
    pub(crate) synced: bool,
}

impl FollowerView {
    /// This worker's committed assignment, if the published state gives it one.
    ///
    /// `None` while nothing is committed for this worker: before the first publish, or while
    /// the worker is not (yet) part of the map. `had_assignment` turns "not in the map" into an
    /// empty assignment for a worker that was removed from it.
    pub(crate) fn committed(&self, me: &WorkerId, had_assignment: bool) -> Option<Assignment> {
        let cluster = self.cluster.as_ref()?;
        if cluster.version == 0 {
            return None;
        }
        match cluster.workers.get(me) {
            Some(rev) => {
                let (_, record) = self.mine.values().find(|(r, _)| r == rev)?;
                Some(Assignment {
                    version: record.version,
                    lifecycle: record.lifecycle,
                    partitions: record.partitions.clone(),
                })
            }
            None if had_assignment => Some(Assignment {
                version: cluster.version,
                lifecycle: cluster.lifecycle,
                partitions: Vec::new(),
            }),
            None => None,
        }
    }
}

impl FollowerView {
    /// The latest commit as it concerns `me`: its version, my assignment in it (empty when it
    /// does not list me), what is pending, the lineage it names for me. `None` before the
    /// first commit, while the `cluster` record is garbage, or while my committed value has not
    /// arrived yet.
    pub(crate) fn my_commit(&self, me: &WorkerId) -> Option<MyCommit> {
        let cluster = self.cluster.as_ref()?;
        if cluster.version == 0 {
            return None;
        }
        let (assignment, pending) = match cluster.workers.get(me) {
            Some(rev) => {
                let (_, record) = self.mine.values().find(|(r, _)| r == rev)?;
                let assignment = Assignment {
                    version: record.version,
                    lifecycle: record.lifecycle,
                    partitions: record.partitions.clone(),
                };
                (assignment, record.pending.keys().cloned().collect())
            }
            None => (
                Assignment {
                    version: cluster.version,
                    lifecycle: cluster.lifecycle,
                    partitions: Vec::new(),
                },
                Default::default(),
            ),
        };
        Some(MyCommit {
            version: cluster.version,
            assignment: Arc::new(assignment),
            pending,
            lineage: cluster.lineages.get(me).cloned(),
        })
    }
}

/// The follower task; stops on cancel, or when dropped (the task is aborted with it).
#[derive(Debug)]
pub(crate) struct Follower {
    view: watch::Receiver<FollowerView>,
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl Follower {
    /// Follows `me`'s assignment in `bucket`. Both watches are re-opened (a fresh snapshot)
    /// whenever one ends, and every `resync` anyway: a watch that went quiet — a cluster node
    /// lost under it, a reconnect it missed — is replaced within one interval.
    pub(crate) fn spawn(
        bucket: Arc<dyn Bucket>,
        me: WorkerId,
        resync: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, view) = watch::channel(FollowerView::default());
        let task = AbortOnDropHandle::new(tokio::spawn(run(
            bucket,
            me,
            tx,
            resync.max(MIN_RESYNC),
            cancel.clone(),
        )));
        Self { view, cancel, task }
    }

    pub(crate) fn view(&self) -> watch::Receiver<FollowerView> {
        self.view.clone()
    }

    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// The shortest resync interval accepted.
const MIN_RESYNC: Duration = Duration::from_millis(100);

fn decode_cluster(bucket: &str, entry: &Entry) -> Option<ClusterRecord> {
    codec::decode(bucket, &entry.key, &entry.value)
        .inspect_err(garbage_seen)
        .ok()
}

fn decode_worker(bucket: &str, entry: &Entry) -> Option<(Slot, (u64, WorkerRecord))> {
    let (_, slot) = parse_worker_key(&entry.key)?;
    codec::decode(bucket, &entry.key, &entry.value)
        .inspect_err(garbage_seen)
        .ok()
        .map(|record| (slot, (entry.revision, record)))
}

/// Opens a watch, retrying with backoff until it opens or `cancel` fires.
async fn open(bucket: &dyn Bucket, key: &str, cancel: &CancellationToken) -> Option<WatchStream> {
    let mut delay = Duration::from_millis(50);
    loop {
        match bucket.watch(key).await {
            Ok(stream) => return Some(stream),
            Err(e) => {
                tracing::debug!(%key, error = %e, "opening assignment watch");
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// What one watch pair has applied: snapshots are staged and applied on `InitDone`, so a
/// resnapshot replaces the view.
#[derive(Default)]
struct Staging {
    cluster: Option<ClusterRecord>,
    mine: BTreeMap<Slot, (u64, WorkerRecord)>,
    cluster_synced: bool,
    mine_synced: bool,
}

async fn run(
    bucket: Arc<dyn Bucket>,
    me: WorkerId,
    tx: watch::Sender<FollowerView>,
    resync: Duration,
    cancel: CancellationToken,
) {
    let name = bucket.name().to_owned();
    let my_keys = worker_pattern(&me);
    let mut stage = Staging::default();
    loop {
        let (Some(mut cluster_watch), Some(mut mine_watch)) = (
            open(&*bucket, CLUSTER_KEY, &cancel).await,
            open(&*bucket, &my_keys, &cancel).await,
        ) else {
            return;
        };
        let resync_at = tokio::time::Instant::now() + resync;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(resync_at) => break,
                event = cluster_watch.next() => {
                    let Some(event) = event else { break };
                    let Ok(event) = event else { continue };
                    stage.cluster_event(&name, event, &tx);
                }
                event = mine_watch.next() => {
                    let Some(event) = event else { break };
                    let Ok(event) = event else { continue };
                    stage.mine_event(&name, event, &tx);
                }
            }
        }
        tracing::trace!(worker = %me, "re-opening the assignment watches");
    }
}

impl Staging {
    fn synced(&self) -> bool {
        self.cluster_synced && self.mine_synced
    }

    fn cluster_event(&mut self, name: &str, event: WatchEvent, tx: &watch::Sender<FollowerView>) {
        match event {
            WatchEvent::Init => self.cluster = None,
            WatchEvent::InitApply(e) => self.cluster = decode_cluster(name, &e),
            WatchEvent::InitDone => {
                self.cluster_synced = true;
                let staged = self.cluster.take();
                let synced = self.synced();
                tx.send_modify(|v| {
                    v.cluster = staged;
                    v.synced = synced;
                });
            }
            WatchEvent::Put(e) => {
                if let Some(record) = decode_cluster(name, &e) {
                    tx.send_modify(|v| v.cluster = Some(record));
                }
            }
            WatchEvent::Deleted { .. } | WatchEvent::Expired { .. } => {
                tx.send_modify(|v| v.cluster = None);
            }
        }
    }

    fn mine_event(&mut self, name: &str, event: WatchEvent, tx: &watch::Sender<FollowerView>) {
        match event {
            WatchEvent::Init => self.mine.clear(),
            WatchEvent::InitApply(e) => {
                if let Some((slot, value)) = decode_worker(name, &e) {
                    self.mine.insert(slot, value);
                }
            }
            WatchEvent::InitDone => {
                self.mine_synced = true;
                let staged = std::mem::take(&mut self.mine);
                let synced = self.synced();
                tx.send_modify(|v| {
                    v.mine = staged;
                    v.synced = synced;
                });
            }
            WatchEvent::Put(e) => {
                if let Some((slot, value)) = decode_worker(name, &e) {
                    tx.send_modify(|v| {
                        v.mine.insert(slot, value);
                    });
                }
            }
            WatchEvent::Deleted { key, .. } | WatchEvent::Expired { key, .. } => {
                if let Some((_, slot)) = parse_worker_key(&key) {
                    tx.send_modify(|v| {
                        v.mine.remove(&slot);
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::Lifecycle;
    use crate::partition::Partition;
    use crate::state::ClusterPhase;

    fn cluster(version: u64, workers: &[(&str, u64)]) -> ClusterRecord {
        ClusterRecord {
            version,
            term: 1,
            phase: ClusterPhase::Stable,
            reason: "test".into(),
            workers: workers
                .iter()
                .map(|(w, r)| (WorkerId::new(*w), *r))
                .collect(),
            partition_count: 1,
            lifecycle: Lifecycle::Running,
            first_assignment_at: None,
            lineages: BTreeMap::new(),
        }
    }

    fn mine(version: u64) -> WorkerRecord {
        WorkerRecord {
            version,
            term: 1,
            lifecycle: Lifecycle::Running,
            partitions: vec![Partition::new(["p"], 1).unwrap()],
            pending: BTreeMap::new(),
        }
    }

    #[test]
    fn only_committed_revisions_apply() {
        let me = WorkerId::new("w-0");
        let view = FollowerView {
            cluster: Some(cluster(3, &[("w-0", 10)])),
            mine: [(Slot::A, (11, mine(4)))].into(),
            synced: true,
        };
        assert_eq!(
            view.committed(&me, true),
            None,
            "uncommitted write (deposed leader)"
        );
        let view = FollowerView {
            mine: [(Slot::A, (11, mine(4))), (Slot::B, (10, mine(3)))].into(),
            ..view
        };
        assert_eq!(view.committed(&me, false).unwrap().version, 3);
    }

    #[test]
    fn removed_worker_gets_an_empty_assignment_only_if_it_had_one() {
        let me = WorkerId::new("w-0");
        let view = FollowerView {
            cluster: Some(cluster(5, &[("w-1", 10)])),
            mine: BTreeMap::new(),
            synced: true,
        };
        assert_eq!(view.committed(&me, false), None);
        let empty = view.committed(&me, true).unwrap();
        assert!(empty.partitions.is_empty());
        assert_eq!(empty.version, 5);
    }
}
