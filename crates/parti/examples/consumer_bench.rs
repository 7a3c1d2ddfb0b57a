//! Throughput of [`WorkerConsumer`] against a plain async-nats pull consumer.
//!
//! ```text
//! cargo run --release -p parti --example consumer_bench               # a summary line
//! cargo run --release -p parti --example consumer_bench -- --json     # one JSON object
//! cargo run --release -p parti --example consumer_bench -- --messages 500000
//! ```
//!
//! Starts one local nats-server (found like the test kit finds it: `$PARTI_NATS_SERVER`,
//! `.tools/bin`, then `PATH`), stores N messages of 1 KiB over 16 partitions in a limits stream,
//! and consumes all of them with each consumer in turn, acking every message: a durable pull
//! consumer with the same 16 filter subjects driven by `messages()`, and a `WorkerConsumer`
//! assigned and *holding* the 16 partitions (so every message goes through the ownership gate,
//! as under a `Manager`) with an empty handler. Each is measured twice, alternating, and
//! the better run counts. `ratio` = WorkerConsumer ÷ plain.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, Message, stream};
use futures::StreamExt;
use parti::error::BoxError;
use parti::{Assignment, Lifecycle, MessageHandler, Partition, WorkerConsumer, WorkerId};
use parti_testkit::NatsServer;
use tokio::sync::Notify;

const STREAM: &str = "BENCH";
const PARTITIONS: usize = 16;
const PAYLOAD: usize = 1024;
const ROUNDS: usize = 2;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let messages: u64 = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);

    let server = NatsServer::start().await?;
    let js = jetstream::new(server.client().await?);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["bench.>".into()],
        ..Default::default()
    })
    .await?;
    let keys: Vec<String> = (0..PARTITIONS).map(|i| format!("p{i}")).collect();
    fill(&js, &keys, messages).await?;

    let (mut raw, mut worker) = (0f64, 0f64);
    for round in 0..ROUNDS {
        raw = raw.max(plain(&js, &keys, messages, round).await?);
        worker = worker.max(worker_consumer(&js, &keys, messages, round).await?);
    }
    let ratio = worker / raw;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "messages": messages,
                "payload_bytes": PAYLOAD,
                "partitions": PARTITIONS,
                "raw_msgs_per_s": raw.round(),
                "worker_consumer_msgs_per_s": worker.round(),
                "ratio": (ratio * 1000.0).round() / 1000.0,
            })
        );
    } else {
        println!(
            "{messages} messages of {PAYLOAD} B: plain pull consumer {raw:.0} msg/s, WorkerConsumer {worker:.0} msg/s, ratio {ratio:.3}"
        );
    }
    Ok(())
}

/// Stores `n` messages round-robin over the partitions, publishing in acknowledged batches.
async fn fill(js: &jetstream::Context, keys: &[String], n: u64) -> Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let mut acks = Vec::with_capacity(1000);
    for i in 0..n {
        let subject = format!("bench.{}", keys[(i as usize) % keys.len()]);
        acks.push(js.publish(subject, payload.clone()).await?);
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// A durable pull consumer with the same filter, acking each message; messages per second.
async fn plain(js: &jetstream::Context, keys: &[String], n: u64, round: usize) -> Result<f64> {
    let stream = js.get_stream(STREAM).await?;
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(format!("raw-{round}")),
            filter_subjects: keys.iter().map(|k| format!("bench.{k}")).collect(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    // On a runtime worker, like the WorkerConsumer's message loop.
    tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut seen = 0u64;
        while seen < n {
            let Some(message) = messages.next().await else {
                return Err::<(), Box<dyn Error + Send + Sync>>("pull stream ended".into());
            };
            message?.ack().await?;
            seen += 1;
        }
        Ok(())
    })
    .await??;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Counts messages and signals when `target` is reached.
struct Count {
    seen: AtomicU64,
    target: u64,
    done: Notify,
}

#[async_trait::async_trait]
impl MessageHandler for Count {
    async fn handle(&self, _message: &Message) -> std::result::Result<(), BoxError> {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

/// A WorkerConsumer assigned every partition; messages per second.
async fn worker_consumer(
    js: &jetstream::Context,
    keys: &[String],
    n: u64,
    round: usize,
) -> Result<f64> {
    let count = Arc::new(Count {
        seen: AtomicU64::new(0),
        target: n,
        done: Notify::new(),
    });
    let consumer = WorkerConsumer::builder(js.clone(), STREAM)
        .subject_template("bench.{partition}")
        .consumer_prefix(format!("bench{round}"))
        .handler_arc(Arc::clone(&count) as Arc<dyn MessageHandler>)
        .build()
        .await?;
    let partitions = keys
        .iter()
        .map(|k| Partition::new([k.as_str()], 100))
        .collect::<parti::Result<_>>()?;
    let assignment = Assignment::new(0, Lifecycle::ColdStart, partitions);
    // Held, as a Manager sets it: every message passes the ownership gate (a per-message
    // match against the held partitions and the lease deadline).
    consumer.set_held(&assignment.partitions).await;
    let start = Instant::now();
    consumer
        .update_assignment(&WorkerId::new("w"), &assignment)
        .await?;
    tokio::time::timeout(Duration::from_secs(600), count.done.notified())
        .await
        .map_err(|_| "WorkerConsumer did not see every message")?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    consumer.close().await?;
    Ok(rate)
}
