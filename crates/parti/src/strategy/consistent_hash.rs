//! Plain consistent hashing: a ring with virtual nodes, blind to weights.

use super::ring::Ring;
use super::{AssignmentStrategy, collect_map, sorted_workers};
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
    pub fn with_virtual_nodes(mut self, virtual_nodes: u32) -> Self {
        self.virtual_nodes = virtual_nodes;
        self
    }

    /// Sets the hash seed (for workers' points and partitions alike).
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
        check_unique(partitions)?;
        let ring = Ring::new(&workers, self.virtual_nodes, self.seed);
        let owner = partitions
            .iter()
            .map(|p| ring.owner(p.hash_with_seed(self.seed)))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| Error::Strategy("consistent_hash: empty ring".into()))?;
        Ok(collect_map(&workers, partitions, &owner))
    }
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
