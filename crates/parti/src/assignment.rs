//! Assignments: what one worker owns, and the map of all workers to their partitions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId};

/// Where the cluster is in its life: still batching its first assignment, or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Lifecycle {
    /// No assignment has been published for the current cluster yet (first start or a full
    /// restart): the leader batches joins over the cold-start window.
    #[default]
    ColdStart,
    /// At least one assignment was published; changes are planned scales or emergencies.
    Running,
}

/// What one worker owns, as published by the leader.
///
/// ```
/// use parti::{Assignment, Lifecycle};
/// let empty = Assignment::default();
/// assert_eq!(empty.version, 0);
/// assert_eq!(empty.lifecycle, Lifecycle::ColdStart);
/// assert!(empty.partitions.is_empty());
/// ```
///
/// The struct is `#[non_exhaustive]` (it may carry more about the assignment later): build one
/// with [`Assignment::new`] or [`Default`], not with a struct literal.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Assignment {
    /// The cluster-wide assignment version; increases by one on every publish, across leaders.
    /// A group's first version (and the first after its commit was lost) is at least the
    /// leader's clock in Unix milliseconds, so versions never start again below earlier ones.
    pub version: u64,
    /// The cluster lifecycle at publication.
    pub lifecycle: Lifecycle,
    /// The partitions this worker owns, sorted.
    pub partitions: Vec<Partition>,
}

impl Assignment {
    /// An assignment of `partitions` (kept in the given order: pass them sorted) at `version`.
    ///
    /// ```
    /// use parti::{Assignment, Lifecycle, Partition};
    /// let a = Assignment::new(3, Lifecycle::Running, vec![Partition::new(["p0"], 10)?]);
    /// assert_eq!((a.version, a.weight()), (3, 10));
    /// # Ok::<(), parti::Error>(())
    /// ```
    pub fn new(version: u64, lifecycle: Lifecycle, partitions: Vec<Partition>) -> Self {
        Self {
            version,
            lifecycle,
            partitions,
        }
    }

    /// Total effective weight of the partitions.
    pub fn weight(&self) -> u64 {
        self.partitions
            .iter()
            .map(Partition::effective_weight)
            .fold(0, u64::saturating_add)
    }
}

/// The full assignment: every worker to its (sorted) partitions.
///
/// Produced by an [`AssignmentStrategy`](crate::strategy::AssignmentStrategy); every worker of
/// the input appears, possibly with no partitions.
///
/// ```
/// use parti::{AssignmentMap, Partition, WorkerId};
/// let mut map = AssignmentMap::new();
/// let w = WorkerId::new("worker-0");
/// map.insert_worker(w.clone());
/// map.push(&w, Partition::new(["a"], 3)?);
/// assert_eq!(map.load(&w), 3);
/// assert_eq!(map.owner_of(&Partition::new(["a"], 3)?), Some(&w));
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AssignmentMap {
    workers: BTreeMap<WorkerId, Vec<Partition>>,
}

impl AssignmentMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map with the given workers, each owning nothing.
    pub fn with_workers<'a>(workers: impl IntoIterator<Item = &'a WorkerId>) -> Self {
        Self {
            workers: workers
                .into_iter()
                .map(|w| (w.clone(), Vec::new()))
                .collect(),
        }
    }

    /// Adds a worker with no partitions (no-op if present).
    pub fn insert_worker(&mut self, worker: WorkerId) {
        self.workers.entry(worker).or_default();
    }

    /// Appends a partition to a worker, adding the worker if needed.
    ///
    /// Call [`normalize`](Self::normalize) after building to sort each worker's list.
    pub fn push(&mut self, worker: &WorkerId, partition: Partition) {
        match self.workers.get_mut(worker) {
            Some(list) => list.push(partition),
            None => {
                self.workers.insert(worker.clone(), vec![partition]);
            }
        }
    }

    /// Replaces a worker's partitions.
    pub fn set(&mut self, worker: WorkerId, mut partitions: Vec<Partition>) {
        partitions.sort_unstable();
        self.workers.insert(worker, partitions);
    }

    /// Replaces a worker's partitions with a list already in order (as [`set`](Self::set)
    /// would sort it): a strategy that sorted it once skips the second pass, which on a large
    /// map reads every partition's keys again.
    pub(crate) fn set_sorted(&mut self, worker: WorkerId, partitions: Vec<Partition>) {
        debug_assert!(
            partitions.is_sorted(),
            "set_sorted: the list is not in order"
        );
        self.workers.insert(worker, partitions);
    }

    /// Removes a worker, returning what it owned.
    pub fn remove_worker(&mut self, worker: &WorkerId) -> Option<Vec<Partition>> {
        self.workers.remove(worker)
    }

    /// Sorts every worker's partitions, so equal assignments compare equal.
    pub fn normalize(&mut self) {
        for list in self.workers.values_mut() {
            list.sort_unstable();
        }
    }

    /// The workers, sorted.
    pub fn workers(&self) -> impl ExactSizeIterator<Item = &WorkerId> {
        self.workers.keys()
    }

    /// Whether the worker is in the map.
    pub fn contains_worker(&self, worker: &WorkerId) -> bool {
        self.workers.contains_key(worker)
    }

    /// A worker's partitions (empty if the worker is unknown).
    pub fn partitions_of(&self, worker: &WorkerId) -> &[Partition] {
        self.workers.get(worker).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Iterates over `(worker, partitions)`, workers sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&WorkerId, &[Partition])> {
        self.workers.iter().map(|(w, p)| (w, p.as_slice()))
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// True when there are no workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Total number of assigned partitions.
    pub fn partition_count(&self) -> usize {
        self.workers.values().map(Vec::len).sum()
    }

    /// Sum of the effective weights a worker owns.
    pub fn load(&self, worker: &WorkerId) -> u64 {
        self.partitions_of(worker)
            .iter()
            .map(Partition::effective_weight)
            .fold(0, u64::saturating_add)
    }

    /// The owner of a partition (matched by keys), if any. Linear; build an index with
    /// [`owners`](Self::owners) for repeated look-ups.
    pub fn owner_of(&self, partition: &Partition) -> Option<&WorkerId> {
        self.workers
            .iter()
            .find(|(_, list)| list.iter().any(|p| p.same_keys(partition)))
            .map(|(w, _)| w)
    }

    /// An index from partition keys to owner.
    pub fn owners(&self) -> BTreeMap<&[String], &WorkerId> {
        self.workers
            .iter()
            .flat_map(|(w, list)| list.iter().map(move |p| (p.keys(), w)))
            .collect()
    }

    /// Checks that the map covers exactly `workers` and gives each of `partitions` exactly one
    /// owner. Strategies are expected to uphold this; the publisher checks it before writing.
    pub fn verify(&self, workers: &[WorkerId], partitions: &[Partition]) -> Result<()> {
        let strategy_err = |msg: String| Err(Error::Strategy(msg.into()));
        for w in workers {
            if !self.workers.contains_key(w) {
                return strategy_err(format!("worker {w} is missing from the assignment"));
            }
        }
        if self.workers.len() != workers.len() {
            return strategy_err(format!(
                "assignment has {} workers, expected {}",
                self.workers.len(),
                workers.len()
            ));
        }
        // Both sides sorted by a 64-bit hash of the keys, then the keys (compared only on equal
        // hashes), and walked together: far cheaper than a map of every partition's keys, and
        // exact (a hash collision is told apart by the keys).
        fn by_keys(p: &Partition) -> (u64, &Partition) {
            (p.hash_with_seed(0), p)
        }
        // Keys are compared only on equal hashes, and not read at all when both sides share
        // them (a strategy clones the partitions it is given): reading them would cost two cache
        // misses per partition, most of the check's time on a large map.
        let order = |a: &(u64, &Partition), b: &(u64, &Partition)| {
            a.0.cmp(&b.0).then_with(|| {
                let (a, b) = (a.1.keys(), b.1.keys());
                if std::ptr::eq(a, b) {
                    std::cmp::Ordering::Equal
                } else {
                    a.cmp(b)
                }
            })
        };
        let listed = sorted_by_hash(
            self.workers.values().flatten().map(by_keys).collect(),
            order,
        );
        let expected = sorted_by_hash(partitions.iter().map(by_keys).collect(), order);
        let same = |a: &(u64, &Partition), b: &(u64, &Partition)| order(a, b).is_eq();
        for run in listed.chunk_by(same) {
            if let [(_, p), _, ..] = run {
                return strategy_err(format!("partition {p} assigned {} times", run.len()));
            }
        }
        let unknown = |p: &Partition| {
            strategy_err(format!("unknown partition {} assigned", p.keys().join(".")))
        };
        let missing = |p: &Partition| strategy_err(format!("partition {p} is not assigned"));
        let (mut l, mut e) = (listed.iter().peekable(), expected.iter().peekable());
        loop {
            match (l.peek(), e.peek()) {
                (None, None) => return Ok(()),
                (Some(a), None) => return unknown(a.1),
                (None, Some(b)) => return missing(b.1),
                (Some(a), Some(b)) => match order(a, b) {
                    std::cmp::Ordering::Less => return unknown(a.1),
                    std::cmp::Ordering::Greater => return missing(b.1),
                    std::cmp::Ordering::Equal => {
                        l.next();
                        e.next();
                    }
                },
            }
        }
    }
}

/// Sorts `items` by `order`, which must order by the `u64` hash first: the hashes are
/// uniform, so the items are first spread into buckets by their hash's top bits (one counting
/// pass, one scattering pass) and only each small bucket is sorted. At a million partitions
/// this is about twice as fast as sorting the whole vector.
fn sorted_by_hash<T: Copy>(
    items: Vec<(u64, T)>,
    order: impl Fn(&(u64, T), &(u64, T)) -> std::cmp::Ordering,
) -> Vec<(u64, T)> {
    /// Items per bucket, on average.
    const PER_BUCKET: usize = 8;
    let Some(&first) = items.first() else {
        return items;
    };
    // A power of two, from 1 to 2^20 buckets.
    let bits = (items.len() / PER_BUCKET).max(1).ilog2().min(20);
    let bucket = |hash: u64| {
        // `bits` ≤ 20, so the shift is in 44..=64: a shift by 64 (one bucket) is spelt out.
        usize::try_from(hash.checked_shr(64 - bits).unwrap_or(0)).unwrap_or(0)
    };
    let mut starts = vec![0usize; (1usize << bits) + 1];
    for (hash, _) in &items {
        starts[bucket(*hash) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut out = vec![first; items.len()];
    for item in items {
        let slot = &mut next[bucket(item.0)];
        out[*slot] = item;
        *slot += 1;
    }
    for range in starts.windows(2) {
        out[range[0]..range[1]].sort_unstable_by(&order);
    }
    out
}

impl FromIterator<(WorkerId, Vec<Partition>)> for AssignmentMap {
    fn from_iter<T: IntoIterator<Item = (WorkerId, Vec<Partition>)>>(iter: T) -> Self {
        let mut map = Self {
            workers: iter.into_iter().collect(),
        };
        map.normalize();
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucketed sort orders exactly as a plain sort, whatever the size (empty, one item,
    /// fewer items than a bucket, many buckets) and with equal hashes told apart by the rest.
    #[test]
    fn sorted_by_hash_orders_as_a_plain_sort() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let order = |a: &(u64, u32), b: &(u64, u32)| a.0.cmp(&b.0).then(a.1.cmp(&b.1));
        for len in [0, 1, 2, 7, 8, 9, 100, 5_000] {
            let items: Vec<(u64, u32)> = (0..len)
                .map(|_| {
                    // A few hashes repeat (collisions), the rest are spread over all 64 bits.
                    let hash = if rng.random_bool(0.1) {
                        42
                    } else {
                        rng.random()
                    };
                    (hash, rng.random_range(0..10))
                })
                .collect();
            let mut expected = items.clone();
            expected.sort_unstable_by(order);
            assert_eq!(sorted_by_hash(items, order), expected, "{len} items");
        }
    }

    fn p(k: &str) -> Partition {
        Partition::new([k], 0).unwrap()
    }

    #[test]
    fn verify_catches_missing_double_and_unknown() {
        let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
        let workers = [a.clone(), b.clone()];
        let parts = [p("1"), p("2")];
        let good: AssignmentMap = [(a.clone(), vec![p("1")]), (b.clone(), vec![p("2")])]
            .into_iter()
            .collect();
        assert!(good.verify(&workers, &parts).is_ok());
        let double: AssignmentMap = [(a.clone(), vec![p("1"), p("2")]), (b.clone(), vec![p("2")])]
            .into_iter()
            .collect();
        assert!(double.verify(&workers, &parts).is_err());
        let missing: AssignmentMap = [(a.clone(), vec![p("1")]), (b.clone(), vec![])]
            .into_iter()
            .collect();
        assert!(missing.verify(&workers, &parts).is_err());
        let unknown: AssignmentMap = [(a.clone(), vec![p("1"), p("3")]), (b.clone(), vec![p("2")])]
            .into_iter()
            .collect();
        assert!(unknown.verify(&workers, &parts).is_err());
        let no_worker: AssignmentMap = [(a, vec![p("1"), p("2")])].into_iter().collect();
        assert!(no_worker.verify(&workers, &parts).is_err());
    }
}
