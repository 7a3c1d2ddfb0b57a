//! [`NatsKv`]: the partition list kept in a KV bucket, watched by the leader and edited with
//! revision checks.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable as _;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use super::PartitionSource;
use super::document::{self, Decoded, Layout, Manifest};
use crate::error::{Error, Result, StoreError};
use crate::partition::{Partition, check_unique};
use crate::store::{Bucket, BucketSpec, Store, WatchEvent, conflict_backoff, is_conflict};

/// Chunks fetched at once when reading a chunked list.
const PARALLEL_CHUNK_READS: usize = 16;

/// Reads of a chunked list that may start over because an edit replaced it meanwhile.
const READ_ATTEMPTS: usize = 5;

/// The partition list stored under one key of a KV bucket.
///
/// The leader reads it like any [`PartitionSource`], and also watches the key: an edit is
/// rebalanced on as soon as `minRebalanceInterval` allows (several edits in a row coalesce into
/// one publish; none is lost), and a periodic re-read catches anything a broken watch missed.
/// Operators edit it with `parti partitions list|add|remove|set`; applications with
/// [`add`](Self::add), [`remove`](Self::remove), [`set`](Self::set), [`modify`](Self::modify) or
/// [`update`](Self::update). Every edit is revision-checked: `add`, `remove` and `modify`
/// re-apply themselves to a list another editor changed meanwhile, so concurrent edits are all
/// kept; `update` fails on such a change instead; `set` replaces whatever is there (the last
/// `set` wins, as its name says).
///
/// # Stored form
///
/// The value under the key is `{"partitions": [{"keys": ["tenant-a"], "weight": 200}, ...]}`,
/// gzip-compressed when its JSON is larger than [`compress_above`](Self::compress_above)
/// (16 KiB by default). A stored list larger than [`chunk_bytes`](Self::chunk_bytes) (512 KiB
/// by default, half of nats-server's default `max_payload`) is split over chunk keys
/// `<key>.chunk.<generation>.<i>` written first, and the key holds a small manifest naming
/// them; readers reassemble it, and a reader racing an edit starts over. A million partitions
/// take a few megabytes.
///
/// # Errors the leader sees
///
/// A missing key, a value that is not a partition list, or a list with a duplicate is a
/// [`Source`](Error::Source) error for the leader: the last good assignment stays in force
/// (nothing is revoked because a key was deleted or overwritten with garbage), the error is
/// reported through `on_error` / [`Event::Error`](crate::Event), and the next good list is
/// picked up when it is written. An empty list is a real list: every partition is released.
///
/// ```no_run
/// use parti::{Manager, Partition, source::NatsKv};
/// # async fn demo(js: async_nats::jetstream::Context) -> parti::Result<()> {
/// let partitions = NatsKv::open(js.clone(), NatsKv::DEFAULT_BUCKET).await?;
/// partitions.add(vec![Partition::new(["tenant-a"], 200)?]).await?;
/// let manager = Manager::builder(js).source(partitions.clone()).start().await?;
/// partitions.remove(["tenant-a"]).await?; // the leader rebalances
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsKv {
    bucket: Arc<dyn Bucket>,
    key: String,
    layout: Layout,
    /// The last list read and the head revision it was read at: the leader re-reads the
    /// source every second or so, and an unchanged head need not be decoded (nor its chunks
    /// fetched) again. Shared by clones.
    cache: Arc<Mutex<Option<Cached>>>,
}

/// The last head decoded, and what came of it.
#[derive(Clone)]
struct Cached {
    revision: u64,
    head: Bytes,
    /// The list, or why it could not be decoded.
    outcome: std::result::Result<Current, String>,
}

/// The chunks of a chunked list, as read.
enum Chunks {
    /// Every chunk, in order.
    Read(Vec<Bytes>),
    /// This chunk key is missing (an edit replaced the list meanwhile, or it is corrupt).
    Missing(String),
    /// The chunks cannot make up the document.
    Corrupt(String),
}

/// Values larger than this are decoded on the blocking pool, not on the async workers (a
/// million partitions take about a second): lease renewals must not wait for them.
const DECODE_INLINE_BYTES: usize = 64 * 1024;

/// Runs `decode` on `input` (`bytes` long) inline when it is small, on the blocking pool
/// otherwise.
async fn decode_off_runtime<I, T, F>(
    input: I,
    bytes: usize,
    decode: F,
) -> std::result::Result<T, String>
where
    I: Send + 'static,
    T: Send + 'static,
    F: FnOnce(I) -> std::result::Result<T, String> + Send + 'static,
{
    if bytes <= DECODE_INLINE_BYTES {
        return decode(input);
    }
    tokio::task::spawn_blocking(move || decode(input))
        .await
        .unwrap_or_else(|e| Err(format!("decoding failed: {e}")))
}

impl std::fmt::Debug for NatsKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the cache: it holds the whole list.
        f.debug_struct("NatsKv")
            .field("bucket", &self.bucket.name())
            .field("key", &self.key)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// A list as read: the head revision, the partitions and, when chunked, the manifest (whose
/// chunks an edit replacing this list removes).
#[derive(Debug, Clone)]
struct Current {
    revision: u64,
    partitions: Arc<Vec<Partition>>,
    manifest: Option<Manifest>,
}

/// A partition list as read from a [`NatsKv`], with the revision an
/// [`update`](NatsKv::update) must name. The default is the empty listing of a key never
/// written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listed {
    /// The partitions, in stored order (empty when there is no list yet).
    pub partitions: Vec<Partition>,
    /// The revision of the key, `None` when there is no list yet.
    pub revision: Option<u64>,
}

impl NatsKv {
    /// The bucket `parti partitions` and `parti worker --partitions-bucket` use by default.
    pub const DEFAULT_BUCKET: &'static str = "parti-partitions";
    /// The key the list is stored under by default.
    pub const DEFAULT_KEY: &'static str = "partitions";

    /// A source over `bucket` (any [`Store`]'s), reading [`DEFAULT_KEY`](Self::DEFAULT_KEY).
    pub fn new(bucket: Arc<dyn Bucket>) -> Self {
        Self {
            bucket,
            key: Self::DEFAULT_KEY.to_owned(),
            layout: Layout {
                compress_above: 16 * 1024,
                chunk_bytes: 512 * 1024,
            },
            cache: Arc::default(),
        }
    }

    /// Opens (creating it when missing) the NATS KV bucket `bucket` with one replica; use
    /// [`open_in`](Self::open_in) for other settings.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the bucket cannot be opened or created.
    #[cfg(feature = "nats")]
    pub async fn open(js: async_nats::jetstream::Context, bucket: &str) -> Result<Self> {
        Self::open_in(&crate::store::NatsStore::new(js), &BucketSpec::new(bucket)).await
    }

    /// Opens the bucket `spec` describes in `store`.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the bucket cannot be opened (or is missing and `spec` does not
    /// create it).
    pub async fn open_in(store: &dyn Store, spec: &BucketSpec) -> Result<Self> {
        Ok(Self::new(store.bucket(spec).await?))
    }

    /// Reads and writes the list under `key` instead of [`DEFAULT_KEY`](Self::DEFAULT_KEY)
    /// (several groups can share one bucket).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self.cache = Arc::default();
        self
    }

    /// Compresses a list whose JSON is longer than `bytes` (default 16 KiB).
    #[must_use]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.layout.compress_above = bytes;
        self
    }

    /// Splits a stored list longer than `bytes` over several keys (default 512 KiB). Keep it
    /// at most the server's `max_payload` (1 MiB by default) less 512 bytes kept for headers,
    /// or the write is refused with [`StoreError::ValueTooLarge`](crate::StoreError::ValueTooLarge).
    /// At least 1.
    #[must_use]
    pub fn chunk_bytes(mut self, bytes: usize) -> Self {
        self.layout.chunk_bytes = bytes.max(1);
        self
    }

    /// The bucket's name.
    pub fn bucket_name(&self) -> &str {
        self.bucket.name()
    }

    /// The key the list is stored under.
    pub fn key_name(&self) -> &str {
        &self.key
    }

    /// The stored list and its revision; an empty list with no revision when none was
    /// written yet.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the stored value is not a partition list (or has a duplicate);
    /// [`Error::Store`] when the store fails.
    pub async fn read(&self) -> Result<Listed> {
        Ok(match self.read_current().await? {
            Some(current) => Listed {
                partitions: current.partitions.as_ref().clone(),
                revision: Some(current.revision),
            },
            None => Listed {
                partitions: Vec::new(),
                revision: None,
            },
        })
    }

    /// Replaces the list if its revision is still `expected` (`None`: if there is no list
    /// yet). Returns the new revision.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] (as [`Error::Store`]) when someone else wrote the list since;
    /// [`Error::InvalidPartition`] naming a duplicate; [`Error::Store`] when the store fails.
    /// Whatever is stored at
    /// `expected` is replaced, even a value that is not a partition list.
    pub async fn update(&self, partitions: &[Partition], expected: Option<u64>) -> Result<u64> {
        check_unique(partitions)?;
        let replaced = match self.head_for_replace().await? {
            Some((revision, manifest)) if Some(revision) == expected => manifest,
            None if expected.is_none() => None,
            _ => return Err(self.conflict()),
        };
        self.write(partitions, expected, replaced.as_ref()).await
    }

    /// Edits the list with `edit`, retrying from a fresh read when another editor got there
    /// first. `edit` may run several times; an error from it ends the edit with nothing
    /// written. Returns the new revision.
    ///
    /// # Errors
    ///
    /// The error `edit` returns; [`Error::InvalidPartition`] naming a duplicate the edit made;
    /// [`StoreError::Conflict`] when the key stays contended through every retry; the errors
    /// of [`read`](Self::read).
    pub async fn modify<F>(&self, edit: F) -> Result<u64>
    where
        F: Fn(&mut Vec<Partition>) -> Result<()> + Send + Sync,
    {
        let attempt = || async {
            let current = self.read_current().await?;
            let (expected, mut partitions, replaced) = match current {
                Some(current) => (
                    Some(current.revision),
                    current.partitions.as_ref().clone(),
                    current.manifest,
                ),
                None => (None, Vec::new(), None),
            };
            edit(&mut partitions)?;
            check_unique(&partitions)?;
            self.write(&partitions, expected, replaced.as_ref()).await
        };
        attempt.retry(conflict_backoff()).when(is_conflict).await
    }

    /// Replaces the whole list, whatever is stored (a value that is not a partition list
    /// included: this is how an operator repairs one). The write is revision-checked against
    /// the value it replaces and retried on conflict, so chunks are never left half-replaced.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPartition`] naming a duplicate; [`StoreError::Conflict`] when the key
    /// stays contended through every retry; [`Error::Store`] when the store fails.
    pub async fn set(&self, partitions: Vec<Partition>) -> Result<u64> {
        check_unique(&partitions)?;
        let attempt = || async {
            let head = self.head_for_replace().await?;
            let (expected, replaced) = match head {
                Some((revision, manifest)) => (Some(revision), manifest),
                None => (None, None),
            };
            self.write(&partitions, expected, replaced.as_ref()).await
        };
        attempt.retry(conflict_backoff()).when(is_conflict).await
    }

    /// Appends `partitions` to the list.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPartition`] naming a partition already in the list (or given twice);
    /// otherwise as [`modify`](Self::modify).
    pub async fn add(&self, partitions: Vec<Partition>) -> Result<u64> {
        check_unique(&partitions)?;
        self.modify(|list| {
            let present: std::collections::HashSet<&[String]> =
                list.iter().map(Partition::keys).collect();
            if let Some(dup) = partitions.iter().find(|p| present.contains(p.keys())) {
                return Err(Error::InvalidPartition {
                    partition: dup.subject_key(),
                    reason: "already in the partition list".into(),
                });
            }
            list.extend(partitions.iter().cloned());
            Ok(())
        })
        .await
    }

    /// Removes the partitions whose [`subject_key`](Partition::subject_key) (keys joined with
    /// `.`) is given.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPartition`] naming a key that is not in the list; otherwise as
    /// [`modify`](Self::modify).
    pub async fn remove<I, S>(&self, subject_keys: I) -> Result<u64>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let gone: std::collections::BTreeSet<String> =
            subject_keys.into_iter().map(Into::into).collect();
        self.modify(|list| {
            let present: std::collections::HashSet<String> =
                list.iter().map(Partition::subject_key).collect();
            if let Some(missing) = gone.iter().find(|k| !present.contains(*k)) {
                return Err(Error::InvalidPartition {
                    partition: missing.clone(),
                    reason: "not in the partition list".into(),
                });
            }
            list.retain(|p| !gone.contains(&p.subject_key()));
            Ok(())
        })
        .await
    }

    /// The head's revision and, when it holds a readable chunked list, its manifest: what a
    /// replacing write names. A head that cannot be decoded is replaced too (its chunks, if it
    /// had any, are left behind).
    async fn head_for_replace(&self) -> Result<Option<(u64, Option<Manifest>)>> {
        match self.read_current().await {
            Ok(current) => Ok(current.map(|c| (c.revision, c.manifest))),
            Err(Error::Decode { .. }) => Ok(self
                .bucket
                .get(&self.key)
                .await?
                .map(|entry| (entry.revision, None))),
            Err(e) => Err(e),
        }
    }

    /// The current list with its head revision and, when chunked, its manifest; `None` when
    /// the key holds nothing.
    async fn read_current(&self) -> Result<Option<Current>> {
        let mut last_missing = String::new();
        for attempt in 0..READ_ATTEMPTS {
            if attempt > 0 {
                // An edit is replacing the list: give it a moment to land.
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            let Some(head) = self.bucket.get(&self.key).await? else {
                return Ok(None);
            };
            // Keyed by the head's bytes as well as its revision: revisions start again in a
            // recreated bucket, and a chunked head names a random generation.
            if let Some(cached) = self.cached()
                && cached.revision == head.revision
                && cached.head == head.value
            {
                return cached
                    .outcome
                    .map(Some)
                    .map_err(|reason| self.decode_error(reason));
            }
            let outcome = match decode_off_runtime(head.value.clone(), head.value.len(), |v| {
                document::decode_head(&v)
            })
            .await
            {
                Ok(Decoded::Inline(partitions)) => Ok((partitions, None)),
                Ok(Decoded::Chunked(manifest)) => match self.read_chunks(&manifest).await? {
                    Chunks::Read(chunks) => {
                        let m = manifest.clone();
                        let bytes = usize::try_from(manifest.bytes).unwrap_or(usize::MAX);
                        decode_off_runtime(chunks, bytes, move |c| document::decode_chunks(&m, &c))
                            .await
                            .map(|partitions| (partitions, Some(manifest)))
                    }
                    Chunks::Missing(key) => {
                        // An edit replaced this list (and removed its chunks) since the head
                        // was read: read the new head.
                        last_missing = key;
                        continue;
                    }
                    Chunks::Corrupt(reason) => Err(reason),
                },
                Err(reason) => Err(reason),
            };
            let outcome = outcome.map(|(partitions, manifest)| Current {
                revision: head.revision,
                partitions: Arc::new(partitions),
                manifest,
            });
            // A failure is kept too: the leader asks every second, and a garbled list must not
            // be decoded again each time.
            *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
                revision: head.revision,
                head: head.value,
                outcome: outcome.clone(),
            });
            return outcome
                .map(Some)
                .map_err(|reason| self.decode_error(reason));
        }
        Err(self.decode_error(format!(
            "chunk {last_missing} stayed missing over {READ_ATTEMPTS} reads"
        )))
    }

    /// The chunks of `manifest`, in order. Reading stops at the first missing chunk and as soon
    /// as the chunks hold more bytes than the manifest says.
    async fn read_chunks(&self, manifest: &Manifest) -> Result<Chunks> {
        let reads = (0..manifest.count).map(|i| {
            let key = document::chunk_key(&self.key, &manifest.generation, i);
            let bucket = Arc::clone(&self.bucket);
            async move { (bucket.get(&key).await, key) }
        });
        let mut stream = futures::stream::iter(reads).buffered(PARALLEL_CHUNK_READS);
        let mut chunks = Vec::new();
        let mut total: u64 = 0;
        while let Some((entry, key)) = stream.next().await {
            let Some(entry) = entry? else {
                return Ok(Chunks::Missing(key));
            };
            total = total.saturating_add(entry.value.len() as u64);
            if total > manifest.bytes {
                return Ok(Chunks::Corrupt(format!(
                    "the chunks of generation {} hold more than the {} bytes the manifest says",
                    manifest.generation, manifest.bytes
                )));
            }
            chunks.push(entry.value);
        }
        Ok(Chunks::Read(chunks))
    }

    /// Writes `partitions` if the head is still at `expected`: chunks first (when needed),
    /// then the head; on success the chunks of `replaced` are removed.
    async fn write(
        &self,
        partitions: &[Partition],
        expected: Option<u64>,
        replaced: Option<&Manifest>,
    ) -> Result<u64> {
        let generation = format!("{:016x}", rand::random::<u64>());
        let encoded = document::encode(partitions, self.layout, &generation)
            .map_err(|reason| Error::Source(reason.into()))?;
        let written: Vec<String> = match &encoded.chunks {
            Some((manifest, chunks)) => {
                let mut keys = Vec::with_capacity(chunks.len());
                for (i, chunk) in (0..manifest.count).zip(chunks) {
                    let key = document::chunk_key(&self.key, &manifest.generation, i);
                    if let Err(e) = self.bucket.put(&key, chunk.clone()).await {
                        keys.push(key);
                        self.remove_chunks(&keys).await;
                        return Err(e.into());
                    }
                    keys.push(key);
                }
                keys
            }
            None => Vec::new(),
        };
        let head = encoded.head;
        let committed = match expected {
            Some(revision) => self.bucket.update(&self.key, head.clone(), revision).await,
            None => self.bucket.create(&self.key, head.clone()).await,
        };
        let revision = match committed {
            Ok(revision) => revision,
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => {
                self.remove_chunks(&written).await;
                return Err(self.conflict());
            }
            Err(e) => {
                // The write may have landed (a timeout, a lost reply): the chunks stay unless
                // the head provably holds something else.
                match self.bucket.get(&self.key).await {
                    Ok(Some(now)) if now.value == head => now.revision,
                    Ok(_) => {
                        self.remove_chunks(&written).await;
                        return Err(e.into());
                    }
                    Err(_) => return Err(e.into()),
                }
            }
        };
        if let Some(old) = replaced {
            let keys: Vec<String> = (0..old.count)
                .map(|i| document::chunk_key(&self.key, &old.generation, i))
                .collect();
            self.remove_chunks(&keys).await;
        }
        Ok(revision)
    }

    /// Deletes chunk keys, best effort: a leftover chunk is only wasted space.
    async fn remove_chunks(&self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.bucket.delete(key, None).await {
                tracing::warn!(key, error = %e, "could not remove a partition-list chunk");
            }
        }
    }

    fn cached(&self) -> Option<Cached> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn conflict(&self) -> Error {
        Error::Store(StoreError::Conflict {
            bucket: self.bucket.name().to_owned(),
            key: self.key.clone(),
        })
    }

    fn decode_error(&self, reason: String) -> Error {
        Error::Decode {
            bucket: self.bucket.name().to_owned(),
            key: self.key.clone(),
            reason,
        }
    }
}

#[async_trait]
impl PartitionSource for NatsKv {
    async fn list_partitions(&self) -> Result<Vec<Partition>> {
        match self.read_current().await {
            Ok(Some(current)) => Ok(current.partitions.as_ref().clone()),
            Ok(None) => Err(Error::Source(
                format!(
                    "no partition list under {}/{} (write one with `parti partitions set`)",
                    self.bucket.name(),
                    self.key
                )
                .into(),
            )),
            Err(e) => Err(Error::Source(Box::new(e))),
        }
    }

    async fn changes(&self) -> Option<BoxStream<'static, ()>> {
        let watch = match self.bucket.watch(&self.key).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, key = %self.key, "cannot watch the partition list; re-reading it periodically");
                return None;
            }
        };
        Some(
            watch
                .filter_map(|event| {
                    std::future::ready(match event {
                        // The snapshot was read at takeover; a snapshot's end (also after a
                        // watch that started over) is worth one comparison.
                        Ok(WatchEvent::Init | WatchEvent::InitApply(_)) | Err(_) => None,
                        Ok(_) => Some(()),
                    })
                })
                .boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::MemoryStore;

    async fn source() -> NatsKv {
        NatsKv::open_in(&MemoryStore::new(), &BucketSpec::new("parts"))
            .await
            .unwrap()
    }

    fn parts(names: &[&str]) -> Vec<Partition> {
        names
            .iter()
            .map(|n| Partition::new([*n], 10).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn edits_are_revision_checked_and_name_the_offending_partition() {
        let kv = source().await;
        assert_eq!(
            kv.read().await.unwrap(),
            Listed {
                partitions: vec![],
                revision: None
            }
        );
        let err = kv.list_partitions().await.unwrap_err();
        assert!(matches!(err, Error::Source(_)), "{err}");
        assert!(err.to_string().contains("no partition list"), "{err}");

        let r1 = kv.add(parts(&["a", "b"])).await.unwrap();
        let r2 = kv.add(parts(&["c"])).await.unwrap();
        assert!(r2 > r1);
        assert_eq!(kv.list_partitions().await.unwrap(), parts(&["a", "b", "c"]));
        let err = kv.add(parts(&["b"])).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidPartition { partition, .. } if partition == "b"),
            "{err}"
        );
        let err = kv.remove(["zz"]).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidPartition { partition, .. } if partition == "zz"),
            "{err}"
        );
        let err = kv.set(parts(&["x", "x"])).await.unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        // A stale revision is a conflict and writes nothing.
        let err = kv.update(&parts(&["q"]), Some(r1)).await.unwrap_err();
        assert!(
            matches!(err, Error::Store(StoreError::Conflict { .. })),
            "{err}"
        );
        let err = kv.update(&parts(&["q"]), None).await.unwrap_err();
        assert!(
            matches!(err, Error::Store(StoreError::Conflict { .. })),
            "{err}"
        );
        kv.remove(["a", "c"]).await.unwrap();
        let listed = kv.read().await.unwrap();
        assert_eq!(listed.partitions, parts(&["b"]));
        kv.update(&parts(&["d"]), listed.revision).await.unwrap();
        assert_eq!(kv.list_partitions().await.unwrap(), parts(&["d"]));
    }

    #[tokio::test]
    async fn concurrent_editors_lose_no_edit() {
        let kv = source().await;
        kv.set(vec![]).await.unwrap();
        let edits = (0..20).map(|i| {
            let kv = kv.clone();
            async move { kv.add(parts(&[&format!("p{i}")])).await }
        });
        for result in futures::future::join_all(edits).await {
            result.unwrap();
        }
        assert_eq!(kv.read().await.unwrap().partitions.len(), 20);
    }

    #[tokio::test]
    async fn a_large_list_round_trips_through_chunks_and_old_chunks_are_removed() {
        let store = MemoryStore::new();
        let bucket = store.bucket(&BucketSpec::new("parts")).await.unwrap();
        let kv = NatsKv::new(Arc::clone(&bucket)).chunk_bytes(2048);
        let big: Vec<Partition> = (0..5_000)
            .map(|i| Partition::new([format!("tenant-{i}")], i % 9).unwrap())
            .collect();
        kv.set(big.clone()).await.unwrap();
        let chunks = bucket.list("partitions.chunk.>").await.unwrap();
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        // A second reader (no cache) reassembles the same list.
        let fresh = NatsKv::new(Arc::clone(&bucket));
        assert_eq!(fresh.list_partitions().await.unwrap(), big);
        // Replacing it leaves only the new generation's chunks.
        let mut smaller = big.clone();
        smaller.truncate(4_000);
        kv.set(smaller.clone()).await.unwrap();
        let after = bucket.list("partitions.chunk.>").await.unwrap();
        let generations: std::collections::BTreeSet<&str> = after
            .iter()
            .map(|e| e.key.split('.').nth(2).unwrap())
            .collect();
        assert_eq!(generations.len(), 1, "{generations:?}");
        assert_eq!(fresh.list_partitions().await.unwrap(), smaller);
        // Back to inline: every chunk is gone.
        kv.set(parts(&["a"])).await.unwrap();
        assert!(bucket.list("partitions.chunk.>").await.unwrap().is_empty());
        assert_eq!(fresh.list_partitions().await.unwrap(), parts(&["a"]));
    }

    #[tokio::test]
    async fn garbage_under_the_key_is_a_decode_error_and_is_replaceable() {
        let store = MemoryStore::new();
        let bucket = store.bucket(&BucketSpec::new("parts")).await.unwrap();
        let kv = NatsKv::new(Arc::clone(&bucket));
        bucket
            .put("partitions", Bytes::from_static(b"\x00garbage"))
            .await
            .unwrap();
        let err = kv.read().await.unwrap_err();
        assert!(
            matches!(&err, Error::Decode { key, .. } if key == "partitions"),
            "{err}"
        );
        let err = kv.list_partitions().await.unwrap_err();
        assert!(matches!(err, Error::Source(_)), "{err}");
        // An edit cannot build on garbage; replacing the whole list repairs it.
        let err = kv.add(parts(&["a"])).await.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
        kv.set(parts(&["a"])).await.unwrap();
        assert_eq!(kv.list_partitions().await.unwrap(), parts(&["a"]));
        // So does a revision-checked update naming the garbage's revision.
        let garbage = bucket
            .put("partitions", Bytes::from_static(b"{\"partitions\": 3}"))
            .await
            .unwrap();
        assert!(kv.read().await.is_err());
        kv.update(&parts(&["b"]), Some(garbage)).await.unwrap();
        assert_eq!(kv.list_partitions().await.unwrap(), parts(&["b"]));
    }

    #[tokio::test]
    async fn a_recreated_bucket_is_read_afresh_even_at_a_known_revision() {
        let store = MemoryStore::new();
        let spec = BucketSpec::new("parts");
        let kv = NatsKv::open_in(&store, &spec).await.unwrap();
        let first = kv.set(parts(&["a"])).await.unwrap();
        assert_eq!(kv.list_partitions().await.unwrap(), parts(&["a"]));
        assert!(store.delete_bucket("parts"));
        let other = NatsKv::open_in(&store, &spec).await.unwrap();
        let second = other.set(parts(&["b"])).await.unwrap();
        assert_eq!(first, second, "revisions start again");
        // The first handle, whose cache holds list A at that revision, sees B.
        let reopened = NatsKv::new(store.bucket(&spec).await.unwrap());
        assert_eq!(reopened.list_partitions().await.unwrap(), parts(&["b"]));
        let kv = NatsKv {
            bucket: store.bucket(&spec).await.unwrap(),
            ..kv
        };
        assert_eq!(kv.list_partitions().await.unwrap(), parts(&["b"]));
    }

    #[tokio::test]
    async fn the_change_stream_reports_edits_after_the_snapshot() {
        let kv = source().await;
        kv.set(parts(&["a"])).await.unwrap();
        let mut changes = kv.changes().await.unwrap();
        // The end of the initial snapshot counts once.
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .unwrap()
            .unwrap();
        kv.add(parts(&["b"])).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .unwrap()
            .unwrap();
    }
}
