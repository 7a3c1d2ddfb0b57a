//! The watch stream of a memory bucket: a snapshot, then live events pushed by the writers,
//! stalled while the client is cut off or paused, moved on to a new bucket of the same name when
//! the bucket is deleted.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::faults::{Faults, merge_cut_offs};
use super::{Backend, BucketCore, disconnected, not_found};
use crate::store::{WatchEvent, WatchStream};

/// One open watch.
pub(super) struct Watch {
    pub(super) core: Arc<BucketCore>,
    /// Where a deleted bucket's successor is looked up.
    pub(super) buckets: Arc<Backend>,
    pub(super) buckets_changed: watch::Receiver<()>,
    pub(super) pattern: String,
    pub(super) rx: mpsc::UnboundedReceiver<WatchEvent>,
    /// Snapshot events still to deliver.
    pub(super) queued: VecDeque<WatchEvent>,
    pub(super) client: Faults,
    pub(super) backend: Faults,
    pub(super) client_changes: watch::Receiver<()>,
    pub(super) backend_changes: watch::Receiver<()>,
    /// A cut-off or a deleted bucket was reported and not yet recovered from.
    pub(super) interrupted: bool,
}

impl Watch {
    pub(super) fn into_stream(self) -> WatchStream {
        futures::stream::unfold(self, |mut w| async move {
            let item = w.next_item().await?;
            Some((item, w))
        })
        .boxed()
    }

    async fn next_item(&mut self) -> Option<Result<WatchEvent, crate::StoreError>> {
        loop {
            // Mark the current fault state as seen before reading it, so no change is missed.
            self.client_changes.borrow_and_update();
            self.backend_changes.borrow_and_update();
            self.buckets_changed.borrow_and_update();
            let now = tokio::time::Instant::now();
            // A paused process reads nothing, and sees no error either.
            if let Some(until) = merge_cut_offs(
                self.client.paused_until(now),
                self.backend.paused_until(now),
            ) {
                self.changes_or(until).await;
                continue;
            }
            if let Some(event) = self.queued.pop_front() {
                return Some(Ok(event));
            }
            let cut = merge_cut_offs(
                self.client.cut_off_until(now),
                self.backend.cut_off_until(now),
            );
            if let Some(until) = cut {
                if !self.interrupted {
                    self.interrupted = true;
                    return Some(Err(disconnected("watch", &self.core.spec.name)));
                }
                self.changes_or(until).await;
                continue;
            }
            if self.core.is_deleted() {
                if !std::mem::replace(&mut self.interrupted, true) {
                    return Some(Err(not_found("watch", &self.core.spec.name)));
                }
                let successor = self.buckets.core(&self.core.spec.name);
                match successor {
                    Some(core) => {
                        (self.rx, self.queued) = core.subscribe(&self.pattern);
                        self.core = core;
                        self.interrupted = false;
                    }
                    None => self.changes_or(None).await,
                }
                continue;
            }
            if std::mem::take(&mut self.interrupted)
                && (self.client.resnapshots() || self.backend.resnapshots())
            {
                let mut state = self.core.lock();
                state.expire_due(&self.core.spec, now);
                while self.rx.try_recv().is_ok() {}
                self.queued = state.snapshot(&self.pattern);
                continue;
            }
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => return Some(Ok(event)),
                    // Closed: the bucket was deleted, handled above.
                    None => continue,
                },
                _ = self.client_changes.changed() => {}
                _ = self.backend_changes.changed() => {}
            }
        }
    }

    /// Waits until `until` (if any) or until the faults or the set of buckets change.
    async fn changes_or(&mut self, until: Option<tokio::time::Instant>) {
        let timer = crate::clock::sleep_until_opt(until);
        tokio::select! {
            () = timer => {}
            _ = self.client_changes.changed() => {}
            _ = self.backend_changes.changed() => {}
            _ = self.buckets_changed.changed() => {}
        }
    }
}
