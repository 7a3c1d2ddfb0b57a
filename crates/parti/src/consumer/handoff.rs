//! Draining the backlog of newly gained subjects (the no-rewind hazard).
//!
//! JetStream never delivers messages below a consumer's position when its filter gains a
//! subject. Right after such an update, with `upto` = the durable's delivered position, every
//! message of a gained subject above `upto` comes through the durable; the others are handled
//! here:
//!
//! - **work-queue** streams store only unprocessed messages, and a second consumer may not
//!   overlap the durable: the durable itself is moved back (consumer reset, ADR-60) while
//!   paused, before the write that gains the subjects ([`rewind_before_gain`]; a
//!   durable's backlog must never sit below its position, or nats-server deletes it), and
//!   [`rewind`] watches for messages that were in flight elsewhere.
//! - **other** streams keep processed messages: a short-lived catch-up consumer on the gained
//!   subjects replays each one from its lower bound (see [`markers`](super::markers)) up to
//!   `upto` into the same handler, then is deleted. Messages above `upto` that the previous
//!   owners already processed are skipped by the durable ([`Known`]). A message of a
//!   partition the [gate](super::gate) does not let through is nak'ed and the drain does not
//!   finish without it — unless its subject leaves the durable's filter: the release then
//!   records the drain's start as where the next owner resumes, so it is acked unhandled.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures::StreamExt;

use super::api::{self, ApiError};
use super::handler::{dispatch, gated};
use super::{Mode, Shared, backoff, markers};

/// A catch-up consumer left behind by a crash disappears after this long.
const DRAIN_INACTIVE: Duration = Duration::from_secs(300);
/// Pause before the first look at a work queue's gained subjects.
const REWIND_GRACE: Duration = Duration::from_millis(500);
/// Completion is checked when no message arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// ...and at least every this many messages.
const DRAIN_CHECK_EVERY: usize = 1000;

/// Messages the durable may deliver although they are known to be processed: a gained subject
/// whose previous owner got further than the durable's position (its messages between the
/// two would come through again). Consulted by the message loop, cheaply when empty.
#[derive(Debug, Default)]
pub(crate) struct Known {
    active: AtomicBool,
    below: Mutex<HashMap<String, u64>>,
}

impl Known {
    /// Messages of `subject` below `below` are processed (`0` forgets the subject).
    pub(crate) fn set(&self, subject: &str, below: u64) {
        let mut map = self
            .below
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if below > 1 {
            map.insert(subject.to_owned(), below);
        } else {
            map.remove(subject);
        }
        self.active.store(!map.is_empty(), Ordering::Release);
    }

    /// Whether `msg` is known to be processed already (ack it without handling).
    pub(crate) fn covers(&self, msg: &Message) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let Ok(info) = msg.info() else { return false };
        let seq = info.stream_sequence;
        let mut map = self
            .below
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let covered = map
            .get(msg.subject.as_str())
            .is_some_and(|below| seq < *below);
        // The durable delivers in stream order: bounds at or below this position are behind it.
        map.retain(|_, below| *below > seq);
        self.active.store(!map.is_empty(), Ordering::Release);
        covered
    }
}

/// Subjects newly in the durable's filter whose older messages must still be processed.
#[derive(Debug, Clone)]
pub(crate) struct Gain {
    /// The durable consumer that gained them.
    pub(crate) durable: String,
    /// Identifies this gain among the reconciler's.
    pub(crate) id: u64,
    /// Gained subject → first sequence not known to be processed (0: from the start).
    pub(crate) from: BTreeMap<String, u64>,
    /// The durable's delivered stream position right after the subjects were added.
    pub(crate) upto: u64,
}

/// Drains one gain, retrying with backoff until done; returns it when done.
pub(crate) async fn run(shared: Arc<Shared>, gain: Gain) -> Gain {
    let mut delays = backoff(Duration::from_secs(5));
    loop {
        let result = match shared.mode {
            Mode::WorkQueue => rewind(&shared, &gain).await,
            Mode::Replay => catch_up(&shared, &gain).await,
        };
        match result {
            Ok(()) => return gain,
            Err(e) => {
                tracing::warn!(consumer = %gain.durable, error = %e.message(), "draining gained subjects failed; retrying");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }
}

/// Moves the durable back over stored messages of the gained subjects it will not deliver.
///
/// At the gain, that is any of them at or below its position. Afterwards, a message the
/// previous holder had in flight may end up behind the durable too (a work queue does not hand
/// it to the durable while another consumer has it in flight; it is released later by an ack
/// timeout, a crash or a takeover). So the subjects stay watched until none of their messages
/// stored before the gain is left: any of them at or below the point up to which everything the
/// durable delivered is acked (never one of its own in flight) triggers another rewind.
async fn rewind(shared: &Shared, gain: &Gain) -> Result<(), ApiError> {
    let mark = api::last_seq(&shared.stream).await?;
    // The previous holder usually acks what it still had in flight within moments: a short
    // grace before the first look saves rewinding (and duplicating) for those.
    let mut pause = REWIND_GRACE.min(shared.config.check_interval);
    let mut last: Option<(u64, Instant)> = None;
    loop {
        tokio::time::sleep(pause).await;
        pause = shared.config.check_interval;
        let Some(consumer) = api::get(&shared.stream, &gain.durable).await? else {
            // A re-created durable starts at the beginning of the work queue.
            return Ok(());
        };
        let info = consumer.cached_info();
        let floor = info.ack_floor.stream_sequence;
        let acked = if info.num_ack_pending == 0 {
            info.delivered.stream_sequence
        } else {
            floor
        };
        // Below the gain position nothing of these subjects is ever delivered by the durable.
        let behind = acked.max(gain.upto);
        let oldest = oldest_stored(shared, gain.from.keys()).await?;
        tracing::trace!(consumer = %gain.durable, ?oldest, behind, floor, mark, "watching gained subjects");
        match oldest {
            None => return Ok(()),
            Some(oldest) if oldest > mark => return Ok(()),
            Some(oldest) if oldest <= behind => {
                let to = oldest.min(floor + 1);
                // Rewinding again to the same place is pointless before ackWait has passed.
                let again = last
                    .is_none_or(|(at, when)| at != to || when.elapsed() >= shared.config.ack_wait);
                if again {
                    tracing::info!(consumer = %gain.durable, to, behind, "rewinding over the backlog of gained subjects");
                    match api::reset(&shared.stream, &gain.durable, to).await {
                        Ok(()) => last = Some((to, Instant::now())),
                        Err(ApiError::NotFound) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// Work queue, before a write that gains `subjects` (the durable paused): moves the durable
/// back so that no stored message of theirs lies at or below its delivered position when
/// they enter its filter (see [`Command::Pause`](super::plan::Command::Pause) for why that
/// position must never pass one). Its own unacked messages above the ack floor come again.
pub(crate) async fn rewind_before_gain(
    shared: &Shared,
    durable: &str,
    subjects: &BTreeSet<String>,
) -> Result<(), ApiError> {
    let Some(consumer) = api::get(&shared.stream, durable).await? else {
        return Err(ApiError::NotFound);
    };
    let floor = consumer.cached_info().ack_floor.stream_sequence;
    // The reported delivered position can lag the server's (a durable with nothing to
    // deliver moves past everything stored without reporting it): any stored message counts.
    match oldest_stored(shared, subjects.iter()).await? {
        Some(oldest) => {
            let to = oldest.min(floor.saturating_add(1));
            tracing::debug!(consumer = %durable, to, floor, "moving back over the backlog of subjects about to be gained");
            api::reset(&shared.stream, durable, to).await
        }
        // Nothing stored; paused, the position cannot pass what comes next.
        None => Ok(()),
    }
}

/// The oldest stored message of `subjects`.
async fn oldest_stored<'a>(
    shared: &Shared,
    subjects: impl Iterator<Item = &'a String>,
) -> Result<Option<u64>, ApiError> {
    let subjects: Vec<&String> = subjects.collect();
    let mut oldest: Option<u64> = None;
    for chunk in subjects.chunks(16) {
        let firsts =
            futures::future::try_join_all(chunk.iter().map(|s| api::first_seq(&shared.stream, s)))
                .await?;
        oldest = oldest.into_iter().chain(firsts.into_iter().flatten()).min();
    }
    Ok(oldest)
}

async fn catch_up(shared: &Shared, gain: &Gain) -> Result<(), ApiError> {
    let start = gain.from.values().copied().min().unwrap_or(0).max(1);
    if start > gain.upto {
        return Ok(());
    }
    let config = pull::Config {
        description: Some(format!("parti catch-up for {}", gain.durable)),
        filter_subjects: gain.from.keys().cloned().collect(),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: shared.config.ack_wait,
        max_ack_pending: shared.config.max_ack_pending,
        inactive_threshold: DRAIN_INACTIVE,
        metadata: [(markers::CATCHUP.to_owned(), gain.durable.clone())].into(),
        ..Default::default()
    };
    let consumer = api::create(&shared.stream, config).await?;
    let name = consumer.cached_info().name.clone();
    tracing::info!(consumer = %gain.durable, catch_up = %name, start, upto = gain.upto, subjects = gain.from.len(), "draining gained subjects");
    let result = drain(shared, gain, &consumer).await;
    if let Err(e) = api::delete(&shared.stream, &name).await {
        tracing::debug!(catch_up = %name, error = %e.message(), "catch-up consumer not deleted; it expires by itself");
    }
    result
}

async fn drain(shared: &Shared, gain: &Gain, consumer: &PullConsumer) -> Result<(), ApiError> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(shared.config.batch)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| ApiError::other("catch-up pull", e))?;
    let mut since_check = 0usize;
    let mut passed_upto = false;
    // Needed messages the gate kept from the handler, by stream sequence.
    let mut held_back: HashSet<u64> = HashSet::new();
    loop {
        let check = match tokio::time::timeout(DRAIN_IDLE, messages.next()).await {
            Ok(Some(Ok(msg))) => {
                let seq = msg.info().map_or(0, |i| i.stream_sequence);
                let needed = seq <= gain.upto
                    && gain
                        .from
                        .get(msg.subject.as_str())
                        .is_none_or(|from| seq >= *from);
                let admitted = needed
                    .then(|| shared.gate.admit(msg.subject.as_str()))
                    .flatten();
                held_back.remove(&seq);
                if let Some(permit) = admitted {
                    let _ = dispatch(
                        &*shared.handler,
                        shared.settle,
                        &msg,
                        &shared.health,
                        permit,
                    )
                    .await;
                } else if needed && shared.in_filter(msg.subject.as_str()) {
                    // Not held (yet): kept until it is, or until the subject is released.
                    held_back.insert(seq);
                    gated(shared.settle, &msg, &shared.health).await;
                } else if let Err(e) = msg.ack().await {
                    tracing::debug!(error = %e, "catch-up ack failed");
                }
                since_check += 1;
                let first_past = seq >= gain.upto && !passed_upto;
                passed_upto |= seq >= gain.upto;
                first_past || since_check >= DRAIN_CHECK_EVERY
            }
            Ok(Some(Err(e))) => return Err(ApiError::other("catch-up pull", e)),
            Ok(None) => return Err(ApiError::other("catch-up pull", "the message stream ended")),
            Err(_idle) => true,
        };
        if !held_back.is_empty() {
            // A message the gate kept back is still to be handled: not done.
            continue;
        }
        if check {
            since_check = 0;
            let info = consumer
                .get_info()
                .await
                .map_err(|e| ApiError::other("catch-up info", e))?;
            // Done when everything up to `upto` was delivered and nothing awaits an ack.
            if info.num_ack_pending == 0
                && (info.ack_floor.stream_sequence >= gain.upto || info.num_pending == 0)
            {
                return Ok(());
            }
        }
    }
}
