//! Round robin over sorted workers and sorted partitions.

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
        let mut by_keys: Vec<usize> = (0..partitions.len()).collect();
        by_keys.sort_unstable_by(|&a, &b| partitions[a].keys().cmp(partitions[b].keys()));
        let mut owner = vec![0u32; partitions.len()];
        // `sorted_workers` guarantees 1 <= workers.len() < u32::MAX.
        for (rank, &i) in by_keys.iter().enumerate() {
            owner[i] = (rank % workers.len()) as u32;
        }
        Ok(collect_map(&workers, partitions, &owner))
    }
}
