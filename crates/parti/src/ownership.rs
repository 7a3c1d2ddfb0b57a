//! The ownership history: when this worker starts and stops *holding* each partition.
//!
//! A worker **holds** a partition while the application may process it: the consumer may
//! deliver its messages and the hooks have been (or are being) told. Every change of holding is
//! an [`OwnershipRecord`], timestamped when it happened, with the holding's **epoch** (today the
//! assignment version that granted it) and the **lease deadline** the worker promised: a holding
//! is valid only until `validUntilNs`, pushed forward by an [`OwnershipEvent::Extend`] record on
//! each successful heartbeat renewal.
//!
//! Records reach the application three ways:
//! - an [`OwnershipSink`] given to [`ManagerBuilder::ownership_sink`], called synchronously at
//!   the moment of the change (an [`OwnershipRecorder`] keeps them in memory for tests; the
//!   `parti worker --ownership-log FILE` command writes them as JSON lines);
//! - [`Event::Ownership`] on [`Manager::events`];
//! - [`Hooks::on_ownership`].
//!
//! The JSON form of a record is one object with camelCase keys, for example
//! `{"atNs":1764480000000000000,"worker":"worker-3","instance":"9f…","event":"hold",
//! "partition":"tenant-7","epoch":12,"validUntilNs":1764480006000000000}`; `docs/ownership-log.md`
//! documents every field.
//!
//! Timestamps come from one clock per process: the wall clock read once, advanced by the
//! monotonic clock (tokio's, so the paused test clock drives it too). Processes on one host can
//! therefore be compared, and a process stopped by `SIGSTOP` sees the time it lost.
//!
//! [`ManagerBuilder::ownership_sink`]: crate::ManagerBuilder::ownership_sink
//! [`Event::Ownership`]: crate::Event::Ownership
//! [`Manager::events`]: crate::Manager::events
//! [`Hooks::on_ownership`]: crate::Hooks::on_ownership

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::clock::unix_ns;
use crate::partition::{Partition, WorkerId};

/// Now, in Unix nanoseconds of the clock ownership records use (see the module docs): for
/// records of one's own — messages handled, faults injected — that must line up with them.
pub fn now_ns() -> u64 {
    unix_ns()
}

/// One change of what a worker holds, as written to the ownership log.
///
/// `#[non_exhaustive]`: build one with [`OwnershipRecord::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct OwnershipRecord {
    /// When it happened, in Unix nanoseconds (see the module docs for the clock).
    pub at_ns: u64,
    /// The worker's stable ID at the time.
    pub worker: WorkerId,
    /// The process behind the worker (fresh for each start); a killed process's holdings end
    /// with it.
    pub instance: String,
    /// What happened.
    #[serde(flatten)]
    pub event: OwnershipEvent,
}

impl OwnershipRecord {
    /// A record that `worker`, run by process `instance`, saw `event` at `at_ns` (Unix
    /// nanoseconds).
    pub fn new(
        at_ns: u64,
        worker: WorkerId,
        instance: impl Into<String>,
        event: OwnershipEvent,
    ) -> Self {
        Self {
            at_ns,
            worker,
            instance: instance.into(),
            event,
        }
    }
}

/// What an [`OwnershipRecord`] says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
#[non_exhaustive]
pub enum OwnershipEvent {
    /// The worker started holding `partition`.
    #[serde(rename_all = "camelCase")]
    Hold {
        /// The partition's [`id`](Partition::id).
        partition: String,
        /// The holding's epoch: a fencing token that increases from one holder to the next.
        epoch: u64,
        /// The lease deadline at the start of the holding, in Unix nanoseconds.
        valid_until_ns: u64,
    },
    /// The worker stopped holding `partition`.
    #[serde(rename_all = "camelCase")]
    Release {
        /// The partition's [`id`](Partition::id).
        partition: String,
        /// The epoch of the holding that ended.
        epoch: u64,
    },
    /// The worker renewed its lease: every holding is valid until `valid_until_ns`.
    #[serde(rename_all = "camelCase")]
    Extend {
        /// The new lease deadline, in Unix nanoseconds.
        valid_until_ns: u64,
    },
    /// The worker applied assignment `version` (versions a worker applies never go back).
    #[serde(rename_all = "camelCase")]
    Applied {
        /// The assignment version.
        version: u64,
    },
}

/// Receives ownership records synchronously, at the moment each change happens.
///
/// Implementations must be quick and must not block for long (a file append is fine): they run
/// on the manager's tasks.
pub trait OwnershipSink: Send + Sync + fmt::Debug + 'static {
    /// One record, in the order they were made for this worker. Each record is stamped when
    /// its change was decided, and the manager records from more than one task (lease
    /// extensions from its runtime, holds and releases from its fence task), so `at_ns` can
    /// go back slightly from one record to the next: sort a process's records by `at_ns`
    /// before reading them as a timeline.
    fn record(&self, record: &OwnershipRecord);
}

/// An [`OwnershipSink`] that keeps every record in memory; cheap to clone (clones share the
/// records). Meant for tests and simulations.
///
/// ```
/// use std::sync::Arc;
/// use parti::ownership::OwnershipRecorder;
///
/// let recorder = OwnershipRecorder::default();
/// # let store = parti::store::MemoryStore::new();
/// let builder = parti::Manager::builder_with_store(Arc::new(store.client()))
///     .ownership_sink(Arc::new(recorder.clone()));
/// // … start, run, stop; then check `recorder.records()`.
/// # drop(builder);
/// assert!(recorder.records().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct OwnershipRecorder {
    records: Arc<Mutex<Vec<OwnershipRecord>>>,
}

impl OwnershipRecorder {
    /// Every record so far, in arrival order.
    pub fn records(&self) -> Vec<OwnershipRecord> {
        self.records
            .lock()
            .map(|records| records.clone())
            .unwrap_or_default()
    }
}

impl OwnershipSink for OwnershipRecorder {
    fn record(&self, record: &OwnershipRecord) {
        if let Ok(mut records) = self.records.lock() {
            records.push(record.clone());
        }
    }
}

/// Stamps records for one process and hands them to the sink (if any).
#[derive(Debug, Clone)]
pub(crate) struct OwnershipLog {
    sink: Option<Arc<dyn OwnershipSink>>,
    instance: Arc<str>,
}

impl OwnershipLog {
    pub(crate) fn new(sink: Option<Arc<dyn OwnershipSink>>, instance: &str) -> Self {
        Self {
            sink,
            instance: instance.into(),
        }
    }

    /// Stamps `event` with the time now and hands it to the sink.
    pub(crate) fn record(&self, worker: &WorkerId, event: OwnershipEvent) -> OwnershipRecord {
        self.record_at(unix_ns(), worker, event)
    }

    /// Stamps `event` with `at_ns` (when it was decided, taken just before) and hands it to
    /// the sink.
    pub(crate) fn record_at(
        &self,
        at_ns: u64,
        worker: &WorkerId,
        event: OwnershipEvent,
    ) -> OwnershipRecord {
        let record = OwnershipRecord {
            at_ns,
            worker: worker.clone(),
            instance: self.instance.to_string(),
            event,
        };
        if let Some(sink) = &self.sink {
            sink.record(&record);
        }
        record
    }
}

/// The partitions a worker holds at one instant, each with its holding's **epoch**: what
/// [`Manager::held`](crate::Manager::held) and
/// [`Manager::watch_held`](crate::Manager::watch_held) give the application.
///
/// The epoch is a fencing token: it is strictly greater than the epoch of every earlier holding
/// of the same partition, by any worker. Pass it to the stores the application writes to and
/// let them refuse writes that carry an older one (`UPDATE … SET epoch = $1 WHERE id = $2 AND
/// epoch <= $1`): a worker that was paused past its lease and resumes mid-write is then turned
/// away even before it notices it lost the partition. `docs/ownership.md` shows the pattern.
///
/// ```
/// use parti::ownership::Held;
/// use parti::Partition;
/// let held = Held::default();
/// assert!(held.is_empty());
/// assert_eq!(held.epoch(&Partition::new(["tenant-7"], 1)?), None);
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// Partition ID → (partition, epoch).
    partitions: BTreeMap<String, (Partition, u64)>,
}

impl Held {
    /// The epoch of the holding of `partition`, or `None` when it is not held.
    pub fn epoch(&self, partition: &Partition) -> Option<u64> {
        self.partitions.get(&partition.id()).map(|(_, e)| *e)
    }

    /// Whether `partition` is held.
    pub fn contains(&self, partition: &Partition) -> bool {
        self.partitions.contains_key(&partition.id())
    }

    /// Every held partition with its epoch, ordered by partition ID.
    pub fn iter(&self) -> impl Iterator<Item = (&Partition, u64)> {
        self.partitions.values().map(|(p, e)| (p, *e))
    }

    /// How many partitions are held.
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

/// What this worker holds now, keyed by partition ID, with each holding's epoch. Owned by the
/// manager's fence task, which is where the application is told.
#[derive(Debug)]
pub(crate) struct Holdings {
    log: OwnershipLog,
    held: BTreeMap<String, (Partition, WorkerId, u64)>,
    /// The highest version recorded as applied: `applied` records only go up.
    applied: u64,
    /// The application's view, sent on every change.
    view: tokio::sync::watch::Sender<Arc<Held>>,
}

impl Holdings {
    pub(crate) fn new(log: OwnershipLog) -> Self {
        Self {
            log,
            held: BTreeMap::new(),
            applied: 0,
            view: tokio::sync::watch::Sender::new(Arc::default()),
        }
    }

    /// A receiver of the application's view of the holdings.
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<Arc<Held>> {
        self.view.subscribe()
    }

    fn send_view(&self) {
        let partitions = self
            .held
            .iter()
            .map(|(id, (p, _, e))| (id.clone(), (p.clone(), *e)))
            .collect();
        self.view.send_replace(Arc::new(Held { partitions }));
    }

    /// Starts holding `gained` at `epoch`, valid until `valid_until_ns`.
    /// Every record is stamped `at` (one instant for the whole change, at which the caller
    /// checked the lease).
    pub(crate) fn hold(
        &mut self,
        at: u64,
        worker: &WorkerId,
        gained: &[Partition],
        epoch: u64,
        valid_until_ns: u64,
    ) -> Vec<OwnershipRecord> {
        let mut out = Vec::with_capacity(gained.len() + 1);
        // A change carried out without a newer commit (a lapse before any commit of a new
        // session) applies nothing new.
        if epoch > self.applied {
            self.applied = epoch;
            out.push(
                self.log
                    .record_at(at, worker, OwnershipEvent::Applied { version: epoch }),
            );
        }
        let before = out.len();
        for partition in gained {
            let id = partition.id();
            if self.held.contains_key(&id) {
                continue;
            }
            self.held
                .insert(id.clone(), (partition.clone(), worker.clone(), epoch));
            out.push(self.log.record_at(
                at,
                worker,
                OwnershipEvent::Hold {
                    partition: id,
                    epoch,
                    valid_until_ns,
                },
            ));
        }
        if out.len() > before {
            self.send_view();
        }
        out
    }

    /// Stops holding `lost`.
    pub(crate) fn release(&mut self, lost: &[Partition]) -> Vec<OwnershipRecord> {
        let records: Vec<OwnershipRecord> = lost
            .iter()
            .filter_map(|p| {
                let id = p.id();
                let (_, worker, epoch) = self.held.remove(&id)?;
                Some(self.log.record(
                    &worker,
                    OwnershipEvent::Release {
                        partition: id,
                        epoch,
                    },
                ))
            })
            .collect();
        if !records.is_empty() {
            self.send_view();
        }
        records
    }

    /// What is held now.
    pub(crate) fn held(&self) -> impl Iterator<Item = &Partition> {
        self.held.values().map(|(p, _, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_is_the_documented_one() {
        let record = OwnershipRecord {
            at_ns: 5,
            worker: WorkerId::new("worker-3"),
            instance: "i1".into(),
            event: OwnershipEvent::Hold {
                partition: "t-7".into(),
                epoch: 12,
                valid_until_ns: 9,
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"atNs":5,"worker":"worker-3","instance":"i1","event":"hold","partition":"t-7","epoch":12,"validUntilNs":9}"#
        );
        assert_eq!(
            serde_json::from_str::<OwnershipRecord>(&json).unwrap(),
            record
        );
        let extend =
            r#"{"atNs":6,"worker":"worker-3","instance":"i1","event":"extend","validUntilNs":10}"#;
        let parsed: OwnershipRecord = serde_json::from_str(extend).unwrap();
        assert_eq!(parsed.event, OwnershipEvent::Extend { valid_until_ns: 10 });
    }

    #[test]
    fn the_held_view_follows_holds_and_releases_with_epochs() {
        let mut holdings = Holdings::new(OwnershipLog::new(None, "i"));
        let view = holdings.watch();
        let w = WorkerId::new("w-0");
        let p = |k: &str| Partition::new([k], 1).unwrap();
        holdings.hold(1, &w, &[p("a"), p("b")], 3, 100);
        holdings.hold(1, &w, &[p("a"), p("c")], 4, 100);
        let held = view.borrow().clone();
        assert_eq!(
            held.epoch(&p("a")),
            Some(3),
            "a keeps the epoch it was gained at"
        );
        assert_eq!(held.epoch(&p("c")), Some(4));
        assert_eq!(held.len(), 3);
        holdings.release(&[p("a")]);
        let held = view.borrow().clone();
        assert_eq!(held.epoch(&p("a")), None);
        assert!(!held.contains(&p("a")) && held.contains(&p("b")));
        let listed: Vec<(String, u64)> = held.iter().map(|(p, e)| (p.id(), e)).collect();
        assert_eq!(listed, [("b".to_owned(), 3), ("c".to_owned(), 4)]);
    }

    #[test]
    fn holdings_record_each_change_once() {
        let recorder = OwnershipRecorder::default();
        let mut holdings = Holdings::new(OwnershipLog::new(Some(Arc::new(recorder.clone())), "i"));
        let w = WorkerId::new("w-0");
        let p = |k: &str| Partition::new([k], 1).unwrap();
        holdings.hold(1, &w, &[p("a"), p("b")], 3, 100);
        holdings.hold(1, &w, &[p("a")], 4, 100); // already held: no new holding
        holdings.release(&[p("a"), p("zz")]);
        holdings.release(&[p("b")]);
        let kinds: Vec<String> = recorder
            .records()
            .iter()
            .map(|r| match &r.event {
                OwnershipEvent::Hold {
                    partition, epoch, ..
                } => format!("hold {partition}@{epoch}"),
                OwnershipEvent::Release { partition, epoch } => {
                    format!("release {partition}@{epoch}")
                }
                OwnershipEvent::Applied { version } => format!("applied {version}"),
                OwnershipEvent::Extend { .. } => "extend".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "applied 3",
                "hold a@3",
                "hold b@3",
                "applied 4",
                "release a@3",
                "release b@3"
            ]
        );
    }
}
