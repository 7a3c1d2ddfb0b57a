//! The message path of the in-memory transport: a per-partition log in the process, and a
//! reader per worker that handles the partitions its manager says it owns.
//!
//! A small at-least-once model, no more: message `seq` of a partition is its `seq`-th append.
//! Each reader keeps a position per owned partition and commits it to a shared committed-offset
//! map every [`COMMIT_EVERY`] and when it lets a partition go; on gaining a partition it resumes
//! from the committed offset. A crash loses the positions since the last commit, so the next
//! owner handles those messages again (duplicates, never losses). Two owners for a moment (one
//! applied the new map, the other not yet) also give duplicates. Like the KV store, the log is
//! unreachable while the store is cut off: nothing is appended or read then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parti::Manager;
use parti::store::{MemoryStore, Store};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::ledger::Ledger;
use super::partition_index;

/// How often a reader looks for new messages.
const POLL: Duration = Duration::from_millis(20);
/// How often a reader commits its positions.
const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// Most messages of one partition handled per poll.
const BATCH: u64 = 500;

/// The log: per partition, its length and its committed offset.
#[derive(Debug)]
pub(crate) struct MemLog {
    lengths: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
}

impl MemLog {
    pub(crate) fn new(partitions: usize) -> Self {
        Self {
            lengths: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            committed: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Appends the next message of `partition`.
    pub(crate) fn append(&self, partition: usize) {
        if let Some(len) = self.lengths.get(partition) {
            len.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn len(&self, partition: usize) -> u64 {
        self.lengths
            .get(partition)
            .map_or(0, |l| l.load(Ordering::Acquire))
    }

    fn committed(&self, partition: usize) -> u64 {
        self.committed
            .get(partition)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Committed offsets only move forward.
    fn commit(&self, partition: usize, position: u64) {
        if let Some(c) = self.committed.get(partition) {
            c.fetch_max(position, Ordering::AcqRel);
        }
    }
}

/// One worker's reader task. Dropping it is a crash (nothing committed); [`close`](Self::close)
/// commits first.
#[derive(Debug)]
pub(crate) struct Reader {
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl Reader {
    pub(crate) fn spawn(
        log: Arc<MemLog>,
        ledger: Arc<Ledger>,
        manager: Arc<Manager>,
        store: MemoryStore,
    ) -> Self {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(read(log, ledger, manager, store, cancel.clone()));
        Self {
            cancel,
            task: AbortOnDropHandle::new(task),
        }
    }

    /// Stops reading and commits every position (a graceful stop).
    pub(crate) async fn close(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn read(
    log: Arc<MemLog>,
    ledger: Arc<Ledger>,
    manager: Arc<Manager>,
    store: MemoryStore,
    cancel: CancellationToken,
) {
    let mut positions: BTreeMap<usize, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(POLL);
    let mut last_commit = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !store.is_connected() {
            continue;
        }
        let owned: Vec<usize> = manager
            .assignment()
            .partitions
            .iter()
            .filter_map(partition_index)
            .collect();
        // Let go of what is no longer ours, committing how far we got.
        positions.retain(|p, position| {
            let keep = owned.contains(p);
            if !keep {
                log.commit(*p, *position);
            }
            keep
        });
        for p in owned {
            let position = positions.entry(p).or_insert_with(|| log.committed(p));
            let end = log.len(p).min(*position + BATCH);
            while *position < end {
                ledger.handled(p, *position);
                *position += 1;
            }
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            for (p, position) in &positions {
                log.commit(*p, *position);
            }
            last_commit = tokio::time::Instant::now();
        }
    }
    for (p, position) in &positions {
        log.commit(*p, *position);
    }
}
