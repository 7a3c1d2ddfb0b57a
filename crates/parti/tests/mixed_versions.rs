//! Mixed versions: a leader keeps a live worker whose protocol it does not understand out of
//! the map, with a visible reason, and takes it in once it speaks a known protocol. Runs over
//! the in-memory store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parti::heartbeat::protocol::{self, Refusal};
use parti::heartbeat::{HeartbeatInfo, HeartbeatValue};
use parti::records::read_published;
use parti::source::Static;
use parti::store::{Bucket, MemoryStore, Store, codec};
use parti::{Config, Event, Manager, Partition, State, WorkerId};
use parti_testkit::wait_until;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether the committed map names `worker`.
async fn mapped(assignment: &dyn Bucket, worker: &WorkerId) -> bool {
    let published = read_published(assignment).await.unwrap();
    published
        .record
        .is_some_and(|(r, _)| r.workers.contains_key(worker))
}

#[tokio::test]
async fn a_worker_of_an_unknown_protocol_is_kept_out_of_the_map_with_a_visible_reason() {
    let store = MemoryStore::new();
    let config = Config::fast_for_tests();
    let partitions: Vec<Partition> = (0..8)
        .map(|i| Partition::new([format!("p{i}")], 1).unwrap())
        .collect();
    let leader = Manager::builder_with_store(Arc::new(store.client()))
        .config(config.clone())
        .source(Static::new(partitions))
        .start()
        .await
        .unwrap();
    let mut events = leader.events();
    wait_until(
        Duration::from_secs(10),
        "the only worker to lead and hold the map",
        || async { leader.is_leader() && !leader.assignment().partitions.is_empty() },
    )
    .await
    .unwrap();

    let [_, _, heartbeat_spec, assignment_spec] = config.bucket_specs();
    let client = store.client();
    let heartbeats = client.bucket(&heartbeat_spec).await.unwrap();
    let assignment = client.bucket(&assignment_spec).await.unwrap();

    // A worker of a future, incompatible build: beats like any other.
    let alien = WorkerId::new("worker-alien");
    let alien_protocol = Arc::new(AtomicU32::new(protocol::PROTOCOL + 1));
    let beating = {
        let heartbeats = heartbeats.clone();
        let alien = alien.clone();
        let alien_protocol = alien_protocol.clone();
        tokio::spawn(async move {
            loop {
                let value = HeartbeatValue {
                    ts: now_ms(),
                    protocol: alien_protocol.load(Ordering::Relaxed),
                    ..HeartbeatValue::announce("alien-1", HeartbeatInfo::new(State::Stable, 0))
                };
                let bytes = codec::encode(&value).unwrap();
                let _ = heartbeats.put(alien.as_str(), bytes).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let refusal = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(Event::WorkerRefused { worker, refusal }) if worker == alien => {
                    return refusal;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await
    .expect("the leader says why it keeps the worker out");
    assert_eq!(
        refusal,
        Refusal::ProtocolTooNew {
            protocol: protocol::PROTOCOL + 1,
            max: protocol::PROTOCOL
        }
    );
    // Several planned-scale windows (500 ms) later, it is still not in the map.
    let mapped_anyway = wait_until(
        Duration::from_secs(2),
        "the refused worker in the map",
        || mapped(&*assignment, &alien),
    )
    .await;
    assert!(mapped_anyway.is_err(), "kept out of the map");
    assert!(mapped(&*assignment, &leader.worker_id()).await);

    // The same worker, upgraded to a protocol the leader speaks: taken in.
    alien_protocol.store(protocol::PROTOCOL, Ordering::Relaxed);
    wait_until(
        Duration::from_secs(5),
        "a worker understood again to join the map",
        || mapped(&*assignment, &alien),
    )
    .await
    .unwrap();

    beating.abort();
    let _ = leader.stop().await;
}
