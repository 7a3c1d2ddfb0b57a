//! The election loop around an [`ElectionAgent`].
//!
//! Follower, with a watch on the leader key (the election bucket given to
//! [`Elector::spawn`]): request once at start, then only when the watch says the key is vacant
//! — deleted, expired (the bucket's `max_age` leaves a marker), or absent from a snapshot — or
//! when it has shown no write of the key for longer than the TTL plus half a period (a safety
//! net for a missed marker or a watch that went quiet; the watch is reopened then). A live
//! leader renews every `ttl/3`, so a healthy watch sees it, and followers write nothing while it
//! lives. The follower polls every `ttl/3`, as it does without a watch, only while the watch
//! cannot tell (not open or synced yet, erroring; reopened when that lasts longer than the
//! TTL) and while the key stays vacant although requests are refused — an agent that does not
//! use the key (the watch is reopened once to rule out a missed write).
//!
//! Leader: renew every `ttl/3`, and at once when the watch sees the key deleted or expired; a
//! renewal that reports the lease lost means `Follower` at once; a renewal error is retried
//! quickly while the lease, counted from the start of the last successful renewal, has more
//! than a safety margin left; after that the worker steps down, so it never believes it leads
//! past its lease.
//!
//! A granted request is announced (`Leader`) only once no other worker can still believe in a
//! lease the watch knows of; the winner renews meanwhile. The watch knows of a lease for
//! `lease` after it saw a write of the key (until it sees a delete or expiry), for a poll
//! period plus `lease` after a refused request (the winner's write may have been missed), and
//! for `lease` after it shows the key again having lost sight of it (an error, the stream
//! ending) once the key was ever seen (a later session's watch starts that way). Without faults
//! that wait is over by the time the key can be created at all. It matters when the election
//! bucket was deleted and created again: a follower wins the new bucket's empty key while the
//! old leader trusts its last renewal until the next one fails. It costs up to a lease without
//! a leader when a watch error (a store outage, a reconnect) came less than a lease before the
//! leader crashed or released the key. A watch that went quiet is reopened without that wait:
//! no renewal has shown for longer than a lease, so every renewal seen has run out, and one
//! made unseen in a bucket that still exists shows in the new snapshot. Not covered: a watch
//! that went quiet while its leader still renewed, followed by the bucket created again; a
//! watch error queued while this worker's winning request ran (its wait is fixed before the
//! watch is read again); and a process that starts just as the bucket is recreated (it has seen
//! no lease).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{ElectionAgent, LEADER_KEY};
use crate::error::Result;
use crate::store::{Bucket, WatchEvent, WatchStream};

/// The shortest request/renew period accepted.
const MIN_PERIOD: Duration = Duration::from_millis(10);
/// The longest pause between retries of a failed renewal.
const MAX_RETRY: Duration = Duration::from_millis(250);
/// The first pause before reopening a watch that could not be opened or ended.
const REOPEN_MIN: Duration = Duration::from_millis(50);

/// Runs the election for one worker in the background.
#[derive(Debug)]
pub struct Elector {
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    agent: Arc<dyn ElectionAgent>,
    leadership: watch::Receiver<Leadership>,
    cancel: CancellationToken,
    task: AbortOnDropHandle<Result<()>>,
}

impl Elector {
    /// Starts the loop. With `bucket_for_watch` (the election bucket) a follower watches the
    /// leader key and contends only when it is vacated or its renewals stop showing (see the
    /// module docs); without it, it polls every `ttl/3`.
    ///
    /// Dropping the returned value stops the loop without releasing (like [`abort`](Self::abort)).
    pub fn spawn(agent: Arc<dyn ElectionAgent>, bucket_for_watch: Option<Arc<dyn Bucket>>) -> Self {
        Self::start(agent, bucket_for_watch, false)
    }

    /// [`spawn`](Self::spawn) for a worker that was running before (a session after its stable
    /// ID was lost): its watch starts blind, so that a lease won before the watch has shown the
    /// key for a lease is not announced yet — a leader of the earlier session's view may still
    /// trust its lease, in a bucket that may have been created again meanwhile.
    pub(crate) fn spawn_again(
        agent: Arc<dyn ElectionAgent>,
        bucket_for_watch: Option<Arc<dyn Bucket>>,
    ) -> Self {
        Self::start(agent, bucket_for_watch, true)
    }

    fn start(
        agent: Arc<dyn ElectionAgent>,
        bucket_for_watch: Option<Arc<dyn Bucket>>,
        blind: bool,
    ) -> Self {
        let (tx, leadership) = watch::channel(Leadership::Follower);
        let ttl = agent.lease_ttl();
        let period = (ttl / 3).max(MIN_PERIOD);
        // Longer than the TTL by half a renewal period: the expiry marker of a key that was
        // not renewed normally comes first.
        let stale = ttl.max(MIN_PERIOD) + period / 2;
        let lease = ttl.saturating_sub(ttl / 5);
        let runner = Runner {
            agent: agent.clone(),
            watch: bucket_for_watch.map(|bucket| {
                let mut watch = LeaderWatch::new(bucket, stale, period, lease);
                watch.blind = blind;
                watch
            }),
            tx,
            period,
            lease,
            retry: (period / 4).clamp(MIN_PERIOD, MAX_RETRY),
        };
        let cancel = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(runner.run(cancel.clone())));
        Self {
            agent,
            leadership,
            cancel,
            task,
        }
    }

    /// Whether this worker leads, and under which term.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// The agent the loop drives.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn agent(&self) -> &Arc<dyn ElectionAgent> {
        &self.agent
    }

    /// Stops the loop and releases the lease if this worker leads (announcing `Follower` first),
    /// so that a follower takes over at once (a watching follower sees the key deleted; a
    /// polling one takes over at its next poll).
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "election task failed");
                Ok(())
            }
        }
    }

    /// Stops the loop without releasing, as a crash would: the lease runs out by itself.
    pub fn abort(self) {
        self.task.abort();
    }
}

struct Runner {
    agent: Arc<dyn ElectionAgent>,
    watch: Option<LeaderWatch>,
    tx: watch::Sender<Leadership>,
    period: Duration,
    /// How long a successful request or renewal is trusted: the TTL less a safety margin.
    lease: Duration,
    retry: Duration,
}

impl Runner {
    /// Runs until cancelled; store calls in flight are finished, not dropped, so the agent's view
    /// of the lease stays exact for the final release.
    async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        while let Some(won) = self.follow(&cancel).await {
            let term = won.term;
            let Some(reason) = self.lead(&cancel, won).await else {
                break;
            };
            self.tx.send_replace(Leadership::Follower);
            tracing::warn!(term, reason, "stepped down");
            if self.agent.is_leader() {
                // Make the agent forget a lease we no longer trust; bounded, the store may be down.
                match tokio::time::timeout(self.period, self.agent.release()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "release after stepping down failed"),
                    Err(_) => tracing::warn!("release after stepping down timed out"),
                }
            }
            // The key may be free (it expired while we were cut off): `follow` requests at once.
        }
        if self.agent.is_leader() {
            self.tx.send_replace(Leadership::Follower);
            return self.agent.release().await;
        }
        Ok(())
    }

    /// When the next request is due, `last` being when the previous one was made (`None`: at
    /// once).
    fn next_request(&self, last: Option<Instant>) -> Instant {
        let Some(last) = last else {
            return Instant::now();
        };
        let poll = last + self.period;
        match &self.watch {
            Some(watch) => watch.next_request(poll),
            None => poll,
        }
    }

    /// Requests leadership (at once, then as [`next_request`](Self::next_request) says) until
    /// granted or cancelled (`None`).
    async fn follow(&mut self, cancel: &CancellationToken) -> Option<Won> {
        let mut last = None;
        loop {
            let due = self.next_request(last);
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep_until(due) => {}
                change = next_change(&mut self.watch) => match change {
                    Change::Vacated => tracing::debug!("leader key vacant; requesting"),
                    Change::Other => continue,
                },
            }
            if let Some(watch) = self.watch.as_mut() {
                watch.before_request();
            }
            let started = Instant::now();
            let result = self.agent.request().await;
            last = Some(Instant::now());
            if cancel.is_cancelled() {
                // A lease won just now is released by the caller.
                return None;
            }
            match result {
                Ok(Some(term)) => {
                    // Read before any event of our own write is taken from the watch.
                    let announce_at = self
                        .watch
                        .as_ref()
                        .and_then(LeaderWatch::lease_seen_until)
                        .unwrap_or(started);
                    return Some(Won {
                        term,
                        since: started,
                        announce_at,
                    });
                }
                Ok(None) => {
                    if let Some(watch) = self.watch.as_mut() {
                        watch.refused();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leadership request failed");
                    // Not at once again, even when the watch says the key is vacant: a request
                    // that fails after winning frees the key itself, and would retry in a loop.
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(self.period / 4) => {}
                    }
                }
            }
        }
    }

    /// Renews until the lease is lost (`Some(reason)`) or the loop is cancelled (`None`), and
    /// announces `Leader` once `won.announce_at` has passed (renewing meanwhile).
    async fn lead(&mut self, cancel: &CancellationToken, won: Won) -> Option<&'static str> {
        let Won {
            term,
            since,
            announce_at,
        } = won;
        let mut deadline = since + self.lease;
        let mut next_renew = since + self.period;
        let mut announced = false;
        if Instant::now() < announce_at {
            tracing::info!(
                term,
                wait_ms = u64::try_from(announce_at.duration_since(Instant::now()).as_millis())
                    .unwrap_or(u64::MAX),
                "won the leader lease while another worker may still believe in its own (the \
                 election bucket was recreated, or the watch lost sight of its renewals); \
                 leading once that lease has run out"
            );
        }
        loop {
            if !announced && Instant::now() >= announce_at && Instant::now() < deadline {
                announced = true;
                self.tx.send_replace(Leadership::Leader { term });
                tracing::info!(term, "leading");
            }
            let wake = if announced {
                next_renew.min(deadline)
            } else {
                next_renew.min(deadline).min(announce_at)
            };
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() < next_renew.min(deadline) {
                        // Woken to announce only.
                        continue;
                    }
                }
                change = next_change(&mut self.watch) => match change {
                    // Our key vanished: check at once rather than at the next renewal.
                    Change::Vacated => {}
                    Change::Other => continue,
                },
            }
            if Instant::now() >= deadline {
                return Some("the lease ran out without a successful renewal");
            }
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.agent.renew()).await {
                Ok(Ok(true)) => {
                    deadline = started + self.lease;
                    next_renew = started + self.period;
                }
                Ok(Ok(false)) => return Some("the lease was lost (renewal refused)"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lease renewal failed; retrying within the lease");
                    next_renew = Instant::now() + self.retry;
                }
                Err(_) => return Some("the lease ran out during a renewal"),
            }
        }
    }
}

/// A granted request.
#[derive(Debug, Clone, Copy)]
struct Won {
    term: u64,
    /// When the granting request started: the lease is counted from then.
    since: Instant,
    /// When `Leader` may be announced: once no other worker can still believe in a lease the
    /// watch saw it hold (see [`LeaderWatch::lease_seen_until`]).
    announce_at: Instant,
}

/// The next change the watch reports; never returns without a watch.
async fn next_change(watch: &mut Option<LeaderWatch>) -> Change {
    match watch {
        Some(watch) => watch.next_change().await,
        None => std::future::pending().await,
    }
}

/// What the watch says about the leader key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    /// The watch cannot tell (not open or not synced yet, erroring) since `since`.
    Unknown { since: Instant },
    /// The key was written, as last seen at `seen` (a snapshot entry or a put).
    Held { seen: Instant },
    /// The key was deleted or expired, or a snapshot did not have it.
    Vacant,
}

/// What one step of the watch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The key became vacant: contend (or, leading, check the lease) at once.
    Vacated,
    /// Anything else: the time of the next request may have moved.
    Other,
}

/// A watch on the leader key, reopened when it ends, errs for too long or goes quiet.
struct LeaderWatch {
    bucket: Arc<dyn Bucket>,
    stream: Option<WatchStream>,
    reopen_at: Instant,
    /// The pauses before the next reopen after a failure (doubling up to the request period);
    /// started afresh once a snapshot completes.
    backoff: crate::retry::Delays,
    max_backoff: Duration,
    /// How long the key may go without a visible write, or the watch without telling anything.
    stale: Duration,
    state: KeyState,
    /// Whether the snapshot in progress contained the key.
    saw_leader: bool,
    /// Requests refused while the key looked vacant, since it last looked held.
    vacant_refusals: u32,
    /// Whether the watch was reopened to check a vacancy that refused requests contradict.
    vacancy_rechecked: bool,
    /// How long a leader trusts a renewal (the elector's `lease`).
    lease: Duration,
    /// How often a follower polls while the key looks vacant (the elector's `period`).
    period: Duration,
    /// Whether the key was ever seen written: only then does a refused request speak of a
    /// lease (an agent that does not use the key is refused without one).
    key_seen: bool,
    /// Until when the writer of the latest write of the key seen may still believe it leads:
    /// `lease` after the write was seen (a renewal is seen after it started). Cleared by a
    /// delete or expiry of the key seen (when the watch lost sight in between, `blind_until`
    /// still holds).
    seen_lease_until: Option<Instant>,
    /// Whether the watch lost sight of the key (an error, the stream ending) while a lease may
    /// have been believed, and has shown nothing since: renewals may be landing unseen, and the
    /// bucket may be deleted and created again meanwhile.
    blind: bool,
    /// Until when a lease renewed while the watch was blind may still be believed: `lease`
    /// after the watch showed the key again. Only time clears it: a snapshot without the key,
    /// and any delete seen after it, may be a recreated bucket's, which says nothing about the
    /// old leader's lease.
    blind_until: Option<Instant>,
}

impl LeaderWatch {
    fn new(bucket: Arc<dyn Bucket>, stale: Duration, period: Duration, lease: Duration) -> Self {
        let now = Instant::now();
        Self {
            bucket,
            stream: None,
            reopen_at: now,
            backoff: crate::retry::doubling(REOPEN_MIN, period.max(REOPEN_MIN)),
            max_backoff: period.max(REOPEN_MIN),
            stale,
            state: KeyState::Unknown { since: now },
            saw_leader: false,
            vacant_refusals: 0,
            vacancy_rechecked: false,
            lease,
            period,
            key_seen: false,
            seen_lease_until: None,
            blind: false,
            blind_until: None,
        }
    }

    /// Until when another worker may still believe in a lease this watch saw it hold, or that
    /// it may have renewed while the watch was blind, if that is still ahead: a request granted
    /// before then must not be announced yet.
    fn lease_seen_until(&self) -> Option<Instant> {
        // `None` orders below every `Some`.
        let until = self.seen_lease_until.max(self.blind_until);
        // Still blind (a request is made while the watch cannot tell): at least a lease from now.
        let until = if self.blind {
            until.max(Some(Instant::now() + self.lease))
        } else {
            until
        };
        until.filter(|&until| until > Instant::now())
    }

    /// The watch shows the key again after losing sight of it (a completed snapshot, or a live
    /// event of a stream that carried on): renewals made meanwhile may have been missed, in a
    /// bucket that may since have been created again.
    fn regain_sight(&mut self) {
        if std::mem::take(&mut self.blind) {
            self.blind_until = Some(Instant::now() + self.lease);
        }
    }

    /// The watch lost sight of the key: once the key was ever seen (every lease it knows of
    /// comes from that), renewals may land unseen — even while it looks vacant, the moment a
    /// create is expected, and that create may be the write the watch misses.
    fn lost_sight(&mut self) {
        if self.key_seen {
            self.blind = true;
        }
    }

    /// When a follower requests next, `poll` being when polling would.
    fn next_request(&self, poll: Instant) -> Instant {
        match self.state {
            // Someone renews the key: only the safety net, in case the watch misses its end.
            KeyState::Held { seen } => poll.max(seen + self.stale),
            // Vacant after a refused request (an agent that does not use the key), or the watch
            // cannot tell: poll.
            KeyState::Vacant | KeyState::Unknown { .. } => poll,
        }
    }

    /// Drops the stream and opens a fresh one (with a fresh snapshot) at once.
    fn reopen(&mut self, why: &str) {
        tracing::debug!(reason = why, "reopening the leader watch");
        self.stream = None;
        self.reopen_at = Instant::now();
        self.state = KeyState::Unknown {
            since: Instant::now(),
        };
    }

    /// Called before each request: a watch that has shown no renewal of a held key, or nothing
    /// at all, for longer than `stale` has gone quiet (or the key's end was missed): reopen it.
    fn before_request(&mut self) {
        let now = Instant::now();
        match self.state {
            KeyState::Held { seen } if now >= seen + self.stale => {
                self.reopen("no renewal of the leader key seen within the TTL");
            }
            KeyState::Unknown { since } if now >= since + self.stale => {
                self.reopen("the leader watch has not synced within the TTL");
            }
            KeyState::Held { .. } | KeyState::Unknown { .. } | KeyState::Vacant => {}
        }
    }

    /// Called after a refused request. A key that still looks vacant although a request was
    /// refused twice means either an agent that does not use the key (nothing to see) or a watch
    /// that missed the winner's write: reopen it once to tell.
    ///
    /// A refusal also proves that another worker holds a lease the watch may not show (it
    /// missed the winner's write): until the winner's first renewal is seen, assume it renews
    /// just before each poll, so that a lease won at a later poll in a recreated bucket waits
    /// for it.
    fn refused(&mut self) {
        if self.key_seen {
            let until = Instant::now() + self.period + self.lease;
            self.seen_lease_until = self.seen_lease_until.max(Some(until));
        }
        if self.state != KeyState::Vacant {
            return;
        }
        self.vacant_refusals += 1;
        if self.vacant_refusals >= 2 && !self.vacancy_rechecked {
            self.vacancy_rechecked = true;
            self.reopen("requests are refused although the leader key looks vacant");
        }
    }

    fn held(&mut self) {
        self.key_seen = true;
        let now = Instant::now();
        self.state = KeyState::Held { seen: now };
        self.seen_lease_until = Some(now + self.lease);
        self.vacant_refusals = 0;
        self.vacancy_rechecked = false;
    }

    /// Marks the key vacant; a change only if it did not look vacant already.
    fn vacant(&mut self) -> Change {
        let was = std::mem::replace(&mut self.state, KeyState::Vacant);
        if was == KeyState::Vacant {
            Change::Other
        } else {
            Change::Vacated
        }
    }

    fn unknown(&mut self) {
        if !matches!(self.state, KeyState::Unknown { .. }) {
            self.state = KeyState::Unknown {
                since: Instant::now(),
            };
        }
    }

    /// The next change. Cancel-safe: every state change is made before an await point.
    async fn next_change(&mut self) -> Change {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                tokio::time::sleep_until(self.reopen_at).await;
                match self.bucket.watch(LEADER_KEY).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        self.saw_leader = false;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot watch the leader key");
                        self.reopen_at = Instant::now() + self.backoff.next_delay();
                    }
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(WatchEvent::Init)) => self.saw_leader = false,
                Some(Ok(WatchEvent::InitApply(_))) => self.saw_leader = true,
                Some(Ok(WatchEvent::InitDone)) => {
                    self.backoff = crate::retry::doubling(REOPEN_MIN, self.max_backoff);
                    self.regain_sight();
                    if !self.saw_leader {
                        return self.vacant();
                    }
                    self.held();
                    return Change::Other;
                }
                Some(Ok(WatchEvent::Put(_))) => {
                    self.regain_sight();
                    self.held();
                    return Change::Other;
                }
                // A new end of a lease: contend even if the key already looked vacant.
                Some(Ok(WatchEvent::Deleted { .. } | WatchEvent::Expired { .. })) => {
                    self.regain_sight();
                    self.state = KeyState::Vacant;
                    self.seen_lease_until = None;
                    return Change::Vacated;
                }
                Some(Err(e)) => {
                    // The stream carries on (with a fresh snapshot when it must); poll meanwhile.
                    tracing::debug!(error = %e, "leader watch error");
                    self.lost_sight();
                    self.unknown();
                    return Change::Other;
                }
                None => {
                    self.stream = None;
                    self.reopen_at = Instant::now() + self.backoff.next_delay();
                    self.lost_sight();
                    self.unknown();
                    return Change::Other;
                }
            }
        }
    }
}

/// Whether this worker leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Leadership {
    /// This worker leads, under `term`.
    Leader {
        /// The term (fencing token) of this leadership.
        term: u64,
    },
    /// Another worker leads, or nobody does.
    Follower,
}

#[cfg_attr(not(feature = "tools"), allow(dead_code))]
impl Leadership {
    /// True for [`Leadership::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leader { .. })
    }

    /// The term while leading.
    pub fn term(&self) -> Option<u64> {
        match self {
            Self::Leader { term } => Some(*term),
            Self::Follower => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::election::{NatsLeaseElection, bucket_spec};
    use crate::partition::WorkerId;
    use crate::store::probe::Probe;
    use crate::store::{MemoryStore, Store};

    const TTL: Duration = Duration::from_secs(3);

    async fn contenders(n: usize) -> (Vec<Option<Elector>>, Vec<Arc<Probe>>) {
        contenders_in(&MemoryStore::new(), n).await
    }

    async fn contenders_in(
        store: &MemoryStore,
        n: usize,
    ) -> (Vec<Option<Elector>>, Vec<Arc<Probe>>) {
        let mut electors = Vec::new();
        let mut probes = Vec::new();
        for i in 0..n {
            let bucket = store
                .client()
                .bucket(&bucket_spec("election", TTL, 1))
                .await
                .unwrap();
            let probe = Probe::new(bucket);
            let agent = NatsLeaseElection::new(
                probe.clone(),
                WorkerId::new(format!("w-{i}")),
                format!("i-{i}"),
                TTL,
            );
            electors.push(Some(Elector::spawn(Arc::new(agent), Some(probe.clone()))));
            probes.push(probe);
        }
        (electors, probes)
    }

    fn leaders(electors: &[Option<Elector>]) -> Vec<usize> {
        electors
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.as_ref()
                    .is_some_and(|e| e.leadership().borrow().is_leader())
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Advances (paused) time in small steps until exactly one elector leads.
    async fn one_leader(electors: &[Option<Elector>], within: Duration) -> (usize, Duration) {
        let start = Instant::now();
        while start.elapsed() <= within {
            if let [leader] = leaders(electors)[..] {
                return (leader, start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no single leader within {within:?}: {:?}",
            leaders(electors)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_leader_writes_while_it_renews() {
        let (electors, probes) = contenders(5).await;
        let (leader, _) = one_leader(&electors, Duration::from_secs(1)).await;
        tokio::time::sleep(TTL).await;
        let before: Vec<u64> = probes.iter().map(|p| p.writes()).collect();
        tokio::time::sleep(10 * TTL).await;
        for (i, probe) in probes.iter().enumerate() {
            let made = probe.writes() - before[i];
            if i == leader {
                assert!((29..=31).contains(&made), "leader renewed {made} times");
            } else {
                assert_eq!(made, 0, "follower {i} wrote");
            }
            assert_eq!(probe.watches(), 1, "watch of {i} reopened");
        }
        assert_eq!(leaders(&electors), [leader]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once() {
        let (mut electors, _) = contenders(3).await;
        let (old, _) = one_leader(&electors, Duration::from_secs(1)).await;
        tokio::time::sleep(TTL).await;
        electors[old].take().unwrap().stop().await.unwrap();
        let (new, took) = one_leader(&electors, Duration::from_secs(1)).await;
        assert_ne!(new, old);
        assert!(took <= Duration::from_millis(50), "took {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_taken_on_the_expiry_event() {
        let (mut electors, probes) = contenders(3).await;
        let (old, _) = one_leader(&electors, Duration::from_secs(1)).await;
        tokio::time::sleep(TTL).await;
        let before: Vec<u64> = probes.iter().map(|p| p.writes()).collect();
        electors[old].take().unwrap().abort();
        let (new, took) = one_leader(&electors, TTL + Duration::from_millis(100)).await;
        assert_ne!(new, old);
        for (i, probe) in probes.iter().enumerate() {
            if i != old && i != new {
                // One refused create, on the expiry event.
                assert_eq!(probe.writes() - before[i], 1, "follower {i}");
            }
        }
        assert!(took <= TTL, "took {took:?}");
    }

    /// The election bucket deleted and created again under a leader: a follower wins the lease
    /// in the new bucket before the old leader's next renewal finds its key gone. It leads
    /// only once a lease renewed just before the bucket went would have run out, so that two
    /// workers never lead at once; and not much later.
    #[tokio::test(start_paused = true)]
    async fn a_lease_won_in_a_recreated_bucket_waits_out_the_old_one() {
        let store = MemoryStore::new();
        let (electors, _) = contenders_in(&store, 2).await;
        let (old, _) = one_leader(&electors, Duration::from_secs(1)).await;
        tokio::time::sleep(TTL + TTL / 6).await;
        let deleted_at = Instant::now();
        assert!(store.delete_bucket("election"));
        store
            .bucket(&bucket_spec("election", TTL, 1))
            .await
            .unwrap();
        let mut handed_over = None;
        while deleted_at.elapsed() <= 3 * TTL {
            let now_leading = leaders(&electors);
            assert!(
                now_leading.len() <= 1,
                "{now_leading:?} lead at once, {:?} after the bucket was deleted",
                deleted_at.elapsed()
            );
            if handed_over.is_none() && now_leading.iter().any(|&l| l != old) {
                handed_over = Some(deleted_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(leaders(&electors), [1 - old]);
        // The old leader's last renewal seen was at most a renewal period before the delete.
        let took = handed_over.unwrap();
        assert!(
            took <= TTL - TTL / 5 + Duration::from_millis(50),
            "took {took:?}"
        );
    }

    /// An elector of a later session (its stable ID was lost) has not seen what the leader key
    /// did meanwhile: a lease it wins at once is announced only a lease after its watch showed
    /// the key; the process's first elector announces at once.
    #[tokio::test(start_paused = true)]
    async fn a_later_sessions_elector_waits_a_lease_before_leading() {
        for again in [false, true] {
            let store = MemoryStore::new();
            let bucket = store
                .bucket(&bucket_spec("election", TTL, 1))
                .await
                .unwrap();
            let agent = Arc::new(NatsLeaseElection::new(
                bucket.clone(),
                WorkerId::new("w-0"),
                "i-0".into(),
                TTL,
            ));
            let started = Instant::now();
            let elector = if again {
                Elector::spawn_again(agent.clone(), Some(bucket))
            } else {
                Elector::spawn(agent.clone(), Some(bucket))
            };
            let mut leadership = elector.leadership();
            leadership.wait_for(Leadership::is_leader).await.unwrap();
            let took = started.elapsed();
            assert!(agent.is_leader());
            let lease = TTL - TTL / 5;
            if again {
                assert!(took >= lease, "took {took:?}");
                assert!(took <= lease + Duration::from_millis(50), "took {took:?}");
            } else {
                assert!(took <= Duration::from_millis(50), "took {took:?}");
            }
            elector.stop().await.unwrap();
        }
    }

    /// A refused request proves that someone holds a lease, even when the watch missed its
    /// write: a lease won at a later poll (in a bucket created again meanwhile) waits until the
    /// winner's lease, renewed at most a poll earlier, has run out.
    #[tokio::test(start_paused = true)]
    async fn a_refused_request_counts_as_a_lease_seen() {
        let store = MemoryStore::new();
        let bucket = store
            .bucket(&bucket_spec("election", TTL, 1))
            .await
            .unwrap();
        let period = TTL / 3;
        let lease = TTL - TTL / 5;
        let mut watch = LeaderWatch::new(bucket, TTL + period / 2, period, lease);
        // Refused before the key was ever seen: an agent that may not use the key; no lease.
        watch.vacant();
        watch.refused();
        assert_eq!(watch.lease_seen_until(), None);
        watch.held();
        watch.vacant();
        // The end of the lease was seen: nothing to wait for.
        watch.seen_lease_until = None;
        tokio::time::sleep(Duration::from_millis(100)).await;
        watch.refused();
        assert_eq!(
            watch.lease_seen_until(),
            Some(Instant::now() + period + lease)
        );
    }

    /// A watch that stops delivering (the expiry marker never arrives): the follower contends
    /// once no renewal has shown for longer than the TTL, and reopens its watch.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_watch_is_noticed_and_reopened() {
        let (mut electors, probes) = contenders(2).await;
        let (old, _) = one_leader(&electors, Duration::from_secs(1)).await;
        let follower = 1 - old;
        tokio::time::sleep(TTL).await;
        probes[follower].muted.store(true, Ordering::SeqCst);
        let muted_at = Instant::now();
        electors[old].take().unwrap().abort();
        // Unmute once the follower reopened its watch, so that the new watch works.
        let probe = probes[follower].clone();
        tokio::spawn(async move {
            while probe.watches() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            probe.muted.store(false, Ordering::SeqCst);
        });
        let (new, _) = one_leader(&electors, 3 * TTL).await;
        let took = muted_at.elapsed();
        assert_eq!(new, follower);
        // The last renewal seen was at most a period before the mute; every renewal seen has
        // run out by the time the watch is found quiet, so the winner leads at once.
        let stale = TTL + TTL / 6;
        assert!(took <= stale + TTL / 3, "took {took:?}");
        assert!(probes[follower].watches() >= 2);
    }

    /// Grants leadership when told to; never touches the leader key.
    #[derive(Debug, Default)]
    struct Appointed {
        grant: AtomicBool,
        held: AtomicBool,
        requests: AtomicU64,
    }

    #[async_trait]
    impl ElectionAgent for Appointed {
        async fn request(&self) -> Result<Option<u64>> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let grant = self.grant.load(Ordering::SeqCst);
            self.held.store(grant, Ordering::SeqCst);
            Ok(grant.then_some(7))
        }
        async fn renew(&self) -> Result<bool> {
            Ok(self.held.load(Ordering::SeqCst))
        }
        async fn release(&self) -> Result<()> {
            self.held.store(false, Ordering::SeqCst);
            Ok(())
        }
        fn is_leader(&self) -> bool {
            self.held.load(Ordering::SeqCst)
        }
        fn term(&self) -> Option<u64> {
            self.is_leader().then_some(7)
        }
        fn lease_ttl(&self) -> Duration {
            TTL
        }
    }

    /// An agent that does not use the leader key is polled every `ttl/3`, with or without the
    /// election bucket; the watch is reopened once to check the vacancy, not more.
    #[tokio::test(start_paused = true)]
    async fn an_agent_that_does_not_use_the_leader_key_is_polled() {
        let store = MemoryStore::new();
        let probe = Probe::new(
            store
                .bucket(&bucket_spec("election", TTL, 1))
                .await
                .unwrap(),
        );
        for bucket in [Some(probe.clone() as Arc<dyn Bucket>), None] {
            let agent = Arc::new(Appointed::default());
            let elector = Elector::spawn(agent.clone(), bucket.clone());
            tokio::time::sleep(3 * TTL + Duration::from_millis(1)).await;
            let requests = agent.requests.load(Ordering::SeqCst);
            // At start, then every ttl/3; with a watch also on the empty snapshot and on the
            // snapshot of the reopened watch.
            let expected = if bucket.is_some() { 12 } else { 10 };
            assert_eq!(requests, expected, "with a watch: {}", bucket.is_some());
            agent.grant.store(true, Ordering::SeqCst);
            let mut leadership = elector.leadership();
            tokio::time::timeout(TTL / 3, leadership.wait_for(Leadership::is_leader))
                .await
                .unwrap()
                .unwrap();
            elector.stop().await.unwrap();
        }
        assert_eq!(probe.watches(), 2);
        assert_eq!(probe.writes(), 0);
    }
}
