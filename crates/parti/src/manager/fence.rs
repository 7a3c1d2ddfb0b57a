//! The fence task: carries out each [`HoldingChange`] the runtime decides, in order, so that the
//! application starts and stops processing exactly when the worker starts and stops holding.
//!
//! For each change, in this order:
//! 1. gained partitions are *held* from now on (ownership records with their epoch and the
//!    lease deadline);
//! 2. the consumer's local gate is set to what is held (immediate, no NATS call), and the task
//!    waits for handler calls of lost partitions that are still running;
//! 3. the consumer's filter follows (a NATS call, bounded by `operationTimeout`; a change that
//!    only gains queues it for the reconciler without waiting);
//! 4. the hooks hear of it (`on_assignment_changed` with what was gained and lost) and the task
//!    waits for them to return;
//! 5. lost partitions are *released* (ownership records), and the change's version is
//!    acknowledged as released — the heartbeat carries it to the leader, which then lets the
//!    gainers start (release-then-acquire).
//!
//! Everything here runs on its own task: the coordination loops only enqueue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::dispatcher::SharedConsumer;
use super::holding::HoldingChange;
use crate::assignment::Assignment;
use crate::error::Error;
use crate::events::{Event, EventSink};
use crate::ownership::{Holdings, OwnershipEvent, OwnershipLog, OwnershipRecord};
use crate::partition::{Partition, WorkerId};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the runtime asks of the fence task.
#[derive(Debug)]
pub(crate) enum FenceCommand {
    /// Carry out a change of holdings.
    Change {
        worker: WorkerId,
        change: HoldingChange,
        /// The first change for this worker: the hooks hear of it even when empty.
        first: bool,
    },
    /// The lease was renewed after a lapse whose release is still queued here: extend it (the
    /// consumer gate's deadline, the record) only once that release is carried out, so the
    /// lapsed holdings are never valid again.
    Extend {
        worker: WorkerId,
        valid_until_ns: u64,
        /// The lineage it was renewed under: applied only while still current.
        lineage: u64,
    },
    /// Answer once every earlier command was carried out.
    Flush(oneshot::Sender<()>),
}

/// What the fence task works with.
#[derive(Debug)]
pub(crate) struct FenceParts {
    pub(crate) consumer: SharedConsumer,
    pub(crate) consumer_timeout: Duration,
    pub(crate) events: EventSink,
    pub(crate) holdings: Holdings,
    /// The lease deadline, for the holdings that start.
    pub(crate) lease: watch::Sender<u64>,
    /// The highest commit version whose removals were carried out.
    pub(crate) released: watch::Sender<u64>,
    /// The highest lineage a change of which could not start its gains because the lease had
    /// run out by then (the runtime lapses that lineage, if it is still current).
    pub(crate) missed: watch::Sender<u64>,
    /// The runtime's current lineage ([`NO_LINEAGE`] while it has none): gains and lease
    /// extensions decided under another one are stale and not carried out.
    pub(crate) lineage: Arc<AtomicU64>,
    /// Lapses queued by the runtime and not carried out yet (lease extensions wait behind them).
    pub(crate) lapse_pending: Arc<AtomicU64>,
    /// The consumer gate's lease deadline (if a consumer was given).
    pub(crate) gate_lease: Option<Arc<AtomicU64>>,
    /// Stamps the extend records queued here.
    pub(crate) log: OwnershipLog,
}

/// Starts the fence task; it ends when every sender of the returned queue is gone.
pub(crate) fn spawn_fence(
    parts: FenceParts,
) -> (mpsc::UnboundedSender<FenceCommand>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut parts = parts;
        while let Some(command) = rx.recv().await {
            match command {
                FenceCommand::Change {
                    worker,
                    change,
                    first,
                } => parts.carry_out(&worker, change, first).await,
                FenceCommand::Extend {
                    worker,
                    valid_until_ns,
                    lineage,
                } => {
                    if parts.lineage.load(Ordering::Acquire) == lineage {
                        parts.extend(&worker, valid_until_ns);
                    }
                }
                FenceCommand::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    (tx, task)
}

impl FenceParts {
    async fn carry_out(&mut self, worker: &WorkerId, change: HoldingChange, first: bool) {
        let lost: Vec<Partition> = change.lost.iter().map(|(p, _)| p.clone()).collect();
        // Holdings start only on a lease that is still valid now: a change that waited here
        // past the deadline starts nothing, and the runtime lapses.
        // Gains of a lineage that has ended since (a lapse, a lost ID) start nothing either:
        // that lineage's lapse or close comes next in this queue.
        let valid_until = *self.lease.borrow();
        let at = crate::clock::unix_ns();
        let current = self.lineage.load(Ordering::Acquire) == change.lineage;
        let gained: Vec<Partition> = if current && at < valid_until {
            change.gained.iter().map(|(p, _)| p.clone()).collect()
        } else {
            if current && !change.gained.is_empty() {
                tracing::warn!(
                    partitions = change.gained.len(),
                    "lease ran out before these holdings could start; lapsing"
                );
                let lineage = change.lineage;
                self.missed.send_if_modified(|m| {
                    let newer = lineage >= *m;
                    *m = (*m).max(lineage);
                    newer
                });
            }
            Vec::new()
        };
        let mut records = self
            .holdings
            .hold(at, worker, &gained, change.version, valid_until);
        if !change.is_empty() {
            self.gate(worker, &lost).await;
        }
        if !records.is_empty() {
            self.publish(std::mem::take(&mut records));
        }
        if !change.is_empty() || first {
            let told = self.events.emit_and_wait(Event::AssignmentChanged {
                worker: worker.clone(),
                added: gained,
                removed: lost.clone(),
                assignment: Arc::clone(&change.assignment),
            });
            // A dispatcher that is gone (shutdown) has nobody left to tell.
            let _ = told.await;
        }
        let released = self.holdings.release(&lost);
        self.publish(released);
        if change.lapse {
            self.lapse_pending.fetch_sub(1, Ordering::AcqRel);
        }
        self.released.send_if_modified(|v| {
            let newer = change.version > *v;
            if newer {
                *v = change.version;
            }
            newer
        });
    }

    /// Points the consumer at what is held once `lost` is let go: the local gate at once
    /// (waiting for handler calls of `lost` still running), then the filter.
    async fn gate(&self, worker: &WorkerId, lost: &[Partition]) {
        let lost: std::collections::BTreeSet<&Partition> = lost.iter().collect();
        let held: Vec<Partition> = self
            .holdings
            .held()
            .filter(|p| !lost.contains(p))
            .cloned()
            .collect();
        let guard = self.consumer.lock().await;
        let Some(consumer) = guard.as_ref() else {
            return;
        };
        consumer.set_held(&held).await;
        let assignment = Assignment {
            partitions: held,
            ..Assignment::default()
        };
        // A change that only gains does not wait for the filter: holding starts at once under
        // the local gate, and a slow filter update (a subject still in a dead worker's
        // durable) must not hold up the changes queued behind this one.
        if lost.is_empty() {
            if let Err(error) = consumer.follow_queued(worker, &assignment).await {
                tracing::warn!(%error, "consumer update failed");
                self.events.error(error);
            }
            return;
        }
        let result =
            tokio::time::timeout(self.consumer_timeout, consumer.follow(worker, &assignment)).await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => Error::Consumer {
                context: "filter update".into(),
                source: format!(
                    "still pending after {:?}; it keeps retrying",
                    self.consumer_timeout
                )
                .into(),
            },
        };
        tracing::warn!(%error, "consumer update failed");
        self.events.error(error);
    }

    /// Extends the lease after a lapse was released (see [`FenceCommand::Extend`]).
    fn extend(&self, worker: &WorkerId, valid_until_ns: u64) {
        extend_lease(
            &self.lease,
            self.gate_lease.as_deref(),
            (&self.log, crate::clock::unix_ns()),
            &self.events,
            worker,
            valid_until_ns,
        );
    }

    fn publish(&self, records: Vec<OwnershipRecord>) {
        if !records.is_empty() {
            self.events.emit(Event::Ownership(records.into()));
        }
    }
}

/// No lineage: the worker has no stable ID (lost, not claimed again yet).
pub(crate) const NO_LINEAGE: u64 = u64::MAX;

/// Makes a lease deadline current: for the holdings that start, for the consumer gate, and in
/// the ownership record, stamped with the instant the extension was decided at (`log.1`). A
/// deadline never goes back (an extension queued behind a lapse may arrive after a newer one).
pub(crate) fn extend_lease(
    lease: &watch::Sender<u64>,
    gate: Option<&AtomicU64>,
    (log, at_ns): (&OwnershipLog, u64),
    events: &EventSink,
    worker: &WorkerId,
    valid_until_ns: u64,
) {
    let raised = lease.send_if_modified(|v| {
        let newer = valid_until_ns > *v;
        if newer {
            *v = valid_until_ns;
        }
        newer
    });
    if !raised {
        return;
    }
    if let Some(cell) = gate {
        cell.fetch_max(valid_until_ns, Ordering::AcqRel);
    }
    let record = log.record_at(at_ns, worker, OwnershipEvent::Extend { valid_until_ns });
    events.emit(Event::Ownership(Arc::new([record])));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::manager::dispatcher::spawn_dispatcher;
    use crate::manager::hooks::NoHooks;
    use crate::ownership::OwnershipRecorder;

    /// A fence task over an ownership recorder, with the lease at `lease` and lineage 2
    /// current.
    fn fence(
        lease: u64,
    ) -> (
        mpsc::UnboundedSender<FenceCommand>,
        JoinHandle<()>,
        OwnershipRecorder,
        watch::Receiver<u64>,
    ) {
        let recorder = OwnershipRecorder::default();
        let log = OwnershipLog::new(Some(Arc::new(recorder.clone())), "i");
        let (events, _dispatcher) =
            spawn_dispatcher(Arc::new(NoHooks), tokio::sync::broadcast::channel(16).0);
        let (missed_tx, missed) = watch::channel(0);
        let lineage = Arc::new(AtomicU64::new(2));
        let (fence, task) = spawn_fence(FenceParts {
            consumer: Arc::default(),
            consumer_timeout: Duration::from_secs(1),
            events,
            holdings: Holdings::new(log.clone()),
            lease: watch::Sender::new(lease),
            released: watch::Sender::new(0),
            missed: missed_tx,
            lineage,
            lapse_pending: Arc::default(),
            gate_lease: None,
            log,
        });
        (fence, task, recorder, missed)
    }

    /// A change of lineage `lineage` that gains `p`.
    fn gain(version: u64, lineage: u64) -> FenceCommand {
        FenceCommand::Change {
            worker: WorkerId::new("w"),
            change: HoldingChange {
                gained: vec![(Partition::new(["p"], 1).unwrap(), version)],
                version,
                lineage,
                ..HoldingChange::default()
            },
            first: false,
        }
    }

    async fn flush(fence: &mpsc::UnboundedSender<FenceCommand>) {
        let (done, flushed) = oneshot::channel();
        fence.send(FenceCommand::Flush(done)).unwrap();
        flushed.await.unwrap();
    }

    fn holds(recorder: &OwnershipRecorder) -> Vec<OwnershipRecord> {
        recorder
            .records()
            .into_iter()
            .filter(|r| matches!(r.event, OwnershipEvent::Hold { .. }))
            .collect()
    }

    #[tokio::test]
    async fn a_change_carried_out_after_the_lease_ran_out_starts_nothing_and_is_reported() {
        // The lease ran out (deadline 1 ns after the epoch) before the change got here.
        let (fence, _task, recorder, mut missed) = fence(1);
        fence.send(gain(3, 2)).unwrap();
        flush(&fence).await;
        assert!(holds(&recorder).is_empty(), "{:?}", recorder.records());
        assert!(missed.has_changed().unwrap());
        assert_eq!(*missed.borrow_and_update(), 2, "the lineage to lapse");
    }

    #[tokio::test]
    async fn gains_and_extensions_of_an_ended_lineage_are_not_carried_out() {
        let deadline = crate::clock::unix_ns() + 60_000_000_000;
        let (fence, _task, recorder, missed) = fence(deadline);
        // Decided under lineage 1, which has ended (2 is current): nothing starts, nothing to
        // lapse, and its extension does not touch the lease.
        fence.send(gain(3, 1)).unwrap();
        fence
            .send(FenceCommand::Extend {
                worker: WorkerId::new("w"),
                valid_until_ns: deadline + 1,
                lineage: 1,
            })
            .unwrap();
        flush(&fence).await;
        assert!(holds(&recorder).is_empty(), "{:?}", recorder.records());
        assert!(!missed.has_changed().unwrap());
        let extends = recorder
            .records()
            .into_iter()
            .filter(|r| matches!(r.event, OwnershipEvent::Extend { .. }))
            .count();
        assert_eq!(extends, 0);
    }

    #[tokio::test]
    async fn a_change_within_the_lease_starts_its_holdings_stamped_before_the_deadline() {
        let deadline = crate::clock::unix_ns() + 60_000_000_000;
        let (fence, _task, recorder, missed) = fence(deadline);
        fence.send(gain(3, 2)).unwrap();
        flush(&fence).await;
        let held = holds(&recorder);
        assert_eq!(held.len(), 1);
        assert!(held[0].at_ns < deadline);
        assert!(!missed.has_changed().unwrap());
    }
}
