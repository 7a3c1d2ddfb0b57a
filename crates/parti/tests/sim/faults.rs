//! The faults the simulation injects beyond crashes and leaves, each recorded as a
//! [`FaultRecord`] (kind, victim, start, heal) for the ownership checker, whose gap rule
//! excuses a partition's absence until the faults before it healed.
//!
//! Fault kinds (what `known.rs` refers to): `kill`, `cut` (one worker cut off from the store),
//! `storeOutage` (every worker cut off), `pause` (a worker stopped like `SIGSTOP`: every store
//! call blocks, then resumes), `idStolen` (a worker cut off past `workerIdTtl` while another
//! takes its stable ID), `garbage` (junk written over a key of any bucket), `bucketDeleted`
//! (a bucket deleted and created again), `errorBurst` (a run of failed calls), `fullRestart`
//! and `rejoin` (no worker left for a while), and `leave` (a graceful leave: its partitions wait
//! for the planned window, a documented limitation, so it excuses gaps for that long). The seed's store profile adds `slowStore`,
//! `failures` and `lostReplies`, which are not recorded as faults (they last the whole run, so
//! they would excuse every gap) but count when `known.rs` explains a violation.

use std::time::Duration;

use bytes::Bytes;
use parti::ownership::now_ns;
use parti::records::{CLUSTER_KEY, REFRESH_KEY, Slot, page_key, page_of, worker_key};
use parti::store::{BucketSpec, Store};
use parti::{WorkerId, election, heartbeat, stable_id};
use parti_testkit::checker::FaultRecord;
use rand::Rng;
use rand::seq::IndexedRandom;

use super::Sim;

/// Junk a broken or hostile writer might leave in a key.
const GARBAGE: &[&[u8]] = &[
    b"",
    b"not json",
    b"{\"v\":1}",
    b"{\"v\":99,\"version\":1}",
    b"{\"v\":1,\"version\":\"seven\",\"workers\":7}",
    b"\xff\xfe\x00garbage",
    b"[1,2,3]",
];

impl Sim {
    /// Records a fault that starts now and heals after `lasts`, on `victim` (slot `n`) if one.
    pub(super) fn record_fault(&self, kind: &str, victim: Option<usize>, lasts: Duration) {
        let (worker, instance) = victim
            .map(|n| self.identity(n))
            .map_or((None, None), |(w, i)| (Some(w), i));
        let start_ns = now_ns();
        self.shared.fault(FaultRecord {
            kind: kind.to_owned(),
            worker,
            instance,
            start_ns,
            end_ns: start_ns + u64::try_from(lasts.as_nanos()).unwrap_or(u64::MAX),
            ends_process: false,
        });
    }

    /// The bucket specs the workers open, by bucket kind.
    pub(super) fn bucket_specs(&self) -> [(&'static str, BucketSpec); 4] {
        let (c, b) = (&self.config, &self.config.kv_buckets);
        [
            (
                "stableId",
                stable_id::bucket_spec(&b.stable_id, c.worker_id_ttl, b.replicas),
            ),
            (
                "heartbeat",
                heartbeat::bucket_spec(&b.heartbeat, c.heartbeat_ttl, b.replicas),
            ),
            (
                "election",
                election::bucket_spec(&b.election, c.election_ttl, b.replicas),
            ),
            (
                "assignment",
                BucketSpec::new(b.assignment.clone()).replicas(b.replicas),
            ),
        ]
    }

    /// Stops worker `n` like `SIGSTOP` for longer than its leases (heartbeatTtl + grace and up
    /// to 20 s more), then resumes it: its blocked calls carry on as if nothing happened.
    pub(super) fn pause(&mut self, n: usize) {
        self.events += 1;
        let lasts = self.config.heartbeat_ttl
            + self.config.emergency_grace_period()
            + Duration::from_millis(self.rng.random_range(1_000..=20_000));
        let Some(client) = self.client(n) else { return };
        self.record_fault("pause", Some(n), lasts);
        client.faults().pause_for(lasts);
        self.faults_until = self.faults_until.max(tokio::time::Instant::now() + lasts);
    }

    /// Cuts worker `n` off for longer than `workerIdTtl`; once its ID has expired a new worker
    /// claims exactly that ID; then the victim comes back.
    pub(super) async fn steal_id(&mut self, n: usize) {
        self.events += 1;
        let Some(client) = self.client(n) else { return };
        let (id, _) = self.identity(n);
        let Some(number) = id.rsplit('-').next().and_then(|d| d.parse::<u32>().ok()) else {
            return;
        };
        let takeover = self.config.worker_id_ttl + Duration::from_secs(1);
        let lasts = takeover + Duration::from_millis(self.rng.random_range(1_000..=20_000));
        self.record_fault("idStolen", Some(n), lasts);
        client.faults().cut_off_for(lasts);
        self.faults_until = self.faults_until.max(tokio::time::Instant::now() + lasts);
        // The sleep is the fault: the victim's ID expires meanwhile.
        tokio::time::sleep(takeover).await;
        let mut config = self.config.clone();
        config.worker_id_min = number;
        self.shared
            .log(format!("a new worker claims {id} from w{n} (cut off)"));
        self.join_with(config);
    }

    /// Writes junk over one key of one bucket: the `cluster` record, a worker's commit page, a
    /// worker's slot, a heartbeat (a worker's or a key that is no worker ID), the leader lease,
    /// a stable ID.
    pub(super) async fn garbage(&mut self) {
        self.events += 1;
        let ids: Vec<WorkerId> = self.alive().iter().map(|(_, m)| m.worker_id()).collect();
        let some_id = ids
            .choose(&mut self.rng)
            .cloned()
            .unwrap_or_else(|| WorkerId::new("worker-0"));
        let [stable, beat, lease, assignment] = self.bucket_specs().map(|(_, spec)| spec);
        let (spec, key) = match self.rng.random_range(0..9) {
            0 | 1 => (assignment, CLUSTER_KEY.to_owned()),
            8 => (assignment, page_key(page_of(&some_id))),
            2 => (
                assignment,
                worker_key(&some_id, *[Slot::A, Slot::B].choose(&mut self.rng).unwrap()),
            ),
            3 => (assignment, REFRESH_KEY.to_owned()),
            4 => (beat, some_id.as_str().to_owned()),
            5 => (beat, "not-a-worker".to_owned()),
            6 => (lease, "leader".to_owned()),
            _ => (stable, some_id.as_str().to_owned()),
        };
        let junk = Bytes::from_static(GARBAGE.choose(&mut self.rng).unwrap());
        self.record_fault("garbage", None, Duration::ZERO);
        let written = match self.store.bucket(&spec).await {
            Ok(bucket) => bucket.put(&key, junk.clone()).await.map(drop),
            Err(e) => Err(e),
        };
        self.shared.log(format!(
            "garbage {junk:?} over {}/{key}: {written:?}",
            spec.name
        ));
    }

    /// Deletes one bucket and creates it again (empty) after up to 20 s, as an operator might.
    pub(super) fn recreate_bucket(&mut self) {
        self.events += 1;
        let specs = self.bucket_specs();
        let (what, spec) = specs.choose(&mut self.rng).cloned().unwrap();
        let lasts = Duration::from_millis(self.rng.random_range(0..=20_000));
        self.record_fault("bucketDeleted", None, lasts);
        self.shared.log(format!(
            "bucket {what} ({}) deleted for {lasts:?}",
            spec.name
        ));
        self.store.delete_bucket(&spec.name);
        self.faults_until = self.faults_until.max(tokio::time::Instant::now() + lasts);
        let store = self.store.clone();
        self.background.push(tokio::spawn(async move {
            // The sleep is the fault: the bucket is missing meanwhile.
            tokio::time::sleep(lasts).await;
            // A store outage may be under way: the operator retries.
            while store.bucket(&spec).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    /// Makes the next few calls of one worker (or of every worker) fail.
    pub(super) fn error_burst(&mut self) {
        self.events += 1;
        let calls = self.rng.random_range(1..=10);
        let victim = if self.rng.random_bool(0.5) {
            self.random_alive()
        } else {
            None
        };
        match victim.and_then(|n| self.client(n)) {
            Some(client) => client.faults().fail_next(calls),
            None => self.store.backend_faults().fail_next(calls),
        }
        self.record_fault("errorBurst", victim, Duration::ZERO);
    }
}
