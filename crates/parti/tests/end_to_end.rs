//! SPEC §11 scenario 12: messages end to end. A producer publishes sequenced messages to 200
//! partitions of a work-queue stream while 5 workers (Manager + WorkerConsumer) process them,
//! and the test crashes a worker, adds two, removes one gracefully and kills the leader. When
//! the producer has stopped and the cluster is quiet, every message was processed at least once,
//! each by a worker that held its partition at that instant (the ownership checker judges the
//! holdings and the handled messages of every worker).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::{self, RetentionPolicy};
use async_nats::jetstream::{self, Message};
use common::*;
use parti::error::BoxError;
use parti::{Config, Manager, WorkerConsumer};
use parti_testkit::checker::{History, ProcessedRecord, SentRecord};
use parti_testkit::wait_until;

const PARTITIONS: usize = 200;
const STREAM: &str = "E2E";

/// One handled message: the worker's slot, when (ns), its partition and sequence.
type Handled = (usize, u64, String, u64);
/// A started worker: its ID and instance.
type Started = Option<(String, String)>;

/// Every message handled: by which worker (its slot in `instances`), when, which one.
#[derive(Clone, Default)]
struct Processed {
    handled: Arc<Mutex<Vec<Handled>>>,
    /// The worker ID and instance of each worker, by slot, once started.
    instances: Arc<Mutex<Vec<Started>>>,
}

impl Processed {
    /// A slot for a new worker.
    fn slot(&self) -> usize {
        let mut instances = self.instances.lock().unwrap();
        instances.push(None);
        instances.len() - 1
    }
    fn started(&self, slot: usize, manager: &Manager) {
        self.instances.lock().unwrap()[slot] = Some((
            manager.worker_id().to_string(),
            manager.instance_id().to_owned(),
        ));
    }
    fn record(&self, slot: usize, subject: &str, payload: &[u8]) {
        let partition = subject.trim_start_matches("e2e.").to_owned();
        let seq = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        self.handled
            .lock()
            .unwrap()
            .push((slot, parti::ownership::now_ns(), partition, seq));
    }
    fn seen(&self) -> BTreeSet<(String, u64)> {
        let handled = self.handled.lock().unwrap();
        handled.iter().map(|(_, _, p, s)| (p.clone(), *s)).collect()
    }
    fn records(&self) -> Vec<ProcessedRecord> {
        let instances = self.instances.lock().unwrap();
        let handled = self.handled.lock().unwrap();
        handled
            .iter()
            .map(|(slot, at_ns, partition, seq)| {
                let (worker, instance) = instances[*slot].clone().unwrap_or_default();
                ProcessedRecord {
                    at_ns: *at_ns,
                    worker,
                    instance,
                    partition: partition.clone(),
                    seq: *seq,
                }
            })
            .collect()
    }
}

/// A JetStream context on `cluster`'s server, with the work-queue stream of the test created.
async fn work_queue(cluster: &TestCluster) -> jetstream::Context {
    let js = jetstream::new(cluster.server.client().await.unwrap());
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["e2e.>".into()],
        retention: RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

async fn worker(cluster: &TestCluster, processed: &Processed) -> Manager {
    let client = cluster.server.client().await.unwrap();
    let js = jetstream::new(client);
    let processed = processed.clone();
    let slot = processed.slot();
    let recorder = processed.clone();
    let consumer = WorkerConsumer::builder(js.clone(), STREAM)
        .subject_template("e2e.{partition}")
        .consumer_prefix("e2e")
        .check_interval(Duration::from_millis(300))
        .ack_wait(Duration::from_secs(2))
        .takeover_after(Duration::from_secs(2))
        .handler(move |msg: Message| {
            let processed = processed.clone();
            async move {
                processed.record(slot, &msg.subject, &msg.payload);
                Ok::<(), BoxError>(())
            }
        })
        .build()
        .await
        .unwrap();
    let manager = cluster
        .builder(cluster.server.client().await.unwrap())
        .consumer(consumer)
        .start()
        .await
        .unwrap();
    recorder.started(slot, &manager);
    manager
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_every_message_is_processed_through_crashes_scaling_and_failover() {
    let config = Config::fast_for_tests();
    let cluster = TestCluster::start(config, partitions(PARTITIONS)).await;
    let js = work_queue(&cluster).await;

    let processed = Processed::default();
    let mut workers = Vec::new();
    for w in futures::future::join_all((0..5).map(|_| worker(&cluster, &processed))).await {
        workers.push(w);
    }
    let settled_ns = parti::ownership::now_ns();

    // The producer: round-robin over the partitions, each message acknowledged by the stream.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn({
        let (js, stop, sent) = (js.clone(), stop.clone(), sent.clone());
        async move {
            let mut published = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for p in 0..PARTITIONS {
                    let subject = format!("e2e.p{p}");
                    // Retry until stored: a message counts only once the stream has it.
                    loop {
                        let ack = match js.publish(subject.clone(), seq.to_string().into()).await {
                            Ok(ack) => ack.await,
                            Err(e) => Err(e),
                        };
                        if ack.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    published.push(SentRecord {
                        at_ns: parti::ownership::now_ns(),
                        partition: format!("p{p}"),
                        seq,
                    });
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            published
        }
    });
    let progress = |n: u64| {
        let sent = sent.clone();
        async move {
            let target = sent.load(Ordering::Relaxed) + n;
            wait_until(
                Duration::from_secs(20),
                "the producer to make progress",
                || {
                    let sent = sent.clone();
                    async move { sent.load(Ordering::Relaxed) >= target }
                },
            )
            .await
            .unwrap();
        }
    };
    progress(400).await;

    // Crash a follower.
    let victim = workers.iter().position(|m| !m.is_leader()).unwrap();
    cluster.kill(&workers.remove(victim)).await;
    progress(400).await;
    // Add two.
    for w in futures::future::join_all((0..2).map(|_| worker(&cluster, &processed))).await {
        workers.push(w);
    }
    progress(400).await;
    // Remove one gracefully.
    let leaving = workers.iter().position(|m| !m.is_leader()).unwrap();
    workers.remove(leaving).stop().await.unwrap();
    progress(400).await;
    // Kill the leader.
    let leader = workers.iter().position(|m| m.is_leader()).unwrap();
    cluster.kill(&workers.remove(leader)).await;
    progress(400).await;

    stop.store(true, Ordering::Relaxed);
    let published = producer.await.unwrap();
    let ids: Vec<_> = {
        let mut ids: Vec<_> = workers.iter().map(Manager::worker_id).collect();
        ids.sort();
        ids
    };
    cluster.wait_for_map(&ids, Duration::from_secs(30)).await;

    let missing = || {
        let seen = processed.seen();
        published
            .iter()
            .filter(|m| !seen.contains(&(m.partition.clone(), m.seq)))
            .count()
    };
    let drained = wait_until(
        Duration::from_secs(60),
        "every published message processed",
        || async { missing() == 0 },
    )
    .await;
    println!(
        "s12: sent {}, processed {} distinct, missing {}",
        published.len(),
        processed.seen().len(),
        missing()
    );
    if drained.is_err() {
        let seen = processed.seen();
        let lost: Vec<&SentRecord> = published
            .iter()
            .filter(|m| !seen.contains(&(m.partition.clone(), m.seq)))
            .collect();
        explain_missing(&js, &lost).await;
    }
    assert!(
        drained.is_ok(),
        "{} messages were never processed",
        missing()
    );
    // Each message handled by the worker that held its partition at that instant, holdings
    // exclusive, nothing lost.
    let report = cluster
        .check_history(History {
            processed: processed.records(),
            sent: published,
            window: (settled_ns, parti::ownership::now_ns()),
            ..History::default()
        })
        .await;
    println!("{report}");
    assert!(report.is_clean(), "the ownership checker found violations");
    for m in &workers {
        m.stop().await.unwrap();
    }
}

/// Prints, for a failed drain, where the missing messages are: still stored or gone, and the
/// state of every consumer of the stream (filters, positions, pending).
async fn explain_missing(js: &jetstream::Context, lost: &[&SentRecord]) {
    let Ok(stream) = js.get_stream(STREAM).await else {
        println!("s12: the stream is gone");
        return;
    };
    for m in lost.iter().take(40) {
        let subject = format!("e2e.{}", m.partition);
        let stored = stream.get_first_raw_message_by_subject(&subject, 0).await;
        println!(
            "s12: missing {} seq {} sent at {} ns; oldest stored on {subject}: {:?}",
            m.partition,
            m.seq,
            m.at_ns,
            stored.map(|r| (r.sequence, String::from_utf8_lossy(&r.payload).into_owned()))
        );
    }
    let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(stream.consumer_names())
        .await
        .into_iter()
        .flatten()
        .collect();
    for name in names {
        if let Ok(info) = stream.consumer_info(&name).await {
            let filters = if info.config.filter_subjects.is_empty() {
                vec![info.config.filter_subject.clone()]
            } else {
                info.config.filter_subjects.clone()
            };
            let missing_in: Vec<&String> = filters
                .iter()
                .filter(|f| {
                    lost.iter()
                        .any(|m| f.ends_with(&format!(".{}", m.partition)))
                })
                .collect();
            println!(
                "s12: consumer {name}: {} filters (of the missing: {missing_in:?}), delivered {}, ack floor {}, ack pending {}, pending {}, redelivered {}",
                filters.len(),
                info.delivered.stream_sequence,
                info.ack_floor.stream_sequence,
                info.num_ack_pending,
                info.num_pending,
                info.num_redelivered,
            );
        }
    }
}

/// A killed manager is a dead process: a handler call running when `kill` is called has
/// finished before `kill` returns (the checker would otherwise see a message handled after
/// the holding ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_call_running_at_a_kill_ends_before_kill_returns() {
    let cluster = TestCluster::start(Config::fast_for_tests(), partitions(1)).await;
    let js = work_queue(&cluster).await;
    let entered = Arc::new(AtomicBool::new(false));
    let finished_ns = Arc::new(AtomicU64::new(0));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let consumer = WorkerConsumer::builder(js.clone(), STREAM)
        .subject_template("e2e.{partition}")
        .consumer_prefix("e2e")
        .handler({
            let (entered, finished_ns) = (entered.clone(), finished_ns.clone());
            move |_msg: Message| {
                let (entered, finished_ns, released) =
                    (entered.clone(), finished_ns.clone(), released.clone());
                async move {
                    entered.store(true, Ordering::SeqCst);
                    // Blocks the poll itself, as CPU-bound handler work does: an abort cannot
                    // cut it short, only wait for it.
                    let _ = released
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(10));
                    finished_ns.store(parti::ownership::now_ns(), Ordering::SeqCst);
                    Ok::<(), BoxError>(())
                }
            }
        })
        .build()
        .await
        .unwrap();
    let manager = Arc::new(
        cluster
            .builder(cluster.server.client().await.unwrap())
            .consumer(consumer)
            .start()
            .await
            .unwrap(),
    );
    js.publish("e2e.p0", "0".into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "the handler to be called", || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) }
    })
    .await
    .unwrap();

    let mut kill = tokio::spawn({
        let manager = manager.clone();
        async move {
            manager.kill().await;
            parti::ownership::now_ns()
        }
    });
    // Give `kill` the chance to return early (it must not: the handler is still running).
    let early = tokio::time::timeout(Duration::from_millis(300), &mut kill).await;
    release.send(()).unwrap();
    let killed_ns = match early {
        Ok(done) => done.unwrap(),
        Err(_) => kill.await.unwrap(),
    };
    let finished_ns = finished_ns.load(Ordering::SeqCst);
    assert!(
        finished_ns != 0 && finished_ns <= killed_ns,
        "the handler call finished at {finished_ns}, after kill returned at {killed_ns}"
    );
}
