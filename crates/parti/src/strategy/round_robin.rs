//! Round robin over sorted workers and sorted partitions.

use super::key_order::{KeyPrefixes, sort_by_keys};
use super::{AssignmentStrategy, collect_map, sorted_workers};
use crate::assignment::AssignmentMap;
use crate::error::Result;
use crate::partition::{Partition, WorkerId, check_unique};

/// Sorts workers and partitions (by keys) and gives partition `i` to worker `i mod n`.
///
/// Counts differ by at most one between workers, but weights are ignored and almost every
/// partition moves when a worker joins or leaves. Useful for tests and uniform, stateless work.
///
/// ```
/// use parti::{AssignmentStrategy, Partition, RoundRobin, WorkerId};
/// let workers = [WorkerId::new("b"), WorkerId::new("a")];
/// let parts = ["x", "y", "z"].map(|k| Partition::new([k], 1)).into_iter().collect::<Result<Vec<_>, _>>()?;
/// let map = RoundRobin.assign(&workers, &parts, None)?;
/// assert_eq!(map.partitions_of(&WorkerId::new("a")).len(), 2); // x, z
/// assert_eq!(map.partitions_of(&WorkerId::new("b")).len(), 1); // y
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RoundRobin;

impl RoundRobin {
    /// The round-robin strategy.
    pub fn new() -> Self {
        Self
    }
}

impl AssignmentStrategy for RoundRobin {
    fn name(&self) -> &str {
        "round_robin"
    }

    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        _previous: Option<&AssignmentMap>,
    ) -> Result<AssignmentMap> {
        let workers = sorted_workers(self.name(), workers, partitions.len())?;
        check_unique(partitions)?;
        let prefixes = KeyPrefixes::new(partitions);
        // `sorted_workers` guarantees that positions and worker indices fit in `u32`.
        let mut by_keys: Vec<(u128, u32)> = (0u32..)
            .take(partitions.len())
            .map(|i| (prefixes.get(i), i))
            .collect();
        sort_by_keys(&mut by_keys, partitions);
        let mut owner = vec![0u32; partitions.len()];
        for (rank, &(_, i)) in by_keys.iter().enumerate() {
            owner[i as usize] = (rank % workers.len()) as u32;
        }
        Ok(collect_map(&workers, partitions, &owner, &prefixes))
    }
}
