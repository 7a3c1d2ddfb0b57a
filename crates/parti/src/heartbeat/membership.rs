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
//! An ID that vanished between two snapshots (no event seen) is `Expired` when its last heartbeat
//! `ts` is at least the TTL old (or unreadable), `Left` otherwise. A heartbeat value that does not
//! decode still counts as a live member (a worker is writing there), is logged and counted in
//! [`MembershipWatcher::decode_errors`].

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
use crate::clock::unix_ms;
use crate::partition::WorkerId;
use crate::store::codec;
use crate::store::{Bucket, Entry, WatchEvent};

/// The shortest resync interval accepted; shorter ones are raised to it.
const MIN_RESYNC: Duration = Duration::from_millis(100);
/// First delay before re-opening a watch that could not be opened.
const WATCH_RETRY: Duration = Duration::from_millis(50);

/// A change of the live worker set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    synced: watch::Receiver<bool>,
    decode_errors: Arc<AtomicU64>,
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl MembershipWatcher {
    /// Starts watching; the TTL used to classify vanished IDs is taken to be `resync_interval`
    /// (SPEC §5.2 resyncs every heartbeat TTL). See [`spawn_with_ttl`](Self::spawn_with_ttl).
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
        let (synced_tx, synced) = watch::channel(false);
        let decode_errors = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let tracker = Tracker {
            bucket_name: bucket.name().to_owned(),
            ttl_ms: u64::try_from(heartbeat_ttl.as_millis()).unwrap_or(u64::MAX),
            known: BTreeMap::new(),
            snapshot: None,
            events: events_tx,
            live: live_tx,
            synced: synced_tx,
            decode_errors: decode_errors.clone(),
        };
        let resync = resync_interval.max(MIN_RESYNC);
        let task =
            AbortOnDropHandle::new(tokio::spawn(run(bucket, resync, tracker, cancel.clone())));
        let watcher = Self {
            live,
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

    /// Becomes `true` once the first snapshot has been applied.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Heartbeat values seen that did not decode (their keys still count as live).
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
    let mut retry = WATCH_RETRY;
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
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(resync);
                continue;
            }
        };
        retry = WATCH_RETRY;
        let mut resync_at = Instant::now() + resync;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
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
#[derive(Debug, Clone, Copy)]
struct Member {
    revision: u64,
    /// The heartbeat's `ts`, `None` when the value did not decode.
    ts: Option<u64>,
}

/// The pure part: applies watch events to the known set and emits membership events.
struct Tracker {
    bucket_name: String,
    ttl_ms: u64,
    known: BTreeMap<WorkerId, Member>,
    /// Entries of a snapshot in progress.
    snapshot: Option<BTreeMap<WorkerId, Member>>,
    events: mpsc::UnboundedSender<MembershipEvent>,
    live: watch::Sender<BTreeSet<WorkerId>>,
    synced: watch::Sender<bool>,
    decode_errors: Arc<AtomicU64>,
}

impl Tracker {
    fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Init => self.snapshot = Some(BTreeMap::new()),
            WatchEvent::InitApply(entry) => {
                let member = self.member(&entry);
                match &mut self.snapshot {
                    Some(snapshot) => {
                        snapshot.insert(WorkerId::new(entry.key), member);
                    }
                    None => self.put(WorkerId::new(entry.key), member),
                }
            }
            WatchEvent::InitDone => {
                if let Some(snapshot) = self.snapshot.take() {
                    self.replace(snapshot);
                }
            }
            WatchEvent::Put(entry) => {
                let member = self.member(&entry);
                self.put(WorkerId::new(entry.key), member);
            }
            WatchEvent::Deleted { key, revision } => {
                self.remove(&key, revision, MembershipEvent::Left);
            }
            WatchEvent::Expired { key, revision } => {
                self.remove(&key, revision, MembershipEvent::Expired);
            }
        }
    }

    fn member(&self, entry: &Entry) -> Member {
        let ts = match codec::decode::<HeartbeatValue>(&self.bucket_name, &entry.key, &entry.value)
        {
            Ok(value) => Some(value.ts),
            Err(e) => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable heartbeat; the key still counts as live");
                None
            }
        };
        Member {
            revision: entry.revision,
            ts,
        }
    }

    fn put(&mut self, id: WorkerId, member: Member) {
        if self.known.insert(id.clone(), member).is_none() {
            self.emit(MembershipEvent::Joined(id));
            self.publish();
        }
    }

    fn remove(&mut self, key: &str, revision: u64, event: fn(WorkerId) -> MembershipEvent) {
        // An event older than what we know (a replay) must not remove a newer incarnation.
        if self.known.get(key).is_none_or(|m| m.revision >= revision) {
            return;
        }
        if let Some((id, _)) = self.known.remove_entry(key) {
            self.emit(event(id));
            self.publish();
        }
    }

    fn replace(&mut self, snapshot: BTreeMap<WorkerId, Member>) {
        let now = unix_ms();
        let old = std::mem::replace(&mut self.known, snapshot);
        for (id, member) in old.iter().filter(|(id, _)| !self.known.contains_key(*id)) {
            let expired = member
                .ts
                .is_none_or(|ts| now.saturating_sub(ts) >= self.ttl_ms);
            let event = if expired {
                MembershipEvent::Expired(id.clone())
            } else {
                MembershipEvent::Left(id.clone())
            };
            self.emit(event);
        }
        for id in self.known.keys().filter(|id| !old.contains_key(*id)) {
            self.emit(MembershipEvent::Joined(id.clone()));
        }
        self.publish();
        self.synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    fn emit(&self, event: MembershipEvent) {
        tracing::debug!(?event, "membership event");
        // Nobody listening is fine: the live set is still maintained.
        let _ = self.events.send(event);
    }

    fn publish(&self) {
        let live: BTreeSet<WorkerId> = self.known.keys().cloned().collect();
        self.live.send_if_modified(|current| {
            let changed = *current != live;
            *current = live;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::State;

    fn tracker() -> (Tracker, mpsc::UnboundedReceiver<MembershipEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let tracker = Tracker {
            bucket_name: "hb".into(),
            ttl_ms: 2_000,
            known: BTreeMap::new(),
            snapshot: None,
            events,
            live: watch::channel(BTreeSet::new()).0,
            synced: watch::channel(false).0,
            decode_errors: Arc::new(AtomicU64::new(0)),
        };
        (tracker, rx)
    }

    fn entry(key: &str, revision: u64, ts: u64) -> Entry {
        let value = HeartbeatValue {
            instance: "i".into(),
            ts,
            state: State::Stable,
            applied_version: 0,
        };
        Entry {
            key: key.into(),
            value: codec::encode(&value).unwrap(),
            revision,
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<MembershipEvent>) -> Vec<MembershipEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn snapshot_then_live_events() {
        let (mut t, mut rx) = tracker();
        let now = unix_ms();
        t.apply(WatchEvent::Init);
        t.apply(WatchEvent::InitApply(entry("w-0", 1, now)));
        assert!(drain(&mut rx).is_empty(), "nothing before InitDone");
        t.apply(WatchEvent::InitDone);
        assert_eq!(drain(&mut rx), [MembershipEvent::Joined("w-0".into())]);
        t.apply(WatchEvent::Put(entry("w-0", 2, now)));
        t.apply(WatchEvent::Put(entry("w-1", 3, now)));
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

    #[test]
    fn resnapshot_classifies_vanished_ids_by_age() {
        let (mut t, mut rx) = tracker();
        let now = unix_ms();
        t.apply(WatchEvent::Put(entry("fresh", 1, now)));
        t.apply(WatchEvent::Put(entry("stale", 2, now - 5_000)));
        t.apply(WatchEvent::Put(Entry {
            key: "junk".into(),
            value: "{".into(),
            revision: 3,
        }));
        t.apply(WatchEvent::Put(entry("stays", 4, now)));
        drain(&mut rx);
        assert_eq!(t.decode_errors.load(Ordering::Relaxed), 1);
        t.apply(WatchEvent::Init);
        t.apply(WatchEvent::InitApply(entry("stays", 4, now)));
        t.apply(WatchEvent::InitApply(entry("new", 5, now)));
        t.apply(WatchEvent::InitDone);
        let mut events = drain(&mut rx);
        events.sort_by_key(|e| e.worker().clone());
        assert_eq!(
            events,
            [
                MembershipEvent::Left("fresh".into()),
                MembershipEvent::Expired("junk".into()),
                MembershipEvent::Joined("new".into()),
                MembershipEvent::Expired("stale".into()),
            ]
        );
    }

    #[test]
    fn stale_removal_does_not_remove_a_newer_incarnation() {
        let (mut t, mut rx) = tracker();
        t.apply(WatchEvent::Put(entry("w", 10, unix_ms())));
        t.apply(WatchEvent::Deleted {
            key: "w".into(),
            revision: 7,
        });
        assert_eq!(drain(&mut rx), [MembershipEvent::Joined("w".into())]);
        assert!(t.known.contains_key("w"));
    }
}
