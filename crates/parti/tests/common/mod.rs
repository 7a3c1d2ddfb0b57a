//! Shared set-up for the scenario tests: a real nats-server, workers built from one config,
//! and readers of the published state.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parti::hooks::Hooks;
use parti::ownership::{OwnershipRecorder, now_ns};
use parti::records::{ClusterRecord, Published, read_published};
use parti::source::Static;
use parti::store::{Bucket, BucketSpec, NatsStore, Store};
use parti::{Assignment, AssignmentMap, Config, Manager, Partition, WorkerId};
use parti_testkit::checker::{CheckConfig, FaultRecord, History, Report, VersionRecord, check};
use parti_testkit::{NatsServer, wait_until};

/// `d` in nanoseconds.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

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
    /// What every worker of this cluster held (each worker started by it reports here).
    pub ownership: OwnershipRecorder,
    /// What the test did to the workers (kills), for the ownership checker.
    pub faults: Mutex<Vec<FaultRecord>>,
    /// Every commit seen on the `cluster` key.
    pub commits: Arc<Mutex<Vec<Commit>>>,
    _commit_watch: tokio_util::task::AbortOnDropHandle<()>,
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
        let commits = Arc::new(Mutex::new(Vec::new()));
        let commit_watch = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watch_commits(
            Arc::clone(&assignment),
            Arc::clone(&commits),
        )));
        Self {
            server,
            config,
            source: Static::new(partitions),
            assignment,
            ownership: OwnershipRecorder::default(),
            faults: Mutex::new(Vec::new()),
            commits,
            _commit_watch: commit_watch,
        }
    }

    /// The reasons of the commits seen after version `after`, in order.
    pub fn reasons_after(&self, after: u64) -> Vec<String> {
        self.commits
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.version > after)
            .map(|c| c.reason.clone())
            .collect()
    }

    /// A builder for a worker of this cluster over `client`: its config, source and ownership
    /// recorder.
    pub fn builder(&self, client: async_nats::Client) -> parti::ManagerBuilder {
        Manager::builder(async_nats::jetstream::new(client))
            .config(self.config.clone())
            .source(self.source.clone())
            .ownership_sink(Arc::new(self.ownership.clone()))
    }

    /// Kills `manager` (no stop path, like `kill -9`) and records it for the checker.
    pub async fn kill(&self, manager: &Manager) {
        // The process has ended once `kill` returns (its tasks aborted): handler calls still
        // finishing during the abort belong to it.
        manager.kill().await;
        let at = now_ns();
        self.faults.lock().unwrap().push(FaultRecord {
            kind: "kill".into(),
            worker: Some(manager.worker_id().to_string()),
            instance: Some(manager.instance_id().to_owned()),
            start_ns: at,
            end_ns: at,
            ends_process: true,
        });
    }

    /// Records a fault the test injected between `start_ns` and now (for the gap bound).
    pub fn fault(&self, kind: &str, start_ns: u64) {
        self.faults.lock().unwrap().push(FaultRecord {
            kind: kind.into(),
            worker: None,
            instance: None,
            start_ns,
            end_ns: now_ns(),
            ends_process: false,
        });
    }

    /// Runs the ownership checker over everything this cluster's workers held so far, with
    /// tolerance 0: gaps count from `from_ns` (when every partition should be held: after the
    /// cold start) until now, bounded by heartbeatTtl + grace + electionTtl + 2 s.
    pub async fn check_holdings(&self, from_ns: u64) -> Report {
        self.check_history(History {
            window: (from_ns, now_ns()),
            ..History::default()
        })
        .await
    }

    /// Runs the ownership checker over `history` (processed and sent messages, the window)
    /// completed with what this cluster recorded: ownership records, faults, partitions.
    pub async fn check_history(&self, mut history: History) -> Report {
        let c = &self.config;
        let bound =
            c.heartbeat_ttl + c.emergency_grace_period() + c.election_ttl + Duration::from_secs(2);
        history.ownership = self.ownership.records();
        history.versions = self
            .commits
            .lock()
            .unwrap()
            .iter()
            .map(|c| VersionRecord {
                at_ns: c.at_ns,
                source: "cluster".into(),
                version: c.version,
            })
            .collect();
        history.faults = self.faults.lock().unwrap().clone();
        history.partitions = self
            .source_partitions()
            .await
            .iter()
            .map(Partition::id)
            .collect();
        check(
            &history,
            &CheckConfig {
                tolerance_ns: 0,
                gap_bound_ns: nanos(bound),
            },
        )
    }

    /// Asserts the checker finds nothing, printing its report either way.
    pub async fn assert_holdings_clean(&self, from_ns: u64) {
        let report = self.check_holdings(from_ns).await;
        println!("{report}");
        assert!(
            report.is_clean(),
            "the ownership checker found violations:\n{report}"
        );
    }

    /// Starts one worker; returns once it is Stable.
    pub async fn worker(&self) -> parti::Result<(Manager, Recorder)> {
        let recorder = Recorder::default();
        let client = self.server.client().await.expect("connect");
        let manager = self.builder(client).hooks(recorder.clone()).start().await?;
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

    /// The assignment bucket, as the test opened it (the handle reaches the bucket of that
    /// name even after it was deleted and created again).
    pub fn assignment_bucket(&self) -> Arc<dyn Bucket> {
        Arc::clone(&self.assignment)
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

    /// Waits until no committed worker value has pending partitions; returns the state.
    pub async fn wait_for_handoffs(&self, deadline: Duration) -> Published {
        wait_until(deadline, "every hand-off completed", || async {
            let p = self.published().await;
            p.record.is_some() && p.workers.values().all(|(_, r)| r.pending.is_empty())
        })
        .await
        .expect("hand-offs completed");
        self.published().await
    }

    pub async fn source_partitions(&self) -> Vec<Partition> {
        use parti::source::PartitionSource;
        self.source.list_partitions().await.unwrap()
    }
}

/// A commit seen on the `cluster` key.
#[derive(Debug, Clone)]
pub struct Commit {
    pub at_ns: u64,
    pub version: u64,
    pub term: u64,
    pub reason: String,
}

/// Records every commit of the `cluster` key (a phase-only rewrite of a version is kept once).
async fn watch_commits(bucket: Arc<dyn Bucket>, commits: Arc<Mutex<Vec<Commit>>>) {
    use futures::StreamExt;
    use parti::store::WatchEvent;
    let Ok(mut stream) = bucket.watch(parti::records::CLUSTER_KEY).await else {
        return;
    };
    while let Some(event) = stream.next().await {
        let entry = match event {
            Ok(WatchEvent::Put(entry) | WatchEvent::InitApply(entry)) => entry,
            _ => continue,
        };
        let Ok(record) =
            parti::store::codec::decode::<ClusterRecord>(bucket.name(), &entry.key, &entry.value)
        else {
            continue;
        };
        let mut commits = commits.lock().unwrap();
        if commits.last().is_none_or(|c| c.version != record.version) {
            commits.push(Commit {
                at_ns: now_ns(),
                version: record.version,
                term: record.term,
                reason: record.reason,
            });
        }
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

/// Waits until every manager holds what the published map gives it and `done` holds for
/// that map (within 30 s); returns the map.
pub async fn settle(
    cluster: &TestCluster,
    managers: &[&Manager],
    what: &str,
    done: impl Fn(&AssignmentMap) -> bool,
) -> AssignmentMap {
    let ok = wait_until(Duration::from_secs(30), what, || async {
        let published = cluster.published().await;
        done(&published.map)
            && published
                .workers
                .values()
                .all(|(_, record)| record.pending.is_empty())
            && managers.iter().all(|m| {
                m.state() == parti::State::Stable
                    && m.assignment().partitions == published.map.partitions_of(&m.worker_id())
            })
    })
    .await
    .ok();
    if ok.is_none() {
        let p = cluster.published().await;
        let counts: Vec<(String, usize)> = p
            .map
            .iter()
            .map(|(w, ps)| (w.to_string(), ps.len()))
            .collect();
        let states: Vec<String> = managers
            .iter()
            .map(|m| format!("{}: {}", m.worker_id(), m.state()))
            .collect();
        panic!(
            "timed out waiting for {what}; published {counts:?}, commits {:?}, workers {states:?}",
            cluster.reasons_after(0)
        );
    }
    cluster.published().await.map
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
