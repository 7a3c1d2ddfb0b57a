//! SPEC §11 scenarios 9–11: NATS faults (server killed, links cut, a 3-node cluster losing a
//! node) and bad input, against real nats-servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use parti::hooks::{AlertLevel, Event};
use parti::source::Static;
use parti::store::{BucketSpec, NatsStore, Store};
use parti::{Config, DegradedReason, Error, Manager, State};
use parti_testkit::{FaultProxy, NatsCluster, wait_until};

const SETTLE: Duration = Duration::from_secs(15);

/// The buckets of `config` as its workers create them — stable ID, election, heartbeat,
/// assignment — opened through a client of the test's own (an operator, or a fault).
async fn open_buckets(
    cluster: &TestCluster,
    config: &Config,
) -> [Arc<dyn parti::store::Bucket>; 4] {
    let client = cluster.server.client().await.unwrap();
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let mut buckets = Vec::new();
    for spec in config.bucket_specs() {
        buckets.push(store.bucket(&spec).await.unwrap());
    }
    buckets.try_into().unwrap()
}

/// Timings where a few seconds of outage do not expire stable IDs.
fn outage_config() -> Config {
    let mut c = Config::fast_for_tests();
    c.worker_id_ttl = Duration::from_secs(20);
    c
}

/// Collects the degraded alerts a manager emits.
fn collect_alerts(manager: &Manager) -> Arc<Mutex<Vec<AlertLevel>>> {
    let alerts = Arc::new(Mutex::new(Vec::new()));
    let mut events = manager.events();
    let sink = alerts.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let Event::DegradedAlert { level, .. } = event {
                sink.lock().unwrap().push(level);
            }
        }
    });
    alerts
}

/// Collects the reasons of the `DegradedEntered` events a manager emits.
fn collect_degraded(manager: &Manager) -> Arc<Mutex<Vec<DegradedReason>>> {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let mut events = manager.events();
    let sink = reasons.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let Event::DegradedEntered { reason } = event {
                sink.lock().unwrap().push(reason);
            }
        }
    });
    reasons
}

/// Waits until `manager` reported entering Degraded for `reason`, through the event and the
/// accessor alike.
async fn wait_degraded_for(
    manager: &Manager,
    entered: &Mutex<Vec<DegradedReason>>,
    reason: DegradedReason,
) {
    wait_until(SETTLE, "the DegradedEntered event", || async {
        !entered.lock().unwrap().is_empty()
    })
    .await
    .unwrap();
    assert_eq!(
        *entered.lock().unwrap(),
        [reason],
        "entered once, for {reason}"
    );
    assert_eq!(manager.degraded_reason(), Some(reason));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09a_nats_killed_and_restarted_workers_degrade_keep_partitions_and_recover() {
    let mut cluster = TestCluster::start(outage_config(), partitions(120)).await;
    let workers = cluster.workers(4).await;
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let alerts: Vec<_> = workers.iter().map(|(m, _)| collect_alerts(m)).collect();
    let entered: Vec<_> = workers.iter().map(|(m, _)| collect_degraded(m)).collect();
    let held: Vec<_> = workers.iter().map(|(m, _)| m.assignment()).collect();
    assert!(workers.iter().all(|(m, _)| m.degraded_reason().is_none()));

    let killed_at = Instant::now();
    cluster.server.kill().await.unwrap();
    wait_until(SETTLE, "every worker Degraded", || async {
        workers.iter().all(|(m, _)| m.state() == State::Degraded)
    })
    .await
    .unwrap();
    let to_degraded = killed_at.elapsed();
    // The server is gone: every worker says so, whatever tripped first (the connection
    // threshold or the failed calls it causes).
    for ((m, _), entered) in workers.iter().zip(&entered) {
        wait_degraded_for(m, entered, DegradedReason::NatsUnreachable).await;
    }
    for ((m, _), before) in workers.iter().zip(&held) {
        assert_eq!(
            m.assignment(),
            *before,
            "a degraded worker keeps its assignment"
        );
    }
    // Stay down long enough for the alerts to escalate to critical (3 s in these timings).
    wait_until(SETTLE, "alerts to reach critical", || async {
        alerts
            .iter()
            .all(|a| a.lock().unwrap().contains(&AlertLevel::Critical))
    })
    .await
    .unwrap();
    for alerts in &alerts {
        let seen = alerts.lock().unwrap().clone();
        let mut firsts = Vec::new();
        for level in seen {
            if !firsts.contains(&level) {
                firsts.push(level);
            }
        }
        assert_eq!(
            firsts,
            [
                AlertLevel::Info,
                AlertLevel::Warn,
                AlertLevel::Error,
                AlertLevel::Critical
            ],
            "alerts escalate in order"
        );
    }

    let healed_at = Instant::now();
    cluster.server.restart().await.unwrap();
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let to_stable = healed_at.elapsed();
    let after = cluster.published().await;
    assert_eq!(
        moved(&before.map, &after.map),
        0,
        "nothing moved: nobody died"
    );
    assert!(
        workers.iter().all(|(m, _)| m.degraded_reason().is_none()),
        "no reason once recovered"
    );
    println!("s09a: fault→Degraded {to_degraded:?}, heal→Stable {to_stable:?}, moved 0");
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// A worker whose NATS link goes through a proxy.
async fn proxied_worker(cluster: &TestCluster, proxy: &FaultProxy) -> Manager {
    proxied_worker_with(cluster, proxy, cluster.config.clone()).await
}

/// A worker whose NATS link goes through a proxy, with its own configuration.
async fn proxied_worker_with(cluster: &TestCluster, proxy: &FaultProxy, config: Config) -> Manager {
    let client = parti_testkit::connect_options()
        .ignore_discovered_servers()
        .ping_interval(Duration::from_millis(200))
        .connect(proxy.url())
        .await
        .unwrap();
    Manager::builder(async_nats::jetstream::new(client))
        .config(config)
        .source(cluster.source.clone())
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09b_cut_off_worker_degrades_loses_its_partitions_and_rejoins() {
    let cluster = TestCluster::start(outage_config(), partitions(90)).await;
    let mut workers = cluster.workers(3).await;
    let proxy = FaultProxy::start(cluster.server.addr()).await.unwrap();
    // Join after the others so that the leader is one of them.
    let cut = proxied_worker(&cluster, &proxy).await;
    let cut_id = cut.worker_id();
    let mut all = ids(&workers);
    all.push(cut_id.clone());
    all.sort();
    cluster.wait_for_map(&all, SETTLE).await;
    // Settled: the join's hand-offs completed (their commit gives every worker a new version).
    let settled = cluster.wait_for_handoffs(SETTLE).await;
    let settled_version = settled.workers.get(&cut_id).map(|(_, r)| r.version);
    wait_until(
        SETTLE,
        "the proxied worker to own partitions at the settled version",
        || async {
            let mine = cut.assignment();
            cut.state() == State::Stable
                && !mine.partitions.is_empty()
                && Some(mine.version) == settled_version
        },
    )
    .await
    .unwrap();
    assert!(!cut.is_leader());
    let owned = cut.assignment();
    let entered = collect_degraded(&cut);
    let mut reason_watch = cut.watch_degraded_reason();
    assert_eq!(*reason_watch.borrow_and_update(), None);

    proxy.blackhole();
    let cut_at = Instant::now();
    wait_until(SETTLE, "the cut-off worker to degrade", || async {
        cut.state() == State::Degraded
    })
    .await
    .unwrap();
    let to_degraded = cut_at.elapsed();
    // Cut off, not failing: the pings go unanswered and the client drops the link.
    wait_degraded_for(&cut, &entered, DegradedReason::NatsUnreachable).await;
    assert!(reason_watch.has_changed().unwrap());
    assert_eq!(
        *reason_watch.borrow_and_update(),
        Some(DegradedReason::NatsUnreachable)
    );
    assert_eq!(
        cut.assignment(),
        owned,
        "it keeps working on its last assignment"
    );
    // The leader treats it as crashed and hands its partitions to the others — by then the
    // cut-off worker holds nothing (self-fencing at its lease deadline), though it keeps its
    // assignment for when it comes back.
    let others = ids(&workers);
    let after = cluster.wait_for_map(&others, SETTLE).await;
    assert_eq!(after.record.as_ref().unwrap().0.reason, "emergency");
    assert!(
        cut.held().is_empty(),
        "still holding {} partitions while they were handed on",
        cut.held().len()
    );

    proxy.pass();
    let healed_at = Instant::now();
    wait_until(
        SETTLE,
        "the worker to learn it lost its partitions and rejoin",
        || async {
            cut.state() == State::Stable
                && cluster
                    .published()
                    .await
                    .map
                    .contains_worker(&cut.worker_id())
                && cut.assignment().partitions
                    == cluster
                        .published()
                        .await
                        .map
                        .partitions_of(&cut.worker_id())
        },
    )
    .await
    .unwrap();
    println!(
        "s09b: cut→Degraded {to_degraded:?}, heal→Stable {:?}, orphans moved {}",
        healed_at.elapsed(),
        owned.partitions.len()
    );
    assert_eq!(cut.degraded_reason(), None, "no reason once recovered");
    assert_eq!(*reason_watch.borrow_and_update(), None);
    workers.push((cut, Recorder::default()));
    wait_all_stable(&cluster, &workers, SETTLE).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09b_with_degraded_holding_keep_a_cut_off_worker_keeps_holding_past_its_lease() {
    let cluster = TestCluster::start(outage_config(), partitions(30)).await;
    let workers = cluster.workers(2).await;
    let proxy = FaultProxy::start(cluster.server.addr()).await.unwrap();
    let mut keep = cluster.config.clone();
    keep.degraded_holding = parti::config::DegradedHolding::Keep;
    let cut = proxied_worker_with(&cluster, &proxy, keep).await;
    let mut all = ids(&workers);
    all.push(cut.worker_id());
    all.sort();
    cluster.wait_for_map(&all, SETTLE).await;
    wait_until(SETTLE, "the proxied worker to hold its share", || async {
        let held = cut.held();
        !held.is_empty() && held.len() == cut.assignment().partitions.len()
    })
    .await
    .unwrap();
    let held_before = cut.held();

    proxy.blackhole();
    // Its partitions are handed on after heartbeatTtl + grace; it holds them all the same —
    // the overlap `keep` documents.
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(cut.held(), held_before, "keep: holdings outlive the lease");
    proxy.pass();
    cut.kill().await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09c_cut_off_leader_is_replaced_and_fenced() {
    let config = outage_config();
    let failover_budget = config.election_ttl + Duration::from_secs(1);
    let cluster = TestCluster::start(config, partitions(60)).await;
    let proxy = FaultProxy::start(cluster.server.addr()).await.unwrap();
    // The first worker to start becomes the leader: make it the proxied one.
    let leader = proxied_worker_started_first(&cluster, &proxy).await;
    let mut workers = cluster.workers(2).await;
    let mut all = ids(&workers);
    all.push(leader.worker_id());
    all.sort();
    let before = cluster.wait_for_map(&all, SETTLE).await;
    assert!(leader.is_leader(), "the first worker leads");

    proxy.blackhole();
    let cut_at = Instant::now();
    wait_until(
        failover_budget + SETTLE,
        "a new leader among the others",
        || async { workers.iter().any(|(m, _)| m.is_leader()) },
    )
    .await
    .unwrap();
    let failover = cut_at.elapsed();
    assert!(failover <= failover_budget, "failover took {failover:?}");
    // The old leader stepped down by itself: its lease could not be renewed.
    wait_until(SETTLE, "the cut-off leader to step down", || async {
        !leader.is_leader()
    })
    .await
    .unwrap();
    let after = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert!(after.version() > before.version());
    let term_after = after.record.as_ref().unwrap().0.term;
    assert!(
        term_after > before.record.as_ref().unwrap().0.term,
        "a new term publishes"
    );

    proxy.pass();
    wait_until(SETTLE, "the old leader to rejoin as a follower", || async {
        leader.state() == State::Stable
            && !leader.is_leader()
            && cluster
                .published()
                .await
                .map
                .contains_worker(&leader.worker_id())
    })
    .await
    .unwrap();
    // Nothing the old leader did after losing its term was committed.
    let now = cluster.published().await;
    assert!(now.record.as_ref().unwrap().0.term >= term_after);
    println!("s09c: leader failover {failover:?}");
    workers.push((leader, Recorder::default()));
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// KV calls that fail while the connection stays up degrade a worker for `kvErrors`, and the
/// worker's heartbeat says so once a write gets through again (the memory store can fail calls
/// of a connected client; a real server cannot be made to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09d_failing_kv_calls_degrade_for_kv_errors_and_the_heartbeat_says_why() {
    use parti::heartbeat::HeartbeatValue;
    use parti::store::{MemoryStore, codec};

    let store = MemoryStore::new();
    let client = store.client();
    let mut config = outage_config();
    // A recovery window long enough to read the heartbeats written inside it.
    config.degraded_behavior.exit_threshold = Duration::from_secs(3);
    let manager = Manager::builder_with_store(Arc::new(client.clone()))
        .config(config.clone())
        .source(Static::new(partitions(12)))
        .start()
        .await
        .unwrap();
    let id = manager.worker_id();
    let entered = collect_degraded(&manager);
    let heartbeats = store.bucket(&config.bucket_specs()[2]).await.unwrap();
    let beat = || async {
        let entry = heartbeats.get(id.as_str()).await.ok()??;
        codec::decode::<HeartbeatValue>(heartbeats.name(), id.as_str(), &entry.value).ok()
    };

    client.faults().set_failure_rate(1.0);
    wait_until(SETTLE, "the worker to degrade", || async {
        manager.state() == State::Degraded
    })
    .await
    .unwrap();
    assert!(client.is_connected(), "failing, not cut off");
    wait_degraded_for(&manager, &entered, DegradedReason::KvErrors).await;

    client.faults().set_failure_rate(0.0);
    wait_until(SETTLE, "a heartbeat naming the reason", || async {
        beat().await.is_some_and(|b| {
            b.state == State::Degraded && b.degraded_reason == Some(DegradedReason::KvErrors)
        })
    })
    .await
    .unwrap();
    wait_until(
        SETTLE,
        "recovery, and a heartbeat without a reason",
        || async {
            manager.state() != State::Degraded
                && beat()
                    .await
                    .is_some_and(|b| b.state != State::Degraded && b.degraded_reason.is_none())
        },
    )
    .await
    .unwrap();
    assert_eq!(manager.degraded_reason(), None);
    manager.stop().await.unwrap();
}

async fn proxied_worker_started_first(cluster: &TestCluster, proxy: &FaultProxy) -> Manager {
    proxied_worker(cluster, proxy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_three_node_nats_cluster_survives_losing_a_node() {
    init_tracing();
    let mut nats = NatsCluster::start(3).await.unwrap();
    let mut config = Config::fast_for_tests();
    config.kv_buckets.replicas = 3;
    config.operation_timeout = Duration::from_secs(2);
    config.degraded_behavior.enter_threshold = Duration::from_secs(5);
    let source = Static::new(partitions(90));
    let start = |node: usize| {
        let urls = nats.urls();
        let config = config.clone();
        let source = source.clone();
        async move {
            let client = parti_testkit::connect_options()
                .connect(urls[node].as_str())
                .await
                .unwrap();
            Manager::builder(async_nats::jetstream::new(client))
                .config(config)
                .source(source)
                .start()
                .await
                .unwrap()
        }
    };
    // Two workers on each node.
    let mut workers = Vec::new();
    for node in [0, 0, 1, 1, 2, 2] {
        workers.push((start(node).await, node));
    }
    let client = nats.client().await.unwrap();
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let assignment = store
        .bucket(&BucketSpec::new(config.kv_buckets.assignment.clone()).replicas(3))
        .await
        .unwrap();
    let published = || async { parti::records::read_published(&*assignment).await };
    let covers_all = |p: &parti::records::Published| {
        let live: Vec<_> = p.map.workers().cloned().collect();
        p.map.verify(&live, &partitions(90)).is_ok()
    };
    wait_until(SETTLE, "a map over all six workers", || async {
        published()
            .await
            .is_ok_and(|p| p.map.len() == 6 && covers_all(&p))
    })
    .await
    .unwrap();
    let leader_node =
        |workers: &[(Manager, usize)]| workers.iter().find(|(m, _)| m.is_leader()).map(|(_, n)| *n);

    // Case 1: a node the leader is not connected to dies; a worker on another node crashes
    // meanwhile and is handled.
    let leader_at = leader_node(&workers).expect("a leader");
    let quiet_node = (0..3).find(|n| *n != leader_at).unwrap();
    nats.kill(quiet_node).await.unwrap();
    let victim_index = workers
        .iter()
        .position(|(m, n)| *n != quiet_node && !m.is_leader())
        .unwrap();
    let (victim, _) = workers.remove(victim_index);
    victim.kill().await;
    wait_until(SETTLE * 2, "the crash handled with a node down", || async {
        published()
            .await
            .is_ok_and(|p| !p.map.contains_worker(&victim.worker_id()) && covers_all(&p))
    })
    .await
    .unwrap();
    nats.restart(quiet_node).await.unwrap();
    // Before losing another node, the restarted one must have caught up on every bucket, or
    // the next kill would leave some bucket without a quorum.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let b = &config.kv_buckets;
    let streams =
        [&b.stable_id, &b.election, &b.heartbeat, &b.assignment].map(|n| format!("KV_{n}"));
    wait_until(
        SETTLE * 2,
        "every bucket replicated on three current nodes",
        || async {
            for name in &streams {
                let Ok(mut stream) = js.get_stream(name).await else {
                    return false;
                };
                let Ok(info) = stream.info().await else {
                    return false;
                };
                let healthy = info.cluster.as_ref().is_some_and(|c| {
                    c.leader.is_some()
                        && c.replicas.len() == 2
                        && c.replicas.iter().all(|p| p.current && !p.offline)
                });
                if !healthy {
                    return false;
                }
            }
            true
        },
    )
    .await
    .unwrap();

    // Case 2: the node the leader is connected to dies. Its client fails over to another node
    // (or another worker takes over); either way coordination continues: a crash is handled.
    let leader_at = leader_node(&workers).expect("a leader");
    nats.kill(leader_at).await.unwrap();
    let victim_index = workers.iter().position(|(m, _)| !m.is_leader()).unwrap();
    let (victim, _) = workers.remove(victim_index);
    victim.kill().await;
    wait_until(
        SETTLE * 2,
        "the crash handled after the leader's node died",
        || async {
            published()
                .await
                .is_ok_and(|p| !p.map.contains_worker(&victim.worker_id()) && covers_all(&p))
        },
    )
    .await
    .unwrap();
    wait_until(SETTLE, "exactly one leader", || async {
        workers.iter().filter(|(m, _)| m.is_leader()).count() == 1
    })
    .await
    .unwrap();
    nats.restart(leader_at).await.unwrap();
    for (m, _) in &workers {
        let _ = m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_bad_input_is_a_clear_error_and_loses_nothing() {
    // Malformed and invalid configuration: clear errors, every violation named.
    let err = Config::from_yaml_str("heartbeatInterval: [oops").unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let err = Config::from_yaml_str("heartbeatIntervall: 1s").unwrap_err();
    assert!(err.to_string().contains("heartbeatIntervall"), "{err}");
    let err =
        Config::from_yaml_str("workerIdMin: 5\nworkerIdMax: 1\nheartbeatTtl: 1ms").unwrap_err();
    let Error::InvalidConfig { violations } = &err else {
        panic!("{err}")
    };
    assert!(violations.len() >= 2, "{err}");

    let mut cluster_config = Config::fast_for_tests();
    cluster_config.worker_id_max = 2; // three IDs
    let cluster = TestCluster::start(cluster_config.clone(), partitions(30)).await;

    // An invalid config never reaches NATS.
    let mut bad = cluster_config.clone();
    bad.heartbeat_ttl = Duration::ZERO;
    let client = cluster.server.client().await.unwrap();
    let err = Manager::builder(async_nats::jetstream::new(client))
        .config(bad)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");

    // Garbage in every bucket before the cluster starts.
    let client = cluster.server.client().await.unwrap();
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let b = &cluster_config.kv_buckets;
    let garbage = Bytes::from_static(b"\x00\xffnot json{");
    let stable = store
        .bucket(&parti::stable_id::bucket_spec(
            &b.stable_id,
            cluster_config.worker_id_ttl,
            1,
        ))
        .await
        .unwrap();
    stable.put("worker-2", garbage.clone()).await.unwrap();
    let heartbeat = store
        .bucket(&parti::heartbeat::bucket_spec(
            &b.heartbeat,
            cluster_config.heartbeat_ttl,
            1,
        ))
        .await
        .unwrap();
    heartbeat.put("ghost", garbage.clone()).await.unwrap();
    let assignment = store
        .bucket(&BucketSpec::new(b.assignment.clone()))
        .await
        .unwrap();
    assignment.put("cluster", garbage.clone()).await.unwrap();
    assignment
        .put("worker.worker-0", garbage.clone())
        .await
        .unwrap();

    // Two workers fit (worker-2 holds garbage: taken until it expires).
    let workers = cluster.workers(2).await;
    let published = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(
        published.map.partition_count(),
        30,
        "the garbage was healed by a good publish"
    );
    wait_all_stable(&cluster, &workers, SETTLE).await;

    // Garbage in the election bucket while running: the leader keeps (or regains) its lease.
    let election = store
        .bucket(&parti::election::bucket_spec(
            &b.election,
            cluster_config.election_ttl,
            1,
        ))
        .await
        .unwrap();
    // Garbage over the lease itself: the leader's next renewal fails its revision check, it
    // steps down, and once the garbage expires (electionTtl) a worker leads again.
    election.put("leader", garbage.clone()).await.unwrap();
    wait_until(
        SETTLE,
        "the leader to step down from a lease it no longer holds",
        || async { workers.iter().all(|(m, _)| !m.is_leader()) },
    )
    .await
    .unwrap();
    wait_until(
        SETTLE,
        "a worker to lead again after the garbage expired",
        || async { workers.iter().filter(|(m, _)| m.is_leader()).count() == 1 },
    )
    .await
    .unwrap();

    // A source with duplicates: the leader keeps the last good map and reports the error.
    let mut errors = workers
        .iter()
        .find(|(m, _)| m.is_leader())
        .unwrap()
        .0
        .events();
    let mut dup = partitions(30);
    dup.push(dup[0].clone());
    cluster.source.set(dup).await;
    let leader = workers.iter().find(|(m, _)| m.is_leader()).unwrap();
    leader.0.refresh_partitions().unwrap();
    let reported = tokio::time::timeout(SETTLE, async {
        while let Ok(event) = errors.recv().await {
            if let Event::Error(e) = event
                && e.to_string().contains("duplicate")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(reported, Ok(true), "the duplicate is reported");
    assert_eq!(
        cluster.published().await.map,
        published.map,
        "the last good map stays"
    );

    // An exhausted pool: the third worker takes worker-2 only once its garbage expired; a
    // fourth gets IdPoolExhausted.
    cluster.source.set(partitions(30)).await;
    wait_until(SETTLE, "the garbage stable ID to expire", || async {
        stable.get("worker-2").await.is_ok_and(|e| e.is_none())
    })
    .await
    .unwrap();
    let third = cluster
        .worker()
        .await
        .expect("third worker after the garbage ID expired");
    let err = cluster
        .worker()
        .await
        .expect_err("a fourth worker must fail");
    assert!(
        matches!(err, Error::IdPoolExhausted { min: 0, max: 2 }),
        "{err}"
    );
    third.0.stop().await.unwrap();
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// A source that can be made to fail, or to hang.
#[derive(Debug, Clone)]
struct Flaky {
    inner: Static,
    failing: Arc<std::sync::atomic::AtomicBool>,
    hanging: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl parti::source::PartitionSource for Flaky {
    async fn list_partitions(&self) -> parti::Result<Vec<parti::Partition>> {
        if self.hanging.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Source("inventory service unavailable".into()));
        }
        self.inner.list_partitions().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_a_failing_source_keeps_the_map_and_does_not_block_crash_handling() {
    use parti::source::PartitionSource;
    let cluster = TestCluster::start(Config::fast_for_tests(), partitions(60)).await;
    let source = Flaky {
        inner: cluster.source.clone(),
        failing: Arc::default(),
        hanging: Arc::default(),
    };
    let start = || async {
        let client = cluster.server.client().await.unwrap();
        Manager::builder(async_nats::jetstream::new(client))
            .config(cluster.config.clone())
            .source(source.clone())
            .start()
            .await
            .unwrap()
    };
    let (a, b, c) = tokio::join!(start(), start(), start());
    let mut workers = vec![a, b, c];
    let ids = |ws: &[Manager]| {
        let mut ids: Vec<_> = ws.iter().map(Manager::worker_id).collect();
        ids.sort();
        ids
    };
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    let leader = workers.iter().find(|m| m.is_leader()).unwrap();
    let mut events = leader.events();

    source
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(source.list_partitions().await.is_err());
    // A refresh while the source fails: reported, the map stays.
    leader.refresh_partitions().unwrap();
    let reported = tokio::time::timeout(SETTLE, async {
        while let Ok(event) = events.recv().await {
            if let Event::Error(e) = event
                && matches!(*e, Error::Source(_))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(reported, Ok(true), "the source error is reported");
    assert_eq!(
        cluster.published().await.map,
        before.map,
        "the last good map stays"
    );

    // A crash is still handled, over the last good partition list.
    let victim = workers.iter().position(|m| !m.is_leader()).unwrap();
    let victim = workers.remove(victim);
    victim.kill().await;
    let after = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(after.map.partition_count(), 60);
    assert_eq!(after.record.unwrap().0.reason, "emergency");

    // A source that hangs (no answer at all) must not stall crash handling either: its calls
    // are cut off at operationTimeout.
    source
        .hanging
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let leader = workers.iter().find(|m| m.is_leader()).unwrap();
    leader.refresh_partitions().unwrap();
    let victim = workers.iter().position(|m| !m.is_leader()).unwrap();
    let victim = workers.remove(victim);
    let crashed = Instant::now();
    victim.kill().await;
    let hung = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(hung.map.partition_count(), 60);
    println!(
        "s11: crash handled {:?} after the kill with a hung source",
        crashed.elapsed()
    );
    for m in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_garbage_under_live_keys_of_every_bucket_is_never_taken_as_valid() {
    let config = Config::fast_for_tests();
    let cluster = TestCluster::start(config.clone(), partitions(60)).await;
    let mut workers = cluster.workers(4).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let settled_ns = parti::ownership::now_ns();

    let [stable, election, heartbeat, assignment] = open_buckets(&cluster, &config).await;

    let followers: Vec<String> = workers
        .iter()
        .filter(|(m, _)| !m.is_leader())
        .map(|(m, _)| m.worker_id().to_string())
        .collect();
    let garbage = Bytes::from_static(b"\x00\xffnot json{");
    let at = parti::ownership::now_ns();
    // Keys that are not worker IDs of the pool, and one that is but nobody claimed.
    for key in ["ghost", "worker-77"] {
        heartbeat.put(key, garbage.clone()).await.unwrap();
    }
    heartbeat.put(&followers[0], garbage.clone()).await.unwrap();
    assignment.put("cluster", garbage.clone()).await.unwrap();
    for slot in ["a", "b"] {
        let key = format!("worker.{}.{slot}", followers[1]);
        assignment.put(&key, garbage.clone()).await.unwrap();
    }
    election.put("leader", garbage.clone()).await.unwrap();
    stable.put(&followers[2], garbage.clone()).await.unwrap();
    cluster.fault("garbage", at);

    // A crash makes the next leader publish over the garbage.
    let victim = workers
        .iter()
        .position(|(m, _)| m.worker_id().as_str() == followers[0])
        .unwrap();
    let (victim, _) = workers.remove(victim);
    cluster.kill(&victim).await;

    wait_until(SETTLE, "a map over exactly the live workers", || async {
        let published = cluster.published().await;
        let mut live = ids(&workers);
        live.sort();
        published.map.workers().cloned().collect::<Vec<_>>() == live
            && workers.iter().all(|(m, _)| {
                m.assignment().partitions == published.map.partitions_of(&m.worker_id())
            })
    })
    .await
    .unwrap();
    let published = cluster.published().await;
    for ghost in ["ghost", "worker-77"] {
        assert!(
            !published.map.contains_worker(&parti::WorkerId::new(ghost)),
            "a garbage heartbeat under {ghost} was taken as a worker"
        );
    }
    cluster.assert_holdings_clean(settled_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_overwritten_with_garbage_is_committed_again_and_a_later_leader_builds_on_it() {
    let config = Config::fast_for_tests();
    let cluster = TestCluster::start(config.clone(), partitions(40)).await;
    let mut workers = cluster.workers(3).await;
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let settled_ns = parti::ownership::now_ns();
    let before_version = before.record.as_ref().map(|(r, _)| r.version).unwrap();

    let assignment = cluster.assignment_bucket();
    let at = parti::ownership::now_ns();
    assignment
        .put("cluster", Bytes::from_static(b"\x00\xffnot json{"))
        .await
        .unwrap();
    cluster.fault("garbage", at);

    // The leader notices its commit is gone and commits the same map again. The repair is
    // found in the commit history: the hand-off completion that follows it may already have
    // replaced it as the latest record.
    wait_until(
        SETTLE,
        "the leader to commit again over the garbage",
        || async {
            cluster
                .reasons_after(before_version)
                .iter()
                .any(|r| r == "repair")
        },
    )
    .await
    .unwrap();
    let repaired = cluster.wait_for_handoffs(SETTLE).await;
    assert_eq!(
        moved(&before.map, &repaired.map),
        0,
        "a repair moves nothing"
    );

    // A leader crash afterwards is an ordinary failover, not a cold start.
    let leader = workers.iter().position(|(m, _)| m.is_leader()).unwrap();
    let (leader, _) = workers.remove(leader);
    let repaired_version = repaired.record.as_ref().map(|(r, _)| r.version).unwrap();
    cluster.kill(&leader).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    cluster.wait_for_handoffs(SETTLE).await;
    let reasons = cluster.reasons_after(repaired_version);
    assert!(
        !reasons.iter().any(|r| r == "cold_start"),
        "the next leader started cold: {reasons:?}"
    );
    cluster.assert_holdings_clean(settled_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// Garbage written over a follower's committed value (not the `cluster` record): the leader
/// sees the write, commits the same map again with that value written anew, and nothing
/// moves or is held twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_worker_value_overwritten_with_garbage_is_written_again() {
    let config = Config::fast_for_tests();
    let cluster = TestCluster::start(config.clone(), partitions(40)).await;
    let workers = cluster.workers(3).await;
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let settled_ns = parti::ownership::now_ns();
    let before_version = before.record.as_ref().map(|(r, _)| r.version).unwrap();
    let (follower, _) = workers.iter().find(|(m, _)| !m.is_leader()).unwrap();
    let id = follower.worker_id();
    let slot = before.slots[&id];

    let assignment = cluster.assignment_bucket();
    let at = parti::ownership::now_ns();
    assignment
        .put(
            &parti::records::worker_key(&id, slot),
            Bytes::from_static(b"\x00\xffnot json{"),
        )
        .await
        .unwrap();
    cluster.fault("garbage", at);

    // Read afresh, the commit gives the follower its partitions again.
    wait_until(SETTLE, "the follower's value written again", || async {
        let published = cluster.published().await;
        // (The garbage stays in the slot no commit names, until that slot is written next.)
        published.map.partitions_of(&id) == before.map.partitions_of(&id)
            && published.version() > before_version
    })
    .await
    .unwrap();
    let reasons = cluster.reasons_after(before_version);
    assert!(reasons.iter().any(|r| r == "repair"), "{reasons:?}");
    let repaired = cluster.wait_for_handoffs(SETTLE).await;
    assert_eq!(
        moved(&before.map, &repaired.map),
        0,
        "a repair moves nothing"
    );
    assert_eq!(
        follower.assignment().partitions,
        before.map.partitions_of(&id)
    );
    cluster.assert_holdings_clean(settled_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// The assignment bucket (commit, worker values, version floor) and the election bucket are
/// deleted under a running cluster, as `nats kv rm` would. The leader notices within a probe
/// interval, degrades for a lost bucket, and the buckets are created again; the new assignment
/// bucket gets its floor back from what the workers saw, so versions and leader terms continue
/// above where they were, and the ownership checker finds nothing held twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_assignment_and_election_buckets_are_created_again_with_their_floors() {
    let cluster = TestCluster::start(outage_config(), partitions(60)).await;
    let workers = cluster.workers(5).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let before = cluster.record().await;
    let entered: Vec<_> = workers.iter().map(|(m, _)| collect_degraded(m)).collect();
    let from_ns = parti::ownership::now_ns();

    let js = async_nats::jetstream::new(cluster.server.client().await.unwrap());
    let [_, election, _, assignment] = cluster.config.bucket_specs();
    js.delete_key_value(&assignment.name).await.unwrap();
    js.delete_key_value(&election.name).await.unwrap();

    let lost_bucket = |r: &DegradedReason| {
        matches!(
            r,
            DegradedReason::BucketMissing | DegradedReason::BucketRecreated
        )
    };
    // Leaders probe the buckets on a timer (followers only when their own calls fail).
    wait_until(SETTLE, "a leader to degrade for a lost bucket", || async {
        entered
            .iter()
            .any(|e| e.lock().unwrap().iter().any(lost_bucket))
    })
    .await
    .unwrap();
    wait_until(
        SETTLE,
        "a commit in the new bucket above the old one",
        || async {
            parti::records::read_published(&*cluster.assignment_bucket())
                .await
                .ok()
                .and_then(|p| p.record)
                .is_some_and(|(r, _)| r.version > before.version && r.term > before.term)
        },
    )
    .await
    .unwrap();
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    wait_until(SETTLE, "every worker out of Degraded", || async {
        workers.iter().all(|(m, _)| m.degraded_reason().is_none())
    })
    .await
    .unwrap();
    let after = cluster.record().await;
    println!(
        "buckets deleted: version {} → {}, term {} → {}",
        before.version, after.version, before.term, after.term
    );
    cluster.assert_holdings_clean(from_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// With `autoProvision: false` a worker creates no bucket: a missing one fails the start with
/// the bucket's name and what to run, and once an operator provisioned the buckets it starts.
#[tokio::test]
async fn without_auto_provision_a_missing_bucket_fails_the_start_and_nothing_is_created() {
    use parti::StoreError;
    use parti::store::MemoryStore;

    let store = MemoryStore::new();
    let mut config = Config::fast_for_tests();
    config.auto_provision = false;
    let start = || {
        Manager::builder_with_store(Arc::new(store.client()))
            .config(config.clone())
            .source(Static::new(partitions(4)))
            .start()
    };
    let [stable_id, ..] = config.bucket_specs();
    match start().await {
        Err(e @ Error::Store(StoreError::BucketMissing { .. })) => {
            let message = e.to_string();
            assert!(message.contains(&stable_id.name), "{message}");
            assert!(message.contains("parti provision apply"), "{message}");
        }
        other => panic!(
            "expected BucketMissing, got {:?}",
            other.map(|_| "a manager")
        ),
    }
    let probe = store.client();
    for spec in config.bucket_specs() {
        assert!(
            matches!(
                probe.bucket(&spec).await,
                Err(StoreError::BucketMissing { .. })
            ),
            "{} was created",
            spec.name
        );
    }
    // The operator provisions them; now the worker starts.
    for spec in config.bucket_specs() {
        probe.bucket(&spec.create_if_missing(true)).await.unwrap();
    }
    let manager = Manager::builder_with_store(Arc::new(store.client()))
        .config(config.clone())
        .source(Static::new(partitions(4)))
        .spawn()
        .await
        .unwrap();
    assert!(
        !manager.worker_id().as_str().is_empty(),
        "joined with an ID"
    );
    manager.stop().await.unwrap();
}

/// With `autoProvision: false` a bucket deleted under a running fleet is not created again by
/// the workers: they stay Degraded (`bucketMissing`) until an operator provisions it, then
/// recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_provision_a_deleted_bucket_is_left_to_the_operator() {
    let mut config = outage_config();
    config.auto_provision = false;
    let cluster = TestCluster::start(config.clone(), partitions(30)).await;
    let js = async_nats::jetstream::new(cluster.server.client().await.unwrap());
    let operator = NatsStore::new(js.clone());
    for spec in config.bucket_specs() {
        operator
            .bucket(&spec.create_if_missing(true))
            .await
            .unwrap();
    }
    let workers = cluster.workers(2).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let entered: Vec<_> = workers.iter().map(|(m, _)| collect_degraded(m)).collect();

    let [_, election, _, _] = config.bucket_specs();
    js.delete_key_value(&election.name).await.unwrap();
    wait_until(
        SETTLE,
        "a worker to degrade for the missing bucket",
        || async {
            entered
                .iter()
                .any(|e| e.lock().unwrap().contains(&DegradedReason::BucketMissing))
        },
    )
    .await
    .unwrap();
    // Several probe rounds later the bucket is still missing: nobody created it.
    let recreated = wait_until(
        config.heartbeat_ttl * 3,
        "the bucket to be created by a worker",
        || async { js.get_key_value(&election.name).await.is_ok() },
    )
    .await;
    assert!(recreated.is_err(), "a worker created the bucket");

    operator
        .bucket(&election.clone().create_if_missing(true))
        .await
        .unwrap();
    wait_until(SETTLE, "every worker out of Degraded", || async {
        workers.iter().all(|(m, _)| m.degraded_reason().is_none())
    })
    .await
    .unwrap();
    wait_all_stable(&cluster, &workers, SETTLE).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// A leader whose stable ID is taken from it (here: garbage over its stable-ID key) stops
/// leading, and gives the lease up: the `leader` key is deleted, not left to expire, so that
/// another worker leads at once rather than an election TTL later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_stable_id_gives_the_lease_up() {
    use futures::StreamExt;
    use parti::store::WatchEvent;

    let config = Config::fast_for_tests();
    let cluster = TestCluster::start(config.clone(), partitions(30)).await;
    let workers = cluster.workers(3).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;

    let [stable, election, ..] = open_buckets(&cluster, &config).await;
    let mut leader_key = election.watch("leader").await.unwrap();
    // The snapshot first: the live lease.
    loop {
        match leader_key.next().await.unwrap().unwrap() {
            WatchEvent::InitDone => break,
            _ => continue,
        }
    }
    let old = workers.iter().position(|(m, _)| m.is_leader()).unwrap();
    stable
        .put(
            workers[old].0.worker_id().as_str(),
            Bytes::from_static(b"\x00\xffnot json{"),
        )
        .await
        .unwrap();

    // The lease's end, as the election bucket shows it.
    let ended = tokio::time::timeout(SETTLE, async {
        loop {
            match leader_key.next().await.unwrap().unwrap() {
                end @ (WatchEvent::Deleted { .. } | WatchEvent::Expired { .. }) => return end,
                _ => continue,
            }
        }
    })
    .await
    .expect("the lease ends");
    let ended_at = Instant::now();
    assert!(
        matches!(ended, WatchEvent::Deleted { .. }),
        "the lease was not given up but ended by {ended:?}"
    );
    wait_until(SETTLE, "another worker leads", || async {
        workers
            .iter()
            .enumerate()
            .any(|(i, (m, _))| i != old && m.is_leader())
    })
    .await
    .unwrap();
    // A follower contends on the delete: well within the TTL a lapsed key would take.
    let took = ended_at.elapsed();
    assert!(took < config.election_ttl / 2, "took {took:?}");
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}
