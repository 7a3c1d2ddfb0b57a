//! The partitions of one weighted assignment, prepared once: weights, hashes, processing order
//! and a key index (which also finds duplicates).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

use super::NO_WORKER;
use crate::assignment::AssignmentMap;
use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId, check_unique};

/// The partitions, with everything the placement needs indexed by partition position.
#[derive(Debug)]
pub(crate) struct Problem<'a> {
    partitions: &'a [Partition],
    seed: u64,
    /// Effective weights.
    pub(crate) weight: Vec<u64>,
    /// `hash_with_seed(seed)` of each partition.
    pub(crate) hash: Vec<u64>,
    /// Heaviest first, then by hash, then by keys: independent of the input order.
    pub(crate) order: Vec<u32>,
    /// Sum of the effective weights.
    pub(crate) total: u128,
    index: KeyIndex,
}

impl<'a> Problem<'a> {
    /// Prepares `partitions` (fewer than `u32::MAX`), failing on duplicate keys.
    pub(crate) fn new(partitions: &'a [Partition], seed: u64) -> Result<Self> {
        let weight: Vec<u64> = partitions.iter().map(Partition::effective_weight).collect();
        let hash: Vec<u64> = partitions.iter().map(|p| p.hash_with_seed(seed)).collect();
        let index = KeyIndex::new(partitions, &hash)?;
        let order = processing_order(partitions, &weight, &hash);
        Ok(Self {
            partitions,
            seed,
            total: weight.iter().map(|&w| u128::from(w)).sum(),
            weight,
            hash,
            order,
            index,
        })
    }

    /// For each partition, the index in `workers` (sorted) of its owner in `previous`, or
    /// [`NO_WORKER`] when it had none or its owner is gone. Partitions of `previous` that are
    /// no longer listed are ignored; a partition listed twice keeps its first owner.
    ///
    /// A previous partition is matched by two independent 64-bit hashes of its keys rather than
    /// by comparing the keys, which would cost several cache misses per partition. A false
    /// match (odds about 2^-128 per pair) could only give a partition a wrong previous owner,
    /// which costs stickiness, never correctness.
    pub(crate) fn previous_owners(
        &self,
        previous: &AssignmentMap,
        workers: &[WorkerId],
    ) -> Vec<u32> {
        let fingerprints: Vec<u64> = self
            .partitions
            .iter()
            .map(|p| fingerprint(p, self.seed))
            .collect();
        let mut owner = vec![NO_WORKER; self.partitions.len()];
        for (worker, list) in previous.iter() {
            let Ok(w) = workers.binary_search(worker) else {
                continue;
            };
            for p in list {
                let (h, f) = (p.hash_with_seed(self.seed), fingerprint(p, self.seed));
                if let Some(i) = self
                    .index
                    .candidates(h, &self.hash)
                    .find(|&i| fingerprints[i] == f)
                    && owner[i] == NO_WORKER
                {
                    owner[i] = w as u32;
                }
            }
        }
        owner
    }
}

/// Heaviest first, then by hash, then by keys (only reached on a hash collision).
fn processing_order(partitions: &[Partition], weight: &[u64], hash: &[u64]) -> Vec<u32> {
    // Sorting inline keys is much faster than sorting indices through a comparator.
    let mut keyed: Vec<(Reverse<u64>, u64, u32)> = (0u32..)
        .zip(weight.iter().zip(hash))
        .map(|(i, (&w, &h))| (Reverse(w), h, i))
        .collect();
    keyed.sort_unstable();
    for run in keyed.chunk_by_mut(|a, b| (a.0, a.1) == (b.0, b.1)) {
        if run.len() > 1 {
            run.sort_unstable_by(|a, b| {
                partitions[a.2 as usize]
                    .keys()
                    .cmp(partitions[b.2 as usize].keys())
            });
        }
    }
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

/// A second hash of the keys, independent of `hash_with_seed(seed)`.
fn fingerprint(p: &Partition, seed: u64) -> u64 {
    p.hash_with_seed(seed ^ 0xA076_1D64_78BD_642F)
}

/// Partition position by key hash. Keys are compared on every hit, so hash collisions are
/// harmless: colliding partitions go to a small side list.
#[derive(Debug)]
struct KeyIndex {
    first: HashMap<u64, u32, BuildHasherDefault<PrehashedHasher>>,
    collided: Vec<u32>,
}

impl KeyIndex {
    fn new(partitions: &[Partition], hash: &[u64]) -> Result<Self> {
        let mut index = Self {
            first: HashMap::with_capacity_and_hasher(partitions.len(), Default::default()),
            collided: Vec::new(),
        };
        for (i, (p, &h)) in partitions.iter().zip(hash).enumerate() {
            match index.first.entry(h) {
                Entry::Vacant(slot) => {
                    slot.insert(i as u32);
                }
                Entry::Occupied(slot) => {
                    let same_hash = std::iter::once(*slot.get()).chain(
                        index
                            .collided
                            .iter()
                            .copied()
                            .filter(|&j| hash[j as usize] == h),
                    );
                    for j in same_hash {
                        if partitions[j as usize].same_keys(p) {
                            return Err(duplicate(partitions, p));
                        }
                    }
                    index.collided.push(i as u32);
                }
            }
        }
        Ok(index)
    }

    /// Positions of the partitions whose hash is `h` (more than one only on a collision).
    fn candidates<'s>(&'s self, h: u64, hash: &'s [u64]) -> impl Iterator<Item = usize> + 's {
        let first = self.first.get(&h).map(|&i| i as usize);
        let collided = self.collided.iter().map(|&j| j as usize);
        first
            .into_iter()
            .chain(collided.filter(move |&j| hash[j] == h))
    }
}

/// The error [`check_unique`] gives for this list (it names the duplicate).
fn duplicate(partitions: &[Partition], p: &Partition) -> Error {
    match check_unique(partitions) {
        Err(err) => err,
        Ok(()) => Error::InvalidPartition {
            partition: p.subject_key(),
            reason: "duplicate partition keys".into(),
        },
    }
}

/// A hasher for keys that are already good 64-bit hashes (xxh3): passes them through.
#[derive(Debug, Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the index; this keeps other keys correct, if slow.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .order
                .iter()
                .map(|&i| parts[i as usize].id())
                .collect::<Vec<_>>()
        };
        let order = ids(&a);
        assert_eq!(order, ids(&b));
        assert_eq!(order[0], "c", "weight 0 counts as the default weight 100");
        assert_eq!(order[3], "a");
    }

    #[test]
    fn duplicates_are_named_even_with_other_weights() {
        let err = Problem::new(&[p("x", 1), p("y", 1), p("x", 7)], 0).unwrap_err();
        assert!(matches!(err, Error::InvalidPartition { .. }), "{err}");
        assert!(err.to_string().contains("\"x\""), "{err}");
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
        let owners = problem.previous_owners(&previous, &[w0, w1]);
        assert_eq!(owners, [0, 1, NO_WORKER]);
    }
}
