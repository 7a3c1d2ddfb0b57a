//! What each in-process worker holds, learned from its own ownership records.
//!
//! Every worker gets a [`WorkerSink`]: it hands each record to the run's shared
//! [`OwnershipRecorder`] (what the checker reads) and keeps the worker's [`Holdings`]: who it is
//! (for the handler's [`ProcessedRecord`](parti_testkit::checker::ProcessedRecord)s) and, for
//! the in-memory log reader, which partitions it holds until when.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use parti::ownership::{OwnershipEvent, OwnershipRecord, OwnershipRecorder, OwnershipSink};

/// One worker's view of itself, from its ownership records.
#[derive(Debug, Default)]
pub(crate) struct Holdings(Mutex<HeldState>);

/// The state behind [`Holdings`]' lock.
#[derive(Debug, Default)]
pub(crate) struct HeldState {
    /// (worker ID, instance ID) of the latest record.
    pub(crate) identity: Option<(String, String)>,
    /// Partition index → the lease deadline of its holding (Unix ns): held from its `hold`
    /// record until its `release`, valid only before the deadline.
    pub(crate) held: BTreeMap<usize, u64>,
    /// Partition index → how far the in-memory reader got (unused on NATS).
    pub(crate) positions: BTreeMap<usize, u64>,
}

impl Holdings {
    /// The state, locked. Held while a batch of messages is handled, so that a partition is
    /// let go (see [`memlog`](super::memlog)) only between batches.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HeldState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (worker ID, instance ID) as the latest record named them (empty before any record).
    pub(crate) fn identity(&self) -> (String, String) {
        self.lock().identity.clone().unwrap_or_default()
    }

    /// Follows one record of this worker.
    fn learn(&self, record: &OwnershipRecord) {
        let mut state = self.lock();
        let identity = (record.worker.to_string(), record.instance.clone());
        if state.identity.as_ref() != Some(&identity) {
            state.identity = Some(identity);
        }
        match &record.event {
            OwnershipEvent::Hold {
                partition,
                valid_until_ns,
                ..
            } => {
                if let Some(index) = partition_index(partition) {
                    state.held.insert(index, *valid_until_ns);
                }
            }
            OwnershipEvent::Release { partition, .. } => {
                if let Some(index) = partition_index(partition) {
                    state.held.remove(&index);
                }
            }
            OwnershipEvent::Extend { valid_until_ns } => {
                // Only holdings still valid are extended: a lapsed one stays lapsed (the
                // checker would call its extension a revival).
                for deadline in state.held.values_mut() {
                    if record.at_ns <= *deadline {
                        *deadline = (*deadline).max(*valid_until_ns);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The index of a demo partition ID (`p7` → 7).
fn partition_index(id: &str) -> Option<usize> {
    id.strip_prefix('p')?.parse().ok()
}

/// The ownership sink of one worker: the run's recorder, and the worker's [`Holdings`].
#[derive(Debug)]
pub(crate) struct WorkerSink {
    /// Every worker's records, for the checker.
    recorder: OwnershipRecorder,
    /// This worker's.
    holdings: Arc<Holdings>,
}

impl WorkerSink {
    /// A sink writing into `recorder` and keeping `holdings`.
    pub(crate) fn new(recorder: OwnershipRecorder, holdings: Arc<Holdings>) -> Self {
        Self { recorder, holdings }
    }
}

impl OwnershipSink for WorkerSink {
    fn record(&self, record: &OwnershipRecord) {
        self.recorder.record(record);
        self.holdings.learn(record);
    }
}

#[cfg(test)]
mod tests {
    use parti::WorkerId;

    use super::*;

    fn record(at_ns: u64, event: OwnershipEvent) -> OwnershipRecord {
        OwnershipRecord::new(at_ns, WorkerId::new("worker-1"), "i1", event)
    }

    #[test]
    fn holds_releases_and_timely_extends_are_followed() {
        let recorder = OwnershipRecorder::default();
        let holdings = Arc::new(Holdings::default());
        let sink = WorkerSink::new(recorder.clone(), Arc::clone(&holdings));
        assert_eq!(holdings.identity(), (String::new(), String::new()));
        let hold = |at, partition: &str, until| {
            record(
                at,
                OwnershipEvent::Hold {
                    partition: partition.into(),
                    epoch: 1,
                    valid_until_ns: until,
                },
            )
        };
        sink.record(&hold(10, "p3", 100));
        sink.record(&hold(20, "p4", 50));
        sink.record(&record(
            60,
            OwnershipEvent::Extend {
                valid_until_ns: 200,
            },
        ));
        assert_eq!(
            holdings.lock().held,
            BTreeMap::from([(3, 200), (4, 50)]),
            "p4 had lapsed"
        );
        sink.record(&record(
            70,
            OwnershipEvent::Release {
                partition: "p3".into(),
                epoch: 1,
            },
        ));
        assert_eq!(holdings.lock().held, BTreeMap::from([(4, 50)]));
        assert_eq!(holdings.identity(), ("worker-1".into(), "i1".into()));
        assert_eq!(recorder.records().len(), 4);
    }
}
