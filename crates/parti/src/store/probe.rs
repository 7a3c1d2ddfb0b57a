//! A bucket wrapper for the crate's unit tests (the test kit's `HookedBucket` depends on this
//! crate, so unit tests cannot use it): it counts writes and watch openings and makes watches
//! go quiet on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{Bucket, Entry, StoreError, WatchEvent, WatchStream};
use crate::records::parse_worker_key;

/// Forwards every call to `inner`, counting writes and watch openings. While `muted`, its
/// watches deliver no live event (a watch gone quiet: a cluster node lost under it); while
/// `mine_muted`, no live event about a worker key. Snapshots always get through.
#[derive(Debug)]
pub(crate) struct Probe {
    inner: Arc<dyn Bucket>,
    writes: AtomicU64,
    watches: AtomicU64,
    /// Drops every live event from the watches.
    pub(crate) muted: Arc<AtomicBool>,
    /// Drops the live events about `worker.*` keys from the watches.
    pub(crate) mine_muted: Arc<AtomicBool>,
}

impl Probe {
    pub(crate) fn new(inner: Arc<dyn Bucket>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            writes: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            muted: Arc::new(AtomicBool::new(false)),
            mine_muted: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Writes made through the probe.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Watches opened through the probe.
    pub(crate) fn watches(&self) -> u64 {
        self.watches.load(Ordering::SeqCst)
    }

    fn write(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Bucket for Probe {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn last_change(&self, key: &str) -> Result<Option<WatchEvent>, StoreError> {
        self.inner.last_change(key).await
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        self.write();
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, StoreError> {
        self.write();
        self.inner.update(key, value, expected).await
    }
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        self.write();
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        self.write();
        self.inner.delete(key, expected).await
    }
    async fn list(&self, pattern: &str) -> Result<Vec<Entry>, StoreError> {
        self.inner.list(pattern).await
    }
    async fn watch(&self, pattern: &str) -> Result<WatchStream, StoreError> {
        let (muted, mine_muted) = (Arc::clone(&self.muted), Arc::clone(&self.mine_muted));
        let stream = self.inner.watch(pattern).await?;
        self.watches.fetch_add(1, Ordering::SeqCst);
        Ok(stream
            .filter(move |e| {
                let key = match e {
                    Ok(WatchEvent::Put(e)) => Some(e.key.as_str()),
                    Ok(WatchEvent::Deleted { key, .. } | WatchEvent::Expired { key, .. }) => {
                        Some(key.as_str())
                    }
                    _ => None,
                };
                let dropped = key.is_some_and(|k| {
                    muted.load(Ordering::SeqCst)
                        || (mine_muted.load(Ordering::SeqCst) && parse_worker_key(k).is_some())
                });
                std::future::ready(!dropped)
            })
            .boxed())
    }
}
