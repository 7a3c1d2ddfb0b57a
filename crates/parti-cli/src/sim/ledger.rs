//! Message accounting: what the producer got acknowledged and what the workers handled.
//!
//! Messages are numbered per partition from 0. The producer numbers a partition's next message
//! only after the previous one was acknowledged, so the messages sent to a partition are exactly
//! `0..sent`. Every handling is counted, so a message handled twice is a duplicate and one never
//! handled is lost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared by the producer and every worker's handler.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// Per partition: how many messages were acknowledged by the transport.
    sent: Vec<AtomicU64>,
    /// Per partition, per sequence: how many times it was handled.
    handled: Mutex<Vec<Vec<u32>>>,
    sent_total: AtomicU64,
    /// Distinct messages handled at least once.
    processed_total: AtomicU64,
}

/// The final count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) sent: u64,
    /// Distinct sent messages handled at least once.
    pub(crate) processed: u64,
    /// Handlings beyond the first.
    pub(crate) duplicates: u64,
    /// Sent, never handled.
    pub(crate) lost: u64,
    /// Handled but never acknowledged to the producer (a publish whose ack was not seen when
    /// the producer stopped).
    pub(crate) unconfirmed: u64,
    /// A few lost messages, `p{partition}#{seq}`.
    pub(crate) lost_examples: Vec<String>,
}

const LOST_EXAMPLES: usize = 10;

impl Ledger {
    pub(crate) fn new(partitions: usize) -> Self {
        Self {
            sent: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            handled: Mutex::new(vec![Vec::new(); partitions]),
            sent_total: AtomicU64::new(0),
            processed_total: AtomicU64::new(0),
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
        if let Some(s) = self.sent.get(partition) {
            s.fetch_add(1, Ordering::AcqRel);
            self.sent_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A worker handled message `seq` of `partition`.
    pub(crate) fn handled(&self, partition: usize, seq: u64) {
        let Ok(seq) = usize::try_from(seq) else {
            return;
        };
        let mut handled = self
            .handled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(counts) = handled.get_mut(partition) else {
            return;
        };
        if counts.len() <= seq {
            counts.resize(seq + 1, 0);
        }
        counts[seq] = counts[seq].saturating_add(1);
        if counts[seq] == 1 {
            self.processed_total.fetch_add(1, Ordering::Relaxed);
        }
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
        let handled = self
            .handled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.sent.iter().zip(handled.iter()).all(|(sent, counts)| {
            let sent = usize::try_from(sent.load(Ordering::Acquire)).unwrap_or(usize::MAX);
            sent <= counts.len() && counts[..sent].iter().all(|&c| c > 0)
        })
    }

    pub(crate) fn tally(&self) -> Tally {
        let handled = self
            .handled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tally = Tally::default();
        for (partition, (sent, counts)) in self.sent.iter().zip(handled.iter()).enumerate() {
            let sent = sent.load(Ordering::Acquire);
            tally.sent += sent;
            for (seq, &count) in (0u64..).zip(counts.iter()) {
                tally.duplicates += u64::from(count.saturating_sub(1));
                match (seq < sent, count > 0) {
                    (true, true) => tally.processed += 1,
                    (false, true) => tally.unconfirmed += 1,
                    _ => {}
                }
            }
            let seen = u64::try_from(counts.len()).unwrap_or(u64::MAX);
            let missing = (0..sent).filter(|&seq| seq >= seen || counts[seq as usize] == 0);
            for seq in missing {
                tally.lost += 1;
                if tally.lost_examples.len() < LOST_EXAMPLES {
                    tally.lost_examples.push(format!("p{partition}#{seq}"));
                }
            }
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_duplicated_and_unconfirmed_messages_are_counted() {
        let ledger = Ledger::new(2);
        for _ in 0..3 {
            ledger.sent(0);
        }
        ledger.sent(1);
        ledger.handled(0, 0);
        ledger.handled(0, 0);
        ledger.handled(0, 2);
        ledger.handled(1, 0);
        ledger.handled(1, 1); // never acknowledged to the producer
        assert!(!ledger.drained());
        let tally = ledger.tally();
        assert_eq!(
            tally,
            Tally {
                sent: 4,
                processed: 3,
                duplicates: 1,
                lost: 1,
                unconfirmed: 1,
                lost_examples: vec!["p0#1".into()],
            }
        );
        assert_eq!(ledger.sent_total(), 4);
        assert_eq!(ledger.processed_total(), 4, "distinct handlings, live");
        ledger.handled(0, 1);
        assert!(ledger.drained());
        assert_eq!(ledger.next_seq(0), 3);
    }

    #[test]
    fn out_of_range_input_is_ignored() {
        let ledger = Ledger::new(1);
        ledger.handled(5, 0);
        ledger.sent(5);
        assert_eq!(ledger.tally(), Tally::default());
        assert!(ledger.drained());
    }
}
