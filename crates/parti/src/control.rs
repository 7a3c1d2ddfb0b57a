//! Operator control over placement: drain a worker, pin a partition, freeze rebalancing.
//!
//! The intents live in the assignment bucket (key `intents`) as one [`Intents`] record,
//! edited with revision checks, so they survive leader changes and two operators never undo
//! each other's edit. The leader watches the key and applies them *around* the strategy on
//! every publish, whichever strategy is configured:
//!
//! - **drain**: a drained live worker gets no partitions; the others take its partitions
//!   through the normal hand-off (released first, then acquired), placed by the strategy with
//!   the previous map as its starting point, so nothing else moves. It stays empty until
//!   undrained; a drained worker that restarts stays drained. Draining every live worker is
//!   ignored (the partitions must go somewhere).
//! - **pin**: a pinned partition goes to its worker whenever that worker is live and not
//!   drained; otherwise the strategy places it as usual.
//! - **freeze** (maintenance mode): nothing that has a live owner moves — no scale-up, no
//!   rebalance for a list change, no drain or pin. Crash recovery still happens: partitions
//!   of crashed or departed workers, and new ones, are placed (on workers that are not
//!   drained, unless every survivor is; a pinned one on its pin).
//!
//! An edit is published with reason `operator` once `minRebalanceInterval` allows. A publish
//! that could not honour the intents (a crash recovery moves only orphans) is followed by one
//! that does.
//!
//! ```no_run
//! use parti::{Config, WorkerId, control::Control};
//! # async fn demo(js: async_nats::jetstream::Context) -> parti::Result<()> {
//! let control = Control::open(js, &Config::default()).await?;
//! control.drain(WorkerId::new("worker-3")).await?;   // before maintenance of its node
//! control.pin("tenant-a", WorkerId::new("worker-1")).await?;
//! let intents = control.read().await?;
//! assert!(intents.drained.contains(&WorkerId::new("worker-3")));
//! control.undrain(&WorkerId::new("worker-3")).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use backon::Retryable as _;

#[cfg(feature = "tools")]
pub use crate::records::INTENTS_KEY;
#[cfg(not(feature = "tools"))]
use crate::records::INTENTS_KEY;
pub use crate::records::Intents;

use crate::assignment::AssignmentMap;
use crate::config::{Config, MovesPerStep};
use crate::error::{Error, Result, StoreError};
use crate::partition::{Partition, WorkerId, check_unique};
use crate::profile::PlacementRules;
use crate::store::{Bucket, Store, codec, conflict_backoff, is_conflict};
use crate::strategy::AssignmentStrategy;

/// Reads and edits the [`Intents`] of one cluster.
#[derive(Debug, Clone)]
pub struct Control {
    bucket: Arc<dyn Bucket>,
}

impl Control {
    /// The control of the cluster `config` describes (its assignment bucket), over NATS.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the bucket cannot be opened.
    #[cfg(feature = "nats")]
    pub async fn open(js: async_nats::jetstream::Context, config: &Config) -> Result<Self> {
        Self::open_in(&crate::store::NatsStore::new(js), config).await
    }

    /// The control of the cluster `config` describes, in `store`.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the bucket cannot be opened.
    pub async fn open_in(store: &dyn Store, config: &Config) -> Result<Self> {
        let [.., assignment] = config.bucket_specs();
        Ok(Self::new(store.bucket(&assignment).await?))
    }

    /// The control over an assignment bucket already open.
    pub fn new(bucket: Arc<dyn Bucket>) -> Self {
        Self { bucket }
    }

    /// The current intents (none when the key is missing).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the key holds something else; [`Error::Store`] when the store
    /// fails.
    pub async fn read(&self) -> Result<Intents> {
        Ok(crate::records::read_intents(&*self.bucket)
            .await?
            .map(|(i, _)| i)
            .unwrap_or_default())
    }

    /// Drains `worker`: it gets no partitions while drained.
    ///
    /// # Errors
    ///
    /// As [`modify`](Self::modify).
    pub async fn drain(&self, worker: WorkerId) -> Result<Intents> {
        self.modify(|i| {
            i.drained.insert(worker.clone());
            Ok(())
        })
        .await
    }

    /// Ends the drain of `worker` (nothing happens when it was not drained).
    ///
    /// # Errors
    ///
    /// As [`modify`](Self::modify).
    pub async fn undrain(&self, worker: &WorkerId) -> Result<Intents> {
        self.modify(|i| {
            i.drained.remove(worker);
            Ok(())
        })
        .await
    }

    /// Pins the partition with this [`subject_key`](Partition::subject_key) (keys joined
    /// with `.`) to `worker`, replacing an earlier pin of it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPartition`] for a key no partition can have; otherwise as
    /// [`modify`](Self::modify).
    pub async fn pin(&self, subject_key: &str, worker: WorkerId) -> Result<Intents> {
        Partition::new(subject_key.split('.'), 0)?;
        self.modify(|i| {
            i.pinned.insert(subject_key.to_owned(), worker.clone());
            Ok(())
        })
        .await
    }

    /// Removes the pin of a partition (nothing happens when it was not pinned).
    ///
    /// # Errors
    ///
    /// As [`modify`](Self::modify).
    pub async fn unpin(&self, subject_key: &str) -> Result<Intents> {
        self.modify(|i| {
            i.pinned.remove(subject_key);
            Ok(())
        })
        .await
    }

    /// Freezes (`true`) or unfreezes placement; see the [module docs](self).
    ///
    /// # Errors
    ///
    /// As [`modify`](Self::modify).
    pub async fn set_frozen(&self, frozen: bool) -> Result<Intents> {
        self.modify(|i| {
            i.frozen = frozen;
            Ok(())
        })
        .await
    }

    /// Edits the intents with `edit`, revision-checked and retried from a fresh read when
    /// another editor got there first (`edit` may run several times). Returns what was
    /// written. A key holding garbage is replaced, as if it held no intents.
    ///
    /// # Errors
    ///
    /// The error `edit` returns (nothing is written); [`StoreError::Conflict`] when the key
    /// stays contended through every retry; [`Error::Store`] when the store fails.
    pub async fn modify<F>(&self, edit: F) -> Result<Intents>
    where
        F: Fn(&mut Intents) -> Result<()> + Send + Sync,
    {
        let attempt = || async {
            let (mut intents, revision) = match crate::records::read_intents(&*self.bucket).await {
                Ok(Some((intents, revision))) => (intents, Some(revision)),
                Ok(None) => (Intents::default(), None),
                Err(Error::Decode { .. }) => {
                    let revision = self.bucket.get(INTENTS_KEY).await?.map(|e| e.revision);
                    (Intents::default(), revision)
                }
                Err(e) => return Err(e),
            };
            edit(&mut intents)?;
            let value = codec::encode(&intents)?;
            let written = match revision {
                Some(revision) => self.bucket.update(INTENTS_KEY, value, revision).await,
                None => self.bucket.create(INTENTS_KEY, value).await,
            };
            match written {
                Ok(_) => Ok(intents),
                Err(StoreError::AlreadyExists { bucket, key }) => {
                    Err(Error::Store(StoreError::Conflict { bucket, key }))
                }
                Err(e) => Err(e.into()),
            }
        };
        attempt.retry(conflict_backoff()).when(is_conflict).await
    }
}

/// One partition a [`Preview`] moves (or places).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Move {
    /// The partition.
    pub partition: Partition,
    /// Its owner in the current map (`None`: a new partition). The owner may be a worker that
    /// is not in the preview's workers (gone, or removed by the hypothesis).
    pub from: Option<WorkerId>,
    /// Its owner in the previewed map.
    pub to: WorkerId,
}

/// What the leader would publish: see [`preview`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Preview {
    /// The map the leader would converge to.
    pub map: AssignmentMap,
    /// Every partition whose owner changes (or that gets its first owner), in key order.
    pub moves: Vec<Move>,
    /// Publishes it takes with `maxMovesPerStep`: moves between two workers of the preview
    /// are paced, the others (new partitions, those of gone workers) go in the first step.
    /// 0 when nothing moves.
    pub steps: usize,
    /// Label → how many of its partitions would be parked (no worker may receive them, see
    /// [`profile`](crate::profile)); they are in no one's list.
    pub parked: std::collections::BTreeMap<String, usize>,
}

/// What the leader would publish over `workers` for `partitions`, starting from `current` (the
/// committed map) under `intents` and `rules` (capacity and labels), with `strategy` — the placement the leader itself makes for
/// a rebalance (not a crash recovery, which moves only orphans), so that the same inputs give
/// exactly the same moves. Nothing is written. `parti plan` is built on it.
///
/// # Errors
///
/// [`Error::InvalidPartition`] for a duplicate; the strategy's error (no workers, …); an
/// [`Error::Strategy`] when the strategy returns a broken map.
pub fn preview(
    strategy: &dyn AssignmentStrategy,
    workers: &[WorkerId],
    partitions: &[Partition],
    current: &AssignmentMap,
    intents: &Intents,
    rules: &PlacementRules,
    max_moves_per_step: Option<MovesPerStep>,
) -> Result<Preview> {
    check_unique(partitions)?;
    let mut workers = workers.to_vec();
    workers.sort();
    workers.dedup();
    // As the leader: the partition list sorted, the committed map as the starting point.
    let mut partitions = partitions.to_vec();
    partitions.sort();
    let placed = crate::controller::placement::place(
        strategy,
        &workers,
        &partitions,
        current,
        intents,
        rules,
        false,
    )?;
    placed.map.verify(&workers, &placed.placed(&partitions))?;
    let (map, parked) = (placed.map, placed.parked);
    let owners = current.owners();
    let mut moves: Vec<Move> = map
        .iter()
        .flat_map(|(to, held)| {
            let owners = &owners;
            held.iter().filter_map(move |p| {
                let from = owners.get(p.keys()).map(|w| (*w).clone());
                (from.as_ref() != Some(to)).then(|| Move {
                    partition: p.clone(),
                    from,
                    to: to.clone(),
                })
            })
        })
        .collect();
    moves.sort_by(|a, b| a.partition.cmp(&b.partition));
    let paced: Vec<&Move> = moves
        .iter()
        .filter(|m| m.from.as_ref().is_some_and(|f| map.contains_worker(f)))
        .collect();
    let steps = match (moves.is_empty(), max_moves_per_step) {
        (true, _) => 0,
        (false, None) => 1,
        (false, Some(limit)) => {
            let budget = limit.budget(&partitions);
            let cost: u128 = paced.iter().map(|m| budget.cost(&m.partition)).sum();
            usize::try_from(cost.div_ceil(budget.cap().max(1)))
                .unwrap_or(usize::MAX)
                .max(1)
        }
    };
    Ok(Preview {
        map,
        moves,
        steps,
        parked,
    })
}

#[cfg(feature = "tools")]
pub use crate::controller::history::move_reason;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::controller::history::history_entry;
    use crate::strategy::WeightedConsistentHash;

    #[test]
    fn a_history_entry_names_every_move_and_its_reason() {
        let w = |i: u32| WorkerId::new(format!("w{i}"));
        let p = |k: &str| Partition::new([k], 1).unwrap();
        let mut before = AssignmentMap::with_workers(&[w(0), w(1), w(2)]);
        before.push(&w(0), p("a"));
        before.push(&w(1), p("b"));
        before.push(&w(2), p("c"));
        before.push(&w(2), p("d"));
        // w2 crashed (gone), w3 joined, e is new, w1 is drained.
        let mut after = AssignmentMap::with_workers(&[w(0), w(1), w(3)]);
        after.push(&w(0), p("a"));
        after.push(&w(3), p("b"));
        after.push(&w(0), p("c"));
        after.push(&w(3), p("d"));
        after.push(&w(0), p("e"));
        let mut intents = Intents::default();
        intents.drained.insert(w(1));
        let entry = history_entry(&before, &after, &intents, (9, 2, 1_000, "emergency"));
        let whys: Vec<(&str, &str)> = entry
            .moves
            .iter()
            .map(|m| (m.partition.as_str(), m.why.as_str()))
            .collect();
        assert_eq!(
            whys,
            [
                ("b", "drain of w1"),
                ("c", "crash of w2"),
                ("d", "crash of w2"),
                ("e", "new partition"),
            ]
        );
        assert_eq!((entry.version, entry.moved, entry.workers), (9, 4, 3));
        let left = history_entry(
            &before,
            &after,
            &Intents::default(),
            (9, 2, 0, "scale_down"),
        );
        assert_eq!(left.moves[0].why, "w3 joined");
        assert_eq!(left.moves[1].why, "w2 left");
    }

    #[test]
    fn a_preview_lists_every_move_and_counts_the_paced_steps() {
        let s = WeightedConsistentHash::default();
        let workers: Vec<WorkerId> = (0..4).map(|i| WorkerId::new(format!("w{i}"))).collect();
        let parts: Vec<Partition> = (0..400)
            .map(|i| Partition::new([format!("p{i}")], 10).unwrap())
            .collect();
        let none = Intents::default();
        let current = preview(
            &s,
            &workers,
            &parts,
            &AssignmentMap::new(),
            &none,
            &PlacementRules::default(),
            None,
        )
        .unwrap()
        .map;
        // Same inputs: nothing moves, no step.
        let same = preview(
            &s,
            &workers,
            &parts,
            &current,
            &none,
            &PlacementRules::default(),
            None,
        )
        .unwrap();
        assert_eq!((same.moves.len(), same.steps), (0, 0));
        // A fifth worker and ten new partitions: the moves into it are paced, the new
        // partitions are not.
        let mut five = workers.clone();
        five.push(WorkerId::new("w4"));
        let mut more = parts.clone();
        more.extend((400..410).map(|i| Partition::new([format!("p{i}")], 10).unwrap()));
        let limit = Some(MovesPerStep::Count(20));
        let p = preview(
            &s,
            &five,
            &more,
            &current,
            &none,
            &PlacementRules::default(),
            limit,
        )
        .unwrap();
        let new = p.moves.iter().filter(|m| m.from.is_none()).count();
        assert_eq!(new, 10);
        let paced = p.moves.len() - new;
        assert!(paced >= 70, "{paced}");
        assert_eq!(p.steps, paced.div_ceil(20));
        assert!(p.moves.windows(2).all(|w| w[0].partition < w[1].partition));
        for m in &p.moves {
            assert_eq!(p.map.owner_of(&m.partition), Some(&m.to));
            assert_ne!(current.owner_of(&m.partition), Some(&m.to));
        }
    }
}
