//! Emergency reassignment: place the orphans, move nothing else.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::assignment::AssignmentMap;
use crate::error::{Error, Result};
use crate::partition::{self, Partition, WorkerId};
use crate::strategy::AssignmentStrategy;

/// The map after a crash: every worker of `live` keeps exactly the partitions it owns in
/// `previous` (those still in `partitions`, with their current weights); only orphans are
/// placed — partitions of workers not in `live`, and partitions `previous` does not have.
///
/// The orphans go where `strategy` puts them when asked for the whole map with `previous`
/// restricted to `live` as the starting point, so a sticky strategy places them as it would
/// anyway; whatever the strategy does with the other partitions is ignored. Partitions that
/// are no longer in `partitions` are dropped.
///
/// Errors: duplicate partitions, no live worker to take orphans, a strategy error, or a
/// strategy that leaves an orphan unassigned or gives it to a worker outside `live`.
#[cfg(test)]
pub(crate) fn reassign_orphans(
    strategy: &dyn AssignmentStrategy,
    previous: &AssignmentMap,
    live: &[WorkerId],
    partitions: &[Partition],
) -> Result<AssignmentMap> {
    reassign_orphans_onto(strategy, previous, live, live, partitions)
}

/// [`reassign_orphans`], placing the orphans on `targets` only (a subset of `live`: the live
/// workers that are not drained); every live worker keeps its partitions.
pub(crate) fn reassign_orphans_onto(
    strategy: &dyn AssignmentStrategy,
    previous: &AssignmentMap,
    live: &[WorkerId],
    targets: &[WorkerId],
    partitions: &[Partition],
) -> Result<AssignmentMap> {
    partition::check_unique(partitions)?;
    let live_set: BTreeSet<&WorkerId> = live.iter().collect();
    let target_set: BTreeSet<&WorkerId> = targets.iter().collect();
    // Hashed, not ordered: at 100k partitions an ordered map of keys cost most of a crash's
    // placement (key comparisons), and nothing here needs the order.
    let mut current: HashMap<&[String], &Partition> = HashMap::with_capacity(partitions.len());
    current.extend(partitions.iter().map(|p| (p.keys(), p)));

    let mut kept = AssignmentMap::with_workers(live);
    let mut placed: HashSet<&[String]> = HashSet::with_capacity(partitions.len());
    for (worker, owned) in previous.iter().filter(|(w, _)| live_set.contains(w)) {
        // A garbage map may list a partition twice: the first owner keeps it.
        let list: Vec<Partition> = owned
            .iter()
            .filter_map(|p| {
                let now = *current.get(p.keys())?;
                placed.insert(now.keys()).then(|| now.clone())
            })
            .collect();
        // One insert per worker, not one map lookup per partition.
        kept.set(worker.clone(), list);
    }
    let orphans: Vec<&Partition> = partitions
        .iter()
        .filter(|p| !placed.contains(p.keys()))
        .collect();
    if orphans.is_empty() {
        kept.normalize();
        return Ok(kept);
    }
    if targets.is_empty() {
        return Err(Error::Strategy(
            format!(
                "no live worker to take {} orphaned partitions",
                orphans.len()
            )
            .into(),
        ));
    }

    let candidate = strategy.assign(targets, partitions, Some(&kept))?;
    // Only the orphans' owners are wanted: a walk of the candidate against the (few) orphans,
    // not a map of every partition's owner.
    let mut owners: HashMap<&[String], Option<&WorkerId>> =
        orphans.iter().map(|p| (p.keys(), None)).collect();
    for (worker, list) in candidate.iter() {
        for p in list {
            // A strategy that lists a partition twice: the last listing counts, as in
            // `AssignmentMap::owners`.
            if let Some(owner) = owners.get_mut(p.keys()) {
                *owner = Some(worker);
            }
        }
    }
    let mut result = kept;
    for orphan in orphans {
        match owners.get(orphan.keys()).copied().flatten() {
            Some(owner) if target_set.contains(owner) => result.push(owner, orphan.clone()),
            Some(owner) => {
                return Err(Error::Strategy(
                    format!(
                        "strategy {} gave partition {orphan} to {owner}, which is not live",
                        strategy.name()
                    )
                    .into(),
                ));
            }
            None => {
                return Err(Error::Strategy(
                    format!(
                        "strategy {} left partition {orphan} unassigned",
                        strategy.name()
                    )
                    .into(),
                ));
            }
        }
    }
    result.normalize();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round robin that rotates by `shift` and ignores `previous`: it moves nearly everything,
    /// which `reassign_orphans` must not let through.
    #[derive(Debug)]
    struct Rotating {
        shift: usize,
    }

    impl AssignmentStrategy for Rotating {
        fn name(&self) -> &str {
            "rotating"
        }

        fn assign(
            &self,
            workers: &[WorkerId],
            partitions: &[Partition],
            _previous: Option<&AssignmentMap>,
        ) -> Result<AssignmentMap> {
            let mut map = AssignmentMap::with_workers(workers);
            let mut sorted: Vec<&Partition> = partitions.iter().collect();
            sorted.sort();
            for (i, p) in sorted.into_iter().enumerate() {
                map.push(&workers[(i + self.shift) % workers.len()], p.clone());
            }
            map.normalize();
            Ok(map)
        }
    }

    /// A broken strategy that assigns nothing.
    #[derive(Debug)]
    struct Empty;

    impl AssignmentStrategy for Empty {
        fn name(&self) -> &str {
            "empty"
        }

        fn assign(
            &self,
            workers: &[WorkerId],
            _: &[Partition],
            _: Option<&AssignmentMap>,
        ) -> Result<AssignmentMap> {
            Ok(AssignmentMap::with_workers(workers))
        }
    }

    fn w(n: u32) -> WorkerId {
        WorkerId::new(format!("worker-{n}"))
    }

    fn p(n: u32, weight: u64) -> Partition {
        Partition::new([format!("p{n:02}")], weight).unwrap()
    }

    fn parts(range: std::ops::Range<u32>) -> Vec<Partition> {
        range.map(|n| p(n, 10)).collect()
    }

    fn previous() -> AssignmentMap {
        // worker-0: p00..p03, worker-1: p04..p07, worker-2: p08..p11
        (0..3).map(|i| (w(i), parts(i * 4..i * 4 + 4))).collect()
    }

    #[test]
    fn survivors_keep_everything_and_only_orphans_move_whatever_the_strategy() {
        let live = [w(0), w(2)];
        let all = parts(0..12);
        for shift in 0..3 {
            let map = reassign_orphans(&Rotating { shift }, &previous(), &live, &all).unwrap();
            map.verify(&live, &all).unwrap();
            for s in &live {
                for owned in previous().partitions_of(s) {
                    assert_eq!(map.owner_of(owned), Some(s), "shift {shift}: {owned} moved");
                }
            }
            assert_eq!(map.partition_count(), 12);
        }
    }

    #[test]
    fn new_partitions_are_placed_removed_ones_dropped_weights_refreshed() {
        let live = [w(0), w(1), w(2)];
        // p00 removed, p12 and p13 new, p05 re-weighted.
        let mut now: Vec<Partition> = parts(1..14);
        now[4] = p(5, 99);
        let map = reassign_orphans(&Rotating { shift: 1 }, &previous(), &live, &now).unwrap();
        map.verify(&live, &now).unwrap();
        assert_eq!(map.owner_of(&p(0, 10)), None);
        assert_eq!(map.owner_of(&p(5, 99)), Some(&w(1)));
        assert!(map.partitions_of(&w(1)).contains(&p(5, 99)));
        for n in 1..12 {
            let before = previous().owner_of(&p(n, 10)).cloned();
            assert_eq!(map.owner_of(&p(n, 10)), before.as_ref(), "p{n} moved");
        }
    }

    #[test]
    fn nothing_orphaned_calls_no_strategy_and_moves_nothing() {
        let live = [w(0), w(1), w(2)];
        let all = parts(0..12);
        let map = reassign_orphans(&Empty, &previous(), &live, &all).unwrap();
        assert_eq!(map, previous());
    }

    #[test]
    fn a_new_live_worker_appears_even_when_it_gets_nothing() {
        let live = [w(0), w(1), w(2), w(7)];
        let all = parts(0..12);
        let map = reassign_orphans(&Rotating { shift: 0 }, &previous(), &live, &all).unwrap();
        map.verify(&live, &all).unwrap();
        assert!(map.partitions_of(&w(7)).is_empty());
    }

    #[test]
    fn broken_strategy_duplicates_and_no_workers_are_errors() {
        let all = parts(0..12);
        let err = reassign_orphans(&Empty, &previous(), &[w(0)], &all).unwrap_err();
        assert!(err.to_string().contains("unassigned"), "{err}");

        let err = reassign_orphans(&Rotating { shift: 0 }, &previous(), &[], &all).unwrap_err();
        assert!(err.to_string().contains("no live worker"), "{err}");

        let dup = [p(1, 10), p(1, 20)];
        let err = reassign_orphans(&Rotating { shift: 0 }, &previous(), &[w(0)], &dup);
        assert!(matches!(err, Err(Error::InvalidPartition { .. })));
    }

    #[test]
    fn a_partition_listed_twice_in_a_garbage_map_gets_one_owner() {
        let mut garbage = previous();
        garbage.push(&w(1), p(0, 10));
        garbage.normalize();
        let live = [w(0), w(1), w(2)];
        let all = parts(0..12);
        let map = reassign_orphans(&Rotating { shift: 0 }, &garbage, &live, &all).unwrap();
        map.verify(&live, &all).unwrap();
    }
}
