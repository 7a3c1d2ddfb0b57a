//! An in-memory [`Store`] with the semantics of the NATS one, for simulations and tests.
//!
//! One backend holds the buckets; each [`MemoryStore`] value is a client of it with faults of its
//! own ([`MemoryStore::client`] makes another), so a simulation can cut one worker off while the
//! others carry on. Time is tokio's clock: under `tokio::time::pause()` expiries, latencies and
//! timed cut-offs cost no wall time. Random faults draw from one generator seeded at
//! construction, so a run is reproducible.
//!
//! Besides the [`Faults`] of a client or of the backend, a bucket can be deleted
//! ([`MemoryStore::delete_bucket`], as `nats kv rm` would): calls through existing handles fail
//! until it is created again (by any [`Store::bucket`] call), and then reach the new, empty
//! bucket, whose revisions start again from 1; watches report one error and re-snapshot the new
//! bucket.

mod faults;
mod state;
mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch as signal;
use tokio::time::Instant;

pub use faults::Faults;

use super::names::{check_compatible, check_key, check_pattern, valid_bucket_name};
use super::{Bucket, BucketSpec, Entry, Store, StoreError, WatchEvent, WatchStream};
use faults::{merge_cut_offs, wait_unpaused};
use state::{BucketCore, BucketState, Kind};

/// An in-memory [`Store`]: bucket-wide increasing revisions, CAS writes, tombstones, `max_age`
/// expiry with `Expired` events, snapshot-then-watch, and injectable faults (`Faults`, with the `test-util` feature).
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
    /// Bumped whenever a bucket is created or deleted, so watches of a deleted bucket re-check.
    buckets_changed: signal::Sender<()>,
    faults: Faults,
    rng: Mutex<StdRng>,
}

impl Backend {
    fn buckets(&self) -> MutexGuard<'_, BTreeMap<String, Arc<BucketCore>>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bucket named `name` now, if it exists.
    fn core(&self, name: &str) -> Option<Arc<BucketCore>> {
        self.buckets().get(name).cloned()
    }
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
                buckets_changed: signal::channel(()).0,
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

    /// The faults of this client (`test-util` feature).
    #[cfg(any(test, feature = "test-util"))]
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The faults of the backend, felt by every client (e.g. cut every client off: an outage;
    /// `test-util` feature).
    #[cfg(any(test, feature = "test-util"))]
    pub fn backend_faults(&self) -> &Faults {
        &self.backend.faults
    }

    /// Deletes the bucket `name` with its data, as `nats kv rm` would; `false` if there was none.
    ///
    /// Calls through existing handles fail with a backend error until the bucket is created
    /// again by a [`Store::bucket`] call; they then reach the new, empty bucket. Open watches
    /// yield one error, then a fresh snapshot of the new bucket once there is one. Needs the
    /// `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn delete_bucket(&self, name: &str) -> bool {
        let Some(core) = self.backend.buckets().remove(name) else {
            return false;
        };
        core.delete();
        self.backend.buckets_changed.send_replace(());
        true
    }

    fn rng(&self) -> MutexGuard<'_, StdRng> {
        self.backend
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A pause, latency, then the cut-off and injected failures: what every call goes through.
    async fn gate(&self, op: &'static str, bucket: &str) -> Result<(), StoreError> {
        self.wait_unpaused().await;
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
            return Err(StoreError::backend(op, bucket, "injected failure"));
        }
        Ok(())
    }

    /// Returns once this client is not paused (a stopped process makes no progress).
    async fn wait_unpaused(&self) {
        wait_unpaused(&self.faults, &self.backend.faults).await;
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
        let created = {
            let mut buckets = self.backend.buckets();
            match buckets.get(&spec.name) {
                Some(core) => {
                    check_compatible(spec, &core.spec)?;
                    false
                }
                None if !spec.create_if_missing => {
                    return Err(StoreError::BucketMissing {
                        bucket: spec.name.clone(),
                    });
                }
                None => {
                    buckets.insert(spec.name.clone(), BucketCore::create(spec.clone()));
                    true
                }
            }
        };
        if created {
            self.backend.buckets_changed.send_replace(());
        }
        Ok(Arc::new(MemoryBucket {
            name: spec.name.clone(),
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
    StoreError::backend(op, bucket, "disconnected from the store")
}

fn not_found(op: &'static str, bucket: &str) -> StoreError {
    StoreError::backend(op, bucket, "bucket not found")
}

/// A bucket as one client sees it: a name, resolved at each call (like a NATS handle, it reaches
/// a bucket that was deleted and created again).
struct MemoryBucket {
    name: String,
    client: MemoryStore,
}

impl std::fmt::Debug for MemoryBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBucket")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MemoryBucket {
    fn name_owned(&self) -> String {
        self.name.clone()
    }

    /// The bucket as it is now, or the error a call meets when it was deleted.
    fn core(&self, op: &'static str) -> Result<Arc<BucketCore>, StoreError> {
        self.client
            .backend
            .core(&self.name)
            .ok_or_else(|| not_found(op, &self.name))
    }

    fn conflict(&self, key: &str) -> StoreError {
        StoreError::Conflict {
            bucket: self.name_owned(),
            key: key.to_owned(),
        }
    }

    /// Runs one call: validation, the client's faults, then `f` on the state with expiries
    /// applied. A write may report a lost reply after it was applied; a reply due while the
    /// client is paused arrives when the pause ends.
    async fn call<T>(
        &self,
        op: &'static str,
        write: bool,
        f: impl FnOnce(&mut BucketState, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.client.gate(op, &self.name).await?;
        let core = self.core(op)?;
        let now = Instant::now();
        let result = {
            let mut state = core.lock();
            state.expire_due(&core.spec, now);
            f(&mut state, now)
        };
        if write {
            core.wake.notify_one();
        }
        self.client.wait_unpaused().await;
        if write && result.is_ok() && self.client.reply_lost() {
            return Err(StoreError::Timeout {
                op,
                bucket: self.name_owned(),
            });
        }
        result
    }
}

#[async_trait]
impl Bucket for MemoryBucket {
    fn name(&self) -> &str {
        &self.name
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

    async fn last_change(&self, key: &str) -> Result<Option<WatchEvent>, StoreError> {
        check_key(key)?;
        self.call("get", false, |state, _| Ok(state.last_change(key)))
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
        self.client.gate("watch", &self.name).await?;
        let core = self.core("watch")?;
        let (rx, queued) = core.subscribe(pattern);
        let client = self.client.faults.clone();
        let backend = self.client.backend.faults.clone();
        Ok(watch::Watch {
            core,
            buckets: Arc::clone(&self.client.backend),
            buckets_changed: self.client.backend.buckets_changed.subscribe(),
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

    async fn incarnation(&self) -> Result<Option<u64>, StoreError> {
        self.client.gate("bucket info", &self.name).await?;
        Ok(self.client.backend.core(&self.name).map(|c| c.incarnation))
    }
}
