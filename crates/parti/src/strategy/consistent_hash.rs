//! Plain consistent hashing: a ring with virtual nodes, blind to weights.

use super::key_order::KeyPrefixes;
use super::ring::Ring;
use super::{AssignmentStrategy, NO_WORKER, collect_map, sorted_workers};
use crate::assignment::AssignmentMap;
use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId, check_unique};

/// A hash ring with virtual nodes (xxh3, seeded). Ignores weights and `previous`.
///
/// Each partition goes to the first worker point clockwise from its hash. When a worker joins
/// or leaves, only the partitions of the arcs it gains or loses move; the price is balance by
/// luck of the ring (typically 1.1–1.4 × the mean load with 150 virtual nodes). Prefer
/// [`WeightedConsistentHash`](super::WeightedConsistentHash) unless you need exactly this.
///
/// As fast as a plain ring lookup per partition, or faster: the partitions are sorted by hash
/// and swept around the ring once (`examples/strategy_report.rs --ring` compares the two).
///
/// ```
/// use parti::{AssignmentStrategy, ConsistentHash, Partition, WorkerId};
/// let ring = ConsistentHash::new().with_virtual_nodes(64).with_seed(7);
/// assert_eq!(ring.virtual_nodes(), 64);
/// let workers = [WorkerId::new("w0"), WorkerId::new("w1")];
/// let map = ring.assign(&workers, &[Partition::new(["a"], 1)?], None)?;
/// assert_eq!(map.partition_count(), 1);
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsistentHash {
    virtual_nodes: u32,
    seed: u64,
}

impl ConsistentHash {
    /// Virtual nodes per worker unless configured otherwise.
    pub const DEFAULT_VIRTUAL_NODES: u32 = 150;

    /// 150 virtual nodes per worker, seed 0.
    pub fn new() -> Self {
        Self {
            virtual_nodes: Self::DEFAULT_VIRTUAL_NODES,
            seed: 0,
        }
    }

    /// Sets the number of virtual nodes per worker (`0` is treated as `1`).
    #[must_use]
    pub fn with_virtual_nodes(mut self, virtual_nodes: u32) -> Self {
        self.virtual_nodes = virtual_nodes;
        self
    }

    /// Sets the hash seed (for workers' points and partitions alike).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Virtual nodes per worker.
    pub fn virtual_nodes(&self) -> u32 {
        self.virtual_nodes
    }

    /// The hash seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl AssignmentStrategy for ConsistentHash {
    fn name(&self) -> &str {
        "consistent_hash"
    }

    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        _previous: Option<&AssignmentMap>,
    ) -> Result<AssignmentMap> {
        let workers = sorted_workers(self.name(), workers, partitions.len())?;
        let ring = Ring::new(&workers, self.virtual_nodes, self.seed);
        // Partitions by hash: duplicates sit side by side, and the owner lookups sweep the ring
        // once in order (a short gallop each) instead of a binary search each.
        let mut by_hash: Vec<(u64, u32)> = Vec::with_capacity(partitions.len());
        let mut prefixes = KeyPrefixes::with_capacity(partitions.len());
        // One pass over the keys for the hashes and the prefixes.
        for (p, i) in partitions.iter().zip(0u32..) {
            by_hash.push((p.hash_with_seed(self.seed), i));
            prefixes.push(p);
        }
        by_hash.sort_unstable();
        let mut owner = vec![NO_WORKER; partitions.len()];
        let mut cursor = 0;
        for run in by_hash.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(hash, _)) = run.first() else {
                continue;
            };
            if has_duplicate(partitions, run) {
                // `check_unique` names the duplicate as every strategy does.
                check_unique(partitions)?;
            }
            cursor = ring.position(hash, cursor);
            let worker = ring
                .owner_at(cursor)
                .ok_or_else(|| Error::Strategy(format!("{}: empty ring", self.name()).into()))?;
            for &(_, i) in run {
                owner[i as usize] = worker;
            }
        }
        Ok(collect_map(&workers, partitions, &owner, &prefixes))
    }
}

/// True when two partitions of `run` (positions into `partitions` with one hash) have the
/// same keys. Runs longer than one are hash collisions or duplicates, both rare.
fn has_duplicate(partitions: &[Partition], run: &[(u64, u32)]) -> bool {
    run.iter().enumerate().any(|(k, &(_, a))| {
        run[k + 1..]
            .iter()
            .any(|&(_, b)| partitions[a as usize].same_keys(&partitions[b as usize]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: usize) -> Vec<Partition> {
        (0..n)
            .map(|i| Partition::new([format!("p{i}")], (i % 7) as u64).unwrap())
            .collect()
    }

    #[test]
    fn ignores_weights_and_previous() {
        let workers = ["a", "b", "c"].map(WorkerId::new);
        let ps = parts(200);
        let ch = ConsistentHash::new();
        let base = ch.assign(&workers, &ps, None).unwrap();
        let reweighted: Vec<_> = ps.iter().map(|p| p.clone().with_weight(1)).collect();
        let other = ch.assign(&workers, &reweighted, Some(&base)).unwrap();
        let owners = |m: &AssignmentMap| {
            m.iter()
                .map(|(w, l)| (w.clone(), l.iter().map(Partition::id).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        assert_eq!(owners(&base), owners(&other));
    }

    #[test]
    fn the_sweep_gives_each_partition_its_first_point_clockwise() {
        let workers: Vec<WorkerId> = (0..7).map(|i| WorkerId::new(format!("w{i}"))).collect();
        let ps = parts(2000);
        let ch = ConsistentHash::new().with_virtual_nodes(5).with_seed(11);
        let map = ch.assign(&workers, &ps, None).unwrap();
        let ring = Ring::new(&workers, 5, 11);
        for p in &ps {
            let owner = ring
                .owner_at(ring.position(p.hash_with_seed(11), 0))
                .unwrap();
            assert_eq!(map.owner_of(p), Some(&workers[owner as usize]), "{p}");
        }
    }

    #[test]
    fn removing_a_worker_moves_only_its_partitions() {
        let workers = ["a", "b", "c", "d"].map(WorkerId::new);
        let ps = parts(500);
        let ch = ConsistentHash::new().with_seed(3);
        let before = ch.assign(&workers, &ps, None).unwrap();
        let after = ch.assign(&workers[..3], &ps, None).unwrap();
        for w in &workers[..3] {
            for p in before.partitions_of(w) {
                assert_eq!(
                    after.owner_of(p),
                    Some(w),
                    "{p} moved off a surviving worker"
                );
            }
        }
    }
}
