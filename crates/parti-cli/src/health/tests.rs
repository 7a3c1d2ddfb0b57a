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
            expelled: false,
            degraded_reason: None,
            protocol: parti::heartbeat::protocol::PROTOCOL,
            capabilities: parti::heartbeat::protocol::capabilities(),
            capacity: parti::Capacity::DEFAULT,
            labels: Default::default(),
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
        self.snapshot
            .election
            .insert("leader".into(), entry("leader", bytes, 7));
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
            parked: Default::default(),
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
    world
        .snapshot
        .election
        .insert("leader".into(), entry("leader", r#"{"v":2}"#.into(), 5));
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
    // Garbage alone never makes a worker.
    assert!(report.workers.iter().all(|w| w.id != "w-1"), "{report:?}");
    assert_eq!(report.undecodable.len(), 4);
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
            "belowFloor",
            "buckets",
            "cluster",
            "consistent",
            "found",
            "generatedAtMs",
            "intents",
            "issues",
            "lagging",
            "leader",
            "schema",
            "undecodable",
            "versions",
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
            "capabilities",
            "degradedReason",
            "health",
            "heartbeatAgeMs",
            "host",
            "id",
            "idClaimedAtMs",
            "inMap",
            "instance",
            "leader",
            "partitions",
            "protocol",
            "released",
            "state",
            "weight"
        ]
    );
    assert_eq!(json["workers"][1]["health"], "expired");
    assert_eq!(
        json["workers"][0]["degradedReason"],
        serde_json::Value::Null
    );
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

fn pool() -> StableIdConfig {
    StableIdConfig::new("w", 0, 9, std::time::Duration::from_secs(1))
}

impl World {
    fn beat_versions(mut self, id: &str, applied: u64, released: u64) -> Self {
        self = self.beat(id, &format!("i-{id}"), 100);
        let mut value: HeartbeatValue =
            codec::decode("b", id, &self.snapshot.heartbeats[id].value).unwrap();
        value.applied_version = applied;
        value.released = released;
        let bytes = codec::encode(&value).unwrap();
        self.snapshot
            .heartbeats
            .insert(id.into(), entry(id, bytes, 2));
        self
    }

    fn raw(mut self, role: Role, key: &str, value: &str) -> Self {
        let map = match role {
            Role::StableId => &mut self.snapshot.stable_ids,
            Role::Heartbeat => &mut self.snapshot.heartbeats,
            Role::Election => &mut self.snapshot.election,
            Role::Assignment => &mut self.snapshot.assignment,
        };
        map.insert(key.into(), entry(key, value.to_owned().into(), 9));
        self
    }

    fn floor(self, version: u64) -> Self {
        let value = format!(r#"{{"v":1,"version":{version}}}"#);
        self.raw(Role::Assignment, "floor", &value)
    }
}

fn flag_kinds(report: &Report) -> (usize, usize, usize) {
    (
        report.lagging.len(),
        report.undecodable.len(),
        report.below_floor.len(),
    )
}

fn healthy() -> World {
    let mut world = World::new()
        .worker("w-0")
        .worker("w-1")
        .leader("w-1", 7)
        .owns("w-0", vec!["a", "b"])
        .owns("w-1", vec!["c"])
        .floor(3);
    world.snapshot.pool = Some(pool());
    world
}

#[test]
fn a_healthy_cluster_raises_no_flag() {
    let report = healthy().report();
    assert_eq!(flag_kinds(&report), (0, 0, 0), "{:?}", report.issues);
    assert!(report.issues.is_empty() && report.consistent);
    assert_eq!(worker(&report, "w-0").released, Some(3));
    // The worker value's version may be older than the commit: not a lag while released is
    // the committed version.
    let mut world = healthy();
    let mut published = world.published();
    published.record.as_mut().unwrap().0.version = 5;
    world.snapshot.published = Some(published);
    let world = world.beat_versions("w-0", 3, 5).beat_versions("w-1", 3, 5);
    let report = analyze(&world.snapshot);
    assert_eq!(flag_kinds(&report), (0, 0, 0), "{:?}", report.issues);
}

#[test]
fn a_live_worker_behind_the_commit_is_lagging() {
    let mut world = healthy();
    let mut published = world.published();
    published.record.as_mut().unwrap().0.version = 6;
    if let Some((_, rec)) = published.workers.get_mut(&WorkerId::new("w-1")) {
        rec.version = 6;
    }
    world.snapshot.published = Some(published);
    let world = world
        .beat_versions("w-0", 3, 6)
        .beat_versions("w-1", 4, 4)
        .floor(6);
    let report = analyze(&world.snapshot);
    assert_eq!(
        report.lagging,
        [Lag {
            worker: "w-1".into(),
            applied_version: 4,
            assigned_version: Some(6),
            released: 4,
            committed_version: 6,
            behind: 2,
        }]
    );
    let issue = report.issues.iter().find(|i| i.kind == "lagging").unwrap();
    assert_eq!(
        (issue.severity, issue.subject.as_str()),
        (Severity::Warning, "w-1")
    );
    assert!(
        issue.message.starts_with("2 version(s) behind"),
        "{}",
        issue.message
    );
    assert!(report.consistent, "a lag is a warning");

    // Only live workers lag: an expired one is reported as expired.
    let mut world = healthy();
    world.snapshot.heartbeats.remove("w-0");
    assert!(analyze(&world.snapshot).lagging.is_empty());
}

#[test]
fn keys_outside_the_pool_and_garbage_in_every_bucket_are_undecodable() {
    let world = healthy()
        .raw(
            Role::StableId,
            "ghost",
            r#"{"v":1,"instance":"i","host":"h","claimedAt":1}"#,
        )
        .raw(Role::Heartbeat, "w-10", "{}")
        .raw(Role::Heartbeat, "w-2", "not json")
        .raw(Role::Election, "junk", "{}")
        .raw(Role::Assignment, "floor", "[1]")
        .raw(Role::Assignment, "cluster", "{")
        .raw(Role::Assignment, "worker.w-0", "{}")
        .raw(Role::Assignment, "worker.ghost.a", "{}")
        .raw(Role::Assignment, "worker.w-5.b", r#"{"v":1}"#)
        .raw(
            Role::Assignment,
            "refresh",
            r#"{"v":1,"requestedBy":"w-1","at":1}"#,
        )
        .raw(Role::Assignment, "other", "{}");
    let report = world.report();
    let listed: Vec<String> = report
        .undecodable
        .iter()
        .map(|u| format!("{:?}/{}", u.role, u.key))
        .collect();
    assert_eq!(
        listed,
        [
            "StableId/ghost",
            "Heartbeat/w-10",
            "Heartbeat/w-2",
            "Election/junk",
            "Assignment/cluster",
            "Assignment/floor",
            "Assignment/other",
            "Assignment/worker.ghost.a",
            "Assignment/worker.w-0",
            "Assignment/worker.w-5.b",
        ]
    );
    let reason = |key: &str| {
        report
            .undecodable
            .iter()
            .find(|u| u.key == key)
            .map(|u| u.reason.as_str())
            .unwrap()
    };
    assert!(reason("ghost").contains("not a worker ID of the pool w-0…w-9"));
    assert!(reason("w-2").starts_with("not a heartbeat: "));
    assert!(reason("junk").starts_with("unexpected key"));
    assert!(reason("floor").starts_with("not a version floor"));
    assert!(reason("other").starts_with("unexpected key"));
    // Never a worker: no row for ghost, w-10 or w-2.
    let ids: Vec<&str> = report.workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["w-0", "w-1"]);
    assert!(!report.consistent);
    assert_eq!(
        report
            .issues
            .iter()
            .filter(|i| i.kind == "undecodableValue")
            .count(),
        10
    );

    // A lease naming a key outside the pool is no lease.
    let mut world = healthy();
    let mut other = pool();
    other.prefix = "other".into();
    world.snapshot.pool = Some(other);
    let report = world.report();
    assert!(report.leader.is_none());
    // Its IDs and heartbeats are no workers, its worker values no commit; only the names of
    // the cluster record remain, without partitions.
    assert!(
        report
            .workers
            .iter()
            .all(|w| w.health == Health::Stale && w.partitions.is_none()),
        "{:?}",
        report.workers
    );
    assert!(report.undecodable.iter().any(|u| u.key == "leader"));
}

#[test]
fn versions_and_terms_below_their_floor_are_flagged() {
    // The floor key above the committed version: a warning.
    let report = healthy().floor(9).report();
    assert_eq!(
        report.below_floor,
        [BelowFloor {
            what: Below::Version,
            subject: "b-Assignment/cluster".into(),
            value: 3,
            floor: 9,
            floor_source: "b-Assignment/floor".into(),
        }]
    );
    assert!(report.consistent);
    assert!(kinds(&report).contains(&"belowFloor"));

    // A live worker reports a version above the commit.
    let report = healthy().beat_versions("w-0", 3, 8).report();
    assert_eq!(report.below_floor.len(), 1);
    assert_eq!(report.below_floor[0].floor, 8);
    assert_eq!(report.below_floor[0].floor_source, "b-Heartbeat/w-0");

    // A leader term below the cluster record's: an error (that leader is fenced out).
    let report = healthy().leader("w-1", 2).report();
    assert_eq!(report.below_floor.len(), 1, "{:?}", report.below_floor);
    let b = &report.below_floor[0];
    assert_eq!(
        (
            b.what,
            b.value,
            b.floor,
            b.subject.as_str(),
            b.floor_source.as_str()
        ),
        (
            Below::Term,
            2,
            7,
            "b-Election/leader",
            "b-Assignment/cluster"
        )
    );
    assert!(!report.consistent);

    // A term recorded in the floor key counts too.
    let report = healthy()
        .raw(
            Role::Assignment,
            "floor",
            r#"{"v":1,"version":3,"term":11}"#,
        )
        .report();
    assert_eq!(report.below_floor.len(), 1);
    assert_eq!(
        (report.below_floor[0].floor, report.below_floor[0].value),
        (11, 7)
    );
}

#[test]
fn watch_holds_lag_back_for_one_heartbeat_interval() {
    let lagging = |now: u64| {
        let mut world = healthy().beat_versions("w-0", 3, 2);
        world.snapshot.now_ms = now;
        world.report()
    };
    let mut hold = HoldBack::new(std::time::Duration::from_millis(500));
    let mut first = lagging(NOW);
    assert_eq!(first.lagging.len(), 1);
    hold.apply(&mut first);
    assert!(first.lagging.is_empty() && !kinds(&first).contains(&"lagging"));
    let mut later = lagging(NOW + 501);
    hold.apply(&mut later);
    assert_eq!(later.lagging.len(), 1);
    assert!(kinds(&later).contains(&"lagging"));
    // Caught up: forgotten, and held back again from scratch.
    let mut fine = healthy().report();
    hold.apply(&mut fine);
    let mut again = lagging(NOW + 600);
    hold.apply(&mut again);
    assert!(again.lagging.is_empty());

    // A term below is an error only once it lasted.
    let mut hold = HoldBack::new(std::time::Duration::from_millis(500));
    let mut report = healthy().leader("w-1", 2).report();
    hold.apply(&mut report);
    assert!(report.consistent && report.below_floor.is_empty());
}

impl World {
    /// A live worker whose heartbeat says `state`, with `reason` as its `degradedReason`.
    fn beat_state(mut self, id: &str, state: State, reason: Option<parti::DegradedReason>) -> Self {
        self = self
            .id(id, &format!("i-{id}"))
            .beat(id, &format!("i-{id}"), 100);
        let mut value: HeartbeatValue =
            codec::decode("b", id, &self.snapshot.heartbeats[id].value).unwrap();
        value.state = state;
        value.degraded_reason = reason;
        let bytes = codec::encode(&value).unwrap();
        self.snapshot
            .heartbeats
            .insert(id.into(), entry(id, bytes, 2));
        self
    }
}

#[test]
fn a_degraded_worker_shows_why_in_json_and_in_the_table() {
    use parti::DegradedReason::{KvErrors, NatsUnreachable};
    let report = World::new()
        .beat_state("w-0", State::Degraded, Some(NatsUnreachable))
        .beat_state("w-1", State::Degraded, Some(KvErrors))
        // A worker that predates the field: degraded, reason unknown.
        .beat_state("w-2", State::Degraded, None)
        // A reason left next to another state is not shown.
        .beat_state("w-3", State::Stable, Some(KvErrors))
        .leader("w-3", 7)
        .owns("w-0", vec!["a"])
        .owns("w-1", vec!["b"])
        .owns("w-2", vec!["c"])
        .owns("w-3", vec!["d"])
        .report();
    let reasons: Vec<_> = ["w-0", "w-1", "w-2", "w-3"]
        .iter()
        .map(|id| worker(&report, id).degraded_reason)
        .collect();
    assert_eq!(reasons, [Some(NatsUnreachable), Some(KvErrors), None, None]);
    // Being degraded is not an issue of its own: the state column says it.
    assert!(
        report.consistent && report.issues.is_empty(),
        "{:?}",
        report.issues
    );

    let json = serde_json::to_value(&report).unwrap();
    let field = |i: usize| json["workers"][i]["degradedReason"].clone();
    assert_eq!(field(0), "natsUnreachable");
    assert_eq!(field(1), "kvErrors");
    assert_eq!(field(2), serde_json::Value::Null);
    assert_eq!(field(3), serde_json::Value::Null);
    assert_eq!(json["workers"][0]["state"], "degraded");

    let text = crate::render::human(&report, "nats://test:4222");
    let row = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id} in\n{text}"))
            .to_owned()
    };
    assert!(row("w-0").contains("degraded (natsUnreachable)"), "{text}");
    assert!(row("w-1").contains("degraded (kvErrors)"), "{text}");
    assert!(
        row("w-2").contains("degraded") && !row("w-2").contains('('),
        "{text}"
    );
    assert!(
        row("w-3").contains("stable") && !row("w-3").contains("kvErrors"),
        "{text}"
    );
}

impl World {
    /// A live worker whose heartbeat announces `protocol` and `capabilities`; `None` writes a
    /// heartbeat of a build that predates both fields.
    fn beat_protocol(mut self, id: &str, announced: Option<(u32, &[&str])>) -> Self {
        self = self
            .id(id, &format!("i-{id}"))
            .beat(id, &format!("i-{id}"), 100);
        let mut json: serde_json::Value =
            serde_json::from_slice(&self.snapshot.heartbeats[id].value).unwrap();
        let object = json.as_object_mut().unwrap();
        match announced {
            Some((protocol, capabilities)) => {
                object.insert("protocol".into(), protocol.into());
                object.insert("capabilities".into(), capabilities.to_vec().into());
            }
            None => {
                object.remove("protocol");
                object.remove("capabilities");
            }
        }
        let bytes = bytes::Bytes::from(serde_json::to_vec(&json).unwrap());
        self.snapshot
            .heartbeats
            .insert(id.into(), entry(id, bytes, 2));
        self
    }
}

#[test]
fn protocols_and_capabilities_are_shown_and_a_mixed_fleet_is_flagged() {
    use parti::heartbeat::protocol::PROTOCOL;
    let all: &[&str] = &["leaseRevocation", "releaseAck"];
    let report = World::new()
        .beat_protocol("w-0", Some((PROTOCOL, all)))
        .beat_protocol("w-1", None)
        .beat_protocol("w-2", Some((PROTOCOL + 1, &["releaseAck", "warpDrive"])))
        .leader("w-0", 7)
        .owns("w-0", vec!["a", "b"])
        .owns("w-1", vec!["c"])
        .report();
    assert_eq!(worker(&report, "w-0").protocol, Some(PROTOCOL));
    assert_eq!(worker(&report, "w-1").protocol, Some(0));
    assert_eq!(worker(&report, "w-1").capabilities, Some(Vec::new()));
    assert_eq!(
        worker(&report, "w-2").capabilities,
        Some(vec!["releaseAck".to_owned(), "warpDrive".to_owned()])
    );
    // Three versions: flagged, and the newer protocol is one this build does not speak.
    assert_eq!(report.versions.len(), 3);
    assert_eq!(report.versions[0].workers, ["w-1"]);
    assert_eq!(
        report.versions[0].missing,
        ["releaseAck", "leaseRevocation"]
    );
    assert!(report.versions[1].missing.is_empty());
    assert!(!report.versions[2].supported);
    assert!(
        kinds(&report).contains(&"mixedVersions"),
        "{:?}",
        report.issues
    );
    let unsupported: Vec<&str> = report
        .issues
        .iter()
        .filter(|i| i.kind == "protocolUnsupported")
        .map(|i| i.subject.as_str())
        .collect();
    assert_eq!(unsupported, ["w-2"]);
    assert!(report.consistent, "warnings only");

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["workers"][1]["protocol"], 0);
    assert_eq!(json["versions"][0]["protocol"], 0);
    assert_eq!(json["versions"][2]["supported"], false);

    let text = crate::render::human(&report, "nats://test:4222");
    let row = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id} in\n{text}"))
            .to_owned()
    };
    assert!(text.contains("PROTOCOL"), "{text}");
    assert!(text.contains("mixedVersions 3"), "{text}");
    assert!(
        row("w-1").contains("0 (-leaseRevocation -releaseAck)"),
        "{text}"
    );
    assert!(
        row("w-2").contains(&format!("{} (-leaseRevocation +warpDrive)", PROTOCOL + 1)),
        "{text}"
    );
    assert!(!row("w-0").contains('('), "{text}");
}

#[test]
fn a_fleet_of_one_version_is_not_flagged() {
    let report = World::new()
        .worker("w-0")
        .worker("w-1")
        .leader("w-0", 7)
        .owns("w-0", vec!["a"])
        .owns("w-1", vec!["b"])
        .report();
    assert_eq!(report.versions.len(), 1);
    assert_eq!(report.versions[0].workers, ["w-0", "w-1"]);
    assert!(report.issues.is_empty(), "{:?}", report.issues);
    let text = crate::render::human(&report, "nats://test:4222");
    assert!(!text.contains("mixedVersions"), "{text}");
}
