//! What this worker may hold: the pure decision behind self-fencing (SPEC §13).
//!
//! A worker holds a partition only while all of these are true:
//! - its **lease** is valid: the last successful heartbeat *started* less than the heartbeat
//!   TTL minus a safety margin ago (the server cannot have expired the key yet, so no leader
//!   can have declared this worker gone and handed its partitions on);
//! - the latest **commit** gives it the partition, not pending on another worker's release;
//! - the commit names this worker's current **lineage**: after a lapse (a pause, a cut-off
//!   longer than the lease) the worker holds nothing until a leader that saw it come back
//!   commits again — its old holdings may have been handed on meanwhile.
//!
//! [`Holder`] is that rule as a value moved by inputs (renewal, commit, tick, release-all) with
//! the time passed in; each input returns the [`HoldingChange`] to carry out. The manager's
//! fence task carries it out (gate the consumer, tell the hooks, record, acknowledge).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::assignment::Assignment;
use crate::partition::Partition;
use crate::records::Lineage;

/// The latest commit, as it concerns this worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MyCommit {
    /// The commit's (cluster) version.
    pub(crate) version: u64,
    /// This worker's assignment in it.
    pub(crate) assignment: Arc<Assignment>,
    /// Partition IDs of the assignment this worker must not hold yet.
    pub(crate) pending: BTreeSet<String>,
    /// The lineage the commit names for this worker, if any.
    pub(crate) lineage: Option<Lineage>,
}

/// A change of holdings to carry out, in this order: stop `lost`, start `gained`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HoldingChange {
    /// Partitions no longer held, with the epoch of the holding that ends.
    pub(crate) lost: Vec<(Partition, u64)>,
    /// Partitions now held, with their epoch.
    pub(crate) gained: Vec<(Partition, u64)>,
    /// Once carried out, this worker holds nothing that commit `version` does not let it hold.
    pub(crate) version: u64,
    /// The assignment of that commit (for the hooks).
    pub(crate) assignment: Arc<Assignment>,
    /// The lease lapsed with this change: what it releases ended at the deadline already.
    pub(crate) lapse: bool,
    /// The lineage (lapse count) this change was decided under, set when it is handed to the
    /// fence task: its gains start only while that lineage is still current.
    pub(crate) lineage: u64,
}

impl HoldingChange {
    /// Nothing to start or stop.
    pub(crate) fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.gained.is_empty()
    }
}

/// The holdings of one worker process (see the module docs).
#[derive(Debug)]
pub(crate) struct Holder {
    instance: String,
    /// How many times the lease lapsed.
    lapses: u64,
    /// The lease deadline (ownership clock, ns); 0 before the first renewal.
    lease_until: u64,
    /// The lease lapsed and was not renewed since.
    lapsed: bool,
    /// Subtracted from each renewal's start + TTL: room for clocks running at different rates.
    ttl_ns: u64,
    margin_ns: u64,
    commit: Option<MyCommit>,
    /// Partition ID → (partition, epoch).
    held: BTreeMap<String, (Partition, u64)>,
    /// Stopped for good (graceful stop, ID lost): hold nothing any more.
    closed: bool,
    /// `degradedHolding: keep`: a renewed lease never runs out (the guarantee is given up).
    keep: bool,
}

impl Holder {
    pub(crate) fn new(instance: &str, ttl_ns: u64, margin_ns: u64) -> Self {
        Self {
            instance: instance.to_owned(),
            lapses: 0,
            lease_until: 0,
            lapsed: false,
            ttl_ns,
            margin_ns,
            commit: None,
            held: BTreeMap::new(),
            closed: false,
            keep: false,
        }
    }

    /// `degradedHolding: keep`: once renewed, the lease never runs out — holdings end only by
    /// a commit, a revocation, a lost ID or a stop. Gives up exclusivity (see
    /// [`DegradedHolding::Keep`](crate::config::DegradedHolding::Keep)).
    pub(crate) fn keep_past_lease(mut self) -> Self {
        self.keep = true;
        self
    }

    /// This process's current lineage.
    pub(crate) fn lineage(&self) -> Lineage {
        Lineage {
            instance: self.instance.clone(),
            lapses: self.lapses,
        }
    }

    /// How many times the lease lapsed (for the heartbeat).
    pub(crate) fn lapses(&self) -> u64 {
        self.lapses
    }

    /// The lease deadline (0 before the first renewal).
    pub(crate) fn lease_until(&self) -> u64 {
        self.lease_until
    }

    /// When [`tick`](Self::tick) must run next: the lease deadline while something is held.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        (!self.held.is_empty()).then_some(self.lease_until)
    }

    /// The version of the latest commit seen (0 before any).
    pub(crate) fn version(&self) -> u64 {
        self.commit.as_ref().map_or(0, |c| c.version)
    }

    /// A heartbeat that started at `started_ns` succeeded; it is `now_ns`.
    pub(crate) fn renewed(&mut self, started_ns: u64, now_ns: u64) -> HoldingChange {
        let mut change = self.expire(now_ns);
        let until = if self.keep {
            u64::MAX
        } else {
            started_ns
                .saturating_add(self.ttl_ns)
                .saturating_sub(self.margin_ns)
        };
        if until > self.lease_until {
            self.lease_until = until;
        }
        self.lapsed = false;
        let more = self.reconcile(now_ns);
        change.gained = more.gained;
        change.lost.extend(more.lost);
        change
    }

    /// A newer commit arrived.
    pub(crate) fn committed(&mut self, commit: MyCommit, now_ns: u64) -> HoldingChange {
        if self
            .commit
            .as_ref()
            .is_some_and(|c| c.version > commit.version)
        {
            return self.reconcile(now_ns);
        }
        self.commit = Some(commit);
        self.reconcile(now_ns)
    }

    /// Time passed: drops everything once the lease ran out.
    pub(crate) fn tick(&mut self, now_ns: u64) -> HoldingChange {
        let mut change = self.expire(now_ns);
        let more = self.reconcile(now_ns);
        change.lost.extend(more.lost);
        change.gained = more.gained;
        change
    }

    /// A leader revoked the lease of lineage `lapses` (this worker did not release a hand-off
    /// in time, or someone else wrote its heartbeat key): lapse now, as if the lease had run
    /// out — even when that lineage had lapsed already and was about to be renewed. A
    /// revocation of an earlier lineage changes nothing.
    pub(crate) fn revoked(&mut self, lapses: u64, now_ns: u64) -> HoldingChange {
        if lapses != self.lapses {
            return self.tick(now_ns);
        }
        let mut change = self.lapse();
        let more = self.reconcile(now_ns);
        change.lost.extend(more.lost);
        change.gained = more.gained;
        change
    }

    /// Starts over under a new stable ID: a new lineage, no commit, nothing held (whatever was
    /// held was released by [`close`](Self::close) first).
    pub(crate) fn restart(&mut self) {
        if self.commit.is_some() || self.closed {
            self.lapses = self.lapses.saturating_add(1);
        }
        self.closed = false;
        self.lapsed = false;
        self.commit = None;
        self.held.clear();
    }

    /// Holds nothing from now on (graceful stop or a lost stable ID).
    pub(crate) fn close(&mut self) -> HoldingChange {
        self.closed = true;
        self.reconcile(0)
    }

    /// Marks a lapse once the lease ran out; the lineage changes with it.
    fn expire(&mut self, now_ns: u64) -> HoldingChange {
        if self.lease_until != 0 && now_ns >= self.lease_until && !self.lapsed {
            return self.lapse();
        }
        HoldingChange {
            version: self.version(),
            assignment: self.assignment(),
            ..HoldingChange::default()
        }
    }

    /// Ends the current lineage: nothing is held until a commit names the next one.
    fn lapse(&mut self) -> HoldingChange {
        self.lapsed = true;
        self.lapses = self.lapses.saturating_add(1);
        tracing::warn!(
            lapses = self.lapses,
            "lease lapsed: holding nothing until a commit names this worker again"
        );
        HoldingChange {
            version: self.version(),
            assignment: self.assignment(),
            lapse: true,
            ..HoldingChange::default()
        }
    }

    fn assignment(&self) -> Arc<Assignment> {
        self.commit
            .as_ref()
            .map(|c| Arc::clone(&c.assignment))
            .unwrap_or_default()
    }

    /// What may be held now.
    fn target(&self, now_ns: u64) -> BTreeMap<String, Partition> {
        let valid = !self.closed && !self.lapsed && now_ns < self.lease_until;
        match &self.commit {
            Some(c) if valid && c.lineage.as_ref() == Some(&self.lineage()) => c
                .assignment
                .partitions
                .iter()
                .map(|p| (p.id(), p.clone()))
                .filter(|(id, _)| !c.pending.contains(id))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// Moves the holdings to the target.
    fn reconcile(&mut self, now_ns: u64) -> HoldingChange {
        let target = self.target(now_ns);
        let version = self.version();
        let lost: Vec<(Partition, u64)> = self
            .held
            .iter()
            .filter(|(id, _)| !target.contains_key(*id))
            .map(|(_, held)| held.clone())
            .collect();
        for (p, _) in &lost {
            self.held.remove(&p.id());
        }
        let gained: Vec<(Partition, u64)> = target
            .into_iter()
            .filter(|(id, _)| !self.held.contains_key(id))
            .map(|(_, p)| (p, version))
            .collect();
        for (p, epoch) in &gained {
            self.held.insert(p.id(), (p.clone(), *epoch));
        }
        HoldingChange {
            lost,
            gained,
            version,
            assignment: self.assignment(),
            lapse: false,
            lineage: self.lapses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::Lifecycle;

    const TTL: u64 = 1_000;

    fn p(k: &str) -> Partition {
        Partition::new([k], 1).unwrap()
    }

    fn commit(version: u64, parts: &[&str], pending: &[&str], lapses: Option<u64>) -> MyCommit {
        MyCommit {
            version,
            assignment: Arc::new(Assignment {
                version,
                lifecycle: Lifecycle::Running,
                partitions: parts.iter().map(|k| p(k)).collect(),
            }),
            pending: pending.iter().map(|k| (*k).to_owned()).collect(),
            lineage: lapses.map(|lapses| Lineage {
                instance: "i".into(),
                lapses,
            }),
        }
    }

    fn ids(v: &[(Partition, u64)]) -> Vec<String> {
        v.iter().map(|(p, e)| format!("{}@{e}", p.id())).collect()
    }

    #[test]
    fn holds_the_commit_minus_pending_while_the_lease_is_valid() {
        let mut h = Holder::new("i", TTL, 100);
        assert!(
            h.committed(commit(3, &["a", "b"], &["b"], Some(0)), 10)
                .is_empty()
        );
        let c = h.renewed(10, 20);
        assert_eq!(
            ids(&c.gained),
            ["a@3"],
            "nothing before the first renewal; b pending"
        );
        let c = h.committed(commit(4, &["a", "b"], &[], Some(0)), 30);
        assert_eq!(
            ids(&c.gained),
            ["b@4"],
            "the release came: b from its own epoch"
        );
        assert_eq!(c.version, 4);
    }

    #[test]
    fn a_lapse_drops_everything_and_only_a_commit_naming_the_new_lineage_restores_it() {
        let mut h = Holder::new("i", TTL, 100);
        h.renewed(0, 0);
        h.committed(commit(3, &["a"], &[], Some(0)), 1);
        assert_eq!(h.next_deadline(), Some(900));
        let c = h.tick(900);
        assert_eq!(ids(&c.lost), ["a@3"], "lapsed at start + ttl - margin");
        assert!(c.lapse, "the change says it is a lapse");
        assert_eq!(h.lapses(), 1);
        let c = h.renewed(950, 960);
        assert!(
            c.is_empty(),
            "renewed, but the commit names the old lineage"
        );
        let c = h.committed(commit(5, &["a"], &[], Some(1)), 970);
        assert_eq!(ids(&c.gained), ["a@5"]);
    }

    #[test]
    fn a_renewal_that_completes_after_the_deadline_is_a_lapse() {
        let mut h = Holder::new("i", TTL, 0);
        h.renewed(0, 0);
        h.committed(commit(3, &["a"], &[], Some(0)), 1);
        // The process was stopped past its deadline; the late renewal must not revive.
        let c = h.renewed(500, 2_000);
        assert_eq!(ids(&c.lost), ["a@3"]);
        assert!(c.lapse);
        assert!(c.gained.is_empty());
        assert_eq!(h.lapses(), 1);
    }

    #[test]
    fn a_revoked_lease_lapses_at_once_and_only_for_the_revoked_lineage() {
        let mut h = Holder::new("i", TTL, 100);
        h.renewed(0, 0);
        h.committed(commit(3, &["a", "b"], &[], Some(0)), 1);
        let c = h.revoked(0, 10);
        assert_eq!(
            ids(&c.lost),
            ["a@3", "b@3"],
            "well before the lease deadline"
        );
        assert!(c.lapse);
        assert_eq!(h.lapses(), 1);
        assert!(
            h.revoked(0, 20).is_empty(),
            "the same revocation seen twice"
        );
        assert!(
            h.renewed(30, 40).is_empty(),
            "the commit names the revoked lineage"
        );
        let c = h.committed(commit(4, &["b"], &[], Some(1)), 50);
        assert_eq!(ids(&c.gained), ["b@4"]);
        assert!(
            h.revoked(0, 60).is_empty(),
            "an older lineage's revocation is stale"
        );
        assert_eq!(h.lapses(), 1);
    }

    #[test]
    fn a_revocation_of_a_lineage_that_already_lapsed_still_ends_it() {
        let mut h = Holder::new("i", TTL, 100);
        h.renewed(0, 0);
        h.committed(commit(3, &["a"], &[], Some(0)), 1);
        assert!(h.tick(900).lapse);
        assert_eq!(h.lapses(), 1);
        // The heartbeat of lineage 1 was revoked before its renewal was seen here.
        let c = h.revoked(1, 910);
        assert!(
            c.lapse && c.lost.is_empty(),
            "a lapse, though nothing was held"
        );
        assert_eq!(
            h.lapses(),
            2,
            "lineage 1 is over: the heartbeat renews as 2"
        );
    }

    #[test]
    fn keep_holds_past_the_lease_until_a_commit_says_otherwise() {
        let mut h = Holder::new("i", TTL, 100).keep_past_lease();
        h.renewed(0, 0);
        h.committed(commit(3, &["a", "b"], &[], Some(0)), 1);
        assert!(
            h.tick(10 * TTL).is_empty(),
            "no lapse however long the silence"
        );
        let c = h.committed(commit(4, &["b"], &[], Some(0)), 10 * TTL + 1);
        assert_eq!(ids(&c.lost), ["a@3"]);
    }

    #[test]
    fn close_releases_everything_for_good() {
        let mut h = Holder::new("i", TTL, 0);
        h.renewed(0, 0);
        h.committed(commit(3, &["a", "b"], &[], Some(0)), 1);
        let c = h.close();
        assert_eq!(ids(&c.lost), ["a@3", "b@3"]);
        assert!(h.committed(commit(4, &["a"], &[], Some(0)), 2).is_empty());
    }

    #[test]
    fn an_older_commit_is_ignored() {
        let mut h = Holder::new("i", TTL, 0);
        h.renewed(0, 0);
        h.committed(commit(5, &["a"], &[], Some(0)), 1);
        let c = h.committed(commit(4, &["b"], &[], Some(0)), 2);
        assert!(c.is_empty());
        assert_eq!(c.version, 5);
    }
}
