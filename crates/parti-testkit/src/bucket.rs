//! A [`Bucket`] that forwards every call to a real one and lets a test step in on chosen calls.
//!
//! Tests that need a misbehaving store (a stale replica, a lost reply, a watch that misses
//! events, a write that times out) write a [`BucketHooks`] with only the hooks they need and
//! wrap the real bucket in a [`HookedBucket`]; everything else reaches the real bucket untouched.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parti::store::{Bucket, Entry, StoreError, WatchEvent, WatchStream};

/// A write the wrapped bucket is about to make, or has just made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write<'a> {
    /// The bucket's name, so an injected error names it as the real store's errors do.
    pub bucket: &'a str,
    /// `"create"`, `"update"`, `"put"` or `"delete"`: the names [`StoreError`] uses, so a hook
    /// can both pick the writes it affects and build a faithful error.
    pub op: &'static str,
    /// The key written, for hooks that affect one key only.
    pub key: &'a str,
}

impl Write<'_> {
    /// The [`StoreError::Timeout`] the real store reports for this write: what a store with
    /// transient errors, or one whose reply was lost, answers.
    pub fn timeout(&self) -> StoreError {
        StoreError::Timeout {
            op: self.op,
            bucket: self.bucket.to_owned(),
        }
    }
}

/// The calls of a [`HookedBucket`] a test wants to change. Every hook defaults to doing
/// nothing, so an implementation names only the behaviour it changes.
///
/// A hook sees calls from every task using the bucket at once, hence `Sync`: keep switches and
/// counters in atomics.
pub trait BucketHooks: Send + Sync + fmt::Debug + 'static {
    /// Called before [`Bucket::get`], and for each entry a [`Bucket::list`] returns: `Some`
    /// answers for the key instead of the real bucket (a stale replica; `Ok(None)` leaves the
    /// key out of a listing), `None` lets it through.
    fn get(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        let _ = key;
        None
    }

    /// Called before every write: an error is returned instead, and the write is not made (a
    /// request that never reached the store).
    fn before_write(&self, write: Write<'_>) -> Result<(), StoreError> {
        let _ = write;
        Ok(())
    }

    /// Called after a write the real bucket made: an error is returned instead of its result,
    /// though the write stays made (a lost reply).
    fn after_write(&self, write: Write<'_>) -> Result<(), StoreError> {
        let _ = write;
        Ok(())
    }

    /// Called with every stream the real bucket's [`Bucket::watch`] opened: what it returns is
    /// what the caller gets (a watch that misses events).
    fn watch(&self, stream: WatchStream) -> WatchStream {
        stream
    }
}

/// A [`Bucket`] that forwards every call to `inner`, letting its [`BucketHooks`] step in.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// use parti::store::{Bucket, StoreError};
/// use parti_testkit::{BucketHooks, HookedBucket, Write};
///
/// /// Writes time out while `failing` is set.
/// #[derive(Debug, Default)]
/// struct Failing {
///     failing: AtomicBool,
/// }
///
/// impl BucketHooks for Failing {
///     fn before_write(&self, write: Write<'_>) -> Result<(), StoreError> {
///         match self.failing.load(Ordering::SeqCst) {
///             true => Err(write.timeout()),
///             false => Ok(()),
///         }
///     }
/// }
///
/// fn wrap(real: Arc<dyn Bucket>) -> Arc<HookedBucket<Failing>> {
///     Arc::new(HookedBucket::new(real, Failing::default()))
/// }
/// ```
#[derive(Debug)]
pub struct HookedBucket<H> {
    /// The bucket every call that the hooks let through reaches.
    inner: Arc<dyn Bucket>,
    /// The test's changes; reachable through [`hooks`](Self::hooks) so the test can flip its
    /// switches and read its counters while the code under test holds the bucket.
    hooks: H,
}

impl<H: BucketHooks> HookedBucket<H> {
    /// Wraps `inner`, letting `hooks` step in on its calls.
    pub fn new(inner: Arc<dyn Bucket>, hooks: H) -> Self {
        Self { inner, hooks }
    }

    /// The hooks, to change their behaviour or read what they recorded.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// Makes a write through the hooks: `before_write`, the real write, then `after_write`
    /// once it succeeded.
    async fn write<T>(
        &self,
        op: &'static str,
        key: &str,
        real: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let write = Write {
            bucket: self.inner.name(),
            op,
            key,
        };
        self.hooks.before_write(write)?;
        let done = real.await?;
        self.hooks.after_write(write)?;
        Ok(done)
    }
}

#[async_trait]
impl<H: BucketHooks> Bucket for HookedBucket<H> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self.hooks.get(key) {
            Some(answer) => answer,
            None => self.inner.get(key).await,
        }
    }

    async fn last_change(&self, key: &str) -> Result<Option<WatchEvent>, StoreError> {
        match self.hooks.get(key) {
            // A read the hooks answer: a value, or nothing left of the key.
            Some(answer) => answer.map(|entry| entry.map(WatchEvent::Put)),
            None => self.inner.last_change(key).await,
        }
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        self.write("create", key, self.inner.create(key, value))
            .await
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, StoreError> {
        self.write("update", key, self.inner.update(key, value, expected))
            .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        self.write("put", key, self.inner.put(key, value)).await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        self.write("delete", key, self.inner.delete(key, expected))
            .await
    }

    async fn list(&self, pattern: &str) -> Result<Vec<Entry>, StoreError> {
        let mut listed = Vec::new();
        for entry in self.inner.list(pattern).await? {
            match self.hooks.get(&entry.key) {
                None => listed.push(entry),
                Some(Ok(Some(answer))) => listed.push(answer),
                Some(Ok(None)) => {}
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(listed)
    }

    async fn watch(&self, pattern: &str) -> Result<WatchStream, StoreError> {
        Ok(self.hooks.watch(self.inner.watch(pattern).await?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use futures::StreamExt;
    use parti::store::{BucketSpec, MemoryStore, Store, WatchEvent};

    use super::*;

    /// Counts calls, fails or loses the reply of writes on demand, answers reads of `stale`
    /// with a fixed entry and drops deletes from watches.
    #[derive(Debug, Default)]
    struct Everything {
        failing: AtomicBool,
        losing_replies: AtomicBool,
        writes: AtomicU64,
        stale: Option<Entry>,
    }

    impl BucketHooks for Everything {
        fn get(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
            let stale = self.stale.as_ref().filter(|e| e.key == key)?;
            Some(Ok(Some(stale.clone())))
        }
        fn before_write(&self, write: Write<'_>) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            match self.failing.load(Ordering::SeqCst) {
                true => Err(write.timeout()),
                false => Ok(()),
            }
        }
        fn after_write(&self, write: Write<'_>) -> Result<(), StoreError> {
            match self.losing_replies.load(Ordering::SeqCst) {
                true => Err(write.timeout()),
                false => Ok(()),
            }
        }
        fn watch(&self, stream: WatchStream) -> WatchStream {
            stream
                .filter(|e| std::future::ready(!matches!(e, Ok(WatchEvent::Deleted { .. }))))
                .boxed()
        }
    }

    async fn real() -> Arc<dyn Bucket> {
        MemoryStore::new()
            .bucket(&BucketSpec::new("hooked"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn calls_the_hooks_let_through_reach_the_real_bucket() {
        let real = real().await;
        let hooked = HookedBucket::new(real.clone(), Everything::default());
        assert_eq!(hooked.name(), "hooked");
        let rev = hooked.create("a", Bytes::from_static(b"1")).await.unwrap();
        let rev = hooked
            .update("a", Bytes::from_static(b"2"), rev)
            .await
            .unwrap();
        hooked.put("b", Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(real.get("a").await.unwrap().unwrap().revision, rev);
        assert_eq!(hooked.get("a").await.unwrap(), real.get("a").await.unwrap());
        assert_eq!(hooked.list(">").await.unwrap().len(), 2);
        hooked.delete("b", None).await.unwrap();
        assert_eq!(real.get("b").await.unwrap(), None);
        assert_eq!(hooked.hooks().writes.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_write_is_not_made_and_a_lost_reply_is() {
        let real = real().await;
        let hooked = HookedBucket::new(real.clone(), Everything::default());
        hooked.hooks().failing.store(true, Ordering::SeqCst);
        let err = hooked.put("a", Bytes::new()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Timeout { op: "put", ref bucket } if bucket == "hooked"),
            "{err:?}"
        );
        assert_eq!(real.get("a").await.unwrap(), None);
        hooked.hooks().failing.store(false, Ordering::SeqCst);
        hooked.hooks().losing_replies.store(true, Ordering::SeqCst);
        let err = hooked.create("a", Bytes::new()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Timeout { op: "create", .. }),
            "{err:?}"
        );
        assert!(real.get("a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn reads_and_watches_show_what_the_hooks_make_of_them() {
        let real = real().await;
        real.put("a", Bytes::from_static(b"old")).await.unwrap();
        let old = real.get("a").await.unwrap().unwrap();
        real.put("a", Bytes::from_static(b"new")).await.unwrap();
        let hooked = HookedBucket::new(
            real.clone(),
            Everything {
                stale: Some(old.clone()),
                ..Everything::default()
            },
        );
        assert_eq!(hooked.get("a").await.unwrap(), Some(old));

        let mut watch = hooked.watch(">").await.unwrap();
        while watch.next().await.unwrap().unwrap() != WatchEvent::InitDone {}
        real.delete("a", None).await.unwrap();
        real.put("b", Bytes::new()).await.unwrap();
        assert!(matches!(
            watch.next().await.unwrap().unwrap(),
            WatchEvent::Put(Entry { ref key, .. }) if key == "b"
        ));
    }
}
