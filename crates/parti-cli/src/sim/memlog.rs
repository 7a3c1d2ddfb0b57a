//! The message path of the in-memory transport: a per-partition log in the process, and a
//! reader per worker that handles the partitions its worker *holds* (as its ownership records
//! say, see [`Holdings`]), each only before its lease deadline.
//!
//! A small at-least-once model, no more: message `seq` of a partition is its `seq`-th append.
//! Each reader keeps a position per held partition and commits it to a shared committed-offset
//! map every [`COMMIT_EVERY`] and when its worker lets a partition go; on gaining a partition it
//! resumes from the committed offset. A crash loses the positions since the last commit, so the
//! next holder handles those messages again (duplicates, never losses). Like the KV store, the
//! log is unreachable while the store is cut off: nothing is appended or read then.
//!
//! A partition is let go by the manager's assignment hook ([`LetGo`]), which runs before the
//! worker writes its `release` record and waits for the batch being handled: every handling of
//! a partition is stamped before its release.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parti::hooks::Hooks;
use parti::ownership::now_ns;
use parti::store::{MemoryStore, Store};
use parti::{Assignment, Manager, Partition};
use parti_testkit::checker::ProcessedRecord;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::holdings::Holdings;
use super::ledger::{Ledger, partition_id, partition_index};

/// How often a reader looks for new messages.
const POLL: Duration = Duration::from_millis(20);
/// How often a reader commits its positions.
const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// Most messages of one partition handled per poll.
const BATCH: u64 = 500;

/// The log: per partition, its length and its committed offset.
#[derive(Debug)]
pub(crate) struct MemLog {
    /// Messages appended, per partition.
    lengths: Vec<AtomicU64>,
    /// Committed offsets, per partition.
    committed: Vec<AtomicU64>,
}

impl MemLog {
    /// An empty log of `partitions` partitions.
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

    /// Messages appended to `partition`.
    fn len(&self, partition: usize) -> u64 {
        self.lengths
            .get(partition)
            .map_or(0, |l| l.load(Ordering::Acquire))
    }

    /// The committed offset of `partition`.
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

/// The assignment hook of an in-memory worker: lets go of the partitions removed (committing
/// how far its reader got) before the manager writes their `release` records.
#[derive(Debug)]
pub(crate) struct LetGo {
    /// The worker's holdings (shared with its reader).
    pub(crate) holdings: Arc<Holdings>,
    /// The log whose offsets are committed.
    pub(crate) log: Arc<MemLog>,
}

impl LetGo {
    /// Stops reading `removed` (waiting for the batch being handled) and commits their positions.
    fn let_go(&self, removed: &[Partition]) {
        let mut state = self.holdings.lock();
        for index in removed.iter().filter_map(partition_index) {
            state.held.remove(&index);
            if let Some(position) = state.positions.remove(&index) {
                self.log.commit(index, position);
            }
        }
    }
}

// `Hooks` is an `async_trait` trait; written out by hand (this crate does not use the macro).
impl Hooks for LetGo {
    fn on_assignment_changed<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        _added: &'life1 [Partition],
        removed: &'life2 [Partition],
        _assignment: &'life3 Assignment,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        self.let_go(removed);
        Box::pin(std::future::ready(()))
    }
}

/// One worker's reader task. Dropping it is a crash (nothing committed); [`close`](Self::close)
/// commits first.
#[derive(Debug)]
pub(crate) struct Reader {
    /// Stops the task gracefully.
    cancel: CancellationToken,
    /// The task.
    task: AbortOnDropHandle<()>,
}

impl Reader {
    /// Starts reading what the worker of `manager` holds (per `holdings`).
    pub(crate) fn spawn(
        log: Arc<MemLog>,
        ledger: Arc<Ledger>,
        manager: Arc<Manager>,
        holdings: Arc<Holdings>,
        store: MemoryStore,
    ) -> Self {
        let cancel = CancellationToken::new();
        let reading = Reading {
            log,
            ledger,
            manager,
            holdings,
            store,
        };
        let task = tokio::spawn(reading.run(cancel.clone()));
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

    /// Stops reading at once, committing nothing; returns once the task has stopped.
    pub(crate) async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// What a reader task works with.
struct Reading {
    log: Arc<MemLog>,
    ledger: Arc<Ledger>,
    manager: Arc<Manager>,
    holdings: Arc<Holdings>,
    store: MemoryStore,
}

impl Reading {
    async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        let mut last_commit = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !self.store.is_connected() {
                continue;
            }
            let handled = self.poll();
            self.ledger.handled(handled);
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.commit();
                last_commit = tokio::time::Instant::now();
            }
        }
        self.commit();
    }

    /// Handles the next messages of every partition held and valid now; each handling stamped
    /// under the holdings' lock.
    fn poll(&self) -> Vec<ProcessedRecord> {
        let worker = self.manager.worker_id().to_string();
        let instance = self.manager.instance_id().to_owned();
        let mut handled = Vec::new();
        let mut state = self.holdings.lock();
        let state = &mut *state;
        // Let go of what is no longer held, committing how far we got.
        state.positions.retain(|p, position| {
            let keep = state.held.contains_key(p);
            if !keep {
                self.log.commit(*p, *position);
            }
            keep
        });
        for (&p, &deadline) in &state.held {
            let position = state
                .positions
                .entry(p)
                .or_insert_with(|| self.log.committed(p));
            let end = self.log.len(p).min(*position + BATCH);
            while *position < end {
                let at_ns = now_ns();
                if at_ns > deadline {
                    break;
                }
                handled.push(ProcessedRecord {
                    at_ns,
                    worker: worker.clone(),
                    instance: instance.clone(),
                    partition: partition_id(p),
                    seq: *position,
                });
                *position += 1;
            }
        }
        handled
    }

    /// Commits every position.
    fn commit(&self) {
        for (p, position) in &self.holdings.lock().positions {
            self.log.commit(*p, *position);
        }
    }
}
