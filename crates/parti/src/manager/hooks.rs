//! Application callbacks: the [`Hooks`] trait and its no-op [`NoHooks`].
//!
//! Every notification goes through one queue and one task (the manager's dispatcher): hooks run
//! sequentially, in the order things happened, never concurrently. A slow hook delays later
//! hooks, never the coordination loops (they only enqueue). The same [`Event`]s are broadcast
//! to [`Manager::events`] subscribers.
//!
//! [`Manager::events`]: crate::Manager::events

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::assignment::Assignment;
use crate::error::Error;
pub use crate::events::{AlertLevel, Event};
use crate::ownership::OwnershipRecord;
use crate::partition::Partition;
use crate::state::{DegradedReason, State};

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
