//! The bucket guard: notices a bucket deleted (or deleted and created again) under a running
//! worker, creates it again, and gives a new assignment bucket back its floors.
//!
//! It asks each bucket for its [incarnation](Bucket::incarnation) — every probe interval
//! while this worker leads, at once when the worker's own KV calls fail, and every interval
//! again while a bucket is in trouble. Followers do not probe on a timer: on a fleet that
//! would be four JetStream API calls per worker per interval, and a lost bucket makes their
//! renewals or watches fail anyway, or is repaired by the leader. A
//! bucket that is gone is created again from its spec — the call that creates a missing bucket
//! at start-up. A bucket that comes back as another incarnation lost everything in it; for the
//! assignment bucket that includes the `floor` key, the version and term below which nothing
//! may start again. The guard writes it back from the highest commit and term this worker has
//! seen (raised, never lowered, under a revision check), so that versions, the epochs built on
//! them and leader terms continue above what anyone may have held. While a bucket is missing,
//! or replaced and not yet repaired, the worker is Degraded with reason
//! [`BucketMissing`](DegradedReason::BucketMissing) or
//! [`BucketRecreated`](DegradedReason::BucketRecreated).
//!
//! # Layout
//!
//! [`judge`] is the decision (pure: what one probe means for one bucket); [`BucketGuard`] is
//! the task around it (probing, re-creating, repairing, reporting).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::records::{FLOOR_KEY, VersionFloor};
use crate::state::DegradedReason;
use crate::store::{Bucket, BucketSpec, Store, StoreError, codec};

/// How many revision conflicts a floor repair rides out before it waits for the next probe.
const REPAIR_ATTEMPTS: usize = 5;

/// What one probe means for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The incarnation known before (or the first one seen).
    Same,
    /// The bucket does not exist.
    Missing,
    /// Another incarnation than the one known: the bucket was deleted and created again.
    Replaced,
}

/// What a probe that found `probed` means, given the incarnation `known` before.
pub(crate) fn judge(known: Option<u64>, probed: Option<u64>) -> Seen {
    match (known, probed) {
        (_, None) => Seen::Missing,
        (None, Some(_)) => Seen::Same,
        (Some(k), Some(p)) if k == p => Seen::Same,
        (Some(_), Some(_)) => Seen::Replaced,
    }
}

/// A bucket in trouble: why the worker is degraded, and which bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trouble {
    /// [`BucketMissing`](DegradedReason::BucketMissing) or
    /// [`BucketRecreated`](DegradedReason::BucketRecreated).
    pub(crate) reason: DegradedReason,
    /// The bucket's name.
    pub(crate) bucket: String,
}

/// One guarded bucket.
struct Guarded {
    spec: BucketSpec,
    bucket: Arc<dyn Bucket>,
    /// The incarnation last seen (`None` before the first probe answered).
    known: Option<u64>,
    /// Whether this is the assignment bucket (its floor key is repaired).
    assignment: bool,
}

/// The guard task's handle: stop it with [`stop`](Self::stop).
pub(crate) struct BucketGuard {
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for BucketGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketGuard").finish_non_exhaustive()
    }
}

impl BucketGuard {
    /// Guards `buckets` (spec and handle; `assignment` names the one whose floor is repaired);
    /// when several are in trouble, the first one's is reported. `floor` carries the highest
    /// commit version and term this worker has seen. `probes` says when to probe: every
    /// `interval` while it reads `periodic`, and at once when `now` is notified. The returned
    /// receiver holds the current trouble, if any.
    pub(crate) fn spawn(
        store: Arc<dyn Store>,
        buckets: Vec<(BucketSpec, Arc<dyn Bucket>)>,
        assignment: &str,
        floor: watch::Receiver<VersionFloor>,
        probes: Probes,
        interval: Duration,
    ) -> (Self, watch::Receiver<Option<Trouble>>) {
        let (trouble_tx, trouble_rx) = watch::channel(None);
        let guarded = buckets
            .into_iter()
            .map(|(spec, bucket)| Guarded {
                assignment: spec.name == assignment,
                spec,
                bucket,
                known: None,
            })
            .collect();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            store,
            guarded,
            floor,
            probes,
            interval,
            trouble_tx,
            cancel.clone(),
        ));
        (
            Self {
                cancel,
                task: AbortOnDropHandle::new(task),
            },
            trouble_rx,
        )
    }

    /// Stops the guard and waits for it.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// When the guard probes.
#[derive(Debug)]
pub(crate) struct Probes {
    /// Every probe interval while `true` (the worker leads).
    pub(crate) periodic: watch::Receiver<bool>,
    /// Once per notification (the worker's own KV calls failed).
    pub(crate) now: Arc<tokio::sync::Notify>,
}

async fn run(
    store: Arc<dyn Store>,
    mut guarded: Vec<Guarded>,
    floor: watch::Receiver<VersionFloor>,
    mut probes: Probes,
    interval: Duration,
    trouble: watch::Sender<Option<Trouble>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_round: Option<tokio::time::Instant> = None;
    loop {
        let on_timer = *probes.periodic.borrow() || trouble.borrow().is_some();
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick(), if on_timer => {}
            () = probes.now.notified() => {}
            changed = probes.periodic.changed() => {
                if changed.is_err() {
                    return;
                }
                // Leading now (or no longer): the timer's condition changed.
                continue;
            }
        }
        // A replacement is told only from an incarnation seen one round before: after a pause
        // in probing (a follower probes only when its calls fail), the last one seen may be
        // long gone for reasons already dealt with, and judging against it would report a
        // replacement that is history.
        let now = tokio::time::Instant::now();
        if last_round.is_none_or(|at| now.saturating_duration_since(at) > interval * 2) {
            for g in &mut guarded {
                g.known = None;
            }
        }
        last_round = Some(now);
        let mut found = None;
        for g in &mut guarded {
            if let Some(t) = probe(&*store, g, &floor).await {
                found.get_or_insert(t);
            }
        }
        trouble.send_if_modified(|current| {
            let changed = *current != found;
            *current = found;
            changed
        });
    }
}

/// Probes one bucket and repairs what it can; the trouble left, if any. A probe that fails
/// (NATS down, a timeout) tells nothing: the connection's own checks cover that.
async fn probe(
    store: &dyn Store,
    g: &mut Guarded,
    floor: &watch::Receiver<VersionFloor>,
) -> Option<Trouble> {
    let name = g.spec.name.clone();
    let probed = match g.bucket.incarnation().await {
        Ok(probed) => probed,
        Err(e) => {
            tracing::debug!(bucket = %name, error = %e, "bucket probe failed");
            return None;
        }
    };
    let trouble = |reason| {
        Some(Trouble {
            reason,
            bucket: name.clone(),
        })
    };
    match judge(g.known, probed) {
        Seen::Same => {
            g.known = probed;
            None
        }
        Seen::Missing if !g.spec.create_if_missing => {
            tracing::warn!(bucket = %name, "bucket is missing and autoProvision is off: waiting for it to be provisioned again");
            metrics::counter!("parti_bucket_lost_total", "bucket" => name.clone()).increment(1);
            trouble(DegradedReason::BucketMissing)
        }
        Seen::Missing => {
            tracing::warn!(bucket = %name, "bucket is missing: creating it again");
            metrics::counter!("parti_bucket_lost_total", "bucket" => name.clone()).increment(1);
            if let Err(e) = store.bucket(&g.spec).await {
                tracing::warn!(bucket = %name, error = %e, "cannot create the missing bucket yet");
            }
            // Judged again at the next probe: another incarnation, to repair then.
            trouble(DegradedReason::BucketMissing)
        }
        Seen::Replaced => {
            tracing::warn!(bucket = %name, "bucket was deleted and created again: everything in it is gone");
            if g.assignment {
                let floor = *floor.borrow();
                if let Err(e) = restore_floor(&*g.bucket, floor).await {
                    tracing::warn!(bucket = %name, error = %e, "cannot restore the version floor yet");
                    return trouble(DegradedReason::BucketRecreated);
                }
                tracing::info!(bucket = %name, version = floor.version, term = floor.term, "version floor restored in the new bucket");
            }
            g.known = probed;
            trouble(DegradedReason::BucketRecreated)
        }
    }
}

/// Raises the `floor` key of a (new) assignment bucket to at least `floor`, under a revision
/// check; a floor already as high stays as it is.
pub(crate) async fn restore_floor(
    bucket: &dyn Bucket,
    floor: VersionFloor,
) -> Result<(), StoreError> {
    if floor.version == 0 && floor.term == 0 {
        return Ok(());
    }
    for _ in 0..REPAIR_ATTEMPTS {
        let current = bucket.get(FLOOR_KEY).await?;
        let written = match &current {
            None => bucket.create(FLOOR_KEY, encode(floor)?).await,
            Some(entry) => {
                let old = codec::decode::<VersionFloor>(bucket.name(), FLOOR_KEY, &entry.value)
                    .ok()
                    .unwrap_or(VersionFloor {
                        version: 0,
                        term: 0,
                    });
                if old.version >= floor.version && old.term >= floor.term {
                    return Ok(());
                }
                let raised = VersionFloor {
                    version: old.version.max(floor.version),
                    term: old.term.max(floor.term),
                };
                bucket
                    .update(FLOOR_KEY, encode(raised)?, entry.revision)
                    .await
            }
        };
        match written {
            Ok(_) => return Ok(()),
            Err(StoreError::AlreadyExists { .. } | StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::backend(
        "restore floor",
        bucket.name(),
        "the floor key kept changing",
    ))
}

fn encode(floor: VersionFloor) -> Result<bytes::Bytes, StoreError> {
    codec::encode(&floor).map_err(|e| StoreError::backend("restore floor", FLOOR_KEY, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_probe_means_the_same_bucket_a_missing_one_or_a_replaced_one() {
        assert_eq!(judge(None, Some(7)), Seen::Same);
        assert_eq!(judge(Some(7), Some(7)), Seen::Same);
        assert_eq!(judge(Some(7), None), Seen::Missing);
        assert_eq!(judge(None, None), Seen::Missing);
        assert_eq!(judge(Some(7), Some(8)), Seen::Replaced);
    }

    #[tokio::test]
    async fn the_floor_is_raised_never_lowered() {
        let store = MemoryStore::new();
        let bucket = store.bucket(&BucketSpec::new("a")).await.unwrap();
        let floor = |version, term| VersionFloor { version, term };
        // (floor restored, floor in the bucket afterwards)
        let cases = [
            (floor(9, 4), floor(9, 4)),
            (floor(5, 6), floor(9, 6)),
            (floor(3, 1), floor(9, 6)),
        ];
        for (restored, want) in cases {
            restore_floor(&*bucket, restored).await.unwrap();
            let e = bucket.get(FLOOR_KEY).await.unwrap().unwrap();
            let got = codec::decode::<VersionFloor>("a", FLOOR_KEY, &e.value).unwrap();
            assert_eq!(got, want, "after restoring {restored:?}");
        }
        // Garbage in the key is no floor: replaced.
        bucket
            .put(FLOOR_KEY, bytes::Bytes::from_static(b"garbage"))
            .await
            .unwrap();
        restore_floor(&*bucket, floor(2, 2)).await.unwrap();
        let e = bucket.get(FLOOR_KEY).await.unwrap().unwrap();
        let got = codec::decode::<VersionFloor>("a", FLOOR_KEY, &e.value).unwrap();
        assert_eq!(got, floor(2, 2));
    }
}
