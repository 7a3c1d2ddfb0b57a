//! The message loop: pulls from the durable consumer and feeds the handler, one message at a
//! time, in order.
//!
//! Filter changes do not restart it (the pull subscription is per consumer, not per filter).
//! It reopens the subscription only when the reconciler hands it another consumer (first
//! creation, re-creation after a deletion, another worker ID) or after an error (missed
//! heartbeats across a server restart, consumer deleted, no connection), with jittered backoff.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiError};
use super::handler::AckMode;
use super::handler::{dispatch, gated, nak_gated};
use super::{Mode, Shared, backoff};

/// Lifetime of one pull request; the library re-pulls before it ends.
const PULL_EXPIRY: Duration = Duration::from_secs(10);
/// Idle heartbeat asked of the server; two missed ones are an error.
const HEARTBEAT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `cancel`. The message being handled when `cancel` fires is finished first.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut consumer: watch::Receiver<Option<PullConsumer>>,
    failed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut delays = backoff(MAX_BACKOFF);
    // When the durable was last reset to let go of gated messages (work queue).
    let mut last_reset: Option<Instant> = None;
    // A rewind redelivers what this loop had in flight; handling it once is enough.
    let mut handled =
        (shared.mode == Mode::WorkQueue && shared.settle.mode == AckMode::Auto).then(|| {
            Handled::new(
                usize::try_from(shared.config.max_ack_pending)
                    .unwrap_or(1000)
                    .saturating_mul(2),
            )
        });
    'reopen: loop {
        let current = tokio::select! {
            () = cancel.cancelled() => return,
            current = consumer.wait_for(Option::is_some) => match current {
                Ok(current) => current.clone(),
                Err(_) => return,
            },
        };
        let Some(current) = current else { continue };
        let opened = current
            .stream()
            .max_messages_per_batch(shared.config.batch)
            .expires(PULL_EXPIRY)
            .heartbeat(HEARTBEAT)
            .messages()
            .await;
        let error = match opened {
            Ok(mut messages) => {
                shared.health.loop_ok();
                let mut received = false;
                loop {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return,
                        changed = consumer.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            continue 'reopen;
                        }
                        next = messages.next() => match next {
                            Some(Ok(msg)) => {
                                if !received {
                                    received = true;
                                    delays = backoff(MAX_BACKOFF);
                                }
                                let seq = handled.as_ref().and_then(|_| msg.info().ok()).map(|i| i.stream_sequence);
                                let again = matches!((&handled, seq), (Some(h), Some(seq)) if h.contains(seq));
                                if again || shared.known.covers(&msg) {
                                    if let Err(e) = msg.ack().await {
                                        tracing::debug!(error = %e, "ack failed");
                                    }
                                    continue;
                                }
                                let Some(permit) = shared.gate.admit(msg.subject.as_str()) else {
                                    not_held(&shared, &current, &msg, &mut last_reset).await;
                                    continue;
                                };
                                let ok = dispatch(&*shared.handler, shared.settle, &msg, &shared.health, permit).await;
                                if let (Some(handled), Some(seq), true) = (handled.as_mut(), seq, ok) {
                                    handled.insert(seq);
                                }
                            }
                            Some(Err(e)) => break e.to_string(),
                            None => break "pull subscription ended".to_owned(),
                        },
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(consumer = %current.cached_info().name, error = %error, "message loop interrupted; reopening");
        shared.health.loop_failed(error);
        // Let the reconciler check the consumer (deleted? recreate it).
        failed.notify_one();
        let delay = delays.next().unwrap_or(MAX_BACKOFF);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// A message whose partition is not held: the handler never sees it.
///
/// While its subject is in the filter it is nak'ed for redelivery ([`gated`]). JetStream
/// redelivers a pending message even after its subject left the filter, so once it has:
/// - on a work queue, where a message pending here is never delivered to the gainer, the
///   durable is reset to its ack floor + 1, which drops that pending state (see
///   [`Reconciler`](super::reconcile::Reconciler), which normally does so right after the
///   release); messages delivered before that reset are left alone;
/// - on other streams it is acked unhandled: the release recorded an ack floor below it as
///   where the next owner resumes (see [`markers`](super::markers)).
async fn not_held(
    shared: &Shared,
    consumer: &PullConsumer,
    msg: &Message,
    last_reset: &mut Option<Instant>,
) {
    let subject = msg.subject.as_str();
    if shared.in_filter(subject) {
        if shared.mode == Mode::WorkQueue {
            shared.note_gated(subject);
        }
        gated(shared.settle, msg, &shared.health).await;
        return;
    }
    shared.health.gated();
    if shared.mode == Mode::Replay {
        if let Err(e) = msg.ack().await {
            tracing::debug!(error = %e, "ack of a released message failed");
        }
        return;
    }
    if last_reset.is_some_and(|at| at.elapsed() < shared.settle.gated_delay()) {
        return;
    }
    let name = &consumer.cached_info().name;
    let floor = match api::get(&shared.stream, name).await {
        Ok(Some(current)) => Some(current.cached_info().ack_floor.stream_sequence),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e.message(), "consumer info failed");
            None
        }
    };
    let reset = match floor {
        Some(floor) => api::reset(&shared.stream, name, floor + 1).await,
        None => Err(ApiError::NotFound),
    };
    match reset {
        Ok(()) => {
            tracing::debug!(consumer = %name, subject, "released the gated messages of a released subject");
            *last_reset = Some(Instant::now());
        }
        Err(_) => nak_gated(shared.settle, msg).await,
    }
}

/// The stream sequences most recently handled with success, bounded.
struct Handled {
    seqs: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl Handled {
    fn new(capacity: usize) -> Self {
        Self {
            seqs: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    fn contains(&self, seq: u64) -> bool {
        self.seqs.contains(&seq)
    }

    fn insert(&mut self, seq: u64) {
        if self.seqs.insert(seq) {
            self.order.push_back(seq);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.seqs.remove(&old);
            }
        }
    }
}
