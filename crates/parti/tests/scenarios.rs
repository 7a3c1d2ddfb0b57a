//! SPEC §11 scenarios 1–8 against a real nats-server, with short timings.
//!
//! A crash is `Manager::kill` (tasks aborted, nothing released: heartbeat and ID expire by TTL),
//! never the graceful stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use parti::records::ClusterRecord;
use parti::{ClusterPhase, Config, Partition, State};
use parti_testkit::wait_until;

fn config() -> Config {
    Config::fast_for_tests()
}

const SETTLE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_cold_start_publishes_once_and_every_worker_sees_its_initial_assignment() {
    let cluster = TestCluster::start(config(), partitions(200)).await;
    let workers = cluster.workers(8).await;
    let published = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(
        cluster.reasons_after(0),
        ["cold_start"],
        "exactly one publish for the cold start"
    );
    wait_all_stable(&cluster, &workers, SETTLE).await;
    for (manager, recorder) in &workers {
        let seen = recorder.seen.lock().unwrap().clone();
        let first = seen.first().expect("hooks saw the initial assignment");
        assert_eq!(
            first.version,
            published.version(),
            "{}",
            manager.worker_id()
        );
        assert_eq!(
            first.partitions,
            published.map.partitions_of(&manager.worker_id()),
            "{}",
            manager.worker_id()
        );
    }
    assert_eq!(published.map.partition_count(), 200);
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_planned_scale_up_and_down_publish_once_per_batch_and_move_little() {
    let cluster = TestCluster::start(config(), partitions(240)).await;
    let mut workers = cluster.workers(5).await;
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(cluster.reasons_after(0), ["cold_start"]);
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let settled_ns = parti::ownership::now_ns();
    let epochs_before = held_epochs(&workers, 240).await;

    // Scale up by 3 inside one window: one rebalance, then one commit that completes the
    // hand-offs once the losers released (release-then-acquire).
    workers.extend(cluster.workers(3).await);
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    let after_up = cluster.wait_for_handoffs(SETTLE).await;
    let reasons = cluster.reasons_after(before.version());
    assert_eq!(
        reasons.iter().filter(|r| *r != "handoff").count(),
        1,
        "one publish for the batch of joins (then hand-off completions): {reasons:?}"
    );
    assert_eq!(after_up.record.as_ref().unwrap().0.reason, "handoff");
    let minimum_up = 240 * 3 / 8;
    let moved_up = moved(&before.map, &after_up.map);
    assert!(
        moved_up as f64 <= 1.3 * minimum_up as f64,
        "scale-up moved {moved_up}, minimum {minimum_up}"
    );
    wait_all_stable(&cluster, &workers, SETTLE).await;
    // The application sees each holding's epoch: a moved partition's new epoch is above its
    // old one (a fencing token), an unmoved one keeps its epoch.
    let epochs_after = held_epochs(&workers, 240).await;
    let before_owners = owners(&before.map);
    let after_owners = owners(&after_up.map);
    for (id, (owner, epoch)) in &epochs_after {
        let (old_owner, old_epoch) = &epochs_before[id];
        assert_eq!(owner, &after_owners[id], "{id} held by its assignee");
        if old_owner == owner {
            assert_eq!(epoch, old_epoch, "{id} did not move, its epoch stays");
        } else {
            assert_eq!(old_owner, &before_owners[id]);
            assert!(
                epoch > old_epoch,
                "{id} moved: epoch {old_epoch} -> {epoch}"
            );
        }
    }

    // Scale down by 3, gracefully, inside one window: the leavers released everything before
    // leaving, so nothing waits.
    let leaving: Vec<_> = workers.drain(..3).collect();
    futures::future::join_all(leaving.iter().map(|(m, _)| m.stop())).await;
    let after_down = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    let reasons = cluster.reasons_after(after_up.version());
    assert_eq!(
        reasons,
        ["scale_down"],
        "one publish for the batch of leaves, nothing to wait for"
    );
    let owned_by_leavers: usize = leaving
        .iter()
        .map(|(m, _)| after_up.map.partitions_of(&m.worker_id()).len())
        .sum();
    let moved_down = moved(&after_up.map, &after_down.map);
    assert!(
        moved_down as f64 <= 1.3 * owned_by_leavers as f64,
        "scale-down moved {moved_down}, minimum {owned_by_leavers}"
    );
    wait_all_stable(&cluster, &workers, SETTLE).await;
    // Every move was release-then-acquire: never two holders at once.
    cluster.assert_holdings_clean(settled_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// Partition ID → (holder, epoch) over every worker's [`Manager::held`], once all `n`
/// partitions are held (within `SETTLE`).
async fn held_epochs(
    workers: &[(parti::Manager, common::Recorder)],
    n: usize,
) -> std::collections::BTreeMap<String, (parti::WorkerId, u64)> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let mut all = std::collections::BTreeMap::new();
        for (m, _) in workers {
            for (p, epoch) in m.held().iter() {
                let previous = all.insert(p.id(), (m.worker_id(), epoch));
                assert!(previous.is_none(), "{} held twice", p.id());
            }
        }
        if all.len() == n {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} partitions held",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_rolling_update_moves_nothing() {
    // A window long enough for a restart to come back inside it, and a grace period that
    // covers a leader hand-over.
    let mut config = config();
    config.planned_scale_window = Duration::from_millis(2_000);
    config.cold_start_window = Duration::from_millis(2_000);
    config.emergency_grace_period = Some(config.heartbeat_ttl);
    config.assignment.min_rebalance_interval = Duration::from_millis(500);
    let cluster = TestCluster::start(config, partitions(120)).await;
    let mut workers = cluster.workers(6).await;
    let initial = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;

    for i in 0..6 {
        let (old, _) = workers.remove(0);
        let id = old.worker_id();
        old.stop().await.unwrap();
        let (fresh, recorder) = cluster.worker().await.expect("restarted worker");
        assert_eq!(
            fresh.worker_id(),
            id,
            "round {i}: the restarted pod gets its ID back"
        );
        workers.push((fresh, recorder));
        wait_all_stable(&cluster, &workers, SETTLE).await;
        let now = cluster.published().await;
        assert_eq!(
            moved(&initial.map, &now.map),
            0,
            "round {i}: a rolling restart must not move partitions"
        );
        assert_eq!(now.map, initial.map, "round {i}");
    }
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_crash_reassigns_only_orphans_quickly() {
    let config = config();
    let budget = config.heartbeat_ttl + config.emergency_grace_period() + Duration::from_secs(1);
    let cluster = TestCluster::start(config, partitions(180)).await;
    let mut workers = cluster.workers(6).await;
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;

    // Crash a follower (the leader case is s05).
    let victim_index = workers.iter().position(|(m, _)| !m.is_leader()).unwrap();
    let (victim, _) = workers.remove(victim_index);
    let victim_id = victim.worker_id();
    let orphans = before.map.partitions_of(&victim_id).to_vec();
    let crashed_at = Instant::now();
    victim.kill().await;

    let after = cluster.wait_for_map(&ids(&workers), budget + SETTLE).await;
    let elapsed = crashed_at.elapsed();
    assert!(
        elapsed <= budget,
        "orphans reassigned after {elapsed:?}, budget {budget:?}"
    );
    let before_owners = owners(&before.map);
    let after_owners = owners(&after.map);
    for (partition, owner) in &before_owners {
        if *owner != victim_id {
            assert_eq!(
                after_owners.get(partition),
                Some(owner),
                "{partition} moved but was not an orphan"
            );
        }
    }
    assert_eq!(moved(&before.map, &after.map), orphans.len());
    assert_eq!(after.record.unwrap().0.reason, "emergency");
    println!("crash→published latency: {elapsed:?} (budget {budget:?})");
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// The crash publish carries its `Emergency` phase in the commit: the leader does not first
/// rewrite the `cluster` record just to announce the phase (every follower reads every
/// rewrite of it, which at a thousand workers delayed the crash publish behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04b_the_crash_publish_carries_its_emergency_phase() {
    use futures::StreamExt;
    use parti::store::WatchEvent;

    let cluster = TestCluster::start(config(), partitions(60)).await;
    let mut workers = cluster.workers(3).await;
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let bucket = cluster.assignment_bucket();
    let mut watch = bucket
        .watch(parti::records::CLUSTER_KEY)
        .await
        .expect("a watch on the cluster record");
    // Every write of the record from now on, as (version, phase).
    let writes = tokio::spawn(async move {
        let mut writes = Vec::new();
        let mut live = false;
        while let Some(Ok(event)) = watch.next().await {
            match event {
                WatchEvent::InitDone => live = true,
                WatchEvent::Put(entry) if live => {
                    let record: ClusterRecord =
                        parti::store::codec::decode("a", "cluster", &entry.value)
                            .expect("a record the leader wrote");
                    let done = record.version > 0
                        && record.phase == ClusterPhase::Stable
                        && record.reason == "emergency";
                    writes.push((record.version, record.phase));
                    if done {
                        break;
                    }
                }
                _ => {}
            }
        }
        writes
    });
    let victim = workers.iter().position(|(m, _)| !m.is_leader()).unwrap();
    let (victim, _) = workers.remove(victim);
    victim.kill().await;
    let writes = tokio::time::timeout(SETTLE, writes)
        .await
        .expect("the crash was published and the phase went back to Stable")
        .unwrap();
    let v = writes.first().map_or(0, |w| w.0);
    assert!(v > before.version(), "{writes:?}");
    assert_eq!(
        writes,
        [(v, ClusterPhase::Emergency), (v, ClusterPhase::Stable)],
        "one commit carrying Emergency, then Stable; no announcement before the commit"
    );
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// A leader elected only after a crashed worker's stable ID has lapsed still handles that
/// worker as a crash (emergency after the grace period), not as a graceful leave (a planned
/// window): the ID's expiry, not a release, is its last change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04c_a_crash_whose_id_lapsed_before_the_next_leader_took_over_is_still_a_crash() {
    let ms = Duration::from_millis;
    let mut config = config();
    // The follower's ID (2 s, renewed every 667 ms) lapses by the time the dead leader's lease
    // (3 s, renewed every second) runs out, and its expiry marker (2 s) is still there when
    // the next leader takes over. A planned window would show.
    config.worker_id_ttl = ms(2_000);
    config.election_ttl = ms(3_000);
    config.planned_scale_window = ms(4_000);
    config.cold_start_window = ms(4_000);
    let cluster = TestCluster::start(config.clone(), partitions(80)).await;
    let mut workers = cluster.workers(4).await;
    let before = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    let settled_ns = parti::ownership::now_ns();

    // The leader and a follower die together: the next leader takes over after the lease,
    // by when the follower's ID has lapsed.
    let leader = workers.iter().position(|(m, _)| m.is_leader()).unwrap();
    let (leader, _) = workers.remove(leader);
    let follower = workers.iter().position(|(m, _)| !m.is_leader()).unwrap();
    let (follower, _) = workers.remove(follower);
    let crashed_at = Instant::now();
    cluster.kill(&leader).await;
    cluster.kill(&follower).await;

    cluster
        .wait_for_map(&ids(&workers), config.planned_scale_window + SETTLE)
        .await;
    let elapsed = crashed_at.elapsed();
    let reasons = cluster.reasons_after(before.version());
    assert!(
        reasons.first().is_some_and(|r| r == "emergency"),
        "the two crashes are placed by an emergency publish, not a planned window: {reasons:?}"
    );
    println!("crashes placed {elapsed:?} after the kill by {reasons:?}");
    cluster.assert_holdings_clean(settled_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04d_a_dead_worker_whose_id_was_claimed_again_before_the_takeover_is_a_leave() {
    use parti::store::{NatsStore, Store};

    let config = config();
    let cluster = TestCluster::start(config.clone(), partitions(80)).await;
    let mut workers = cluster.workers(4).await;
    let everyone = ids(&workers);
    // The leader dies and a successor process claims its ID at once (a restart under the
    // same ID), but has not heartbeated yet when the next leader takes over.
    let (before, settled_ns, _) = settle_then_kill_the_leader(&cluster, &mut workers).await;
    let survivors = ids(&workers);
    let leader = everyone.iter().find(|w| !survivors.contains(w)).unwrap();
    let client = cluster.server.client().await.unwrap();
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let [stable_id_spec, ..] = config.bucket_specs();
    let stable_ids = store.bucket(&stable_id_spec).await.unwrap();
    let claim = parti::stable_id::StableIdValue {
        instance: "successor".into(),
        host: "test".into(),
        claimed_at: 1,
    };
    stable_ids
        .put(
            leader.as_str(),
            parti::store::codec::encode(&claim).unwrap(),
        )
        .await
        .unwrap();

    cluster
        .wait_for_map(&ids(&workers), config.planned_scale_window + SETTLE)
        .await;
    let reasons = cluster.reasons_after(before.version());
    assert!(
        reasons.first().is_some_and(|r| r != "emergency"),
        "a worker restarted under its ID is a planned change, not a crash: {reasons:?}"
    );
    cluster.assert_holdings_clean(settled_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_leader_crash_fails_over_versions_continue_and_no_double_ownership() {
    let config = config();
    let failover_budget = config.election_ttl + Duration::from_secs(1);
    let cluster = TestCluster::start(config, partitions(150)).await;
    let mut workers = cluster.workers(5).await;
    let (before, settled_ns, crashed_at) =
        settle_then_kill_the_leader(&cluster, &mut workers).await;

    wait_until(failover_budget + SETTLE, "a new leader", || async {
        workers.iter().any(|(m, _)| m.is_leader())
    })
    .await
    .expect("new leader");
    let elapsed = crashed_at.elapsed();
    let after = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    assert!(
        elapsed <= failover_budget,
        "new leader after {elapsed:?}, budget {failover_budget:?}"
    );
    assert!(
        after.version() > before.version(),
        "versions continue upward"
    );
    // What the workers held, not what was published: one holder at a time, epochs rising, the
    // dead leader's partitions held again in time.
    cluster.assert_holdings_clean(settled_ns).await;
    println!("leader failover: {elapsed:?} (budget {failover_budget:?})");
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_flapping_worker_inside_grace_causes_no_emergency() {
    use parti::heartbeat::{self, Heartbeater, MembershipEvent, MembershipWatcher};
    use parti::store::{NatsStore, Store};

    let mut config = config();
    // A grace period long enough to come back in, shorter than the heartbeat TTL.
    config.emergency_grace_period = Some(config.heartbeat_ttl);
    let cluster = TestCluster::start(config.clone(), partitions(60)).await;

    // A worker run from the primitives, so that its heartbeat can stop and resume under the
    // same ID (a network blip) while its stable ID stays held.
    let client = cluster.server.client().await.unwrap();
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let b = &config.kv_buckets;
    let hb_bucket = store
        .bucket(&heartbeat::bucket_spec(
            &b.heartbeat,
            config.heartbeat_ttl,
            1,
        ))
        .await
        .unwrap();
    let id = parti::WorkerId::new("worker-90");
    let beat = |info| {
        Heartbeater::spawn(
            hb_bucket.clone(),
            id.clone(),
            "flapper".into(),
            config.heartbeat_interval,
            info,
        )
    };
    let (_info_tx, info_rx) =
        tokio::sync::watch::channel(parti::heartbeat::HeartbeatInfo::new(State::Stable, 0));
    let flapper = beat(info_rx.clone());
    let mut workers = cluster.workers(3).await;
    let mut all = ids(&workers);
    all.push(id.clone());
    let before = cluster.wait_for_map(&all, SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;

    let (watcher, mut membership) =
        MembershipWatcher::spawn(hb_bucket.clone(), config.heartbeat_ttl);
    flapper.abort();
    let expired = tokio::time::timeout(SETTLE, async {
        while let Some(event) = membership.recv().await {
            if event == MembershipEvent::Expired(id.clone()) {
                return;
            }
        }
    })
    .await;
    assert!(expired.is_ok(), "the flapper's heartbeat expired");
    let back = beat(info_rx);
    // Longer than the grace period: an emergency would have been published by now.
    let mut phases = Vec::new();
    let watch_until = Instant::now() + config.heartbeat_ttl * 3;
    while Instant::now() < watch_until {
        phases.push(cluster.record().await.phase);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        !phases.contains(&ClusterPhase::Emergency),
        "a flap inside the grace period must not cause an emergency"
    );
    let after = cluster.published().await;
    assert_eq!(after.version(), before.version(), "nothing was published");
    assert_eq!(after.map, before.map);
    back.abort();
    watcher.stop().await;
    for (m, _) in workers.drain(..) {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_full_restart_of_ten_workers_is_one_cold_start_publish() {
    let mut config = config();
    config.cold_start_window = Duration::from_millis(2_000);
    let cluster = TestCluster::start(config, partitions(200)).await;
    let workers = cluster.workers(10).await;
    let first = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(cluster.reasons_after(0), ["cold_start"]);
    let ids_before = ids(&workers);
    futures::future::join_all(workers.iter().map(|(m, _)| m.stop())).await;
    drop(workers);

    let workers = cluster.workers(10).await;
    assert_eq!(ids(&workers), ids_before, "IDs are reclaimed");
    // The map from before the restart names the same workers: wait for the one published
    // after it.
    wait_until(SETTLE, "a publish after the full restart", || async {
        cluster.published().await.version() > first.version()
    })
    .await
    .unwrap();
    let after = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    let record: ClusterRecord = after.record.clone().unwrap().0;
    assert_eq!(
        cluster.reasons_after(first.version()).len(),
        1,
        "one publish after the full restart"
    );
    // The workers got their IDs back, so their partitions stay where they were. The leader
    // calls it a restart when it found fewer than half of the workers back; a fleet that
    // claimed its IDs faster than a leader was elected is a hand-over of the same map.
    assert!(
        ["restart", "handoff"].contains(&record.reason.as_str()),
        "{}",
        record.reason
    );
    assert_eq!(after.map, first.map, "nothing moved");
    wait_all_stable(&cluster, &workers, SETTLE).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_partition_refresh_from_follower_and_leader() {
    let cluster = TestCluster::start(config(), partitions(50)).await;
    let workers = cluster.workers(4).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;

    // From a follower: add 20, remove 10, re-weight 5.
    let mut next: Vec<Partition> = partitions(70).into_iter().skip(10).collect();
    for p in next.iter_mut().take(5) {
        *p = p.clone().with_weight(400);
    }
    cluster.source.set(next.clone()).await;
    let follower = workers.iter().find(|(m, _)| !m.is_leader()).unwrap();
    follower.0.refresh_partitions().unwrap();
    let after = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(after.map.partition_count(), 60);
    let weights: Vec<u64> = after
        .map
        .iter()
        .flat_map(|(_, ps)| {
            ps.iter()
                .filter(|p| p.weight() == 400)
                .map(Partition::weight)
        })
        .collect();
    assert_eq!(
        weights.len(),
        5,
        "re-weighted partitions are published with their weight"
    );
    wait_all_stable(&cluster, &workers, SETTLE).await;

    // From the leader: shrink to 30.
    cluster.source.set(partitions(30)).await;
    let leader = workers.iter().find(|(m, _)| m.is_leader()).unwrap();
    leader.0.refresh_partitions().unwrap();
    let after = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert_eq!(after.map.partition_count(), 30);
    wait_all_stable(&cluster, &workers, SETTLE).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

/// An election agent that grants leadership to one chosen worker only.
#[derive(Debug)]
struct Appointed {
    leader: bool,
    term: u64,
    held: std::sync::atomic::AtomicBool,
    requests: std::sync::atomic::AtomicU64,
}

impl Appointed {
    fn new(leader: bool) -> std::sync::Arc<Self> {
        Self::with_term(leader, 42)
    }

    fn with_term(leader: bool, term: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            leader,
            term,
            held: Default::default(),
            requests: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl parti::ElectionAgent for Appointed {
    async fn request(&self) -> parti::Result<Option<u64>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.requests.fetch_add(1, SeqCst);
        self.held.store(self.leader, SeqCst);
        Ok(self.leader.then_some(self.term))
    }
    async fn renew(&self) -> parti::Result<bool> {
        Ok(self.leader)
    }
    async fn release(&self) -> parti::Result<()> {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn is_leader(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn term(&self) -> Option<u64> {
        self.is_leader().then_some(self.term)
    }
    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05b_a_user_supplied_election_agent_is_really_used() {
    let cluster = TestCluster::start(config(), partitions(40)).await;
    let start = |agent: std::sync::Arc<Appointed>| async {
        let client = cluster.server.client().await.unwrap();
        parti::Manager::builder(async_nats::jetstream::new(client))
            .config(cluster.config.clone())
            .source(cluster.source.clone())
            .election_agent(agent)
            .start()
            .await
            .unwrap()
    };
    // The worker that starts first would win a KV lease; the agent appoints the second.
    let (first_agent, second_agent) = (Appointed::new(false), Appointed::new(true));
    let first = start(first_agent.clone());
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        start(second_agent.clone()).await
    };
    let (first, second) = tokio::join!(first, second);
    let mut ids = vec![first.worker_id(), second.worker_id()];
    ids.sort();
    let published = cluster.wait_for_map(&ids, SETTLE).await;
    assert!(second.is_leader() && !first.is_leader());
    assert_eq!(
        published.record.unwrap().0.term,
        42,
        "the agent's term fences the publish"
    );
    assert!(
        first_agent
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05c_a_deposed_leader_that_keeps_trying_never_commits() {
    let cluster = TestCluster::start(config(), partitions(40)).await;
    let start = |agent: std::sync::Arc<Appointed>| async {
        let client = cluster.server.client().await.unwrap();
        cluster
            .builder(client)
            .election_agent(agent)
            .start()
            .await
            .unwrap()
    };
    // The old leader's agent never lets go of term 100: it believes it leads for ever.
    let old = start(Appointed::with_term(true, 100)).await;
    let follower = start(Appointed::new(false)).await;
    let mut ids = vec![old.worker_id(), follower.worker_id()];
    ids.sort();
    cluster.wait_for_map(&ids, SETTLE).await;
    let settled_ns = parti::ownership::now_ns();

    // A new leader with a higher term joins; the old one keeps publishing when asked.
    let new = start(Appointed::with_term(true, 200)).await;
    let mut all = vec![old.worker_id(), follower.worker_id(), new.worker_id()];
    all.sort();
    wait_until(SETTLE, "a commit by the new leader", || async {
        cluster.record().await.term == 200
    })
    .await
    .unwrap();
    let taken_over = cluster.record().await.version;
    for _ in 0..5 {
        old.refresh_partitions().unwrap();
        cluster.source.set(partitions(40)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_for_map(&all, SETTLE).await;
    let commits = cluster.commits.lock().unwrap().clone();
    let first_new = commits.iter().position(|c| c.term == 200).unwrap();
    let late = &commits[first_new..];
    assert!(
        late.iter().all(|c| c.term == 200),
        "the deposed leader committed after the new one: {late:?}"
    );
    assert!(
        commits.windows(2).all(|w| w[0].version < w[1].version),
        "versions only go up: {commits:?}"
    );
    assert!(taken_over >= late[0].version);
    cluster.assert_holdings_clean(settled_ns).await;
    for m in [&old, &follower, &new] {
        m.stop().await.unwrap();
    }
}

/// Hooks that take far longer than any coordination timer.
#[derive(Debug, Default)]
struct SlowHooks {
    entered: std::sync::atomic::AtomicU32,
    finished: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl parti::Hooks for SlowHooks {
    async fn on_assignment_changed(&self, _: &[Partition], _: &[Partition], _: &parti::Assignment) {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.finished
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_hooks_never_delay_coordination() {
    let cluster = TestCluster::start(config(), partitions(30)).await;
    let hooks = std::sync::Arc::new(SlowHooks::default());
    let client = cluster.server.client().await.unwrap();
    let slow = parti::Manager::builder(async_nats::jetstream::new(client))
        .config(cluster.config.clone())
        .source(cluster.source.clone())
        .hooks(SharedHooks(hooks.clone()))
        .start()
        .await
        .unwrap();
    // Stable, with its assignment applied and published, while its hook is still running.
    assert!(!slow.assignment().partitions.is_empty());
    assert_eq!(hooks.finished.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The cluster keeps moving: a second worker joins and gets its share.
    let (other, _) = cluster.worker().await.unwrap();
    let mut ids = vec![slow.worker_id(), other.worker_id()];
    ids.sort();
    cluster.wait_for_map(&ids, SETTLE).await;
    wait_until(SETTLE, "the slow worker to apply the new map", || async {
        slow.assignment().partitions
            == cluster
                .published()
                .await
                .map
                .partitions_of(&slow.worker_id())
    })
    .await
    .unwrap();
    assert_eq!(
        hooks.finished.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "all of this happened while the first hook was still running"
    );
    other.stop().await.unwrap();
    slow.kill().await;
}

/// Lets a test keep a handle on the hooks it gives away.
#[derive(Debug)]
struct SharedHooks(std::sync::Arc<SlowHooks>);

#[async_trait::async_trait]
impl parti::Hooks for SharedHooks {
    async fn on_assignment_changed(&self, a: &[Partition], r: &[Partition], x: &parti::Assignment) {
        self.0.on_assignment_changed(a, r, x).await;
    }
}

/// Hooks that never return once a partition is taken away: a loser that cannot release.
#[derive(Debug, Default)]
struct StuckOnRelease;

#[async_trait::async_trait]
impl parti::Hooks for StuckOnRelease {
    async fn on_assignment_changed(
        &self,
        _: &[Partition],
        removed: &[Partition],
        _: &parti::Assignment,
    ) {
        if !removed.is_empty() {
            std::future::pending::<()>().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loser_that_never_releases_is_expelled_and_the_gainer_holds_after_its_fence() {
    let cluster = TestCluster::start(config(), partitions(30)).await;
    let client = cluster.server.client().await.unwrap();
    let stuck = cluster
        .builder(client)
        .hooks(StuckOnRelease)
        .start()
        .await
        .unwrap();
    wait_until(SETTLE, "the first worker to hold everything", || async {
        stuck.held().len() == 30
    })
    .await
    .unwrap();
    let settled_ns = parti::ownership::now_ns();

    // A second worker joins; the first never finishes releasing what moves to it.
    let joined = Instant::now();
    let (gainer, _) = cluster.worker().await.unwrap();
    let c = &cluster.config;
    let bound = c.planned_scale_window + c.handoff_timeout + c.heartbeat_ttl + SETTLE;
    wait_until(bound, "the gainer to hold its share", || async {
        let share = cluster
            .published()
            .await
            .map
            .partitions_of(&gainer.worker_id())
            .len();
        share > 0 && gainer.held().len() == share
    })
    .await
    .unwrap();
    let took = joined.elapsed();
    assert!(
        took >= c.handoff_timeout,
        "the gainer held after {took:?}: before handoffTimeout, so not through an expulsion"
    );
    // Never two holders: the stuck worker's lease was revoked and ran out first.
    let report = cluster.check_holdings(settled_ns).await;
    println!("{report}");
    let kinds = report.violations_by_kind();
    for kind in ["overlap", "revived", "noLease", "epochNotIncreasing"] {
        assert!(!kinds.contains_key(kind), "{kind}:\n{report}");
    }
    gainer.stop().await.unwrap();
    stuck.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_keep_increasing_when_the_election_bucket_is_recreated() {
    let cluster = TestCluster::start(config(), partitions(30)).await;
    let mut workers = cluster.workers(3).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    wait_all_stable(&cluster, &workers, SETTLE).await;
    // A leader crash first, so that the committed term is well above 1.
    let leader = workers.iter().position(|(m, _)| m.is_leader()).unwrap();
    let (crashed, _) = workers.remove(leader);
    cluster.kill(&crashed).await;
    cluster.wait_for_map(&ids(&workers), SETTLE).await;
    let before = cluster.record().await.term;
    assert!(before > 1, "term {before} after a failover");

    // An operator deletes the election bucket and provisions it again: revisions start at 1.
    let name = cluster.config.kv_buckets.election.clone();
    let js = async_nats::jetstream::new(cluster.server.client().await.unwrap());
    js.delete_key_value(&name).await.unwrap();
    let store = parti::store::NatsStore::new(js);
    parti::store::Store::bucket(
        &store,
        &parti::election::bucket_spec(&name, cluster.config.election_ttl, 1),
    )
    .await
    .unwrap();

    // A new leader is elected with a term above every term committed before, and it
    // publishes: a worker that joins now gets its share.
    workers.extend(cluster.workers(1).await);
    let after = cluster.wait_for_map(&ids(&workers), SETTLE * 2).await;
    let term = after.record.as_ref().unwrap().0.term;
    assert!(
        term > before,
        "term {term} after the recreation, {before} before"
    );
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_returns_once_joined_and_wait_for_state_follows_the_worker_to_stable_and_shutdown() {
    // A cold start window far longer than joining takes: `spawn` must return inside it,
    // before the first assignment exists.
    let mut config = config();
    config.cold_start_window = Duration::from_secs(4);
    config.startup_timeout = Duration::from_secs(20);
    let cluster = TestCluster::start(config, partitions(20)).await;
    let client = cluster.server.client().await.unwrap();
    let spawned_at = Instant::now();
    let manager = cluster.builder(client).spawn().await.unwrap();
    let joined_after = spawned_at.elapsed();
    let state = manager.state();
    assert!(state.has_joined(), "spawn returned in {state}");
    assert_ne!(
        state,
        State::Stable,
        "spawn waited for the first assignment"
    );
    assert!(manager.assignment().partitions.is_empty());
    assert!(
        manager.worker_id().as_str().starts_with("worker-"),
        "no stable ID after spawn: {:?}",
        manager.worker_id()
    );
    assert!(joined_after < Duration::from_secs(4), "{joined_after:?}");

    // Not reached in time: the error names the state the worker is in.
    let early = manager
        .wait_for_state(State::Stable, Duration::from_millis(100))
        .await;
    assert!(
        matches!(early, Err(parti::Error::StateTimeout { state, .. }) if state.has_joined()),
        "{early:?}"
    );
    manager.wait_for_state(State::Stable, SETTLE).await.unwrap();
    assert_eq!(manager.assignment().partitions.len(), 20);
    let reached = manager
        .wait_for(Duration::from_millis(100), |s| {
            s == State::Stable || s == State::Scaling
        })
        .await
        .unwrap();
    assert!(matches!(reached, State::Stable | State::Scaling));

    manager.stop().await.unwrap();
    manager
        .wait_for_state(State::Shutdown, Duration::from_secs(1))
        .await
        .unwrap();
    let after_stop = manager
        .wait_for_state(State::Stable, Duration::from_secs(1))
        .await;
    assert!(
        matches!(after_stop, Err(parti::Error::Shutdown)),
        "{after_stop:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_jitter_spreads_the_claims_of_a_fleet_started_at_once() {
    // Eight workers started together with a 4 s jitter join at spread-out moments: all within
    // 800 ms by chance has a probability of about 1e-4; without jitter they join within about
    // 150–350 ms of each other (the claims contend). All still get their share.
    let mut config = config();
    config.start_jitter = Duration::from_secs(4);
    config.cold_start_window = Duration::from_millis(500);
    let cluster = TestCluster::start(config, partitions(40)).await;
    let began = Instant::now();
    let joined = futures::future::join_all((0..8).map(|_| async {
        let client = cluster.server.client().await.unwrap();
        let manager = cluster.builder(client).spawn().await.unwrap();
        (manager, began.elapsed())
    }))
    .await;
    let times: Vec<Duration> = joined.iter().map(|(_, t)| *t).collect();
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        *last - *first >= Duration::from_millis(800),
        "joins not spread: {times:?}"
    );
    for (manager, _) in &joined {
        manager.wait_for_state(State::Stable, SETTLE).await.unwrap();
    }
    let total: usize = joined
        .iter()
        .map(|(m, _)| m.assignment().partitions.len())
        .sum();
    assert_eq!(total, 40);
    for (manager, _) in &joined {
        manager.stop().await.unwrap();
    }
}

/// The consumer infos of stream `name`, by consumer name.
async fn consumer_infos(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Vec<async_nats::jetstream::consumer::Info> {
    use futures::TryStreamExt;
    let stream = js.get_stream(name).await.unwrap();
    stream.consumers().try_collect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_api_rate_spreads_the_consumer_calls_of_a_fleet_started_at_once() {
    // Eight workers with consumers share 2 calls/s: each spaces its consumer calls 4 s apart,
    // the first at a random point of its first 4 s, so the durables are created at
    // spread-out moments — all within 800 ms by chance has a probability of about 1e-4;
    // without the limit they are created within a few hundred ms of the first commit. Every
    // consumer still ends up following exactly its worker's partitions.
    const WORKERS: usize = 8;
    let mut config = config();
    config.consumer_api_rate = 2.0;
    config.cold_start_window = Duration::from_millis(500);
    let cluster = TestCluster::start(config, partitions(40)).await;
    let js = async_nats::jetstream::new(cluster.server.client().await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HERD".into(),
        subjects: vec!["herd.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let managers = futures::future::join_all((0..WORKERS).map(|_| async {
        let js = async_nats::jetstream::new(cluster.server.client().await.unwrap());
        let consumer = parti::WorkerConsumer::builder(js, "HERD")
            .subject_template("herd.{partition}")
            .handler(|_msg: async_nats::jetstream::Message| async {
                Ok::<(), parti::error::BoxError>(())
            })
            .build()
            .await
            .unwrap();
        let client = cluster.server.client().await.unwrap();
        cluster
            .builder(client)
            .consumer(consumer)
            .spawn()
            .await
            .unwrap()
    }))
    .await;
    for manager in &managers {
        manager.wait_for_state(State::Stable, SETTLE).await.unwrap();
    }
    // Every worker's durable exists and filters exactly its partitions.
    let following = || async {
        let infos = consumer_infos(&js, "HERD").await;
        managers.iter().all(|m| {
            let name = format!("parti-{}", m.worker_id());
            let mut want: Vec<String> = m
                .assignment()
                .partitions
                .iter()
                .map(|p| format!("herd.{}", p.subject_key()))
                .collect();
            want.sort();
            infos.iter().any(|i| {
                let mut got = i.config.filter_subjects.clone();
                got.sort();
                i.name == name && got == want
            })
        })
    };
    wait_until(
        Duration::from_secs(20),
        "every consumer follows its worker's partitions",
        following,
    )
    .await
    .unwrap();
    let created: Vec<_> = consumer_infos(&js, "HERD")
        .await
        .iter()
        .map(|i| i.created)
        .collect();
    assert_eq!(created.len(), WORKERS);
    let (first, last) = (created.iter().min().unwrap(), created.iter().max().unwrap());
    assert!(
        (*last - *first).whole_milliseconds() >= 800,
        "consumer creations not spread: {created:?}"
    );
    for manager in &managers {
        manager.stop().await.unwrap();
    }
}

/// Waits for the map over `workers` and for every worker to be stable, then kills the leader
/// (removed from `workers`); returns that map, when it had settled and when the leader died.
async fn settle_then_kill_the_leader(
    cluster: &TestCluster,
    workers: &mut Vec<(parti::Manager, Recorder)>,
) -> (parti::records::Published, u64, Instant) {
    let before = cluster.wait_for_map(&ids(workers), SETTLE).await;
    wait_all_stable(cluster, workers, SETTLE).await;
    let settled_ns = parti::ownership::now_ns();
    let leader = workers
        .iter()
        .position(|(m, _)| m.is_leader())
        .expect("a leader");
    let (leader, _) = workers.remove(leader);
    let crashed_at = Instant::now();
    cluster.kill(&leader).await;
    (before, settled_ns, crashed_at)
}

/// Records the `previous` map of every call, then assigns like the default strategy.
#[derive(Debug, Default, Clone)]
struct PreviousSpy {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Option<parti::AssignmentMap>>>>,
    inner: parti::WeightedConsistentHash,
}

impl parti::AssignmentStrategy for PreviousSpy {
    fn name(&self) -> &str {
        "previous_spy"
    }

    fn assign(
        &self,
        workers: &[parti::WorkerId],
        partitions: &[Partition],
        previous: Option<&parti::AssignmentMap>,
    ) -> parti::Result<parti::AssignmentMap> {
        self.seen.lock().unwrap().push(previous.cloned());
        self.inner.assign(workers, partitions, previous)
    }
}

/// The leader crashes and garbage lands on the `cluster` record before anyone reads it: the
/// next leader has no readable commit and no map of its own, and builds on the map the worker
/// values left in the bucket (each survivor's partitions as they were), not on nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05d_a_new_leader_without_a_readable_commit_builds_on_the_worker_values() {
    let cluster = TestCluster::start(config(), partitions(120)).await;
    let spy = PreviousSpy::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let recorder = Recorder::default();
        let client = cluster.server.client().await.expect("connect");
        let manager = cluster
            .builder(client)
            .strategy(spy.clone())
            .hooks(recorder.clone())
            .spawn()
            .await
            .expect("worker start");
        workers.push((manager, recorder));
    }
    let (before, settled_ns, _) = settle_then_kill_the_leader(&cluster, &mut workers).await;
    cluster
        .assignment_bucket()
        .put(
            parti::records::CLUSTER_KEY,
            bytes::Bytes::from_static(b"{garbage"),
        )
        .await
        .unwrap();
    let calls_before = spy.seen.lock().unwrap().len();
    let after = cluster.wait_for_map(&ids(&workers), SETTLE).await;
    assert!(after.version() > before.version());

    let seen = spy.seen.lock().unwrap()[calls_before..].to_vec();
    let previous = seen
        .iter()
        .flatten()
        .next_back()
        .expect("the new leader placed with a previous map");
    for (m, _) in &workers {
        let id = m.worker_id();
        assert_eq!(
            previous.partitions_of(&id),
            before.map.partitions_of(&id),
            "{id}: the previous map the strategy got is what the worker values say"
        );
    }
    cluster.assert_holdings_clean(settled_ns).await;
    for (m, _) in &workers {
        m.stop().await.unwrap();
    }
}
