//! What is applied around the strategy: the operator's [`Intents`] (which workers may receive
//! partitions, which partitions are pinned, whether anything with a live owner may move) and
//! the [`PlacementRules`] (capacity and labels). Pure: the leader reads the intents, the
//! heartbeats and the source, this decides the map.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::planner::orphans::reassign_orphans_onto;
use crate::assignment::AssignmentMap;
use crate::config::StepBudget;
use crate::error::Result;
use crate::partition::{Partition, WorkerId};
use crate::profile::{Capacity, PlacementRules, UnlabelledPolicy};
use crate::records::Intents;
use crate::strategy::{AssignmentStrategy, Scaled};

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

/// What [`place`] decided: the map, and the labels whose partitions are parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Every worker of the input, and every partition that is not parked.
    pub(crate) map: AssignmentMap,
    /// Label → how many of its partitions no one holds: no target worker has the label and
    /// its `labelSpillGrace` has not run out.
    pub(crate) parked: BTreeMap<String, usize>,
}

impl Placed {
    /// The partitions of `partitions` that are placed (not parked): what the map must cover.
    /// Borrowed when nothing is parked (every publish without labels: no copy of the list).
    pub(crate) fn placed<'p>(&self, partitions: &'p [Partition]) -> Cow<'p, [Partition]> {
        if self.parked.is_empty() {
            return Cow::Borrowed(partitions);
        }
        partitions
            .iter()
            .filter(|p| p.label().is_none_or(|l| !self.parked.contains_key(l)))
            .cloned()
            .collect()
    }
}

/// Which workers each partition may go to, over a set of workers (the targets, or all of
/// them): the label rules of [`profile`](crate::profile).
#[derive(Debug)]
struct Pools<'a> {
    /// Where unlabelled partitions, and those of spilled labels, go (sorted).
    unlabelled: Vec<WorkerId>,
    /// Label → the workers that have it (sorted).
    by_label: BTreeMap<&'a str, Vec<WorkerId>>,
    spilled: &'a BTreeSet<String>,
}

impl<'a> Pools<'a> {
    /// Over `workers` (sorted, unique).
    fn new(workers: &[WorkerId], rules: &'a PlacementRules) -> Self {
        let mut by_label: BTreeMap<&'a str, Vec<WorkerId>> = BTreeMap::new();
        let mut plain = Vec::new();
        for w in workers {
            match rules.labels_of(w) {
                Some(labels) if !labels.is_empty() => {
                    for l in labels {
                        by_label.entry(l.as_str()).or_default().push(w.clone());
                    }
                }
                _ => plain.push(w.clone()),
            }
        }
        let unlabelled = match rules.unlabelled_policy {
            UnlabelledPolicy::Dedicated if !plain.is_empty() => plain,
            _ => workers.to_vec(),
        };
        Self {
            unlabelled,
            by_label,
            spilled: &rules.spilled,
        }
    }

    /// True when every partition may go to every worker: no labels anywhere that matter.
    fn unconstrained(&self, workers: &[WorkerId], partitions: &[Partition]) -> bool {
        self.unlabelled.len() == workers.len() && partitions.iter().all(|p| p.label().is_none())
    }

    /// The pool of a partition with `label`: its key (`None` for the unlabelled pool) and its
    /// workers; `None` when the partition is parked.
    fn pool_of(&self, label: Option<&'a str>) -> Option<(Option<&'a str>, &[WorkerId])> {
        match label {
            None => Some((None, &self.unlabelled)),
            Some(l) => match self.by_label.get(l) {
                Some(workers) => Some((Some(l), workers)),
                None if self.spilled.contains(l) => Some((None, &self.unlabelled)),
                None => None,
            },
        }
    }

    /// Whether `worker` may hold `partition`.
    fn allows(&self, worker: &WorkerId, partition: &Partition) -> bool {
        self.pool_of(partition.label())
            .is_some_and(|(_, workers)| workers.binary_search(worker).is_ok())
    }

    /// The partitions grouped by pool, and the parked ones counted by label.
    #[allow(clippy::type_complexity)]
    fn group(
        &self,
        partitions: &'a [Partition],
    ) -> (
        BTreeMap<Option<&'a str>, (&[WorkerId], Vec<Partition>)>,
        BTreeMap<String, usize>,
    ) {
        let mut groups: BTreeMap<Option<&'a str>, (&[WorkerId], Vec<Partition>)> = BTreeMap::new();
        let mut parked: BTreeMap<String, usize> = BTreeMap::new();
        for p in partitions {
            match self.pool_of(p.label()) {
                Some((key, workers)) => groups
                    .entry(key)
                    .or_insert_with(|| (workers, Vec::new()))
                    .1
                    .push(p.clone()),
                None => {
                    *parked
                        .entry(p.label().unwrap_or_default().to_owned())
                        .or_default() += 1
                }
            }
        }
        (groups, parked)
    }
}

/// Which worker may hold which partition under the label rules, over the targets of
/// `workers` under `intents` (see [`place`]).
#[derive(Debug)]
pub(crate) struct Allowed<'a> {
    targets: Vec<WorkerId>,
    pools: Pools<'a>,
    everyone: Pools<'a>,
}

impl<'a> Allowed<'a> {
    /// Over `workers` (sorted, unique).
    pub(crate) fn new(workers: &[WorkerId], intents: &Intents, rules: &'a PlacementRules) -> Self {
        let targets = targets(workers, intents);
        Self {
            pools: Pools::new(&targets, rules),
            everyone: Pools::new(workers, rules),
            targets,
        }
    }

    /// Whether `worker` may keep `partition`: a target as the pools over the targets say; a
    /// drained worker as the pools over every worker say (a drain is not a label change).
    pub(crate) fn allows(&self, worker: &WorkerId, partition: &Partition) -> bool {
        if self.targets.binary_search(worker).is_ok() {
            self.pools.allows(worker, partition)
        } else {
            self.everyone.allows(worker, partition)
        }
    }
}

/// The map over `workers` (sorted, unique, not empty) for `partitions`.
///
/// - Labels (see [`profile`](crate::profile)): each partition may go only to the target
///   workers its label allows; the strategy places each such pool on its own (so balance holds
///   within each pool), and the partitions of a label no target worker has are parked (in no
///   one's list) unless the label has spilled.
/// - Capacity: the strategy sees each worker weighted by its capacity ([`Scaled`]).
/// - Orphans only (a crash recovery, or a frozen cluster): every live worker keeps what it
///   has and the labels allow; only orphans are placed, on the [`targets`].
/// - Otherwise the strategy places everything over the targets, starting from `previous`
///   (so a drain moves only the drained workers' partitions with a sticky strategy); drained
///   workers are in the map with nothing. Then each pinned partition goes to its worker when
///   that worker is a target its label allows.
pub(crate) fn place(
    strategy: &dyn AssignmentStrategy,
    workers: &[WorkerId],
    partitions: &[Partition],
    previous: &AssignmentMap,
    intents: &Intents,
    rules: &PlacementRules,
    orphans_only: bool,
) -> Result<Placed> {
    let targets = targets(workers, intents);
    let pools = Pools::new(&targets, rules);
    let capacities: BTreeMap<WorkerId, Capacity> = rules
        .profiles
        .iter()
        .map(|(w, p)| (w.clone(), p.capacity))
        .collect();
    let scaled = Scaled {
        inner: strategy,
        capacities: &capacities,
    };
    let unconstrained = pools.unconstrained(&targets, partitions);
    if (orphans_only || intents.frozen) && !previous.is_empty() {
        // What the labels no longer allow is an orphan too (judged on the partition as
        // listed now: its label may have changed).
        let allowed: Cow<'_, AssignmentMap> = if unconstrained {
            Cow::Borrowed(previous)
        } else {
            let rules_now = Allowed::new(workers, intents, rules);
            let listed: BTreeMap<&[String], &Partition> =
                partitions.iter().map(|p| (p.keys(), p)).collect();
            let kept = previous
                .iter()
                .map(|(w, held)| {
                    let kept = held.iter().filter(|p| {
                        listed
                            .get(p.keys())
                            .is_some_and(|now| rules_now.allows(w, now))
                    });
                    (w.clone(), kept.cloned().collect())
                })
                .collect::<AssignmentMap>();
            Cow::Owned(kept)
        };
        let (mut map, parked) = if unconstrained {
            let map = reassign_orphans_onto(&scaled, &allowed, workers, &targets, partitions)?;
            (map, BTreeMap::new())
        } else {
            let (groups, parked) = pools.group(partitions);
            let mut map = AssignmentMap::with_workers(workers);
            for (pool, group) in groups.values() {
                let part = reassign_orphans_onto(&scaled, &allowed, workers, pool, group)?;
                merge(&mut map, part);
            }
            (map, parked)
        };
        // Orphans move anyway: a pinned one goes straight to its pin (no second move later).
        // (Only worked out when something is pinned: a map of every partition's owner costs
        // tens of milliseconds at 100k partitions, on the crash path.)
        if !intents.pinned.is_empty() {
            let live: BTreeSet<&WorkerId> = workers.iter().collect();
            let owners = allowed.owners();
            let orphans: Vec<Partition> = partitions
                .iter()
                .filter(|p| owners.get(p.keys()).is_none_or(|w| !live.contains(w)))
                .cloned()
                .collect();
            apply_pins(&mut map, &targets, &orphans, intents, &pools);
        }
        map.normalize();
        return Ok(Placed { map, parked });
    }
    let previous = (!previous.is_empty()).then_some(previous);
    let (mut map, parked) = if unconstrained {
        (
            scaled.assign(&targets, partitions, previous)?,
            BTreeMap::new(),
        )
    } else {
        let (groups, parked) = pools.group(partitions);
        let mut map = AssignmentMap::new();
        for (pool, group) in groups.values() {
            merge(&mut map, scaled.assign(pool, group, previous)?);
        }
        (map, parked)
    };
    for worker in workers {
        map.insert_worker(worker.clone());
    }
    apply_pins(&mut map, &targets, partitions, intents, &pools);
    map.normalize();
    Ok(Placed { map, parked })
}

/// Adds every worker and partition of `part` to `map`.
fn merge(map: &mut AssignmentMap, part: AssignmentMap) {
    for (worker, held) in part.iter() {
        map.insert_worker(worker.clone());
        for p in held {
            map.push(worker, p.clone());
        }
    }
}

/// Moves each pinned partition of `partitions` to its worker when that worker is a target
/// its label allows.
fn apply_pins(
    map: &mut AssignmentMap,
    targets: &[WorkerId],
    partitions: &[Partition],
    intents: &Intents,
    pools: &Pools<'_>,
) {
    if intents.pinned.is_empty() {
        return;
    }
    let targets: BTreeSet<&WorkerId> = targets.iter().collect();
    for partition in partitions {
        let Some(pin) = intents.pinned.get(&partition.subject_key()) else {
            continue;
        };
        if !targets.contains(pin)
            || !pools.allows(pin, partition)
            || map.owner_of(partition) == Some(pin)
        {
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
/// every worker is drained) and every pin to a target worker its label allows is in place. A
/// frozen cluster honours its intents by not moving anything, so this is only asked when it
/// is not frozen.
pub(crate) fn honoured(
    map: &AssignmentMap,
    workers: &[WorkerId],
    intents: &Intents,
    rules: &PlacementRules,
) -> bool {
    let targets = targets(workers, intents);
    let pools = Pools::new(&targets, rules);
    let drained_empty = workers
        .iter()
        .filter(|w| !targets.contains(w))
        .all(|w| map.partitions_of(w).is_empty());
    let pins_in_place = map.iter().all(|(owner, held)| {
        held.iter().all(|p| {
            intents
                .pinned
                .get(&p.subject_key())
                .is_none_or(|pin| pin == owner || !targets.contains(pin) || !pools.allows(pin, p))
        })
    });
    drained_empty && pins_in_place
}

/// One step from `current` towards `target`: moves of a partition from a worker of `target` to
/// another, within `budget`; everything else of `target` (partitions whose owner is gone,
/// new partitions, removals) at once. Returns the step and whether moves remain. Moves are
/// taken round-robin over the gaining workers (in key order within each), so every gainer
/// starts filling from the first step. A move away from an owner that `permitted` no longer lets
/// hold the partition (its labels) is never deferred, nor counted against the limit.
pub(crate) fn pace(
    current: &AssignmentMap,
    target: &AssignmentMap,
    budget: StepBudget,
    permitted: &Allowed<'_>,
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
                && permitted.allows(from, p)
            {
                by_gainer.entry(gainer).or_default().push(p);
            }
        }
    }
    let total: u128 = by_gainer.values().flatten().map(|p| budget.cost(p)).sum();
    if total <= budget.cap() {
        return (target.clone(), false);
    }
    // Round-robin over the gainers until the next move does not fit (the first always does).
    let mut allowed: BTreeSet<&[String]> = BTreeSet::new();
    let mut spent: u128 = 0;
    let mut queues: Vec<std::collections::VecDeque<&Partition>> =
        by_gainer.into_values().map(Into::into).collect();
    'fill: while queues.iter().any(|q| !q.is_empty()) {
        for queue in &mut queues {
            let Some(&p) = queue.front() else {
                continue;
            };
            let cost = budget.cost(p);
            if spent.saturating_add(cost) > budget.cap() && !allowed.is_empty() {
                break 'fill;
            }
            queue.pop_front();
            spent = spent.saturating_add(cost);
            allowed.insert(p.keys());
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
                        && permitted.allows(from, p)
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
    use crate::profile::WorkerProfile;
    use crate::strategy::WeightedConsistentHash;

    fn workers(n: usize) -> Vec<WorkerId> {
        (0..n).map(|i| WorkerId::new(format!("w{i}"))).collect()
    }

    fn parts(n: usize) -> Vec<Partition> {
        (0..n)
            .map(|i| Partition::new([format!("p{i}")], 10).unwrap())
            .collect()
    }

    /// [`place`] without placement rules.
    fn place(
        s: &dyn AssignmentStrategy,
        ws: &[WorkerId],
        ps: &[Partition],
        previous: &AssignmentMap,
        intents: &Intents,
        orphans_only: bool,
    ) -> Result<AssignmentMap> {
        let rules = PlacementRules::default();
        super::place(s, ws, ps, previous, intents, &rules, orphans_only).map(|p| p.map)
    }

    /// [`pace`] without placement rules.
    fn pace(
        current: &AssignmentMap,
        target: &AssignmentMap,
        limit: usize,
    ) -> (AssignmentMap, bool) {
        let rules = PlacementRules::default();
        let workers: Vec<WorkerId> = target.workers().cloned().collect();
        let permitted = Allowed::new(&workers, &Intents::default(), &rules);
        super::pace(current, target, StepBudget::Moves(limit), &permitted)
    }

    /// [`honoured`] without placement rules.
    fn honoured(map: &AssignmentMap, ws: &[WorkerId], intents: &Intents) -> bool {
        super::honoured(map, ws, intents, &PlacementRules::default())
    }

    /// The map without intents or a previous map.
    fn cold(ws: &[WorkerId], ps: &[Partition]) -> AssignmentMap {
        let none = Intents::default();
        let s = WeightedConsistentHash::default();
        place(&s, ws, ps, &AssignmentMap::new(), &none, false).unwrap()
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

    /// `n` workers named `{prefix}{i}` with `labels`.
    fn labelled(prefix: &str, n: usize, labels: &[&str]) -> Vec<(WorkerId, WorkerProfile)> {
        (0..n)
            .map(|i| {
                let mut profile = WorkerProfile::new();
                for l in labels {
                    profile = profile.with_label(*l).unwrap();
                }
                (WorkerId::new(format!("{prefix}{i}")), profile)
            })
            .collect()
    }

    /// Partitions `p{i}`, every third one labelled `gpu`.
    fn mixed(n: usize) -> Vec<Partition> {
        parts(n)
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                if i % 3 == 0 {
                    p.with_label("gpu").unwrap()
                } else {
                    p
                }
            })
            .collect()
    }

    /// `gpu` workers labelled `gpu` and `cpu` without labels, and their IDs sorted.
    fn fleet(gpu: usize, cpu: usize) -> (Vec<(WorkerId, WorkerProfile)>, Vec<WorkerId>) {
        let mut profiles = labelled("gpu", gpu, &["gpu"]);
        profiles.extend(labelled("cpu", cpu, &[]));
        (profiles.clone(), sorted(&profiles))
    }

    fn sorted(profiles: &[(WorkerId, WorkerProfile)]) -> Vec<WorkerId> {
        let ids: BTreeSet<WorkerId> = profiles.iter().map(|(w, _)| w.clone()).collect();
        ids.into_iter().collect()
    }

    fn rules_of(profiles: &[(WorkerId, WorkerProfile)]) -> PlacementRules {
        PlacementRules::new().with_profiles(profiles.iter().cloned().collect())
    }

    /// Every partition of `map` sits on a worker its label allows under `rules`.
    fn labels_respected(map: &AssignmentMap, rules: &PlacementRules) -> bool {
        map.iter().all(|(w, held)| {
            held.iter().all(|p| {
                p.label().is_none_or(|l| {
                    rules.labels_of(w).is_some_and(|ls| ls.contains(l)) || rules.spilled.contains(l)
                })
            })
        })
    }

    #[test]
    fn labelled_partitions_go_to_labelled_workers_only() {
        let s = WeightedConsistentHash::default();
        let (profiles, ws) = fleet(3, 3);
        let ps = mixed(600);
        let none = Intents::default();
        for policy in [UnlabelledPolicy::Dedicated, UnlabelledPolicy::Shared] {
            let rules = rules_of(&profiles).with_unlabelled_policy(policy);
            let placed =
                super::place(&s, &ws, &ps, &AssignmentMap::new(), &none, &rules, false).unwrap();
            placed.map.verify(&ws, &ps).unwrap();
            assert!(placed.parked.is_empty());
            assert!(labels_respected(&placed.map, &rules));
            let unlabelled_on_gpu = ws
                .iter()
                .filter(|w| w.as_str().starts_with("gpu"))
                .flat_map(|w| placed.map.partitions_of(w))
                .filter(|p| p.label().is_none())
                .count();
            match policy {
                UnlabelledPolicy::Dedicated => assert_eq!(unlabelled_on_gpu, 0),
                _ => assert!(unlabelled_on_gpu > 100, "{unlabelled_on_gpu}"),
            }
        }
    }

    #[test]
    fn a_label_without_workers_parks_then_spills_and_comes_back() {
        let s = WeightedConsistentHash::default();
        let (profiles, all) = fleet(2, 3);
        let ps = mixed(300);
        let none = Intents::default();
        let rules = rules_of(&profiles);
        let before = super::place(&s, &all, &ps, &AssignmentMap::new(), &none, &rules, false)
            .unwrap()
            .map;
        // Both gpu workers crash: a crash recovery parks their partitions, moves nothing else.
        let cpu: Vec<WorkerId> = all
            .iter()
            .filter(|w| w.as_str().starts_with("cpu"))
            .cloned()
            .collect();
        let parked = super::place(&s, &cpu, &ps, &before, &none, &rules, true).unwrap();
        assert_eq!(parked.parked.get("gpu"), Some(&100));
        let placed = parked.placed(&ps);
        assert_eq!(placed.len(), 200);
        parked.map.verify(&cpu, &placed).unwrap();
        assert!(moved(&before, &parked.map).is_empty());
        // The grace ran out: they spill onto the cpu workers.
        let spilled_rules = rules.clone().with_spilled(["gpu".to_owned()].into());
        let spilled =
            super::place(&s, &cpu, &ps, &parked.map, &none, &spilled_rules, false).unwrap();
        assert!(spilled.parked.is_empty());
        spilled.map.verify(&cpu, &ps).unwrap();
        // A gpu worker is back: every gpu partition goes to it, spilled or not.
        let mut back = cpu.clone();
        back.push(WorkerId::new("gpu0"));
        back.sort();
        let returned =
            super::place(&s, &back, &ps, &spilled.map, &none, &spilled_rules, false).unwrap();
        returned.map.verify(&back, &ps).unwrap();
        let gpu0 = WorkerId::new("gpu0");
        let on_gpu0 = returned.map.partitions_of(&gpu0);
        assert_eq!(on_gpu0.len(), 100);
        assert!(on_gpu0.iter().all(|p| p.label() == Some("gpu")));
    }

    #[test]
    fn pins_and_crash_recovery_respect_labels() {
        let s = WeightedConsistentHash::default();
        let (profiles, ws) = fleet(2, 2);
        let ps = mixed(60);
        let rules = rules_of(&profiles);
        // p0 (gpu) pinned to a cpu worker: ignored; p1 (plain) pinned to cpu1: honoured.
        let mut intents = Intents::default();
        intents.pinned.insert("p0".into(), WorkerId::new("cpu0"));
        intents.pinned.insert("p1".into(), WorkerId::new("cpu1"));
        let placed =
            super::place(&s, &ws, &ps, &AssignmentMap::new(), &intents, &rules, false).unwrap();
        assert!(labels_respected(&placed.map, &rules));
        assert_eq!(placed.map.owner_of(&ps[1]), Some(&WorkerId::new("cpu1")));
        assert!(super::honoured(&placed.map, &ws, &intents, &rules));
        // gpu1 crashes: its partitions go to gpu0 only.
        let survivors: Vec<WorkerId> = ws
            .iter()
            .filter(|w| w.as_str() != "gpu1")
            .cloned()
            .collect();
        let after = super::place(&s, &survivors, &ps, &placed.map, &intents, &rules, true).unwrap();
        after.map.verify(&survivors, &ps).unwrap();
        assert!(labels_respected(&after.map, &rules));
        let moves = moved(&placed.map, &after.map);
        assert!(
            moves
                .iter()
                .all(|(_, from, to)| from.as_str() == "gpu1" && to.as_str() == "gpu0")
        );
    }

    #[test]
    fn a_worker_that_lost_its_label_gives_its_labelled_partitions_up_even_in_a_recovery() {
        let s = WeightedConsistentHash::default();
        let profiles = labelled("w", 3, &["gpu"]);
        let ws: Vec<WorkerId> = profiles.iter().map(|(w, _)| w.clone()).collect();
        let ps = mixed(90);
        let rules = rules_of(&profiles).with_unlabelled_policy(UnlabelledPolicy::Shared);
        let before = super::place(
            &s,
            &ws,
            &ps,
            &AssignmentMap::new(),
            &Intents::default(),
            &rules,
            false,
        )
        .unwrap();
        // w2 restarts without the label (a rolling update), while the cluster is frozen.
        let mut changed = profiles.clone();
        changed[2].1 = WorkerProfile::new();
        let rules = rules_of(&changed).with_unlabelled_policy(UnlabelledPolicy::Shared);
        let frozen = Intents {
            frozen: true,
            ..Intents::default()
        };
        let after = super::place(&s, &ws, &ps, &before.map, &frozen, &rules, false).unwrap();
        after.map.verify(&ws, &ps).unwrap();
        assert!(labels_respected(&after.map, &rules));
        assert!(
            moved(&before.map, &after.map)
                .iter()
                .all(|(_, from, _)| *from == ws[2])
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Labels are never violated, every partition that is not parked is placed once, and a
        /// worker joining a label's pool moves at most about the minimum within that pool.
        #[test]
        fn labels_hold_and_joins_move_little_within_a_pool(
            gpu in 1usize..5,
            cpu in 1usize..5,
            n in 30usize..300,
            shared in proptest::bool::ANY,
            capacity in 1u32..4,
        ) {
            let s = WeightedConsistentHash::default();
            let (mut profiles, ws) = fleet(gpu, cpu);
            profiles[0].1 = profiles[0].1.clone().with_capacity(Capacity::new(f64::from(capacity)).unwrap());
            let policy = if shared { UnlabelledPolicy::Shared } else { UnlabelledPolicy::Dedicated };
            let ps = mixed(n);
            let rules = rules_of(&profiles).with_unlabelled_policy(policy);
            let none = Intents::default();
            let before = super::place(&s, &ws, &ps, &AssignmentMap::new(), &none, &rules, false).unwrap();
            before.map.verify(&ws, &ps).unwrap();
            proptest::prop_assert!(labels_respected(&before.map, &rules));
            // One more gpu worker joins.
            let mut joined = profiles.clone();
            let newcomer = WorkerId::new(format!("gpu{gpu}"));
            joined.push((newcomer.clone(), WorkerProfile::new().with_label("gpu").unwrap()));
            let ws2 = sorted(&joined);
            let rules2 = rules_of(&joined).with_unlabelled_policy(policy);
            let after = super::place(&s, &ws2, &ps, &before.map, &none, &rules2, false).unwrap();
            after.map.verify(&ws2, &ps).unwrap();
            proptest::prop_assert!(labels_respected(&after.map, &rules2));
            // Within the gpu pool (dedicated: only gpu partitions there), the moved weight is
            // at most 1.1 × the newcomer's share plus one partition.
            if !shared {
                let pool_weight: u64 = ps.iter().filter(|p| p.label().is_some()).map(Partition::effective_weight).sum();
                let units: u64 = u64::from(capacity) + gpu as u64;
                let minimum = pool_weight as f64 / units as f64;
                let moved: u64 = moved(&before.map, &after.map)
                    .iter()
                    .map(|_| 10u64)
                    .sum();
                proptest::prop_assert!(
                    moved as f64 <= 1.1 * minimum + 10.0,
                    "moved {} > 1.1 × {}", moved, minimum
                );
            }
        }
    }

    #[test]
    fn pacing_never_defers_a_move_off_a_worker_the_labels_no_longer_allow() {
        let s = WeightedConsistentHash::default();
        let (profiles, ws) = fleet(2, 2);
        let ps = mixed(90);
        let none = Intents::default();
        // Spilled onto the cpu workers while no gpu worker was there.
        let cpu: Vec<WorkerId> = ws
            .iter()
            .filter(|w| w.as_str().starts_with("cpu"))
            .cloned()
            .collect();
        let spilled_rules = rules_of(&profiles[2..]).with_spilled(["gpu".to_owned()].into());
        let spilled = super::place(
            &s,
            &cpu,
            &ps,
            &AssignmentMap::new(),
            &none,
            &spilled_rules,
            false,
        )
        .unwrap();
        // The gpu workers are back: with a limit of one move per step, every gpu partition still
        // leaves the cpu workers in the first step (they may not keep them).
        let rules = rules_of(&profiles);
        let target = super::place(&s, &ws, &ps, &spilled.map, &none, &rules, false).unwrap();
        let permitted = Allowed::new(&ws, &none, &rules);
        let (step, _) = super::pace(&spilled.map, &target.map, StepBudget::Moves(1), &permitted);
        step.verify(&ws, &ps).unwrap();
        assert!(labels_respected(&step, &rules));
    }

    #[test]
    fn a_weight_budget_bounds_the_weight_each_step_moves() {
        let s = WeightedConsistentHash::default();
        let ps: Vec<Partition> = (0..600)
            .map(|i| Partition::new([format!("p{i}")], 1 + (i % 10)).unwrap())
            .collect();
        let total: u64 = ps.iter().map(Partition::effective_weight).sum();
        let none = Intents::default();
        let start = place(&s, &workers(3), &ps, &AssignmentMap::new(), &none, false).unwrap();
        let six = workers(6);
        let target = place(&s, &six, &ps, &start, &none, false).unwrap();
        let budget = crate::config::MovesPerStep::Fraction(0.1).budget(&ps);
        assert_eq!(budget, StepBudget::Weight(u128::from(total).div_ceil(10)));
        let rules = PlacementRules::default();
        let permitted = Allowed::new(&six, &none, &rules);
        let mut current = start;
        let mut steps = 0;
        loop {
            let (step, more) = super::pace(&current, &target, budget, &permitted);
            let before = current.owners();
            let moved: u128 = ps
                .iter()
                .filter(|p| {
                    before
                        .get(p.keys())
                        .is_some_and(|w| step.owner_of(p) != Some(*w))
                })
                .map(|p| u128::from(p.effective_weight()))
                .sum();
            assert!(moved <= budget.cap(), "step {steps} moved weight {moved}");
            steps += 1;
            current = step;
            if !more {
                break;
            }
        }
        assert_eq!(current, target);
        // Half the weight moves from 3 to 6 workers: at least 5 steps of a tenth.
        assert!(steps >= 5, "{steps}");
    }

    /// What placing a crashed worker's partitions costs at 1,000 workers × 100,000 partitions
    /// (the emergency publish's placement), beside a full assignment. A benchmark; prints
    /// JSON: `cargo test --release -p parti --lib placement_at_scale -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run it in release"]
    fn placement_at_scale() {
        let (ws, ps) = crate::partition::bench_fleet(1000, 100_000);
        let s = WeightedConsistentHash::default();
        let intents = Intents::default();
        let time = |f: &dyn Fn() -> AssignmentMap| {
            let started = std::time::Instant::now();
            let map = f();
            (started.elapsed().as_secs_f64() * 1e3, map)
        };
        let (full_ms, cold) =
            time(&|| place(&s, &ws, &ps, &AssignmentMap::new(), &intents, false).unwrap());
        let survivors = &ws[1..];
        let (orphans_ms, crashed) =
            time(&|| place(&s, survivors, &ps, &cold, &intents, true).unwrap());
        let (sticky_ms, _) = time(&|| place(&s, survivors, &ps, &cold, &intents, false).unwrap());
        assert!(crashed.partitions_of(&ws[0]).is_empty());
        println!(
            "{}",
            serde_json::json!({
                "workers": 1000,
                "partitions": 100_000,
                "fullMs": (full_ms * 10.0).round() / 10.0,
                "crashOrphansOnlyMs": (orphans_ms * 10.0).round() / 10.0,
                "crashFullMs": (sticky_ms * 10.0).round() / 10.0,
            })
        );
    }
}
