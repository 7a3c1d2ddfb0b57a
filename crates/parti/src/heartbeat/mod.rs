//! Heartbeats (SPEC §5.2): each worker puts `{instance, ts, state, appliedVersion}` (and, while
//! degraded, `degradedReason`) under its ID every interval; the bucket's `max_age` is the heartbeat TTL with limit markers, so a crash shows
//! up as an expiry event. A graceful stop deletes the key (a *leave*).
//!
//! [`Heartbeater`] is the writing side, [`MembershipWatcher`] turns the bucket into
//! [`MembershipEvent`]s for the leader. Every value also announces the writer's
//! [`protocol`] version and capabilities, so that a leader never relies on what a worker of an
//! older build lacks (rolling upgrades).

mod membership;
pub mod protocol;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::clock::{unix_ms, unix_ns};
use crate::error::Result;
use crate::partition::WorkerId;
use crate::profile::{Capacity, WorkerProfile};
use crate::state::{DegradedReason, State};
use crate::store::codec;
use crate::store::{Bucket, BucketSpec};

pub use membership::{MembershipEvent, MembershipWatcher};

/// The shortest heartbeat interval accepted; shorter ones are raised to it.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The spec of the heartbeat bucket: values expire `heartbeat_ttl` after their last put, and
/// expiries leave markers.
///
/// ```
/// use std::time::Duration;
/// let spec = parti::heartbeat::bucket_spec("parti-heartbeat", Duration::from_secs(6), 3);
/// assert_eq!((spec.max_age, spec.replicas), (Some(Duration::from_secs(6)), 3));
/// ```
pub fn bucket_spec(
    name: impl Into<String>,
    heartbeat_ttl: Duration,
    replicas: usize,
) -> BucketSpec {
    BucketSpec::new(name)
        .expiring(heartbeat_ttl)
        .replicas(replicas)
}

/// The value of a heartbeat key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatValue {
    /// The instance (process) behind the worker ID.
    pub instance: String,
    /// When it was written, in Unix milliseconds.
    pub ts: u64,
    /// The worker's state.
    pub state: State,
    /// The assignment version the worker has applied.
    pub applied_version: u64,
    /// The highest version whose removals the worker has finished: it holds nothing that
    /// commit does not let it hold (consumer gated, in-flight calls done, hooks returned). A
    /// leader hands a moved partition to its gainer once the loser's `released` reaches the
    /// version of the move.
    #[serde(default)]
    pub released: u64,
    /// How many times this process's lease lapsed (see `Lineage` in the `cluster` record).
    #[serde(default)]
    pub lapses: u64,
    /// Written by a leader, not by the worker: the lease of this lineage is revoked (the worker
    /// did not release a hand-off within `handoffTimeout`). The worker's next revision-checked
    /// renewal fails, so its lease runs out by the heartbeat TTL; it lapses at once and comes
    /// back under a new lineage, holding nothing until a commit names it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expelled: bool,
    /// While `state` is `degraded`: why the worker entered Degraded (absent otherwise, and from
    /// workers that predate it). Read leniently: a reason this version does not know (written
    /// by a newer worker) or a value that is not a reason name reads as `None`, so the
    /// heartbeat itself stays valid.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_reason"
    )]
    pub degraded_reason: Option<DegradedReason>,
    /// The writer's [protocol version](protocol::PROTOCOL). Absent (0) in values written before
    /// it existed. Read leniently: a value that is not a number reads as `u32::MAX`, a protocol
    /// no leader of this build understands.
    #[serde(default, deserialize_with = "lenient_protocol")]
    pub protocol: u32,
    /// The [capabilities](protocol::Capability) the writer announces, by name. Absent (none)
    /// in values written before they existed. Names this build does not know are kept (and
    /// ignored); anything in the field that is not a name is dropped.
    #[serde(default, deserialize_with = "lenient_capabilities")]
    pub capabilities: BTreeSet<String>,
    /// The writer's [capacity](crate::profile) (absent: 1.0). Read leniently: anything but a
    /// number in range reads as 1.0, so the heartbeat itself stays valid.
    #[serde(
        default,
        skip_serializing_if = "is_default_capacity",
        deserialize_with = "lenient_capacity"
    )]
    pub capacity: Capacity,
    /// The writer's [labels](crate::profile) (absent: none). Read leniently: entries that are
    /// not valid label names are dropped.
    #[serde(
        default,
        skip_serializing_if = "BTreeSet::is_empty",
        deserialize_with = "lenient_labels"
    )]
    pub labels: BTreeSet<String>,
}

fn is_default_capacity(capacity: &Capacity) -> bool {
    *capacity == Capacity::DEFAULT
}

/// `capacity` as written; the default for anything but a number in range.
fn lenient_capacity<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Capacity, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value
        .as_f64()
        .and_then(|c| Capacity::new(c).ok())
        .unwrap_or_default())
}

/// `labels` as written: the valid label names of an array, nothing for anything else.
fn lenient_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BTreeSet<String>, D::Error> {
    strings_where(deserializer, |l| crate::partition::check_label(l).is_ok())
}

/// `protocol` as written; `u32::MAX` (not understood) for anything but a number that fits.
fn lenient_protocol<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<u32, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(u32::MAX))
}

/// `capabilities` as written: the strings of an array, nothing for anything else.
fn lenient_capabilities<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BTreeSet<String>, D::Error> {
    strings_where(deserializer, |_| true)
}

/// The strings of an array that pass `keep`; nothing for anything but an array.
fn strings_where<'de, D: Deserializer<'de>>(
    deserializer: D,
    keep: impl Fn(&str) -> bool,
) -> std::result::Result<BTreeSet<String>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .filter(|s| keep(s))
        .map(str::to_owned)
        .collect())
}

/// `degradedReason` as written, `None` for anything that is not a known reason's name.
fn lenient_reason<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<DegradedReason>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .and_then(DegradedReason::from_name))
}

impl HeartbeatValue {
    /// The expulsion marker a leader writes over `self` (see [`expelled`](Self::expelled)).
    pub(crate) fn expel(&self) -> Self {
        Self {
            ts: unix_ms(),
            expelled: true,
            ..self.clone()
        }
    }

    /// A value written by this build: this worker's `info`, with this build's
    /// [protocol](protocol::PROTOCOL) and [capabilities](protocol::capabilities).
    pub fn announce(instance: impl Into<String>, info: HeartbeatInfo) -> Self {
        Self {
            instance: instance.into(),
            ts: unix_ms(),
            state: info.state,
            applied_version: info.applied_version,
            released: info.released,
            lapses: info.lapses,
            expelled: false,
            degraded_reason: info.degraded_reason,
            protocol: protocol::PROTOCOL,
            capabilities: protocol::capabilities(),
            capacity: Capacity::DEFAULT,
            labels: BTreeSet::new(),
        }
    }

    /// `self` announcing `profile` (capacity and labels).
    #[must_use]
    pub fn with_profile(mut self, profile: &WorkerProfile) -> Self {
        self.capacity = profile.capacity;
        self.labels = profile.labels.clone();
        self
    }

    /// The capacity and labels the writer announces.
    pub fn profile(&self) -> WorkerProfile {
        let mut profile = WorkerProfile::new().with_capacity(self.capacity);
        profile.labels = self.labels.clone();
        profile
    }

    /// Whether the writer announces `capability`.
    pub fn has(&self, capability: protocol::Capability) -> bool {
        self.capabilities.contains(capability.as_str())
    }
}

/// What a worker tells the cluster through its heartbeat value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatInfo {
    /// The worker's state.
    pub state: State,
    /// The assignment version the worker has applied.
    pub applied_version: u64,
    /// See [`HeartbeatValue::released`].
    pub released: u64,
    /// See [`HeartbeatValue::lapses`].
    pub lapses: u64,
    /// See [`HeartbeatValue::degraded_reason`].
    pub degraded_reason: Option<DegradedReason>,
}

impl HeartbeatInfo {
    /// A worker in `state` that has applied and released `version` and never lapsed.
    pub fn new(state: State, version: u64) -> Self {
        Self {
            state,
            applied_version: version,
            released: version,
            lapses: 0,
            degraded_reason: None,
        }
    }
}

/// Puts this worker's heartbeat in the background until stopped.
#[derive(Debug)]
pub struct Heartbeater {
    bucket: Arc<dyn Bucket>,
    worker: WorkerId,
    instance: String,
    /// Announced in every value, the last one included.
    profile: WorkerProfile,
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    info: watch::Receiver<HeartbeatInfo>,
    failures: watch::Receiver<u32>,
    renewed: watch::Receiver<Option<u64>>,
    revoked: watch::Receiver<u64>,
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl Heartbeater {
    /// Starts putting the heartbeat: at once, then every `interval`, and right after `info`
    /// changes.
    ///
    /// Dropping the returned value stops the task without deleting the key (like
    /// [`abort`](Self::abort)).
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub fn spawn(
        bucket: Arc<dyn Bucket>,
        worker: WorkerId,
        instance: String,
        interval: Duration,
        info: watch::Receiver<HeartbeatInfo>,
    ) -> Self {
        Self::spawn_with_profile(
            bucket,
            worker,
            instance,
            interval,
            info,
            WorkerProfile::new(),
        )
    }

    /// [`spawn`](Self::spawn), announcing `profile` (capacity and labels) in every value.
    pub fn spawn_with_profile(
        bucket: Arc<dyn Bucket>,
        worker: WorkerId,
        instance: String,
        interval: Duration,
        info: watch::Receiver<HeartbeatInfo>,
        profile: WorkerProfile,
    ) -> Self {
        let (failures_tx, failures) = watch::channel(0);
        let (renewed_tx, renewed) = watch::channel(None);
        let (revoked_tx, revoked) = watch::channel(0);
        let cancel = CancellationToken::new();
        let last_info = info.clone();
        let beat = Beat {
            bucket: bucket.clone(),
            worker: worker.clone(),
            instance: instance.clone(),
            profile: profile.clone(),
            interval: interval.max(MIN_INTERVAL),
            info,
            failures: failures_tx,
            renewed: renewed_tx,
            revoked: revoked_tx,
            revision: KeyRevision::Start,
            revoked_lineage: None,
        };
        let task = AbortOnDropHandle::new(tokio::spawn(beat.run(cancel.clone())));
        Self {
            bucket,
            worker,
            instance,
            profile,
            info: last_info,
            failures,
            renewed,
            revoked,
            cancel,
            task,
        }
    }

    /// The lapse count of the last lineage whose lease a leader revoked (an
    /// [expulsion marker](HeartbeatValue::expelled) under this worker's key); 0 before any.
    /// The worker must lapse (report `lapses` above it) before its heartbeat is renewed again:
    /// until then the renewals stop and the lease runs out.
    pub fn revoked(&self) -> watch::Receiver<u64> {
        self.revoked.clone()
    }

    /// When the last successful put *started*, in Unix nanoseconds of the
    /// [ownership clock](crate::ownership) (`None` before the first success). The key cannot
    /// expire before that instant plus the heartbeat TTL, so it bounds how long this worker may
    /// claim to be alive.
    pub fn renewed(&self) -> watch::Receiver<Option<u64>> {
        self.renewed.clone()
    }

    /// Consecutive failed puts (0 when healthy).
    pub fn failures(&self) -> watch::Receiver<u32> {
        self.failures.clone()
    }

    /// Stops the task, puts a last value with `state: Shutdown` (this worker holds nothing any
    /// more), then deletes the key: a graceful *leave*, seen as `Left` by the watcher.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
    pub async fn stop(self) -> Result<()> {
        let last = HeartbeatInfo {
            state: State::Shutdown,
            ..*self.info.borrow()
        };
        self.stop_with(last).await
    }

    /// Stops the task, puts `last` (a worker's last word, normally `state: Shutdown` once it
    /// released everything), then deletes the key. A leader hands a departed worker's
    /// partitions on at once only when its last value said `Shutdown`.
    pub async fn stop_with(self, last: HeartbeatInfo) -> Result<()> {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(worker = %self.worker, error = %e, "heartbeat task failed");
        }
        let value =
            HeartbeatValue::announce(self.instance.clone(), last).with_profile(&self.profile);
        // The last word matters less than leaving: delete even when the put failed (a leader
        // that missed the `Shutdown` value waits one TTL before handing our partitions on).
        let said = match codec::encode(&value) {
            Ok(bytes) => self
                .bucket
                .put(self.worker.as_str(), bytes)
                .await
                .map(|_| ())
                .map_err(Into::into),
            Err(e) => Err(e),
        };
        self.bucket.delete(self.worker.as_str(), None).await?;
        said?;
        tracing::info!(worker = %self.worker, "heartbeat deleted (graceful leave)");
        Ok(())
    }

    /// Stops the task without deleting the key, as a crash would: the key expires (`Expired`).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// What a heartbeat write is checked against.
#[derive(Debug, Clone, Copy)]
enum KeyRevision {
    /// The session's first write: a plain put (a new session is a new lineage, so whatever
    /// the key held belongs to an earlier one).
    Start,
    /// The key's revision as last written or read.
    Known(u64),
    /// The key was found gone: create it.
    Absent,
    /// The key holds another process's heartbeat (our stable ID was taken while we could not
    /// renew it): look again before each write, and write only once the key is gone or holds
    /// no other process's live value — never over it.
    Displaced,
}

struct Beat {
    bucket: Arc<dyn Bucket>,
    worker: WorkerId,
    instance: String,
    profile: WorkerProfile,
    interval: Duration,
    info: watch::Receiver<HeartbeatInfo>,
    failures: watch::Sender<u32>,
    renewed: watch::Sender<Option<u64>>,
    revoked: watch::Sender<u64>,
    /// What the next write is checked against: renewals are revision-checked, so that a
    /// leader's expulsion marker (or anyone's write) is never overwritten unseen.
    revision: KeyRevision,
    /// The lineage (lapse count) whose lease was revoked: no renewal until the worker lapsed.
    revoked_lineage: Option<u64>,
}

impl Beat {
    async fn run(mut self, cancel: CancellationToken) {
        let mut info_open = true;
        loop {
            let info = *self.info.borrow_and_update();
            let value =
                HeartbeatValue::announce(self.instance.clone(), info).with_profile(&self.profile);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.put(&value) => {}
            }
            let next = tokio::time::Instant::now() + self.interval;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep_until(next) => break,
                    changed = self.info.changed(), if info_open => match changed {
                        Ok(()) => break,
                        // The sender is gone: keep beating with the last value.
                        Err(_) => info_open = false,
                    },
                }
            }
        }
    }

    async fn put(&mut self, value: &HeartbeatValue) {
        if self.revoked_lineage.is_some_and(|l| value.lapses <= l) {
            // Revoked: the lease must run out; renew only once the worker lapsed.
            return;
        }
        let bytes = match codec::encode(value) {
            Ok(bytes) => bytes,
            Err(e) => return self.failed(&e),
        };
        if matches!(self.revision, KeyRevision::Displaced) && !self.look_again(value).await {
            return;
        }
        // A second attempt only right after finding our own write (a lost reply): the lease
        // must not wait a whole interval for it.
        for _ in 0..2 {
            let started = unix_ns();
            let key = self.worker.as_str();
            let result = match self.revision {
                KeyRevision::Known(expected) => {
                    self.bucket.update(key, bytes.clone(), expected).await
                }
                KeyRevision::Absent => self.bucket.create(key, bytes.clone()).await,
                KeyRevision::Start => self.bucket.put(key, bytes.clone()).await,
                KeyRevision::Displaced => return,
            };
            match result {
                Ok(revision) => {
                    self.revision = KeyRevision::Known(revision);
                    self.revoked_lineage = None;
                    self.renewed.send_replace(Some(started));
                    self.failures
                        .send_if_modified(|n| std::mem::replace(n, 0) != 0);
                    return;
                }
                Err(e) if e.is_conflict() => {
                    if !self.reread(value).await {
                        return;
                    }
                }
                Err(e) => return self.failed(&e.into()),
            }
        }
    }

    fn failed(&self, error: &crate::Error) {
        self.failures.send_modify(|n| *n = n.saturating_add(1));
        metrics::counter!("parti_heartbeat_failures_total").increment(1);
        tracing::warn!(
            worker = %self.worker,
            failures = *self.failures.borrow(),
            %error,
            "heartbeat put failed"
        );
    }

    /// Someone wrote our key since our last write, or our write landed but its reply was lost.
    /// True when the key holds our own value of this lineage (write again at once). Anything
    /// else — an expulsion marker, garbage, another process's value, a key gone — ends this
    /// lineage's lease: no renewal of it can be trusted to follow a write we did not see, so
    /// the worker lapses (revocation) and renews under its next lineage. A failed re-read
    /// keeps the revision: the next beat conflicts and reads again, and never writes blindly.
    async fn reread(&mut self, ours: &HeartbeatValue) -> bool {
        let current = match self.bucket.get(self.worker.as_str()).await {
            Ok(current) => current,
            Err(e) => {
                tracing::debug!(worker = %self.worker, error = %e, "heartbeat re-read failed");
                return false;
            }
        };
        let found = match current {
            Some(entry) => {
                self.revision = KeyRevision::Known(entry.revision);
                codec::decode::<HeartbeatValue>(self.bucket.name(), &entry.key, &entry.value).ok()
            }
            None => {
                self.revision = KeyRevision::Absent;
                None
            }
        };
        let own = found
            .as_ref()
            .is_some_and(|v| !v.expelled && v.instance == ours.instance && v.lapses == ours.lapses);
        if own {
            return true;
        }
        let expelled = found.as_ref().is_some_and(|v| v.expelled);
        if found
            .as_ref()
            .is_some_and(|v| !v.expelled && v.instance != ours.instance)
        {
            // Another process renews this ID now: writing over its heartbeat would make the
            // leader name our lineage in its place while it holds.
            tracing::warn!(
                worker = %self.worker,
                lapses = ours.lapses,
                "heartbeat key holds another process's heartbeat: this worker's ID was taken; not writing over it"
            );
            self.revision = KeyRevision::Displaced;
        } else {
            tracing::warn!(
                worker = %self.worker,
                lapses = ours.lapses,
                expelled,
                "heartbeat key written by someone else: this lineage's lease is revoked"
            );
        }
        self.revoked_lineage = Some(ours.lapses);
        self.revoked.send_replace(ours.lapses);
        false
    }

    /// Displaced: whether the key may be written again (gone, or no other process's live
    /// value in it); the failure is counted while another process's heartbeat is there.
    async fn look_again(&mut self, ours: &HeartbeatValue) -> bool {
        match self.bucket.get(self.worker.as_str()).await {
            Ok(None) => {
                self.revision = KeyRevision::Absent;
                true
            }
            Ok(Some(entry)) => {
                let other =
                    codec::decode::<HeartbeatValue>(self.bucket.name(), &entry.key, &entry.value)
                        .ok()
                        .is_some_and(|v| !v.expelled && v.instance != ours.instance);
                if other {
                    self.failures.send_modify(|n| *n = n.saturating_add(1));
                    metrics::counter!("parti_heartbeat_failures_total").increment(1);
                    tracing::debug!(worker = %self.worker, "heartbeat key still holds another process's heartbeat");
                    return false;
                }
                self.revision = KeyRevision::Known(entry.revision);
                true
            }
            Err(e) => {
                self.failed(&e.into());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(degraded_reason: Option<DegradedReason>) -> HeartbeatValue {
        HeartbeatValue {
            instance: "i-1".into(),
            ts: 1_700_000_000_000,
            state: if degraded_reason.is_some() {
                State::Degraded
            } else {
                State::Stable
            },
            applied_version: 4,
            released: 4,
            lapses: 0,
            expelled: false,
            degraded_reason,
            protocol: protocol::PROTOCOL,
            capabilities: protocol::capabilities(),
            capacity: crate::Capacity::DEFAULT,
            labels: Default::default(),
        }
    }

    #[test]
    fn degraded_reason_round_trips_and_is_left_out_when_absent() {
        for reason in DegradedReason::ALL {
            let with = value(Some(reason));
            let bytes = codec::encode(&with).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["degradedReason"], reason.as_str());
            let back: HeartbeatValue = codec::decode("hb", "worker-1", &bytes).unwrap();
            assert_eq!(back, with);
        }
        let without = value(None);
        let bytes = codec::encode(&without).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            json.get("degradedReason").is_none(),
            "an old reader's view is unchanged: {json}"
        );
        let back: HeartbeatValue = codec::decode("hb", "worker-1", &bytes).unwrap();
        assert_eq!(back, without);
    }

    #[test]
    fn a_value_of_an_older_writer_decodes_without_a_reason() {
        // As written before `degradedReason` (and `released`, `lapses`) existed.
        let old = br#"{"v":1,"instance":"i-1","ts":5,"state":"degraded","appliedVersion":3}"#;
        let back: HeartbeatValue = codec::decode("hb", "worker-1", old).unwrap();
        assert_eq!(back.state, State::Degraded);
        assert_eq!(back.degraded_reason, None);
    }

    #[test]
    fn an_unknown_or_malformed_reason_keeps_the_heartbeat_valid() {
        for reason in [r#""solarFlare""#, "7", "null", r#"{"kind":"x"}"#] {
            let bytes = format!(
                r#"{{"v":1,"instance":"i-1","ts":5,"state":"degraded","appliedVersion":3,"degradedReason":{reason}}}"#
            );
            let back: HeartbeatValue = codec::decode("hb", "worker-1", bytes.as_bytes())
                .unwrap_or_else(|e| panic!("{reason}: {e}"));
            assert_eq!(back.degraded_reason, None, "{reason}");
            assert_eq!(back.applied_version, 3);
        }
    }

    #[test]
    fn a_value_of_a_build_before_protocols_reads_as_protocol_0_without_capabilities() {
        let old = br#"{"v":1,"instance":"i-1","ts":5,"state":"stable","appliedVersion":3,"released":3,"lapses":0}"#;
        let back: HeartbeatValue = codec::decode("hb", "worker-1", old).unwrap();
        assert_eq!(back.protocol, 0);
        assert!(back.capabilities.is_empty());
        assert!(!back.has(protocol::Capability::ReleaseAck));
        assert_eq!(back.released, 3);
    }

    #[test]
    fn this_build_announces_its_protocol_and_capabilities() {
        let written = value(None);
        let bytes = codec::encode(&written).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["protocol"], protocol::PROTOCOL);
        let names: Vec<&str> = json["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(names, ["leaseRevocation", "releaseAck"]);
        let back: HeartbeatValue = codec::decode("hb", "worker-1", &bytes).unwrap();
        assert_eq!(back, written);
        for c in protocol::Capability::ALL {
            assert!(back.has(c), "{c}");
        }
    }

    #[test]
    fn unknown_capabilities_are_kept_and_malformed_fields_never_fail_the_heartbeat() {
        let newer = br#"{"v":1,"instance":"i-1","ts":5,"state":"stable","appliedVersion":3,"protocol":1,"capabilities":["releaseAck","warpDrive",7]}"#;
        let back: HeartbeatValue = codec::decode("hb", "worker-1", newer).unwrap();
        assert_eq!(back.protocol, 1);
        assert!(back.capabilities.contains("warpDrive"), "kept");
        assert!(back.has(protocol::Capability::ReleaseAck));
        assert!(!back.has(protocol::Capability::LeaseRevocation));
        assert_eq!(back.capabilities.len(), 2, "the number is dropped");
        for (protocol, capabilities, read) in [
            (r#""two""#, r#""releaseAck""#, u32::MAX),
            ("-1", "null", u32::MAX),
            ("99999999999", "{}", u32::MAX),
            ("2", "[]", 2),
        ] {
            let bytes = format!(
                r#"{{"v":1,"instance":"i-1","ts":5,"state":"stable","appliedVersion":3,"protocol":{protocol},"capabilities":{capabilities}}}"#
            );
            let back: HeartbeatValue = codec::decode("hb", "worker-1", bytes.as_bytes())
                .unwrap_or_else(|e| panic!("{protocol}: {e}"));
            assert_eq!(back.protocol, read, "{protocol}");
            assert!(back.capabilities.is_empty(), "{capabilities}");
        }
    }
}
