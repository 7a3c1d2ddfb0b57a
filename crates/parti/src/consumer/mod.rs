//! [`WorkerConsumer`]: a JetStream durable pull consumer that follows a worker's assignment
//! (SPEC §9).
//!
//! One durable consumer per worker, named `{consumerPrefix}-{workerId}` (sanitised), whose
//! `filter_subjects` are the worker's partitions rendered through the subject template, sorted
//! and de-duplicated. Each [`update_assignment`](WorkerConsumer::update_assignment) updates that
//! consumer in place; the message loop keeps running across updates.
//!
//! ```no_run
//! # async fn demo(assignment: parti::Assignment) -> Result<(), parti::error::BoxError> {
//! use async_nats::jetstream::Message;
//! use parti::{WorkerConsumer, WorkerId};
//!
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let consumer = WorkerConsumer::builder(async_nats::jetstream::new(nats), "EVENTS")
//!     .subject_template("events.{partition}")
//!     .handler(|msg: Message| async move {
//!         println!("{}", msg.subject);
//!         Ok::<(), parti::error::BoxError>(())
//!     })
//!     .build()
//!     .await?;
//! consumer.update_assignment(&WorkerId::new("worker-0"), &assignment).await?;
//! println!("{:?}", consumer.health());
//! consumer.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! **At-least-once.** A message stored on a subject of an assigned partition is handed to the
//! handler of some worker until it is acked — across crashes, restarts, scale events and
//! consumer deletion. Duplicates happen around those moments (a crash, a hand-off, a
//! restart), never in steady state; handlers should be idempotent.
//!
//! **No stranded backlog.** JetStream does not rewind a consumer whose filter gains a subject,
//! so every gain is followed by a drain of the gained subjects' older messages:
//! - *work-queue* streams (only unprocessed messages are stored): the durable is moved back
//!   (consumer reset, nats-server ≥ 2.14) over any stored message of the gained subjects it
//!   went past, never above its own ack floor + 1. The gained subjects stay watched until every
//!   message stored before the gain is gone, because a message the previous owner still had in
//!   flight is released only later (ack, ack timeout, crash, takeover). Messages the durable
//!   already handled and redelivers after a rewind are acked without a second handling
//!   ([`AckMode::Auto`]).
//! - *limits* and *interest* streams (processed messages are kept): a short-lived catch-up
//!   consumer replays each gained subject into the same handler, from where its previous owners
//!   are known to have stopped up to where the durable took over; the durable skips what the
//!   previous owners had processed beyond its own position. Where they stopped is kept in the
//!   durables' metadata (`parti.*` keys: the releasing worker writes its ack floor in the same
//!   update that drops the subject). A subject nobody processed before is replayed from the
//!   start of the stream.
//!
//! An unfinished drain is recorded in the metadata and resumed by the next process that
//! adopts the durable.
//!
//! **Work-queue hand-offs never fail on overlap.** A work queue refuses two consumers with
//! overlapping filters, and workers update independently. Removals are always applied at
//! once; an added subject still held by another consumer is left out of the filter (the rest is
//! applied) and retried with jittered backoff until the holder has let go. After
//! `takeoverAfter` (default 5 s) a subject still held by a consumer of the same prefix — a
//! crashed or stuck worker — is taken from it. Consumers outside the group are never touched:
//! their subjects wait ([`ConsumerHealth::waiting_subjects`]).
//!
//! **Holding gate.** [`set_held`](WorkerConsumer::set_held) names the partitions whose
//! messages may reach the handler, locally and at once (no NATS call); others are nak'ed for
//! redelivery to whoever holds them once the filters move. Its future completes when the
//! handler calls already running for released partitions have returned (SPEC §13: the loser
//! stops holding, then says so). Never called: every delivered message is handled.
//!
//! **Never unfiltered.** An empty assignment pauses the consumer: its filter becomes
//! `_parti.paused.{consumer}`, which matches nothing.
//!
//! **Lifecycle.** [`close`](WorkerConsumer::close) finishes the message in flight and releases
//! every subject (paused filter, positions recorded); the durable is kept for the next process
//! with the same worker ID. Dropping a `WorkerConsumer` without `close` behaves like a crash.

mod api;
mod config;
mod gate;
mod handler;
mod handoff;
mod health;
mod markers;
mod message_loop;
mod pace;
mod plan;
mod reconcile;
mod subjects;
mod takeover;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{RetentionPolicy, Stream};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use config::{ConsumerConfig, WorkerConsumerBuilder};
pub use handler::{AckMode, MessageHandler};
pub use health::{ConsumerHealth, ConsumerStatus};

use gate::Gate;
use handler::Settle;
use health::HealthCell;
use reconcile::{Reconciler, Request};

use crate::assignment::Assignment;
use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId};

/// How gained subjects are drained, by stream retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only unprocessed messages are stored; filters must not overlap.
    WorkQueue,
    /// Processed messages are kept (limits, interest).
    Replay,
}

/// What every task of one consumer shares.
pub(crate) struct Shared {
    pub(crate) config: ConsumerConfig,
    pub(crate) stream: Stream,
    pub(crate) mode: Mode,
    pub(crate) handler: Arc<dyn MessageHandler>,
    pub(crate) settle: Settle,
    pub(crate) health: HealthCell,
    pub(crate) known: handoff::Known,
    /// Which partitions the handler may run for (see [`WorkerConsumer::set_held`]).
    pub(crate) gate: Gate,
    /// The subjects in the durable's server-side filter, as last applied by the reconciler.
    filter: std::sync::Mutex<BTreeSet<String>>,
    /// Work queue: subjects of which the message loop nak'ed a gated message (see
    /// [`message_loop`]): their release is followed by a reset of the durable.
    gated_subjects: std::sync::Mutex<HashSet<String>>,
    /// The fleet's consumer API rate and size (see [`pace`]).
    pub(crate) pace: Arc<pace::PaceCell>,
}

impl Shared {
    /// Records the server-side filter (called by the reconciler before it relies on it).
    pub(crate) fn set_filter(&self, subjects: &BTreeSet<String>) {
        let mut filter = self
            .filter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *filter != *subjects {
            filter.clone_from(subjects);
        }
    }

    /// Whether `subject` matches the durable's server-side filter (only asked for gated
    /// messages, off the hot path).
    pub(crate) fn in_filter(&self, subject: &str) -> bool {
        let filter = self
            .filter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        filter.contains(subject) || filter.iter().any(|f| subjects::is_match(f, subject))
    }

    /// Work queue: the message loop nak'ed a gated message of `subject`.
    pub(crate) fn note_gated(&self, subject: &str) {
        let mut gated = self
            .gated_subjects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !gated.contains(subject) {
            gated.insert(subject.to_owned());
        }
    }

    /// Work queue: whether gated messages were nak'ed for any of these released filter
    /// subjects (forgetting them).
    pub(crate) fn take_gated(&self, released: &BTreeSet<String>) -> bool {
        let mut gated = self
            .gated_subjects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = gated.len();
        gated.retain(|s| !released.iter().any(|f| subjects::is_match(f, s)));
        gated.len() != before
    }
}

/// Jittered exponential delays from 50 ms up to `max`, for ever.
pub(crate) fn backoff(max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(max)
        .without_max_times()
        .build()
}

/// A durable JetStream consumer that delivers exactly the messages of a worker's partitions.
///
/// See the [module documentation](self) for what it guarantees.
pub struct WorkerConsumer {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Request>,
    /// The last worker and subjects asked for (identical requests make no server call).
    last: Mutex<Option<(WorkerId, BTreeSet<String>)>>,
    loop_cancel: CancellationToken,
    message_loop: AbortOnDropHandle<()>,
    reconciler: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for WorkerConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConsumer")
            .field("config", &self.shared.config)
            .field("mode", &self.shared.mode)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl WorkerConsumer {
    /// A builder for a consumer of `stream` (which must exist).
    pub fn builder(
        jetstream: async_nats::jetstream::Context,
        stream: &str,
    ) -> WorkerConsumerBuilder {
        WorkerConsumerBuilder::new(jetstream, stream)
    }

    pub(crate) async fn start(
        jetstream: async_nats::jetstream::Context,
        config: ConsumerConfig,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Self> {
        let stream = jetstream
            .get_stream(&config.stream)
            .await
            .map_err(|e| Error::Consumer {
                context: format!("stream {}", config.stream),
                source: Box::new(e),
            })?;
        let mode = match stream.cached_info().config.retention {
            RetentionPolicy::WorkQueue => Mode::WorkQueue,
            _ => Mode::Replay,
        };
        let config_template = config.subject_template.clone();
        let settle = Settle {
            mode: config.ack_mode,
            nak_delay: config.nak_delay,
        };
        let shared = Arc::new(Shared {
            config,
            stream,
            mode,
            handler,
            settle,
            health: HealthCell::default(),
            known: handoff::Known::default(),
            gate: Gate::new(&config_template),
            filter: std::sync::Mutex::default(),
            gated_subjects: std::sync::Mutex::default(),
            pace: Arc::default(),
        });
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (consumer_tx, consumer_rx) = watch::channel(None);
        let loop_failed = Arc::new(Notify::new());
        let loop_cancel = CancellationToken::new();
        let reconciler = Reconciler::new(
            Arc::clone(&shared),
            commands_rx,
            Arc::clone(&loop_failed),
            consumer_tx,
        );
        let reconciler = AbortOnDropHandle::new(tokio::spawn(reconciler.run()));
        let message_loop = AbortOnDropHandle::new(tokio::spawn(message_loop::run(
            Arc::clone(&shared),
            consumer_rx,
            loop_failed,
            loop_cancel.clone(),
        )));
        Ok(Self {
            shared,
            commands,
            last: Mutex::new(None),
            loop_cancel,
            message_loop,
            reconciler,
        })
    }

    /// Points the durable consumer at exactly these partitions' subjects.
    ///
    /// The first call names the worker (and so the durable consumer, which is created if
    /// needed). Identical requests return at once without any server call. Otherwise this
    /// returns once the server has the new filter: removed subjects are gone, added ones are in
    /// (except, on a work-queue stream, those another consumer still holds: they are added in
    /// the background as soon as it lets go), and the backlog of added subjects is being
    /// drained in the background. An empty assignment pauses consumption. Under a
    /// [`Manager`](crate::Manager) with `consumerApiRate` set, a change that must wait for its
    /// turn returns at once and is applied (merged with later ones) when the turn comes.
    ///
    /// Errors: [`Error::TooManySubjects`] and [`Error::WorkerIdChanged`] (nothing changes);
    /// [`Error::Consumer`] when the server could not be updated — the change is kept and
    /// retried in the background with backoff, so the error is informational.
    /// [`Error::Shutdown`] if the consumer's tasks are gone. Dropping the returned future does
    /// not cancel the change.
    pub async fn update_assignment(
        &self,
        worker: &WorkerId,
        assignment: &Assignment,
    ) -> Result<()> {
        let allow = self.shared.config.allow_worker_id_change;
        self.assign(worker, assignment, allow, true).await
    }

    /// What the [`Manager`](crate::Manager) calls: like
    /// [`update_assignment`](Self::update_assignment), but a change of worker ID is always
    /// followed (the manager re-claimed after losing its ID: the old ID's durable may belong to
    /// another process now and is left alone).
    pub(crate) async fn follow(&self, worker: &WorkerId, assignment: &Assignment) -> Result<()> {
        self.assign(worker, assignment, true, true).await
    }

    /// [`follow`](Self::follow) without waiting for the filter to move: the request is queued
    /// for the reconciler, which carries it out (and keeps trying) on its own. For a change
    /// that only gains: nothing waits on its filter (a loss must wait, so that the gainer's
    /// filter can take the subjects), and the local gate already admits what is held.
    pub(crate) async fn follow_queued(
        &self,
        worker: &WorkerId,
        assignment: &Assignment,
    ) -> Result<()> {
        self.assign(worker, assignment, true, false).await
    }

    /// Sends the filter for `assignment` to the reconciler; waits for its answer when `wait`.
    async fn assign(
        &self,
        worker: &WorkerId,
        assignment: &Assignment,
        allow_id_change: bool,
        wait: bool,
    ) -> Result<()> {
        let cfg = &self.shared.config;
        let subjects = subjects::render(
            &cfg.subject_template,
            &assignment.partitions,
            cfg.max_subjects,
        )?;
        let mut last = self.last.lock().await;
        if let Some((current, current_subjects)) = &*last {
            if current != worker && !allow_id_change {
                return Err(Error::WorkerIdChanged {
                    from: current.clone(),
                    to: worker.clone(),
                });
            }
            if current == worker && *current_subjects == subjects {
                return Ok(());
            }
        }
        *last = Some((worker.clone(), subjects.clone()));
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Request::Assign {
                worker: worker.clone(),
                subjects,
                reply,
            })
            .map_err(|_| Error::Shutdown)?;
        if !wait {
            return Ok(());
        }
        answer.await.map_err(|_| Error::Shutdown)?
    }

    /// Sets the partitions this worker *holds* now: the only ones whose messages may reach the
    /// handler (SPEC §13). Local and immediate, independent of the server-side filter that
    /// [`update_assignment`](Self::update_assignment) moves through NATS.
    ///
    /// The change is made when this is called (not when the future is first polled), under one
    /// lock, with no NATS call, so it works while NATS is unreachable: from then on no handler
    /// call starts for a partition not in `held`, and partitions in `held` are deliverable at
    /// once. A message of a partition not held (found from its subject through the subject
    /// template) is nak'ed with [`nak_delay`](ConsumerConfig::nak_delay) (1 s when none is
    /// set), whatever the [`AckMode`], so that JetStream redelivers it — to the worker that
    /// holds it once the filters have moved — and counted in [`ConsumerHealth::gated`].
    ///
    /// The returned future completes once every handler call that was already running for a
    /// partition released by this call has returned (the ack of its message may still be on
    /// its way), so that the caller may then announce the release. Dropping it does not undo
    /// the change.
    ///
    /// Until the first call, every message the filter delivers is handled (a consumer whose
    /// user never calls this behaves as before); the first call waits for every call running
    /// at that moment. `set_held` does not follow `update_assignment`: a worker that uses it
    /// calls it on every change of what it holds (on a release, before narrowing the filter;
    /// a gained partition is handled once it is both held and in the filter).
    ///
    /// On a work-queue stream, JetStream keeps redelivering a nak'ed message to this durable
    /// even after its subject left the filter, and gives no other consumer a message pending
    /// here; so after a filter update that releases such a subject the durable is reset to
    /// its ack floor + 1 (its own in-flight messages come again and are acked without a second
    /// handling in [`AckMode::Auto`], handled again in [`AckMode::Manual`]).
    pub fn set_held(&self, held: &[Partition]) -> impl Future<Output = ()> + Send + 'static {
        let template = &self.shared.config.subject_template;
        let releases = self.shared.gate.set_held(held.iter().map(|p| {
            let key = p.subject_key();
            let filter = template.replace(subjects::PLACEHOLDER, &key);
            (key, filter)
        }));
        let shared = Arc::clone(&self.shared);
        async move { shared.gate.wait(releases).await }
    }

    /// The cell holding the lease deadline the gate enforces (Unix ns of the ownership clock;
    /// 0: none): the [`Manager`](crate::Manager) stores each renewal's deadline there.
    pub(crate) fn lease_cell(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.shared.gate.lease()
    }

    /// Limits this consumer's share of the fleet's `consumerApiRate` (calls per second for
    /// the whole fleet; 0: none): returns the cell in which the [`Manager`](crate::Manager)
    /// keeps the number of workers sharing it (see [`pace`]).
    pub(crate) fn pace(&self, fleet_rate: f64) -> Arc<std::sync::atomic::AtomicU64> {
        self.shared.pace.set_rate(fleet_rate);
        self.shared.pace.fleet()
    }

    /// A snapshot of the consumer's health.
    pub fn health(&self) -> ConsumerHealth {
        self.shared.health.snapshot()
    }

    /// The settings in use.
    pub fn config(&self) -> &ConsumerConfig {
        &self.shared.config
    }

    /// Stops at once, as a killed process would: no handler call starts after this is
    /// called, and every call already running (in the message loop or a catch-up drain) has
    /// finished when it returns. Nothing is released on the server or acknowledged; the server
    /// redelivers what was in flight. Must not be called from a handler: it waits for it.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) async fn kill(self) {
        let Self {
            shared,
            message_loop,
            reconciler,
            ..
        } = self;
        // Locally, at once: nothing is admitted any more, and `running` names every call
        // admitted so far.
        let running = shared.gate.set_held(std::iter::empty());
        message_loop.abort();
        reconciler.abort();
        // An aborted task ends at its next await; awaiting it waits out a poll still running
        // on another thread. The reconciler's drains are aborted with it but not awaited: the
        // gate tells when their calls are done.
        let _ = message_loop.await;
        let _ = reconciler.await;
        shared.gate.wait(running).await;
    }

    /// Stops gracefully within `closeTimeout`: finishes the message being handled, stops
    /// pulling, then releases every subject so that other workers can take them at once. The
    /// durable consumer is kept.
    pub async fn close(self) -> Result<()> {
        let Self {
            shared,
            commands,
            loop_cancel,
            mut message_loop,
            mut reconciler,
            ..
        } = self;
        let deadline = tokio::time::Instant::now() + shared.config.close_timeout;
        loop_cancel.cancel();
        if tokio::time::timeout_at(deadline, &mut message_loop)
            .await
            .is_err()
        {
            tracing::warn!("message handler still busy at closeTimeout; abandoning it");
            message_loop.abort();
        }
        let (reply, answer) = oneshot::channel();
        let result = if commands.send(Request::Close { reply }).is_ok() {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::Shutdown),
                Err(_) => Err(Error::Consumer {
                    context: "close".into(),
                    source: "releasing the subjects exceeded closeTimeout".into(),
                }),
            }
        } else {
            Err(Error::Shutdown)
        };
        if tokio::time::timeout_at(deadline, &mut reconciler)
            .await
            .is_err()
        {
            reconciler.abort();
        }
        shared.health.close();
        result
    }
}
