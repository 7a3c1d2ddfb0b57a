//! Worker capacity and placement labels against a real nats-server: what the workers *hold*
//! follows the capacity, and a labelled partition is never held by a worker without its label
//! (judged over every worker's holdings history), parks when its last worker is gone and
//! spills after `labelSpillGrace`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use parti::ownership::{OwnershipEvent, now_ns};
use parti::{AssignmentMap, Capacity, Config, Manager, Partition, WorkerId, WorkerProfile};
use parti_testkit::wait_until;

const DEADLINE: Duration = Duration::from_secs(30);

/// `n` partitions of weight 10, every third one labelled `gpu`.
fn mixed(n: usize) -> Vec<Partition> {
    (0..n)
        .map(|i| {
            let p = Partition::new([format!("p{i}")], 10).unwrap();
            if i % 3 == 0 {
                p.with_label("gpu").unwrap()
            } else {
                p
            }
        })
        .collect()
}

async fn start(cluster: &TestCluster, profile: WorkerProfile) -> Manager {
    let client = cluster.server.client().await.unwrap();
    cluster
        .builder(client)
        .profile(profile)
        .hooks(Recorder::default())
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_worker_of_capacity_two_holds_twice_the_load_of_each_other() {
    let cluster = TestCluster::start(Config::fast_for_tests(), partitions(600)).await;
    let big = WorkerProfile::new().with_capacity(Capacity::new(2.0).unwrap());
    let (a, b, c) = tokio::join!(
        start(&cluster, big),
        start(&cluster, WorkerProfile::new()),
        start(&cluster, WorkerProfile::new()),
    );
    let managers = [&a, &b, &c];
    let map = settle(&cluster, &managers, "the first map", |m| {
        m.workers().count() == 3 && m.partition_count() == 600
    })
    .await;
    let settled_ns = now_ns();
    let total: u64 = managers.iter().map(|m| map.load(&m.worker_id())).sum();
    // Four equal shares (2 + 1 + 1); the strategy's bound is 5 % of a share per share.
    let share = total as f64 / 4.0;
    let held = |m: &Manager| {
        m.assignment()
            .partitions
            .iter()
            .map(Partition::effective_weight)
            .sum::<u64>() as f64
    };
    assert!(
        (held(&a) - 2.0 * share).abs() <= 0.1 * share,
        "{}",
        held(&a)
    );
    for m in [&b, &c] {
        assert!((held(m) - share).abs() <= 0.05 * share, "{}", held(m));
    }
    for m in managers {
        m.stop().await.unwrap();
    }
    cluster.assert_holdings_clean(settled_ns).await;
}

#[tokio::test]
async fn labelled_partitions_stay_on_labelled_workers_park_and_spill() {
    let mut config = Config::fast_for_tests();
    // Short enough that crash detection + the grace stay within the checker's gap bound.
    config.assignment.label_spill_grace = Duration::from_millis(1_000);
    let cluster = TestCluster::start(config, mixed(300)).await;
    let gpu = || WorkerProfile::new().with_label("gpu").unwrap();
    let plain = WorkerProfile::new;
    let (g0, g1, g2, c0, c1, c2) = tokio::join!(
        start(&cluster, gpu()),
        start(&cluster, gpu()),
        start(&cluster, gpu()),
        start(&cluster, plain()),
        start(&cluster, plain()),
        start(&cluster, plain()),
    );
    let gpu_ids: BTreeSet<WorkerId> = [&g0, &g1, &g2].iter().map(|m| m.worker_id()).collect();
    let is_gpu = |p: &Partition| p.label() == Some("gpu");
    let everything = |m: &AssignmentMap| m.workers().count() == 6 && m.partition_count() == 300;
    let all = [&g0, &g1, &g2, &c0, &c1, &c2];
    let map = settle(&cluster, &all, "the first map", everything).await;
    let settled_ns = now_ns();
    for (w, held) in map.iter() {
        // Dedicated (the default): gpu partitions on gpu workers, the rest on the others.
        assert!(
            held.iter().all(|p| is_gpu(p) == gpu_ids.contains(w)),
            "{w} holds {held:?}"
        );
    }
    let mut events: Vec<_> = [&c0, &c1, &c2].iter().map(|m| m.events()).collect();

    // Two gpu workers crash: the third takes all the gpu partitions, nothing else moves.
    cluster.kill(&g1).await;
    cluster.kill(&g2).await;
    let survivors = [&g0, &c0, &c1, &c2];
    let map = settle(&cluster, &survivors, "the crash recovery", |m| {
        m.workers().count() == 4 && m.partition_count() == 300
    })
    .await;
    assert_eq!(map.partitions_of(&g0.worker_id()).len(), 100);

    // The last one is gone: its partitions park (no one holds them), then spill.
    let parked_at = now_ns();
    let last = g0.worker_id();
    cluster.kill(&g0).await;
    let plain_ones = [&c0, &c1, &c2];
    let parked = wait_until(DEADLINE, "the gpu partitions parked", || async {
        let record = cluster.record().await;
        record.parked.get("gpu") == Some(&100) && !record.workers.contains_key(&last)
    })
    .await;
    assert!(parked.is_ok(), "commits {:?}", cluster.reasons_after(0));
    let spilled = settle(&cluster, &plain_ones, "the spill", |m| {
        m.partition_count() == 300
    })
    .await;
    let spilled_ns = now_ns();
    assert!(cluster.record().await.parked.is_empty());
    assert!(
        cluster.reasons_after(0).iter().any(|r| r == "placement"),
        "{:?}",
        cluster.reasons_after(0)
    );
    assert_eq!(
        spilled
            .iter()
            .flat_map(|(_, held)| held)
            .filter(|p| is_gpu(p))
            .count(),
        100
    );
    let (mut told_parked, mut told_spilled) = (false, false);
    for rx in &mut events {
        while let Ok(event) = rx.try_recv() {
            match event {
                parti::Event::LabelParked {
                    label, partitions, ..
                } => {
                    told_parked |= label == "gpu" && partitions == 100;
                }
                parti::Event::LabelSpilled { label, .. } => told_spilled |= label == "gpu",
                _ => {}
            }
        }
    }
    assert!(told_parked && told_spilled, "{told_parked} {told_spilled}");

    // A gpu worker is back: the gpu partitions go to it through the hand-off.
    let back = start(&cluster, gpu()).await;
    let returned = [&back, &c0, &c1, &c2];
    let map = settle(&cluster, &returned, "the gpu worker back", |m| {
        m.partitions_of(&back.worker_id()).len() == 100
    })
    .await;
    assert!(map.partitions_of(&back.worker_id()).iter().all(is_gpu));
    let back_id = back.worker_id();

    for m in returned {
        m.stop().await.unwrap();
    }
    // Over every worker's holdings: a gpu partition is held by a worker without the label only
    // between the spill publish and the return of a gpu worker.
    let gpu_keys: BTreeSet<String> = mixed(300)
        .iter()
        .filter(|p| is_gpu(p))
        .map(Partition::id)
        .collect();
    let labelled: BTreeSet<WorkerId> = gpu_ids.into_iter().chain([back_id]).collect();
    for record in cluster.ownership.records() {
        if let OwnershipEvent::Hold { partition, .. } = &record.event
            && gpu_keys.contains(partition)
            && !labelled.contains(&record.worker)
        {
            assert!(
                record.at_ns > parked_at && record.at_ns <= spilled_ns,
                "{} held gpu partition {partition} outside the spill",
                record.worker
            );
        }
    }
    cluster.assert_holdings_clean(settled_ns).await;
}
