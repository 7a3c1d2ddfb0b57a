//! The few key-value operations Parti needs, behind one trait.
//!
//! Everything above this module (stable IDs, heartbeats, election, the controller, the manager)
//! is written against [`Store`] and [`Bucket`]. [`NatsStore`] is the product; an in-memory store
//! with the same semantics drives deterministic simulations. Both must pass the conformance suite
//! in `parti-testkit`.
//!
//! Semantics every implementation provides:
//! - every write returns the key's new **revision**; revisions increase across the bucket;
//! - [`Bucket::create`] succeeds only when the key has no live value (absent, deleted or expired);
//! - [`Bucket::update`] and [`Bucket::delete`] with an expected revision fail with
//!   [`StoreError::Conflict`] when the key was written since;
//! - a bucket's `max_age` expires a value that was not rewritten in time, and a watcher sees an
//!   [`WatchEvent::Expired`] for it (NATS limit markers);
//! - [`Bucket::watch`] follows the list-then-watch pattern of kube-runtime's watcher: an initial
//!   snapshot (`Init`, `InitApply`…, `InitDone`), then live events. When the watch loses its
//!   position it starts a fresh snapshot, so a consumer that rebuilds its view on `InitDone` never
//!   misses a change. Transient errors are yielded as `Err` items; the stream carries on.

#[cfg(feature = "tools")]
pub mod codec;
#[cfg(not(feature = "tools"))]
pub(crate) mod codec;
mod memory;
mod names;
#[cfg(feature = "nats")]
mod nats;
mod pattern;
#[cfg(test)]
pub(crate) mod probe;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use crate::error::StoreError;
#[cfg(any(test, feature = "test-util"))]
pub use memory::Faults;
pub use memory::MemoryStore;
#[cfg(feature = "nats")]
pub use nats::NatsStore;
pub use pattern::key_matches;

/// A value stored under a key, with the revision of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The raw value (JSON for every Parti bucket).
    pub value: Bytes,
    /// The revision of the write.
    pub revision: u64,
}

/// An event of a [`Bucket::watch`] stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// A snapshot starts: the consumer should collect `InitApply` entries and replace its view
    /// on `InitDone`.
    Init,
    /// One live entry of the snapshot.
    InitApply(Entry),
    /// The snapshot is complete; live events follow.
    InitDone,
    /// A key was written.
    Put(Entry),
    /// A key was deleted on purpose (a graceful leave, a release).
    Deleted {
        /// The key.
        key: String,
        /// Revision of the delete.
        revision: u64,
    },
    /// A key expired through the bucket's `max_age` (a crash, a missed renewal).
    Expired {
        /// The key.
        key: String,
        /// Revision of the expiry marker.
        revision: u64,
    },
}

/// How a bucket must be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketSpec {
    /// The bucket name.
    pub name: String,
    /// Values not rewritten within this time expire (`None`: never).
    pub max_age: Option<Duration>,
    /// Values kept per key (1 for every Parti bucket).
    pub history: u8,
    /// Number of replicas (1..=5).
    pub replicas: usize,
    /// Whether expiries leave markers a watcher can see (requires NATS ≥ 2.11).
    pub limit_markers: bool,
    /// Watches (consumers, on NATS) the bucket must accept at once, if more than the store's
    /// default. nats-server ≥ 2.15 limits a stream to 1,000 consumers unless the stream sets
    /// its own limit, and every worker keeps a watch or two on each bucket: a fleet of 500
    /// would be refused. A store raises its limit to this when it opens the bucket (never
    /// lowers it); it is not part of [`check_compatible`](crate::store)'s comparison.
    pub min_consumers: Option<u32>,
    /// Whether opening the bucket creates it when it does not exist (the default). Off, a
    /// missing bucket is [`StoreError::BucketMissing`]: buckets are provisioned by an operator
    /// (`parti provision apply`) and a worker never creates one, not even to replace a bucket
    /// deleted under it.
    pub create_if_missing: bool,
}

impl BucketSpec {
    /// A spec with history 1, one replica, no expiry and no markers.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_age: None,
            history: 1,
            replicas: 1,
            limit_markers: false,
            min_consumers: None,
            create_if_missing: true,
        }
    }

    /// Sets `max_age` and turns limit markers on, so expiries are visible to watchers.
    #[must_use]
    pub fn expiring(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self.limit_markers = true;
        self
    }

    /// Sets the number of replicas.
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets [`create_if_missing`](Self::create_if_missing): off, opening a missing bucket fails.
    #[must_use]
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Sets [`min_consumers`](Self::min_consumers): the watches the bucket must accept at once.
    #[must_use]
    pub fn min_consumers(mut self, consumers: u32) -> Self {
        self.min_consumers = Some(consumers);
        self
    }
}

/// A stream of watch events; see the module docs for its contract.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// A key-value store that hands out buckets.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Opens the bucket, creating it when missing. An existing bucket whose settings differ
    /// from `spec` in a way that changes behaviour is reported as
    /// [`StoreError::IncompatibleBucket`].
    async fn bucket(&self, spec: &BucketSpec) -> Result<Arc<dyn Bucket>, StoreError>;

    /// Whether the store is reachable right now, as far as the client knows (used to enter
    /// degraded mode after `enterThreshold` of disconnection).
    fn is_connected(&self) -> bool {
        true
    }
}

/// One key-value bucket.
#[async_trait]
pub trait Bucket: Send + Sync + fmt::Debug + 'static {
    /// The bucket name.
    fn name(&self) -> &str;

    /// The live value of a key, or `None` when absent, deleted or expired.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// The key's last change, as a watcher would have seen it: [`WatchEvent::Put`] with its
    /// live value; [`WatchEvent::Deleted`] or [`WatchEvent::Expired`] when its last value was
    /// deleted on purpose or expired through `max_age` (the bucket needs limit markers); `None`
    /// when nothing is left of it (never written, or the tombstone has aged out). No other
    /// variant is returned.
    ///
    /// This tells a stable ID released by a graceful stop from one that lapsed after a crash.
    /// The default, for a store that keeps no tombstones, reports live values only.
    async fn last_change(&self, key: &str) -> Result<Option<WatchEvent>, StoreError> {
        Ok(self.get(key).await?.map(WatchEvent::Put))
    }

    /// Writes a key that has no live value; [`StoreError::AlreadyExists`] otherwise.
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, StoreError>;

    /// Writes a key whose last revision is `expected`; [`StoreError::Conflict`] otherwise
    /// (including when the key is gone).
    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, StoreError>;

    /// Writes a key unconditionally.
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError>;

    /// Deletes a key, only if its last revision is `expected` when given.
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError>;

    /// Every live entry whose key matches `pattern`, sorted by key.
    ///
    /// A pattern is an exact key or NATS-style tokens separated by `.`, where `*` matches one
    /// token and a final `>` matches one or more: `worker.>`, `>` (everything).
    async fn list(&self, pattern: &str) -> Result<Vec<Entry>, StoreError>;

    /// Watches the keys matching `pattern` (see [`list`](Self::list)): a snapshot, then live
    /// events.
    async fn watch(&self, pattern: &str) -> Result<WatchStream, StoreError>;

    /// Which incarnation of the bucket this is: an opaque value that changes when the bucket
    /// is deleted and created again, or `None` while it does not exist. A worker probes it to
    /// notice a bucket lost or replaced under it (its data, floors included, gone with it).
    ///
    /// The default, for a store that cannot tell, is always `Some(0)`: never missing, never
    /// replaced.
    async fn incarnation(&self) -> Result<Option<u64>, StoreError> {
        Ok(Some(0))
    }
}

/// How an edit that lost a revision race retries: soon, with jitter, a bounded number of times
/// (the edits of [`NatsKv`](crate::source::NatsKv) and [`Control`](crate::control::Control)).
pub(crate) fn conflict_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(5))
        .with_max_delay(std::time::Duration::from_millis(500))
        .with_max_times(20)
        .with_jitter()
}

/// Whether `e` is a lost revision race, worth retrying from a fresh read.
pub(crate) fn is_conflict(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Store(StoreError::Conflict { .. }))
}
