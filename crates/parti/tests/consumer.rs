//! `WorkerConsumer` against a real nats-server (SPEC §9).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::{self, RetentionPolicy};
use async_nats::jetstream::{self, Message};
use futures::TryStreamExt;
use parti::error::BoxError;
use parti::{Assignment, ConsumerStatus, Error, Lifecycle, Partition, WorkerConsumer, WorkerId};
use parti_testkit::{FaultProxy, NatsCluster, NatsServer, wait_until};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);
const STREAM: &str = "EVENTS";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn setup(retention: RetentionPolicy) -> (NatsServer, jetstream::Context) {
    init_tracing();
    let server = NatsServer::start().await.expect("nats-server");
    let js = jetstream::new(server.client().await.expect("connect"));
    create_stream(&js, retention, 1).await;
    (server, js)
}

async fn create_stream(js: &jetstream::Context, retention: RetentionPolicy, replicas: usize) {
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["events.>".into()],
        retention,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .expect("stream");
}

fn assignment(keys: &[&str]) -> Assignment {
    let partitions = keys
        .iter()
        .map(|k| Partition::new([*k], 100).unwrap())
        .collect();
    Assignment::new(0, Lifecycle::ColdStart, partitions)
}

/// Every message handled, as (subject, payload), in order of handling.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String)>>>);

impl Seen {
    fn all(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().clone()
    }
    fn payloads(&self) -> BTreeSet<String> {
        self.all().into_iter().map(|(_, p)| p).collect()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn has_all(&self, expected: &BTreeSet<String>) -> bool {
        self.payloads().is_superset(expected)
    }
}

async fn consumer(js: &jetstream::Context, seen: &Seen) -> WorkerConsumer {
    builder(js, seen).build().await.expect("build")
}

fn builder(js: &jetstream::Context, seen: &Seen) -> parti::WorkerConsumerBuilder {
    let seen = seen.clone();
    WorkerConsumer::builder(js.clone(), STREAM)
        .subject_template("events.{partition}")
        .check_interval(Duration::from_millis(300))
        .ack_wait(Duration::from_secs(2))
        .handler(move |msg: Message| {
            let seen = seen.clone();
            async move {
                let payload = String::from_utf8_lossy(&msg.payload).into_owned();
                seen.0
                    .lock()
                    .unwrap()
                    .push((msg.subject.to_string(), payload));
                Ok::<(), BoxError>(())
            }
        })
}

/// Publishes `payload` to `events.{partition}` and waits for the stream's ack.
async fn publish(js: &jetstream::Context, partition: &str, payload: &str) {
    js.publish(format!("events.{partition}"), payload.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

async fn info(js: &jetstream::Context, name: &str) -> jetstream::consumer::Info {
    let stream = js.get_stream(STREAM).await.unwrap();
    stream.consumer_info(name).await.expect("consumer info")
}

fn filters(info: &jetstream::consumer::Info) -> Vec<String> {
    let mut all = info.config.filter_subjects.clone();
    if !info.config.filter_subject.is_empty() {
        all.push(info.config.filter_subject.clone());
    }
    all.sort();
    all
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn stream_messages(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_is_updated_in_place_without_restarting_the_loop() {
    let (_server, js) = setup(RetentionPolicy::Limits).await;
    let seen = Seen::default();
    let c = consumer(&js, &seen).await;
    let w = WorkerId::new("worker-0");

    c.update_assignment(&w, &assignment(&["b", "a", "a"]))
        .await
        .unwrap();
    let before = info(&js, "parti-worker-0").await;
    assert_eq!(
        filters(&before),
        ["events.a", "events.b"],
        "rendered, sorted, de-duplicated"
    );
    publish(&js, "a", "a1").await;
    wait_until(DEADLINE, "a1 to be handled", || async {
        seen.has_all(&set(&["a1"]))
    })
    .await
    .unwrap();

    c.update_assignment(&w, &assignment(&["a", "c"]))
        .await
        .unwrap();
    let after = info(&js, "parti-worker-0").await;
    assert_eq!(filters(&after), ["events.a", "events.c"]);
    assert_eq!(
        after.created, before.created,
        "updated in place, not recreated"
    );
    publish(&js, "c", "c1").await;
    publish(&js, "b", "b1").await;
    publish(&js, "a", "a2").await;
    wait_until(DEADLINE, "c1 and a2 to be handled", || async {
        seen.has_all(&set(&["c1", "a2"]))
    })
    .await
    .unwrap();
    assert!(
        !seen.payloads().contains("b1"),
        "a removed subject is no longer delivered"
    );

    let health = c.health();
    assert_eq!(
        health.loop_restarts, 0,
        "the message loop never reopened: {health:?}"
    );
    assert_eq!(health.status, ConsumerStatus::Running);
    assert_eq!(health.subjects, 2);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_subject_set_is_a_no_op_without_any_server_call() {
    let (mut server, js) = setup(RetentionPolicy::Limits).await;
    let seen = Seen::default();
    let c = consumer(&js, &seen).await;
    let w = WorkerId::new("worker-0");
    c.update_assignment(&w, &assignment(&["a", "b"]))
        .await
        .unwrap();
    let updates = c.health().updates;

    // With the server gone, only a call that never reaches it can succeed at once.
    server.stop().await.unwrap();
    let same = tokio::time::timeout(
        Duration::from_secs(1),
        c.update_assignment(&w, &assignment(&["b", "a", "b"])),
    )
    .await
    .expect("no server round trip");
    same.unwrap();
    assert_eq!(c.health().updates, updates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_assignment_pauses_and_is_never_an_unfiltered_consumer() {
    let (_server, js) = setup(RetentionPolicy::Limits).await;
    let seen = Seen::default();
    let c = consumer(&js, &seen).await;
    let w = WorkerId::new("worker-0");
    c.update_assignment(&w, &assignment(&["a"])).await.unwrap();
    c.update_assignment(&w, &assignment(&[])).await.unwrap();
    assert_eq!(c.health().status, ConsumerStatus::Paused);

    for p in ["a", "b", "c"] {
        publish(&js, p, &format!("{p}1")).await;
    }
    let stream = js.get_stream(STREAM).await.unwrap();
    let consumers: Vec<_> = stream.consumers().try_collect().await.unwrap();
    assert_eq!(consumers.len(), 1);
    for consumer in &consumers {
        assert!(
            !filters(consumer).is_empty(),
            "{} has no filter",
            consumer.name
        );
    }
    let paused = info(&js, "parti-worker-0").await;
    assert_eq!(filters(&paused), ["_parti.paused.parti-worker-0"]);
    // The server has nothing to deliver and nothing delivered to this consumer.
    assert_eq!(paused.num_pending, 0);
    assert_eq!(paused.num_ack_pending, 0);
    assert_eq!(seen.count(), 0);

    // Resuming delivers what was published while paused (it is the backlog of a gained subject).
    c.update_assignment(&w, &assignment(&["b"])).await.unwrap();
    wait_until(DEADLINE, "b1 after resuming", || async {
        seen.has_all(&set(&["b1"]))
    })
    .await
    .unwrap();
    c.close().await.unwrap();
}

/// A consumer of `worker-0` on partition `one` that has processed `one-0`…`one-3`, stored
/// around `two-0`…`two-2`: its position and ack floor are past the `two` backlog.
async fn consuming_one_past_a_two_backlog(
    js: &jetstream::Context,
) -> (Seen, WorkerConsumer, WorkerId) {
    let seen = Seen::default();
    let c = consumer(js, &seen).await;
    let w = WorkerId::new("worker-0");
    c.update_assignment(&w, &assignment(&["one"]))
        .await
        .unwrap();
    for i in 0..3 {
        publish(js, "one", &format!("one-{i}")).await;
        publish(js, "two", &format!("two-{i}")).await;
    }
    publish(js, "one", "one-3").await;
    let ones = set(&["one-0", "one-1", "one-2", "one-3"]);
    wait_until(DEADLINE, "every `one` message, acked", || async {
        seen.has_all(&ones) && info(js, "parti-worker-0").await.ack_floor.stream_sequence >= 7
    })
    .await
    .unwrap();
    (seen, c, w)
}

/// The no-rewind hazard: a durable whose filter gains a subject never delivers that subject's
/// messages below its position. They must be drained.
async fn backlog_of_gained_subject_is_delivered(retention: RetentionPolicy) {
    let (_server, js) = setup(retention).await;
    let (seen, c, w) = consuming_one_past_a_two_backlog(&js).await;
    let position = info(&js, "parti-worker-0").await.delivered.stream_sequence;
    assert_eq!(position, 7, "the durable is past the `two` backlog");

    c.update_assignment(&w, &assignment(&["one", "two"]))
        .await
        .unwrap();
    publish(&js, "two", "two-new").await;
    let twos = set(&["two-0", "two-1", "two-2", "two-new"]);
    wait_until(
        DEADLINE,
        "the `two` backlog and the new message",
        || async { seen.has_all(&twos) },
    )
    .await
    .unwrap();
    wait_until(DEADLINE, "the drain to finish", || async {
        c.health().catching_up == 0
    })
    .await
    .unwrap();
    if retention == RetentionPolicy::WorkQueue {
        wait_until(DEADLINE, "the work queue to be empty", || async {
            stream_messages(&js).await == 0
        })
        .await
        .unwrap();
    }
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_of_a_gained_subject_is_delivered_on_limits_stream() {
    backlog_of_gained_subject_is_delivered(RetentionPolicy::Limits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_of_a_gained_subject_is_delivered_on_work_queue_stream() {
    backlog_of_gained_subject_is_delivered(RetentionPolicy::WorkQueue).await;
}

/// nats-server deletes, unprocessed, every stored message of a work-queue durable's filter at
/// or below its position that is not pending on it — in a cluster on a consumer leader change
/// (as here), a snapshot, and every ~2 minutes. A gained subject's backlog lies below the
/// position, so the durable must be moved back before the write that gains it, not after:
/// a leader change right after the gain keeps the backlog (seen as message loss in chaos runs
/// on a 3-node cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_backlog_of_a_gained_subject_survives_a_consumer_leader_change() {
    init_tracing();
    let cluster = NatsCluster::start(3).await.expect("nats cluster");
    let js = jetstream::new(cluster.client().await.expect("connect"));
    create_stream(&js, RetentionPolicy::WorkQueue, 3).await;
    let (seen, c, w) = consuming_one_past_a_two_backlog(&js).await;

    c.update_assignment(&w, &assignment(&["one", "two"]))
        .await
        .unwrap();
    let stepped: serde_json::Value = js
        .request(
            format!("CONSUMER.LEADER.STEPDOWN.{STREAM}.parti-worker-0"),
            &serde_json::json!({}),
        )
        .await
        .expect("consumer leader step-down");
    assert_eq!(stepped["success"], true, "{stepped}");
    let twos = set(&["two-0", "two-1", "two-2"]);
    wait_until(
        DEADLINE,
        "the `two` backlog after the leader change",
        || async { seen.has_all(&twos) },
    )
    .await
    .unwrap();
    wait_until(DEADLINE, "the work queue to be empty", || async {
        stream_messages(&js).await == 0
    })
    .await
    .unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_handoff_resumes_where_the_previous_owner_stopped() {
    let (_server, js) = setup(RetentionPolicy::Limits).await;
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let a = consumer(&js, &seen_a).await;
    let b = consumer(&js, &seen_b).await;
    let (wa, wb) = (WorkerId::new("worker-a"), WorkerId::new("worker-b"));
    a.update_assignment(&wa, &assignment(&["p"])).await.unwrap();
    b.update_assignment(&wb, &assignment(&["q"])).await.unwrap();
    let old: BTreeSet<String> = (0..20).map(|i| format!("p-{i}")).collect();
    for p in &old {
        publish(&js, "p", p).await;
    }
    wait_until(DEADLINE, "a to handle p's messages", || async {
        seen_a.has_all(&old)
    })
    .await
    .unwrap();
    wait_until(DEADLINE, "a to ack them", || async {
        info(&js, "parti-worker-a").await.num_ack_pending == 0
    })
    .await
    .unwrap();

    a.update_assignment(&wa, &assignment(&[])).await.unwrap();
    b.update_assignment(&wb, &assignment(&["p", "q"]))
        .await
        .unwrap();
    publish(&js, "p", "p-new").await;
    wait_until(DEADLINE, "b to handle p-new", || async {
        seen_b.has_all(&set(&["p-new"]))
    })
    .await
    .unwrap();
    wait_until(DEADLINE, "b's drain to finish", || async {
        b.health().catching_up == 0
    })
    .await
    .unwrap();
    let replayed: Vec<_> = seen_b.payloads().intersection(&old).cloned().collect();
    assert!(
        replayed.is_empty(),
        "b replayed what a had processed: {replayed:?}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Handler that records payloads per worker and takes a little time, so hand-offs happen
/// with messages in flight.
fn slow_builder(js: &jetstream::Context, seen: &Seen) -> parti::WorkerConsumerBuilder {
    let seen = seen.clone();
    WorkerConsumer::builder(js.clone(), STREAM)
        .check_interval(Duration::from_millis(300))
        .ack_wait(Duration::from_secs(2))
        .takeover_after(Duration::from_secs(30))
        .handler(move |msg: Message| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let payload = String::from_utf8_lossy(&msg.payload).into_owned();
                seen.0
                    .lock()
                    .unwrap()
                    .push((msg.subject.to_string(), payload));
                Ok::<(), BoxError>(())
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_handoff_between_two_workers_loses_nothing() {
    let (_server, js) = setup(RetentionPolicy::WorkQueue).await;
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let a = slow_builder(&js, &seen_a).build().await.unwrap();
    let b = slow_builder(&js, &seen_b).build().await.unwrap();
    let (wa, wb) = (WorkerId::new("worker-a"), WorkerId::new("worker-b"));
    let parts = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];
    a.update_assignment(&wa, &assignment(&parts[..4]))
        .await
        .unwrap();
    b.update_assignment(&wb, &assignment(&parts[4..]))
        .await
        .unwrap();

    // A producer publishing sequenced messages to every partition throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn({
        let (js, stop, sent) = (js.clone(), Arc::clone(&stop), Arc::clone(&sent));
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for p in parts {
                    publish(&js, p, &format!("{p}-{n}")).await;
                }
                n += 1;
                sent.store(n, Ordering::Relaxed);
            }
        }
    });
    let sent_at_least = |n: u64| {
        let sent = Arc::clone(&sent);
        move || {
            let sent = Arc::clone(&sent);
            async move { sent.load(Ordering::Relaxed) >= n }
        }
    };
    wait_until(DEADLINE, "some traffic", sent_at_least(20))
        .await
        .unwrap();

    // p2 and p3 move from a to b, but b hears of it first: its add must wait for a's removal.
    b.update_assignment(&wb, &assignment(&["p2", "p3", "p4", "p5", "p6", "p7"]))
        .await
        .unwrap();
    assert_eq!(
        b.health().waiting_subjects,
        2,
        "held by a: {:?}",
        b.health()
    );
    wait_until(DEADLINE, "more traffic", sent_at_least(40))
        .await
        .unwrap();
    a.update_assignment(&wa, &assignment(&["p0", "p1"]))
        .await
        .unwrap();
    wait_until(DEADLINE, "b to get p2 and p3", || async {
        b.health().waiting_subjects == 0
    })
    .await
    .unwrap();

    // p7 moves back the other way, both updates at once.
    let (next_a, next_b) = (
        assignment(&["p0", "p1", "p7"]),
        assignment(&["p2", "p3", "p4", "p5", "p6"]),
    );
    let (ra, rb) = tokio::join!(
        a.update_assignment(&wa, &next_a),
        b.update_assignment(&wb, &next_b)
    );
    ra.unwrap();
    rb.unwrap();
    wait_until(DEADLINE, "a to get p7", || async {
        a.health().waiting_subjects == 0
    })
    .await
    .unwrap();
    wait_until(DEADLINE, "more traffic", sent_at_least(80))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();

    let n = sent.load(Ordering::Relaxed);
    let expected: BTreeSet<String> = (0..n)
        .flat_map(|i| parts.map(|p| format!("{p}-{i}")))
        .collect();
    wait_until(DEADLINE, "every message handled", || async {
        let mut all = seen_a.payloads();
        all.extend(seen_b.payloads());
        all.is_superset(&expected)
    })
    .await
    .unwrap();
    wait_until(DEADLINE, "the work queue to be empty", || async {
        stream_messages(&js).await == 0
    })
    .await
    .unwrap();
    let handled = seen_a.count() + seen_b.count();
    eprintln!(
        "work-queue hand-off: {} messages, {} handled ({} duplicates)",
        expected.len(),
        handled,
        handled - expected.len()
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_subjects_of_a_crashed_worker_are_taken_over() {
    let (_server, js) = setup(RetentionPolicy::WorkQueue).await;
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let a = consumer(&js, &seen_a).await;
    let b = builder(&js, &seen_b)
        .takeover_after(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let (wa, wb) = (WorkerId::new("worker-a"), WorkerId::new("worker-b"));
    a.update_assignment(&wa, &assignment(&["p", "q"]))
        .await
        .unwrap();
    b.update_assignment(&wb, &assignment(&["r"])).await.unwrap();
    drop(a); // a crash: nothing released
    for i in 0..5 {
        publish(&js, "p", &format!("p-{i}")).await;
    }

    b.update_assignment(&wb, &assignment(&["p", "r"]))
        .await
        .unwrap();
    assert_eq!(b.health().waiting_subjects, 1);
    let ps: BTreeSet<String> = (0..5).map(|i| format!("p-{i}")).collect();
    wait_until(DEADLINE, "b to take p over and drain it", || async {
        seen_b.has_all(&ps)
    })
    .await
    .unwrap();
    let crashed = info(&js, "parti-worker-a").await;
    assert_eq!(
        filters(&crashed),
        ["events.q"],
        "only the assigned subject was taken"
    );
    assert!(seen_a.count() == 0);
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_messages_a_crashed_worker_had_in_flight_reach_the_worker_that_takes_over() {
    let (_server, js) = setup(RetentionPolicy::WorkQueue).await;
    let seen_b = Seen::default();
    // a's handler never returns: what a was delivered stays in flight (unacked) on its durable.
    let a = WorkerConsumer::builder(js.clone(), STREAM)
        .subject_template("events.{partition}")
        .check_interval(Duration::from_millis(300))
        .ack_wait(Duration::from_secs(1))
        .handler(|_msg: Message| async move {
            std::future::pending::<()>().await;
            Ok::<(), BoxError>(())
        })
        .build()
        .await
        .unwrap();
    let b = builder(&js, &seen_b)
        .takeover_after(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let (wa, wb) = (WorkerId::new("worker-a"), WorkerId::new("worker-b"));
    a.update_assignment(&wa, &assignment(&["p"])).await.unwrap();
    b.update_assignment(&wb, &assignment(&["r"])).await.unwrap();
    for i in 0..5 {
        publish(&js, "p", &format!("p-{i}")).await;
    }
    wait_until(DEADLINE, "a to have p's messages in flight", || async {
        info(&js, "parti-worker-a").await.num_ack_pending == 5
    })
    .await
    .unwrap();
    drop(a); // a crash: nothing released, nothing acked

    b.update_assignment(&wb, &assignment(&["p", "r"]))
        .await
        .unwrap();
    let ps: BTreeSet<String> = (0..5).map(|i| format!("p-{i}")).collect();
    wait_until(DEADLINE, "b to process what a had in flight", || async {
        seen_b.has_all(&ps)
    })
    .await
    .unwrap();
    b.close().await.unwrap();
}

/// A server, a consumer for `worker-0` assigned partition `a`, and one message ("before")
/// already processed through it.
async fn consuming_partition_a(
    retention: RetentionPolicy,
) -> (NatsServer, jetstream::Context, Seen, WorkerConsumer) {
    let (server, js) = setup(retention).await;
    let seen = Seen::default();
    let c = consumer(&js, &seen).await;
    let w = WorkerId::new("worker-0");
    c.update_assignment(&w, &assignment(&["a"])).await.unwrap();
    publish(&js, "a", "before").await;
    wait_until(DEADLINE, "the first message", || async {
        seen.has_all(&set(&["before"]))
    })
    .await
    .unwrap();
    (server, js, seen, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_deleted_externally_is_recreated_and_consumption_resumes() {
    let (_server, js, seen, c) = consuming_partition_a(RetentionPolicy::Limits).await;

    let stream = js.get_stream(STREAM).await.unwrap();
    stream.delete_consumer("parti-worker-0").await.unwrap();
    publish(&js, "a", "after").await;
    wait_until(
        DEADLINE,
        "the message published after the deletion",
        || async { seen.has_all(&set(&["after"])) },
    )
    .await
    .unwrap();
    assert_eq!(filters(&info(&js, "parti-worker-0").await), ["events.a"]);
    wait_until(DEADLINE, "a healthy consumer", || async {
        c.health().is_healthy()
    })
    .await
    .unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_a_server_restart() {
    let (mut server, js, seen, c) = consuming_partition_a(RetentionPolicy::WorkQueue).await;

    server.restart().await.unwrap();
    wait_until(
        DEADLINE,
        "a publish to succeed after the restart",
        || async {
            match js.publish("events.a", "after".into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await
    .unwrap();
    wait_until(
        DEADLINE,
        "the message published after the restart",
        || async { seen.has_all(&set(&["after"])) },
    )
    .await
    .unwrap();
    wait_until(DEADLINE, "a healthy consumer", || async {
        c.health().is_healthy()
    })
    .await
    .unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_messages_are_redelivered() {
    let (_server, js) = setup(RetentionPolicy::WorkQueue).await;
    let attempts: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let c = WorkerConsumer::builder(js.clone(), STREAM)
        .handler({
            let attempts = Arc::clone(&attempts);
            move |msg: Message| {
                let attempts = Arc::clone(&attempts);
                async move {
                    let payload = String::from_utf8_lossy(&msg.payload).into_owned();
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        let n = a.entry(payload).or_default();
                        *n += 1;
                        *n
                    };
                    if n < 3 {
                        Err::<(), BoxError>("not yet".into())
                    } else {
                        Ok(())
                    }
                }
            }
        })
        .build()
        .await
        .unwrap();
    c.update_assignment(&WorkerId::new("w"), &assignment(&["a"]))
        .await
        .unwrap();
    publish(&js, "a", "m").await;
    wait_until(
        DEADLINE,
        "the third attempt to succeed and be acked",
        || async { stream_messages(&js).await == 0 },
    )
    .await
    .unwrap();
    assert_eq!(attempts.lock().unwrap()["m"], 3);
    assert_eq!(c.health().failed, 2);
    assert_eq!(c.health().processed, 1);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_max_subjects_and_worker_id_change() {
    let (_server, js) = setup(RetentionPolicy::Limits).await;
    let seen = Seen::default();
    let c = builder(&js, &seen).max_subjects(2).build().await.unwrap();
    let w = WorkerId::new("worker-0");
    let err = c
        .update_assignment(&w, &assignment(&["a", "b", "c"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooManySubjects { count: 3, max: 2 }),
        "{err}"
    );

    c.update_assignment(&w, &assignment(&["a"])).await.unwrap();
    let err = c
        .update_assignment(&WorkerId::new("worker-1"), &assignment(&["a"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkerIdChanged { .. }), "{err}");
    assert_eq!(
        filters(&info(&js, "parti-worker-0").await),
        ["events.a"],
        "nothing changed"
    );

    let allowed = builder(&js, &seen)
        .allow_worker_id_change(true)
        .build()
        .await
        .unwrap();
    allowed
        .update_assignment(&WorkerId::new("worker-5"), &assignment(&["b"]))
        .await
        .unwrap();
    allowed
        .update_assignment(&WorkerId::new("worker-6"), &assignment(&["b"]))
        .await
        .unwrap();
    assert_eq!(allowed.health().consumer.as_deref(), Some("parti-worker-6"));
    assert_eq!(filters(&info(&js, "parti-worker-6").await), ["events.b"]);
    c.close().await.unwrap();
    allowed.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_checks_the_configuration_and_the_stream() {
    let (_server, js) = setup(RetentionPolicy::Limits).await;
    let seen = Seen::default();
    let err = builder(&js, &seen)
        .subject_template("events")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let err = WorkerConsumer::builder(js.clone(), STREAM)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("handler"), "{err}");
    let err = WorkerConsumer::builder(js.clone(), "MISSING")
        .handler(|_: Message| async { Ok::<(), BoxError>(()) })
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Consumer { .. }), "{err}");
    // The cause stays typed: the async-nats error itself.
    let cause = std::error::Error::source(&err);
    assert!(
        cause.is_some_and(|c| c.is::<async_nats::jetstream::context::GetStreamError>()),
        "{cause:?}"
    );
}

/// One handler call as the handler itself saw it.
#[derive(Debug, Clone)]
struct Call {
    subject: String,
    payload: String,
    start: Instant,
    end: Option<Instant>,
}

/// The handler's own log of its calls, with timestamps taken inside the handler.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
    fn payloads(&self) -> BTreeSet<String> {
        self.all().into_iter().map(|c| c.payload).collect()
    }
    fn started(&self, payload: &str) -> bool {
        self.all().iter().any(|c| c.payload == payload)
    }
    /// Calls for `subject`, each of which must have started and ended by `by`.
    fn assert_all_done_by(&self, subject: &str, by: Instant) {
        for call in self.all().iter().filter(|c| c.subject == subject) {
            assert!(
                call.start < by,
                "a call started after the release: {call:?}"
            );
            let end = call.end.expect("every call has returned");
            assert!(end <= by, "a call ended after the release: {call:?}");
        }
    }
}

/// A consumer whose handler logs each call's start and end and takes `pause` (a payload
/// starting with `slow` takes `slow` instead).
fn logging_builder(
    js: &jetstream::Context,
    calls: &Calls,
    pause: Duration,
    slow: Duration,
) -> parti::WorkerConsumerBuilder {
    let calls = calls.clone();
    WorkerConsumer::builder(js.clone(), STREAM)
        .check_interval(Duration::from_millis(300))
        .ack_wait(Duration::from_secs(2))
        .nak_delay(Duration::from_millis(200))
        .handler(move |msg: Message| {
            let calls = calls.clone();
            async move {
                let payload = String::from_utf8_lossy(&msg.payload).into_owned();
                let delay = if payload.starts_with("slow") {
                    slow
                } else {
                    pause
                };
                let index = {
                    let mut log = calls.0.lock().unwrap();
                    log.push(Call {
                        subject: msg.subject.to_string(),
                        payload,
                        start: Instant::now(),
                        end: None,
                    });
                    log.len() - 1
                };
                tokio::time::sleep(delay).await;
                calls.0.lock().unwrap()[index].end = Some(Instant::now());
                Ok::<(), BoxError>(())
            }
        })
}

fn partitions(keys: &[&str]) -> Vec<Partition> {
    assignment(keys).partitions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_partitions_get_no_handler_call_even_with_nats_cut_off() {
    let (server, js) = setup(RetentionPolicy::Limits).await;
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let through_proxy = jetstream::new(
        parti_testkit::connect_options()
            .ignore_discovered_servers()
            .connect(proxy.url())
            .await
            .unwrap(),
    );
    let calls = Calls::default();
    let c = logging_builder(
        &through_proxy,
        &calls,
        Duration::from_millis(10),
        Duration::ZERO,
    )
    .build()
    .await
    .unwrap();
    let w = WorkerId::new("worker-0");
    c.update_assignment(&w, &assignment(&["a", "b"]))
        .await
        .unwrap();
    c.set_held(&partitions(&["a", "b"])).await;
    for i in 0..100 {
        publish(&js, "a", &format!("a-{i}")).await;
        publish(&js, "b", &format!("b-{i}")).await;
    }
    // The client has pulled a batch and hands it over one message at a time.
    wait_until(DEADLINE, "the first calls", || async {
        calls.all().len() >= 5
    })
    .await
    .unwrap();

    // NATS cut off: releasing `a` is local and immediate.
    proxy.blackhole();
    tokio::time::timeout(Duration::from_secs(1), c.set_held(&partitions(&["b"])))
        .await
        .expect("set_held needs no NATS");
    let released_at = Instant::now();
    // The loop goes on through the messages already pulled: `b` is handled, `a` gated.
    wait_until(
        DEADLINE,
        "b handled and a gated after the release",
        || async {
            let later_b = calls
                .all()
                .iter()
                .any(|c| c.subject == "events.b" && c.start > released_at);
            later_b && c.health().gated > 0
        },
    )
    .await
    .unwrap();
    calls.assert_all_done_by("events.a", released_at);

    // NATS back: releasing everything.
    proxy.pass();
    c.set_held(&[]).await;
    let released_at = Instant::now();
    let gated = c.health().gated;
    for i in 100..110 {
        publish(&js, "a", &format!("a-{i}")).await;
        publish(&js, "b", &format!("b-{i}")).await;
    }
    wait_until(DEADLINE, "the new messages to be gated", || async {
        c.health().gated >= gated + 20
    })
    .await
    .unwrap();
    calls.assert_all_done_by("events.a", released_at);
    calls.assert_all_done_by("events.b", released_at);
    assert!(!calls.payloads().iter().any(|p| p.ends_with("-105")));
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_held_waits_for_the_running_call_of_a_released_partition() {
    let (_server, js) = setup(RetentionPolicy::WorkQueue).await;
    let calls = Calls::default();
    let c = logging_builder(&js, &calls, Duration::ZERO, Duration::from_millis(800))
        .build()
        .await
        .unwrap();
    let w = WorkerId::new("worker-0");
    c.update_assignment(&w, &assignment(&["a"])).await.unwrap();
    c.set_held(&partitions(&["a"])).await;
    publish(&js, "a", "slow-1").await;
    wait_until(DEADLINE, "the slow call to start", || async {
        calls.started("slow-1")
    })
    .await
    .unwrap();
    let asked = Instant::now();
    c.set_held(&[]).await;
    let returned = Instant::now();
    let call = calls
        .all()
        .into_iter()
        .find(|c| c.payload == "slow-1")
        .unwrap();
    let end = call
        .end
        .expect("the call has finished when set_held returns");
    assert!(call.start <= asked);
    assert!(end <= returned, "{call:?} ended after set_held returned");
    assert!(
        returned - asked >= Duration::from_millis(200),
        "set_held waited for the call"
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_message_is_processed_by_the_worker_that_gains_the_partition() {
    let (_server, js) = setup(RetentionPolicy::WorkQueue).await;
    let (calls_a, calls_b) = (Calls::default(), Calls::default());
    let a = logging_builder(&js, &calls_a, Duration::ZERO, Duration::ZERO)
        .build()
        .await
        .unwrap();
    let b = logging_builder(&js, &calls_b, Duration::ZERO, Duration::ZERO)
        .build()
        .await
        .unwrap();
    let (wa, wb) = (WorkerId::new("worker-a"), WorkerId::new("worker-b"));
    a.update_assignment(&wa, &assignment(&["p"])).await.unwrap();
    a.set_held(&partitions(&["p"])).await;
    b.update_assignment(&wb, &assignment(&["q"])).await.unwrap();
    b.set_held(&partitions(&["q"])).await;
    let before: BTreeSet<String> = (0..5).map(|i| format!("m-{i}")).collect();
    for m in &before {
        publish(&js, "p", m).await;
    }
    wait_until(DEADLINE, "a to handle the first messages", || async {
        calls_a.payloads().is_superset(&before)
    })
    .await
    .unwrap();

    // Hand-off: a stops holding p first; its filter still delivers p.
    a.set_held(&[]).await;
    let released_at = Instant::now();
    let after: BTreeSet<String> = (5..15).map(|i| format!("m-{i}")).collect();
    for m in &after {
        publish(&js, "p", m).await;
    }
    wait_until(DEADLINE, "a to gate p's new messages", || async {
        a.health().gated >= 10
    })
    .await
    .unwrap();
    // Then the filters move, and b holds p.
    a.update_assignment(&wa, &assignment(&[])).await.unwrap();
    wait_until(DEADLINE, "a to stop redelivering p", || async {
        info(&js, "parti-worker-a").await.num_ack_pending == 0
    })
    .await
    .unwrap();
    b.update_assignment(&wb, &assignment(&["p", "q"]))
        .await
        .unwrap();
    b.set_held(&partitions(&["p", "q"])).await;
    wait_until(DEADLINE, "b to handle what a gated", || async {
        calls_b.payloads().is_superset(&after)
    })
    .await
    .unwrap();
    wait_until(DEADLINE, "the work queue to be empty", || async {
        stream_messages(&js).await == 0
    })
    .await
    .unwrap();
    calls_a.assert_all_done_by("events.p", released_at);
    assert!(calls_a.payloads().is_disjoint(&after));
    a.close().await.unwrap();
    b.close().await.unwrap();
}
