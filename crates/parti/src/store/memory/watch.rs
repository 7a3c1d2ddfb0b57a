//! The watch stream of a memory bucket: a snapshot, then live events pushed by the writers,
//! stalled while the client is cut off.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::faults::{Faults, merge_cut_offs};
use super::{BucketCore, disconnected};
use crate::store::{WatchEvent, WatchStream};

/// One open watch.
pub(super) struct Watch {
    pub(super) core: Arc<BucketCore>,
    pub(super) pattern: String,
    pub(super) rx: mpsc::UnboundedReceiver<WatchEvent>,
    /// Snapshot events still to deliver.
    pub(super) queued: VecDeque<WatchEvent>,
    pub(super) client: Faults,
    pub(super) backend: Faults,
    pub(super) client_changes: watch::Receiver<()>,
    pub(super) backend_changes: watch::Receiver<()>,
    /// A cut-off was reported and not yet recovered from.
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
            if let Some(event) = self.queued.pop_front() {
                return Some(Ok(event));
            }
            // Mark the current fault state as seen before reading it, so no change is missed.
            self.client_changes.borrow_and_update();
            self.backend_changes.borrow_and_update();
            let now = tokio::time::Instant::now();
            let cut = merge_cut_offs(
                self.client.cut_off_until(now),
                self.backend.cut_off_until(now),
            );
            if let Some(until) = cut {
                if !self.interrupted {
                    self.interrupted = true;
                    return Some(Err(disconnected("watch", &self.core.spec.name)));
                }
                let timer = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = timer => {}
                    _ = self.client_changes.changed() => {}
                    _ = self.backend_changes.changed() => {}
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
                event = self.rx.recv() => return event.map(Ok),
                _ = self.client_changes.changed() => {}
                _ = self.backend_changes.changed() => {}
            }
        }
    }
}
