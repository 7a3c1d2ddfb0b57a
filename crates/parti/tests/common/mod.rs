//! Shared set-up for the scenario tests: a real nats-server, workers built from one config,
//! and readers of the published state.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parti::hooks::Hooks;
use parti::records::{ClusterRecord, Published, read_published};
use parti::source::Static;
use parti::store::{Bucket, BucketSpec, NatsStore, Store};
use parti::{Assignment, AssignmentMap, Config, Manager, Partition, WorkerId};
use parti_testkit::{NatsServer, wait_until};

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `n` partitions `p0..p{n-1}`, weight 100.
pub fn partitions(n: usize) -> Vec<Partition> {
    (0..n)
        .map(|i| Partition::new([format!("p{i}")], 100).unwrap())
        .collect()
}

/// Records every assignment a worker's hooks saw.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Assignment>>>,
}

#[async_trait::async_trait]
impl Hooks for Recorder {
    async fn on_assignment_changed(
        &self,
        _added: &[Partition],
        _removed: &[Partition],
        assignment: &Assignment,
    ) {
        self.seen.lock().unwrap().push(assignment.clone());
    }
}

pub struct TestCluster {
    pub server: NatsServer,
    pub config: Config,
    pub source: Static,
    assignment: Arc<dyn Bucket>,
}

impl TestCluster {
    pub async fn start(config: Config, partitions: Vec<Partition>) -> Self {
        init_tracing();
        let server = NatsServer::start().await.expect("nats-server");
        let client = server.client().await.expect("connect");
        let store = NatsStore::new(async_nats::jetstream::new(client));
        let assignment = store
            .bucket(
                &BucketSpec::new(config.kv_buckets.assignment.clone())
                    .replicas(config.kv_buckets.replicas),
            )
            .await
            .expect("assignment bucket");
        Self {
            server,
            config,
            source: Static::new(partitions),
            assignment,
        }
    }

    /// Starts one worker; returns once it is Stable.
    pub async fn worker(&self) -> parti::Result<(Manager, Recorder)> {
        let recorder = Recorder::default();
        let client = self.server.client().await.expect("connect");
        let manager = Manager::builder(async_nats::jetstream::new(client))
            .config(self.config.clone())
            .source(self.source.clone())
            .hooks(recorder.clone())
            .start()
            .await?;
        Ok((manager, recorder))
    }

    /// Starts `n` workers concurrently (within one cold-start window).
    pub async fn workers(&self, n: usize) -> Vec<(Manager, Recorder)> {
        let started = futures::future::join_all((0..n).map(|_| self.worker())).await;
        started
            .into_iter()
            .map(|r| r.expect("worker start"))
            .collect()
    }

    /// The committed state of the assignment bucket.
    pub async fn published(&self) -> Published {
        read_published(&*self.assignment)
            .await
            .expect("read published")
    }

    pub async fn record(&self) -> ClusterRecord {
        self.published().await.record.expect("a cluster record").0
    }

    /// Waits until the published map has exactly `workers` and covers every partition of the
    /// source once; returns it.
    pub async fn wait_for_map(&self, workers: &[WorkerId], deadline: Duration) -> Published {
        let parts = self.source_partitions().await;
        let mut workers = workers.to_vec();
        workers.sort();
        wait_until(
            deadline,
            "the published map to cover the live workers",
            || {
                let parts = parts.clone();
                let workers = workers.clone();
                async move {
                    let p = self.published().await;
                    p.map.workers().cloned().collect::<Vec<_>>() == workers
                        && p.map.verify(&workers, &parts).is_ok()
                }
            },
        )
        .await
        .expect("map converged");
        self.published().await
    }

    pub async fn source_partitions(&self) -> Vec<Partition> {
        use parti::source::PartitionSource;
        self.source.list_partitions().await.unwrap()
    }
}

/// Worker IDs of a set of managers.
pub fn ids(managers: &[(Manager, Recorder)]) -> Vec<WorkerId> {
    let mut ids: Vec<_> = managers.iter().map(|(m, _)| m.worker_id()).collect();
    ids.sort();
    ids
}

/// Partition → owner.
pub fn owners(map: &AssignmentMap) -> BTreeMap<String, WorkerId> {
    map.iter()
        .flat_map(|(w, ps)| ps.iter().map(move |p| (p.id(), w.clone())))
        .collect()
}

/// Number of partitions whose owner differs between two maps (partitions in both).
pub fn moved(before: &AssignmentMap, after: &AssignmentMap) -> usize {
    let (b, a) = (owners(before), owners(after));
    b.iter()
        .filter(|(p, w)| a.get(*p).is_some_and(|w2| w2 != *w))
        .count()
}

/// Waits until every manager is Stable and holds what the published map says.
pub async fn wait_all_stable(
    cluster: &TestCluster,
    managers: &[(Manager, Recorder)],
    deadline: Duration,
) {
    wait_until(
        deadline,
        "every worker Stable with the published assignment",
        || async {
            let published = cluster.published().await;
            managers.iter().all(|(m, _)| {
                m.state() == parti::State::Stable
                    && published.map.contains_worker(&m.worker_id())
                    && m.assignment().partitions == published.map.partitions_of(&m.worker_id())
            })
        },
    )
    .await
    .expect("all stable");
}
