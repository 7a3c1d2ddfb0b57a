//! Fenced, versioned publication of the assignment map (SPEC §5.4).
//!
//! A publish writes every changed worker's value into the slot of `worker.{id}.{a|b}` that is not
//! committed, then commits with the `cluster` record, written with a revision check: a publish
//! that fails half-way leaves the committed map intact. The record lists the revision of each worker's value, so a
//! worker applies only committed values: a deposed leader may still write a worker key, but it
//! cannot commit, and its write is never applied. Keys of departed workers are deleted after
//! the commit. Versions continue from the committed record, across leaders.
//!
//! After each commit the record is copied into the commit pages of its workers (and of the
//! previous record's workers): followers read their page, never the whole record (see
//! [`CommitPage`]). A page is written with a revision check and only over a copy of an older
//! commit; a page write that fails, or a page that someone else wrote or deleted, is written
//! again by [`Publisher::repair_pages`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;

use super::handoff::{self, Members};
use crate::assignment::{AssignmentMap, Lifecycle};
use crate::clock::{now, unix_ms};
use crate::error::{Error, Result};
use crate::partition::WorkerId;
use crate::records::{
    CLUSTER_KEY, ClusterRecord, CommitPage, FLOOR_KEY, PAGE_KEY_PREFIX, Published, Slot,
    VersionFloor, WorkerRecord, page_key, page_of, parse_page_key, worker_key,
};
use crate::state::ClusterPhase;
use crate::store::{Bucket, Entry, codec};

/// KV writes of one publish in flight at once (the changed worker values, the departed keys'
/// deletes): enough to fill the connection's pipeline, few enough not to flood the server.
const PUT_CONCURRENCY: usize = 64;

/// What one publish should say besides the map.
#[derive(Debug, Clone)]
pub(crate) struct PublishMeta {
    pub(crate) phase: ClusterPhase,
    pub(crate) reason: String,
    pub(crate) lifecycle: Lifecycle,
    /// Label → partitions parked (not in the map).
    pub(crate) parked: BTreeMap<String, usize>,
}

/// Publishes assignment maps for one leader term.
#[derive(Debug)]
pub(crate) struct Publisher {
    bucket: Arc<dyn Bucket>,
    /// The term this leader publishes with: the election's term. A commit with a higher term
    /// fences this leader out for good (terms restart when the election bucket is recreated,
    /// which leaves every later leader fenced until an operator clears `cluster`: known).
    term: u64,
    committed: Published,
    /// Workers whose committed value was overwritten or deleted under the leader (garbage, a
    /// deposed leader's write): the next publish writes theirs again even when unchanged.
    damaged: BTreeSet<WorkerId>,
    /// Commit page → the revision of its key as this leader last wrote it, or found it
    /// holding a copy at least as recent as its own, and the [`order`](CommitPage::order) of
    /// its copy then (a page already at a commit is not written again). A write seen at a
    /// higher revision is someone else's: the page is forgotten, read and written again.
    pages: BTreeMap<usize, (u64, (u64, u64))>,
    /// Pages to write again ([`repair_pages`](Self::repair_pages)): their write failed, or
    /// someone else wrote or deleted them.
    stale_pages: BTreeSet<usize>,
    /// Whether the pages are still to be looked at once: a new leader's commit may have pages
    /// that lag it (the last leader stopped between its commit and the pages), any page, one
    /// of a worker the commit removed too. One listing finds them; those that copy an older
    /// commit (or garbage) become stale.
    unchecked: bool,
    /// When the stale pages (or the first check) are tried again, and the delays after that.
    /// A page that lags holds its workers back (a gainer waits for a release its loser never
    /// reads), so the retry is prompt — 100 ms, doubling to 2 s — rather than left to the
    /// next source check, which may be many seconds away. `None` while nothing failed.
    page_retry: Option<PageRetry>,
}

/// See `Publisher::page_retry`.
#[derive(Debug)]
struct PageRetry {
    at: std::time::Instant,
    delays: crate::retry::Delays,
}

impl Publisher {
    /// Reads what is committed. Garbage values are logged and treated as absent.
    pub(crate) async fn load(bucket: Arc<dyn Bucket>, agent_term: u64) -> Result<Self> {
        let committed = crate::records::read_published(&*bucket).await?;
        Ok(Self {
            bucket,
            term: agent_term,
            committed,
            damaged: BTreeSet::new(),
            pages: BTreeMap::new(),
            stale_pages: BTreeSet::new(),
            unchecked: true,
            page_retry: None,
        })
    }

    pub(crate) fn committed(&self) -> &Published {
        &self.committed
    }

    /// Whether the `cluster` key still holds the commit this leader last read or wrote: not
    /// when it is gone (its bucket deleted and created again), garbage, or written by
    /// someone else. Garbage this leader read itself (a phase write re-reads the record when
    /// its revision moved) is no commit either, though its revision is the one last read.
    pub(crate) async fn commit_intact(&self) -> Result<bool> {
        let current = self.bucket.get(CLUSTER_KEY).await?.map(|e| e.revision);
        Ok(current == self.committed.cluster_revision && self.committed.record.is_some())
    }

    /// A write or delete of assignment key `key` at `revision` was seen: whether it
    /// destroyed a committed worker value (a later write to its slot), which the next publish
    /// then writes again — followers reading the commit would otherwise find garbage or
    /// nothing where their value was. Writes this leader made itself are at or below the
    /// revision it committed, or to the other slot.
    pub(crate) fn slot_written(&mut self, key: &str, revision: u64) -> bool {
        let Some((worker, slot)) = crate::records::parse_worker_key(key) else {
            return false;
        };
        let intact = self.committed.slots.get(&worker) != Some(&slot)
            || self
                .committed
                .workers
                .get(&worker)
                .is_none_or(|(rev, _)| revision <= *rev);
        if intact {
            return false;
        }
        tracing::warn!(%worker, key, "a committed assignment value was overwritten; writing it again");
        self.damaged.insert(worker)
    }

    /// A write or delete of assignment key `key` at `revision` was seen: whether it was
    /// someone else's change of a commit page this leader wrote, which
    /// [`repair_pages`](Self::repair_pages) then writes again (if the page does not copy a
    /// newer commit by then).
    pub(crate) fn page_written(&mut self, key: &str, revision: u64) -> bool {
        let Some(page) = parse_page_key(key) else {
            return false;
        };
        match self.pages.get(&page) {
            Some((known, _)) if revision > *known => {
                tracing::debug!(key, revision, "a commit page was written under the leader");
                self.pages.remove(&page);
                self.stale_pages.insert(page)
            }
            _ => false,
        }
    }

    /// Whether a commit page must be written again (see [`Self::repair_pages`]).
    pub(crate) fn has_stale_pages(&self) -> bool {
        !self.stale_pages.is_empty() || self.unchecked
    }

    /// When [`repair_pages`](Self::repair_pages) is due: `None` while no page is stale; at
    /// once for a new leader's first check, then after each failed try, sooner than later.
    pub(crate) fn pages_due(&self) -> Option<std::time::Instant> {
        self.has_stale_pages()
            .then(|| self.page_retry.as_ref().map_or_else(now, |r| r.at))
    }

    /// After a try at the pages: schedules the next one while some are still stale.
    fn schedule_page_retry(&mut self) {
        if !self.has_stale_pages() {
            self.page_retry = None;
            return;
        }
        let retry = self.page_retry.get_or_insert_with(|| PageRetry {
            at: now(),
            delays: crate::retry::doubling(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(2),
            ),
        });
        retry.at = now() + retry.delays.next_delay();
    }

    /// Writes the pages found stale again, from the commit this leader last read or wrote,
    /// when the `cluster` key still holds that commit; otherwise the pages stay stale until
    /// a publish (a repair of a lost commit, a deposed leader's last try) copies a current one.
    /// Pages that still fail stay stale, for the next call.
    pub(crate) async fn repair_pages(&mut self) {
        match self.commit_intact().await {
            Ok(true) => {
                if self.unchecked {
                    self.check_pages().await;
                }
                self.write_pages(BTreeSet::new()).await;
            }
            // `write_pages` schedules the next try itself.
            Ok(false) => self.schedule_page_retry(),
            Err(error) => {
                tracing::debug!(%error, "cannot check the commit; pages wait");
                self.schedule_page_retry();
            }
        }
    }

    /// Lists the pages once (one call, however many pages) and marks stale those that copy an
    /// older commit than the one this leader read or do not decode, and the missing pages of
    /// the workers the commit names. Tried again at the next repair when the listing fails.
    async fn check_pages(&mut self) {
        let Some((record, revision)) = &self.committed.record else {
            return;
        };
        let order = (record.version, *revision);
        let listed = match self.bucket.list(&format!("{PAGE_KEY_PREFIX}>")).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::debug!(%error, "cannot list the commit pages; trying again later");
                return;
            }
        };
        let mut missing = record_pages(&self.committed);
        for entry in listed {
            let Some(page) = parse_page_key(&entry.key) else {
                continue;
            };
            missing.remove(&page);
            let there = codec::decode::<CommitPage>(self.bucket.name(), &entry.key, &entry.value)
                .inspect_err(crate::records::garbage_seen)
                .ok();
            match there {
                Some(copy) if copy.order() >= order => {
                    self.pages.insert(page, (entry.revision, copy.order()));
                }
                _ => {
                    self.stale_pages.insert(page);
                }
            }
        }
        self.stale_pages.append(&mut missing);
        self.unchecked = false;
    }

    /// Copies the committed record into `pages` and every stale page. A page that already
    /// copies a commit at least as recent is left alone; a write that fails leaves its page
    /// stale.
    async fn write_pages(&mut self, mut pages: BTreeSet<usize>) {
        let Some((record, revision)) = &self.committed.record else {
            return;
        };
        pages.append(&mut self.stale_pages);
        let writes: Vec<_> = CommitPage::pages_of(record, *revision, &pages)
            .into_iter()
            .filter(|(page, copy)| {
                // Written at this commit already (a phase write found the phase in place).
                self.pages
                    .get(page)
                    .is_none_or(|(_, order)| *order < copy.order())
            })
            .map(|(page, copy)| {
                let bucket = Arc::clone(&self.bucket);
                let known = self.pages.get(&page).map(|(revision, _)| *revision);
                async move {
                    let written = write_page(&*bucket, page, &copy, known).await;
                    (page, copy.order(), written)
                }
            })
            .collect();
        let mut results = futures::stream::iter(writes).buffer_unordered(PUT_CONCURRENCY);
        while let Some((page, order, result)) = results.next().await {
            match result {
                Ok(revision) => {
                    self.pages.insert(page, (revision, order));
                }
                Err(error) => {
                    tracing::debug!(page, %error, "could not write a commit page; trying again soon");
                    self.pages.remove(&page);
                    self.stale_pages.insert(page);
                }
            }
        }
        self.schedule_page_retry();
    }

    /// Whether a committed worker value must be written again (see [`Self::slot_written`]).
    pub(crate) fn has_damage(&self) -> bool {
        !self.damaged.is_empty()
    }

    /// The term the election agent granted this leader.
    pub(crate) fn agent_term(&self) -> u64 {
        self.term
    }

    /// Whether the `cluster` record this writer last read or wrote carries its own term: this
    /// term has written it (a phase or a commit; both stamp the term).
    pub(crate) fn wrote_this_term(&self) -> bool {
        self.committed
            .record
            .as_ref()
            .is_some_and(|(record, _)| record.term == self.term)
    }

    /// Checks that nobody with a newer term committed since; returns the current record and
    /// the `cluster` key's revision.
    async fn fence(&self) -> Result<(Option<ClusterRecord>, Option<u64>)> {
        let Some(entry) = self.bucket.get(CLUSTER_KEY).await? else {
            return Ok((None, None));
        };
        match codec::decode::<ClusterRecord>(self.bucket.name(), CLUSTER_KEY, &entry.value) {
            Ok(record) if record.term > self.term => Err(Error::LeadershipLost),
            Ok(record) => Ok((Some(record), Some(entry.revision))),
            Err(e) => {
                // The publish overwrites it: the next good publish heals garbage.
                crate::records::garbage_seen(&e);
                Ok((None, Some(entry.revision)))
            }
        }
    }

    /// Publishes `map`; returns the new version. `Error::LeadershipLost` when the term is no
    /// longer current (nothing was committed); other errors are retryable.
    ///
    /// `members` (from the heartbeats) decides which moved partitions stay pending on their
    /// gainers ([`handoff`](super::handoff)) and which lineages the commit names; its `floor`
    /// keeps versions from going back when the `cluster` record was lost.
    pub(crate) async fn publish(
        &mut self,
        map: &AssignmentMap,
        meta: PublishMeta,
        members: &Members,
    ) -> Result<u64> {
        // Both reads at once: one round trip less on the way to a crash's commit. The fence's
        // answer comes first: a lost leadership is reported as such whatever the floor read did.
        let (fenced, floor) = futures::join!(self.fence(), self.bucket.get(FLOOR_KEY));
        let (current, cluster_rev) = fenced?;
        let floor = floor?;
        // Every live worker reads this commit on its page, and so does every worker of the
        // record known before: with the commit lost, every partition waits for every live
        // worker's release of this version (`unknown_holders`), and a worker the map leaves
        // out must still learn that it is out.
        let mut pages = record_pages(&self.committed);
        pages.extend(members.released.keys().map(page_of));
        if cluster_rev != self.committed.cluster_revision {
            // Someone committed since we last read or wrote (a deposed leader's late write, a
            // retried commit whose reply was lost, garbage): build on what is there now.
            self.committed = crate::records::read_published(&*self.bucket).await?;
        }
        let records_floor = self.records_floor(floor).await?;
        let base_version = current
            .as_ref()
            .map_or(0, |r| r.version)
            .max(self.committed.version())
            .max(records_floor)
            .max(members.floor);
        // No commit to go on (a new group, or its record lost or garbage): the clock too.
        let no_commit = current.as_ref().is_none_or(|r| r.version == 0);
        let version = next_version(base_version, no_commit.then(crate::clock::process_unix_ms));
        let unknown = self.unknown_holders(members).await?;
        pages.extend(unknown.iter().map(page_of));
        let committed_records = self.committed.workers.iter().map(|(w, (_, r))| (w, r));
        let mut pending = handoff::plan(committed_records, map, version, members, &unknown);

        // Unchanged workers keep their committed value: only its revision goes into the new
        // record, and their entries in `self.committed` stay where they are (a large map's
        // records are not copied on every publish).
        let mut revisions = BTreeMap::new();
        let mut writes = Vec::new();
        for (worker, partitions) in map.iter() {
            let pending = pending.remove(worker).unwrap_or_default();
            if let Some((rev, rec)) = self.committed.workers.get(worker)
                && self.committed.slots.contains_key(worker)
                && !self.damaged.contains(worker)
                && rec.partitions == partitions
                && rec.pending == pending
            {
                revisions.insert(worker.clone(), *rev);
                continue;
            }
            let record = WorkerRecord {
                version,
                term: self.term,
                lifecycle: meta.lifecycle,
                partitions: partitions.to_vec(),
                pending,
            };
            // Never overwrite the committed value: write the other slot.
            let slot = self
                .committed
                .slots
                .get(worker)
                .map_or(Slot::A, |s| s.other());
            let value = codec::encode(&record)?;
            writes.push((worker.clone(), slot, record, value));
        }
        // The changed values are written concurrently (none is committed before the record
        // below names it, so their order does not matter): one round trip per batch instead of
        // one per worker.
        let puts: Vec<_> = writes
            .into_iter()
            .map(|(worker, slot, record, value)| {
                let bucket = Arc::clone(&self.bucket);
                async move {
                    let rev = bucket.put(&worker_key(&worker, slot), value).await?;
                    Ok::<_, Error>((worker, slot, record, rev))
                }
            })
            .collect();
        let mut written = futures::stream::iter(puts).buffer_unordered(PUT_CONCURRENCY);
        let mut changed = Vec::new();
        while let Some(result) = written.next().await {
            let (worker, slot, record, rev) = result?;
            revisions.insert(worker.clone(), rev);
            changed.push((worker, slot, record, rev));
        }
        drop(written);

        let first_assignment_at = current
            .as_ref()
            .and_then(|r| r.first_assignment_at)
            .or_else(|| Some(unix_ms()));
        let record = ClusterRecord {
            version,
            term: self.term,
            phase: meta.phase,
            reason: meta.reason,
            workers: revisions,
            partition_count: map.partition_count(),
            lifecycle: meta.lifecycle,
            first_assignment_at,
            lineages: handoff::lineages(map.workers(), members),
            parked: meta.parked,
        };
        // The floor first: a commit may land even when its reply is lost.
        let floor = codec::encode(&VersionFloor {
            version,
            term: self.term,
        })?;
        self.bucket.put(FLOOR_KEY, floor).await?;
        // The pages of the new map's workers, and of the old map's (so that a removed worker
        // reads that it was removed).
        pages.extend(map.workers().map(page_of));
        pages.extend(record_pages(&self.committed));
        let revision = self.commit(&record, cluster_rev).await?;

        let departed: Vec<WorkerId> = self
            .committed
            .workers
            .keys()
            .filter(|w| !map.contains_worker(w))
            .cloned()
            .collect();
        // What is committed now: the unchanged entries stay, the written ones replace theirs,
        // the departed ones go.
        let committed = &mut self.committed;
        for worker in &departed {
            committed.workers.remove(worker);
            committed.slots.remove(worker);
        }
        for (worker, slot, record, rev) in changed {
            committed.slots.insert(worker.clone(), slot);
            committed.workers.insert(worker, (rev, record));
        }
        committed.record = Some((record, revision));
        committed.cluster_revision = Some(revision);
        committed.map = map.clone();
        committed.garbage.clear();
        self.damaged.clear();
        self.write_pages(pages).await;
        // Best effort: a leftover key is ignored by everyone (not in the record).
        let deletes: Vec<_> = departed
            .into_iter()
            .flat_map(|w| [(w.clone(), Slot::A), (w, Slot::B)])
            .map(|(worker, slot)| {
                let bucket = Arc::clone(&self.bucket);
                async move {
                    if let Err(e) = bucket.delete(&worker_key(&worker, slot), None).await {
                        tracing::debug!(%worker, error = %e, "could not delete a departed worker's key");
                    }
                }
            })
            .collect();
        futures::stream::iter(deletes)
            .buffer_unordered(PUT_CONCURRENCY)
            .collect::<()>()
            .await;
        Ok(version)
    }

    /// The highest version any worker value carries: the committed ones, or — when the commit
    /// is garbage or gone — every value left in the bucket, so that versions (and the epochs
    /// built on them) never start again below what workers may have held. `floor` is the
    /// `floor` key as read.
    async fn records_floor(&self, floor: Option<Entry>) -> Result<u64> {
        let committed = self
            .committed
            .workers
            .values()
            .map(|(_, r)| r.version)
            .max();
        let floor = match floor {
            Some(entry) => {
                codec::decode::<VersionFloor>(self.bucket.name(), FLOOR_KEY, &entry.value)
                    .inspect_err(crate::records::garbage_seen)
                    .ok()
                    .map(|f| f.version)
            }
            None => None,
        };
        let committed = committed.max(floor);
        if self.committed.record.is_some() {
            return Ok(committed.unwrap_or(0));
        }
        // The worker values and the commit pages: both carry versions workers may have applied.
        let name = self.bucket.name();
        let listed = self
            .bucket
            .list(">")
            .await?
            .into_iter()
            .filter_map(|e| {
                if crate::records::parse_worker_key(&e.key).is_some() {
                    codec::decode::<WorkerRecord>(name, &e.key, &e.value)
                        .ok()
                        .map(|r| r.version)
                } else if parse_page_key(&e.key).is_some() {
                    codec::decode::<CommitPage>(name, &e.key, &e.value)
                        .ok()
                        .map(|p| p.version)
                } else {
                    None
                }
            })
            .max();
        Ok(committed.max(listed).unwrap_or(0))
    }

    /// When no commit can be read (the `cluster` record garbage or gone): the map the worker
    /// values left in the bucket still describe — each worker's newer slot, and a partition
    /// listed by two workers kept by the newer value. `None` while a commit can be read (its
    /// map is the one to build on) or when no worker value is left.
    ///
    /// A hint for the strategy's stickiness only (for a leader that has no map of its own
    /// yet), so that a crash handled meanwhile moves little beyond the crashed worker's
    /// partitions: who may still hold what is decided by
    /// [`unknown_holders`](Self::unknown_holders) (every live worker releases first).
    pub(crate) async fn last_known_map(&self) -> Result<Option<AssignmentMap>> {
        if self.committed.record.is_some() {
            return Ok(None);
        }
        let pattern = format!("{}>", crate::records::WORKER_KEY_PREFIX);
        let mut newest: BTreeMap<WorkerId, WorkerRecord> = BTreeMap::new();
        for entry in self.bucket.list(&pattern).await? {
            let Some((worker, _)) = crate::records::parse_worker_key(&entry.key) else {
                continue;
            };
            let Ok(record) =
                codec::decode::<WorkerRecord>(self.bucket.name(), &entry.key, &entry.value)
            else {
                continue;
            };
            if newest
                .get(&worker)
                .is_none_or(|r| r.version < record.version)
            {
                newest.insert(worker, record);
            }
        }
        if newest.is_empty() {
            return Ok(None);
        }
        // Partition keys → (version of the value listing it, its worker): the newest listing
        // wins.
        let mut owner: std::collections::HashMap<&[String], (u64, &WorkerId)> =
            std::collections::HashMap::new();
        for (worker, record) in &newest {
            for partition in &record.partitions {
                let listing = (record.version, worker);
                owner
                    .entry(partition.keys())
                    .and_modify(|o| {
                        if listing.0 > o.0 {
                            *o = listing;
                        }
                    })
                    .or_insert(listing);
            }
        }
        let mut map = AssignmentMap::with_workers(newest.keys());
        for (worker, record) in &newest {
            for partition in &record.partitions {
                if owner
                    .get(partition.keys())
                    .is_some_and(|(_, w)| *w == worker)
                {
                    map.push(worker, partition.clone());
                }
            }
        }
        Ok(Some(map))
    }

    /// Live members whose holdings the committed state does not tell: all of them when the
    /// commit is garbage, or gone after something was committed (worker values remain, or a
    /// member's heartbeat reports a version: the bucket was deleted and created again under
    /// workers that still hold what the lost commit gave them); otherwise those whose
    /// committed value is garbage or missing.
    async fn unknown_holders(&self, members: &Members) -> Result<BTreeSet<WorkerId>> {
        let live = || members.released.keys().cloned().collect::<BTreeSet<_>>();
        if self.committed.garbage.iter().any(|k| k == CLUSTER_KEY) {
            return Ok(live());
        }
        match &self.committed.record {
            None if members.floor > 0 => Ok(live()),
            None => {
                let pattern = format!("{}>", crate::records::WORKER_KEY_PREFIX);
                let values = self.bucket.list(&pattern).await?;
                Ok(if values.is_empty() {
                    BTreeSet::new()
                } else {
                    live()
                })
            }
            Some((record, _)) => Ok(record
                .workers
                .keys()
                .filter(|w| !self.committed.workers.contains_key(*w))
                .filter(|w| members.released.contains_key(*w))
                .cloned()
                .collect()),
        }
    }

    /// Rewrites the cluster record with a new phase, same version (followers mirror phases).
    ///
    /// `floor` is the highest version the live workers say they applied: when the record is
    /// missing (its bucket recreated) but workers hold a map, or the bucket's version floor or
    /// worker values show that maps were published, no version-0 stub is written — readers
    /// would see the version go back.
    pub(crate) async fn set_phase(&mut self, phase: ClusterPhase, floor: u64) -> Result<()> {
        let (current, cluster_rev) = self.fence().await?;
        if cluster_rev != self.committed.cluster_revision {
            // Someone committed since we last read or wrote (a commit of ours whose reply was
            // lost, a deposed leader's late write): take in what it committed before writing
            // over it, or the next publish would plan its hand-offs from older records.
            self.committed = crate::records::read_published(&*self.bucket).await?;
        }
        let Some(mut record) = current else {
            if cluster_rev.is_some()
                || self.committed.version() > 0
                || floor > 0
                || self
                    .records_floor(self.bucket.get(FLOOR_KEY).await?)
                    .await?
                    > 0
            {
                // The record is garbage or was lost after maps were published: a stub would
                // take the version back. The next publish heals it; skip the announcement.
                return Ok(());
            }
            // Nothing published yet: a phase-only record would have no map; write a stub with
            // version 0 so followers see the cold-start window.
            let record = ClusterRecord {
                version: 0,
                term: self.term,
                phase,
                reason: "phase".into(),
                workers: BTreeMap::new(),
                partition_count: 0,
                lifecycle: Lifecycle::ColdStart,
                first_assignment_at: None,
                lineages: BTreeMap::new(),
                parked: BTreeMap::new(),
            };
            let revision = self.commit(&record, cluster_rev).await?;
            self.committed.record = Some((record, revision));
            self.committed.cluster_revision = Some(revision);
            return Ok(());
        };
        if record.phase == phase && record.term == self.term {
            // In place already, possibly by a write of ours whose reply was lost: its pages
            // may not be.
            self.write_pages(record_pages(&self.committed)).await;
            return Ok(());
        }
        record.phase = phase;
        record.term = self.term;
        let revision = self.commit(&record, cluster_rev).await?;
        self.committed.record = Some((record, revision));
        self.committed.cluster_revision = Some(revision);
        self.write_pages(record_pages(&self.committed)).await;
        Ok(())
    }

    async fn commit(&self, record: &ClusterRecord, expected: Option<u64>) -> Result<u64> {
        let value = codec::encode(record)?;
        let result = match expected {
            Some(rev) => self.bucket.update(CLUSTER_KEY, value, rev).await,
            None => self.bucket.create(CLUSTER_KEY, value).await,
        };
        result.map_err(|e| match e {
            // Someone else committed between our read and write: only another leader does.
            e if e.is_conflict() => Error::LeadershipLost,
            other => Error::Store(other),
        })
    }
}

/// The pages of the workers the committed record names.
fn record_pages(committed: &Published) -> BTreeSet<usize> {
    committed
        .record
        .as_ref()
        .map(|(record, _)| record.workers.keys().map(page_of).collect())
        .unwrap_or_default()
}

/// Writes `copy` into its page unless the page already copies a commit at least as recent
/// ([`CommitPage::order`]); returns the page key's revision afterwards. `known` is the
/// revision this leader last knew the key at; without it, or when the key moved on since, the
/// page is read first. A lost revision race is tried again from a fresh read.
async fn write_page(
    bucket: &dyn Bucket,
    page: usize,
    copy: &CommitPage,
    known: Option<u64>,
) -> Result<u64> {
    use backon::Retryable;
    let key = page_key(page);
    let value = codec::encode(copy)?;
    let trust_known = std::sync::atomic::AtomicBool::new(known.is_some());
    let attempt = || async {
        let expected = match known {
            Some(rev) if trust_known.swap(false, std::sync::atomic::Ordering::Relaxed) => Some(rev),
            _ => match bucket.get(&key).await? {
                None => None,
                Some(entry) => {
                    let there = codec::decode::<CommitPage>(bucket.name(), &key, &entry.value)
                        .inspect_err(crate::records::garbage_seen)
                        .ok();
                    if there.is_some_and(|t| t.order() >= copy.order()) {
                        return Ok(entry.revision);
                    }
                    Some(entry.revision)
                }
            },
        };
        let written = match expected {
            Some(rev) => bucket.update(&key, value.clone(), rev).await,
            None => bucket.create(&key, value.clone()).await,
        };
        written.map_err(Error::Store)
    };
    let lost_race = |e: &Error| {
        crate::store::is_conflict(e)
            || matches!(
                e,
                Error::Store(crate::store::StoreError::AlreadyExists { .. })
            )
    };
    attempt
        .retry(crate::store::conflict_backoff().with_max_times(3))
        .when(lost_race)
        .await
}

/// The version of the next publish, `base` being the highest version known anywhere (the
/// commit, the `floor` key, the worker values, what live workers applied): the next one.
///
/// When no commit can be read — a new group, or a `cluster` record that is garbage or gone,
/// for example with the assignment bucket deleted while its workers restarted — the floors
/// that are left may lag or be gone too: the version is then also at least `clock_ms`, the
/// publishing leader's clock in Unix milliseconds. A group's first version is that clock, so
/// a group that lost everything still publishes above every version it published before, as
/// long as it published fewer than one map per millisecond and the new leader's clock is not
/// behind the old leaders' by more than the time in between. Epochs, which are versions, keep
/// increasing across such a loss, and the fencing tokens applications stored stay valid.
/// While a commit can be read, versions count publishes (one more each).
fn next_version(base: u64, clock_ms: Option<u64>) -> u64 {
    let next = base.saturating_add(1);
    clock_ms.map_or(next, |clock| next.max(clock))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::partition::Partition;
    use crate::store::{MemoryStore, Store};

    fn map(owners: &[(&str, &[&str])]) -> AssignmentMap {
        let ids: Vec<WorkerId> = owners.iter().map(|(w, _)| WorkerId::new(*w)).collect();
        let mut m = AssignmentMap::with_workers(&ids);
        for (w, ps) in owners {
            for p in *ps {
                m.push(&WorkerId::new(*w), Partition::new([*p], 1).unwrap());
            }
        }
        m
    }

    /// An assignment bucket in a fresh memory store.
    async fn assignment_bucket() -> Arc<dyn crate::store::Bucket> {
        MemoryStore::new()
            .bucket(&crate::store::BucketSpec::new("parti-assignment"))
            .await
            .unwrap()
    }

    fn meta() -> PublishMeta {
        PublishMeta {
            phase: ClusterPhase::Stable,
            reason: "test".into(),
            lifecycle: Lifecycle::Running,
            parked: BTreeMap::new(),
        }
    }

    #[test]
    fn versions_count_publishes_and_start_at_the_clock_without_a_commit() {
        let now = 1_764_480_006_000;
        assert_eq!(next_version(7, None), 8, "after a commit: the next one");
        assert_eq!(next_version(0, Some(now)), now, "nothing known: the clock");
        assert_eq!(
            next_version(0, Some(0)),
            1,
            "a clock before 1970 still gives one"
        );
        assert_eq!(
            next_version(7, Some(now)),
            now,
            "no commit, a lagging floor: the clock"
        );
        assert_eq!(
            next_version(now + 5, Some(now)),
            now + 6,
            "ahead: the next one"
        );
        assert_eq!(next_version(u64::MAX, None), u64::MAX, "no overflow");
        assert_eq!(next_version(u64::MAX, Some(now)), u64::MAX);
    }

    /// What `worker`'s commit page says of it: (version, the revision of its value); `None`
    /// without a readable page.
    async fn page_says(bucket: &dyn Bucket, worker: &str) -> Option<(u64, Option<u64>)> {
        let worker = WorkerId::new(worker);
        let key = page_key(page_of(&worker));
        let entry = bucket.get(&key).await.unwrap()?;
        let page: CommitPage = codec::decode(bucket.name(), &key, &entry.value).ok()?;
        Some((page.version, page.workers.get(&worker).copied()))
    }

    #[tokio::test]
    async fn every_worker_of_a_commit_and_of_the_one_before_finds_it_on_its_page() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let mut publisher = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        let v1 = publisher
            .publish(&map(&[("w0", &["p0"]), ("w1", &["p1"])]), meta(), &members)
            .await
            .unwrap();
        // A live worker the map leaves out (a newcomer, a refused one) reads the commit too.
        let live = Members {
            released: [(WorkerId::new("w9"), 0)].into(),
            ..Members::default()
        };
        let v2 = publisher
            .publish(&map(&[("w0", &["p0", "p1"])]), meta(), &live)
            .await
            .unwrap();
        assert_eq!(page_says(&*bucket, "w9").await, Some((v2, None)));
        let committed = &publisher.committed().record.as_ref().unwrap().0;
        assert_eq!(
            page_says(&*bucket, "w0").await,
            Some((v2, committed.workers.get(&WorkerId::new("w0")).copied()))
        );
        // The removed worker reads that the commit no longer names it.
        assert_eq!(page_says(&*bucket, "w1").await, Some((v2, None)));
        assert!(v2 > v1);
        // A phase change is copied too.
        let scaling = ClusterPhase::Scaling {
            reason: crate::state::ScalingReason::ColdStart,
            until_ms: 1,
        };
        publisher.set_phase(scaling, 0).await.unwrap();
        let key = page_key(page_of(&WorkerId::new("w0")));
        let page: CommitPage =
            codec::decode("a", &key, &bucket.get(&key).await.unwrap().unwrap().value).unwrap();
        assert_eq!((page.version, page.phase), (v2, scaling));
    }

    #[tokio::test]
    async fn a_page_changed_under_the_leader_is_written_again_but_never_back() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let m = map(&[("w0", &["p0"])]);
        let mut old = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        let v1 = old.publish(&m, meta(), &members).await.unwrap();
        let key = page_key(page_of(&WorkerId::new("w0")));

        // Garbage over the page: the watch reports the write, the repair writes the page again.
        let junk = bucket.put(&key, b"junk".to_vec().into()).await.unwrap();
        assert!(old.page_written(&key, junk));
        assert!(old.has_stale_pages());
        old.repair_pages().await;
        assert!(!old.has_stale_pages());
        assert_eq!(page_says(&*bucket, "w0").await.map(|(v, _)| v), Some(v1));
        // Its own write, seen late by the watch, is no reason to write again.
        let own = bucket.get(&key).await.unwrap().unwrap().revision;
        assert!(!old.page_written(&key, own));

        // A newer leader commits and writes the page; the old one, told of that write, leaves
        // it: its copy is of an older commit.
        let mut new = Publisher::load(Arc::clone(&bucket), 2).await.unwrap();
        new.repair_pages().await;
        let v2 = new.publish(&m, meta(), &members).await.unwrap();
        let newer = bucket.get(&key).await.unwrap().unwrap().revision;
        assert!(old.page_written(&key, newer));
        old.repair_pages().await;
        assert_eq!(page_says(&*bucket, "w0").await.map(|(v, _)| v), Some(v2));
        assert_eq!(bucket.get(&key).await.unwrap().unwrap().revision, newer);
        assert!(!old.page_written(&key, newer), "already known");
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_that_could_not_be_written_is_due_again_within_a_fraction_of_a_second() {
        let store = MemoryStore::new();
        let bucket = store
            .bucket(&crate::store::BucketSpec::new("parti-assignment"))
            .await
            .unwrap();
        let mut publisher = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        assert!(
            publisher.pages_due().is_some_and(|at| at <= now()),
            "a new leader looks at the pages at once"
        );
        let v = publisher
            .publish(&map(&[("w0", &["p0"])]), meta(), &Members::default())
            .await
            .unwrap();
        publisher.repair_pages().await;
        assert_eq!(
            publisher.pages_due(),
            None,
            "every page written and looked at"
        );
        let key = page_key(page_of(&WorkerId::new("w0")));
        let junk = bucket.put(&key, b"junk".to_vec().into()).await.unwrap();
        assert!(publisher.page_written(&key, junk));
        assert!(
            publisher.pages_due().is_some_and(|at| at <= now()),
            "due at once"
        );

        // The page write fails: tried again 100 ms later, not at the next source check.
        let page = page_of(&WorkerId::new("w0"));
        store.faults().fail_next(1);
        publisher.write_pages(BTreeSet::from([page])).await;
        let ms = std::time::Duration::from_millis;
        let due_in = |p: &Publisher| p.pages_due().map(|at| at.saturating_duration_since(now()));
        let about = |d: std::time::Duration| Some(d - ms(1)..=d + ms(1));
        assert!(about(ms(100)).is_some_and(|r| due_in(&publisher).is_some_and(|d| r.contains(&d))));
        // So is a repair that cannot read the commit, a little later each time.
        tokio::time::advance(ms(100)).await;
        store.faults().fail_next(1);
        publisher.repair_pages().await;
        assert!(about(ms(200)).is_some_and(|r| due_in(&publisher).is_some_and(|d| r.contains(&d))));
        tokio::time::advance(ms(200)).await;
        publisher.repair_pages().await;
        assert_eq!(publisher.pages_due(), None);
        assert_eq!(page_says(&*bucket, "w0").await.map(|(v, _)| v), Some(v));
    }

    #[tokio::test]
    async fn a_new_leader_writes_the_pages_its_predecessor_did_not() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let mut first = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        let v = first
            .publish(&map(&[("w0", &["p0"]), ("w1", &["p1"])]), meta(), &members)
            .await
            .unwrap();
        // As if it stopped between the commit and the pages.
        for w in ["w0", "w1"] {
            let key = page_key(page_of(&WorkerId::new(w)));
            bucket.delete(&key, None).await.unwrap();
        }
        let mut next = Publisher::load(Arc::clone(&bucket), 2).await.unwrap();
        assert!(next.has_stale_pages());
        next.repair_pages().await;
        assert!(!next.has_stale_pages());
        for w in ["w0", "w1"] {
            assert_eq!(page_says(&*bucket, w).await.map(|(v, _)| v), Some(v), "{w}");
        }
        // Every page was looked at; none that would name no one was created.
        let pages = bucket.list("commit.>").await.unwrap();
        let expected: BTreeSet<usize> = ["w0", "w1"]
            .iter()
            .map(|w| page_of(&WorkerId::new(*w)))
            .collect();
        assert_eq!(pages.len(), expected.len());
    }

    #[tokio::test]
    async fn a_phase_write_whose_reply_was_lost_still_gets_its_pages() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let mut publisher = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        let v = publisher
            .publish(&map(&[("w0", &["p0"])]), meta(), &members)
            .await
            .unwrap();
        // The phase write lands, its reply is lost: the leader's retry finds the phase in place.
        let scaling = ClusterPhase::Scaling {
            reason: crate::state::ScalingReason::ColdStart,
            until_ms: 1,
        };
        let (mut record, revision) = publisher.committed().record.clone().unwrap();
        record.phase = scaling;
        bucket
            .update("cluster", codec::encode(&record).unwrap(), revision)
            .await
            .unwrap();
        publisher.set_phase(scaling, 0).await.unwrap();
        let key = page_key(page_of(&WorkerId::new("w0")));
        let page: CommitPage =
            codec::decode("a", &key, &bucket.get(&key).await.unwrap().unwrap().value).unwrap();
        assert_eq!((page.version, page.phase), (v, scaling));
        // Asked again, nothing is written: the page is at that commit already.
        let before = bucket.get(&key).await.unwrap().unwrap().revision;
        publisher.set_phase(scaling, 0).await.unwrap();
        assert_eq!(bucket.get(&key).await.unwrap().unwrap().revision, before);
    }

    #[tokio::test]
    async fn a_new_leader_rewrites_the_lagging_page_of_a_worker_the_commit_removed() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let mut first = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        first
            .publish(&map(&[("w0", &["p0"]), ("w1", &["p1"])]), meta(), &members)
            .await
            .unwrap();
        let key = page_key(page_of(&WorkerId::new("w1")));
        let before = bucket.get(&key).await.unwrap().unwrap().value;
        let v2 = first
            .publish(&map(&[("w0", &["p0", "p1"])]), meta(), &members)
            .await
            .unwrap();
        // As if the page of the removed worker had not been written for v2.
        bucket.put(&key, before).await.unwrap();
        assert_ne!(page_says(&*bucket, "w1").await, Some((v2, None)));
        let mut next = Publisher::load(Arc::clone(&bucket), 2).await.unwrap();
        next.repair_pages().await;
        assert_eq!(page_says(&*bucket, "w1").await, Some((v2, None)));
        assert!(!next.has_stale_pages());
    }

    #[tokio::test]
    async fn a_leader_whose_commit_was_replaced_leaves_the_pages_alone() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let m = map(&[("w0", &["p0"])]);
        let mut old = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        old.publish(&m, meta(), &members).await.unwrap();
        let key = page_key(page_of(&WorkerId::new("w0")));
        // Garbage over the commit and the page: the old leader's copy is no longer what
        // `cluster` holds, so it does not write it (its repair republishes instead).
        bucket
            .put("cluster", b"junk".to_vec().into())
            .await
            .unwrap();
        let junk = bucket.put(&key, b"junk".to_vec().into()).await.unwrap();
        assert!(old.page_written(&key, junk));
        old.repair_pages().await;
        assert_eq!(bucket.get(&key).await.unwrap().unwrap().revision, junk);
        assert!(old.has_stale_pages(), "the page stays to be written");
    }

    /// The first publish of a group whose assignment bucket was lost with every worker down
    /// starts above what it published before: without a commit, versions start at the clock.
    #[tokio::test]
    async fn a_group_that_lost_its_bucket_starts_above_its_old_versions() {
        let store = MemoryStore::new();
        let spec = crate::store::BucketSpec::new("parti-assignment");
        let bucket = store.bucket(&spec).await.unwrap();
        let members = Members::default();
        let m = map(&[("w0", &["p0"]), ("w1", &["p1"])]);
        let mut first = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        let before = crate::clock::process_unix_ms();
        let v1 = first.publish(&m, meta(), &members).await.unwrap();
        assert!(
            v1 >= before,
            "the first version is the clock: {v1} < {before}"
        );
        let mut last = v1;
        for _ in 0..3 {
            last = first.publish(&m, meta(), &members).await.unwrap().max(last);
        }
        assert!(store.delete_bucket(&spec.name));
        // A real gap: versions count publishes, the clock counts milliseconds.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::clock::process_unix_ms() <= last && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        let bucket = store.bucket(&spec).await.unwrap();
        let mut after = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        // A live worker that applied only the first version: a floor that lags.
        let lagging = Members {
            floor: v1,
            ..Members::default()
        };
        let v = after.publish(&m, meta(), &lagging).await.unwrap();
        assert!(
            v > last,
            "version went back after the bucket was lost: {v} <= {last}"
        );
    }

    /// The cold-start announcement is a version-0 record with no map: written into a bucket
    /// with no trace of a publish, never over published state — a `cluster` record lost
    /// under a `floor` key, or an empty bucket while live workers report a version — where
    /// readers would see the version go back to 0.
    #[tokio::test]
    async fn a_version_0_announcement_is_never_written_over_published_state() {
        let cold = ClusterPhase::Scaling {
            reason: crate::state::ScalingReason::ColdStart,
            until_ms: 1,
        };
        let read = |bucket: Arc<dyn crate::store::Bucket>| async move {
            crate::records::read_published(&*bucket)
                .await
                .unwrap()
                .record
                .map(|(r, _)| r.version)
        };
        let store = MemoryStore::new();
        let spec = |name: &str| crate::store::BucketSpec::new(name);

        // Nothing anywhere: the announcement is written, as version 0.
        let fresh = store.bucket(&spec("fresh")).await.unwrap();
        let mut leader = Publisher::load(Arc::clone(&fresh), 1).await.unwrap();
        leader.set_phase(cold, 0).await.unwrap();
        assert_eq!(read(Arc::clone(&fresh)).await, Some(0));

        // The record lost, its `floor` key left: nothing is written.
        let lost = store.bucket(&spec("lost")).await.unwrap();
        let mut first = Publisher::load(Arc::clone(&lost), 1).await.unwrap();
        let m = map(&[("w0", &["p0"])]);
        first
            .publish(&m, meta(), &Members::default())
            .await
            .unwrap();
        lost.delete(CLUSTER_KEY, None).await.unwrap();
        let mut next = Publisher::load(Arc::clone(&lost), 2).await.unwrap();
        next.set_phase(cold, 0).await.unwrap();
        assert_eq!(read(Arc::clone(&lost)).await, None);

        // An empty bucket under workers that report a version: nothing is written.
        let recreated = store.bucket(&spec("recreated")).await.unwrap();
        let mut leader = Publisher::load(Arc::clone(&recreated), 3).await.unwrap();
        leader.set_phase(cold, 7).await.unwrap();
        assert_eq!(read(Arc::clone(&recreated)).await, None);
    }

    /// Garbage over the commit: the next leader cannot read the map, but the worker values
    /// left say where partitions were — each worker's newer slot, a partition moved since
    /// kept by its newer listing.
    #[tokio::test]
    async fn without_a_readable_commit_the_worker_values_give_the_last_known_map() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let mut leader = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        assert_eq!(leader.last_known_map().await.unwrap(), None, "nothing yet");
        let first = map(&[("w0", &["p0", "p1"]), ("w1", &["p2"])]);
        leader.publish(&first, meta(), &members).await.unwrap();
        // p1 moves to w1: w1's value is written again, w0's too (its newer slot drops p1).
        let second = map(&[("w0", &["p0"]), ("w1", &["p1", "p2"])]);
        leader.publish(&second, meta(), &members).await.unwrap();
        assert_eq!(
            leader.last_known_map().await.unwrap(),
            None,
            "a commit to build on"
        );

        bucket
            .put(CLUSTER_KEY, bytes::Bytes::from_static(b"{garbage"))
            .await
            .unwrap();
        let next = Publisher::load(Arc::clone(&bucket), 2).await.unwrap();
        assert_eq!(next.last_known_map().await.unwrap(), Some(second.clone()));

        // Garbage over w0's newer value as well: its older one lists p1 too, but w1's newer
        // listing of p1 wins.
        let w0_newer = worker_key(&WorkerId::new("w0"), Slot::B);
        bucket
            .put(&w0_newer, bytes::Bytes::from_static(b"[]"))
            .await
            .unwrap();
        assert_eq!(next.last_known_map().await.unwrap(), Some(second));
    }

    /// A commit this leader did not see land (its reply lost, or a deposed leader's) must be
    /// taken in by a phase write over it: the next publish plans hand-offs from its records.
    #[tokio::test]
    async fn a_phase_write_over_an_unseen_commit_takes_that_commit_in() {
        let bucket = assignment_bucket().await;
        let members = Members::default();
        let mut a = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        let first = map(&[("w0", &["p0"]), ("w1", &["p1"])]);
        let v1 = a.publish(&first, meta(), &members).await.unwrap();
        // The same term commits again without `a` seeing it land.
        let mut unseen = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        let second = map(&[("w0", &["p0", "p1"]), ("w1", &[])]);
        let v2 = unseen.publish(&second, meta(), &members).await.unwrap();
        assert_eq!(v2, v1 + 1, "over a commit, versions count publishes");

        a.set_phase(ClusterPhase::Rebalancing, 0).await.unwrap();
        assert_eq!(
            a.committed().map,
            second,
            "built on the commit it wrote over"
        );
        assert_eq!(a.committed().version(), v2);
        let read = crate::records::read_published(&*bucket).await.unwrap();
        assert_eq!(read.map, second);
        assert_eq!(read.cluster_revision, a.committed().cluster_revision);
    }

    /// Garbage over the commit right after a publish, read by the next phase write: the
    /// commit is not intact (the leader's repair commits its map again), although the `cluster`
    /// revision is the one the leader last read.
    #[tokio::test]
    async fn garbage_a_phase_write_read_is_no_intact_commit() {
        let bucket = assignment_bucket().await;
        let mut publisher = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();
        publisher
            .publish(&map(&[("w0", &["p0"])]), meta(), &Members::default())
            .await
            .unwrap();
        assert!(publisher.commit_intact().await.unwrap());
        bucket
            .put(CLUSTER_KEY, b"junk".to_vec().into())
            .await
            .unwrap();
        publisher
            .set_phase(ClusterPhase::Rebalancing, 0)
            .await
            .unwrap();
        assert_eq!(
            publisher.committed().cluster_revision,
            bucket.get(CLUSTER_KEY).await.unwrap().map(|e| e.revision),
            "the phase write read the garbage"
        );
        assert!(!publisher.commit_intact().await.unwrap());
    }

    /// Publish time at scale on a real nats-server: 100,000 partitions over 1,000 workers, a
    /// cold publish (every value written) and the publish after a crash, beside the same values
    /// written one awaited put at a time. A benchmark, not a check; prints JSON:
    /// `cargo test --release -p parti --lib publish_at_scale -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a benchmark: run with --ignored"]
    async fn publish_at_scale() {
        use crate::strategy::{AssignmentStrategy, WeightedConsistentHash};
        let server = parti_testkit::NatsServer::start().await.unwrap();
        let js = async_nats::jetstream::new(server.client().await.unwrap());
        let store = crate::store::NatsStore::new(js);
        let bucket = store
            .bucket(&crate::store::BucketSpec::new("parti-assignment"))
            .await
            .unwrap();
        let (workers, partitions) = crate::partition::bench_fleet(1000, 100_000);
        let strategy = WeightedConsistentHash::default();
        let cold = strategy.assign(&workers, &partitions, None).unwrap();
        let crashed = strategy
            .assign(&workers[1..], &partitions, Some(&cold))
            .unwrap();
        let members = Members::default();
        let mut publisher = Publisher::load(Arc::clone(&bucket), 1).await.unwrap();

        let started = std::time::Instant::now();
        publisher.publish(&cold, meta(), &members).await.unwrap();
        let cold_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = std::time::Instant::now();
        publisher.publish(&crashed, meta(), &members).await.unwrap();
        let crash_ms = started.elapsed().as_secs_f64() * 1e3;
        let changed = crashed
            .iter()
            .filter(|(w, ps)| cold.partitions_of(w) != *ps)
            .count();
        let record_bytes = bucket.get(CLUSTER_KEY).await.unwrap().unwrap().value.len();

        // The cold publish's values again, one awaited put at a time (how it used to be done).
        let values: Vec<(String, bytes::Bytes)> = cold
            .iter()
            .map(|(w, ps)| {
                let record = WorkerRecord {
                    version: 9,
                    term: 1,
                    lifecycle: Lifecycle::Running,
                    partitions: ps.to_vec(),
                    pending: BTreeMap::new(),
                };
                (worker_key(w, Slot::A), codec::encode(&record).unwrap())
            })
            .collect();
        let bytes: usize = values.iter().map(|(_, v)| v.len()).sum();
        let started = std::time::Instant::now();
        for (key, value) in values {
            bucket.put(&key, value).await.unwrap();
        }
        let serial_ms = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "{}",
            serde_json::json!({
                "workers": 1000,
                "partitions": 100_000,
                "coldPublishMs": (cold_ms * 10.0).round() / 10.0,
                "coldValuesBytes": bytes,
                "coldSerialPutsMs": (serial_ms * 10.0).round() / 10.0,
                "serialOverPublish": (serial_ms / cold_ms * 100.0).round() / 100.0,
                "crashPublishMs": (crash_ms * 10.0).round() / 10.0,
                "crashValuesWritten": changed,
                "clusterRecordBytes": record_bytes,
            })
        );
    }
}
