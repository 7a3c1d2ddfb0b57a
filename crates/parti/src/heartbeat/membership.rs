//! The membership watcher: the heartbeat bucket as a stream of joins, leaves and crashes.
//!
//! Built on [`Bucket::watch`]: each snapshot (`Init` … `InitDone`) is diffed against the known set
//! (new IDs are `Joined`, vanished ones `Left` or `Expired`), then live events are mapped one to
//! one: a put of an unknown ID is `Joined`, a delete is `Left`, an expiry is `Expired`.
//!
//! Resync: every `resync_interval` the watch is restarted, which yields a fresh snapshot that is
//! diffed like the first one. This catches anything a stream missed, without the race a separate
//! `list` has against events still queued on the stream (a stale queued put after a list would
//! resurrect a departed worker).
//!
//! # Removal needs proof (SPEC §13)
//! The controller hands a departed worker's partitions to others at once, so a worker leaves the
//! live set only when it provably holds nothing:
//! - an **expiry** marker: the server expired the key, which happens no earlier than the
//!   worker's own lease deadline (it stops holding at its last successful put's start + TTL);
//! - a **delete** after the worker's own `Shutdown` heartbeat: a graceful stop, which releases
//!   everything before it says so;
//! - anything else — a delete by someone else, a key missing from a resync snapshot — only
//!   makes the member *doubtful*: it is reported `Expired` after one more heartbeat TTL of
//!   silence, measured on this process's clock (a live worker puts again long before).
//!
//! Stale replicas: on a NATS cluster, a replica that missed the expiry of a key (a node
//! restarted at the wrong moment) may serve a long-dead worker's last heartbeat in a snapshot.
//! Snapshot entries written more than two TTLs before the snapshot's freshest entry are ignored.
//!
//! Input hygiene: a heartbeat value that does not decode is never a member — it is logged and
//! counted in [`MembershipWatcher::decode_errors`]; over a known member's key it changes
//! nothing (the member's own next put or the key's expiry decides). A good heartbeat is a
//! member under any key, even one outside this process's stable-ID pool: it is a worker
//! configured with another pool (a configuration rolled out unevenly), and a leader that took it
//! for gone would hand on what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::HeartbeatValue;
use crate::partition::WorkerId;
use crate::state::State;
use crate::store::codec;
use crate::store::{Bucket, Entry, WatchEvent};

/// The shortest resync interval accepted; shorter ones are raised to it.
const MIN_RESYNC: Duration = Duration::from_millis(100);
/// A snapshot entry written this many heartbeat TTLs before the snapshot's freshest one is
/// stale (see `Tracker::without_stale`).
const STALE_AFTER_TTLS: u64 = 2;
/// First delay before re-opening a watch that could not be opened.
const WATCH_RETRY: Duration = Duration::from_millis(50);

/// A change of the live worker set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// A worker's heartbeat appeared.
    Joined(WorkerId),
    /// A worker deleted its heartbeat: a graceful leave.
    Left(WorkerId),
    /// A worker's heartbeat expired: a crash (or a worker cut off from NATS).
    Expired(WorkerId),
}

impl MembershipEvent {
    /// The worker the event is about.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn worker(&self) -> &WorkerId {
        match self {
            Self::Joined(id) | Self::Left(id) | Self::Expired(id) => id,
        }
    }
}

/// Watches the heartbeat bucket in the background and reports membership changes.
#[derive(Debug)]
pub struct MembershipWatcher {
    live: watch::Receiver<BTreeSet<WorkerId>>,
    values: watch::Receiver<BTreeMap<WorkerId, HeartbeatValue>>,
    synced: watch::Receiver<bool>,
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    decode_errors: Arc<AtomicU64>,
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl MembershipWatcher {
    /// Starts watching; the TTL used to classify vanished IDs is taken to be `resync_interval`
    /// (SPEC §5.2 resyncs every heartbeat TTL). See [`spawn_with_ttl`](Self::spawn_with_ttl).
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn spawn(
        bucket: Arc<dyn Bucket>,
        resync_interval: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<MembershipEvent>) {
        Self::spawn_with_ttl(bucket, resync_interval, resync_interval)
    }

    /// Starts watching, with the heartbeat TTL given explicitly.
    pub fn spawn_with_ttl(
        bucket: Arc<dyn Bucket>,
        resync_interval: Duration,
        heartbeat_ttl: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<MembershipEvent>) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (live_tx, live) = watch::channel(BTreeSet::new());
        let (values_tx, values) = watch::channel(BTreeMap::new());
        let (synced_tx, synced) = watch::channel(false);
        let decode_errors = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let tracker = Tracker {
            bucket_name: bucket.name().to_owned(),
            ttl: heartbeat_ttl,
            known: BTreeMap::new(),
            doubtful: BTreeMap::new(),
            reported: BTreeSet::new(),
            snapshot: None,
            events: events_tx,
            live: live_tx,
            values: values_tx,
            synced: synced_tx,
            decode_errors: decode_errors.clone(),
        };
        let resync = resync_interval.max(MIN_RESYNC);
        let task =
            AbortOnDropHandle::new(tokio::spawn(run(bucket, resync, tracker, cancel.clone())));
        let watcher = Self {
            live,
            values,
            synced,
            decode_errors,
            cancel,
            task,
        };
        (watcher, events)
    }

    /// The current live set; filled once the first snapshot is done (see [`synced`](Self::synced)).
    pub fn live(&self) -> watch::Receiver<BTreeSet<WorkerId>> {
        self.live.clone()
    }

    /// The last good heartbeat value of every live member (what leaders read released
    /// versions and lineages from).
    pub fn values(&self) -> watch::Receiver<BTreeMap<WorkerId, HeartbeatValue>> {
        self.values.clone()
    }

    /// Becomes `true` once the first snapshot has been applied.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Heartbeat values seen that did not decode (none of them counts as live).
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// Stops watching and waits for the task to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "membership watcher task failed");
        }
    }
}

async fn run(
    bucket: Arc<dyn Bucket>,
    resync: Duration,
    mut tracker: Tracker,
    cancel: CancellationToken,
) {
    let mut retries = crate::retry::doubling(WATCH_RETRY, resync);
    loop {
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            r = bucket.watch(">") => r,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(bucket = %bucket.name(), error = %e, "cannot open the heartbeat watch");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(retries.next_delay()) => {}
                }
                continue;
            }
        };
        retries = crate::retry::doubling(WATCH_RETRY, resync);
        let mut resync_at = Instant::now() + resync;
        loop {
            let doubt = tracker.next_doubt();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = crate::clock::sleep_until_opt(doubt) => tracker.expire_doubtful(Instant::now()),
                () = tokio::time::sleep_until(resync_at) => {
                    // Never cut a snapshot short: a huge one would restart for ever.
                    if tracker.snapshot.is_none() {
                        tracing::debug!(bucket = %bucket.name(), "membership resync");
                        break;
                    }
                    resync_at = Instant::now() + resync;
                }
                event = stream.next() => match event {
                    Some(Ok(event)) => tracker.apply(event),
                    // The stream recovers on its own (with a fresh snapshot when needed).
                    Some(Err(e)) => tracing::warn!(bucket = %bucket.name(), error = %e, "heartbeat watch error"),
                    None => {
                        tracing::warn!(bucket = %bucket.name(), "heartbeat watch ended; reopening");
                        break;
                    }
                },
            }
        }
    }
}

/// What is known about one live member.
#[derive(Debug, Clone)]
struct Member {
    revision: u64,
    /// Its last good value.
    value: HeartbeatValue,
}

/// The pure part: applies watch events to the known set and emits membership events.
struct Tracker {
    bucket_name: String,
    ttl: Duration,
    known: BTreeMap<WorkerId, Member>,
    /// Members whose key went away without proof that they stopped: reported `Expired` at the
    /// instant given unless they put again.
    doubtful: BTreeMap<WorkerId, Instant>,
    /// The members already reported (`Joined`), so a resnapshot reports only news.
    reported: BTreeSet<WorkerId>,
    /// Entries of a snapshot in progress.
    snapshot: Option<BTreeMap<WorkerId, Member>>,
    events: mpsc::UnboundedSender<MembershipEvent>,
    live: watch::Sender<BTreeSet<WorkerId>>,
    values: watch::Sender<BTreeMap<WorkerId, HeartbeatValue>>,
    synced: watch::Sender<bool>,
    decode_errors: Arc<AtomicU64>,
}

impl Tracker {
    fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Init => self.snapshot = Some(BTreeMap::new()),
            WatchEvent::InitApply(entry) => {
                let Some(member) = self.member(&entry) else {
                    return;
                };
                match &mut self.snapshot {
                    Some(snapshot) => {
                        snapshot.insert(WorkerId::new(entry.key), member);
                    }
                    None => self.put(WorkerId::new(entry.key), member),
                }
            }
            WatchEvent::InitDone => {
                if let Some(snapshot) = self.snapshot.take() {
                    let snapshot = self.without_stale(snapshot);
                    self.replace(snapshot);
                }
            }
            WatchEvent::Put(entry) => {
                // Garbage over a member's key proves nothing either way: ignore it.
                if let Some(member) = self.member(&entry) {
                    self.put(WorkerId::new(entry.key), member);
                }
            }
            WatchEvent::Deleted { key, revision } => {
                let graceful = self
                    .known
                    .get(key.as_str())
                    .is_some_and(|m| m.value.state == State::Shutdown);
                if graceful {
                    self.remove(&key, revision, MembershipEvent::Left);
                } else if self
                    .known
                    .get(key.as_str())
                    .is_some_and(|m| m.revision < revision)
                {
                    self.doubt(WorkerId::new(key), Instant::now());
                }
            }
            WatchEvent::Expired { key, revision } => {
                self.remove(&key, revision, MembershipEvent::Expired);
            }
        }
    }

    /// The member an entry stands for; `None` (logged, counted) for a value that does not
    /// decode.
    fn member(&self, entry: &Entry) -> Option<Member> {
        match codec::decode::<HeartbeatValue>(&self.bucket_name, &entry.key, &entry.value) {
            Ok(value) => Some(Member {
                revision: entry.revision,
                value,
            }),
            Err(e) => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable heartbeat; not a live worker");
                None
            }
        }
    }

    /// Drops the snapshot entries written more than [`STALE_AFTER_TTLS`] TTLs before its
    /// freshest one (by the writers' `ts`). The bucket's max age is one TTL, so the server
    /// should have removed them long before; a replica that missed the removal (a cluster node
    /// restarted) still serves them, and taking them for members revives a dead worker for as
    /// long as that replica answers. Dropping an entry only makes a known member doubtful
    /// (see [`replace`](Self::replace)): a live worker with a skewed clock is back with its
    /// next put.
    fn without_stale(
        &self,
        mut snapshot: BTreeMap<WorkerId, Member>,
    ) -> BTreeMap<WorkerId, Member> {
        let Some(freshest) = snapshot.values().map(|m| m.value.ts).max() else {
            return snapshot;
        };
        let window = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(STALE_AFTER_TTLS);
        snapshot.retain(|id, m| {
            let fresh = m.value.ts.saturating_add(window) >= freshest;
            if !fresh {
                tracing::debug!(worker = %id, age_ms = freshest - m.value.ts, "stale heartbeat in a snapshot; ignored");
            }
            fresh
        });
        snapshot
    }

    fn put(&mut self, id: WorkerId, member: Member) {
        self.doubtful.remove(&id);
        let joined = self.known.insert(id.clone(), member).is_none();
        // The watches first: whoever handles the event reads them and must find the member.
        self.show(&id);
        if joined {
            self.emit(MembershipEvent::Joined(id));
        }
    }

    /// `id` went away without proof that it stopped: it expires one TTL from `now` unless it
    /// puts again.
    fn doubt(&mut self, id: WorkerId, now: Instant) {
        if self.known.contains_key(&id) {
            tracing::debug!(worker = %id, "heartbeat gone without proof; expiring it after one TTL");
            self.doubtful.entry(id).or_insert(now + self.ttl);
        }
    }

    /// When the next doubtful member is due.
    fn next_doubt(&self) -> Option<Instant> {
        self.doubtful.values().min().copied()
    }

    /// Reports the doubtful members that stayed silent for a TTL as `Expired`.
    fn expire_doubtful(&mut self, now: Instant) {
        let due: Vec<WorkerId> = self
            .doubtful
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.doubtful.remove(&id);
            if self.known.remove(&id).is_some() {
                self.show(&id);
                self.emit(MembershipEvent::Expired(id));
            }
        }
    }

    fn remove(&mut self, key: &str, revision: u64, event: fn(WorkerId) -> MembershipEvent) {
        // An event older than what we know (a replay) must not remove a newer incarnation.
        if self.known.get(key).is_none_or(|m| m.revision >= revision) {
            return;
        }
        if let Some((id, _)) = self.known.remove_entry(key) {
            self.doubtful.remove(&id);
            self.show(&id);
            self.emit(event(id));
        }
    }

    fn replace(&mut self, snapshot: BTreeMap<WorkerId, Member>) {
        let now = Instant::now();
        let old = std::mem::replace(&mut self.known, snapshot);
        let mut events = Vec::new();
        for (id, member) in old {
            if self.known.contains_key(&id) {
                continue;
            }
            if member.value.state == State::Shutdown {
                // Its last word was a graceful stop.
                events.push(MembershipEvent::Left(id));
            } else {
                // Missed events: keep it until a TTL of silence proves it stopped.
                self.known.insert(id.clone(), member);
                self.doubt(id, now);
            }
        }
        for id in self.known.keys() {
            if !self.doubtful.contains_key(id) && !self.reported.contains(id) {
                events.push(MembershipEvent::Joined(id.clone()));
            }
        }
        self.reported = self.known.keys().cloned().collect();
        // The watches first, as in `put`: whoever handles an event reads them.
        self.publish();
        for event in events {
            self.emit(event);
        }
        self.synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    fn emit(&self, event: MembershipEvent) {
        tracing::debug!(?event, "membership event");
        // Nobody listening is fine: the live set is still maintained.
        let _ = self.events.send(event);
    }

    /// Shows `id`'s membership as `known` has it (its value, or its absence) in the `live`
    /// and `values` watches. O(log N): every heartbeat of the fleet comes through here, and
    /// rebuilding both watches from `known` on each cost the leader O(N²) work per heartbeat
    /// interval (a third of a core at 1,000 workers).
    fn show(&mut self, id: &WorkerId) {
        match self.known.get(id) {
            Some(member) => {
                if self.reported.insert(id.clone()) {
                    self.live.send_modify(|live| {
                        live.insert(id.clone());
                    });
                }
                self.values.send_if_modified(|values| {
                    if values.get(id) == Some(&member.value) {
                        return false;
                    }
                    values.insert(id.clone(), member.value.clone());
                    true
                });
            }
            None => {
                if self.reported.remove(id) {
                    self.live.send_modify(|live| {
                        live.remove(id);
                    });
                }
                self.values
                    .send_if_modified(|values| values.remove(id).is_some());
            }
        }
    }

    /// Shows the whole of `known` in the `live` and `values` watches (after a snapshot).
    fn publish(&mut self) {
        let live: BTreeSet<WorkerId> = self.known.keys().cloned().collect();
        self.reported.clone_from(&live);
        self.live.send_if_modified(|current| {
            let changed = *current != live;
            *current = live;
            changed
        });
        let values: BTreeMap<WorkerId, HeartbeatValue> = self
            .known
            .iter()
            .map(|(id, m)| (id.clone(), m.value.clone()))
            .collect();
        self.values.send_if_modified(|current| {
            let changed = *current != values;
            *current = values;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    fn tracker() -> (Tracker, mpsc::UnboundedReceiver<MembershipEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let tracker = Tracker {
            bucket_name: "hb".into(),
            ttl: TTL,
            known: BTreeMap::new(),
            doubtful: BTreeMap::new(),
            reported: BTreeSet::new(),
            snapshot: None,
            events,
            live: watch::channel(BTreeSet::new()).0,
            values: watch::channel(BTreeMap::new()).0,
            synced: watch::channel(false).0,
            decode_errors: Arc::new(AtomicU64::new(0)),
        };
        (tracker, rx)
    }

    fn entry_in(key: &str, revision: u64, state: State) -> Entry {
        let value = HeartbeatValue {
            instance: "i".into(),
            ts: 0,
            state,
            applied_version: 0,
            released: 0,
            lapses: 0,
            expelled: false,
            degraded_reason: None,
            protocol: crate::heartbeat::protocol::PROTOCOL,
            capabilities: crate::heartbeat::protocol::capabilities(),
            capacity: crate::Capacity::DEFAULT,
            labels: Default::default(),
        };
        Entry {
            key: key.into(),
            value: codec::encode(&value).unwrap(),
            revision,
        }
    }

    fn entry(key: &str, revision: u64) -> Entry {
        entry_in(key, revision, State::Stable)
    }

    fn entry_at(key: &str, revision: u64, ts: u64) -> Entry {
        let mut e = entry(key, revision);
        let mut value: HeartbeatValue = codec::decode("hb", key, &e.value).unwrap();
        value.ts = ts;
        e.value = codec::encode(&value).unwrap();
        e
    }

    #[test]
    fn a_snapshot_entry_long_past_its_ttl_is_not_a_member_and_a_known_one_becomes_doubtful() {
        let ttl_ms = u64::try_from(TTL.as_millis()).unwrap();
        let now = 1_000_000;
        let (mut t, mut rx) = tracker();
        t.apply(WatchEvent::Init);
        t.apply(WatchEvent::InitApply(entry_at("w-0", 1, now)));
        t.apply(WatchEvent::InitApply(entry_at("w-1", 2, now - ttl_ms)));
        // A replica that missed an expiry serves a dead worker's heartbeat of long ago.
        t.apply(WatchEvent::InitApply(entry_at("dead", 3, now - 3 * ttl_ms)));
        t.apply(WatchEvent::InitDone);
        assert_eq!(
            drain(&mut rx),
            [
                MembershipEvent::Joined("w-0".into()),
                MembershipEvent::Joined("w-1".into())
            ]
        );
        assert!(!t.known.contains_key("dead"));

        // w-1's entry goes stale in the next snapshot: it is doubted, not dropped at once, and
        // its next put clears the doubt.
        t.apply(WatchEvent::Init);
        t.apply(WatchEvent::InitApply(entry_at("w-0", 4, now + 3 * ttl_ms)));
        t.apply(WatchEvent::InitApply(entry_at("w-1", 2, now - ttl_ms)));
        t.apply(WatchEvent::InitDone);
        assert!(drain(&mut rx).is_empty());
        assert!(t.doubtful.contains_key("w-1"));
        t.apply(WatchEvent::Put(entry_at("w-1", 5, now + 3 * ttl_ms)));
        assert!(t.doubtful.is_empty());
        assert!(drain(&mut rx).is_empty(), "w-1 never left");
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<MembershipEvent>) -> Vec<MembershipEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn snapshot_then_live_events() {
        let (mut t, mut rx) = tracker();
        t.apply(WatchEvent::Init);
        t.apply(WatchEvent::InitApply(entry("w-0", 1)));
        assert!(drain(&mut rx).is_empty(), "nothing before InitDone");
        t.apply(WatchEvent::InitDone);
        assert_eq!(drain(&mut rx), [MembershipEvent::Joined("w-0".into())]);
        t.apply(WatchEvent::Put(entry_in("w-0", 2, State::Shutdown)));
        t.apply(WatchEvent::Put(entry("w-1", 3)));
        t.apply(WatchEvent::Deleted {
            key: "w-0".into(),
            revision: 4,
        });
        t.apply(WatchEvent::Expired {
            key: "w-1".into(),
            revision: 5,
        });
        t.apply(WatchEvent::Deleted {
            key: "w-9".into(),
            revision: 6,
        });
        assert_eq!(
            drain(&mut rx),
            [
                MembershipEvent::Joined("w-1".into()),
                MembershipEvent::Left("w-0".into()),
                MembershipEvent::Expired("w-1".into()),
            ]
        );
        assert!(t.known.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_without_a_shutdown_heartbeat_expires_only_after_a_ttl_of_silence() {
        let (mut t, mut rx) = tracker();
        t.apply(WatchEvent::Put(entry("w", 1)));
        t.apply(WatchEvent::Put(entry("back", 2)));
        drain(&mut rx);
        for (key, revision) in [("w", 3), ("back", 4)] {
            t.apply(WatchEvent::Deleted {
                key: key.into(),
                revision,
            });
        }
        assert!(drain(&mut rx).is_empty(), "no proof yet: both still live");
        assert_eq!(t.known.len(), 2);
        // One comes back within the TTL: it never left.
        t.apply(WatchEvent::Put(entry("back", 5)));
        tokio::time::advance(TTL).await;
        assert_eq!(t.next_doubt(), Some(Instant::now()));
        t.expire_doubtful(Instant::now());
        assert_eq!(drain(&mut rx), [MembershipEvent::Expired("w".into())]);
        assert_eq!(t.known.keys().cloned().collect::<Vec<_>>(), ["back".into()]);
    }

    #[tokio::test(start_paused = true)]
    async fn resnapshot_trusts_only_a_shutdown_heartbeat_for_vanished_ids() {
        let (mut t, mut rx) = tracker();
        t.apply(WatchEvent::Put(entry_in("left", 1, State::Shutdown)));
        t.apply(WatchEvent::Put(entry("silent", 2)));
        t.apply(WatchEvent::Put(Entry {
            key: "junk".into(),
            value: "{".into(),
            revision: 3,
        }));
        t.apply(WatchEvent::Put(entry("stays", 4)));
        drain(&mut rx);
        assert_eq!(t.decode_errors.load(Ordering::Relaxed), 1);
        assert!(!t.known.contains_key("junk"), "garbage is never a member");
        t.apply(WatchEvent::Init);
        t.apply(WatchEvent::InitApply(entry("stays", 4)));
        t.apply(WatchEvent::InitApply(entry("new", 5)));
        t.apply(WatchEvent::InitDone);
        let mut events = drain(&mut rx);
        events.sort_by_key(|e| e.worker().clone());
        assert_eq!(
            events,
            [
                MembershipEvent::Left("left".into()),
                MembershipEvent::Joined("new".into()),
            ]
        );
        assert!(
            t.known.contains_key("silent"),
            "kept until a TTL of silence"
        );
        tokio::time::advance(TTL).await;
        t.expire_doubtful(Instant::now());
        assert_eq!(drain(&mut rx), [MembershipEvent::Expired("silent".into())]);
    }

    #[test]
    fn garbage_over_a_member_changes_nothing() {
        let (mut t, mut rx) = tracker();
        t.apply(WatchEvent::Put(entry("w", 1)));
        t.apply(WatchEvent::Put(Entry {
            key: "w".into(),
            value: "{".into(),
            revision: 2,
        }));
        assert_eq!(drain(&mut rx), [MembershipEvent::Joined("w".into())]);
        assert!(t.known.contains_key("w"));
    }

    #[test]
    fn stale_removal_does_not_remove_a_newer_incarnation() {
        let (mut t, mut rx) = tracker();
        t.apply(WatchEvent::Put(entry("w", 10)));
        t.apply(WatchEvent::Expired {
            key: "w".into(),
            revision: 7,
        });
        assert_eq!(drain(&mut rx), [MembershipEvent::Joined("w".into())]);
        assert!(t.known.contains_key("w"));
    }
}
