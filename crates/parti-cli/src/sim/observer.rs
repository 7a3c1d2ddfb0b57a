//! Follows the assignment bucket from outside the workers: every publish (version, term,
//! reason, partitions moved and the minimum that had to move), every committed version for the
//! ownership checker (a [`VersionRecord`] with source `cluster`: the checker judges whether
//! versions went back), and what the checker does not judge about each committed map.
//!
//! Checked at every commit of the `cluster` record seen live: the term never goes down, every
//! worker value the record names is there at the committed revision, and the map holds exactly
//! `partitionCount` partitions. After a re-snapshot (the watch reconnected, e.g. across a NATS
//! restart) only what a snapshot can prove is checked: the term, and the map when the values
//! are the committed ones (a snapshot may catch a publish half-written). Publishes that
//! happened while the watch was reconnecting are counted as `unobserved`. Who *held* what is
//! the checker's to judge, from the workers' own records, not from the published map.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parti::ownership::now_ns;
use parti::records::{CLUSTER_KEY, ClusterRecord, Slot, WorkerRecord, worker_key};
use parti::store::{Bucket, Entry, WatchEvent, codec};
use parti_testkit::checker::VersionRecord;

use super::shared::{Latest, Publish, Shared};

/// Worker ID → the IDs of its partitions.
pub(crate) type Map = BTreeMap<String, BTreeSet<String>>;

/// Partitions present in both maps whose owner changed.
pub(crate) fn moved(before: &Map, after: &Map) -> u64 {
    let owners = |map: &Map| -> BTreeMap<String, String> {
        map.iter()
            .flat_map(|(w, ps)| ps.iter().map(move |p| (p.clone(), w.clone())))
            .collect()
    };
    let (b, a) = (owners(before), owners(after));
    let count = b
        .iter()
        .filter(|(p, w)| a.get(*p).is_some_and(|w2| w2 != *w))
        .count();
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// The fewest moves that reach `after`'s number of partitions per worker: every partition of a
/// worker that left, and from each remaining worker as many as its count went down by.
/// Partitions that are in only one of the maps do not count.
pub(crate) fn minimum_moves(before: &Map, after: &Map) -> u64 {
    let present: BTreeSet<&String> = after.values().flatten().collect();
    let mut minimum = 0;
    for (worker, parts) in before {
        let kept = parts.iter().filter(|p| present.contains(p)).count();
        minimum += match after.get(worker) {
            None => kept,
            Some(now) => kept.saturating_sub(now.len()),
        };
    }
    u64::try_from(minimum).unwrap_or(u64::MAX)
}

/// Follows the bucket until the task is dropped.
pub(crate) async fn observe(bucket: Arc<dyn Bucket>, shared: Arc<Shared>) {
    let mut view = View::default();
    loop {
        let mut watch = match bucket.watch(">").await {
            Ok(watch) => watch,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut staged: Option<BTreeMap<String, Entry>> = None;
        while let Some(event) = watch.next().await {
            let Ok(event) = event else { continue };
            match event {
                WatchEvent::Init => staged = Some(BTreeMap::new()),
                WatchEvent::InitApply(entry) => {
                    if let Some(staged) = staged.as_mut() {
                        staged.insert(entry.key.clone(), entry);
                    }
                }
                WatchEvent::InitDone => {
                    if let Some(keys) = staged.take() {
                        view.keys = keys;
                        view.commit(&shared, false);
                    }
                }
                WatchEvent::Put(entry) => {
                    let is_cluster = entry.key == CLUSTER_KEY;
                    view.keys.insert(entry.key.clone(), entry);
                    if is_cluster {
                        view.commit(&shared, true);
                    }
                }
                WatchEvent::Deleted { key, .. } | WatchEvent::Expired { key, .. } => {
                    if key == CLUSTER_KEY {
                        shared.violate("the cluster record was deleted");
                    }
                    view.keys.remove(&key);
                }
                // An event this observer does not know changes no key it tracks.
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct View {
    keys: BTreeMap<String, Entry>,
    /// Version and term of the last commit seen.
    last: Option<(u64, u64)>,
    /// The last map seen whole.
    map: Option<Map>,
}

impl View {
    /// A `cluster` record was written (`live`) or found in a snapshot.
    fn commit(&mut self, shared: &Shared, live: bool) {
        let Some(entry) = self.keys.get(CLUSTER_KEY) else {
            return;
        };
        let record: ClusterRecord = match codec::decode("assignment", CLUSTER_KEY, &entry.value) {
            Ok(record) => record,
            Err(e) => return shared.violate(format!("undecodable cluster record: {e}")),
        };
        shared.version(VersionRecord {
            at_ns: now_ns(),
            source: "cluster".into(),
            version: record.version,
        });
        if let Some((_, term)) = self.last
            && record.term < term
        {
            shared.violate(format!(
                "v{} was committed by term {} after a commit by term {term}",
                record.version, record.term
            ));
        }
        shared.set_latest(Latest {
            version: record.version,
            term: record.term,
            phase: phase_name(&record),
            reason: record.reason.clone(),
        });
        let previous = self.last.map_or(0, |(v, _)| v);
        self.last = Some((record.version.max(previous), record.term));
        if record.version <= previous || record.version == 0 {
            return;
        }
        if record.version > previous + 1 && previous > 0 {
            shared.unobserved(record.version - previous - 1);
        }
        let map = match self.map_of(&record) {
            Ok(map) => map,
            Err(problem) => {
                if live {
                    shared.violate(format!("v{}: {problem}", record.version));
                }
                self.map = None;
                shared.publish(publish(&record, None, None));
                return;
            }
        };
        if let Err(problem) = check_size(&map, record.partition_count) {
            shared.violate(format!("v{}: {problem}", record.version));
        }
        shared.publish(publish(&record, self.map.as_ref(), Some(&map)));
        self.map = Some(map);
    }

    /// The committed map, or why it cannot be read.
    fn map_of(&self, record: &ClusterRecord) -> Result<Map, String> {
        let mut map = Map::new();
        for (worker, revision) in &record.workers {
            // The committed value is in whichever of the worker's two slots holds the revision.
            let committed = [Slot::A, Slot::B]
                .map(|slot| worker_key(worker, slot))
                .into_iter()
                .find_map(|key| {
                    self.keys
                        .get(&key)
                        .filter(|e| e.revision == *revision)
                        .map(|e| (key, e))
                });
            let Some((key, entry)) = committed else {
                return Err(format!(
                    "commits {worker}@{revision} but neither slot holds that revision"
                ));
            };
            let value: WorkerRecord = codec::decode("assignment", &key, &entry.value)
                .map_err(|e| format!("undecodable committed value {key}: {e}"))?;
            map.insert(
                worker.as_str().to_owned(),
                value.partitions.iter().map(parti::Partition::id).collect(),
            );
        }
        Ok(map)
    }
}

/// As many distinct partitions in the map as the record says.
fn check_size(map: &Map, partition_count: usize) -> Result<(), String> {
    let distinct = map.values().flatten().collect::<BTreeSet<_>>().len();
    if distinct != partition_count {
        return Err(format!(
            "the map holds {distinct} partitions, the record says {partition_count}"
        ));
    }
    Ok(())
}

fn publish(record: &ClusterRecord, before: Option<&Map>, after: Option<&Map>) -> Publish {
    let (moved, minimum) = match (before, after) {
        (Some(b), Some(a)) => (Some(moved(b, a)), Some(minimum_moves(b, a))),
        _ => (None, None),
    };
    Publish {
        version: record.version,
        term: record.term,
        reason: record.reason.clone(),
        at_ms: 0,
        workers: record.workers.len(),
        moved,
        minimum,
    }
}

fn phase_name(record: &ClusterRecord) -> String {
    match record.phase {
        parti::ClusterPhase::Stable => "stable".into(),
        parti::ClusterPhase::Scaling { reason, .. } => format!("scaling ({reason})"),
        parti::ClusterPhase::Rebalancing => "rebalancing".into(),
        parti::ClusterPhase::Emergency => "emergency".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(spec: &[(&str, &[&str])]) -> Map {
        spec.iter()
            .map(|(w, ps)| {
                (
                    (*w).to_owned(),
                    ps.iter().map(|p| (*p).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_crash_must_move_exactly_the_victims_partitions() {
        let before = map(&[("a", &["1", "2"]), ("b", &["3", "4"]), ("c", &["5", "6"])]);
        let after = map(&[("a", &["1", "2", "5"]), ("b", &["3", "4", "6"])]);
        assert_eq!(moved(&before, &after), 2);
        assert_eq!(minimum_moves(&before, &after), 2);
    }

    #[test]
    fn a_join_must_move_what_the_others_give_up_and_churn_is_counted() {
        let before = map(&[("a", &["1", "2", "3"]), ("b", &["4", "5", "6"])]);
        let balanced = map(&[("a", &["1", "2"]), ("b", &["4", "5"]), ("c", &["3", "6"])]);
        assert_eq!(
            (moved(&before, &balanced), minimum_moves(&before, &balanced)),
            (2, 2)
        );
        // Same loads, but a and b also swapped a partition: two moves more than needed.
        let churn = map(&[("a", &["1", "4"]), ("b", &["2", "5"]), ("c", &["3", "6"])]);
        assert_eq!(
            (moved(&before, &churn), minimum_moves(&before, &churn)),
            (4, 2)
        );
    }

    #[test]
    fn partitions_added_or_removed_do_not_count_as_moves() {
        let before = map(&[("a", &["1", "2"]), ("b", &["3"])]);
        let after = map(&[("a", &["1"]), ("b", &["3", "9"])]);
        assert_eq!(
            (moved(&before, &after), minimum_moves(&before, &after)),
            (0, 0)
        );
    }

    #[test]
    fn a_short_map_is_caught() {
        let ok = map(&[("a", &["1"]), ("b", &["2"])]);
        assert!(check_size(&ok, 2).is_ok());
        assert!(
            check_size(&ok, 3)
                .unwrap_err()
                .contains("holds 2 partitions")
        );
        let twice = map(&[("a", &["1"]), ("b", &["1"])]);
        assert!(
            check_size(&twice, 2)
                .unwrap_err()
                .contains("holds 1 partitions")
        );
    }
}
