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
        return reassign_orphans_onto(strategy, previous, workers, &targets, partitions);
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
        let before = place(
            &s,
            &ws,
            &ps,
            &AssignmentMap::new(),
            &Intents::default(),
            false,
        )
        .unwrap();
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
        let before = place(
            &s,
            &ws,
            &ps,
            &AssignmentMap::new(),
            &Intents::default(),
            false,
        )
        .unwrap();
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
