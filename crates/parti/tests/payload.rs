//! SPEC §5.4: the map of 100,000 partitions over 1,000 workers publishes — no value the
//! publisher writes exceeds the server's max payload. The records are the exact types the
//! publisher writes, encoded the same way, stored in a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use parti::records::{ClusterRecord, Slot, WorkerRecord, worker_key};
use parti::store::{BucketSpec, NatsStore, Store, codec};
use parti::{
    AssignmentStrategy, ClusterPhase, Lifecycle, Partition, WeightedConsistentHash, WorkerId,
};
use parti_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_100k_partitions_over_1000_workers_fits_in_nats_values() {
    let workers: Vec<WorkerId> = (0..1000)
        .map(|i| WorkerId::new(format!("worker-{i}")))
        .collect();
    let partitions: Vec<Partition> = (0..100_000)
        .map(|i| {
            Partition::new(
                ["tenant", &format!("t{:03}", i % 977), &format!("s{i}")],
                100,
            )
            .unwrap()
        })
        .collect();
    let map = WeightedConsistentHash::default()
        .assign(&workers, &partitions, None)
        .unwrap();

    let server = NatsServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let max_payload = client.server_info().max_payload;
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let bucket = store
        .bucket(&BucketSpec::new("parti-assignment"))
        .await
        .unwrap();

    let mut revisions = BTreeMap::new();
    let mut largest = 0;
    for (worker, parts) in map.iter() {
        let value = codec::encode(&WorkerRecord {
            version: 1,
            term: 1,
            lifecycle: Lifecycle::Running,
            partitions: parts.to_vec(),
            pending: Default::default(),
        })
        .unwrap();
        largest = largest.max(value.len());
        let rev = bucket
            .put(&worker_key(worker, Slot::A), value)
            .await
            .unwrap();
        revisions.insert(worker.clone(), rev);
    }
    let cluster = codec::encode(&ClusterRecord {
        version: 1,
        term: 1,
        phase: ClusterPhase::Stable,
        reason: "cold_start".into(),
        workers: revisions,
        partition_count: partitions.len(),
        lifecycle: Lifecycle::Running,
        first_assignment_at: Some(1),
        lineages: Default::default(),
        parked: Default::default(),
    })
    .unwrap();
    largest = largest.max(cluster.len());
    bucket.put("cluster", cluster).await.unwrap();

    let published = parti::records::read_published(&*bucket).await.unwrap();
    assert_eq!(published.map.partition_count(), 100_000);
    assert_eq!(published.map, map);
    println!("largest value: {largest} bytes of {max_payload} allowed");
    assert!(largest < max_payload, "{largest} ≥ {max_payload}");
}

/// A nats-server whose `max_payload` is `bytes` (set in a config file next to its store).
async fn server_with_max_payload(bytes: usize) -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("small.conf");
    std::fs::write(&conf, format!("max_payload: {bytes}\n")).unwrap();
    let server = NatsServer::builder()
        .arg("-c")
        .arg(conf.as_os_str())
        .start()
        .await
        .unwrap();
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_servers_max_payload_is_refused_with_its_size_and_the_limit() {
    let (server, _dir) = server_with_max_payload(8192).await;
    let client = server.client().await.unwrap();
    assert_eq!(client.server_info().max_payload, 8192);
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let bucket = store.bucket(&BucketSpec::new("payload")).await.unwrap();
    let err = bucket
        .put("big", vec![b'x'; 9000].into())
        .await
        .unwrap_err();
    match &err {
        parti::StoreError::ValueTooLarge {
            key, size, limit, ..
        } => {
            assert_eq!((key.as_str(), *size), ("big", 9000));
            assert!(*limit < 8192, "{limit}");
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("9000 bytes"), "{err}");
    assert_eq!(
        bucket.get("big").await.unwrap(),
        None,
        "nothing was written"
    );
    // Below the limit, revision-checked writes included, all goes through.
    let rev = bucket.put("small", vec![b'x'; 7000].into()).await.unwrap();
    bucket
        .update("small", vec![b'y'; 7000].into(), rev)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_share_too_large_to_publish_is_a_clear_error_and_a_second_worker_unblocks_it() {
    // One worker's value for 300 partitions is about 10 KB, over an 8 KB max_payload: the
    // leader cannot publish and says why. A second worker halves each share: the map
    // publishes and every partition is held.
    let (server, _dir) = server_with_max_payload(8192).await;
    let mut config = parti::Config::fast_for_tests();
    config.startup_timeout = std::time::Duration::from_secs(20);
    let partitions: Vec<Partition> = (0..300)
        .map(|i| Partition::new([format!("partition-{i:05}")], 1).unwrap())
        .collect();
    let source = parti::source::Static::new(partitions);
    let builder = |client: async_nats::Client| {
        parti::Manager::builder(async_nats::jetstream::new(client))
            .config(config.clone())
            .source(source.clone())
    };
    let first = builder(server.client().await.unwrap())
        .spawn()
        .await
        .unwrap();
    let mut events = first.events();
    let too_large = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            if let Ok(parti::Event::Error(e)) = events.recv().await {
                let text = e.to_string();
                if text.contains("exceeds the store's limit") {
                    return text;
                }
            }
        }
    })
    .await
    .expect("an error naming the size and the limit");
    assert!(too_large.contains("worker."), "{too_large}");
    let second = builder(server.client().await.unwrap())
        .spawn()
        .await
        .unwrap();
    for manager in [&first, &second] {
        manager
            .wait_for_state(parti::State::Stable, std::time::Duration::from_secs(20))
            .await
            .unwrap();
    }
    parti_testkit::wait_until(
        std::time::Duration::from_secs(10),
        "every partition held",
        || async { first.held().len() + second.held().len() == 300 },
    )
    .await
    .unwrap();
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}
