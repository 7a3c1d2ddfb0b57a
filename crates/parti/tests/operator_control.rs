//! Operator intents (`control::Control`: drain, pin, freeze) against a real nats-server. Each
//! step waits for what the workers *hold* (their own assignment, Stable), and the ownership
//! checker judges every worker's holdings over the whole run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use parti::control::Control;
use parti::store::NatsStore;
use parti::{AssignmentMap, Config, Manager, WorkerId};
use parti_testkit::wait_until;

const DEADLINE: Duration = Duration::from_secs(30);

/// Partitions whose owner changed, as (partition, from, to).
fn moves(before: &AssignmentMap, after: &AssignmentMap) -> Vec<(String, WorkerId, WorkerId)> {
    let after: BTreeMap<String, WorkerId> = owners(after);
    owners(before)
        .into_iter()
        .filter_map(|(p, from)| {
            let to = after.get(&p)?;
            (*to != from).then(|| (p, from, to.clone()))
        })
        .collect()
}

#[tokio::test]
async fn drain_pin_and_freeze_move_exactly_what_they_say() {
    let cluster = TestCluster::start(Config::fast_for_tests(), partitions(200)).await;
    let started = cluster.workers(4).await;
    let managers: Vec<&Manager> = started.iter().map(|(m, _)| m).collect();
    let ids = ids(&started);
    let all = |m: &AssignmentMap| m.workers().count() == 4 && m.partition_count() == 200;
    let before = settle(&cluster, &managers, "the first map", all).await;
    // From here on every partition must be held (gaps count), except around the crash below.
    let settled_ns = parti::ownership::now_ns();

    let js = async_nats::jetstream::new(cluster.server.client().await.unwrap());
    let control = Control::open_in(&NatsStore::new(js), &cluster.config)
        .await
        .unwrap();

    // Drain: the drained worker ends with nothing, and only its partitions moved.
    let drained = ids[2].clone();
    let mut events: Vec<_> = managers.iter().map(|m| m.events()).collect();
    let version = cluster.record().await.version;
    control.drain(drained.clone()).await.unwrap();
    let after = settle(&cluster, &managers, "the drain", |m| {
        m.partitions_of(&drained).is_empty() && m.partition_count() == 200
    })
    .await;
    let moved = moves(&before, &after);
    assert_eq!(moved.len(), before.partitions_of(&drained).len());
    assert!(
        moved.iter().all(|(_, from, _)| *from == drained),
        "{moved:?}"
    );
    let total: u64 = ids.iter().map(|w| before.load(w)).sum();
    for w in ids.iter().filter(|w| **w != drained) {
        // The strategy's bound over the three that remain (ε = 0.05), plus one partition.
        let bound = 1.05 * total as f64 / 3.0 + 100.0;
        assert!((after.load(w) as f64) <= bound, "{w}: {}", after.load(w));
    }
    let reasons = cluster.reasons_after(version);
    assert_eq!(
        reasons.first().map(String::as_str),
        Some("operator"),
        "{reasons:?}"
    );
    assert_eq!(control.read().await.unwrap().drained.len(), 1);
    // The leader told its application which intents it applies.
    let mut told = false;
    for rx in &mut events {
        while let Ok(event) = rx.try_recv() {
            if let parti::Event::IntentsApplied { intents } = event {
                told |= intents.drained.contains(&drained);
            }
        }
    }
    assert!(told, "no IntentsApplied event naming the drain");
    // The history says which publish moved what, and why (written just after the publish).
    let bucket = cluster.assignment_bucket();
    wait_until(DEADLINE, "the history entry of the drain", || async {
        parti::records::read_history(&*bucket)
            .await
            .is_ok_and(|(h, _)| h.iter().any(|e| e.reason == "operator"))
    })
    .await
    .unwrap();
    let (history, garbage) = parti::records::read_history(&*bucket).await.unwrap();
    assert!(garbage.is_empty(), "{garbage:?}");
    let entry = history
        .iter()
        .find(|h| h.reason == "operator")
        .expect("a history entry for the drain");
    assert_eq!(entry.moved, moved.len());
    let why = format!("drain of {drained}");
    assert!(
        entry
            .moves
            .iter()
            .all(|m| m.why == why && m.from.as_ref() == Some(&drained)),
        "{entry:?}"
    );
    assert_eq!(
        history.first().map(|h| h.reason.as_str()),
        Some("cold_start")
    );

    // Undrain: it gets a share back.
    control.undrain(&drained).await.unwrap();
    let back = settle(&cluster, &managers, "the undrain", |m| {
        m.partitions_of(&drained).len() >= 30
    })
    .await;

    // Pin: the pinned partition goes to its worker, nothing else moves.
    let pinned = back
        .partitions_of(&ids[0])
        .first()
        .cloned()
        .expect("worker 0 holds something");
    control
        .pin(&pinned.subject_key(), ids[1].clone())
        .await
        .unwrap();
    let with_pin = settle(&cluster, &managers, "the pin", |m| {
        m.owner_of(&pinned) == Some(&ids[1])
    })
    .await;
    let moved = moves(&back, &with_pin);
    assert_eq!(moved.len(), 1, "{moved:?}");

    // Freeze, then a join: the newcomer is in the map with nothing, nothing moved.
    control.set_frozen(true).await.unwrap();
    let (newcomer, _) = cluster.worker().await.unwrap();
    let mut live: Vec<&Manager> = managers.clone();
    live.push(&newcomer);
    let joined = settle(&cluster, &live, "the join while frozen", |m| {
        m.contains_worker(&newcomer.worker_id())
    })
    .await;
    assert!(joined.partitions_of(&newcomer.worker_id()).is_empty());
    assert_eq!(moves(&with_pin, &joined), vec![]);
    // A crash while frozen: only the crashed worker's partitions move (orphans are placed on
    // any live worker that is not drained, the newcomer included).
    let crashed = started[3].0.worker_id();
    cluster.kill(&started[3].0).await;
    live.retain(|m| m.worker_id() != crashed);
    let recovered = settle(&cluster, &live, "the crash recovery while frozen", |m| {
        !m.contains_worker(&crashed) && m.partition_count() == 200
    })
    .await;
    let moved = moves(&joined, &recovered);
    assert!(
        moved.iter().all(|(_, from, _)| *from == crashed),
        "{moved:?}"
    );

    // Unfreeze: one publish for it, and the map is balanced again.
    let version = cluster.record().await.version;
    control.set_frozen(false).await.unwrap();
    let balanced = settle(&cluster, &live, "the unfreeze", |_| {
        cluster
            .reasons_after(version)
            .iter()
            .any(|r| r == "operator")
    })
    .await;
    let mean = 200 / live.len();
    for m in &live {
        let held = balanced.partitions_of(&m.worker_id()).len();
        assert!(held.abs_diff(mean) <= 3, "{}: {held}", m.worker_id());
    }

    for m in live {
        m.stop().await.unwrap();
    }
    cluster.assert_holdings_clean(settled_ns).await;
}

#[tokio::test]
async fn a_paced_scale_up_moves_at_most_the_limit_per_step_and_ends_at_the_unpaced_target() {
    use parti::config::MovesPerStep;
    use parti::{AssignmentStrategy, WeightedConsistentHash};

    let mut config = Config::fast_for_tests();
    config.assignment.min_rebalance_interval = Duration::from_millis(300);
    config.assignment.max_moves_per_step = Some(MovesPerStep::Fraction(0.1));
    // Eight workers over 10,000 partitions in one test process: leases long enough that a
    // busy machine does not expire one (a crash recovery is never paced, by design).
    config.heartbeat_ttl = Duration::from_secs(2);
    config.worker_id_ttl = Duration::from_secs(4);
    config.election_ttl = Duration::from_secs(2);
    // Every third partition weighs 300, the others 100: the 10 % is of the weight.
    let parts: Vec<parti::Partition> = partitions(10_000)
        .into_iter()
        .enumerate()
        .map(|(i, p)| if i % 3 == 0 { p.with_weight(300) } else { p })
        .collect();
    let total: u64 = parts.iter().map(parti::Partition::effective_weight).sum();
    let cluster = TestCluster::start(config, parts).await;
    let first = cluster.workers(4).await;
    let mut managers: Vec<&Manager> = first.iter().map(|(m, _)| m).collect();
    let start = settle(&cluster, &managers, "the first map", |m| {
        m.workers().count() == 4 && m.partition_count() == 10_000
    })
    .await;
    let settled_ns = parti::ownership::now_ns();

    // Every distinct map from here on: read on each write of the `cluster` record (every
    // commit writes it), so no step goes unseen.
    let maps = std::sync::Arc::new(std::sync::Mutex::new(vec![start.clone()]));
    let bucket = cluster.assignment_bucket();
    let mut commits = bucket.watch(parti::records::CLUSTER_KEY).await.unwrap();
    let recorder = {
        let maps = std::sync::Arc::clone(&maps);
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            use futures::StreamExt as _;
            while let Some(event) = commits.next().await {
                if !matches!(event, Ok(parti::store::WatchEvent::Put(_))) {
                    continue;
                }
                if let Ok(p) = parti::records::read_published(&*bucket).await {
                    let mut maps = maps.lock().unwrap();
                    if maps
                        .last()
                        .is_some_and(|last| owners(last) != owners(&p.map))
                    {
                        maps.push(p.map);
                    }
                }
            }
        }))
    };
    let version = cluster.record().await.version;
    let second = cluster.workers(4).await;
    managers.extend(second.iter().map(|(m, _)| m));
    let mut eight: Vec<WorkerId> = managers.iter().map(|m| m.worker_id()).collect();
    eight.sort();
    let target = WeightedConsistentHash::default()
        .assign(&eight, &cluster.source_partitions().await, Some(&start))
        .unwrap();
    let want = owners(&target);
    // The end state is the unpaced target.
    settle(
        &cluster,
        &managers,
        "the paced scale-up to reach the target",
        |m| owners(m) == want,
    )
    .await;
    drop(recorder);
    let maps = maps.lock().unwrap().clone();
    let steps: Vec<usize> = maps.windows(2).map(|w| moves(&w[0], &w[1]).len()).collect();
    let weight_of: BTreeMap<String, u64> = cluster
        .source_partitions()
        .await
        .iter()
        .map(|p| (p.subject_key(), p.effective_weight()))
        .collect();
    let weights: Vec<u64> = maps
        .windows(2)
        .map(|w| {
            moves(&w[0], &w[1])
                .iter()
                .map(|(p, _, _)| weight_of[p])
                .sum()
        })
        .collect();
    assert!(steps.len() >= 4, "{steps:?}");
    assert!(
        weights.iter().all(|&w| w <= total.div_ceil(10)),
        "moved weight per step {weights:?} (10 % is {})",
        total.div_ceil(10)
    );
    let reasons = cluster.reasons_after(version);
    println!("moves per step {steps:?}, weight {weights:?} of {total}; commits {reasons:?}");
    assert!(
        reasons.iter().filter(|r| *r == "paced").count() >= 3,
        "{reasons:?}"
    );

    for m in managers {
        m.stop().await.unwrap();
    }
    cluster.assert_holdings_clean(settled_ns).await;
}
