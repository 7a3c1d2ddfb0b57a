//! The default election agent: a lease on the `leader` key of the election bucket.
//!
//! Acquire = create-if-absent (a deleted or expired key counts as absent); the term is the
//! revision of that winning create — plus, with [`with_term_floor`](NatsLeaseElection::with_term_floor),
//! the highest term recorded in the assignment bucket — written into the value right after and
//! kept across renewals.
//! Renew = update with the expected revision; release = delete with the expected revision.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ElectionAgent;
use crate::clock::unix_ms;
use crate::error::Result;
use crate::partition::WorkerId;
use crate::stable_id::{Ownership, ownership};
use crate::store::Bucket;
use crate::store::BucketSpec;
use crate::store::codec;

/// The key of the leader lease in the election bucket.
pub const LEADER_KEY: &str = "leader";

/// The value of the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderRecord {
    /// The leading worker.
    pub worker: WorkerId,
    /// Its instance (process).
    pub instance: String,
    /// The term: the revision of the create that won the lease, plus the term floor if the
    /// agent has one (0 for the instant between that create and the write of the term).
    pub term: u64,
    /// When the lease was acquired, in Unix milliseconds.
    pub acquired_at: u64,
}

/// Reads the current leader, if any (for status displays; the agent itself never needs it).
///
/// A value that does not decode is an [`Error::Decode`](crate::Error::Decode).
#[cfg_attr(not(feature = "tools"), allow(dead_code))]
pub async fn current_leader(bucket: &dyn Bucket) -> Result<Option<LeaderRecord>> {
    match bucket.get(LEADER_KEY).await? {
        Some(entry) => Ok(Some(codec::decode(
            bucket.name(),
            LEADER_KEY,
            &entry.value,
        )?)),
        None => Ok(None),
    }
}

/// The lease this agent holds.
#[derive(Debug, Clone)]
struct Held {
    revision: u64,
    term: u64,
    /// The bytes every renewal writes.
    value: Bytes,
}

/// [`ElectionAgent`] over the election bucket (SPEC §5.3).
#[derive(Debug)]
pub struct NatsLeaseElection {
    bucket: Arc<dyn Bucket>,
    worker: WorkerId,
    instance: String,
    ttl: Duration,
    held: Mutex<Option<Held>>,
    /// Where the highest recorded term is read (the assignment bucket), so that terms keep
    /// increasing when the election bucket is recreated and its revisions start again.
    term_floor: Option<Arc<dyn Bucket>>,
    /// The highest term this process has seen (commits applied, terms it led): a floor that
    /// survives the assignment bucket being deleted and created again, until its floor key is
    /// written back.
    seen: Option<tokio::sync::watch::Receiver<crate::records::VersionFloor>>,
}

impl NatsLeaseElection {
    /// An agent for `worker` over `bucket`, whose `max_age` must be `ttl` (the election bucket's
    /// spec, as the manager creates it).
    pub fn new(bucket: Arc<dyn Bucket>, worker: WorkerId, instance: String, ttl: Duration) -> Self {
        Self {
            bucket,
            worker,
            instance,
            ttl,
            held: Mutex::new(None),
            term_floor: None,
            seen: None,
        }
    }

    /// Terms start above the highest term recorded in `assignment` (the assignment bucket):
    /// each term is the winning create's revision plus that floor, read after the create won.
    /// Successive leaders still get increasing terms (the floor never decreases and revisions
    /// increase), and a recreated election bucket — whose revisions start again at 1 — no longer
    /// yields terms that every commit already made would fence out. The manager's default
    /// agent uses it.
    #[must_use]
    pub fn with_term_floor(mut self, assignment: Arc<dyn Bucket>) -> Self {
        self.term_floor = Some(assignment);
        self
    }

    /// Terms also start above the highest term this process has seen (`seen`): the manager's
    /// memory of commits and of its own terms, for when the assignment bucket's floor is gone.
    #[must_use]
    pub(crate) fn with_seen_terms(
        mut self,
        seen: tokio::sync::watch::Receiver<crate::records::VersionFloor>,
    ) -> Self {
        self.seen = Some(seen);
        self
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new revision of the lease of `term`, unless it was released meanwhile.
    fn set_revision(&self, term: u64, revision: u64) {
        if let Some(held) = self.held().as_mut().filter(|h| h.term == term) {
            held.revision = revision;
        }
    }

    /// The revision and acquisition time of a create of this agent's that is still the current
    /// value (its term not written yet): a create whose reply was lost.
    async fn own_create(&self) -> Result<Option<(u64, u64)>> {
        let Some(entry) = self.bucket.get(LEADER_KEY).await? else {
            return Ok(None);
        };
        let ours = codec::decode::<LeaderRecord>(self.bucket.name(), LEADER_KEY, &entry.value)
            .ok()
            .filter(|r| r.worker == self.worker && r.instance == self.instance && r.term == 0);
        Ok(ours.map(|r| (entry.revision, r.acquired_at)))
    }

    fn record(&self, term: u64, acquired_at: u64) -> Result<Bytes> {
        codec::encode(&LeaderRecord {
            worker: self.worker.clone(),
            instance: self.instance.clone(),
            term,
            acquired_at,
        })
    }
}

#[async_trait]
impl ElectionAgent for NatsLeaseElection {
    async fn request(&self) -> Result<Option<u64>> {
        if let Some(term) = self.term() {
            return Ok(Some(term));
        }
        let mut acquired_at = unix_ms();
        let revision = match self
            .bucket
            .create(LEADER_KEY, self.record(0, acquired_at)?)
            .await
        {
            Ok(revision) => revision,
            Err(e) if e.is_conflict() => match self.own_create().await? {
                // An earlier create of ours landed although its reply was lost: it won.
                Some((revision, at)) => {
                    acquired_at = at;
                    revision
                }
                None => return Ok(None),
            },
            // The outcome is unknown (a timeout, a lost reply): the create may have landed.
            // Left unclaimed, a seat of ours would keep every contender out, this one
            // included (its watch shows someone's lease), for a whole TTL.
            Err(e) => match self.own_create().await {
                Ok(Some((revision, at))) => {
                    acquired_at = at;
                    revision
                }
                Ok(None) | Err(_) => return Err(e.into()),
            },
        };
        let floor = match &self.term_floor {
            // Read after the create won: a leader before us committed with a term in it.
            Some(bucket) => match crate::records::term_floor(&**bucket).await {
                Ok(floor) => floor,
                Err(e) => {
                    // No term can be chosen without the floor: free the seat at once (the
                    // watchers see the delete and contend) rather than sit on it, unannounced,
                    // until its TTL runs out.
                    if let Err(d) = self.bucket.delete(LEADER_KEY, Some(revision)).await {
                        tracing::debug!(error = %d, "cannot free the leader key");
                    }
                    return Err(e);
                }
            },
            None => 0,
        };
        let seen = self.seen.as_ref().map_or(0, |s| s.borrow().term);
        let term = floor.max(seen).saturating_add(revision);
        let value = self.record(term, acquired_at)?;
        // Write the term into the value now; if this fails transiently, the first renewal does.
        let revision = match self
            .bucket
            .update(LEADER_KEY, value.clone(), revision)
            .await
        {
            Ok(revision) => revision,
            Err(e) if e.is_conflict() => match ownership(&*self.bucket, LEADER_KEY, &value).await {
                Ownership::Ours(revision) => revision,
                ownership @ (Ownership::Gone(_) | Ownership::Free) => {
                    tracing::warn!(term, reason = %ownership.describe(), "leader lease lost right after acquiring it");
                    return Ok(None);
                }
                Ownership::Unknown(e) => return Err(e.into()),
            },
            Err(e) => {
                tracing::warn!(term, error = %e, "cannot write the term into the leader key yet");
                revision
            }
        };
        *self.held() = Some(Held {
            revision,
            term,
            value,
        });
        tracing::info!(worker = %self.worker, term, "acquired the leader lease");
        Ok(Some(term))
    }

    async fn renew(&self) -> Result<bool> {
        let Some(held) = self.held().clone() else {
            return Ok(false);
        };
        let result = self
            .bucket
            .update(LEADER_KEY, held.value.clone(), held.revision)
            .await;
        let conflict = match result {
            Ok(revision) => {
                self.set_revision(held.term, revision);
                return Ok(true);
            }
            Err(e) if e.is_conflict() => e,
            Err(e) => return Err(e.into()),
        };
        // A write of ours may have landed although its reply was lost. It renewed the key when
        // it landed, which may be long before this renewal started (a term write that timed
        // out at acquisition): counting it as this renewal would stretch the lease past the
        // key's expiry. Write again at its revision, so that the key is renewed from now.
        match ownership(&*self.bucket, LEADER_KEY, &held.value).await {
            Ownership::Ours(revision) => {
                self.set_revision(held.term, revision);
                let again = self
                    .bucket
                    .update(LEADER_KEY, held.value.clone(), revision)
                    .await?;
                self.set_revision(held.term, again);
                Ok(true)
            }
            ownership @ (Ownership::Gone(_) | Ownership::Free) => {
                let reason = ownership.describe();
                let mut guard = self.held();
                if guard.as_ref().is_some_and(|h| h.term == held.term) {
                    *guard = None;
                }
                tracing::warn!(term = held.term, %reason, error = %conflict, "leader lease lost");
                Ok(false)
            }
            Ownership::Unknown(e) => Err(e.into()),
        }
    }

    async fn release(&self) -> Result<()> {
        let Some(held) = self.held().take() else {
            return Ok(());
        };
        match self.bucket.delete(LEADER_KEY, Some(held.revision)).await {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {
                match ownership(&*self.bucket, LEADER_KEY, &held.value).await {
                    Ownership::Ours(revision) => {
                        self.bucket.delete(LEADER_KEY, Some(revision)).await?;
                    }
                    Ownership::Gone(_) | Ownership::Free => return Ok(()),
                    Ownership::Unknown(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(worker = %self.worker, term = held.term, "released the leader lease");
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.held().is_some()
    }

    fn term(&self) -> Option<u64> {
        self.held().as_ref().map(|h| h.term)
    }

    fn lease_ttl(&self) -> Duration {
        self.ttl
    }
}

/// The spec of the election bucket: the leader key expires `election_ttl` after its last renewal,
/// and the expiry leaves a marker that followers see.
///
/// ```
/// use std::time::Duration;
/// let spec = parti::election::bucket_spec("parti-election", Duration::from_secs(10), 1);
/// assert_eq!(spec.max_age, Some(Duration::from_secs(10)));
/// ```
pub fn bucket_spec(name: impl Into<String>, election_ttl: Duration, replicas: usize) -> BucketSpec {
    BucketSpec::new(name)
        .expiring(election_ttl)
        .replicas(replicas)
}
