//! What happened to a worker, as values: the [`Event`]s that [`Hooks`](crate::Hooks) are called
//! for and [`Manager::events`](crate::Manager::events) broadcasts, and [`AlertLevel`].
//!
//! This module is a low floor: the manager, the controller and the consumer all report through
//! it (an internal `EventSink` feeds the manager's dispatcher), and it depends on none of them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::assignment::Assignment;
use crate::error::Error;
pub use crate::heartbeat::protocol::{Capability, Refusal};
use crate::ownership::OwnershipRecord;
use crate::partition::{Partition, WorkerId};
use crate::state::{DegradedReason, State};

/// How loud a degraded-mode alert is; levels escalate with the time spent degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
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
    /// kept out of the map (see [`Capability`] and [`Refusal`]). Sent when the
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
        intents: Arc<crate::records::Intents>,
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

/// What the dispatcher receives: an event, and who waits for its hooks to return.
pub(crate) type Queued = (Event, Option<oneshot::Sender<()>>);

/// Enqueues events for the dispatcher; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    queue: mpsc::UnboundedSender<Queued>,
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

impl EventSink {
    /// A sink and the queue it feeds.
    pub(crate) fn channel() -> (EventSink, mpsc::UnboundedReceiver<Queued>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (EventSink { queue }, rx)
    }
}
