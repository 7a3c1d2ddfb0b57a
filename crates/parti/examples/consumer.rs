//! A worker that processes the messages of its partitions with `WorkerConsumer`: one durable
//! JetStream consumer, kept pointed at exactly the subjects of the partitions this worker owns.
//!
//! ```sh
//! nats-server -js &
//! nats stream add EVENTS --subjects 'events.>' --retention work --defaults
//! cargo run -p parti --example consumer -- nats://127.0.0.1:4222
//! nats pub events.orders.o3 'hello'
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, Message, stream};
use parti::error::BoxError;
use parti::{Config, Manager, Partition, WorkerConsumer, source::Static};

/// Runs one worker until Ctrl-C (or for `run_for`); returns how many messages it processed.
pub async fn run(
    url: &str,
    config: Config,
    run_for: Option<Duration>,
) -> Result<u64, Box<dyn std::error::Error>> {
    let nats = async_nats::connect(url).await?;
    let js = jetstream::new(nats);
    // Work-queue retention: each message is processed by exactly one owner.
    js.get_or_create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;

    let processed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&processed);
    let consumer = WorkerConsumer::builder(js.clone(), "EVENTS")
        .subject_template("events.{partition}")
        .handler(move |msg: Message| {
            let counter = Arc::clone(&counter);
            async move {
                println!("{}: {}", msg.subject, String::from_utf8_lossy(&msg.payload));
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<(), BoxError>(()) // acked; an Err would be nak'ed and redelivered
            }
        })
        .build()
        .await?;

    let partitions = (0..8)
        .map(|i| Partition::new(["orders", &format!("o{i}")], 100))
        .collect::<Result<Vec<_>, _>>()?;
    let manager = Manager::builder(js)
        .config(config)
        .source(Static::new(partitions))
        .consumer(consumer)
        .start()
        .await?;
    println!(
        "{} consumes {} partitions",
        manager.worker_id(),
        manager.assignment().partitions.len()
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(run_for.unwrap_or(Duration::MAX)) => {}
    }
    manager.stop().await?;
    Ok(processed.load(Ordering::Relaxed))
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let processed = run(&url, Config::default().with_env_overrides()?, None).await?;
    println!("processed {processed} messages");
    Ok(())
}
