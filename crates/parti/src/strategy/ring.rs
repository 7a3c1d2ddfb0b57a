//! The hash ring shared by the consistent-hash strategies.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::partition::WorkerId;

/// Spreads the virtual-node seeds of one worker over the 64-bit space.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Points `(hash, worker index)` sorted by hash; a key belongs to the first point at or after
/// its hash, wrapping around.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring with `virtual_nodes` points per worker (at least one). `workers` must be sorted and
    /// de-duplicated, with fewer than `u32::MAX` entries; point `i` of the result refers to
    /// `workers[i]`.
    pub(crate) fn new(workers: &[WorkerId], virtual_nodes: u32, seed: u64) -> Self {
        let per_worker = virtual_nodes.max(1);
        let mut points = Vec::with_capacity(workers.len() * per_worker as usize);
        for (worker, index) in workers.iter().zip(0u32..) {
            let id = worker.as_str().as_bytes();
            for v in 0..per_worker {
                let point_seed = seed ^ u64::from(v).wrapping_mul(GOLDEN);
                points.push((xxh3_64_with_seed(id, point_seed), index));
            }
        }
        // Ties (hash collisions) are broken by worker index, so the ring is deterministic.
        points.sort_unstable();
        Self { points }
    }

    /// Owners of the points from index `start` clockwise, one full turn (so every worker
    /// appears).
    pub(crate) fn walk_from(&self, start: usize) -> impl Iterator<Item = u32> + '_ {
        let (before, after) = self.points.split_at(start.min(self.points.len()));
        after.iter().chain(before).map(|&(_, worker)| worker)
    }

    /// Index of the first point at or after `hash` (`len` when there is none: wrap to 0).
    ///
    /// When every point before `from` is below `hash`, the search gallops forward from `from`,
    /// so that lookups in ascending hash order cost about the gap between them instead of a
    /// binary search over the whole ring each.
    pub(crate) fn position(&self, hash: u64, from: usize) -> usize {
        let points = &self.points;
        let len = points.len();
        let below = |&(h, _): &(u64, u32)| h < hash;
        let mut lo = from.min(len);
        if lo > 0 && !below(&points[lo - 1]) {
            return points.partition_point(below);
        }
        let mut step = 1;
        while lo < len {
            let probe = (lo + step).min(len);
            if !below(&points[probe - 1]) {
                return lo + points[lo..probe].partition_point(below);
            }
            lo = probe;
            step *= 2;
        }
        len
    }

    /// The owner of the point at index `position` (a [`position`](Self::position)), wrapping
    /// past the last point to the first. `None` only for a ring without workers.
    pub(crate) fn owner_at(&self, position: usize) -> Option<u32> {
        self.points
            .get(position)
            .or(self.points.first())
            .map(|&(_, worker)| worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_wraps_and_covers_every_worker() {
        let workers = ["a", "b", "c"].map(WorkerId::new);
        let ring = Ring::new(&workers, 4, 7);
        assert_eq!(ring.points.len(), 12);
        let last = ring.points.last().map(|&(h, _)| h).unwrap();
        // Past the last point the walk wraps to the first one.
        let owner = |hash| ring.owner_at(ring.position(hash, 0));
        assert_eq!(owner(last.wrapping_add(1)), Some(ring.points[0].1));
        assert_eq!(owner(last), ring.points.last().map(|&(_, w)| w));
        let mut seen: Vec<u32> = ring.walk_from(ring.position(12345, 0)).collect();
        assert_eq!(seen.len(), 12);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, [0, 1, 2]);
    }

    #[test]
    fn position_from_a_hint_equals_a_full_search() {
        let workers = ["a", "b", "c", "d"].map(WorkerId::new);
        let ring = Ring::new(&workers, 50, 1);
        let mut hashes: Vec<u64> = (0..500u64).map(|i| i.wrapping_mul(GOLDEN) ^ 77).collect();
        hashes.push(u64::MAX);
        hashes.push(0);
        for from in [0, 1, 17, 199, 200, 1000] {
            for &h in &hashes {
                assert_eq!(
                    ring.position(h, from),
                    ring.points.partition_point(|p| p.0 < h)
                );
            }
        }
    }

    #[test]
    fn zero_virtual_nodes_still_places_each_worker() {
        let workers = ["a", "b"].map(WorkerId::new);
        assert_eq!(Ring::new(&workers, 0, 0).points.len(), 2);
        let empty = Ring::new(&[], 3, 0);
        assert_eq!(empty.owner_at(empty.position(1, 0)), None);
    }
}
