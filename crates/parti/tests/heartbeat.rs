//! Heartbeats and the membership watcher against a real nats-server (SPEC §5.2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parti::heartbeat::{self, HeartbeatValue, Heartbeater, MembershipEvent, MembershipWatcher};
use parti::store::{Bucket, NatsStore, Store, WatchEvent, WatchStream, codec};
use parti::{State, WorkerId};
use parti_testkit::{BucketHooks, HookedBucket, NatsServer, wait_until};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const BUCKET: &str = "parti-heartbeat";

async fn bucket(server: &NatsServer, ttl: Duration) -> Arc<dyn Bucket> {
    let store = NatsStore::new(async_nats::jetstream::new(server.client().await.unwrap()));
    store
        .bucket(&heartbeat::bucket_spec(BUCKET, ttl, 1))
        .await
        .unwrap()
}

fn beat(
    bucket: Arc<dyn Bucket>,
    id: &str,
    interval: Duration,
) -> (Heartbeater, watch::Sender<parti::heartbeat::HeartbeatInfo>) {
    let (info_tx, info) = watch::channel(parti::heartbeat::HeartbeatInfo::new(State::Stable, 0));
    let hb = Heartbeater::spawn(
        bucket,
        WorkerId::new(id),
        format!("{id}-instance"),
        interval,
        info,
    );
    (hb, info_tx)
}

/// Waits for the next membership event, with a deadline.
async fn next_event(
    events: &mut mpsc::UnboundedReceiver<MembershipEvent>,
    within: Duration,
) -> MembershipEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .expect("a membership event in time")
        .expect("the watcher is running")
}

async fn value_of(bucket: &dyn Bucket, id: &str) -> Option<HeartbeatValue> {
    let entry = bucket.get(id).await.ok()??;
    codec::decode(BUCKET, id, &entry.value).ok()
}

fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(now.as_millis()).unwrap()
}

#[tokio::test]
async fn heartbeats_carry_state_and_version_and_follow_changes_at_once() {
    let server = NatsServer::start().await.unwrap();
    let bucket = bucket(&server, Duration::from_secs(5)).await;
    // A long interval: a change must be written without waiting for the next tick.
    let (hb, info) = beat(bucket.clone(), "worker-0", Duration::from_secs(60));
    wait_until(Duration::from_secs(2), "the first heartbeat", || {
        let b = bucket.clone();
        async move {
            value_of(&*b, "worker-0")
                .await
                .is_some_and(|v| v.state == State::Stable)
        }
    })
    .await
    .unwrap();
    let raw = bucket.get("worker-0").await.unwrap().unwrap().value;
    let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(json["v"], 1);
    assert_eq!(json["instance"], "worker-0-instance");
    assert!(
        json["appliedVersion"].is_u64() && json["ts"].is_u64(),
        "{json}"
    );

    info.send_replace(parti::heartbeat::HeartbeatInfo::new(State::Rebalancing, 7));
    wait_until(
        Duration::from_secs(2),
        "the changed state to be written",
        || {
            let b = bucket.clone();
            async move {
                value_of(&*b, "worker-0")
                    .await
                    .is_some_and(|v| v.state == State::Rebalancing && v.applied_version == 7)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(*hb.failures().borrow(), 0);
    hb.stop().await.unwrap();
    assert!(
        bucket.get("worker-0").await.unwrap().is_none(),
        "a graceful stop deletes the key"
    );
}

#[tokio::test]
async fn the_first_snapshot_reports_present_workers_as_joined() {
    let server = NatsServer::start().await.unwrap();
    let ttl = Duration::from_secs(3);
    let bucket = bucket(&server, ttl).await;
    let workers: Vec<_> = ["worker-0", "worker-1", "worker-2"]
        .into_iter()
        .map(|id| beat(bucket.clone(), id, Duration::from_millis(500)))
        .collect();
    wait_until(Duration::from_secs(2), "three heartbeats", || {
        let b = bucket.clone();
        async move { b.list(">").await.is_ok_and(|l| l.len() == 3) }
    })
    .await
    .unwrap();

    let (watcher, mut events) = MembershipWatcher::spawn(bucket.clone(), ttl);
    let mut joined = BTreeSet::new();
    for _ in 0..3 {
        match next_event(&mut events, Duration::from_secs(2)).await {
            MembershipEvent::Joined(id) => joined.insert(id),
            other => panic!("unexpected {other:?}"),
        };
    }
    let expected: BTreeSet<WorkerId> = ["worker-0", "worker-1", "worker-2"]
        .map(WorkerId::new)
        .into();
    assert_eq!(joined, expected);
    assert!(*watcher.synced().borrow());
    assert_eq!(*watcher.live().borrow(), expected);

    // Steady heartbeats of known workers produce no events.
    let quiet = tokio::time::timeout(Duration::from_millis(1200), events.recv()).await;
    assert!(quiet.is_err(), "no event expected, got {quiet:?}");
    for (hb, _) in workers {
        hb.stop().await.unwrap();
    }
    watcher.stop().await;
}

#[tokio::test]
async fn a_crashed_worker_is_reported_expired_within_ttl_plus_1s() {
    let server = NatsServer::start().await.unwrap();
    let ttl = Duration::from_secs(2);
    let bucket = bucket(&server, ttl).await;
    let (watcher, mut events) = MembershipWatcher::spawn(bucket.clone(), ttl);
    let (hb, _info) = beat(bucket.clone(), "worker-7", Duration::from_millis(500));
    assert_eq!(
        next_event(&mut events, Duration::from_secs(2)).await,
        MembershipEvent::Joined("worker-7".into())
    );

    hb.abort();
    let crashed = Instant::now();
    let event = next_event(&mut events, ttl + Duration::from_secs(1)).await;
    let took = crashed.elapsed();
    assert_eq!(event, MembershipEvent::Expired("worker-7".into()));
    assert!(watcher.live().borrow().is_empty());
    println!(
        "MEASURE heartbeat: Expired seen {took:?} after the abort (TTL {ttl:?}, interval 500ms)"
    );
    watcher.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_is_reported_left_within_1s() {
    let server = NatsServer::start().await.unwrap();
    let ttl = Duration::from_secs(2);
    let bucket = bucket(&server, ttl).await;
    let (watcher, mut events) = MembershipWatcher::spawn(bucket.clone(), ttl);
    let (hb, _info) = beat(bucket.clone(), "worker-3", Duration::from_millis(500));
    assert_eq!(
        next_event(&mut events, Duration::from_secs(2)).await,
        MembershipEvent::Joined("worker-3".into())
    );

    let stopping = Instant::now();
    hb.stop().await.unwrap();
    let event = next_event(&mut events, Duration::from_secs(1)).await;
    let took = stopping.elapsed();
    assert_eq!(event, MembershipEvent::Left("worker-3".into()));
    println!("MEASURE heartbeat: Left seen {took:?} after stop() began");
    watcher.stop().await;
}

#[tokio::test]
async fn undecodable_heartbeats_are_never_workers_and_good_ones_are_under_any_key() {
    let server = NatsServer::start().await.unwrap();
    let bucket = bucket(&server, Duration::from_secs(3)).await;
    let (watcher, mut events) = MembershipWatcher::spawn_with_ttl(
        bucket.clone(),
        Duration::from_secs(3),
        Duration::from_secs(3),
    );
    let value = |ts: u64| {
        codec::encode(&HeartbeatValue {
            instance: "i".into(),
            ts,
            state: State::Stable,
            applied_version: 1,
            released: 1,
            lapses: 0,
            expelled: false,
            degraded_reason: None,
            protocol: parti::heartbeat::protocol::PROTOCOL,
            capabilities: parti::heartbeat::protocol::capabilities(),
            capacity: parti::Capacity::DEFAULT,
            labels: Default::default(),
        })
        .unwrap()
    };
    let garbage = Bytes::from_static(b"\xff not json");
    // Garbage under any key is never a worker.
    bucket.put("worker-9", garbage.clone()).await.unwrap();
    bucket.put("ghost", garbage.clone()).await.unwrap();
    // A good heartbeat under an ID outside this process's pool (`worker-0`…`worker-9`, say) is
    // a worker configured with another pool: taking it for gone would hand on what it holds.
    bucket.put("worker-10", value(1)).await.unwrap();
    assert_eq!(
        next_event(&mut events, Duration::from_secs(2)).await,
        MembershipEvent::Joined("worker-10".into()),
        "the first event is the good heartbeat's join"
    );
    // A real one, over which garbage then proves nothing: it stays until its key expires.
    bucket.put("worker-3", value(1)).await.unwrap();
    assert_eq!(
        next_event(&mut events, Duration::from_secs(2)).await,
        MembershipEvent::Joined("worker-3".into())
    );
    assert_eq!(watcher.decode_errors(), 2);
    assert_eq!(
        *watcher.live().borrow(),
        ["worker-10".into(), "worker-3".into()].into()
    );
    bucket.put("worker-3", garbage).await.unwrap();
    // The garbage put restarted the key's clock: it expires one TTL (3 s) later.
    let mut expired = BTreeSet::new();
    while expired.len() < 2 {
        match next_event(&mut events, Duration::from_secs(5)).await {
            MembershipEvent::Expired(id) => expired.insert(id),
            other => panic!("only expiries are due, got {other:?}"),
        };
    }
    assert!(watcher.decode_errors() >= 3);
    assert!(watcher.live().borrow().is_empty());
    watcher.stop().await;
}

/// Makes a bucket's first watch lose every delete and expiry, as a stream that missed events
/// would.
#[derive(Debug, Default)]
struct LossyWatch {
    lossy_watch_given: AtomicBool,
}

impl BucketHooks for LossyWatch {
    fn watch(&self, stream: WatchStream) -> WatchStream {
        if self.lossy_watch_given.swap(true, Ordering::SeqCst) {
            return stream;
        }
        stream
            .filter(|e| {
                let keep = !matches!(
                    e,
                    Ok(WatchEvent::Deleted { .. } | WatchEvent::Expired { .. })
                );
                std::future::ready(keep)
            })
            .boxed()
    }
}

#[tokio::test]
async fn the_periodic_resync_catches_a_missed_leave() {
    let server = NatsServer::start().await.unwrap();
    let ttl = Duration::from_secs(2);
    let real = bucket(&server, ttl).await;
    let lossy: Arc<dyn Bucket> = Arc::new(HookedBucket::new(real.clone(), LossyWatch::default()));
    let resync = Duration::from_secs(1);
    let (watcher, mut events) = MembershipWatcher::spawn_with_ttl(lossy, resync, ttl);
    let (hb, _info) = beat(real.clone(), "worker-4", Duration::from_millis(300));
    assert_eq!(
        next_event(&mut events, Duration::from_secs(2)).await,
        MembershipEvent::Joined("worker-4".into())
    );
    hb.stop().await.unwrap();
    // The delete event is lost; the resync finds the key gone and its heartbeat fresh: a leave.
    assert_eq!(
        next_event(&mut events, resync + Duration::from_secs(1)).await,
        MembershipEvent::Left("worker-4".into())
    );
    assert!(watcher.live().borrow().is_empty());
    watcher.stop().await;
}

#[tokio::test]
async fn heartbeats_and_the_watcher_recover_after_a_server_restart() {
    let mut server = NatsServer::start().await.unwrap();
    let ttl = Duration::from_secs(4);
    let bucket = bucket(&server, ttl).await;
    let (watcher, mut events) = MembershipWatcher::spawn(bucket.clone(), ttl);
    let (hb, _info) = beat(bucket.clone(), "worker-0", Duration::from_millis(300));
    assert_eq!(
        next_event(&mut events, Duration::from_secs(2)).await,
        MembershipEvent::Joined("worker-0".into())
    );

    server.restart().await.unwrap();
    let back = unix_ms();
    let failures = hb.failures();
    let took = wait_until(
        Duration::from_secs(5),
        "a heartbeat written after the restart",
        || {
            let b = bucket.clone();
            let healthy = *failures.borrow() == 0;
            async move { healthy && value_of(&*b, "worker-0").await.is_some_and(|v| v.ts > back) }
        },
    )
    .await
    .unwrap();
    println!("MEASURE heartbeat: heartbeats resumed {took:?} after the server came back");

    // The watcher still follows the bucket: a worker joining now is seen.
    let (late, _late_info) = beat(bucket.clone(), "worker-1", Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let event = next_event(
            &mut events,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await;
        if event == MembershipEvent::Joined("worker-1".into()) {
            break;
        }
    }
    let expected: BTreeSet<WorkerId> = ["worker-0", "worker-1"].map(WorkerId::new).into();
    wait_until(Duration::from_secs(2), "both workers live", || {
        let live = watcher.live().borrow().clone();
        let expected = expected.clone();
        async move { live == expected }
    })
    .await
    .unwrap();
    hb.stop().await.unwrap();
    late.stop().await.unwrap();
    watcher.stop().await;
}

/// A worker whose stable ID was taken while it could not renew finds the new owner's
/// heartbeat under its key. It must never write over it — not even after it lapsed and
/// renews under its next lineage — or the leader names its lineage in place of the owner's
/// while the owner holds (seen in the simulation: 152 ms held twice). It writes again once the
/// key is gone.
#[tokio::test]
async fn a_heartbeat_never_writes_over_another_process_that_took_the_id() {
    let server = NatsServer::start().await.unwrap();
    let bucket = bucket(&server, Duration::from_secs(30)).await;
    let (old, old_info) = beat(bucket.clone(), "worker-4", Duration::from_millis(100));
    let ours = |v: &HeartbeatValue| v.instance == "worker-4-instance";
    wait_until(Duration::from_secs(2), "the first heartbeat", || async {
        value_of(&*bucket, "worker-4")
            .await
            .is_some_and(|v| ours(&v))
    })
    .await
    .unwrap();

    // Another process took the ID and wrote its heartbeat (once: it does not renew here, so
    // nothing but our own writes could change the key).
    let theirs = HeartbeatValue::announce(
        "new-owner",
        parti::heartbeat::HeartbeatInfo::new(State::Stable, 3),
    );
    bucket
        .put("worker-4", codec::encode(&theirs).unwrap())
        .await
        .unwrap();
    let revoked = old.revoked();
    wait_until(Duration::from_secs(2), "the lineage revoked", || async {
        revoked.has_changed().unwrap_or(false)
    })
    .await
    .unwrap();
    // The worker lapses and would renew under its next lineage.
    let mut next = parti::heartbeat::HeartbeatInfo::new(State::Stable, 3);
    next.lapses = 1;
    old_info.send_replace(next);
    let failures = old.failures();
    wait_until(
        Duration::from_secs(2),
        "renewals refused while another process's heartbeat is there",
        || async { *failures.borrow() >= 3 },
    )
    .await
    .unwrap();
    let current = value_of(&*bucket, "worker-4").await.unwrap();
    assert_eq!(current.instance, "new-owner", "never written over");

    // The other process is gone (its key deleted): the worker writes again, under its new
    // lineage.
    bucket.delete("worker-4", None).await.unwrap();
    wait_until(Duration::from_secs(2), "our heartbeat again", || async {
        value_of(&*bucket, "worker-4")
            .await
            .is_some_and(|v| ours(&v) && v.lapses == 1)
    })
    .await
    .unwrap();
    old.stop().await.unwrap();
}
