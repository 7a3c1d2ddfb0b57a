//! An in-memory [`Store`] with the semantics of the NATS one, for simulations and tests.
//!
//! One backend holds the buckets; each [`MemoryStore`] value is a client of it with faults of its
//! own ([`MemoryStore::client`] makes another), so a simulation can cut one worker off while the
//! others carry on. Time is tokio's clock: under `tokio::time::pause()` expiries, latencies and
//! timed cut-offs cost no wall time. Random faults draw from one generator seeded at
//! construction, so a run is reproducible.

mod faults;
mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use faults::Faults;

use super::{Bucket, BucketSpec, Entry, Store, StoreError, WatchEvent, WatchStream, key_matches};
use faults::merge_cut_offs;

/// An in-memory [`Store`]: bucket-wide increasing revisions, CAS writes, tombstones, `max_age`
/// expiry with `Expired` events, snapshot-then-watch, and injectable [`Faults`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), parti::StoreError> {
/// use std::time::Duration;
/// use parti::store::{BucketSpec, MemoryStore, Store};
///
/// let store = MemoryStore::with_seed(7);
/// let worker = store.client(); // same data, faults of its own
/// let bucket = worker.bucket(&BucketSpec::new("hb").expiring(Duration::from_secs(6))).await?;
/// let revision = bucket.create("worker-0", "{}".into()).await?;
/// worker.faults().cut_off_for(Duration::from_secs(1));
/// assert!(!worker.is_connected() && store.is_connected());
/// assert!(bucket.update("worker-0", "{}".into(), revision).await.is_err());
/// tokio::time::sleep(Duration::from_secs(7)).await;
/// assert!(bucket.get("worker-0").await?.is_none(), "expired");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    backend: Arc<Backend>,
    faults: Faults,
}

struct Backend {
    buckets: Mutex<BTreeMap<String, Arc<BucketCore>>>,
    faults: Faults,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A new, empty backend and a first client of it (fault generator seeded with 0).
    pub fn new() -> Self {
        Self::with_seed(0)
    }

    /// A new, empty backend whose random faults draw from a generator seeded with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            backend: Arc::new(Backend {
                buckets: Mutex::new(BTreeMap::new()),
                faults: Faults::default(),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
            }),
            faults: Faults::default(),
        }
    }

    /// Another client of the same backend, with faults of its own (none to start with).
    pub fn client(&self) -> MemoryStore {
        Self {
            backend: Arc::clone(&self.backend),
            faults: Faults::default(),
        }
    }

    /// The faults of this client.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The faults of the backend, felt by every client (e.g. cut every client off: an outage).
    pub fn backend_faults(&self) -> &Faults {
        &self.backend.faults
    }

    fn rng(&self) -> MutexGuard<'_, StdRng> {
        self.backend
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Latency, then the cut-off and injected failures: what every call goes through.
    async fn gate(&self, op: &'static str, bucket: &str) -> Result<(), StoreError> {
        let delay = {
            let mut rng = self.rng();
            self.faults.latency(&mut rng) + self.backend.faults.latency(&mut rng)
        };
        // Every call yields at least once, as a network round trip would.
        if delay.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(delay).await;
        }
        if !self.is_connected() {
            return Err(disconnected(op, bucket));
        }
        let failed = {
            let mut rng = self.rng();
            self.faults.fails(&mut rng) || self.backend.faults.fails(&mut rng)
        };
        if failed {
            return Err(StoreError::Backend {
                op,
                bucket: bucket.to_owned(),
                source: "injected failure".into(),
            });
        }
        Ok(())
    }

    /// After a write was applied: whether its reply is lost.
    fn reply_lost(&self) -> bool {
        let mut rng = self.rng();
        self.faults.loses_reply(&mut rng) || self.backend.faults.loses_reply(&mut rng)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn bucket(&self, spec: &BucketSpec) -> Result<Arc<dyn Bucket>, StoreError> {
        if !valid_bucket_name(&spec.name) {
            return Err(StoreError::InvalidName {
                name: spec.name.clone(),
                reason: "bucket names are made of A-Z, a-z, 0-9, '_' and '-'".into(),
            });
        }
        self.gate("open bucket", &spec.name).await?;
        let core = {
            let mut buckets = self
                .backend
                .buckets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match buckets.get(&spec.name) {
                Some(core) => {
                    check_compatible(spec, &core.spec)?;
                    Arc::clone(core)
                }
                None => {
                    let core = BucketCore::create(spec.clone());
                    buckets.insert(spec.name.clone(), Arc::clone(&core));
                    core
                }
            }
        };
        Ok(Arc::new(MemoryBucket {
            core,
            client: self.clone(),
        }))
    }

    fn is_connected(&self) -> bool {
        let now = Instant::now();
        merge_cut_offs(
            self.faults.cut_off_until(now),
            self.backend.faults.cut_off_until(now),
        )
        .is_none()
    }
}

fn disconnected(op: &'static str, bucket: &str) -> StoreError {
    StoreError::Backend {
        op,
        bucket: bucket.to_owned(),
        source: "disconnected from the store".into(),
    }
}

fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The same rules as the NATS store (see `nats.rs`), so a name valid here is valid there.
fn check_key(key: &str) -> Result<(), StoreError> {
    let valid = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: key.to_owned(),
            reason: "keys are made of A-Z, a-z, 0-9 and -/_=. and do not start or end with '.'"
                .into(),
        })
    }
}

fn check_pattern(pattern: &str) -> Result<(), StoreError> {
    let count = pattern.split('.').count();
    let ok = !pattern.is_empty()
        && pattern.split('.').enumerate().all(|(i, token)| {
            !token.is_empty()
                && (token == "*" || (token == ">" && i == count - 1) || !token.contains(['*', '>']))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: pattern.to_owned(),
            reason: "a pattern is a key, or tokens with '*' and a final '>'".into(),
        })
    }
}

/// The settings that change behaviour, compared as the NATS store compares them.
fn check_compatible(want: &BucketSpec, have: &BucketSpec) -> Result<(), StoreError> {
    let mut diffs = Vec::new();
    if want.max_age != have.max_age {
        diffs.push(format!(
            "max_age is {:?}, expected {:?}",
            have.max_age.unwrap_or_default(),
            want.max_age.unwrap_or_default()
        ));
    }
    if want.history != have.history {
        diffs.push(format!(
            "history is {}, expected {}",
            have.history, want.history
        ));
    }
    if want.replicas.max(1) != have.replicas.max(1) {
        diffs.push(format!(
            "replicas is {}, expected {}",
            have.replicas, want.replicas
        ));
    }
    if want.limit_markers && !have.limit_markers {
        diffs.push("limit markers are off, expected on (expiries would be invisible)".into());
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(StoreError::IncompatibleBucket {
            bucket: want.name.clone(),
            reason: format!(
                "{} (delete the bucket or align the configuration)",
                diffs.join(", ")
            ),
        })
    }
}

/// One bucket of the backend, shared by every client.
struct BucketCore {
    spec: BucketSpec,
    state: Mutex<BucketState>,
    /// Wakes the expiry task after a write.
    wake: Arc<Notify>,
    /// Stops the expiry task with the bucket.
    _reaper: Option<DropGuard>,
}

impl BucketCore {
    fn create(spec: BucketSpec) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let max_age = spec.max_age;
        let core = Arc::new(Self {
            spec,
            state: Mutex::new(BucketState::default()),
            wake: Arc::clone(&wake),
            _reaper: max_age.map(|_| stop.clone().drop_guard()),
        });
        // Outside a tokio runtime expiries still apply, lazily, at the next call.
        if let (Some(max_age), Ok(runtime)) = (max_age, tokio::runtime::Handle::try_current()) {
            runtime.spawn(reap(Arc::downgrade(&core), wake, stop, max_age));
        }
        core
    }

    fn lock(&self) -> MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
struct BucketState {
    revision: u64,
    keys: BTreeMap<String, Slot>,
    watchers: Vec<Watcher>,
}

/// The last message of a key: a value, or a delete/expiry tombstone (`value: None`).
struct Slot {
    value: Option<Bytes>,
    revision: u64,
    written_at: Instant,
}

struct Watcher {
    pattern: String,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

impl BucketState {
    fn live(&self, key: &str) -> Option<(&Bytes, u64)> {
        self.keys
            .get(key)
            .and_then(|s| s.value.as_ref().map(|v| (v, s.revision)))
    }

    fn write(&mut self, key: &str, value: Option<Bytes>, now: Instant, event: Kind) -> u64 {
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
            },
        );
        revision
    }

    /// Turns every value older than `max_age` into an expiry tombstone, oldest first.
    fn expire_due(&mut self, spec: &BucketSpec, now: Instant) {
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
    fn entries(&self, pattern: &str) -> Vec<Entry> {
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

    fn snapshot(&self, pattern: &str) -> VecDeque<WatchEvent> {
        std::iter::once(WatchEvent::Init)
            .chain(self.entries(pattern).into_iter().map(WatchEvent::InitApply))
            .chain(std::iter::once(WatchEvent::InitDone))
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Write,
    Delete,
    Expired,
}

/// A bucket as one client sees it.
struct MemoryBucket {
    core: Arc<BucketCore>,
    client: MemoryStore,
}

impl std::fmt::Debug for MemoryBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBucket")
            .field("name", &self.core.spec.name)
            .finish_non_exhaustive()
    }
}

impl MemoryBucket {
    fn name_owned(&self) -> String {
        self.core.spec.name.clone()
    }

    fn conflict(&self, key: &str) -> StoreError {
        StoreError::Conflict {
            bucket: self.name_owned(),
            key: key.to_owned(),
        }
    }

    /// Runs one call: validation, the client's faults, then `f` on the state with expiries
    /// applied. A write may report a lost reply after it was applied.
    async fn call<T>(
        &self,
        op: &'static str,
        write: bool,
        f: impl FnOnce(&mut BucketState, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.client.gate(op, &self.core.spec.name).await?;
        let now = Instant::now();
        let result = {
            let mut state = self.core.lock();
            state.expire_due(&self.core.spec, now);
            f(&mut state, now)
        };
        if write {
            self.core.wake.notify_one();
            if result.is_ok() && self.client.reply_lost() {
                return Err(StoreError::Timeout {
                    op,
                    bucket: self.name_owned(),
                });
            }
        }
        result
    }
}

#[async_trait]
impl Bucket for MemoryBucket {
    fn name(&self) -> &str {
        &self.core.spec.name
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(key)?;
        self.call("get", false, |state, _| {
            Ok(state.live(key).map(|(value, revision)| Entry {
                key: key.to_owned(),
                value: value.clone(),
                revision,
            }))
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        check_key(key)?;
        self.call("create", true, |state, now| {
            if state.live(key).is_some() {
                return Err(StoreError::AlreadyExists {
                    bucket: self.name_owned(),
                    key: key.to_owned(),
                });
            }
            Ok(state.write(key, Some(value), now, Kind::Write))
        })
        .await
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, StoreError> {
        check_key(key)?;
        self.call("update", true, |state, now| {
            match state.live(key) {
                Some((_, revision)) if revision == expected => {}
                _ => return Err(self.conflict(key)),
            }
            Ok(state.write(key, Some(value), now, Kind::Write))
        })
        .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        check_key(key)?;
        self.call("put", true, |state, now| {
            Ok(state.write(key, Some(value), now, Kind::Write))
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        check_key(key)?;
        self.call("delete", true, |state, now| {
            if let Some(expected) = expected {
                match state.live(key) {
                    Some((_, revision)) if revision == expected => {}
                    _ => return Err(self.conflict(key)),
                }
            }
            // Like NATS, a delete always leaves a tombstone, even over nothing.
            state.write(key, None, now, Kind::Delete);
            Ok(())
        })
        .await
    }

    async fn list(&self, pattern: &str) -> Result<Vec<Entry>, StoreError> {
        check_pattern(pattern)?;
        self.call("list", false, |state, _| {
            let mut entries = state.entries(pattern);
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(entries)
        })
        .await
    }

    async fn watch(&self, pattern: &str) -> Result<WatchStream, StoreError> {
        check_pattern(pattern)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = self
            .call("watch", false, |state, _| {
                state.watchers.push(Watcher {
                    pattern: pattern.to_owned(),
                    tx,
                });
                Ok(state.snapshot(pattern))
            })
            .await?;
        let client = self.client.faults.clone();
        let backend = self.client.backend.faults.clone();
        Ok(watch::Watch {
            core: Arc::clone(&self.core),
            pattern: pattern.to_owned(),
            rx,
            queued,
            client_changes: client.subscribe(),
            backend_changes: backend.subscribe(),
            client,
            backend,
            interrupted: false,
        }
        .into_stream())
    }
}
