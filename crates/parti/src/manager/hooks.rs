//! Application callbacks and the ordered dispatcher that calls them.
//!
//! Every notification goes through one queue and one task: hooks run sequentially, in the order
//! things happened, never concurrently. A slow hook delays later hooks, never the coordination
//! loops (they only enqueue). The same events are broadcast to [`Manager::events`] subscribers.
//!
//! [`Manager::events`]: crate::Manager::events

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::assignment::Assignment;
use crate::consumer::WorkerConsumer;
use crate::error::Error;
use crate::heartbeat::protocol::{Capability, Refusal};
use crate::ownership::OwnershipRecord;
use crate::partition::{Partition, WorkerId};
use crate::state::{DegradedReason, State};

/// How loud a degraded-mode alert is; levels escalate with the time spent degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertLevel {
    /// Degraded for `degradedAlert.infoThreshold`.
    Info,
    /// Degraded for `degradedAlert.warnThreshold`.
    Warn,
    /// Degraded for `degradedAlert.errorThreshold`.
    Error,
    /// Degraded for `degradedAlert.criticalThreshold`.
    Critical,
}

impl fmt::Display for AlertLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlertLevel::Info => "info",
            AlertLevel::Warn => "warn",
            AlertLevel::Error => "error",
            AlertLevel::Critical => "critical",
        })
    }
}

/// Callbacks into the application. Every method has a no-op default.
///
/// Called sequentially and in order, including for the initial assignment.
///
/// ```
/// use parti::{Assignment, Partition, hooks::Hooks};
///
/// #[derive(Debug)]
/// struct Print;
///
/// #[async_trait::async_trait]
/// impl Hooks for Print {
///     async fn on_assignment_changed(&self, added: &[Partition], removed: &[Partition], a: &Assignment) {
///         println!("v{}: +{} -{}", a.version, added.len(), removed.len());
///     }
/// }
/// ```
#[async_trait]
pub trait Hooks: Send + Sync + fmt::Debug + 'static {
    /// This worker's partitions changed (also called for the first assignment).
    async fn on_assignment_changed(
        &self,
        _added: &[Partition],
        _removed: &[Partition],
        _assignment: &Assignment,
    ) {
    }
    /// The worker moved from one state to another.
    async fn on_state_changed(&self, _from: State, _to: State) {}
    /// This worker became leader (`true`) or stopped being leader (`false`).
    async fn on_leadership_changed(&self, _is_leader: bool) {}
    /// The worker entered Degraded, for `reason`. Called right after
    /// [`on_state_changed`](Self::on_state_changed) to `Degraded`; the reason holds until the
    /// worker leaves Degraded (see [`Manager::degraded_reason`](crate::Manager::degraded_reason)).
    async fn on_degraded(&self, _reason: DegradedReason) {}
    /// The worker has been degraded for `duration` and reached `level` (repeated every
    /// `alertInterval`).
    async fn on_degraded_alert(&self, _level: AlertLevel, _duration: Duration) {}
    /// Something failed that the application may want to know about (the manager carries on).
    async fn on_error(&self, _error: &Error) {}
    /// This worker started or stopped holding partitions, renewed its lease or applied a
    /// version (see [`ownership`](crate::ownership)). The records carry the time they
    /// happened; this hook hears of them after the hooks called before it returned.
    async fn on_ownership(&self, _records: &[OwnershipRecord]) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// A notification from the manager, as broadcast by [`Manager::events`](crate::Manager::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The worker changed state after `after` in the previous one.
    StateChanged {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
        /// Time spent in `from`.
        after: Duration,
    },
    /// The worker's assignment changed.
    AssignmentChanged {
        /// The worker it is about.
        worker: WorkerId,
        /// Partitions gained.
        added: Vec<Partition>,
        /// Partitions lost.
        removed: Vec<Partition>,
        /// The new assignment.
        assignment: Arc<Assignment>,
    },
    /// Leadership gained or lost.
    LeadershipChanged {
        /// Whether this worker now leads.
        is_leader: bool,
        /// The lease term when leading.
        term: Option<u64>,
    },
    /// The worker entered Degraded (right after the [`StateChanged`](Event::StateChanged) to
    /// it), and why.
    DegradedEntered {
        /// Why it entered; the same until it leaves Degraded.
        reason: DegradedReason,
    },
    /// A degraded-mode alert.
    DegradedAlert {
        /// Alert level.
        level: AlertLevel,
        /// Time spent degraded.
        duration: Duration,
    },
    /// An error the manager recovered from (or is retrying).
    Error(Arc<Error>),
    /// Changes of what this worker holds, in the order they happened (see
    /// [`ownership`](crate::ownership)).
    Ownership(Arc<[OwnershipRecord]>),
    /// As leader: a live worker speaks a protocol this leader does not understand, so it is
    /// kept out of the map (see [`protocol`](crate::heartbeat::protocol)). Sent when the
    /// leader first sees it so.
    WorkerRefused {
        /// The worker kept out.
        worker: WorkerId,
        /// Why.
        refusal: Refusal,
    },
    /// As leader: the operator's intents (drain, pin, freeze; see [`control`](crate::control))
    /// the leader applies changed — sent when it reads new ones, and once when it takes over
    /// with intents in force. Each is published with reason `operator` (or, while frozen, kept
    /// until unfrozen).
    IntentsApplied {
        /// The intents now in force.
        intents: Arc<crate::control::Intents>,
    },
    /// As leader: the partitions of `label` are parked — no live worker that may receive
    /// partitions has the label, so no one holds them. They spill to where unlabelled
    /// partitions go once they have been parked for `labelSpillGrace` (`spill_in` from now),
    /// unless a worker with the label comes back first. Sent when a publish first parks them.
    LabelParked {
        /// The label.
        label: String,
        /// How many partitions have it.
        partitions: usize,
        /// How long until they spill.
        spill_in: std::time::Duration,
    },
    /// As leader: the partitions of `label` were parked for `labelSpillGrace` and are now
    /// placed where unlabelled partitions go, until a worker with the label comes back.
    LabelSpilled {
        /// The label.
        label: String,
        /// How many partitions have it.
        partitions: usize,
    },
    /// As leader: a live worker lacks capabilities this leader would rely on, so hand-offs
    /// from it take the safe, slower path (see [`Capability`]). Sent when the leader first sees
    /// it so.
    CapabilityFallback {
        /// The worker.
        worker: WorkerId,
        /// What it lacks.
        missing: Vec<Capability>,
    },
}

/// Enqueues events for the dispatcher; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    queue: mpsc::UnboundedSender<(Event, Option<oneshot::Sender<()>>)>,
}

impl EventSink {
    pub(crate) fn emit(&self, event: Event) {
        // The dispatcher outlives every sender; a failed send only happens after shutdown.
        let _ = self.queue.send((event, None));
    }

    /// Enqueues `event`; the answer comes once the hooks returned from it.
    pub(crate) fn emit_and_wait(&self, event: Event) -> oneshot::Receiver<()> {
        let (done, told) = oneshot::channel();
        let _ = self.queue.send((event, Some(done)));
        told
    }

    pub(crate) fn error(&self, error: Error) {
        tracing::warn!(%error, "parti error");
        self.emit(Event::Error(Arc::new(error)));
    }
}

/// The JetStream consumer kept pointed at what the worker holds; taken out (and closed) by a
/// graceful stop.
pub(crate) type SharedConsumer = Arc<tokio::sync::Mutex<Option<WorkerConsumer>>>;

/// Starts the dispatcher task: for each event, in order, it calls `hooks`, then broadcasts the
/// event. It ends once every [`EventSink`] is gone.
pub(crate) fn spawn_dispatcher(
    hooks: Arc<dyn Hooks>,
    broadcast: broadcast::Sender<Event>,
) -> (EventSink, JoinHandle<()>) {
    let (queue, mut rx) = mpsc::unbounded_channel::<(Event, Option<oneshot::Sender<()>>)>();
    let task = tokio::spawn(async move {
        while let Some((event, done)) = rx.recv().await {
            match &event {
                Event::StateChanged { from, to, .. } => hooks.on_state_changed(*from, *to).await,
                Event::AssignmentChanged {
                    added,
                    removed,
                    assignment,
                    ..
                } => {
                    hooks
                        .on_assignment_changed(added, removed, assignment)
                        .await
                }
                Event::LeadershipChanged { is_leader, .. } => {
                    hooks.on_leadership_changed(*is_leader).await
                }
                Event::DegradedEntered { reason } => hooks.on_degraded(*reason).await,
                Event::DegradedAlert { level, duration } => {
                    hooks.on_degraded_alert(*level, *duration).await
                }
                Event::Error(error) => hooks.on_error(error).await,
                Event::Ownership(records) => hooks.on_ownership(records).await,
                Event::WorkerRefused { .. }
                | Event::CapabilityFallback { .. }
                | Event::IntentsApplied { .. }
                | Event::LabelParked { .. }
                | Event::LabelSpilled { .. } => {}
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
            // No subscribers is fine.
            let _ = broadcast.send(event);
        }
    });
    (EventSink { queue }, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Recorder {
        seen: Mutex<Vec<String>>,
        active: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Hooks for Recorder {
        async fn on_state_changed(&self, from: State, to: State) {
            assert!(
                !self.active.swap(true, std::sync::atomic::Ordering::SeqCst),
                "hooks ran concurrently"
            );
            // A slow hook must not reorder what follows it.
            tokio::time::sleep(Duration::from_millis(if from == State::Init {
                30
            } else {
                1
            }))
            .await;
            self.seen.lock().unwrap().push(format!("{from}->{to}"));
            self.active
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn hooks_run_sequentially_in_order() {
        let recorder = Arc::new(Recorder::default());
        let (tx, mut rx) = broadcast::channel(16);
        let (sink, task) = spawn_dispatcher(recorder.clone(), tx);
        let steps = [
            (State::Init, State::ClaimingId),
            (State::ClaimingId, State::Election),
            (State::Election, State::WaitingAssignment),
        ];
        for (from, to) in steps {
            sink.emit(Event::StateChanged {
                from,
                to,
                after: Duration::ZERO,
            });
        }
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        assert_eq!(
            *recorder.seen.lock().unwrap(),
            [
                "init->claiming_id",
                "claiming_id->election",
                "election->waiting_assignment"
            ]
        );
        drop(sink);
        task.await.unwrap();
    }

    #[derive(Debug, Default)]
    struct DegradedRecorder {
        reasons: Mutex<Vec<DegradedReason>>,
    }

    #[async_trait]
    impl Hooks for DegradedRecorder {
        async fn on_degraded(&self, reason: DegradedReason) {
            self.reasons.lock().unwrap().push(reason);
        }
    }

    #[tokio::test]
    async fn degraded_entered_reaches_on_degraded_and_subscribers() {
        let recorder = Arc::new(DegradedRecorder::default());
        let (tx, mut rx) = broadcast::channel(16);
        let (sink, task) = spawn_dispatcher(recorder.clone(), tx);
        for reason in DegradedReason::ALL {
            sink.emit(Event::DegradedEntered { reason });
        }
        for want in DegradedReason::ALL {
            match rx.recv().await.unwrap() {
                Event::DegradedEntered { reason } => assert_eq!(reason, want),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(*recorder.reasons.lock().unwrap(), DegradedReason::ALL);
        drop(sink);
        task.await.unwrap();
    }
}
