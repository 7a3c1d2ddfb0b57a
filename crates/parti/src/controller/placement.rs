//! The operator's [`Intents`] applied around the strategy: which workers may receive
//! partitions, which partitions are pinned, and whether anything with a live owner may move.
//! Pure: the leader reads the intents and the source, this decides the map.

use std::collections::BTreeSet;

use super::planner::orphans::reassign_orphans_onto;
use crate::assignment::AssignmentMap;
use crate::error::Result;
use crate::partition::{Partition, WorkerId};
use crate::records::Intents;
use crate::strategy::AssignmentStrategy;

/// The workers that may receive partitions: `workers` without the drained ones, or all of
/// them when every one is drained (the partitions must go somewhere).
pub(crate) fn targets(workers: &[WorkerId], intents: &Intents) -> Vec<WorkerId> {
    let open: Vec<WorkerId> = workers
        .iter()
        .filter(|w| !intents.drained.contains(*w))
        .cloned()
        .collect();
    if open.is_empty() {
        workers.to_vec()
    } else {
        open
    }
}

/// The map over `workers` (sorted, unique, not empty) for `partitions`.
///
/// - Orphans only (a crash recovery, or a frozen cluster): every live worker keeps what it
///   has and only orphans are placed, on the [`targets`].
/// - Otherwise the strategy places everything over the targets, starting from `previous`
///   (so a drain moves only the drained workers' partitions with a sticky strategy); drained
///   workers are in the map with nothing. Then each pinned partition goes to its worker when
///   that worker is a target.
pub(crate) fn place(
    strategy: &dyn AssignmentStrategy,
    workers: &[WorkerId],
    partitions: &[Partition],
    previous: &AssignmentMap,
    intents: &Intents,
    orphans_only: bool,
) -> Result<AssignmentMap> {
    let targets = targets(workers, intents);
    if (orphans_only || intents.frozen) && !previous.is_empty() {
        let mut map = reassign_orphans_onto(strategy, previous, workers, &targets, partitions)?;
        // Orphans move anyway: a pinned one goes straight to its pin (no second move later).
        let live: BTreeSet<&WorkerId> = workers.iter().collect();
        let owners = previous.owners();
        let orphans: Vec<Partition> = partitions
            .iter()
            .filter(|p| owners.get(p.keys()).is_none_or(|w| !live.contains(w)))
            .cloned()
            .collect();
        apply_pins(&mut map, &targets, &orphans, intents);
        map.normalize();
        return Ok(map);
    }
    let previous = (!previous.is_empty()).then_some(previous);
    let mut map = strategy.assign(&targets, partitions, previous)?;
    for worker in workers {
        map.insert_worker(worker.clone());
    }
    apply_pins(&mut map, &targets, partitions, intents);
    map.normalize();
    Ok(map)
}

/// Moves each pinned partition of `partitions` to its worker when that worker is a target.
fn apply_pins(
    map: &mut AssignmentMap,
    targets: &[WorkerId],
    partitions: &[Partition],
    intents: &Intents,
) {
    if intents.pinned.is_empty() {
        return;
    }
    let targets: BTreeSet<&WorkerId> = targets.iter().collect();
    for partition in partitions {
        let Some(pin) = intents.pinned.get(&partition.subject_key()) else {
            continue;
        };
        if !targets.contains(pin) || map.owner_of(partition) == Some(pin) {
            continue;
        }
        if let Some(owner) = map.owner_of(partition).cloned() {
            let kept: Vec<Partition> = map
                .partitions_of(&owner)
                .iter()
                .filter(|p| !p.same_keys(partition))
                .cloned()
                .collect();
            map.set(owner, kept);
        }
        map.push(pin, partition.clone());
    }
}

/// Whether `map` honours `intents` over `workers`: no drained worker holds anything (unless
/// every worker is drained) and every pin to a target worker is in place. A frozen cluster
/// honours its intents by not moving anything, so this is only asked when it is not frozen.
pub(crate) fn honoured(map: &AssignmentMap, workers: &[WorkerId], intents: &Intents) -> bool {
    let targets = targets(workers, intents);
    let drained_empty = workers
        .iter()
        .filter(|w| !targets.contains(w))
        .all(|w| map.partitions_of(w).is_empty());
    let pins_in_place = map.iter().all(|(owner, held)| {
        held.iter().all(|p| {
            intents
                .pinned
                .get(&p.subject_key())
                .is_none_or(|pin| pin == owner || !targets.contains(pin))
        })
    });
    drained_empty && pins_in_place
}

/// One step from `current` towards `target`: at most `limit` moves of a partition from a
/// worker of `target` to another; everything else of `target` (partitions whose owner is gone,
/// new partitions, removals) at once. Returns the step and whether moves remain. Moves are
/// taken round-robin over the gaining workers (in key order within each), so every gainer
/// starts filling from the first step.
pub(crate) fn pace(
    current: &AssignmentMap,
    target: &AssignmentMap,
    limit: usize,
) -> (AssignmentMap, bool) {
    let owners_now = current.owners();
    // Per gainer, the moves into it, in key order (owners() is sorted by keys).
    let mut by_gainer: std::collections::BTreeMap<&WorkerId, Vec<&Partition>> =
        std::collections::BTreeMap::new();
    for (gainer, held) in target.iter() {
        for p in held {
            if let Some(&from) = owners_now.get(p.keys())
                && from != gainer
                && target.contains_worker(from)
            {
                by_gainer.entry(gainer).or_default().push(p);
            }
        }
    }
    let total: usize = by_gainer.values().map(Vec::len).sum();
    if total <= limit {
        return (target.clone(), false);
    }
    let mut allowed: BTreeSet<&[String]> = BTreeSet::new();
    let mut queues: Vec<std::collections::VecDeque<&Partition>> =
        by_gainer.into_values().map(Into::into).collect();
    while allowed.len() < limit {
        for queue in &mut queues {
            if allowed.len() == limit {
                break;
            }
            if let Some(p) = queue.pop_front() {
                allowed.insert(p.keys());
            }
        }
    }
    // Deferred moves stay with their current owner.
    let mut step = AssignmentMap::with_workers(target.workers());
    for (gainer, held) in target.iter() {
        for p in held {
            let owner = match owners_now.get(p.keys()) {
                Some(&from)
                    if from != gainer
                        && target.contains_worker(from)
                        && !allowed.contains(p.keys()) =>
                {
                    from
                }
                _ => gainer,
            };
            step.push(owner, p.clone());
        }
    }
    step.normalize();
    (step, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::strategy::WeightedConsistentHash;

    fn workers(n: usize) -> Vec<WorkerId> {
        (0..n).map(|i| WorkerId::new(format!("w{i}"))).collect()
    }

    fn parts(n: usize) -> Vec<Partition> {
        (0..n)
            .map(|i| Partition::new([format!("p{i}")], 10).unwrap())
            .collect()
    }

    /// The map without intents or a previous map.
    fn cold(ws: &[WorkerId], ps: &[Partition]) -> AssignmentMap {
        let none = Intents::default();
        place(
            &WeightedConsistentHash::default(),
            ws,
            ps,
            &AssignmentMap::new(),
            &none,
            false,
        )
        .unwrap()
    }

    fn moved(before: &AssignmentMap, after: &AssignmentMap) -> Vec<(String, WorkerId, WorkerId)> {
        let after_owners = after.owners();
        before
            .owners()
            .into_iter()
            .filter_map(|(keys, from)| {
                let to = after_owners.get(keys)?;
                (*to != from).then(|| (keys.join("."), from.clone(), (*to).clone()))
            })
            .collect()
    }

    #[test]
    fn a_drain_moves_only_the_drained_workers_partitions_and_undrain_refills_it() {
        let s = WeightedConsistentHash::default();
        let (ws, ps) = (workers(4), parts(400));
        let before = cold(&ws, &ps);
        let mut intents = Intents::default();
        intents.drained.insert(ws[2].clone());
        let drained = place(&s, &ws, &ps, &before, &intents, false).unwrap();
        drained.verify(&ws, &ps).unwrap();
        assert!(drained.partitions_of(&ws[2]).is_empty());
        assert!(honoured(&drained, &ws, &intents));
        assert!(!honoured(&before, &ws, &intents));
        let moves = moved(&before, &drained);
        assert_eq!(moves.len(), before.partitions_of(&ws[2]).len());
        assert!(moves.iter().all(|(_, from, _)| *from == ws[2]), "{moves:?}");
        // The others stay within the strategy's bound over three workers.
        let mean = 4000.0 / 3.0;
        for w in [&ws[0], &ws[1], &ws[3]] {
            assert!(drained.load(w) as f64 <= 1.05 * mean + 10.0, "{w}");
        }
        // Undrained, it gets about a quarter back.
        let back = place(&s, &ws, &ps, &drained, &Intents::default(), false).unwrap();
        assert!(
            back.partitions_of(&ws[2]).len() >= 90,
            "{}",
            back.partitions_of(&ws[2]).len()
        );
    }

    #[test]
    fn pacing_takes_steps_of_at_most_the_limit_and_ends_at_the_target() {
        let s = WeightedConsistentHash::default();
        let ps = parts(1_000);
        let four = workers(4);
        let eight = workers(8);
        let none = Intents::default();
        let start = place(&s, &four, &ps, &AssignmentMap::new(), &none, false).unwrap();
        let target = place(&s, &eight, &ps, &start, &none, false).unwrap();
        let needed = moved(&start, &target).len();
        assert!(needed > 300, "{needed}");
        let mut current = start.clone();
        let mut steps = 0;
        loop {
            let (step, more) = pace(&current, &target, 100);
            step.verify(&eight, &ps).unwrap();
            let moves = moved(&current, &step);
            assert!(moves.len() <= 100, "{}", moves.len());
            // Every gainer gets some from the first step on.
            if steps == 0 {
                let gainers: BTreeSet<&WorkerId> = moves.iter().map(|(_, _, to)| to).collect();
                assert_eq!(gainers.len(), 4, "{gainers:?}");
            }
            steps += 1;
            current = step;
            if !more {
                break;
            }
        }
        assert_eq!(current, target);
        assert_eq!(steps, needed.div_ceil(100));
        // A crashed worker's partitions are not paced: they go at once.
        let three: Vec<WorkerId> = four[..3].to_vec();
        let recovered = place(&s, &three, &ps, &start, &none, false).unwrap();
        let (step, _) = pace(&start, &recovered, 1);
        step.verify(&three, &ps).unwrap();
    }

    #[test]
    fn a_pinned_orphan_goes_to_its_pin_in_a_crash_recovery() {
        let s = WeightedConsistentHash::default();
        let (ws, ps) = (workers(3), parts(60));
        let before = cold(&ws, &ps);
        // w2 crashes; one of its partitions is pinned to w0, one of w1's too.
        let orphan = before.partitions_of(&ws[2])[0].clone();
        let kept = before.partitions_of(&ws[1])[0].clone();
        let mut intents = Intents::default();
        intents.pinned.insert(orphan.subject_key(), ws[0].clone());
        intents.pinned.insert(kept.subject_key(), ws[0].clone());
        let survivors = ws[..2].to_vec();
        let map = place(&s, &survivors, &ps, &before, &intents, true).unwrap();
        map.verify(&survivors, &ps).unwrap();
        assert_eq!(map.owner_of(&orphan), Some(&ws[0]));
        // Only orphans move in a recovery: the live owner keeps its pinned partition.
        assert_eq!(map.owner_of(&kept), Some(&ws[1]));
        assert!(
            moved(&before, &map)
                .iter()
                .all(|(_, from, _)| *from == ws[2])
        );
    }

    #[test]
    fn draining_every_worker_is_ignored() {
        let s = WeightedConsistentHash::default();
        let (ws, ps) = (workers(2), parts(10));
        let mut intents = Intents::default();
        intents.drained.extend(ws.iter().cloned());
        let map = place(&s, &ws, &ps, &AssignmentMap::new(), &intents, false).unwrap();
        map.verify(&ws, &ps).unwrap();
        assert!(honoured(&map, &ws, &intents));
    }

    #[test]
    fn pins_go_to_a_live_undrained_worker_only() {
        let s = WeightedConsistentHash::default();
        let (ws, ps) = (workers(3), parts(30));
        let mut intents = Intents::default();
        intents.pinned.insert("p1".into(), ws[0].clone());
        intents.pinned.insert("p2".into(), ws[0].clone());
        intents.pinned.insert("p3".into(), WorkerId::new("gone"));
        let map = place(&s, &ws, &ps, &AssignmentMap::new(), &intents, false).unwrap();
        map.verify(&ws, &ps).unwrap();
        assert_eq!(map.owner_of(&ps[1]), Some(&ws[0]));
        assert_eq!(map.owner_of(&ps[2]), Some(&ws[0]));
        assert!(honoured(&map, &ws, &intents));
        // Pinned to a drained worker: the pin waits, the drain wins.
        intents.drained.insert(ws[0].clone());
        let map = place(&s, &ws, &ps, &map, &intents, false).unwrap();
        assert!(map.partitions_of(&ws[0]).is_empty());
        assert!(honoured(&map, &ws, &intents));
    }

    #[test]
    fn frozen_or_orphans_only_moves_nothing_with_a_live_owner() {
        let s = WeightedConsistentHash::default();
        let (ws, ps) = (workers(3), parts(90));
        let before = cold(&ws, &ps);
        let mut frozen = Intents {
            frozen: true,
            ..Intents::default()
        };
        frozen.drained.insert(ws[1].clone());
        // A fourth worker joins, a fifth of the partitions is new, w2 crashed.
        let mut ws4 = vec![ws[0].clone(), ws[1].clone(), WorkerId::new("w3")];
        ws4.sort();
        let ps2 = parts(110);
        let map = place(&s, &ws4, &ps2, &before, &frozen, false).unwrap();
        map.verify(&ws4, &ps2).unwrap();
        assert!(
            moved(&before, &map)
                .iter()
                .all(|(_, from, _)| *from == ws[2]),
            "only the crashed worker's partitions move"
        );
        // Orphans avoid the drained worker; it keeps what it had.
        assert_eq!(map.partitions_of(&ws[1]), before.partitions_of(&ws[1]));
        // The same decision for a crash recovery when not frozen.
        frozen.frozen = false;
        let emergency = place(&s, &ws4, &ps2, &before, &frozen, true).unwrap();
        assert_eq!(emergency, map);
        assert!(
            !honoured(&emergency, &ws4, &frozen),
            "the drain is owed a publish"
        );
    }
}
