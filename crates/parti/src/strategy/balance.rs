//! Load-bounded placement for [`WeightedConsistentHash`](super::WeightedConsistentHash).
//!
//! Loads are `u128` so that sums of `u64` weights cannot overflow.

use std::collections::BTreeSet;

use super::NO_WORKER;
use super::problem::Ranked;
use super::ring::Ring;

/// The load limits of one assignment.
///
/// A partition heavier than the mean of what is left is a "giant": it will sit on a worker of
/// its own, so it and one worker are taken out before the mean is computed (otherwise one huge
/// partition would inflate the mean and loosen every bound). With `m` that mean and `h` the
/// heaviest remaining partition:
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// How far a worker may keep its previous partitions: `max(⌊(1+ε)·m⌋, ⌊m + h⌋)`, at least
    /// `⌈m⌉` so that the workers can hold everything. `(1+ε)·m` can only be exceeded through a
    /// partition heavier than `ε·m`, and then moving partitions to get under it would often
    /// just shift the excess elsewhere; keeping them avoids churn.
    pub(crate) keep: u128,
    /// How far the cold start fills a worker: `⌊(1+ε)·m⌋`, but at least `min(h, ε·m)` below
    /// `keep` (and at least `⌈m⌉`). `keep` falls a little whenever a worker joins; a cold start
    /// that filled many workers right up to it would have each of them shed a partition then.
    pub(crate) cold_cap: u128,
    /// A worker below this, `(1−ε)·m − min(h, ε·m)`, is filled up from the most loaded workers
    /// on a cold start, and donors never go below it.
    pub(crate) floor: u128,
    /// With a previous assignment, only workers below `floor − h` are filled. The floor moves
    /// with the mean whenever a worker joins or leaves (by about `m/n`); a worker that sat at or
    /// near the old floor, as many do after a cold start, must not pull partitions off others
    /// for that. It gets the departed worker's partitions first instead (they go to the least
    /// loaded workers).
    pub(crate) sticky_floor: u128,
    /// Filling stops at `⌈m⌉`.
    pub(crate) target: u128,
}

impl Bounds {
    /// `weights` in descending order, `total` their sum, `epsilon` finite and non-negative.
    pub(crate) fn new(
        weights: impl IntoIterator<Item = u64>,
        total: u128,
        workers: usize,
        epsilon: f64,
    ) -> Self {
        let (mut total, mut n, mut heaviest) = (total, workers.max(1) as u128, 0);
        for w in weights {
            let w128 = u128::from(w);
            // `w > total / n`, without rounding.
            if n > 1 && w128 * n > total {
                total -= w128;
                n -= 1;
            } else {
                heaviest = w;
                break;
            }
        }
        let target = total.div_ceil(n);
        let mean = total as f64 / n as f64;
        // Float-to-int `as` saturates, which is what we want for huge values.
        let cap = (((1.0 + epsilon) * mean).floor() as u128).max(target);
        let keep = ((mean + heaviest as f64).floor() as u128).max(cap);
        let slack = (heaviest as f64).min(epsilon * mean);
        let below_keep = ((mean + heaviest as f64).max((1.0 + epsilon) * mean) - slack).floor();
        let cold_cap = (below_keep as u128).min(cap).max(target);
        let floor = ((1.0 - epsilon) * mean - slack).ceil().max(0.0) as u128;
        Self {
            keep,
            cold_cap,
            floor,
            sticky_floor: floor.saturating_sub(u128::from(heaviest)),
            target,
        }
    }
}

/// Owners and loads while they are being decided. Partitions are referred to by rank (their
/// position in the processing order), so every pass reads `ranked` and `owner` in order.
#[derive(Debug)]
pub(crate) struct Placement<'a> {
    ranked: &'a [Ranked],
    /// By rank.
    owner: Vec<u32>,
    load: Vec<u128>,
    bounds: Bounds,
}

impl<'a> Placement<'a> {
    /// Nothing placed yet. `None` when there are no workers.
    pub(crate) fn new(ranked: &'a [Ranked], workers: usize, bounds: Bounds) -> Option<Self> {
        (workers > 0).then(|| Self {
            ranked,
            owner: vec![NO_WORKER; ranked.len()],
            load: vec![0; workers],
            bounds,
        })
    }

    /// `owners()[r]`: the worker index of the partition of rank `r` (all placed once the passes
    /// have run).
    pub(crate) fn owners(&self) -> &[u32] {
        &self.owner
    }

    fn weight_of(&self, rank: u32) -> u128 {
        u128::from(self.ranked[rank as usize].weight())
    }

    fn give(&mut self, rank: u32, worker: u32) {
        self.owner[rank as usize] = worker;
        self.load[worker as usize] += self.weight_of(rank);
    }

    /// Cold start: each partition (heaviest first) goes to the first worker clockwise from its
    /// hash that stays within [`Bounds::cold_cap`]. When no worker can take it within that
    /// (only possible for a partition heavier than ε·mean), it goes to the least-loaded worker,
    /// which is below the mean, so no load ever exceeds `max((1+ε)·mean, mean + heaviest)`.
    pub(crate) fn place_on_ring(&mut self, ring: &Ring) {
        let cap = self.bounds.cold_cap;
        let mut least = LeastLoaded::new(&self.load);
        // Within a run of equal weights, ranks are by ascending hash: a moving cursor.
        let mut cursor = 0;
        for (partition, rank) in self.ranked.iter().zip(0u32..) {
            let w = u128::from(partition.weight());
            let (min_load, min_worker) = least.get(&self.load);
            cursor = ring.position(partition.hash, cursor);
            let worker = if min_load + w > cap {
                min_worker
            } else {
                // Some worker fits (the least loaded one), so the walk finds one.
                ring.walk_from(cursor)
                    .find(|&o| self.load[o as usize] + w <= cap)
                    .unwrap_or(min_worker)
            };
            self.give(rank, worker);
            least.update(worker, &self.load);
        }
    }

    /// Sticky pass: each partition (heaviest first) stays with its previous owner (`previous`,
    /// by rank) if that keeps the owner within [`Bounds::keep`], or if it is the owner's first
    /// partition (a partition heavier than that has to be somewhere). Returns the ranks left to
    /// place, in order.
    pub(crate) fn keep_previous(&mut self, previous: &[u32]) -> Vec<u32> {
        let mut pool = Vec::new();
        for (&prev, rank) in previous.iter().zip(0u32..) {
            let keep = prev != NO_WORKER && {
                let load = self.load[prev as usize];
                load == 0 || load + self.weight_of(rank) <= self.bounds.keep
            };
            if keep {
                self.give(rank, prev);
            } else {
                pool.push(rank);
            }
        }
        pool
    }

    /// Places `pool` (ranks, heaviest first) on the least-loaded worker each time, preferring
    /// the previous owner when it ties for least loaded. Water-filling: it lifts the lightest
    /// workers first, and the receiver is below the mean, so loads stay within
    /// `max((1+ε)·mean, mean + heaviest)`.
    pub(crate) fn place_least_loaded(&mut self, pool: &[u32], previous: &[u32]) {
        let mut least = LeastLoaded::new(&self.load);
        for &rank in pool {
            let (min_load, min_worker) = least.get(&self.load);
            let prev = previous[rank as usize];
            let worker = if prev != NO_WORKER && self.load[prev as usize] == min_load {
                prev
            } else {
                min_worker
            };
            self.give(rank, worker);
            least.update(worker, &self.load);
        }
    }

    /// Lifts every worker below `receive_below` (one of the floors of [`Bounds`]) towards
    /// `target` with partitions from the most loaded workers. A move of weight `w` from donor
    /// `d` to receiver `r` requires `load(d) − w ≥ load(r) + w` (the pair gets more even, so the
    /// maximum never grows and the process ends) and `load(d) − w ≥ floor` (a donor never
    /// becomes a receiver). Among the candidates, the heaviest partition that does not overshoot
    /// `target` is taken, else the lightest; among equal ones, the first in processing order.
    /// A receiver lifted past `floor` becomes a donor; passes repeat until no move is possible,
    /// so running the fill again on its own result (with the same or a lower `receive_below`)
    /// changes nothing.
    pub(crate) fn fill_underloaded(&mut self, receive_below: u128) {
        let Bounds { floor, target, .. } = self.bounds;
        let receive_below = receive_below.min(floor);
        let workers = 0..self.load.len() as u32;
        let mut receivers: Vec<u32> = workers
            .clone()
            .filter(|&w| self.load[w as usize] < receive_below)
            .collect();
        if receivers.is_empty() {
            return;
        }
        // Each worker's partitions as (weight, rank), sorted by rank, so heaviest first. Inline
        // weights keep the searches below free of cache misses.
        let mut counts = vec![0usize; self.load.len()];
        for &owner in &self.owner {
            if let Some(count) = counts.get_mut(owner as usize) {
                *count += 1;
            }
        }
        // Room for a few more, which receivers get.
        let mut lists: Vec<Vec<(u64, u32)>> = counts
            .into_iter()
            .map(|count| Vec::with_capacity(count.saturating_add(8)))
            .collect();
        for ((&owner, partition), rank) in self.owner.iter().zip(self.ranked).zip(0u32..) {
            if let Some(list) = lists.get_mut(owner as usize) {
                list.push((partition.weight(), rank));
            }
        }
        // A donor is a worker at or above `floor` with a partition it could give without going
        // below it. One without stays so for good (its load only changes by giving), so it is
        // left out instead of being looked at on every move.
        let can_give = |load: u128, list: &[(u64, u32)]| {
            load >= floor && list.last().is_some_and(|e| u128::from(e.0) <= load - floor)
        };
        let mut donors: BTreeSet<(u128, u32)> = workers
            .filter(|&w| can_give(self.load[w as usize], &lists[w as usize]))
            .map(|w| (self.load[w as usize], w))
            .collect();
        let lightest = self.ranked.last().map_or(0, |r| u128::from(r.weight()));
        loop {
            receivers.sort_unstable_by_key(|&w| (self.load[w as usize], w));
            let mut moved = false;
            for &r in &receivers {
                while self.load[r as usize] < target {
                    let Some((donor, pos)) = self.pick_donation(r, &donors, &lists, lightest)
                    else {
                        break;
                    };
                    let entry = lists[donor as usize].remove(pos);
                    let list = &mut lists[r as usize];
                    list.insert(list.partition_point(|e| e.1 < entry.1), entry);
                    donors.remove(&(self.load[donor as usize], donor));
                    self.load[donor as usize] -= u128::from(entry.0);
                    self.give(entry.1, r);
                    if can_give(self.load[donor as usize], &lists[donor as usize]) {
                        donors.insert((self.load[donor as usize], donor));
                    }
                    moved = true;
                }
                if can_give(self.load[r as usize], &lists[r as usize]) {
                    donors.insert((self.load[r as usize], r));
                }
            }
            receivers.retain(|&r| self.load[r as usize] < receive_below);
            if !moved || receivers.is_empty() {
                return;
            }
        }
    }

    /// The donor and the position in its list (heaviest first) of the partition to move to
    /// `receiver`: the heaviest one within both the need and the donor's limit, else the
    /// lightest one within the limit.
    fn pick_donation(
        &self,
        receiver: u32,
        donors: &BTreeSet<(u128, u32)>,
        lists: &[Vec<(u64, u32)>],
        lightest: u128,
    ) -> Option<(u32, usize)> {
        let have = self.load[receiver as usize];
        let need = self.bounds.target.saturating_sub(have);
        for &(donor_load, donor) in donors.iter().rev() {
            let limit = (donor_load.saturating_sub(have) / 2)
                .min(donor_load.saturating_sub(self.bounds.floor));
            // Lighter donors only have smaller limits.
            if limit < lightest.max(1) {
                return None;
            }
            let list = &lists[donor as usize];
            let fitting = list.partition_point(|e| u128::from(e.0) > need.min(limit));
            if fitting < list.len() {
                return Some((donor, fitting));
            }
            if let Some(last) = list.last()
                && u128::from(last.0) <= limit
            {
                return Some((donor, list.len() - 1));
            }
        }
        None
    }
}

/// The least-loaded worker, kept in a tournament tree: node `k` holds the index of the least
/// loaded worker below it (ties to the lowest index); leaf `leaves + w` is worker `w`. Loads
/// only ever grow, so an update climbs only while the node's winner is the updated worker:
/// usually a level or two, never more than `log n`.
struct LeastLoaded {
    tree: Vec<u32>,
    leaves: usize,
    workers: usize,
}

impl LeastLoaded {
    /// `load` must not be empty.
    fn new(load: &[u128]) -> Self {
        let leaves = load.len().next_power_of_two();
        let mut this = Self {
            tree: vec![NO_WORKER; leaves],
            leaves,
            workers: load.len(),
        };
        for k in (1..leaves).rev() {
            this.tree[k] = this.winner(k, load);
        }
        this
    }

    fn node(&self, k: usize) -> u32 {
        if k < self.leaves {
            self.tree[k]
        } else if k - self.leaves < self.workers {
            (k - self.leaves) as u32
        } else {
            NO_WORKER
        }
    }

    /// The better of the two children of internal node `k`.
    fn winner(&self, k: usize, load: &[u128]) -> u32 {
        let (a, b) = (self.node(2 * k), self.node(2 * k + 1));
        let key = |w: u32| load.get(w as usize).map_or((u128::MAX, w), |&l| (l, w));
        if key(b) < key(a) { b } else { a }
    }

    /// The least-loaded worker and its load.
    fn get(&self, load: &[u128]) -> (u128, u32) {
        let w = self.node(1);
        (load.get(w as usize).copied().unwrap_or(u128::MAX), w)
    }

    /// Call after `load[worker]` grew.
    fn update(&mut self, worker: u32, load: &[u128]) {
        let mut k = (self.leaves + worker as usize) / 2;
        while k >= 1 && self.tree[k] == worker {
            self.tree[k] = self.winner(k, load);
            k /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Partition;
    use crate::strategy::problem::Problem;

    #[test]
    fn bounds() {
        let b = Bounds::new([10; 100], 1000, 10, 0.05);
        assert_eq!((b.cold_cap, b.keep, b.target), (105, 110, 100));
        // The slack of the cold-start floor is one partition, at most ε·mean.
        // The sticky floor is one more partition below.
        assert_eq!((b.floor, b.sticky_floor), (90, 80));
        // With light partitions, `keep` is (1+ε)·mean and the cold start stays one partition
        // below it.
        let b = Bounds::new([1; 1000], 1000, 10, 0.05);
        assert_eq!((b.cold_cap, b.keep), (104, 105));
        // Lower than the mean it never goes.
        let b = Bounds::new([5; 200], 1000, 10, 0.05);
        assert_eq!((b.cold_cap, b.keep), (100, 105));
        // A heavy partition: the slack of the cold-start floor is capped, not that of the
        // sticky floor.
        let b = Bounds::new([50, 10], 1000, 10, 0.05);
        assert_eq!(
            (b.cold_cap, b.keep, b.floor, b.sticky_floor),
            (105, 150, 90, 40)
        );
        // Cap never below the mean, floor never negative.
        let b = Bounds::new([3, 3, 3, 1], 10, 3, 0.0);
        assert_eq!((b.cold_cap, b.keep, b.sticky_floor, b.target), (4, 6, 1, 4));
        // A giant is set aside with one worker: the rest share 300 over 2 workers.
        let b = Bounds::new([1000, 10], 1300, 3, 0.05);
        assert_eq!(
            (b.cold_cap, b.keep, b.floor, b.sticky_floor, b.target),
            (152, 160, 135, 125, 150)
        );
    }

    #[test]
    fn fill_lifts_an_empty_worker_without_raising_the_max() {
        let parts: Vec<Partition> = (0..20)
            .map(|i| Partition::new([format!("p{i}")], 10).unwrap())
            .collect();
        let problem = Problem::new(&parts, 0).unwrap();
        let bounds = Bounds::new([10; 20], 200, 3, 0.05);
        let mut placement = Placement::new(&problem.ranked, 3, bounds).unwrap();
        for rank in 0..20u32 {
            placement.give(rank, rank % 2);
        }
        placement.fill_underloaded(bounds.floor);
        let mut loads = placement.load.clone();
        loads.sort_unstable();
        assert_eq!(loads, [60, 70, 70]);
    }

    #[test]
    fn least_loaded_tracks_updates_and_breaks_ties_by_index() {
        for n in [1usize, 2, 3, 5, 8] {
            let mut load: Vec<u128> = (0..n as u128).map(|i| 10 + (i * 7) % 5).collect();
            let mut least = LeastLoaded::new(&load);
            for step in 0..40u128 {
                let expected = (0u32..).zip(&load).map(|(w, &l)| (l, w)).min().unwrap();
                assert_eq!(least.get(&load), expected);
                // Mostly the least loaded, sometimes another worker.
                let w = if step % 4 == 3 {
                    (step as u32 * 5) % n as u32
                } else {
                    least.get(&load).1
                };
                load[w as usize] += 1 + step % 3;
                least.update(w, &load);
            }
        }
    }
}
