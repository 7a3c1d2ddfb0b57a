//! The manager's dispatcher: one task that takes [`Event`]s in order, calls the
//! [`Hooks`] for each, then broadcasts it; and the consumer the manager keeps pointed at what
//! the worker holds.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::hooks::Hooks;
use crate::events::{Event, EventSink};

/// The JetStream consumer kept pointed at what the worker holds; taken out (and closed) by a
/// graceful stop.
pub(crate) type SharedConsumer = Arc<tokio::sync::Mutex<Option<ManagedConsumer>>>;

/// The consumer a manager drives: a [`WorkerConsumer`](crate::WorkerConsumer).
#[cfg(feature = "nats")]
pub(crate) type ManagedConsumer = crate::consumer::WorkerConsumer;

/// Without the `nats` feature there is no consumer to drive: a type with no value.
#[cfg(not(feature = "nats"))]
#[derive(Debug)]
pub(crate) enum ManagedConsumer {}

#[cfg(not(feature = "nats"))]
impl ManagedConsumer {
    pub(crate) fn lease_cell(&self) -> Arc<std::sync::atomic::AtomicU64> {
        match *self {}
    }

    pub(crate) fn pace(&self, _fleet_rate: f64) -> Arc<std::sync::atomic::AtomicU64> {
        match *self {}
    }

    pub(crate) async fn set_held(&self, _held: &[crate::Partition]) {
        match *self {}
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) async fn kill(self) {
        match self {}
    }

    pub(crate) async fn follow(
        &self,
        _worker: &crate::WorkerId,
        _assignment: &crate::Assignment,
    ) -> crate::Result<()> {
        match *self {}
    }

    pub(crate) async fn follow_queued(
        &self,
        _worker: &crate::WorkerId,
        _assignment: &crate::Assignment,
    ) -> crate::Result<()> {
        match *self {}
    }

    pub(crate) async fn close(self) -> crate::Result<()> {
        match self {}
    }
}

/// Starts the dispatcher task: for each event, in order, it calls `hooks`, then broadcasts the
/// event. It ends once every [`EventSink`] is gone.
pub(crate) fn spawn_dispatcher(
    hooks: Arc<dyn Hooks>,
    broadcast: broadcast::Sender<Event>,
) -> (EventSink, JoinHandle<()>) {
    let (sink, mut rx) = EventSink::channel();
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
    (sink, task)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::state::{DegradedReason, State};
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
