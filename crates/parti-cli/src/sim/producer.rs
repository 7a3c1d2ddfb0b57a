//! The producer: sequenced messages to every partition at a steady, bounded rate.
//!
//! Every [`TICK`] a batch of distinct partitions (the next ones, round-robin) gets one message
//! each; the next batch waits for the previous one, and a late tick is not caught up, so an
//! outage slows the producer down instead of bursting after it. A partition's next message is
//! numbered only once the previous one is acknowledged (see [`Ledger`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use parti::store::{MemoryStore, Store};
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::memlog::MemLog;

/// Subject prefix of the messages; a partition `p7` gets `sim.events.p7`.
pub(crate) const SUBJECT_PREFIX: &str = "sim.events.";
/// How often a batch is published.
const TICK: Duration = Duration::from_millis(50);

/// Where the producer writes.
pub(crate) enum Sink {
    /// The stream, through this connection.
    Nats(jetstream::Context),
    /// The in-process log, unreachable while this store client is cut off.
    Memory(MemoryStore, Arc<MemLog>),
}

/// Publishes `rate` messages a second, round-robin over the partitions, until cancelled.
pub(crate) async fn run(
    sink: Sink,
    ledger: Arc<Ledger>,
    partitions: usize,
    rate: u32,
    cancel: CancellationToken,
) {
    if partitions == 0 || rate == 0 {
        return;
    }
    let ticks_per_second = (1000 / TICK.as_millis()).max(1);
    let per_tick = (u128::from(rate).div_ceil(ticks_per_second) as usize).clamp(1, partitions);
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let batch: Vec<usize> = (0..per_tick)
            .map(|_| {
                let p = next;
                next = (next + 1) % partitions;
                p
            })
            .collect();
        match &sink {
            Sink::Nats(js) => {
                let sends = batch.iter().map(|&p| publish(js, &ledger, p, &cancel));
                futures::future::join_all(sends).await;
            }
            Sink::Memory(store, log) => {
                if store.is_connected() {
                    for p in batch {
                        log.append(p);
                        ledger.sent(p);
                    }
                }
            }
        }
    }
}

/// Publishes the next message of `partition` until the stream acknowledges it (a retry carries
/// the same message ID, so the stream stores it once). Gives up once the producer is stopped.
async fn publish(
    js: &jetstream::Context,
    ledger: &Ledger,
    partition: usize,
    cancel: &CancellationToken,
) {
    let seq = ledger.next_seq(partition);
    let subject = format!("{SUBJECT_PREFIX}p{partition}");
    loop {
        let message = PublishMessage::build()
            .message_id(format!("p{partition}-{seq}"))
            .payload(seq.to_string().into());
        let stored = match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            ledger.sent(partition);
            return;
        }
        if cancel.is_cancelled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
