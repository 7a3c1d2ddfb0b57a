//! Worker capacity applied around any strategy: a worker of capacity `k` stands for `k` equal
//! shares ("virtual workers") in the strategy's input, and their partitions are its own.

use std::collections::{BTreeMap, HashMap};

use super::AssignmentStrategy;
use crate::assignment::AssignmentMap;
use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId};
use crate::profile::Capacity;

/// At most this many shares per worker on average (and at least [`MIN_SHARE_BUDGET`] in all):
/// capacities that would need more (`1.0` next to `1.01` needs 201 shares for two workers) are
/// rounded to coarser shares instead, so a strategy never sees more than a few times as many
/// workers as there are.
const SHARES_PER_WORKER: usize = 8;
const MIN_SHARE_BUDGET: usize = 256;

/// `inner`, with each worker weighted by its capacity (1.0 when not in `capacities`).
///
/// When all the workers have the same capacity, `inner` is called as it is: a cluster that
/// declares no capacities is placed exactly as without this wrapper.
#[derive(Debug)]
pub(crate) struct Scaled<'a> {
    pub(crate) inner: &'a dyn AssignmentStrategy,
    pub(crate) capacities: &'a BTreeMap<WorkerId, Capacity>,
}

impl AssignmentStrategy for Scaled<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn assign(
        &self,
        workers: &[WorkerId],
        partitions: &[Partition],
        previous: Option<&AssignmentMap>,
    ) -> Result<AssignmentMap> {
        let mut real = workers.to_vec();
        real.sort_unstable();
        real.dedup();
        let capacity = |w: &WorkerId| {
            self.capacities
                .get(w)
                .copied()
                .unwrap_or_default()
                .hundredths()
        };
        let hundredths: Vec<u32> = real.iter().map(capacity).collect();
        if hundredths.windows(2).all(|pair| pair[0] == pair[1]) {
            return self.inner.assign(workers, partitions, previous);
        }
        let units = shares(&hundredths);
        let mut virtuals = Vec::with_capacity(units.iter().sum::<u32>() as usize);
        let mut real_of: HashMap<WorkerId, usize> = HashMap::new();
        for (i, (w, &n)) in real.iter().zip(&units).enumerate() {
            for k in 0..n {
                let v = WorkerId::new(format!("{w}\u{0}{k}"));
                if real_of.insert(v.clone(), i).is_some() {
                    return Err(Error::Strategy(
                        format!("worker IDs {w:?} collide with the capacity shares of another")
                            .into(),
                    ));
                }
                virtuals.push(v);
            }
        }
        let split = previous.map(|map| split_previous(map, &real, &units));
        let inner = self.inner.assign(&virtuals, partitions, split.as_ref())?;
        let mut lists: Vec<Vec<Partition>> = vec![Vec::new(); real.len()];
        for (v, held) in inner.iter() {
            let Some(&i) = real_of.get(v) else {
                return Err(Error::Strategy(
                    format!("strategy {} returned unknown worker {v}", self.name()).into(),
                ));
            };
            lists[i].extend(held.iter().cloned());
        }
        let mut map = AssignmentMap::new();
        for (w, list) in real.into_iter().zip(lists) {
            map.set(w, list);
        }
        map.normalize();
        Ok(map)
    }
}

/// The number of shares of each capacity (in hundredths): exact (each divided by their
/// greatest common divisor) when that stays within the budget, otherwise rounded to shares of
/// `total / budget` (at least one each).
fn shares(hundredths: &[u32]) -> Vec<u32> {
    let g = hundredths.iter().copied().fold(0, gcd).max(1);
    let exact: Vec<u32> = hundredths.iter().map(|&c| c / g).collect();
    let budget = (SHARES_PER_WORKER * hundredths.len()).max(MIN_SHARE_BUDGET);
    let total: u64 = exact.iter().map(|&u| u64::from(u)).sum();
    if total <= budget as u64 {
        return exact;
    }
    let sum: u64 = hundredths.iter().map(|&c| u64::from(c)).sum();
    let share = sum.div_ceil(budget as u64).max(1);
    hundredths
        .iter()
        .map(|&c| {
            let n = (u64::from(c) + share / 2) / share;
            u32::try_from(n).unwrap_or(u32::MAX).max(1)
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `previous` over the shares: each worker's partitions (heaviest first) dealt to its
/// least-loaded share, so that a sticky strategy finds every share about equally full and
/// keeps what each worker had.
fn split_previous(previous: &AssignmentMap, real: &[WorkerId], units: &[u32]) -> AssignmentMap {
    let mut split = AssignmentMap::new();
    for (w, &n) in real.iter().zip(units) {
        let held = previous.partitions_of(w);
        let mut order: Vec<&Partition> = held.iter().collect();
        order.sort_by(|a, b| {
            b.effective_weight()
                .cmp(&a.effective_weight())
                .then_with(|| a.keys().cmp(b.keys()))
        });
        let n = n.max(1) as usize;
        let mut loads = vec![0u128; n];
        let mut lists: Vec<Vec<Partition>> = vec![Vec::new(); n];
        for p in order {
            let k = (0..n).min_by_key(|&k| (loads[k], k)).unwrap_or(0);
            loads[k] += u128::from(p.effective_weight());
            lists[k].push(p.clone());
        }
        for (k, list) in lists.into_iter().enumerate() {
            split.set(WorkerId::new(format!("{w}\u{0}{k}")), list);
        }
    }
    split.normalize();
    split
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::strategy::{ConsistentHash, RoundRobin, WeightedConsistentHash};

    fn parts(n: usize) -> Vec<Partition> {
        (0..n)
            .map(|i| Partition::new([format!("p{i}")], 1 + (i as u64 % 3)).unwrap())
            .collect()
    }

    fn capacities(list: &[(&str, f64)]) -> BTreeMap<WorkerId, Capacity> {
        list.iter()
            .map(|(w, c)| (WorkerId::new(*w), Capacity::new(*c).unwrap()))
            .collect()
    }

    #[test]
    fn shares_are_exact_when_small_and_rounded_when_not() {
        assert_eq!(shares(&[200, 100, 100]), [2, 1, 1]);
        assert_eq!(shares(&[150, 100]), [3, 2]);
        // 10.0 and 10.01 exactly would be 1000 + 1001 shares: over the budget, rounded.
        let coarse = shares(&[1000, 1001]);
        assert!(
            coarse.iter().sum::<u32>() <= MIN_SHARE_BUDGET as u32,
            "{coarse:?}"
        );
        assert_eq!(coarse[0], coarse[1]);
    }

    #[test]
    fn equal_capacities_change_nothing() {
        let caps = capacities(&[("a", 3.0), ("b", 3.0)]);
        let workers = ["a", "b"].map(WorkerId::new);
        let ps = parts(50);
        let inner = WeightedConsistentHash::default();
        let scaled = Scaled {
            inner: &inner,
            capacities: &caps,
        };
        assert_eq!(
            scaled.assign(&workers, &ps, None).unwrap(),
            inner.assign(&workers, &ps, None).unwrap()
        );
    }

    #[test]
    fn every_strategy_gives_load_in_proportion_to_capacity() {
        let caps = capacities(&[("big", 2.0), ("a", 1.0), ("b", 1.0)]);
        let workers = ["big", "a", "b"].map(WorkerId::new);
        let ps = parts(3_000);
        let total: u64 = ps.iter().map(Partition::effective_weight).sum();
        let strategies: [(&dyn AssignmentStrategy, f64); 3] = [
            (&WeightedConsistentHash::default(), 0.05),
            (&ConsistentHash::default(), 0.35),
            (&RoundRobin, 0.05),
        ];
        for (inner, eps) in strategies {
            let scaled = Scaled {
                inner,
                capacities: &caps,
            };
            let map = scaled.assign(&workers, &ps, None).unwrap();
            map.verify(&workers, &ps).unwrap();
            let per_unit = total as f64 / 4.0;
            for (w, units) in [("big", 2.0), ("a", 1.0), ("b", 1.0)] {
                let load = map.load(&WorkerId::new(w)) as f64;
                assert!(
                    (load - units * per_unit).abs() <= eps * units * per_unit,
                    "{}: {w} holds {load}, expected {} ± {eps}",
                    inner.name(),
                    units * per_unit
                );
            }
        }
    }

    #[test]
    fn a_sticky_strategy_keeps_everything_when_nothing_changes() {
        let caps = capacities(&[("big", 2.5), ("a", 1.0), ("b", 0.5)]);
        let workers = ["big", "a", "b"].map(WorkerId::new);
        let ps = parts(1_000);
        let inner = WeightedConsistentHash::default();
        let scaled = Scaled {
            inner: &inner,
            capacities: &caps,
        };
        let first = scaled.assign(&workers, &ps, None).unwrap();
        assert_eq!(scaled.assign(&workers, &ps, Some(&first)).unwrap(), first);
        // Raising one capacity moves about the share it gains, not everything.
        let raised = capacities(&[("big", 2.5), ("a", 2.0), ("b", 0.5)]);
        let scaled = Scaled {
            inner: &inner,
            capacities: &raised,
        };
        let after = scaled.assign(&workers, &ps, Some(&first)).unwrap();
        let before = first.owners();
        let total: u64 = ps.iter().map(Partition::effective_weight).sum();
        let moved: u64 = ps
            .iter()
            .filter(|p| before.get(p.keys()) != after.owners().get(p.keys()))
            .map(Partition::effective_weight)
            .sum();
        // "a" goes from 1/4 to 2/5 of the load: 15 % of the weight is the most that must move
        // (less within the strategy's sticky floor, which is 1 − 2ε of the mean at worst).
        let minimum = 0.15 * total as f64;
        assert!(moved as f64 <= minimum * 1.1, "moved {moved} of {total}");
        let a = after.load(&WorkerId::new("a")) as f64;
        assert!(a >= 0.9 * 0.4 * total as f64, "a holds {a} of {total}");
    }
}
