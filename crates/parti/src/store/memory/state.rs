//! The data of one bucket, shared by every client: values and tombstones, revisions, expiry and
//! the watchers' queues.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::{BucketSpec, Entry, WatchEvent, key_matches};

/// One bucket of the backend, shared by every client.
pub(super) struct BucketCore {
    pub(super) spec: BucketSpec,
    state: Mutex<BucketState>,
    /// Wakes the expiry task after a write.
    pub(super) wake: Arc<Notify>,
    /// The bucket was deleted (watches of it move on to its successor).
    deleted: AtomicBool,
    /// Stops the expiry task with the bucket.
    _reaper: Option<DropGuard>,
    /// Tells this bucket from one of the same name created after it was deleted.
    pub(super) incarnation: u64,
}

/// The next bucket's incarnation (process-wide, so never reused).
static NEXT_INCARNATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl BucketCore {
    pub(super) fn create(spec: BucketSpec) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let max_age = spec.max_age;
        let core = Arc::new(Self {
            spec,
            state: Mutex::new(BucketState::default()),
            wake: Arc::clone(&wake),
            deleted: AtomicBool::new(false),
            _reaper: max_age.map(|_| stop.clone().drop_guard()),
            incarnation: NEXT_INCARNATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        // Outside a tokio runtime expiries still apply, lazily, at the next call.
        if let (Some(max_age), Ok(runtime)) = (max_age, tokio::runtime::Handle::try_current()) {
            runtime.spawn(reap(Arc::downgrade(&core), wake, stop, max_age));
        }
        core
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a watcher of `pattern`: its live events, and the snapshot to deliver first.
    pub(super) fn subscribe(
        &self,
        pattern: &str,
    ) -> (mpsc::UnboundedReceiver<WatchEvent>, VecDeque<WatchEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        state.expire_due(&self.spec, Instant::now());
        state.watchers.retain(|w| !w.tx.is_closed());
        state.watchers.push(Watcher {
            pattern: pattern.to_owned(),
            tx,
        });
        (rx, state.snapshot(pattern))
    }

    /// Marks the bucket deleted and drops its data; its watchers' channels close.
    #[cfg(any(test, feature = "test-util"))]
    pub(super) fn delete(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        let mut state = self.lock();
        state.watchers.clear();
        state.keys.clear();
    }

    /// Whether the bucket was deleted.
    pub(super) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }
}

/// Emits expiry events on time, even when nobody calls the bucket.
async fn reap(
    core: std::sync::Weak<BucketCore>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    max_age: Duration,
) {
    loop {
        let next = {
            let Some(core) = core.upgrade() else { return };
            let mut state = core.lock();
            state.expire_due(&core.spec, Instant::now());
            state.next_expiry(max_age)
        };
        let timer = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = timer => {}
        }
    }
}

#[derive(Default)]
pub(super) struct BucketState {
    revision: u64,
    keys: BTreeMap<String, Slot>,
    pub(super) watchers: Vec<Watcher>,
}

/// The last message of a key: a value, or a delete/expiry tombstone (`value: None`).
struct Slot {
    value: Option<Bytes>,
    revision: u64,
    written_at: Instant,
    /// A tombstone left by `max_age` rather than by a delete.
    expired: bool,
}

pub(super) struct Watcher {
    pub(super) pattern: String,
    pub(super) tx: mpsc::UnboundedSender<WatchEvent>,
}

impl BucketState {
    pub(super) fn live(&self, key: &str) -> Option<(&Bytes, u64)> {
        self.keys
            .get(key)
            .and_then(|s| s.value.as_ref().map(|v| (v, s.revision)))
    }

    /// The key's last change (see [`Bucket::last_change`](crate::store::Bucket::last_change)).
    pub(super) fn last_change(&self, key: &str) -> Option<WatchEvent> {
        let slot = self.keys.get(key)?;
        let (key, revision) = (key.to_owned(), slot.revision);
        Some(match &slot.value {
            Some(value) => WatchEvent::Put(Entry {
                key,
                value: value.clone(),
                revision,
            }),
            None if slot.expired => WatchEvent::Expired { key, revision },
            None => WatchEvent::Deleted { key, revision },
        })
    }

    pub(super) fn write(
        &mut self,
        key: &str,
        value: Option<Bytes>,
        now: Instant,
        event: Kind,
    ) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        let key = key.to_owned();
        let event = match (&value, event) {
            (Some(v), _) => WatchEvent::Put(Entry {
                key: key.clone(),
                value: v.clone(),
                revision,
            }),
            (None, Kind::Expired) => WatchEvent::Expired {
                key: key.clone(),
                revision,
            },
            (None, _) => WatchEvent::Deleted {
                key: key.clone(),
                revision,
            },
        };
        self.watchers
            .retain(|w| !key_matches(&w.pattern, &key) || w.tx.send(event.clone()).is_ok());
        self.keys.insert(
            key,
            Slot {
                value,
                revision,
                written_at: now,
                expired: matches!(event, WatchEvent::Expired { .. }),
            },
        );
        revision
    }

    /// Turns every value older than `max_age` into an expiry tombstone, oldest first.
    pub(super) fn expire_due(&mut self, spec: &BucketSpec, now: Instant) {
        let Some(max_age) = spec.max_age else { return };
        let mut due: Vec<(u64, String)> = self
            .keys
            .iter()
            .filter(|(_, s)| s.value.is_some() && s.written_at + max_age <= now)
            .map(|(k, s)| (s.revision, k.clone()))
            .collect();
        due.sort_unstable();
        for (_, key) in due {
            if spec.limit_markers {
                self.write(&key, None, now, Kind::Expired);
            } else {
                // Without markers NATS drops the value silently.
                self.keys.remove(&key);
            }
        }
    }

    fn next_expiry(&self, max_age: Duration) -> Option<Instant> {
        self.keys
            .values()
            .filter(|s| s.value.is_some())
            .map(|s| s.written_at + max_age)
            .min()
    }

    /// Live entries matching `pattern`, in revision order (as NATS delivers them).
    pub(super) fn entries(&self, pattern: &str) -> Vec<Entry> {
        let mut entries: Vec<Entry> = self
            .keys
            .iter()
            .filter(|(k, _)| key_matches(pattern, k))
            .filter_map(|(k, s)| {
                s.value.as_ref().map(|v| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    revision: s.revision,
                })
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.revision);
        entries
    }

    pub(super) fn snapshot(&self, pattern: &str) -> VecDeque<WatchEvent> {
        std::iter::once(WatchEvent::Init)
            .chain(self.entries(pattern).into_iter().map(WatchEvent::InitApply))
            .chain(std::iter::once(WatchEvent::InitDone))
            .collect()
    }
}

/// What a write is.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Write,
    Delete,
    Expired,
}
