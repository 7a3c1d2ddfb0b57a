//! The partition list kept in NATS KV (`source::NatsKv`) against a real nats-server: the leader
//! follows every edit with one publish, and a list that is deleted or overwritten with garbage
//! revokes nothing (the last good map stays until a good list is written). The ownership
//! checker judges the holdings of every worker throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use parti::source::{NatsKv, PartitionSource as _};
use parti::{Config, Event, Manager, Partition};
use parti_testkit::wait_until;
use tokio::sync::broadcast;

/// Partitions `name-0`… `name-(n-1)`.
fn named(name: &str, range: std::ops::Range<usize>) -> Vec<Partition> {
    range
        .map(|i| Partition::new([format!("{name}-{i}")], 10).unwrap())
        .collect()
}

/// Waits until the published map covers exactly `partitions` over `workers` workers.
async fn wait_for_cover(cluster: &TestCluster, partitions: &[Partition], workers: usize) {
    let want: BTreeSet<String> = partitions.iter().map(Partition::subject_key).collect();
    wait_until(
        Duration::from_secs(20),
        "the published map to cover the stored list",
        || {
            let want = want.clone();
            async move {
                let p = cluster.published().await;
                let held: BTreeSet<String> = p
                    .map
                    .iter()
                    .flat_map(|(_, held)| held.iter().map(Partition::subject_key))
                    .collect();
                p.map.workers().count() == workers && held == want
            }
        },
    )
    .await
    .expect("map follows the stored list");
}

/// Waits until one of the workers reports a source error whose text contains `needle`.
async fn wait_for_source_error(events: &mut [broadcast::Receiver<Event>], needle: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("a partition-source error mentioning {needle:?}"),
        || {
            let mut seen = false;
            for rx in events.iter_mut() {
                while let Ok(event) = rx.try_recv() {
                    if let Event::Error(e) = event
                        && matches!(*e, parti::Error::Source(_))
                        && chain(&*e).contains(needle)
                    {
                        seen = true;
                    }
                }
            }
            std::future::ready(seen)
        },
    )
    .await
    .expect("the leader reports the bad list");
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn the_leader_follows_a_partition_list_in_nats_kv_and_bad_lists_revoke_nothing() {
    let cluster = TestCluster::start(Config::fast_for_tests(), vec![]).await;
    let js = async_nats::jetstream::new(cluster.server.client().await.unwrap());
    let kv = NatsKv::open(js, NatsKv::DEFAULT_BUCKET).await.unwrap();
    let first = named("tenant", 0..30);
    kv.set(first.clone()).await.unwrap();

    let starts = (0..3).map(|_| async {
        let client = cluster.server.client().await.unwrap();
        cluster.builder(client).source(kv.clone()).start().await
    });
    let managers: Vec<Manager> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|m| m.expect("worker start"))
        .collect();
    wait_for_cover(&cluster, &first, 3).await;
    let settled_ns = parti::ownership::now_ns();

    // An edit is followed by exactly one rebalance for it.
    let before = cluster.published().await.record.unwrap().0.version;
    kv.add(named("extra", 0..5)).await.unwrap();
    let mut second = first.clone();
    second.extend(named("extra", 0..5));
    wait_for_cover(&cluster, &second, 3).await;
    let reasons = cluster.reasons_after(before);
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.as_str() == "partitions_changed")
            .count(),
        1,
        "{reasons:?}"
    );
    assert_eq!(reasons[0], "partitions_changed", "{reasons:?}");

    // Garbage under the key: reported, and the map stays as it was.
    let mut events: Vec<_> = managers.iter().map(Manager::events).collect();
    let raw = cluster
        .server
        .client()
        .await
        .map(async_nats::jetstream::new)
        .unwrap();
    let bucket = raw.get_key_value(NatsKv::DEFAULT_BUCKET).await.unwrap();
    let kept = cluster.published().await.record.unwrap().0.version;
    bucket
        .put(
            NatsKv::DEFAULT_KEY,
            Bytes::from_static(b"{\"partitions\": 7}"),
        )
        .await
        .unwrap();
    wait_for_source_error(&mut events, "cannot decode").await;
    // A deleted list likewise.
    bucket.delete(NatsKv::DEFAULT_KEY).await.unwrap();
    wait_for_source_error(&mut events, "no partition list").await;
    let now = cluster.published().await;
    assert_eq!(now.record.unwrap().0.version, kept, "nothing was published");
    wait_for_cover(&cluster, &second, 3).await;

    // A good list again (written over the deleted one) is followed.
    let third = named("tenant", 10..20);
    kv.set(third.clone()).await.unwrap();
    assert_eq!(kv.list_partitions().await.unwrap(), third);
    wait_for_cover(&cluster, &third, 3).await;

    for manager in &managers {
        manager.stop().await.unwrap();
    }
    // The checker judges gaps on the partitions listed all along (tenant-10…19), and double
    // holdings on every partition.
    cluster.source.set(third).await;
    cluster.assert_holdings_clean(settled_ns).await;
}
