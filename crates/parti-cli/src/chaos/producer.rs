//! The producer: sequenced messages to every partition's subject, each acknowledged message
//! recorded as a [`SentRecord`] (its stream sequence, stamped with the ownership clock).

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use parti::ownership::now_ns;
use parti_testkit::checker::SentRecord;
use tokio_util::sync::CancellationToken;

/// How often a batch is published.
const TICK: Duration = Duration::from_millis(50);
/// Pause between two attempts of a message the stream did not acknowledge.
const RETRY: Duration = Duration::from_millis(100);

/// What the producer publishes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Partition IDs (one key each, so the subject key is the ID).
    pub(crate) partitions: Vec<String>,
    /// Subject prefix: a partition `p7` gets `{prefix}p7`.
    pub(crate) subject_prefix: String,
    /// Messages a second, round-robin over the partitions.
    pub(crate) rate: u32,
}

/// Publishes until `cancel`, then returns every acknowledged message. Each batch waits for the
/// previous one and a late tick is not caught up, so an outage slows the producer down instead
/// of bursting after it. A message is retried (with the same message ID, so the stream stores
/// it once) until acknowledged or cancelled.
pub(crate) async fn run(
    js: jetstream::Context,
    plan: Plan,
    cancel: CancellationToken,
) -> Vec<SentRecord> {
    let mut sent = Vec::new();
    let count = plan.partitions.len();
    if count == 0 || plan.rate == 0 {
        return sent;
    }
    let ticks_per_second = (1000 / TICK.as_millis()).max(1);
    let per_tick = usize::try_from(u128::from(plan.rate).div_ceil(ticks_per_second))
        .unwrap_or(count)
        .clamp(1, count);
    let mut numbers = vec![0u64; count];
    let mut next = 0;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return sent,
            _ = interval.tick() => {}
        }
        let batch: Vec<(usize, u64)> = (0..per_tick)
            .map(|_| {
                let p = next;
                next = (next + 1) % count;
                numbers[p] += 1;
                (p, numbers[p])
            })
            .collect();
        let publishes = batch
            .into_iter()
            .map(|(p, n)| publish(&js, &plan, &plan.partitions[p], n, &cancel));
        sent.extend(
            futures::future::join_all(publishes)
                .await
                .into_iter()
                .flatten(),
        );
    }
}

/// Publishes message `n` of `partition` until the stream acknowledges it.
async fn publish(
    js: &jetstream::Context,
    plan: &Plan,
    partition: &str,
    n: u64,
    cancel: &CancellationToken,
) -> Option<SentRecord> {
    let subject = format!("{}{partition}", plan.subject_prefix);
    loop {
        let message = PublishMessage::build()
            .message_id(format!("{partition}-{n}"))
            .payload(n.to_string().into());
        if let Ok(pending) = js.send_publish(subject.clone(), message).await
            && let Ok(ack) = pending.await
        {
            return Some(SentRecord {
                at_ns: now_ns(),
                partition: partition.to_owned(),
                seq: ack.sequence,
            });
        }
        if cancel.is_cancelled() {
            return None;
        }
        tokio::time::sleep(RETRY).await;
    }
}
