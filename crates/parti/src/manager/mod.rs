//! The worker [`Manager`]: what an application embeds.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use parti::{Config, Manager, Partition, source::Static, strategy::WeightedConsistentHash};
//!
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let partitions = (0..64).map(|i| Partition::new([format!("p{i}")], 100)).collect::<Result<Vec<_>, _>>()?;
//! let manager = Manager::builder(async_nats::jetstream::new(nats))
//!     .config(Config::default())
//!     .source(Static::new(partitions))
//!     .strategy(WeightedConsistentHash::default())
//!     .start()
//!     .await?;
//! println!("{} owns {} partitions", manager.worker_id(), manager.assignment().partitions.len());
//! let mut changes = manager.watch_assignment();
//! changes.changed().await?;
//! manager.stop().await?;
//! # Ok(()) }
//! ```

mod bucket_guard;
mod builder;
mod degraded;
mod dispatcher;
mod fence;
pub(crate) mod follower;
mod holding;
pub mod hooks;
mod runtime;
mod state_cell;

/// How many [`Event`]s a subscriber of [`Manager::events`] may fall behind before it lags.
pub const EVENTS_CAPACITY: usize = 1024;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::events::Event;
pub use builder::ManagerBuilder;

use crate::assignment::Assignment;
use crate::error::{Error, Result};
use crate::partition::WorkerId;
use crate::state::{DegradedReason, State};

/// Why a state wait ended without the state it waited for.
#[derive(Debug)]
enum WaitFailed {
    /// The deadline passed; the state then.
    Deadline(State),
    /// The worker reached `Shutdown`; why.
    Ended(Error),
}

/// A running worker: its stable ID, state, assignment and leadership.
///
/// Build one with [`Manager::builder`]; `start()` returns once the worker is `Stable` (or fails
/// within `startupTimeout`). Dropping a `Manager` without [`stop`](Manager::stop) behaves like a
/// crash: everything stops at once and the worker's heartbeat and ID expire by TTL.
#[derive(Debug)]
pub struct Manager {
    state: watch::Receiver<State>,
    assignment: watch::Receiver<Arc<Assignment>>,
    worker_id: watch::Receiver<Option<WorkerId>>,
    leader: watch::Receiver<bool>,
    /// Why the worker is degraded (`None` while it is not).
    degraded_reason: watch::Receiver<Option<DegradedReason>>,
    /// What is held now, with epochs (sent by the fence task).
    held: watch::Receiver<Arc<crate::ownership::Held>>,
    /// This process start's random ID (as in heartbeats and ownership records).
    instance: String,
    events: broadcast::Sender<Event>,
    refresh: mpsc::UnboundedSender<()>,
    cancel: CancellationToken,
    shutdown_timeout: Duration,
    runtime: Mutex<Option<AbortOnDropHandle<Result<()>>>>,
    consumer: dispatcher::SharedConsumer,
    dispatcher: Mutex<Option<AbortOnDropHandle<()>>>,
    /// Carries out holding changes (gate, hooks, records, release acknowledgements).
    fence: Mutex<Option<AbortOnDropHandle<()>>>,
    /// The error the worker ended with on its own (start-up it could not get past), for the
    /// first state waiter or `stop()` to report.
    ended: runtime::Ended,
}

impl Manager {
    /// A builder over a JetStream context (the usual way; `nats` feature).
    #[cfg(feature = "nats")]
    pub fn builder(jetstream: async_nats::jetstream::Context) -> ManagerBuilder {
        ManagerBuilder::new(builder::StoreSource::Nats(Box::new(jetstream)))
    }

    /// A builder over any [`Store`](crate::store::Store) — e.g. an in-memory one for
    /// simulations.
    pub fn builder_with_store(store: Arc<dyn crate::store::Store>) -> ManagerBuilder {
        ManagerBuilder::new(builder::StoreSource::Custom(store))
    }

    /// This worker's stable ID, e.g. `worker-3`. It can change only if the ID was lost (taken
    /// over while this worker was cut off) and re-claimed. Always set: [`ManagerBuilder::start`]
    /// and [`ManagerBuilder::spawn`] return a manager only once it has claimed an ID.
    pub fn worker_id(&self) -> WorkerId {
        self.worker_id
            .borrow()
            .clone()
            .unwrap_or_else(|| WorkerId::new(""))
    }

    /// This worker process's instance ID: random, fresh for each start; it names the process in
    /// heartbeats, the stable-ID claim and [ownership records](crate::ownership).
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Whether this worker is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The current assignment (a cheap clone).
    pub fn assignment(&self) -> Arc<Assignment> {
        Arc::clone(&self.assignment.borrow())
    }

    /// What this worker *holds* now — the partitions the application may process — each with
    /// its epoch, the fencing token to hand to the application's own stores (see
    /// [`Held`](crate::ownership::Held)).
    ///
    /// This is narrower than [`assignment`](Self::assignment): a partition assigned here is
    /// not held yet while its previous holder releases it, and nothing is held once the lease
    /// ran out (a pause, a cut-off) until a new commit names this worker again.
    pub fn held(&self) -> Arc<crate::ownership::Held> {
        Arc::clone(&self.held.borrow())
    }

    /// A receiver that sees every change of [`held`](Self::held).
    ///
    /// Like every watch receiver it sees the latest value, not every one in between: a
    /// partition released and held again between two reads shows only its new epoch. The
    /// [ownership records](crate::ownership) list every change.
    pub fn watch_held(&self) -> watch::Receiver<Arc<crate::ownership::Held>> {
        self.held.clone()
    }

    /// A receiver that sees every assignment change.
    pub fn watch_assignment(&self) -> watch::Receiver<Arc<Assignment>> {
        self.assignment.clone()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// A receiver of leadership changes (`true` while leading).
    pub fn watch_leadership(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Why the worker is [`Degraded`](State::Degraded): `Some` from the moment it enters
    /// (set just before the state changes) until it leaves; `None` otherwise. The reason is
    /// decided on entering and does not change during the episode. The set of reasons is
    /// [`DegradedReason`] (documented in `docs/operations.md`).
    pub fn degraded_reason(&self) -> Option<DegradedReason> {
        *self.degraded_reason.borrow()
    }

    /// A receiver that sees every change of [`degraded_reason`](Self::degraded_reason).
    pub fn watch_degraded_reason(&self) -> watch::Receiver<Option<DegradedReason>> {
        self.degraded_reason.clone()
    }

    /// The [`Event`]s from now on, in order, each after the [`Hooks`](crate::Hooks) saw it.
    ///
    /// # Lag
    ///
    /// This is a [`tokio::sync::broadcast`] receiver with room for
    /// [`EVENTS_CAPACITY`] events. A subscriber that falls
    /// further behind does not slow the worker down: its next `recv` returns
    /// [`RecvError::Lagged(n)`](tokio::sync::broadcast::error::RecvError::Lagged) — `n` events
    /// were dropped *for it* — and then continues with the oldest event still kept. Nothing is
    /// lost silently, but something is lost. A subscriber created later sees only later events.
    ///
    /// # Events versus hooks versus watch channels
    ///
    /// - **[`Hooks`](crate::Hooks)** are awaited, in order, for every event: nothing is dropped,
    ///   and a slow hook delays the events after it (never the protocol: the worker fences and
    ///   releases on its own). Use them for what must not be missed — acting on an
    ///   assignment change, recording ownership.
    /// - **`events()`** is for observers (logs, dashboards, tests) that can afford to miss
    ///   some when they fall behind, and must handle `Lagged`.
    /// - **Watch channels** ([`watch_state`](Self::watch_state),
    ///   [`watch_assignment`](Self::watch_assignment), …) keep only the latest value: they never
    ///   lag, but a reader sees the current state, not every step to it.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Waits until the worker is in `state`, for at most `timeout`.
    ///
    /// Returns at once if it already is. Errors: [`Error::StateTimeout`] with the state the
    /// worker is in when the time runs out; [`Error::Shutdown`] (or the error the worker ended
    /// with) when it reaches `Shutdown` first, unless `Shutdown` is what was awaited.
    ///
    /// States are observed, not queued: a state the worker passes through and leaves between
    /// two looks (e.g. `Rebalancing` for a few microseconds) may be missed, as with
    /// [`watch_state`](Self::watch_state). Settled states (`Stable`, `Degraded`, `Shutdown`)
    /// are not. `Shutdown` is entered when a stop *begins*: await [`stop`](Self::stop) to know
    /// the ID is released. After `kill` (`test-util`) the state keeps its last value.
    ///
    /// The error a worker ended with on its own (e.g. `IdPoolExhausted`) is reported once, to
    /// the first waiter (or to `stop`); later ones get `Shutdown`.
    ///
    /// ```no_run
    /// # async fn demo(builder: parti::ManagerBuilder) -> parti::Result<()> {
    /// use std::time::Duration;
    /// use parti::State;
    ///
    /// let manager = builder.spawn().await?; // joined: ID claimed, heartbeating
    /// // … bring up the rest of the service …
    /// manager.wait_for_state(State::Stable, Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_state(&self, state: State, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, |s| s == state).await.map(|_| ())
    }

    /// Waits until the worker's state satisfies `reached`, for at most `timeout`; returns the
    /// state that did. The same errors and caveats as [`wait_for_state`](Self::wait_for_state).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        reached: impl FnMut(State) -> bool,
    ) -> Result<State> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.wait_until(deadline, reached)
            .await
            .map_err(|failed| match failed {
                WaitFailed::Deadline(state) => Error::StateTimeout { state, timeout },
                WaitFailed::Ended(e) => e,
            })
    }

    /// The state wait behind [`wait_for`](Self::wait_for) and the start-up.
    async fn wait_until(
        &self,
        deadline: tokio::time::Instant,
        mut reached: impl FnMut(State) -> bool,
    ) -> std::result::Result<State, WaitFailed> {
        let mut state = self.state.clone();
        let seen = tokio::time::timeout_at(deadline, async {
            loop {
                let current = *state.borrow_and_update();
                if reached(current) {
                    return Some(current);
                }
                if current == State::Shutdown || state.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match seen {
            Ok(Some(state)) => Ok(state),
            Ok(None) => Err(WaitFailed::Ended(self.end_reason())),
            Err(_) => Err(WaitFailed::Deadline(*state.borrow())),
        }
    }

    /// Why the worker reached `Shutdown` on its own: the error it ended with (reported once),
    /// or `Shutdown` for a stop. Never waits: the error is recorded before the state changes.
    fn end_reason(&self) -> Error {
        self.ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or(Error::Shutdown)
    }

    /// Asks for the partition source to be re-read and the map rebalanced. On the leader this
    /// goes straight to its controller; on a follower it is a request through the KV bucket.
    /// Returns at once: the request is queued, and requests in a row coalesce into one
    /// rebalance (after `minRebalanceInterval`). `Error::Shutdown` once the manager stopped.
    pub fn refresh_partitions(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Shutdown);
        }
        self.refresh.send(()).map_err(|_| Error::Shutdown)
    }

    /// Stops gracefully: stop processing, hand over leadership, delete the heartbeat, release
    /// the ID. Idempotent; bounded by `shutdownTimeout` (after which tasks are aborted).
    pub async fn stop(&self) -> Result<()> {
        // One bound for the whole stop.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        // Stop processing first: the consumer releases its subjects for the next owner.
        let consumer = self.consumer.lock().await.take();
        if let Some(consumer) = consumer
            && let Err(e) = tokio::time::timeout_at(deadline, consumer.close())
                .await
                .unwrap_or(Err(Error::Shutdown))
        {
            tracing::warn!(error = %e, "closing the consumer");
        }
        self.cancel.cancel();
        let Some(runtime) = self.runtime.lock().await.take() else {
            return Ok(());
        };
        let abort = runtime.abort_handle();
        let result = match tokio::time::timeout_at(deadline, runtime).await {
            Ok(Ok(Err(Error::Shutdown))) => Err(self.end_reason()),
            Ok(Ok(result)) => result,
            Ok(Err(join)) => {
                tracing::error!(error = %join, "worker task failed");
                Err(Error::Shutdown)
            }
            Err(_) => {
                abort.abort();
                tracing::warn!("graceful stop exceeded shutdownTimeout; tasks aborted");
                Err(Error::Shutdown)
            }
        };
        if let Some(fence) = self.fence.lock().await.take() {
            let _ = tokio::time::timeout_at(deadline, fence).await;
        }
        if let Some(dispatcher) = self.dispatcher.lock().await.take() {
            // Let queued hooks finish, within what is left of the bound.
            let _ = tokio::time::timeout_at(deadline, dispatcher).await;
        }
        result
    }

    /// Stops every task at once without any stop path, as a killed process would: nothing is
    /// released, the heartbeat and the ID expire by TTL. Meant for tests and chaos drills;
    /// needs the `test-util` feature.
    ///
    /// Once this returns, no hook and no handler call of this manager runs: the tasks that
    /// call them are aborted and awaited, and the consumer's gate admits nothing more. The
    /// leader's and heartbeat tasks are aborted with the runtime but not awaited: a
    /// [`PartitionSource`](crate::source::PartitionSource) or strategy call that blocks its
    /// thread may still finish. Must not be called from a hook or a handler: it waits for
    /// them.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn kill(&self) {
        // Everything is aborted before anything is awaited, so no task sees another one end
        // and reacts (a fence releasing, say): a process dies all at once.
        let runtime = self.runtime.lock().await.take();
        let fence = self.fence.lock().await.take();
        let dispatcher = self.dispatcher.lock().await.take();
        if let Some(task) = &runtime {
            task.abort();
        }
        for task in [&fence, &dispatcher].into_iter().flatten() {
            task.abort();
        }
        // Not closed, like a killed process: its messages are redelivered.
        if let Some(consumer) = self.consumer.lock().await.take() {
            consumer.kill().await;
        }
        // An aborted task ends at its next await: awaiting it waits out a poll still running
        // on another thread, so nothing of this manager runs once this returns.
        if let Some(task) = runtime {
            let _ = task.await;
        }
        for task in [fence, dispatcher].into_iter().flatten() {
            let _ = task.await;
        }
        self.cancel.cancel();
    }
}
