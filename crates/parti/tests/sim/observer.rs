//! What the simulation sees from outside the workers: a trace, the faults it injected, the
//! violations of its own checks, and the published assignment, followed through a watch on the
//! assignment bucket. Every committed `cluster` version it sees becomes a [`VersionRecord`] for
//! the ownership checker; the map itself is rebuilt only for the simulation's own checks
//! (convergence, what a crash or a rolling restart moved).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use parti::ownership::now_ns;
use parti::records::{CLUSTER_KEY, ClusterRecord, Slot, WorkerRecord, worker_key};
use parti::store::{Bucket, WatchEvent, codec};
use parti::{Partition, WorkerId};
use parti_testkit::checker::{FaultRecord, VersionRecord};
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
    /// Violations of the simulation's own checks: (kind, what).
    violations: Mutex<Vec<(&'static str, String)>>,
    pub committed: Mutex<Committed>,
    /// Every partition list the source ever served.
    pub sources: Mutex<Vec<BTreeSet<String>>>,
    /// What the simulation did to the cluster, for the checker.
    pub faults: Mutex<Vec<FaultRecord>>,
    /// Committed `cluster` versions, as the observer saw them.
    pub versions: Mutex<Vec<VersionRecord>>,
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
            faults: Mutex::default(),
            versions: Mutex::default(),
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

    /// A violation of one of the simulation's own checks; `kind` is what `known.rs` matches.
    pub fn violate(&self, kind: &'static str, what: impl AsRef<str>) {
        let what = what.as_ref();
        self.log(format!("VIOLATION ({kind}): {what}"));
        self.violations
            .lock()
            .unwrap()
            .push((kind, what.to_owned()));
    }

    pub fn violations(&self) -> Vec<(&'static str, String)> {
        self.violations.lock().unwrap().clone()
    }

    /// Records a fault for the checker (and the trace).
    pub fn fault(&self, record: FaultRecord) {
        self.log(format!(
            "fault {} on {} for {:?}",
            record.kind,
            record.worker.as_deref().unwrap_or("the cluster"),
            std::time::Duration::from_nanos(record.end_ns - record.start_ns)
        ));
        self.faults.lock().unwrap().push(record);
    }

    pub fn trace(&self) -> Vec<String> {
        self.trace.lock().unwrap().clone()
    }

    /// A worker reported leading under `term`: no other worker may report the same term.
    pub fn leader_term(&self, term: u64, worker: usize) {
        let previous = *self.terms.lock().unwrap().entry(term).or_insert(worker);
        if previous != worker {
            self.violate(
                "termReused",
                format!("two leaders with term {term}: w{previous} and w{worker}"),
            );
        }
    }
}

/// Follows the assignment bucket: records every committed `cluster` version and rebuilds the
/// committed map. A watch that ends (a store outage, a deleted bucket) is opened again, and
/// its snapshot replaces what was known, as the library's own watchers do.
pub async fn observe(bucket: Arc<dyn Bucket>, shared: Arc<Shared>) {
    let mut view = View::default();
    loop {
        let mut watch = loop {
            match bucket.watch(">").await {
                Ok(watch) => break watch,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
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
                        // A commit made while the watch was down is seen here.
                        if let Some(&(revision, _)) = view.keys.get(CLUSTER_KEY) {
                            view.check_commit(&shared, revision);
                        }
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
                    view.keys.remove(&key);
                }
                // An event this observer does not know changes no key it tracks.
                _ => {}
            }
        }
        shared.log("observer: the assignment watch ended; opening it again");
    }
}

#[derive(Default)]
struct View {
    keys: BTreeMap<String, (u64, bytes::Bytes)>,
    last_version: Option<u64>,
}

impl View {
    /// A `cluster` record was written: record its version and, when every value it commits is
    /// there, the map. Garbage (the simulation writes some on purpose) is only traced; what it
    /// does to the workers is the checker's business.
    fn check_commit(&mut self, shared: &Shared, revision: u64) {
        let Some((_, value)) = self.keys.get(CLUSTER_KEY) else {
            return;
        };
        let record: ClusterRecord = match codec::decode("assignment", CLUSTER_KEY, value) {
            Ok(record) => record,
            Err(e) => {
                return shared.log(format!("undecodable cluster record (rev {revision}): {e}"));
            }
        };
        shared.versions.lock().unwrap().push(VersionRecord {
            at_ns: now_ns(),
            source: CLUSTER_KEY.into(),
            version: record.version,
        });
        let changed = self.last_version != Some(record.version);
        self.last_version = Some(record.version);
        if record.version == 0 {
            return;
        }
        let mut map = BTreeMap::new();
        for (worker, rev) in &record.workers {
            let slots = [Slot::A, Slot::B].map(|slot| worker_key(worker, slot));
            let value = slots.iter().find_map(|key| {
                let (held, value) = self.keys.get(key).filter(|(held, _)| held == rev)?;
                codec::decode::<WorkerRecord>("assignment", key, value)
                    .ok()
                    .map(|value| (*held, value))
            });
            let Some((_, value)) = value else {
                return shared.log(format!(
                    "v{} commits {worker}@{rev}, which no slot holds (readable)",
                    record.version
                ));
            };
            map.insert(worker.clone(), value.partitions);
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
