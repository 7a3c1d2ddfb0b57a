//! Message accounting: every message the producer got acknowledged ([`SentRecord`]) and every
//! handling by a worker ([`ProcessedRecord`]), for the ownership checker, plus live totals for
//! the view and the final drain.
//!
//! Messages are numbered per partition from 0. The producer numbers a partition's next message
//! only after the previous one was acknowledged, so the messages sent to a partition are exactly
//! `0..sent`. Whether one was lost or handled twice is the checker's to say.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use parti::Partition;
use parti::ownership::now_ns;
use parti_testkit::checker::{ProcessedRecord, SentRecord};

/// Shared by the producer and every worker's handler.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// Per partition: how many messages were acknowledged by the transport.
    sent: Vec<AtomicU64>,
    /// Per partition, per sequence: whether it was handled at least once (for the drain).
    handled: Mutex<Vec<Vec<bool>>>,
    /// Messages acknowledged so far.
    sent_total: AtomicU64,
    /// Distinct messages handled at least once.
    processed_total: AtomicU64,
    /// Every message acknowledged, for the checker.
    sent_records: Mutex<Vec<SentRecord>>,
    /// Every handling, for the checker.
    processed_records: Mutex<Vec<ProcessedRecord>>,
}

/// Locks `mutex`, ignoring poisoning (every critical section leaves the data consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The ID of demo partition `index` (`p7`).
pub(crate) fn partition_id(index: usize) -> String {
    format!("p{index}")
}

/// The index of a demo partition (`p7` → 7).
pub(crate) fn partition_index(partition: &Partition) -> Option<usize> {
    partition.keys().first()?.strip_prefix('p')?.parse().ok()
}

impl Ledger {
    /// A ledger for `partitions` partitions, nothing sent.
    pub(crate) fn new(partitions: usize) -> Self {
        Self {
            sent: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            handled: Mutex::new(vec![Vec::new(); partitions]),
            sent_total: AtomicU64::new(0),
            processed_total: AtomicU64::new(0),
            sent_records: Mutex::default(),
            processed_records: Mutex::default(),
        }
    }

    /// The next sequence of `partition` (the one to publish next).
    pub(crate) fn next_seq(&self, partition: usize) -> u64 {
        self.sent
            .get(partition)
            .map_or(0, |s| s.load(Ordering::Acquire))
    }

    /// The transport acknowledged message `next_seq(partition)`.
    pub(crate) fn sent(&self, partition: usize) {
        let Some(s) = self.sent.get(partition) else {
            return;
        };
        let seq = s.fetch_add(1, Ordering::AcqRel);
        self.sent_total.fetch_add(1, Ordering::Relaxed);
        lock(&self.sent_records).push(SentRecord {
            at_ns: now_ns(),
            partition: partition_id(partition),
            seq,
        });
    }

    /// Worker handlings, each stamped by the handler when it ran.
    pub(crate) fn handled(&self, records: impl IntoIterator<Item = ProcessedRecord>) {
        let records: Vec<ProcessedRecord> = records.into_iter().collect();
        if records.is_empty() {
            return;
        }
        {
            let mut handled = lock(&self.handled);
            for record in &records {
                let index = record
                    .partition
                    .strip_prefix('p')
                    .and_then(|n| n.parse::<usize>().ok());
                let (Some(counts), Ok(seq)) = (
                    index.and_then(|i| handled.get_mut(i)),
                    usize::try_from(record.seq),
                ) else {
                    continue;
                };
                if counts.len() <= seq {
                    counts.resize(seq + 1, false);
                }
                if let Some(seen) = counts.get_mut(seq)
                    && !*seen
                {
                    *seen = true;
                    self.processed_total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        lock(&self.processed_records).extend(records);
    }

    /// Messages acknowledged so far.
    pub(crate) fn sent_total(&self) -> u64 {
        self.sent_total.load(Ordering::Relaxed)
    }

    /// Distinct messages handled so far.
    pub(crate) fn processed_total(&self) -> u64 {
        self.processed_total.load(Ordering::Relaxed)
    }

    /// Whether every sent message was handled.
    pub(crate) fn drained(&self) -> bool {
        let handled = lock(&self.handled);
        self.sent.iter().zip(handled.iter()).all(|(sent, seen)| {
            let sent = usize::try_from(sent.load(Ordering::Acquire)).unwrap_or(usize::MAX);
            seen.get(..sent).is_some_and(|s| s.iter().all(|&h| h))
        })
    }

    /// Every message sent and every handling so far, for the checker.
    pub(crate) fn records(&self) -> (Vec<SentRecord>, Vec<ProcessedRecord>) {
        (
            lock(&self.sent_records).clone(),
            lock(&self.processed_records).clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handling(partition: usize, seq: u64) -> ProcessedRecord {
        ProcessedRecord {
            at_ns: now_ns(),
            worker: "worker-0".into(),
            instance: "i0".into(),
            partition: partition_id(partition),
            seq,
        }
    }

    #[test]
    fn sends_and_handlings_are_recorded_and_the_drain_follows_them() {
        let ledger = Ledger::new(2);
        for _ in 0..3 {
            ledger.sent(0);
        }
        ledger.sent(1);
        ledger.handled([handling(0, 0), handling(0, 0), handling(0, 2)]);
        ledger.handled([handling(1, 0), handling(1, 1)]);
        assert!(!ledger.drained());
        assert_eq!(ledger.sent_total(), 4);
        assert_eq!(ledger.processed_total(), 4, "distinct handlings, live");
        ledger.handled([handling(0, 1)]);
        assert!(ledger.drained());
        assert_eq!(ledger.next_seq(0), 3);
        let (sent, processed) = ledger.records();
        let seqs: Vec<(String, u64)> = sent.into_iter().map(|s| (s.partition, s.seq)).collect();
        assert_eq!(
            seqs,
            [
                ("p0".into(), 0),
                ("p0".into(), 1),
                ("p0".into(), 2),
                ("p1".into(), 0)
            ]
        );
        assert_eq!(processed.len(), 6, "every handling, duplicates included");
    }

    #[test]
    fn out_of_range_input_is_ignored_by_the_counts() {
        let ledger = Ledger::new(1);
        ledger.handled([handling(5, 0)]);
        ledger.sent(5);
        assert_eq!((ledger.sent_total(), ledger.processed_total()), (0, 0));
        assert!(ledger.drained());
        assert_eq!(
            ledger.records().1.len(),
            1,
            "recorded for the checker all the same"
        );
    }

    #[test]
    fn partition_indexes_come_from_the_key() {
        let p = Partition::new(["p42"], 100).unwrap();
        assert_eq!(partition_index(&p), Some(42));
        assert_eq!(partition_index(&Partition::new(["x"], 1).unwrap()), None);
    }
}
