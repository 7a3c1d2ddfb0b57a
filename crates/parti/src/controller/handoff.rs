//! Release-then-acquire (SPEC §13): which moved partitions a gainer must not hold yet.
//!
//! A commit gives each worker its partitions and, for some of them, the workers that may still
//! hold them ([`WorkerRecord::pending`]). This module decides those sets, purely:
//!
//! - a partition that moves from a worker that held it becomes pending on the gainer, waiting
//!   for the loser, at the version of the move;
//! - a partition already pending keeps waiting for the same workers, wherever it goes next,
//!   and for the worker that lists it until that worker applied the record that made it
//!   pending (it may have held it under an earlier commit);
//! - a worker stops being waited for once its heartbeat says it released that version
//!   (`released ≥ version`), or once it is no longer a live member — the membership watcher
//!   drops a member only on proof that it holds nothing (key expired, or deleted after its own
//!   `Shutdown` heartbeat), and a new leader counts a mapped worker missing from its first
//!   snapshot as holding for one more heartbeat TTL ([`Members::unproven`]).
//!
//! A gainer holds a pending partition only after a later commit lists it with nobody left to
//! wait for, so at any instant at most one worker holds a partition: the previous holder
//! released (or provably stopped) before the commit that lets the next one start.
//!
//! [`WorkerRecord::pending`]: crate::records::WorkerRecord::pending

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::compat::{self, Standing};
use crate::assignment::AssignmentMap;
use crate::heartbeat::protocol::Refusal;
use crate::partition::WorkerId;
use crate::records::{Lineage, WorkerRecord};

/// Partition ID → the workers that may still hold it → the version at which they lost it.
pub(crate) type Pending = BTreeMap<String, BTreeMap<WorkerId, u64>>;

/// What the leader knows of the live workers, from their heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Members {
    /// Live member → the highest commit version it finished releasing for.
    pub(crate) released: BTreeMap<WorkerId, u64>,
    /// Live member → its current lineage.
    pub(crate) lineages: BTreeMap<WorkerId, Lineage>,
    /// The highest version any member applied: a floor for the next version, so versions never
    /// go back even when the `cluster` record is lost or garbage.
    pub(crate) floor: u64,
    /// Workers that are not live members but may still hold anything they had: mapped
    /// workers a new leader did not find in its first heartbeat snapshot (a missing key is
    /// no proof: the bucket may have been deleted and recreated, or the value overwritten),
    /// until one heartbeat TTL after the takeover.
    pub(crate) unproven: BTreeSet<WorkerId>,
    /// Live members that are not relied on fully (see [`compat`]): their protocol is not
    /// understood, or they lack a capability. Those not listed are [`compat::FULL`].
    pub(crate) standing: BTreeMap<WorkerId, Standing>,
    /// Live member → the capacity and labels it announces.
    pub(crate) profiles: BTreeMap<WorkerId, crate::WorkerProfile>,
}

impl Members {
    /// What the leader may rely on from `worker`.
    pub(crate) fn standing(&self, worker: &WorkerId) -> Standing {
        self.standing.get(worker).copied().unwrap_or(compat::FULL)
    }

    /// The live members kept out of the map, and why.
    pub(crate) fn refused(&self) -> impl Iterator<Item = (&WorkerId, Refusal)> {
        self.standing.iter().filter_map(|(w, s)| match s {
            Standing::Refused(refusal) => Some((w, *refusal)),
            Standing::Trusted { .. } => None,
        })
    }

    /// Whether `worker` may still hold a partition it lost at `lost_at`.
    fn may_hold(&self, worker: &WorkerId, lost_at: u64) -> bool {
        self.unproven.contains(worker) || self.released.get(worker).is_some_and(|r| *r < lost_at)
    }

    /// `worker` holds nothing it lost up to `version`: its lease was revoked and has provably
    /// run out (an expulsion), whatever its heartbeat still says.
    pub(crate) fn fenced(&mut self, worker: &WorkerId, version: u64) {
        if let Some(released) = self.released.get_mut(worker) {
            *released = (*released).max(version);
        }
    }
}

/// The live losers that keep some gainer waiting, each with the highest version it has yet to
/// release: what a leader expels once they have kept it waiting for `handoffTimeout`.
pub(crate) fn waited_on<'a>(
    records: impl IntoIterator<Item = (&'a WorkerId, &'a WorkerRecord)>,
    members: &Members,
) -> BTreeMap<WorkerId, u64> {
    let mut out: BTreeMap<WorkerId, u64> = BTreeMap::new();
    let waits = records
        .into_iter()
        .flat_map(|(_, r)| r.pending.values())
        .flatten();
    for (worker, lost_at) in waits {
        // An unproven absentee has no heartbeat to revoke: its doubt runs out by itself.
        if members.may_hold(worker, *lost_at) && !members.unproven.contains(worker) {
            let highest = out.entry(worker.clone()).or_default();
            *highest = (*highest).max(*lost_at);
        }
    }
    out
}

/// The pending sets of `next`, published as `version` over the committed `records` (each
/// worker's committed record), given what the members reported. `unknown` are workers whose
/// holdings cannot be read (their committed value, or the commit itself, is garbage or gone):
/// every partition waits for them, wherever it goes, until they release this version.
pub(crate) fn plan<'a>(
    records: impl IntoIterator<Item = (&'a WorkerId, &'a WorkerRecord)>,
    next: &AssignmentMap,
    version: u64,
    members: &Members,
    unknown: &BTreeSet<WorkerId>,
) -> BTreeMap<WorkerId, Pending> {
    // Which committed records list each partition. A verified map lists each once, but a
    // commit the leader did not write (garbage, another version's) may not: every record that
    // lists it is waited for, as if it held it. Keyed by the partition's keys, borrowed:
    // nothing is allocated for the partitions that stay put, which on a large map are nearly
    // all of them; the rare second listings go to a side table.
    let mut listed_by: HashMap<&[String], (&WorkerId, &WorkerRecord)> = HashMap::new();
    let mut listed_again: HashMap<&[String], Vec<(&WorkerId, &WorkerRecord)>> = HashMap::new();
    for (w, r) in records {
        for p in &r.partitions {
            match listed_by.entry(p.keys()) {
                Entry::Vacant(first) => {
                    first.insert((w, r));
                }
                Entry::Occupied(_) => listed_again.entry(p.keys()).or_default().push((w, r)),
            }
        }
    }
    next.iter()
        .map(|(worker, partitions)| {
            let may_hold = |w: &WorkerId, lost_at: u64| w != worker && members.may_hold(w, lost_at);
            // Every partition waits for the unknown holders, wherever it goes.
            let for_unknown: Vec<(&WorkerId, u64)> = unknown
                .iter()
                .filter(|w| may_hold(w, version))
                .map(|w| (w, version))
                .collect();
            let pending: Pending = partitions
                .iter()
                .filter_map(|p| {
                    let mut waits: BTreeMap<WorkerId, u64> = BTreeMap::new();
                    let listings = listed_by
                        .get(p.keys())
                        .into_iter()
                        .chain(listed_again.get(p.keys()).into_iter().flatten());
                    for (holder, record) in listings {
                        let earlier = (!record.pending.is_empty())
                            .then(|| record.pending.get(&p.id()))
                            .flatten();
                        match earlier {
                            // Still pending: it keeps waiting for whom it waited for. The lister
                            // too, until it applied the commit that made it pending: it may have
                            // held the partition under an earlier one (a partition that stays
                            // put waits for unknown holders as well), and lets go of it only then.
                            Some(earlier) => {
                                waits.extend(
                                    earlier
                                        .iter()
                                        .filter(|(w, v)| may_hold(w, **v))
                                        .map(|(w, v)| (w.clone(), *v)),
                                );
                                if may_hold(holder, record.version) {
                                    let lost_at = waits.entry((*holder).clone()).or_default();
                                    *lost_at = (*lost_at).max(record.version);
                                }
                            }
                            // Its holder held (or may hold) it: losing it now means waiting.
                            None if may_hold(holder, version) => {
                                waits.insert((*holder).clone(), version);
                            }
                            None => {}
                        }
                    }
                    waits.extend(for_unknown.iter().map(|(w, v)| ((*w).clone(), *v)));
                    (!waits.is_empty()).then(|| (p.id(), waits))
                })
                .collect();
            (worker.clone(), pending)
        })
        .collect()
}

/// Whether a mapped live worker has a lineage the commit does not name (it came back after a
/// lapse, or restarted) and may be named now.
///
/// A lapse of the same process is safe at once (a lapsed process holds nothing). A *new
/// process* under the same stable ID is not: the previous one (cut off while its ID expired and
/// was claimed again) may still hold the ID's partitions until its lease runs out, and it
/// cannot say when it released — its heartbeat key now belongs to the newcomer. `settled`
/// tells whether a worker's current lineage has been seen for a full heartbeat TTL, by which
/// time the previous process's lease has provably ended.
pub(crate) fn lineage_stale<'a>(
    records: impl IntoIterator<Item = (&'a WorkerId, &'a WorkerRecord)>,
    committed_lineages: &BTreeMap<WorkerId, Lineage>,
    members: &Members,
    settled: impl Fn(&WorkerId) -> bool,
) -> bool {
    records.into_iter().any(|(w, _)| {
        let Some(current) = members.lineages.get(w) else {
            return false;
        };
        match committed_lineages.get(w) {
            Some(named) if named == current => false,
            Some(named) if named.instance == current.instance => true,
            _ => settled(w),
        }
    })
}

/// How many pending entries a republish would resolve, and how many are pending in all.
pub(crate) fn resolvable<'a>(
    records: impl IntoIterator<Item = (&'a WorkerId, &'a WorkerRecord)>,
    members: &Members,
) -> (usize, usize) {
    let waits = records.into_iter().flat_map(|(_, r)| r.pending.values());
    let (mut ready, mut total) = (0, 0);
    for waiting_for in waits {
        total += 1;
        if waiting_for.iter().all(|(w, v)| !members.may_hold(w, *v)) {
            ready += 1;
        }
    }
    (ready, total)
}

/// The lineages a commit over `workers` names: those of the live members among them.
pub(crate) fn lineages<'a>(
    workers: impl IntoIterator<Item = &'a WorkerId>,
    members: &Members,
) -> BTreeMap<WorkerId, Lineage> {
    let workers: BTreeSet<&WorkerId> = workers.into_iter().collect();
    members
        .lineages
        .iter()
        .filter(|(w, _)| workers.contains(w))
        .map(|(w, l)| (w.clone(), l.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::Lifecycle;
    use crate::partition::Partition;

    /// Committed records, as the publisher keeps them.
    type Records = BTreeMap<WorkerId, WorkerRecord>;

    fn p(k: &str) -> Partition {
        Partition::new([k], 1).unwrap()
    }
    fn w(s: &str) -> WorkerId {
        WorkerId::new(s)
    }
    fn record(parts: &[&str], pending: Pending) -> WorkerRecord {
        WorkerRecord {
            version: 1,
            term: 1,
            lifecycle: Lifecycle::Running,
            partitions: parts.iter().map(|k| p(k)).collect(),
            pending,
        }
    }
    fn members(released: &[(&str, u64)]) -> Members {
        Members {
            unproven: BTreeSet::new(),
            released: released.iter().map(|(id, v)| (w(id), *v)).collect(),
            lineages: BTreeMap::new(),
            floor: 0,
            standing: BTreeMap::new(),
            profiles: BTreeMap::new(),
        }
    }
    fn map(entries: &[(&str, &[&str])]) -> AssignmentMap {
        let mut m = AssignmentMap::default();
        for (id, parts) in entries {
            m.set(w(id), parts.iter().map(|k| p(k)).collect());
        }
        m
    }

    #[test]
    fn a_move_from_a_live_holder_waits_for_it() {
        let records: Records = [(w("a"), record(&["x", "y"], Pending::new()))].into();
        let next = map(&[("a", &["x"]), ("b", &["y"])]);
        let plan = plan(
            &records,
            &next,
            5,
            &members(&[("a", 4), ("b", 4)]),
            &BTreeSet::new(),
        );
        assert!(plan[&w("a")].is_empty(), "a keeps x: nothing to wait for");
        assert_eq!(plan[&w("b")]["y"], [(w("a"), 5)].into());
    }

    #[test]
    fn a_partition_listed_by_two_committed_records_waits_for_every_lister() {
        // Not a map the leader writes (it verifies each), but a commit it did not write may
        // be anything: `a` lists x as held, `b` as pending on `a` at version 3, which `a` has
        // released. `a` may still hold x under the first listing: `c` waits for it.
        let pending_on_a: Pending = [("x".to_owned(), [(w("a"), 3)].into())].into();
        let records: Records = [
            (w("a"), record(&["x"], Pending::new())),
            (w("b"), record(&["x"], pending_on_a)),
        ]
        .into();
        let next = map(&[("a", &[]), ("b", &[]), ("c", &["x"])]);
        let plan = plan(
            &records,
            &next,
            5,
            &members(&[("a", 3), ("b", 4), ("c", 4)]),
            &BTreeSet::new(),
        );
        assert_eq!(plan[&w("c")]["x"], [(w("a"), 5)].into());
    }

    #[test]
    fn a_move_from_a_departed_holder_or_a_new_partition_is_immediate() {
        let records: Records = [(w("gone"), record(&["x"], Pending::new()))].into();
        let next = map(&[("b", &["x", "fresh"])]);
        let plan = plan(&records, &next, 5, &members(&[("b", 4)]), &BTreeSet::new());
        assert!(plan[&w("b")].is_empty());
    }

    #[test]
    fn an_unproven_absentee_is_waited_for_until_its_doubt_runs_out() {
        // A new leader found no heartbeat for "gone": it may still hold x.
        let records: Records = [(w("gone"), record(&["x"], Pending::new()))].into();
        let next = map(&[("b", &["x"])]);
        let mut m = members(&[("b", 4)]);
        m.unproven.insert(w("gone"));
        let planned = plan(&records, &next, 5, &m, &BTreeSet::new());
        assert_eq!(planned[&w("b")]["x"], [(w("gone"), 5)].into());
        let pending: Pending = [("x".to_owned(), [(w("gone"), 5)].into())].into();
        let after: BTreeMap<WorkerId, WorkerRecord> = [(w("b"), record(&["x"], pending))].into();
        assert_eq!(resolvable(&after, &m), (0, 1));
        assert!(
            waited_on(&after, &m).is_empty(),
            "no heartbeat to revoke: not expelled"
        );
        m.unproven.clear();
        assert_eq!(resolvable(&after, &m), (1, 1));
    }

    #[test]
    fn waiting_survives_further_moves_and_ends_with_the_release() {
        // y went a → b at v5 and is still pending; now it moves on to c at v6.
        let pending: Pending = [("y".to_owned(), [(w("a"), 5)].into())].into();
        let records: Records = [
            (w("a"), record(&["x"], Pending::new())),
            (w("b"), record(&["y"], pending)),
        ]
        .into();
        let next = map(&[("a", &["x"]), ("b", &[]), ("c", &["y"])]);
        let m = members(&[("a", 4), ("b", 5), ("c", 5)]);
        let planned = plan(&records, &next, 6, &m, &BTreeSet::new());
        assert_eq!(
            planned[&w("c")]["y"],
            [(w("a"), 5)].into(),
            "b never held y: only a is waited for"
        );
        assert_eq!(resolvable(&records, &m), (0, 1));
        let released = members(&[("a", 5), ("b", 5), ("c", 5)]);
        assert_eq!(resolvable(&records, &released), (1, 1));
        assert!(plan(&records, &next, 6, &released, &BTreeSet::new())[&w("c")].is_empty());
    }

    /// A commit without a readable predecessor made every partition wait for the unknown
    /// holders, also those that stayed put: `a` held x before version 5 and lets go of it when
    /// it applies 5, which lists x as pending for it. Moving x on at 6 waits for `a` as well
    /// until it released 5, not only for whom x waited.
    #[test]
    fn a_partition_pending_on_its_lister_waits_for_the_lister_too() {
        let pending_on_b: Pending = [("x".to_owned(), [(w("b"), 5)].into())].into();
        let mut a_record = record(&["x"], pending_on_b);
        a_record.version = 5;
        let records: Records = [(w("a"), a_record), (w("b"), record(&[], Pending::new()))].into();
        let next = map(&[("a", &[]), ("b", &[]), ("c", &["x"])]);
        let not_applied = members(&[("a", 4), ("b", 4), ("c", 5)]);
        let planned = plan(&records, &next, 6, &not_applied, &BTreeSet::new());
        assert_eq!(planned[&w("c")]["x"], [(w("a"), 5), (w("b"), 5)].into());
        let applied = members(&[("a", 5), ("b", 4), ("c", 5)]);
        let planned = plan(&records, &next, 6, &applied, &BTreeSet::new());
        assert_eq!(planned[&w("c")]["x"], [(w("b"), 5)].into());
    }

    #[test]
    fn unknown_holders_are_waited_for_everywhere_but_by_themselves() {
        let next = map(&[("a", &["x"]), ("b", &["y"])]);
        let m = members(&[("a", 2), ("b", 2)]);
        let unknown = [w("a"), w("b")].into();
        let plan = plan(&BTreeMap::new(), &next, 3, &m, &unknown);
        assert_eq!(plan[&w("a")]["x"], [(w("b"), 3)].into());
        assert_eq!(plan[&w("b")]["y"], [(w("a"), 3)].into());
    }

    #[test]
    fn a_fenced_loser_is_waited_for_no_more() {
        let records = BTreeMap::from([
            (w("a"), record(&["x"], Pending::new())),
            (
                w("b"),
                record(
                    &["y"],
                    BTreeMap::from([("y".into(), BTreeMap::from([(w("a"), 3)]))]),
                ),
            ),
        ]);
        let mut m = members(&[("a", 2), ("b", 3)]);
        assert_eq!(waited_on(&records, &m), BTreeMap::from([(w("a"), 3)]));
        assert_eq!(resolvable(&records, &m), (0, 1));
        m.fenced(&w("a"), 3);
        assert!(waited_on(&records, &m).is_empty());
        assert_eq!(resolvable(&records, &m), (1, 1));
        let next = map(&[("a", &["x"]), ("b", &["y"])]);
        assert!(plan(&records, &next, 4, &m, &BTreeSet::new())[&w("b")].is_empty());
    }

    #[test]
    fn a_stale_lineage_needs_a_republish() {
        let records: BTreeMap<WorkerId, WorkerRecord> =
            [(w("a"), record(&["x"], Pending::new()))].into();
        let lineage = |n| Lineage {
            instance: "i".into(),
            lapses: n,
        };
        let mut m = members(&[("a", 3)]);
        m.lineages.insert(w("a"), lineage(1));
        let committed = [(w("a"), lineage(0))].into();
        assert!(lineage_stale(&records, &committed, &m, |_| false));
        let committed = lineages([&w("a")], &m);
        assert!(!lineage_stale(&records, &committed, &m, |_| true));
        // Another process under the same ID: only once its lineage has settled.
        let other = [(
            w("a"),
            Lineage {
                instance: "j".into(),
                lapses: 0,
            },
        )]
        .into();
        assert!(!lineage_stale(&records, &other, &m, |_| false));
        assert!(lineage_stale(&records, &other, &m, |_| true));
    }
}
