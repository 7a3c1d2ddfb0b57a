//! Weight-aware, sticky consistent hashing with bounded loads: the recommended strategy.

use super::balance::{Bounds, Placement};
use super::problem::{Problem, Ranked};
use super::ring::Ring;
use super::{AssignmentStrategy, NO_WORKER, collect_map, sorted_workers};
use crate::assignment::AssignmentMap;
use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId};

/// Consistent hashing with bounded loads, weight-aware and sticky.
///
/// With `W` the total effective weight, `n` workers, mean = `W/n` and `h` the heaviest
/// partition:
///
/// - **Cold start** (no `previous`): partitions, heaviest first, go to the first worker clockwise
///   on a hash ring (virtual nodes, xxh3) whose load stays within `(1+ε)·mean` and at least
///   `min(h, ε·mean)` below the bound up to which a worker keeps its partitions later,
///   `max((1+ε)·mean, mean + h)` (never below the mean, though). That bound falls a little
///   when a worker joins; the workers filled up here then need not shed a partition each. The
///   result depends only on the inputs.
/// - **With `previous`**: every partition stays with its previous owner while that owner stays
///   within the balance bound below (heaviest partitions are kept first); the rest (new
///   partitions, those of departed workers, excess) go one by one to the least-loaded worker.
///   A `previous` that places none of the partitions on any of the workers counts as none.
/// - Then any worker below the floor `(1−ε)·mean − min(h, ε·mean)` on a cold start, or below
///   `floor − h` with `previous` (e.g. one that just joined), is filled up to about the mean
///   with partitions taken from the most loaded workers, one at a time and only where the move
///   makes the pair more even. The floor follows the mean, which changes a little whenever a
///   worker joins or leaves; the lower sticky floor keeps the many workers that sit at the old
///   floor after a cold start from each pulling partitions off others for that.
/// - A partition heavier than the mean of the others gets a worker of its own, and the bounds
///   above are computed without it (so one huge partition does not loosen them for the rest).
///
/// Guarantees (property-tested): every partition exactly once, every worker present,
/// deterministic and independent of input order; no worker above `max((1+ε)·mean, mean + h)`,
/// which is `(1+ε)·mean` whenever `h ≤ ε·mean` (only a heavy partition can push a worker past
/// it); re-assigning its own result with unchanged inputs moves nothing. Movement, for a
/// previous assignment made by this strategy: when `h ≤ ε·mean`, on n→n−1 workers only the
/// departed worker's partitions move and on n→n+1 the moved weight is at most 1.1 × `W/(n+1)`
/// (the minimum); with heavier partitions both bounds hold up to one extra partition's weight
/// (`+ h`), since balance can require moving a heavy partition and what it displaces.
/// Partitions of weight 0 count with the default weight.
///
/// Work is `O(P log P)` for `P` partitions (a few sorts) plus ring walks; 100,000 partitions
/// on 1,000 workers take a few tens of milliseconds, 1,000,000 on 10,000 about half a second
/// (`examples/strategy_report.rs --large`).
///
/// ```
/// use parti::{AssignmentStrategy, Partition, WeightedConsistentHash, WorkerId};
/// let strategy = WeightedConsistentHash::new().with_epsilon(0.1).with_seed(42);
/// assert_eq!(strategy.epsilon(), 0.1);
/// let workers: Vec<WorkerId> = (0..3).map(|i| WorkerId::new(format!("w{i}"))).collect();
/// let parts = (0..60).map(|i| Partition::new([format!("p{i}")], 1 + i % 5))
///     .collect::<Result<Vec<_>, _>>()?;
/// let map = strategy.assign(&workers, &parts, None)?;
/// let mean = parts.iter().map(Partition::effective_weight).sum::<u64>() as f64 / 3.0;
/// assert!(workers.iter().all(|w| map.load(w) as f64 <= 1.1 * mean));
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedConsistentHash {
    epsilon: f64,
    virtual_nodes: u32,
    seed: u64,
}

impl WeightedConsistentHash {
    /// ε unless configured otherwise: no worker above 1.05 × the mean load.
    pub const DEFAULT_EPSILON: f64 = 0.05;
    /// Virtual nodes per worker unless configured otherwise.
    pub const DEFAULT_VIRTUAL_NODES: u32 = 150;

    /// ε = 0.05, 150 virtual nodes per worker, seed 0.
    pub fn new() -> Self {
        Self {
            epsilon: Self::DEFAULT_EPSILON,
            virtual_nodes: Self::DEFAULT_VIRTUAL_NODES,
            seed: 0,
        }
    }

    /// Sets ε, the allowed excess over the mean load. It must be finite and `>= 0`, or
    /// [`assign`](AssignmentStrategy::assign) fails with [`Error::Strategy`]. A smaller ε
    /// balances more tightly and moves a little more.
    #[must_use]
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// Sets the number of virtual nodes per worker on the cold-start ring (`0` is treated as `1`).
    #[must_use]
    pub fn with_virtual_nodes(mut self, virtual_nodes: u32) -> Self {
        self.virtual_nodes = virtual_nodes;
        self
    }

    /// Sets the hash seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// ε: no worker above `(1+ε)` × the mean load (unless one partition alone forces it).
    pub fn epsilon(&self) -> f64 {
        self.epsilon
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

impl Default for WeightedConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl AssignmentStrategy for WeightedConsistentHash {
    fn name(&self) -> &str {
        "weighted_consistent_hash"
    }

    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        previous: Option<&AssignmentMap>,
    ) -> Result<AssignmentMap> {
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(Error::Strategy(
                format!(
                    "{}: epsilon must be a finite number >= 0, got {}",
                    self.name(),
                    self.epsilon
                )
                .into(),
            ));
        }
        let workers = sorted_workers(self.name(), workers, partitions.len())?;
        let problem = Problem::new(partitions, self.seed)?;
        let heaviest_first = problem.ranked.iter().map(Ranked::weight);
        let bounds = Bounds::new(heaviest_first, problem.total, workers.len(), self.epsilon);
        let mut placement = Placement::new(&problem.ranked, workers.len(), bounds)
            .ok_or_else(|| Error::Strategy(format!("{}: no workers", self.name()).into()))?;
        // A previous map that places none of these partitions on these workers carries no
        // information: use the ring, so the result equals a cold start.
        let previous = previous
            .map(|map| problem.previous_owners(map, &workers))
            .filter(|owners| owners.iter().any(|&o| o != NO_WORKER));
        let receive_below = match previous {
            None => {
                let ring = Ring::new(&workers, self.virtual_nodes, self.seed);
                placement.place_on_ring(&ring);
                bounds.floor
            }
            Some(owners) => {
                let pool = placement.keep_previous(&owners);
                placement.place_least_loaded(&pool, &owners);
                bounds.sticky_floor
            }
        };
        placement.fill_underloaded(receive_below);
        // Owners by rank to owners by input position.
        let mut owner = vec![NO_WORKER; partitions.len()];
        for (r, &o) in problem.ranked.iter().zip(placement.owners()) {
            if let Some(slot) = owner.get_mut(r.index as usize) {
                *slot = o;
            }
        }
        Ok(collect_map(&workers, partitions, &owner, &problem.prefixes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_epsilon_is_an_error() {
        let workers = [WorkerId::new("w")];
        for eps in [f64::NAN, -0.1, f64::INFINITY] {
            let err = WeightedConsistentHash::new()
                .with_epsilon(eps)
                .assign(&workers, &[], None)
                .unwrap_err();
            assert!(err.to_string().contains("epsilon"), "{err}");
        }
    }

    #[test]
    fn a_previous_map_without_overlap_is_a_cold_start() {
        let workers = ["a", "b", "c"].map(WorkerId::new);
        let parts: Vec<_> = (0..50)
            .map(|i| Partition::new([format!("p{i}")], i % 4).unwrap())
            .collect();
        let wch = WeightedConsistentHash::new();
        let cold = wch.assign(&workers, &parts, None).unwrap();
        let stranger: AssignmentMap = [(WorkerId::new("z"), parts.clone())].into_iter().collect();
        for previous in [AssignmentMap::new(), stranger] {
            assert_eq!(wch.assign(&workers, &parts, Some(&previous)).unwrap(), cold);
        }
    }

    #[test]
    fn a_partition_heavier_than_the_cap_sits_alone() {
        let workers = ["a", "b", "c"].map(WorkerId::new);
        let mut parts = vec![Partition::new(["big"], 1000).unwrap()];
        parts.extend((0..30).map(|i| Partition::new([format!("s{i}")], 10).unwrap()));
        let map = WeightedConsistentHash::new()
            .assign(&workers, &parts, None)
            .unwrap();
        let big = map.owner_of(&parts[0]).unwrap();
        assert_eq!(map.partitions_of(big).len(), 1);
        // The other two share the rest within (1+ε) of their own mean (150), not of 433.
        for w in workers.iter().filter(|w| *w != big) {
            assert!((143..=157).contains(&map.load(w)), "{w}: {}", map.load(w));
        }
    }
}
