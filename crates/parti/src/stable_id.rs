//! Stable worker IDs (SPEC §5.1): a free `{prefix}-{n}` of a pool, held by renewal.
//!
//! [`claim`] takes an ID by creating its key, and only so: [`Bucket::create`] succeeds only on a
//! key with no live value (absent, deleted or expired), so two workers never hold one ID. A
//! claim lists the bucket once and creates the lowest free ID: alone, a worker gets the lowest
//! free ID in one listing and one create, so a replacement pod takes the ID its predecessor
//! released and a rolling update moves nothing. Workers that start together all want the same
//! lowest ID: the first 16 workers of a burst still take the lowest free IDs one after the
//! other (a fleet of up to 16 restarted at once gets its IDs back, without holes); a claim that
//! lost 16 creates draws at random among the lowest free IDs, quadrupling their number with
//! each create lost, and every eight lost creates the bucket is listed again. A cold start of
//! N workers therefore costs O(N log N) creates beyond the first 16 per worker, not the O(N²)
//! of trying every ID from the lowest up: 200 workers claiming at the same instant make about
//! 4,000 creates, where trying from the lowest up made about 20,000. A burst bigger than 16
//! leaves holes among its IDs, which later claims fill. [`Error::IdPoolExhausted`] means that a
//! listing showed every ID of the pool taken.
//!
//! The returned [`StableIdLease`] renews the key every `renew_interval` with a revision-checked
//! update, so two owners are never possible: a failed CAS (the key expired, was deleted or was
//! overwritten) is reported as [`IdStatus::Lost`] at once and renewal stops. The owner must then
//! fence itself and claim again. A transient store error keeps the lease (status stays `Held`)
//! and is retried at the next tick; [`StableIdLease::failures`] counts consecutive failures so
//! the caller can judge degradation.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_ms;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{ConfigViolation, Error, Result, StoreError};
use crate::partition::WorkerId;
use crate::store::codec;
use crate::store::{Bucket, BucketSpec};

/// The spec of the stable-ID bucket: values expire `worker_id_ttl` after their last renewal, and
/// expiries leave markers.
///
/// ```
/// use std::time::Duration;
/// let spec = parti::stable_id::bucket_spec("parti-stableid", Duration::from_secs(30), 1);
/// assert_eq!(spec.max_age, Some(Duration::from_secs(30)));
/// assert!(spec.limit_markers);
/// ```
pub fn bucket_spec(
    name: impl Into<String>,
    worker_id_ttl: Duration,
    replicas: usize,
) -> BucketSpec {
    BucketSpec::new(name)
        .expiring(worker_id_ttl)
        .replicas(replicas)
}

/// How stable IDs are claimed and renewed.
///
/// `#[non_exhaustive]`: build one with [`StableIdConfig::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StableIdConfig {
    /// The ID prefix (`workerIdPrefix`): IDs are `{prefix}-{n}`.
    pub prefix: String,
    /// The lowest ID number (`workerIdMin`).
    pub min: u32,
    /// The highest ID number (`workerIdMax`).
    pub max: u32,
    /// How often the lease is renewed; a third of `workerIdTtl`.
    pub renew_interval: Duration,
}

impl StableIdConfig {
    /// A pool of IDs `{prefix}-{min}` … `{prefix}-{max}`, each lease renewed every
    /// `renew_interval`.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn new(prefix: impl Into<String>, min: u32, max: u32, renew_interval: Duration) -> Self {
        Self {
            prefix: prefix.into(),
            min,
            max,
            renew_interval,
        }
    }

    /// The key (and worker ID) for number `n`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let cfg = parti::stable_id::StableIdConfig::new("worker", 0, 9, Duration::from_secs(10));
    /// assert_eq!(cfg.key(3), "worker-3");
    /// ```
    pub fn key(&self, n: u32) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// Whether `key` is a worker ID of this pool: `{prefix}-{n}` with `n` in `[min, max]`,
    /// written as [`key`](Self::key) writes it (no sign, no leading zeros).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let cfg = parti::stable_id::StableIdConfig::new("worker", 0, 9, Duration::from_secs(10));
    /// assert!(cfg.is_pool_id("worker-9"));
    /// assert!(!cfg.is_pool_id("worker-10") && !cfg.is_pool_id("worker-07") && !cfg.is_pool_id("ghost"));
    /// ```
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn is_pool_id(&self, key: &str) -> bool {
        self.number(key).is_some()
    }

    /// The number of pool ID `key`, `None` when `key` is not one.
    fn number(&self, key: &str) -> Option<u32> {
        key.strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<u32>().ok().filter(|v| v.to_string() == n))
            .filter(|n| (self.min..=self.max).contains(n))
    }

    fn validate(&self) -> Result<()> {
        let mut violations = Vec::new();
        if self.min > self.max {
            violations.push(ConfigViolation::new(
                "workerIdMin",
                format!("{} is greater than workerIdMax {}", self.min, self.max),
            ));
        }
        if self.renew_interval.is_zero() {
            violations.push(ConfigViolation::new(
                "workerIdTtl",
                "the renewal interval must be > 0",
            ));
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { violations })
        }
    }
}

/// The value stored under a claimed ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StableIdValue {
    /// The instance (process) that holds the ID.
    pub instance: String,
    /// The host it runs on (`$HOSTNAME`, or `unknown`).
    pub host: String,
    /// When the ID was claimed, in Unix milliseconds.
    pub claimed_at: u64,
}

/// Whether this worker still holds its stable ID.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdStatus {
    /// The ID is held; `revision` is the key's revision after the last successful write.
    Held {
        /// The ID.
        id: WorkerId,
        /// Revision of the last claim or renewal.
        revision: u64,
    },
    /// The ID was lost (expired, deleted or taken): stop processing and claim again.
    Lost {
        /// The ID that was lost.
        id: WorkerId,
        /// What happened.
        reason: String,
    },
}

impl IdStatus {
    /// True while the ID is held.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn is_held(&self) -> bool {
        matches!(self, Self::Held { .. })
    }
}

/// A claimed stable ID, renewed in the background until released, lost or aborted.
///
/// Dropping the lease stops renewal without releasing the key (like [`abort`](Self::abort)).
#[derive(Debug)]
pub struct StableIdLease {
    id: WorkerId,
    bucket: Arc<dyn Bucket>,
    value: Bytes,
    status: watch::Receiver<IdStatus>,
    failures: watch::Receiver<u32>,
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

/// Claims a free ID of `[cfg.min, cfg.max]` for `instance` — the lowest free one unless other
/// workers are claiming at the same time — and starts renewing it.
///
/// An ID whose live claim names `instance` (left by a create of this instance whose reply was
/// lost) is taken back first.
///
/// Errors: [`Error::IdPoolExhausted`] when every ID is held, [`Error::Store`] when the store fails
/// (nothing is claimed then, except a create whose reply was lost, which expires by itself),
/// [`Error::InvalidConfig`] for an empty pool or a zero renewal interval.
pub async fn claim(
    bucket: Arc<dyn Bucket>,
    cfg: &StableIdConfig,
    instance: &str,
) -> Result<StableIdLease> {
    cfg.validate()?;
    let value = codec::encode(&StableIdValue {
        instance: instance.to_owned(),
        host: std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_owned()),
        claimed_at: unix_ms(),
    })?;
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut spread: usize = 1;
    let mut lost: usize = 0;
    loop {
        let view = PoolView::list(&*bucket, cfg, instance).await?;
        if let Some(entry) = view.ours {
            // A create of ours whose reply was lost (a retried claim) left our own instance
            // there. A listing may be behind, so the claim is confirmed by a write checked
            // against the revision seen: only the current value passes.
            match bucket
                .update(&entry.key, entry.value.clone(), entry.revision)
                .await
            {
                Ok(revision) => {
                    tracing::info!(id = %entry.key, revision, instance, "re-adopted stable ID left by a lost reply");
                    return Ok(StableIdLease::spawn(
                        bucket,
                        WorkerId::new(entry.key),
                        entry.value,
                        revision,
                        cfg.renew_interval,
                    ));
                }
                Err(e) if e.is_conflict() => {
                    tracing::debug!(id = %entry.key, "a stale listing of our own claim; not ours");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut free = first_free(&view.taken, cfg.min, cfg.max, MAX_SPREAD);
        if free.is_empty() {
            return Err(Error::IdPoolExhausted {
                min: cfg.min,
                max: cfg.max,
            });
        }
        for _ in 0..CREATES_PER_LISTING {
            if free.is_empty() {
                break;
            }
            // The lowest free ID first, for the first DENSE_CLAIMS lost creates: a few workers
            // starting together (a full restart) pack the bottom of the pool and get their
            // IDs back. Then at random among the `spread` lowest.
            let pick = match lost < DENSE_CLAIMS {
                true => 0,
                false => rng.random_range(0..spread.min(free.len())),
            };
            let n = free.remove(pick);
            let key = cfg.key(n);
            match bucket.create(&key, value.clone()).await {
                Ok(revision) => {
                    tracing::info!(id = %key, revision, instance, "claimed stable ID");
                    return Ok(StableIdLease::spawn(
                        bucket,
                        WorkerId::new(key),
                        value,
                        revision,
                        cfg.renew_interval,
                    ));
                }
                // Another worker is claiming too: spread out over more of the free IDs.
                Err(e) if e.is_conflict() => {
                    lost += 1;
                    if lost >= DENSE_CLAIMS {
                        spread = (spread * 4).min(MAX_SPREAD);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Lost creates during which a claim keeps to the lowest free ID. Up to this many workers
/// claiming together get the lowest IDs of the pool without holes, as trying every ID from the
/// lowest up did: a fleet of up to 16 restarted at once gets its IDs back, and a rolling update
/// then moves nothing. It costs up to 16 creates per worker of a bigger start-up.
const DENSE_CLAIMS: usize = 16;
/// The most free IDs a contended claim draws from: workers that start together spread out
/// over this many of the lowest free IDs instead of all creating the same lowest one.
const MAX_SPREAD: usize = 4096;
/// Lost creates between two listings. A listing costs a temporary consumer on NATS and reads
/// every claim; a create costs one write.
const CREATES_PER_LISTING: usize = 8;

/// What one listing of the stable-ID bucket shows.
struct PoolView {
    /// The numbers of the pool's IDs that have a live claim.
    taken: std::collections::HashSet<u32>,
    /// The lowest pool ID whose claim names our instance, if any.
    ours: Option<crate::store::Entry>,
}

impl PoolView {
    async fn list(bucket: &dyn Bucket, cfg: &StableIdConfig, instance: &str) -> Result<Self> {
        let mut view = Self {
            taken: std::collections::HashSet::new(),
            ours: None,
        };
        let mut ours_n = u32::MAX;
        for entry in bucket.list(">").await? {
            let Some(n) = cfg.number(&entry.key) else {
                continue;
            };
            view.taken.insert(n);
            // A value that does not decode is someone's (or garbage): taken, never ours.
            let mine = codec::decode::<StableIdValue>(bucket.name(), &entry.key, &entry.value)
                .is_ok_and(|held| held.instance == instance);
            if mine && n < ours_n {
                ours_n = n;
                view.ours = Some(entry);
            }
        }
        Ok(view)
    }
}

/// Up to `limit` numbers of `[min, max]` not in `taken`, lowest first.
fn first_free(
    taken: &std::collections::HashSet<u32>,
    min: u32,
    max: u32,
    limit: usize,
) -> Vec<u32> {
    (min..=max)
        .filter(|n| !taken.contains(n))
        .take(limit)
        .collect()
}

impl StableIdLease {
    fn spawn(
        bucket: Arc<dyn Bucket>,
        id: WorkerId,
        value: Bytes,
        revision: u64,
        period: Duration,
    ) -> Self {
        let (status_tx, status) = watch::channel(IdStatus::Held {
            id: id.clone(),
            revision,
        });
        let (failures_tx, failures) = watch::channel(0);
        let cancel = CancellationToken::new();
        let renewer = Renewer {
            bucket: bucket.clone(),
            id: id.clone(),
            value: value.clone(),
            revision,
            period,
            status: status_tx,
            failures: failures_tx,
        };
        let task = AbortOnDropHandle::new(tokio::spawn(renewer.run(cancel.clone())));
        Self {
            id,
            bucket,
            value,
            status,
            failures,
            cancel,
            task,
        }
    }

    /// The claimed ID.
    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    /// The lease's status: `Held` (with the latest revision) until it is lost.
    pub fn status(&self) -> watch::Receiver<IdStatus> {
        self.status.clone()
    }

    /// Consecutive failed renewals (0 when healthy); a conflict is not a failure but a loss.
    pub fn failures(&self) -> watch::Receiver<u32> {
        self.failures.clone()
    }

    /// Stops renewing and deletes the key (with the expected revision), so the ID is free at once.
    ///
    /// A key that is no longer ours (lost, or taken meanwhile) is left alone.
    pub async fn release(self) -> Result<()> {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(id = %self.id, error = %e, "stable ID renewal task failed");
        }
        let status = self.status.borrow().clone();
        let IdStatus::Held { revision, .. } = status else {
            return Ok(());
        };
        let key = self.id.as_str();
        match self.bucket.delete(key, Some(revision)).await {
            Ok(()) => {}
            // A renewal cancelled in flight may have landed: delete the newer revision if ours.
            Err(e) if e.is_conflict() => match ownership(&*self.bucket, key, &self.value).await {
                Ownership::Ours(revision) => self.bucket.delete(key, Some(revision)).await?,
                ownership @ (Ownership::Gone(_) | Ownership::Free) => {
                    tracing::warn!(id = %self.id, reason = %ownership.describe(), "stable ID was no longer ours at release");
                }
                Ownership::Unknown(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
        tracing::info!(id = %self.id, "released stable ID");
        Ok(())
    }

    /// Stops renewing without deleting anything, as a crash would: the key expires by itself.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Whether a key still holds the value we write.
pub(crate) enum Ownership {
    /// Our value is there, at this revision (a write of ours whose reply was lost).
    Ours(u64),
    /// Someone else's value.
    Gone(String),
    /// Nothing: the key expired or was deleted, and nobody else holds it.
    Free,
    /// The store could not tell.
    Unknown(StoreError),
}

impl Ownership {
    /// Why the key is not ours, for logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            Ownership::Ours(revision) => format!("still ours at revision {revision}"),
            Ownership::Gone(reason) => reason.clone(),
            Ownership::Free => "the key expired or was deleted".to_owned(),
            Ownership::Unknown(e) => format!("unknown: {e}"),
        }
    }
}

/// After a CAS conflict: is the key still ours? A write of ours may have landed although its reply
/// was lost; our renewals write the same bytes every time, so equal bytes mean it is ours.
pub(crate) async fn ownership(bucket: &dyn Bucket, key: &str, ours: &Bytes) -> Ownership {
    match bucket.get(key).await {
        Ok(Some(entry)) if entry.value == *ours => Ownership::Ours(entry.revision),
        Ok(Some(entry)) => Ownership::Gone(format!(
            "taken over by another writer (revision {}): {}",
            entry.revision,
            String::from_utf8_lossy(&entry.value)
        )),
        Ok(None) => Ownership::Free,
        Err(e) => Ownership::Unknown(e),
    }
}

struct Renewer {
    bucket: Arc<dyn Bucket>,
    id: WorkerId,
    value: Bytes,
    revision: u64,
    period: Duration,
    status: watch::Sender<IdStatus>,
    failures: watch::Sender<u32>,
}

impl Renewer {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.period) => {}
            }
            let key = self.id.as_str();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.bucket.update(key, self.value.clone(), self.revision) => r,
            };
            let conflict = match result {
                Ok(revision) => {
                    self.held(revision);
                    continue;
                }
                Err(e) if e.is_conflict() => e,
                Err(e) => {
                    self.failed(&e);
                    continue;
                }
            };
            match ownership(&*self.bucket, key, &self.value).await {
                // Confirmed by a write checked against the revision read: a stale read (a
                // replica behind) is no proof that the key is still ours.
                Ownership::Ours(revision) => {
                    match self.bucket.update(key, self.value.clone(), revision).await {
                        Ok(revision) => self.held(revision),
                        Err(e) => self.failed(&e),
                    }
                }
                Ownership::Unknown(e) => self.failed(&e),
                // Expired while we were cut off, and nobody took it: take it back. Only an
                // ID held by someone else is lost (SPEC §7: re-verify, do not re-shuffle).
                Ownership::Free => match self.bucket.create(key, self.value.clone()).await {
                    Ok(revision) => {
                        tracing::info!(id = %self.id, "stable ID had expired and was free: re-acquired");
                        self.held(revision);
                    }
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => self.failed(&e),
                },
                Ownership::Gone(reason) => {
                    tracing::warn!(id = %self.id, %reason, error = %conflict, "stable ID lost");
                    self.status.send_replace(IdStatus::Lost {
                        id: self.id.clone(),
                        reason,
                    });
                    return;
                }
            }
        }
    }

    fn held(&mut self, revision: u64) {
        self.revision = revision;
        self.status.send_replace(IdStatus::Held {
            id: self.id.clone(),
            revision,
        });
        self.failures
            .send_if_modified(|n| std::mem::replace(n, 0) != 0);
    }

    fn failed(&self, e: &StoreError) {
        self.failures.send_modify(|n| *n = n.saturating_add(1));
        tracing::warn!(
            id = %self.id,
            failures = *self.failures.borrow(),
            error = %e,
            "stable ID renewal failed; retrying at the next tick"
        );
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;
    use crate::store::{MemoryStore, Store};

    #[tokio::test]
    async fn a_retried_claim_adopts_the_id_its_lost_reply_left() {
        let store = MemoryStore::new();
        let bucket = store
            .bucket(&bucket_spec("ids", Duration::from_secs(30), 1))
            .await
            .unwrap();
        let cfg = StableIdConfig {
            prefix: "worker".into(),
            min: 0,
            max: 3,
            renew_interval: Duration::from_secs(10),
        };
        // What a create whose reply was lost leaves behind.
        let left = codec::encode(&StableIdValue {
            instance: "me".into(),
            host: "h".into(),
            claimed_at: 1,
        })
        .unwrap();
        bucket.create("worker-0", left).await.unwrap();

        let mine = claim(bucket.clone(), &cfg, "me").await.unwrap();
        assert_eq!(
            mine.id().as_str(),
            "worker-0",
            "our own ID, not the next one"
        );
        let other = claim(bucket.clone(), &cfg, "someone-else").await.unwrap();
        assert_eq!(other.id().as_str(), "worker-1");
        mine.abort();
        other.abort();
    }
}
