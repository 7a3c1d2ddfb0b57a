//! Assignment strategies: which worker owns which partition.
//!
//! A strategy is a pure function of `(workers, partitions, previous)`. Three are provided:
//!
//! | strategy | weights | uses `previous` | balance | movement when a worker joins or leaves |
//! |---|---|---|---|---|
//! | [`WeightedConsistentHash`] (default) | yes | yes (sticky) | max ≤ (1+ε)·mean, or mean + heaviest partition when that is impossible | close to the minimum |
//! | [`ConsistentHash`] | no | no | ring luck, ≈ 1.1–1.4 × mean | about the minimum, in partition count |
//! | [`RoundRobin`] | no | no | ±1 partition per worker | almost everything |
//!
//! Every strategy here returns every worker of the input (possibly with no partitions) and every
//! partition exactly once, does not depend on the order of its inputs (workers are sorted and
//! de-duplicated), rejects an empty worker list with [`Error::Strategy`] and duplicate partition
//! keys with [`Error::InvalidPartition`] naming the key.
//!
//! ```
//! use std::sync::Arc;
//! use parti::{AssignmentStrategy, Partition, WeightedConsistentHash, WorkerId};
//!
//! let strategy: Arc<dyn AssignmentStrategy> = Arc::new(WeightedConsistentHash::default());
//! let workers = [WorkerId::new("worker-0"), WorkerId::new("worker-1")];
//! let partitions: Vec<Partition> =
//!     (0..10).map(|i| Partition::new([format!("p{i}")], 0)).collect::<Result<_, _>>()?;
//! let first = strategy.assign(&workers, &partitions, None)?;
//! first.verify(&workers, &partitions)?;
//! // Same inputs and the previous map: nothing moves.
//! assert_eq!(strategy.assign(&workers, &partitions, Some(&first))?, first);
//! # Ok::<(), parti::Error>(())
//! ```

mod balance;
mod consistent_hash;
mod key_order;
mod problem;
mod ring;
mod round_robin;
mod scaled;
mod weighted;

use std::fmt;
use std::sync::Arc;

pub use consistent_hash::ConsistentHash;
pub use round_robin::RoundRobin;
pub(crate) use scaled::Scaled;
pub use weighted::WeightedConsistentHash;

use self::key_order::{KeyPrefixes, sort_by_keys};
use crate::assignment::AssignmentMap;
use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId};

/// Decides which worker owns which partition.
///
/// Implementations must be pure and deterministic: equal inputs give equal outputs. Every
/// worker of `workers` appears in the result (possibly owning nothing) and every partition is
/// assigned exactly once. `previous` is the assignment currently in force, if any; sticky
/// strategies use it to move as little as possible.
pub trait AssignmentStrategy: Send + Sync + fmt::Debug {
    /// Short stable name, e.g. `"weighted_consistent_hash"`.
    fn name(&self) -> &str;

    /// Assigns `partitions` to `workers`.
    ///
    /// # Errors
    ///
    /// [`Error::Strategy`] when there are no workers (or the strategy is misconfigured);
    /// [`Error::InvalidPartition`] when two partitions have the same keys. A custom strategy
    /// wraps its own failure in [`Error::Strategy`] (`Error::Strategy(Box::new(e))`, or
    /// `Error::Strategy("message".into())`); it stays the error's `source`, so callers can
    /// downcast it.
    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        previous: Option<&AssignmentMap>,
    ) -> Result<AssignmentMap>;
}

impl<T: AssignmentStrategy + ?Sized> AssignmentStrategy for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        previous: Option<&AssignmentMap>,
    ) -> Result<AssignmentMap> {
        (**self).assign(workers, partitions, previous)
    }
}

impl<T: AssignmentStrategy + ?Sized> AssignmentStrategy for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        previous: Option<&AssignmentMap>,
    ) -> Result<AssignmentMap> {
        (**self).assign(workers, partitions, previous)
    }
}

/// Marks "no worker" in owner vectors indexed by partition.
pub(crate) const NO_WORKER: u32 = u32::MAX;

/// The workers sorted and de-duplicated, so that input order never matters. Fails when there are
/// none, or too many to index with `u32` (indices are `u32` to halve the memory of big runs).
pub(crate) fn sorted_workers(
    strategy: &str,
    workers: &[WorkerId],
    partitions: usize,
) -> Result<Vec<WorkerId>> {
    if workers.is_empty() {
        return Err(Error::Strategy(
            format!("{strategy}: no workers to assign {partitions} partitions to").into(),
        ));
    }
    if workers.len() >= NO_WORKER as usize || partitions >= NO_WORKER as usize {
        return Err(Error::Strategy(
            format!(
                "{strategy}: too many workers or partitions ({} workers, {partitions} partitions)",
                workers.len()
            )
            .into(),
        ));
    }
    let mut sorted = workers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    Ok(sorted)
}

/// Builds the map from `owner[i]` = index into `workers` of the owner of `partitions[i]`
/// (other values are skipped). The keys of `partitions` must be unique; `prefixes` are theirs.
///
/// Each worker's list comes out sorted by keys, as [`AssignmentMap`] keeps it: the partitions
/// are grouped by owner (a counting sort) and each group is sorted on its key prefixes.
pub(crate) fn collect_map(
    workers: &[WorkerId],
    partitions: &[Partition],
    owner: &[u32],
    prefixes: &KeyPrefixes,
) -> AssignmentMap {
    let mut counts = vec![0usize; workers.len()];
    for &o in owner {
        if let Some(c) = counts.get_mut(o as usize) {
            *c += 1;
        }
    }
    // `next[w]`: where worker `w`'s next entry goes.
    let mut next: Vec<usize> = counts
        .iter()
        .scan(0usize, |start, &c| {
            let this = *start;
            *start = start.saturating_add(c);
            Some(this)
        })
        .collect();
    let mut entries = vec![(0u128, 0u32); counts.iter().sum()];
    for (&o, i) in owner.iter().zip(0u32..) {
        if let Some(slot) = next.get_mut(o as usize)
            && let Some(entry) = entries.get_mut(*slot)
        {
            *entry = (prefixes.get(i), i);
            *slot += 1;
        }
    }
    let mut map = AssignmentMap::new();
    let mut rest = entries.as_mut_slice();
    for (worker, count) in workers.iter().zip(counts) {
        let Some((group, tail)) = std::mem::take(&mut rest).split_at_mut_checked(count) else {
            break;
        };
        rest = tail;
        sort_by_keys(group, partitions);
        let list: Vec<Partition> = group
            .iter()
            .map(|&(_, i)| partitions[i as usize].clone())
            .collect();
        map.set_sorted(worker.clone(), list);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_workers_is_a_clear_error() {
        let strategies: [Arc<dyn AssignmentStrategy>; 3] = [
            Arc::new(ConsistentHash::default()),
            Arc::new(RoundRobin),
            Arc::new(WeightedConsistentHash::default()),
        ];
        for s in strategies {
            let err = s.assign(&[], &[], None).unwrap_err();
            assert!(matches!(err, Error::Strategy(_)), "{err}");
            assert!(err.to_string().contains("no workers"), "{err}");
        }
    }

    #[test]
    fn collected_lists_are_sorted_by_keys_even_with_zero_bytes() {
        let workers = ["a", "b", "idle"].map(WorkerId::new);
        for zero in ["", "\0"] {
            let parts: Vec<Partition> = (0..300)
                .map(|i| {
                    let keys = [format!("t{}{zero}", i % 7), format!("p{}", (i * 37) % 1000)];
                    Partition::new(keys, i).unwrap()
                })
                .collect();
            let owner: Vec<u32> = (0..300).map(|i| (i % 3 == 0) as u32).collect();
            let map = collect_map(&workers, &parts, &owner, &KeyPrefixes::new(&parts));
            assert_eq!((map.len(), map.partition_count()), (3, 300));
            assert_eq!(map.partitions_of(&workers[1]).len(), 100);
            for (_, list) in map.iter() {
                assert!(list.is_sorted(), "{zero:?}");
            }
            let mut expected = map.clone();
            expected.normalize();
            assert_eq!(map, expected);
        }
    }

    #[test]
    fn workers_are_sorted_and_deduplicated() {
        let ws = ["b", "a", "b"].map(WorkerId::new);
        let sorted = sorted_workers("t", &ws, 0).unwrap();
        assert_eq!(sorted, ["a", "b"].map(WorkerId::new));
    }
}
