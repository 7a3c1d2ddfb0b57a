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
