//! The in-memory store: the conformance suite (the same one the NATS store passes), on the real
//! and on the paused clock, and its injectable faults.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parti::StoreError;
use parti::store::{BucketSpec, MemoryStore, Store, WatchEvent, WatchStream};
use parti_testkit::conformance::{self, StoreHarness};

struct MemoryHarness {
    store: MemoryStore,
}

impl StoreHarness for MemoryHarness {
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async move { Arc::new(self.store.client()) as Arc<dyn Store> })
    }

    /// An outage of the backend: every client is cut off for a moment, the data is kept.
    fn restart(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.store
                .backend_faults()
                .cut_off_for(Duration::from_millis(300));
        })
    }

    fn delete_bucket<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.store.delete_bucket(name);
        })
    }
}

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run(&MemoryHarness {
        store: MemoryStore::new(),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn memory_store_passes_the_conformance_suite_on_the_paused_clock() {
    conformance::run(&MemoryHarness {
        store: MemoryStore::new(),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn memory_store_passes_the_conformance_suite_when_watches_resnapshot() {
    let store = MemoryStore::new();
    store.backend_faults().resnapshot_on_reconnect(true);
    conformance::run(&MemoryHarness { store }).await;
}

/// The next event, skipping transient errors; `None` if none comes within `limit`.
async fn next_within(watch: &mut WatchStream, limit: Duration) -> Option<WatchEvent> {
    tokio::time::timeout(limit, async {
        loop {
            match watch.next().await {
                Some(Ok(event)) => return event,
                Some(Err(_)) => continue,
                None => panic!("watch ended"),
            }
        }
    })
    .await
    .ok()
}

async fn skip_snapshot(watch: &mut WatchStream) {
    while next_within(watch, Duration::from_secs(1)).await != Some(WatchEvent::InitDone) {}
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_client_fails_and_stalls_while_others_carry_on() {
    let store = MemoryStore::with_seed(1);
    let (a, b) = (store.client(), store.client());
    let spec = BucketSpec::new("b");
    let (ba, bb) = (
        a.bucket(&spec).await.unwrap(),
        b.bucket(&spec).await.unwrap(),
    );
    let mut watch = ba.watch(">").await.unwrap();
    skip_snapshot(&mut watch).await;

    a.faults().cut_off_for(Duration::from_secs(5));
    assert!(!a.is_connected() && b.is_connected());
    let failed = ba.put("k", Bytes::from_static(b"x")).await;
    assert!(
        matches!(failed, Err(StoreError::Backend { .. })),
        "{failed:?}"
    );
    assert!(a.bucket(&spec).await.is_err(), "opening fails too");
    let rev = bb.put("k", Bytes::from_static(b"y")).await.unwrap();
    assert_eq!(
        next_within(&mut watch, Duration::from_secs(4)).await,
        None,
        "a cut-off watch stalls"
    );
    match next_within(&mut watch, Duration::from_secs(2)).await {
        Some(WatchEvent::Put(e)) => assert_eq!(e.revision, rev, "resumed where it stopped"),
        other => panic!("expected the missed put, got {other:?}"),
    }
    assert!(a.is_connected());
    ba.put("k", Bytes::from_static(b"z")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_resnapshotting_watch_rebuilds_from_the_current_state() {
    let store = MemoryStore::new();
    let bucket = store.bucket(&BucketSpec::new("b")).await.unwrap();
    let other = store.client().bucket(&BucketSpec::new("b")).await.unwrap();
    bucket.put("gone", Bytes::new()).await.unwrap();
    let mut watch = bucket.watch(">").await.unwrap();
    skip_snapshot(&mut watch).await;

    store.faults().resnapshot_on_reconnect(true);
    store.faults().cut_off();
    other.delete("gone", None).await.unwrap();
    let rev = other.put("new", Bytes::new()).await.unwrap();
    assert_eq!(
        watch.next().await.map(|r| r.is_err()),
        Some(true),
        "one error item"
    );
    store.faults().reconnect();
    assert_eq!(
        next_within(&mut watch, Duration::from_secs(1)).await,
        Some(WatchEvent::Init)
    );
    match next_within(&mut watch, Duration::from_secs(1)).await {
        Some(WatchEvent::InitApply(e)) => assert_eq!((e.key.as_str(), e.revision), ("new", rev)),
        other => panic!("expected the live key, got {other:?}"),
    }
    assert_eq!(
        next_within(&mut watch, Duration::from_secs(1)).await,
        Some(WatchEvent::InitDone)
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_the_backend_cuts_every_client_off() {
    let store = MemoryStore::new();
    let clients = [store.client(), store.client()];
    store.backend_faults().cut_off_for(Duration::from_secs(2));
    assert!(clients.iter().all(|c| !c.is_connected()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(clients.iter().all(|c| c.is_connected()));
}

#[tokio::test(start_paused = true)]
async fn injected_failures_latency_and_lost_replies() {
    let store = MemoryStore::with_seed(3);
    let bucket = store.bucket(&BucketSpec::new("b")).await.unwrap();

    store.faults().fail_next(2);
    assert!(bucket.get("k").await.is_err());
    assert!(bucket.put("k", Bytes::new()).await.is_err());
    assert!(
        bucket.get("k").await.unwrap().is_none(),
        "a failed call writes nothing"
    );

    store
        .faults()
        .set_latency(Duration::from_millis(100), Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    bucket.put("k", Bytes::new()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    store.faults().set_latency(Duration::ZERO, Duration::ZERO);

    store.faults().set_lost_reply_rate(1.0);
    let lost = bucket.create("c", Bytes::from_static(b"mine")).await;
    assert!(matches!(lost, Err(StoreError::Timeout { .. })), "{lost:?}");
    store.faults().set_lost_reply_rate(0.0);
    let landed = bucket.get("c").await.unwrap().expect("the write landed");
    assert_eq!(landed.value, Bytes::from_static(b"mine"));

    store.faults().set_failure_rate(1.0);
    assert!(bucket.get("c").await.is_err());
    store.faults().set_failure_rate(0.0);
    assert!(bucket.get("c").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn expiry_follows_the_paused_clock_and_counts_as_absent() {
    let store = MemoryStore::new();
    let ttl = Duration::from_secs(30);
    let bucket = store
        .bucket(&BucketSpec::new("hb").expiring(ttl))
        .await
        .unwrap();
    let mut watch = bucket.watch(">").await.unwrap();
    skip_snapshot(&mut watch).await;
    let rev = bucket.create("w", Bytes::new()).await.unwrap();
    let created = tokio::time::Instant::now();
    assert!(matches!(
        next_within(&mut watch, ttl).await,
        Some(WatchEvent::Put(_))
    ));
    match next_within(&mut watch, ttl * 2).await {
        Some(WatchEvent::Expired { key, revision }) => {
            assert_eq!(key, "w");
            assert!(revision > rev);
            assert_eq!(created.elapsed(), ttl, "expired exactly at max_age");
        }
        other => panic!("expected an expiry, got {other:?}"),
    }
    assert!(bucket.get("w").await.unwrap().is_none());
    assert!(bucket.list(">").await.unwrap().is_empty());
    bucket.create("w", Bytes::new()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lost_reply_hides_an_applied_write_so_a_retried_cas_conflicts() {
    let store = MemoryStore::with_seed(5);
    let bucket = store.bucket(&BucketSpec::new("b")).await.unwrap();
    let rev = bucket.create("k", Bytes::from_static(b"1")).await.unwrap();
    store.faults().set_lost_reply_rate(1.0);
    let lost = bucket.update("k", Bytes::from_static(b"2"), rev).await;
    assert!(matches!(lost, Err(StoreError::Timeout { .. })), "{lost:?}");
    store.faults().set_lost_reply_rate(0.0);
    let retried = bucket.update("k", Bytes::from_static(b"2"), rev).await;
    assert!(
        matches!(retried, Err(StoreError::Conflict { .. })),
        "the first attempt was applied: {retried:?}"
    );
    let now = bucket.get("k").await.unwrap().unwrap();
    assert_eq!(
        (now.value, now.revision),
        (Bytes::from_static(b"2"), rev + 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_client_blocks_every_call_and_watch_until_it_resumes() {
    let store = MemoryStore::with_seed(2);
    let (paused, other) = (store.client(), store.client());
    let spec = BucketSpec::new("hb").expiring(Duration::from_secs(6));
    let (bp, bo) = (
        paused.bucket(&spec).await.unwrap(),
        other.bucket(&spec).await.unwrap(),
    );
    let rev = bp.create("w", Bytes::new()).await.unwrap();
    let mut watch = bp.watch(">").await.unwrap();
    skip_snapshot(&mut watch).await;

    let paused_at = tokio::time::Instant::now();
    paused.faults().pause_for(Duration::from_secs(10));
    assert!(paused.faults().is_paused() && paused.is_connected());
    let renewal = tokio::spawn(async move {
        let result = bp.update("w", Bytes::new(), rev).await;
        (result, tokio::time::Instant::now())
    });
    let written = bo.put("x", Bytes::new()).await.unwrap();
    assert_eq!(
        next_within(&mut watch, Duration::from_secs(9)).await,
        None,
        "a paused watch delivers nothing, not even an error"
    );
    let (result, at) = renewal.await.unwrap();
    assert_eq!(
        at - paused_at,
        Duration::from_secs(10),
        "blocked until resumed"
    );
    assert!(
        matches!(result, Err(StoreError::Conflict { .. })),
        "the lease expired during the pause: {result:?}"
    );
    // The watch resumes with what it missed, in order.
    let mut seen = Vec::new();
    while let Some(event) = next_within(&mut watch, Duration::from_millis(1)).await {
        seen.push(event);
    }
    assert!(
        seen.contains(&WatchEvent::Put(parti::store::Entry {
            key: "x".into(),
            value: Bytes::new(),
            revision: written,
        })),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, WatchEvent::Expired { key, .. } if key == "w")),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_client_finishes_a_write_it_began_before_the_pause() {
    let store = MemoryStore::new();
    let client = store.client();
    let bucket = client.bucket(&BucketSpec::new("b")).await.unwrap();
    client
        .faults()
        .set_latency(Duration::from_secs(1), Duration::from_secs(1));
    let write = tokio::spawn(async move { bucket.put("k", Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.faults().pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!write.is_finished(), "the reply waits for the resume");
    client.faults().resume();
    write.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_bucket_fails_calls_until_recreated_and_watches_move_on() {
    let store = MemoryStore::new();
    let spec = BucketSpec::new("b");
    let bucket = store.client().bucket(&spec).await.unwrap();
    let old = bucket.put("k", Bytes::from_static(b"old")).await.unwrap();
    bucket.put("k2", Bytes::new()).await.unwrap();
    let mut watch = bucket.watch(">").await.unwrap();
    skip_snapshot(&mut watch).await;

    assert!(store.delete_bucket("b"));
    assert!(!store.delete_bucket("b"), "already gone");
    assert!(
        matches!(bucket.get("k").await, Err(StoreError::Backend { .. })),
        "calls fail while the bucket is missing"
    );
    assert!(matches!(watch.next().await, Some(Err(_))), "one error item");
    assert_eq!(
        next_within(&mut watch, Duration::from_secs(5)).await,
        None,
        "nothing while missing"
    );

    // Re-created (by anyone opening it): empty, revisions from the start.
    let fresh = store.client().bucket(&spec).await.unwrap();
    assert!(
        bucket.get("k").await.unwrap().is_none(),
        "the old handle sees the new bucket"
    );
    let new = fresh.put("k", Bytes::from_static(b"new")).await.unwrap();
    assert!(new <= old, "revisions start again: {new} after {old}");
    let mut events = Vec::new();
    while let Some(event) = next_within(&mut watch, Duration::from_millis(1)).await {
        events.push(event);
    }
    assert_eq!(events.first(), Some(&WatchEvent::Init), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, WatchEvent::InitDone | WatchEvent::Put(_))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(
            |e| matches!(e, WatchEvent::InitApply(entry) | WatchEvent::Put(entry) if entry.key == "k2")
        ),
        "nothing of the old bucket: {events:?}"
    );
}
