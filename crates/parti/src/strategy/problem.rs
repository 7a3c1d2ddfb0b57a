//! The partitions of one weighted assignment, prepared once: weights, hashes and processing
//! order in one array read front to back by every pass, key prefixes, a duplicate check.

use std::cmp::Reverse;

use super::NO_WORKER;
use super::key_order::KeyPrefixes;
use crate::assignment::AssignmentMap;
use crate::error::Result;
use crate::partition::{Partition, WorkerId, check_unique};

/// A partition as the placement sees it. The derived order is the processing order: heaviest
/// first, then by hash (then by keys, see [`Problem::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ranked {
    heaviness: Reverse<u64>,
    /// `hash_with_seed(seed)` of the partition.
    pub(crate) hash: u64,
    /// Position of the partition in the input.
    pub(crate) index: u32,
}

impl Ranked {
    /// The effective weight.
    pub(crate) fn weight(&self) -> u64 {
        self.heaviness.0
    }
}

/// The partitions, with everything the placement needs.
#[derive(Debug)]
pub(crate) struct Problem<'a> {
    partitions: &'a [Partition],
    seed: u64,
    /// The partitions in processing order, independent of the input order; a partition's
    /// position here is its rank. Placements index their arrays by rank, so that their passes
    /// read memory in order.
    pub(crate) ranked: Vec<Ranked>,
    /// Sum of the effective weights.
    pub(crate) total: u128,
    /// Key prefixes by input position, for [`collect_map`](super::collect_map).
    pub(crate) prefixes: KeyPrefixes,
}

impl<'a> Problem<'a> {
    /// Prepares `partitions` (fewer than `u32::MAX`), failing on duplicate keys.
    pub(crate) fn new(partitions: &'a [Partition], seed: u64) -> Result<Self> {
        let mut ranked = Vec::with_capacity(partitions.len());
        let mut prefixes = KeyPrefixes::with_capacity(partitions.len());
        // One pass over the keys for the hashes and the prefixes.
        for (p, index) in partitions.iter().zip(0u32..) {
            ranked.push(Ranked {
                heaviness: Reverse(p.effective_weight()),
                hash: p.hash_with_seed(seed),
                index,
            });
            prefixes.push(p);
        }
        ranked.sort_unstable();
        check_duplicates(partitions, &ranked)?;
        // Equal weights and hashes (a hash collision): by keys, so that the input order does
        // not matter.
        for run in ranked.chunk_by_mut(|a, b| (a.heaviness, a.hash) == (b.heaviness, b.hash)) {
            if run.len() > 1 {
                run.sort_unstable_by(|a, b| {
                    partitions[a.index as usize]
                        .keys()
                        .cmp(partitions[b.index as usize].keys())
                });
            }
        }
        Ok(Self {
            partitions,
            seed,
            total: ranked.iter().map(|r| u128::from(r.weight())).sum(),
            ranked,
            prefixes,
        })
    }

    /// For each rank, the index in `workers` (sorted) of the partition's owner in `previous`,
    /// or [`NO_WORKER`] when it had none or its owner is gone. Partitions of `previous` that
    /// are no longer listed are ignored; a partition listed twice keeps its first owner.
    ///
    /// A previous partition is matched by two independent 64-bit hashes of its keys rather than
    /// by comparing the keys, which would cost several cache misses per partition. A false
    /// match (odds about 2^-128 per pair) could only give a partition a wrong previous owner,
    /// which costs stickiness, never correctness. Both sides are sorted by hash and merged,
    /// which reads memory in order where a hash table would miss the cache on every lookup.
    pub(crate) fn previous_owners(
        &self,
        previous: &AssignmentMap,
        workers: &[WorkerId],
    ) -> Vec<u32> {
        // (hash, fingerprint, worker), stably sorted by hash: the first owner comes first.
        let mut before: Vec<(u64, u64, u32)> = Vec::with_capacity(previous.partition_count());
        for (worker, list) in previous.iter() {
            if let Ok(w) = workers.binary_search(worker) {
                let w = w as u32;
                before.extend(
                    list.iter()
                        .map(|p| (p.hash_with_seed(self.seed), fingerprint(p, self.seed), w)),
                );
            }
        }
        before.sort_by_key(|&(hash, _, _)| hash);
        let fingerprints: Vec<u64> = self
            .partitions
            .iter()
            .map(|p| fingerprint(p, self.seed))
            .collect();
        // The ranks by hash: already so when all weights are equal.
        let mut by_hash: Vec<(u64, u32)> = self.ranked.iter().map(|r| r.hash).zip(0u32..).collect();
        if !by_hash.is_sorted() {
            by_hash.sort_unstable();
        }
        let mut owner = vec![NO_WORKER; self.ranked.len()];
        let mut rest = before.as_slice();
        for (hash, rank) in by_hash {
            let skip = rest.iter().take_while(|e| e.0 < hash).count();
            rest = rest.get(skip..).unwrap_or_default();
            let Some(f) = self
                .ranked
                .get(rank as usize)
                .and_then(|r| fingerprints.get(r.index as usize))
            else {
                continue;
            };
            if let Some(&(_, _, w)) = rest.iter().take_while(|e| e.0 == hash).find(|e| e.1 == *f)
                && let Some(slot) = owner.get_mut(rank as usize)
            {
                *slot = w;
            }
        }
        owner
    }
}

/// Fails, naming one, when two partitions have the same keys (hence the same hash). With one
/// weight, equal hashes are neighbours in `ranked`; otherwise a sorted copy of the hashes
/// finds them. Keys are compared only when two hashes are equal: a duplicate or, rarely, a
/// collision.
fn check_duplicates(partitions: &[Partition], ranked: &[Ranked]) -> Result<()> {
    let one_weight = ranked.first().map(Ranked::weight) == ranked.last().map(Ranked::weight);
    let equal_hashes = if one_weight {
        ranked.windows(2).any(|pair| pair[0].hash == pair[1].hash)
    } else {
        let mut hashes: Vec<u64> = ranked.iter().map(|r| r.hash).collect();
        hashes.sort_unstable();
        hashes.windows(2).any(|pair| pair[0] == pair[1])
    };
    if equal_hashes {
        check_unique(partitions)
    } else {
        Ok(())
    }
}

/// A second hash of the keys, independent of `hash_with_seed(seed)`.
fn fingerprint(p: &Partition, seed: u64) -> u64 {
    p.hash_with_seed(seed ^ 0xA076_1D64_78BD_642F)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn p(k: &str, w: u64) -> Partition {
        Partition::new([k], w).unwrap()
    }

    #[test]
    fn order_is_heaviest_first_and_input_independent() {
        let a = [p("a", 1), p("b", 5), p("c", 0), p("d", 5)];
        let b = [a[3].clone(), a[1].clone(), a[0].clone(), a[2].clone()];
        let ids = |parts: &[Partition]| {
            let problem = Problem::new(parts, 9).unwrap();
            problem
                .ranked
                .iter()
                .map(|r| parts[r.index as usize].id())
                .collect::<Vec<_>>()
        };
        let order = ids(&a);
        assert_eq!(order, ids(&b));
        assert_eq!(order[0], "c", "weight 0 counts as the default weight 100");
        assert_eq!(order[3], "a");
    }

    #[test]
    fn duplicates_are_named_with_the_same_or_other_weights() {
        for other in [1, 7] {
            let err = Problem::new(&[p("x", 1), p("y", 1), p("x", other)], 0).unwrap_err();
            assert!(matches!(err, Error::InvalidPartition { .. }), "{err}");
            assert!(err.to_string().contains("\"x\""), "{err}");
        }
        assert!(Problem::new(&[p("x", 1), p("y", 1), p("z", 7)], 0).is_ok());
    }

    #[test]
    fn previous_owners_skip_departed_workers_and_unknown_partitions() {
        let parts = [p("a", 1), p("b", 1), p("c", 1)];
        let problem = Problem::new(&parts, 0).unwrap();
        let (w0, w1, gone) = (
            WorkerId::new("w0"),
            WorkerId::new("w1"),
            WorkerId::new("w9"),
        );
        let previous: AssignmentMap = [
            (w0.clone(), vec![p("a", 1), p("zzz", 1)]),
            (w1.clone(), vec![p("a", 1), p("b", 1)]),
            (gone, vec![p("c", 1)]),
        ]
        .into_iter()
        .collect();
        let by_rank = problem.previous_owners(&previous, &[w0, w1]);
        let mut by_index = [0; 3];
        for (r, &o) in problem.ranked.iter().zip(&by_rank) {
            by_index[r.index as usize] = o;
        }
        assert_eq!(by_index, [0, 1, NO_WORKER]);
    }
}
