use std::collections::BTreeMap;

use parti::heartbeat::HeartbeatValue;
use parti::records::{ClusterRecord, Published, WorkerRecord};
use parti::stable_id::StableIdValue;
use parti::store::codec;
use parti::{ClusterPhase, Lifecycle, Partition, State, WorkerId};

use super::*;

const NOW: u64 = 1_000_000;

fn entry(key: &str, value: bytes::Bytes, revision: u64) -> Entry {
    Entry {
        key: key.into(),
        value,
        revision,
    }
}

fn buckets(exist: bool) -> Vec<BucketReport> {
    Role::ALL
        .iter()
        .map(|&role| BucketReport {
            role,
            name: format!("b-{role:?}"),
            exists: exist,
            max_age_ms: (role == Role::Heartbeat).then_some(600),
        })
        .collect()
}

fn part(key: &str) -> Partition {
    Partition::new([key], 10).unwrap()
}

/// A snapshot builder: a worker is given its ID and/or heartbeat; the map is given per worker.
#[derive(Default)]
struct World {
    snapshot: Snapshot,
    map: Vec<(&'static str, Vec<&'static str>)>,
    partition_count: usize,
}

impl World {
    fn new() -> Self {
        let mut w = Self::default();
        w.snapshot.now_ms = NOW;
        w.snapshot.buckets = buckets(true);
        w
    }

    fn id(mut self, id: &str, instance: &str) -> Self {
        let value = StableIdValue {
            instance: instance.into(),
            host: "h".into(),
            claimed_at: NOW - 5_000,
        };
        let bytes = codec::encode(&value).unwrap();
        self.snapshot
            .stable_ids
            .insert(id.into(), entry(id, bytes, 1));
        self
    }

    fn beat(mut self, id: &str, instance: &str, age_ms: u64) -> Self {
        let value = HeartbeatValue {
            instance: instance.into(),
            ts: NOW - age_ms,
            state: State::Stable,
            applied_version: 3,
            released: 3,
            lapses: 0,
        };
        let bytes = codec::encode(&value).unwrap();
        self.snapshot
            .heartbeats
            .insert(id.into(), entry(id, bytes, 2));
        self
    }

    fn worker(self, id: &str) -> Self {
        self.id(id, &format!("i-{id}"))
            .beat(id, &format!("i-{id}"), 100)
    }

    fn leader(mut self, id: &str, term: u64) -> Self {
        let value = parti::election::LeaderRecord {
            worker: WorkerId::new(id),
            instance: format!("i-{id}"),
            term,
            acquired_at: NOW - 60_000,
        };
        let bytes = codec::encode(&value).unwrap();
        self.snapshot.leader = Some(entry("leader", bytes, 7));
        self
    }

    fn owns(mut self, id: &'static str, keys: Vec<&'static str>) -> Self {
        self.partition_count += keys.len();
        self.map.push((id, keys));
        self
    }

    fn published(&self) -> Published {
        let mut published = Published::default();
        let mut record_workers = BTreeMap::new();
        for (i, (id, keys)) in self.map.iter().enumerate() {
            let revision = 100 + i as u64;
            let worker = WorkerId::new(*id);
            let rec = WorkerRecord {
                version: 3,
                term: 7,
                lifecycle: Lifecycle::Running,
                partitions: keys.iter().map(|k| part(k)).collect(),
                pending: Default::default(),
            };
            record_workers.insert(worker.clone(), revision);
            published.map.set(worker.clone(), rec.partitions.clone());
            published.workers.insert(worker, (revision, rec));
        }
        let record = ClusterRecord {
            version: 3,
            term: 7,
            phase: ClusterPhase::Stable,
            reason: "cold_start".into(),
            workers: record_workers,
            partition_count: self.partition_count,
            lifecycle: Lifecycle::Running,
            first_assignment_at: Some(NOW - 10_000),
            lineages: Default::default(),
        };
        published.record = Some((record, 200));
        published.cluster_revision = Some(200);
        published
    }

    fn report(mut self) -> Report {
        if !self.map.is_empty() {
            self.snapshot.published = Some(self.published());
        }
        analyze(&self.snapshot)
    }
}

fn kinds(report: &Report) -> Vec<&'static str> {
    report.issues.iter().map(|i| i.kind).collect()
}

fn worker<'a>(report: &'a Report, id: &str) -> &'a WorkerReport {
    report.workers.iter().find(|w| w.id == id).unwrap()
}

#[test]
fn a_healthy_cluster_has_no_issues() {
    let report = World::new()
        .worker("w-0")
        .worker("w-1")
        .leader("w-1", 7)
        .owns("w-0", vec!["a", "b"])
        .owns("w-1", vec!["c"])
        .report();
    assert!(report.found && report.consistent, "{:?}", report.issues);
    assert!(report.issues.is_empty(), "{:?}", report.issues);
    assert_eq!(report.workers.len(), 2);
    let w1 = worker(&report, "w-1");
    assert!(w1.leader && w1.health == Health::Live);
    assert_eq!(
        (w1.partitions, w1.weight, w1.assigned_version),
        (Some(1), Some(10), Some(3))
    );
    assert_eq!(w1.heartbeat_age_ms, Some(100));
    assert!(!worker(&report, "w-0").leader);
    let cluster = report.cluster.unwrap();
    assert_eq!(
        (
            cluster.version,
            cluster.owned_partitions,
            cluster.partition_count
        ),
        (3, 3, 3)
    );
    assert_eq!(report.leader.unwrap().held_for_ms, 60_000);
}

#[test]
fn a_crashed_worker_is_expired_but_not_inconsistent() {
    let report = World::new()
        .worker("w-0")
        .id("w-1", "i-w-1")
        .leader("w-0", 7)
        .owns("w-0", vec!["a"])
        .owns("w-1", vec!["b"])
        .report();
    assert_eq!(worker(&report, "w-1").health, Health::Expired);
    assert_eq!(kinds(&report), ["expiredWorker"]);
    assert!(
        report.issues[0]
            .message
            .contains("stable ID and partitions")
    );
    assert!(report.consistent);

    // Reassigned already, the ID not yet expired: still listed.
    let report = World::new()
        .worker("w-0")
        .id("w-1", "x")
        .leader("w-0", 7)
        .report();
    assert_eq!(worker(&report, "w-1").health, Health::Expired);
}

#[test]
fn late_unclaimed_and_mismatched_workers_are_warnings() {
    let report = World::new()
        .id("w-0", "i-a")
        .beat("w-0", "i-b", 400) // TTL 600: 400 > 300 is late
        .beat("w-1", "i-1", 10)
        .leader("w-1", 7)
        .report();
    assert_eq!(worker(&report, "w-0").health, Health::Late);
    assert_eq!(worker(&report, "w-1").health, Health::Unclaimed);
    let mut k = kinds(&report);
    k.sort_unstable();
    assert_eq!(
        k,
        ["heartbeatWithoutId", "instanceMismatch", "lateHeartbeat"]
    );
    assert!(report.consistent);
}

#[test]
fn two_owners_or_none_are_errors() {
    let report = World::new()
        .worker("w-0")
        .worker("w-1")
        .leader("w-0", 7)
        .owns("w-0", vec!["a", "b"])
        .owns("w-1", vec!["b"])
        .report();
    assert!(!report.consistent);
    // 3 entries over 2 distinct partitions: "b" twice, and the count says 3.
    let dup = report
        .issues
        .iter()
        .find(|i| i.kind == "duplicateOwner")
        .unwrap();
    assert_eq!(dup.subject, "b");
    assert!(dup.message.contains("w-0, w-1"));
    assert!(kinds(&report).contains(&"unownedPartitions"));

    let mut world = World::new()
        .worker("w-0")
        .leader("w-0", 7)
        .owns("w-0", vec!["a"]);
    world.partition_count = 3;
    let report = world.report();
    let unowned = report
        .issues
        .iter()
        .find(|i| i.kind == "unownedPartitions")
        .unwrap();
    assert!(unowned.message.starts_with("2 of 3"), "{}", unowned.message);
}

#[test]
fn an_uncommitted_worker_is_an_error() {
    let mut world = World::new()
        .worker("w-0")
        .worker("w-1")
        .leader("w-0", 7)
        .owns("w-0", vec!["a"])
        .owns("w-1", vec!["b"]);
    // The record lists w-1, but its committed value is missing (or of another revision).
    let mut published = world.published();
    published.workers.remove(&WorkerId::new("w-1"));
    published.map.remove_worker(&WorkerId::new("w-1"));
    world.snapshot.published = Some(published);
    let report = analyze(&world.snapshot);
    assert_eq!(
        kinds(&report),
        ["uncommittedWorker"],
        "unowned is not double-counted"
    );
    assert!(!report.consistent);
    let w1 = worker(&report, "w-1");
    assert!(w1.in_map && w1.partitions.is_none());
}

#[test]
fn garbage_is_reported_never_a_panic() {
    let mut world = World::new().worker("w-0");
    world
        .snapshot
        .heartbeats
        .insert("w-1".into(), entry("w-1", "\u{ff}junk".into(), 3));
    world
        .snapshot
        .stable_ids
        .insert("w-1".into(), entry("w-1", "{}".into(), 4));
    world.snapshot.leader = Some(entry("leader", r#"{"v":2}"#.into(), 5));
    let mut published = Published::default();
    published.garbage.push("cluster".into());
    published.cluster_revision = Some(8);
    world.snapshot.published = Some(published);
    let report = world.report();
    let subjects: Vec<&str> = report
        .issues
        .iter()
        .filter(|i| i.kind == "undecodableValue")
        .map(|i| i.subject.as_str())
        .collect();
    assert_eq!(
        subjects,
        [
            "b-Assignment/cluster",
            "b-Election/leader",
            "b-Heartbeat/w-1",
            "b-StableId/w-1"
        ]
    );
    assert!(!report.consistent);
    assert!(report.leader.is_none() && report.cluster.is_none());
    // The garbage worker is still listed, with what is known.
    assert_eq!(worker(&report, "w-1").state, None);
}

#[test]
fn no_buckets_means_no_cluster() {
    let snapshot = Snapshot {
        now_ms: NOW,
        buckets: buckets(false),
        ..Snapshot::default()
    };
    let report = analyze(&snapshot);
    assert!(!report.found && report.consistent && report.issues.is_empty());

    let mut partial = buckets(true);
    partial[0].exists = false;
    let report = analyze(&Snapshot {
        buckets: partial,
        ..snapshot
    });
    assert_eq!(kinds(&report), ["bucketMissing"]);
}

#[test]
fn json_field_names_are_the_documented_ones() {
    let report = World::new()
        .worker("w-0")
        .id("w-1", "i")
        .leader("w-0", 7)
        .owns("w-0", vec!["a"])
        .report();
    let json = serde_json::to_value(&report).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&json),
        [
            "buckets",
            "cluster",
            "consistent",
            "found",
            "generatedAtMs",
            "issues",
            "leader",
            "schema",
            "workers"
        ]
    );
    assert_eq!(json["schema"], 1);
    assert_eq!(
        keys(&json["cluster"]),
        [
            "firstAssignmentAtMs",
            "lifecycle",
            "ownedPartitions",
            "partitionCount",
            "phase",
            "reason",
            "scalingReason",
            "scalingUntilMs",
            "term",
            "totalWeight",
            "version",
            "workers"
        ]
    );
    assert_eq!(json["cluster"]["lifecycle"], "running");
    assert_eq!(
        keys(&json["leader"]),
        ["acquiredAtMs", "heldForMs", "instance", "term", "worker"]
    );
    assert_eq!(
        keys(&json["workers"][0]),
        [
            "appliedVersion",
            "assignedVersion",
            "health",
            "heartbeatAgeMs",
            "host",
            "id",
            "idClaimedAtMs",
            "inMap",
            "instance",
            "leader",
            "partitions",
            "state",
            "weight"
        ]
    );
    assert_eq!(json["workers"][1]["health"], "expired");
    assert_eq!(
        keys(&json["issues"][0]),
        ["kind", "message", "severity", "subject"]
    );
    assert_eq!(json["issues"][0]["severity"], "warning");
    assert_eq!(
        keys(&json["buckets"][0]),
        ["exists", "maxAgeMs", "name", "role"]
    );
    assert_eq!(json["buckets"][0]["role"], "stableId");
}
