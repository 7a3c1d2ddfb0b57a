//! What the simulation sees from outside the workers: a trace, the violations found, and the
//! published assignment, followed through a watch on the assignment bucket and checked at every
//! commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use parti::records::{CLUSTER_KEY, ClusterRecord, Slot, WorkerRecord, worker_key};
use parti::store::{Bucket, WatchEvent, codec};
use parti::{Partition, WorkerId};
use tokio::time::Instant;

/// The partition ids of a list: what ownership checks compare (weights may legitimately lag
/// the source when a re-weight is below `minRebalanceThreshold`).
pub fn ids(partitions: &[Partition]) -> BTreeSet<String> {
    partitions.iter().map(Partition::id).collect()
}

/// The last committed map, as the observer rebuilt it.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub version: u64,
    pub term: u64,
    pub reason: String,
    pub map: BTreeMap<WorkerId, Vec<Partition>>,
}

impl Committed {
    /// Partition id → owner.
    pub fn owners(&self) -> BTreeMap<String, WorkerId> {
        self.map
            .iter()
            .flat_map(|(w, ps)| ps.iter().map(move |p| (p.id(), w.clone())))
            .collect()
    }
}

/// State shared by the driver, the observer and the per-worker listeners.
pub struct Shared {
    start: Instant,
    pub verbose: bool,
    trace: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
    pub committed: Mutex<Committed>,
    /// Every partition list the source ever served.
    pub sources: Mutex<Vec<BTreeSet<String>>>,
    /// Leader term → the simulated worker that reported it.
    terms: Mutex<BTreeMap<u64, usize>>,
    pub publishes: Mutex<u64>,
}

impl Shared {
    pub fn new(verbose: bool) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            verbose,
            trace: Mutex::default(),
            violations: Mutex::default(),
            committed: Mutex::default(),
            sources: Mutex::default(),
            terms: Mutex::default(),
            publishes: Mutex::default(),
        })
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    pub fn log(&self, line: impl AsRef<str>) {
        let line = format!("[{:>9.3}s] {}", self.elapsed().as_secs_f64(), line.as_ref());
        if self.verbose {
            eprintln!("{line}");
        }
        self.trace.lock().unwrap().push(line);
    }

    pub fn violate(&self, what: impl AsRef<str>) {
        let what = what.as_ref();
        self.log(format!("VIOLATION: {what}"));
        self.violations.lock().unwrap().push(what.to_owned());
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    pub fn trace(&self) -> Vec<String> {
        self.trace.lock().unwrap().clone()
    }

    /// A worker reported leading under `term`: no other worker may report the same term.
    pub fn leader_term(&self, term: u64, worker: usize) {
        let previous = *self.terms.lock().unwrap().entry(term).or_insert(worker);
        if previous != worker {
            self.violate(format!(
                "two leaders with term {term}: w{previous} and w{worker}"
            ));
        }
    }
}

/// Follows the assignment bucket and checks every commit of the `cluster` record.
pub async fn observe(bucket: Arc<dyn Bucket>, shared: Arc<Shared>) {
    let mut watch = loop {
        match bucket.watch(">").await {
            Ok(watch) => break watch,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    let mut view = View::default();
    let mut staged: Option<BTreeMap<String, (u64, bytes::Bytes)>> = None;
    while let Some(event) = watch.next().await {
        let Ok(event) = event else { continue };
        match event {
            WatchEvent::Init => staged = Some(BTreeMap::new()),
            WatchEvent::InitApply(e) => {
                if let Some(staged) = staged.as_mut() {
                    staged.insert(e.key, (e.revision, e.value));
                }
            }
            WatchEvent::InitDone => {
                if let Some(keys) = staged.take() {
                    view.keys = keys;
                }
            }
            WatchEvent::Put(e) => {
                view.keys
                    .insert(e.key.clone(), (e.revision, e.value.clone()));
                if e.key == CLUSTER_KEY {
                    view.check_commit(&shared, e.revision);
                }
            }
            WatchEvent::Deleted { key, .. } | WatchEvent::Expired { key, .. } => {
                if key == CLUSTER_KEY {
                    shared.violate("the cluster record was deleted");
                }
                view.keys.remove(&key);
            }
        }
    }
}

#[derive(Default)]
struct View {
    keys: BTreeMap<String, (u64, bytes::Bytes)>,
    last: Option<(u64, u64)>,
}

impl View {
    fn check_commit(&mut self, shared: &Shared, revision: u64) {
        let Some((_, value)) = self.keys.get(CLUSTER_KEY) else {
            return;
        };
        let record: ClusterRecord = match codec::decode("assignment", CLUSTER_KEY, value) {
            Ok(record) => record,
            Err(e) => return shared.violate(format!("undecodable cluster record: {e}")),
        };
        if let Some((version, term)) = self.last {
            if record.version < version {
                shared.violate(format!(
                    "version went back from {version} to {} (rev {revision})",
                    record.version
                ));
            }
            if record.term < term {
                shared.violate(format!(
                    "a commit by term {} after one by term {term} (a deposed leader committed)",
                    record.term
                ));
            }
        }
        let changed = self.last.is_none_or(|(v, _)| v != record.version);
        self.last = Some((record.version, record.term));
        if record.version == 0 {
            return;
        }
        let mut map = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (worker, rev) in &record.workers {
            // The committed revision must still be held by one of the worker's two slots.
            let slots = [Slot::A, Slot::B].map(|slot| worker_key(worker, slot));
            let Some((key, (_, value))) = slots.iter().find_map(|key| {
                self.keys
                    .get(key)
                    .filter(|(held, _)| held == rev)
                    .map(|v| (key, v))
            }) else {
                return shared.violate(format!(
                    "v{} commits {worker}@{rev} but neither slot holds that revision",
                    record.version
                ));
            };
            let Ok(value) = codec::decode::<WorkerRecord>("assignment", key, value) else {
                return shared.violate(format!("undecodable committed value {key}"));
            };
            for p in &value.partitions {
                if !seen.insert(p.id()) {
                    shared.violate(format!(
                        "v{}: partition {} has two owners",
                        record.version,
                        p.id()
                    ));
                }
            }
            map.insert(worker.clone(), value.partitions);
        }
        let all: BTreeSet<String> = map.values().flat_map(|ps| ids(ps)).collect();
        if all.len() != record.partition_count {
            shared.violate(format!(
                "v{} says {} partitions, its map has {}",
                record.version,
                record.partition_count,
                all.len()
            ));
        }
        if !shared.sources.lock().unwrap().contains(&all) {
            shared.violate(format!(
                "v{} covers a partition set the source never served ({} partitions)",
                record.version,
                all.len()
            ));
        }
        let committed = Committed {
            version: record.version,
            term: record.term,
            reason: record.reason.clone(),
            map,
        };
        if changed {
            *shared.publishes.lock().unwrap() += 1;
            let moved = moved(&shared.committed.lock().unwrap(), &committed);
            let sizes: Vec<String> = committed
                .map
                .iter()
                .map(|(w, ps)| format!("{w}:{}", ps.len()))
                .collect();
            shared.log(format!(
                "published v{} term {} reason {} moved {moved} [{}]",
                record.version,
                record.term,
                record.reason,
                sizes.join(" ")
            ));
        }
        *shared.committed.lock().unwrap() = committed;
    }
}

/// Partitions in both maps whose owner differs.
pub fn moved(before: &Committed, after: &Committed) -> usize {
    let (b, a) = (before.owners(), after.owners());
    b.iter()
        .filter(|(p, w)| a.get(*p).is_some_and(|w2| w2 != *w))
        .count()
}
