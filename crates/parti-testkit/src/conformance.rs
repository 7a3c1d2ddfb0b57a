//! The store conformance suite: the semantics every [`Store`] must have.
//!
//! One function, [`run`], takes a [`StoreHarness`] (a store factory plus a way to restart the
//! backend) and checks every case against it. The NATS store runs it against a real
//! `nats-server`; the in-memory store must pass the very same suite — a difference is a bug in
//! the in-memory one.
//!
//! The suite panics with a message naming the case on the first violation: it is test code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parti::store::{Bucket, BucketSpec, Entry, Store, WatchEvent, WatchStream, codec};
use parti::{Error, StoreError};

/// What the suite needs from a backend.
pub trait StoreHarness: Send + Sync {
    /// A store client on the shared backend (a new connection each call is fine).
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>>;
    /// Restarts the backend (NATS: stop and start the server on the same port and data
    /// directory). Data must survive; clients may see a disconnection.
    fn restart(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Deletes the bucket `name` with its data, as an operator would (`nats kv rm`).
    fn delete_bucket<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// How long the suite waits for an event that must come.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// How soon after the store is usable again a watch must deliver a write made after a server
/// restart. A watch that waits out a client library's reconnect backoff (up to 10 s) misses
/// changes for that long.
const RESUME_DEADLINE: Duration = Duration::from_secs(5);

static BUCKET_SEQ: AtomicU64 = AtomicU64::new(0);

fn bucket_name(case: &str) -> String {
    format!(
        "conf-{case}-{}-{}",
        std::process::id(),
        BUCKET_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs every conformance case against the harness, in order.
pub async fn run(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    create_update_delete(&*store).await;
    create_races_have_one_winner(&*store).await;
    list_matches_patterns(&*store).await;
    watch_snapshot_then_live(&*store).await;
    expiry_is_seen_as_expired(&*store).await;
    last_change_tells_a_delete_from_an_expiry(&*store).await;
    incompatible_bucket_is_reported(&*store).await;
    garbage_values_are_decode_errors(&*store).await;
    invalid_names_are_errors(&*store).await;
    a_missing_bucket_is_created_only_when_the_spec_allows(&*store).await;
    watch_survives_restart(harness).await;
    a_bucket_deleted_and_created_again_is_another_incarnation(harness).await;
}

/// [`Bucket::incarnation`] tells a bucket from its successor: `None` while it is gone, a new
/// value once it is created again (workers notice a bucket lost under them by it).
async fn a_bucket_deleted_and_created_again_is_another_incarnation(harness: &dyn StoreHarness) {
    let case = "incarnation";
    let store = harness.store().await;
    let spec = BucketSpec::new(bucket_name(case));
    let bucket = open(&*store, spec.clone()).await;
    bucket
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect("put");
    let first = bucket.incarnation().await.expect("incarnation");
    assert!(first.is_some(), "{case}: an open bucket exists");
    assert_eq!(
        bucket.incarnation().await.expect("incarnation"),
        first,
        "{case}: stable while the bucket lives"
    );
    harness.delete_bucket(&spec.name).await;
    assert_eq!(
        bucket.incarnation().await.expect("incarnation"),
        None,
        "{case}: a deleted bucket does not exist"
    );
    let _again = open(&*store, spec.clone()).await;
    let second = bucket.incarnation().await.expect("incarnation");
    assert!(
        second.is_some() && second != first,
        "{case}: the old handle sees the new bucket as another incarnation ({first:?} then {second:?})"
    );
    assert_eq!(
        bucket.get("k").await.expect("get"),
        None,
        "{case}: the new bucket starts empty"
    );
}

async fn open(store: &dyn Store, spec: BucketSpec) -> Arc<dyn Bucket> {
    store
        .bucket(&spec)
        .await
        .unwrap_or_else(|e| panic!("open bucket {}: {e}", spec.name))
}

async fn next_event(watch: &mut WatchStream, case: &str) -> WatchEvent {
    loop {
        match tokio::time::timeout(EVENT_DEADLINE, watch.next()).await {
            Ok(Some(Ok(event))) => return event,
            // Transient errors are allowed; the stream must carry on.
            Ok(Some(Err(_))) => continue,
            Ok(None) => panic!("{case}: watch stream ended"),
            Err(_) => panic!("{case}: no watch event within {EVENT_DEADLINE:?}"),
        }
    }
}

/// Reads a snapshot (`Init`, `InitApply`…, `InitDone`) and returns its entries.
async fn read_snapshot(watch: &mut WatchStream, case: &str) -> Vec<Entry> {
    assert_eq!(next_event(watch, case).await, WatchEvent::Init, "{case}");
    let mut entries = Vec::new();
    loop {
        match next_event(watch, case).await {
            WatchEvent::InitApply(e) => entries.push(e),
            WatchEvent::InitDone => return entries,
            other => panic!("{case}: unexpected {other:?} inside a snapshot"),
        }
    }
}

async fn create_update_delete(store: &dyn Store) {
    let case = "create_update_delete";
    let b = open(store, BucketSpec::new(bucket_name("cud"))).await;
    assert!(b.get("k").await.unwrap().is_none(), "{case}: absent key");

    let r1 = b.create("k", Bytes::from_static(b"one")).await.unwrap();
    assert!(r1 > 0, "{case}: revisions start above 0");
    let got = b.get("k").await.unwrap().expect("created key");
    assert_eq!(
        (got.value.as_ref(), got.revision),
        (&b"one"[..], r1),
        "{case}"
    );

    let again = b.create("k", Bytes::from_static(b"two")).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{case}: create on a live key must be AlreadyExists, got {again:?}"
    );

    let r2 = b.update("k", Bytes::from_static(b"two"), r1).await.unwrap();
    assert!(r2 > r1, "{case}: update increases the revision");
    let stale = b.update("k", Bytes::from_static(b"three"), r1).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{case}: stale update must conflict, got {stale:?}"
    );
    let missing = b.update("nope", Bytes::from_static(b"x"), r2).await;
    assert!(
        matches!(missing, Err(StoreError::Conflict { .. })),
        "{case}: update of a missing key must conflict, got {missing:?}"
    );

    let bad_delete = b.delete("k", Some(r1)).await;
    assert!(
        matches!(bad_delete, Err(StoreError::Conflict { .. })),
        "{case}: delete with a stale revision must conflict, got {bad_delete:?}"
    );
    assert!(b.get("k").await.unwrap().is_some(), "{case}: value kept");
    b.delete("k", Some(r2)).await.unwrap();
    assert!(b.get("k").await.unwrap().is_none(), "{case}: deleted");

    let after_delete = b.update("k", Bytes::from_static(b"x"), r2).await;
    assert!(
        matches!(after_delete, Err(StoreError::Conflict { .. })),
        "{case}: update over a tombstone with the old revision must conflict"
    );
    let r3 = b.create("k", Bytes::from_static(b"again")).await.unwrap();
    assert!(r3 > r2, "{case}: create over a tombstone works");
    let r4 = b.put("k", Bytes::from_static(b"blind")).await.unwrap();
    assert!(r4 > r3, "{case}: put increases the revision");
    b.delete("k", None).await.unwrap();
    assert!(
        b.get("k").await.unwrap().is_none(),
        "{case}: unconditional delete"
    );
    b.delete("never-written", None).await.unwrap();
}

async fn create_races_have_one_winner(store: &dyn Store) {
    let case = "create_races_have_one_winner";
    let b = open(store, BucketSpec::new(bucket_name("race"))).await;
    let attempts = (0..8u8).map(|i| {
        let b = Arc::clone(&b);
        async move { b.create("contended", Bytes::from(vec![i])).await }
    });
    let results = futures::future::join_all(attempts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{case}: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(e) if e.is_conflict())),
        "{case}: losers see AlreadyExists: {results:?}"
    );
}

async fn list_matches_patterns(store: &dyn Store) {
    let case = "list_matches_patterns";
    let b = open(store, BucketSpec::new(bucket_name("list"))).await;
    for key in ["worker.b", "worker.a", "cluster", "other.x.y"] {
        b.put(key, Bytes::from(key.to_owned())).await.unwrap();
    }
    b.put("worker.c", Bytes::from_static(b"gone"))
        .await
        .unwrap();
    b.delete("worker.c", None).await.unwrap();

    let keys = |entries: Vec<Entry>| entries.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        keys(b.list("worker.>").await.unwrap()),
        ["worker.a", "worker.b"],
        "{case}: prefix pattern, sorted, deleted excluded"
    );
    assert_eq!(
        keys(b.list(">").await.unwrap()),
        ["cluster", "other.x.y", "worker.a", "worker.b"],
        "{case}: everything"
    );
    assert_eq!(
        keys(b.list("cluster").await.unwrap()),
        ["cluster"],
        "{case}"
    );
    assert_eq!(
        keys(b.list("other.*.y").await.unwrap()),
        ["other.x.y"],
        "{case}"
    );
    let empty = open(store, BucketSpec::new(bucket_name("empty"))).await;
    assert!(
        empty.list(">").await.unwrap().is_empty(),
        "{case}: empty bucket"
    );
}

async fn watch_snapshot_then_live(store: &dyn Store) {
    let case = "watch_snapshot_then_live";
    let b = open(store, BucketSpec::new(bucket_name("watch"))).await;
    let r_a = b.put("p.a", Bytes::from_static(b"a")).await.unwrap();
    b.put("p.gone", Bytes::from_static(b"x")).await.unwrap();
    b.delete("p.gone", None).await.unwrap();
    b.put("q.other", Bytes::from_static(b"q")).await.unwrap();

    let mut watch = b.watch("p.>").await.unwrap();
    let snapshot = read_snapshot(&mut watch, case).await;
    assert_eq!(
        snapshot,
        vec![Entry {
            key: "p.a".into(),
            value: Bytes::from_static(b"a"),
            revision: r_a
        }],
        "{case}: the snapshot holds live matching keys only"
    );

    let r_b = b.put("p.b", Bytes::from_static(b"b")).await.unwrap();
    b.put("q.ignored", Bytes::from_static(b"q")).await.unwrap();
    b.delete("p.a", Some(r_a)).await.unwrap();
    match next_event(&mut watch, case).await {
        WatchEvent::Put(e) => assert_eq!((e.key.as_str(), e.revision), ("p.b", r_b), "{case}"),
        other => panic!("{case}: expected Put(p.b), got {other:?}"),
    }
    match next_event(&mut watch, case).await {
        WatchEvent::Deleted { key, revision } => {
            assert_eq!(key, "p.a", "{case}");
            assert!(revision > r_b, "{case}: revisions increase");
        }
        other => panic!("{case}: expected Deleted(p.a), got {other:?}"),
    }

    // An empty match set still completes its snapshot.
    let mut empty = b.watch("nothing.>").await.unwrap();
    assert!(read_snapshot(&mut empty, case).await.is_empty(), "{case}");
}

async fn expiry_is_seen_as_expired(store: &dyn Store) {
    let case = "expiry_is_seen_as_expired";
    let ttl = Duration::from_secs(1);
    let b = open(store, BucketSpec::new(bucket_name("ttl")).expiring(ttl)).await;
    let mut watch = b.watch(">").await.unwrap();
    assert!(read_snapshot(&mut watch, case).await.is_empty(), "{case}");

    let r = b.create("hb", Bytes::from_static(b"alive")).await.unwrap();
    let started = tokio::time::Instant::now();
    match next_event(&mut watch, case).await {
        WatchEvent::Put(e) => assert_eq!(e.revision, r, "{case}"),
        other => panic!("{case}: expected Put, got {other:?}"),
    }
    match next_event(&mut watch, case).await {
        WatchEvent::Expired { key, .. } => assert_eq!(key, "hb", "{case}"),
        other => panic!("{case}: expected Expired, got {other:?}"),
    }
    assert!(
        started.elapsed() >= ttl - Duration::from_millis(50),
        "{case}: expired before its max_age ({:?})",
        started.elapsed()
    );
    assert!(
        b.get("hb").await.unwrap().is_none(),
        "{case}: gone after expiry"
    );
    let stale = b.update("hb", Bytes::from_static(b"renew"), r).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{case}: renewing an expired key must conflict, got {stale:?}"
    );
    b.create("hb", Bytes::from_static(b"again"))
        .await
        .expect("create over an expired key");

    // A rewrite restarts the key's clock.
    let b2 = open(store, BucketSpec::new(bucket_name("ttl2")).expiring(ttl)).await;
    let mut rev = b2.create("k", Bytes::from_static(b"0")).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(ttl / 3).await;
        rev = b2
            .update("k", Bytes::from_static(b"1"), rev)
            .await
            .unwrap_or_else(|e| panic!("{case}: renewal within max_age must succeed: {e}"));
    }
}

/// [`Bucket::last_change`] says how a key's last value ended: a leader tells a stable ID that
/// was released (a graceful stop) from one that lapsed (a crash) by it.
async fn last_change_tells_a_delete_from_an_expiry(store: &dyn Store) {
    let case = "last_change_tells_a_delete_from_an_expiry";
    // The expiry marker lives as long as a value (NATS: at least 1 s): long enough to be read
    // after the watch showed it, even on a busy machine.
    let ttl = Duration::from_secs(2);
    let b = open(store, BucketSpec::new(bucket_name("last")).expiring(ttl)).await;
    assert_eq!(
        b.last_change("never").await.unwrap(),
        None,
        "{case}: a key never written"
    );
    let mut watch = b.watch(">").await.unwrap();
    assert!(read_snapshot(&mut watch, case).await.is_empty(), "{case}");

    let released = b
        .create("released", Bytes::from_static(b"r"))
        .await
        .unwrap();
    let lapsed = b.create("lapsed", Bytes::from_static(b"l")).await.unwrap();
    match b.last_change("released").await.unwrap() {
        Some(WatchEvent::Put(e)) => {
            assert_eq!(
                (e.revision, e.value.as_ref()),
                (released, &b"r"[..]),
                "{case}"
            )
        }
        other => panic!("{case}: a live key's last change is its put, got {other:?}"),
    }
    b.delete("released", Some(released)).await.unwrap();
    match b.last_change("released").await.unwrap() {
        Some(WatchEvent::Deleted { key, revision }) => {
            assert_eq!(key, "released", "{case}");
            assert!(revision > lapsed, "{case}: the delete's own revision");
        }
        other => panic!("{case}: a deleted key's last change is the delete, got {other:?}"),
    }
    // The expiry is awaited on the watch, which shows the delete first.
    loop {
        if let WatchEvent::Expired { key, .. } = next_event(&mut watch, case).await
            && key == "lapsed"
        {
            break;
        }
    }
    match b.last_change("lapsed").await.unwrap() {
        Some(WatchEvent::Expired { key, revision }) => {
            assert_eq!(key, "lapsed", "{case}");
            assert!(revision > lapsed, "{case}: the expiry's own revision");
        }
        other => panic!("{case}: an expired key's last change is the expiry, got {other:?}"),
    }
}

async fn incompatible_bucket_is_reported(store: &dyn Store) {
    let case = "incompatible_bucket_is_reported";
    let name = bucket_name("compat");
    let spec = BucketSpec::new(name.clone()).expiring(Duration::from_secs(5));
    open(store, spec.clone()).await;
    open(store, spec.clone()).await; // same settings: fine
    let other = store
        .bucket(&BucketSpec::new(name).expiring(Duration::from_secs(9)))
        .await;
    match other {
        Err(StoreError::IncompatibleBucket { reason, .. }) => {
            assert!(reason.contains("max_age"), "{case}: {reason}")
        }
        Err(e) => panic!("{case}: expected IncompatibleBucket, got {e}"),
        Ok(_) => panic!("{case}: expected IncompatibleBucket, got a bucket"),
    }
}

async fn garbage_values_are_decode_errors(store: &dyn Store) {
    let case = "garbage_values_are_decode_errors";
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Beat {
        ts: u64,
    }
    let b = open(store, BucketSpec::new(bucket_name("garbage"))).await;
    for (i, garbage) in [
        &b"\x00\xff\xfe"[..],
        b"{",
        b"null",
        br#"{"v":1}"#,
        br#"{"v":99,"ts":1}"#,
    ]
    .iter()
    .enumerate()
    {
        let key = format!("g{i}");
        b.put(&key, Bytes::copy_from_slice(garbage)).await.unwrap();
        let entry = b.get(&key).await.unwrap().expect("stored as is");
        assert_eq!(entry.value.as_ref(), *garbage, "{case}: bytes are kept");
        let decoded = codec::decode::<Beat>(b.name(), &key, &entry.value);
        assert!(
            matches!(decoded, Err(Error::Decode { .. })),
            "{case}: {garbage:?} must be a decode error, got {decoded:?}"
        );
    }
}

/// A spec with [`BucketSpec::create_if_missing`] off opens an existing bucket and refuses a
/// missing one with [`StoreError::BucketMissing`], creating nothing.
async fn a_missing_bucket_is_created_only_when_the_spec_allows(store: &dyn Store) {
    let case = "a_missing_bucket_is_created_only_when_the_spec_allows";
    let spec = BucketSpec::new(bucket_name("provisioned")).create_if_missing(false);
    for attempt in 0..2 {
        match store.bucket(&spec).await {
            Err(StoreError::BucketMissing { bucket }) => assert_eq!(bucket, spec.name, "{case}"),
            other => panic!("{case}: attempt {attempt} gave {other:?}"),
        }
    }
    let created = open(store, spec.clone().create_if_missing(true)).await;
    created
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect("put");
    let opened = open(store, spec).await;
    assert_eq!(
        opened.get("k").await.expect("get").map(|e| e.value),
        Some(Bytes::from_static(b"v")),
        "{case}: the existing bucket is opened"
    );
}

async fn invalid_names_are_errors(store: &dyn Store) {
    let case = "invalid_names_are_errors";
    let bad_bucket = store.bucket(&BucketSpec::new("bad name!")).await;
    assert!(
        matches!(bad_bucket, Err(StoreError::InvalidName { .. })),
        "{case}: bucket"
    );
    let b = open(store, BucketSpec::new(bucket_name("names"))).await;
    for key in ["", ".lead", "trail.", "sp ace", "wild*"] {
        let r = b.put(key, Bytes::new()).await;
        assert!(
            matches!(r, Err(StoreError::InvalidName { .. })),
            "{case}: key {key:?} gave {r:?}"
        );
    }
}

async fn watch_survives_restart(harness: &dyn StoreHarness) {
    let case = "watch_survives_restart";
    let store = harness.store().await;
    let b = open(&*store, BucketSpec::new(bucket_name("restart"))).await;
    b.put("before", Bytes::from_static(b"1")).await.unwrap();
    let mut watch = b.watch(">").await.unwrap();
    let snapshot = read_snapshot(&mut watch, case).await;
    assert_eq!(snapshot.len(), 1, "{case}");

    harness.restart().await;

    // Write after the restart, retrying while the client reconnects.
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    let rev = loop {
        match b.put("after", Bytes::from_static(b"2")).await {
            Ok(rev) => break rev,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("{case}: put after restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{case}: store unusable after restart: {e}"),
        }
    };
    // The write arrives once: as a live Put, or inside a fresh snapshot announced with Init
    // (a consumer rebuilds its view on InitDone). A live event about `before` would be a
    // duplicate.
    let mut in_snapshot = false;
    let resumed = tokio::time::timeout(RESUME_DEADLINE, async {
        loop {
            match next_event(&mut watch, case).await {
                WatchEvent::Init => in_snapshot = true,
                WatchEvent::InitApply(e) if in_snapshot && e.key == "after" => {
                    assert_eq!(e.revision, rev, "{case}");
                    assert_eq!(next_event(&mut watch, case).await, WatchEvent::InitDone);
                    break;
                }
                WatchEvent::InitApply(e) if in_snapshot && e.key == "before" => {}
                WatchEvent::InitDone if in_snapshot => in_snapshot = false,
                WatchEvent::Put(e) if !in_snapshot => {
                    assert_eq!(
                        (e.key.as_str(), e.revision),
                        ("after", rev),
                        "{case}: {e:?}"
                    );
                    break;
                }
                other => panic!("{case}: unexpected {other:?} after restart"),
            }
        }
    })
    .await;
    assert!(
        resumed.is_ok(),
        "{case}: the write made after the restart was not seen within {RESUME_DEADLINE:?}"
    );
    // No duplicate of the write follows.
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match watch.next().await {
                Some(Ok(ev)) => return Some(ev),
                Some(Err(_)) => continue,
                None => return None,
            }
        }
    })
    .await;
    assert!(
        extra.is_err(),
        "{case}: unexpected event after the write: {extra:?}"
    );
}
