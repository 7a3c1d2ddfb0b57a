//! `parti status` against a real nats-server: a live cluster, an inconsistent one, none at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use std::sync::Arc;
use std::time::Duration;

use common::{run, status_until};
use parti::election::{LEADER_KEY, LeaderRecord};
use parti::heartbeat::HeartbeatValue;
use parti::records::{
    CLUSTER_KEY, ClusterRecord, FLOOR_KEY, REFRESH_KEY, Slot, VersionFloor, WorkerRecord,
    worker_key,
};
use parti::stable_id::StableIdValue;
use parti::store::{Bucket, BucketSpec, NatsStore, Store, codec};
use parti::{ClusterPhase, Config, Lifecycle, Manager, Partition, State, WorkerId};
use parti_testkit::NatsServer;

const PARTITIONS: usize = 30;

fn partitions() -> Vec<Partition> {
    (0..PARTITIONS)
        .map(|i| Partition::new([format!("p{i}")], 10 + i as u64).unwrap())
        .collect()
}

async fn start_worker(server: &NatsServer) -> Manager {
    let client = server.client().await.unwrap();
    Manager::builder(async_nats::jetstream::new(client))
        .config(Config::fast_for_tests())
        .source(parti::source::Static::new(partitions()))
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_a_live_three_worker_cluster() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let (a, b, c) = tokio::join!(
        start_worker(&server),
        start_worker(&server),
        start_worker(&server)
    );
    let managers = [a, b, c];

    // Settled: all three live and in the committed map.
    let out = status_until(
        &url,
        &["--partitions"],
        "three live workers in the map",
        |json| {
            let workers = json["workers"].as_array().map_or(&[][..], Vec::as_slice);
            json["cluster"]["workers"] == 3
                && workers.len() == 3
                && workers.iter().all(|w| {
                    w["health"] == "live"
                        && w["inMap"] == true
                        && w["appliedVersion"] == json["cluster"]["version"]
                })
        },
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let json = out.json();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["found"], true);
    assert_eq!(json["consistent"], true);
    assert_eq!(json["issues"].as_array().unwrap().len(), 0, "{json:#}");
    for flag in ["lagging", "undecodable", "belowFloor"] {
        assert_eq!(json[flag], serde_json::json!([]), "{flag}: {json:#}");
    }

    // The same three workers the managers say they are.
    let workers = json["workers"].as_array().unwrap();
    let ids: BTreeSet<&str> = workers.iter().map(|w| w["id"].as_str().unwrap()).collect();
    let expected: BTreeSet<String> = managers.iter().map(|m| m.worker_id().to_string()).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect());

    // One leader, the one that says so, with its term.
    let leaders: Vec<&str> = workers
        .iter()
        .filter(|w| w["leader"] == true)
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(leaders.len(), 1, "{json:#}");
    assert_eq!(json["leader"]["worker"], leaders[0]);
    assert!(json["leader"]["term"].as_u64().unwrap() >= 1);
    let leading: Vec<String> = managers
        .iter()
        .filter(|m| m.is_leader())
        .map(|m| m.worker_id().to_string())
        .collect();
    assert_eq!(leading, [leaders[0]]);

    // A published version, and every partition owned exactly once.
    let cluster = &json["cluster"];
    assert!(cluster["version"].as_u64().unwrap() >= 1);
    assert_eq!(cluster["partitionCount"], PARTITIONS);
    assert_eq!(cluster["ownedPartitions"], PARTITIONS);
    let mut owned: Vec<&str> = workers
        .iter()
        .flat_map(|w| w["partitionKeys"].as_array().unwrap())
        .map(|k| k.as_str().unwrap())
        .collect();
    owned.sort_unstable();
    let mut all: Vec<String> = (0..PARTITIONS).map(|i| format!("p{i}")).collect();
    all.sort_unstable();
    assert_eq!(owned, all);
    let counted: u64 = workers
        .iter()
        .map(|w| w["partitions"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, PARTITIONS as u64);
    for w in workers {
        assert_eq!(w["state"], "stable");
        assert!(w["heartbeatAgeMs"].as_u64().is_some());
        assert_eq!(w["appliedVersion"], cluster["version"]);
    }

    // The human table lists the same.
    let human = run(&url, None, &["status"]).await;
    assert_eq!(human.code, Some(0), "{human:?}");
    assert!(human.stdout.contains("WORKER"), "{}", human.stdout);
    for id in &expected {
        assert!(human.stdout.contains(id.as_str()), "{}", human.stdout);
    }
    assert!(human.stdout.contains("no issues"), "{}", human.stdout);
    for flag in ["lagging", "undecodable", "belowFloor"] {
        assert!(!human.stdout.contains(flag), "{}", human.stdout);
    }

    for m in &managers {
        m.stop().await.unwrap();
    }
}

#[tokio::test]
async fn status_flags_two_owners_and_garbage_with_exit_code_2() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let store = NatsStore::new(async_nats::jetstream::new(server.client().await.unwrap()));
    let config = Config::default();
    let names = &config.kv_buckets;
    let assignment = store
        .bucket(&BucketSpec::new(names.assignment.clone()))
        .await
        .unwrap();
    let heartbeat = store
        .bucket(&parti::heartbeat::bucket_spec(
            &names.heartbeat,
            config.heartbeat_ttl,
            1,
        ))
        .await
        .unwrap();

    // A committed map in which "b" has two owners and one of three partitions has none.
    let part = |k: &str| Partition::new([k], 1).unwrap();
    let mut revisions = std::collections::BTreeMap::new();
    for (id, keys) in [("worker-0", vec!["a", "b"]), ("worker-1", vec!["b"])] {
        let record = WorkerRecord {
            version: 1,
            term: 1,
            lifecycle: Lifecycle::Running,
            partitions: keys.into_iter().map(part).collect(),
            pending: Default::default(),
        };
        let id = WorkerId::new(id);
        let rev = assignment
            .put(&worker_key(&id, Slot::A), codec::encode(&record).unwrap())
            .await
            .unwrap();
        revisions.insert(id, rev);
    }
    let cluster = ClusterRecord {
        version: 1,
        term: 1,
        phase: ClusterPhase::Stable,
        reason: "test".into(),
        workers: revisions,
        partition_count: 3,
        lifecycle: Lifecycle::Running,
        first_assignment_at: None,
        lineages: Default::default(),
        parked: Default::default(),
    };
    assignment
        .put(CLUSTER_KEY, codec::encode(&cluster).unwrap())
        .await
        .unwrap();
    heartbeat.put("worker-9", "not json".into()).await.unwrap();

    let out = run(&url, None, &["status", "--json"]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let json = out.json();
    assert_eq!(json["consistent"], false);
    let issues: Vec<(String, String)> = json["issues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_owned(),
                i["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        issues.contains(&("duplicateOwner".into(), "b".into())),
        "{issues:?}"
    );
    assert!(
        issues.iter().any(|(k, _)| k == "unownedPartitions"),
        "{issues:?}"
    );
    assert!(
        issues.contains(&("undecodableValue".into(), "parti-heartbeat/worker-9".into())),
        "{issues:?}"
    );

    let human = run(&url, None, &["status"]).await;
    assert_eq!(human.code, Some(2), "{human:?}");
    assert!(
        human.stdout.contains("ERROR    duplicateOwner"),
        "{}",
        human.stdout
    );
}

#[tokio::test]
async fn status_without_a_cluster_says_so_and_creates_nothing() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();

    let out = run(&url, None, &["status"]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stdout.contains("no Parti cluster"), "{}", out.stdout);
    assert!(out.stdout.contains("parti-heartbeat"), "{}", out.stdout);

    let json = run(&url, None, &["status", "--json"]).await;
    assert_eq!(json.code, Some(3), "{json:?}");
    let json = json.json();
    assert_eq!(json["found"], false);
    assert!(json["workers"].as_array().unwrap().is_empty());

    // Looking did not create any bucket.
    let js = async_nats::jetstream::new(server.client().await.unwrap());
    for name in Config::default()
        .kv_buckets
        .names()
        .map(|(_, n)| n.to_owned())
    {
        assert!(
            js.get_stream(format!("KV_{name}")).await.is_err(),
            "status created {name}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = run(&url, None, &["--connect-timeout", "2s", "status"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot connect to NATS at {url}")),
        "{}",
        out.stderr
    );
}

/// The four buckets of a cluster with the default names, created as a worker would.
struct Buckets {
    stable_id: Arc<dyn Bucket>,
    heartbeat: Arc<dyn Bucket>,
    election: Arc<dyn Bucket>,
    assignment: Arc<dyn Bucket>,
}

impl Buckets {
    async fn create(server: &NatsServer, config: &Config) -> Self {
        let store = NatsStore::new(async_nats::jetstream::new(server.client().await.unwrap()));
        let names = &config.kv_buckets;
        let spec = [
            parti::stable_id::bucket_spec(&names.stable_id, config.worker_id_ttl, 1),
            parti::heartbeat::bucket_spec(&names.heartbeat, config.heartbeat_ttl, 1),
            parti::election::bucket_spec(&names.election, config.election_ttl, 1),
            BucketSpec::new(names.assignment.clone()),
        ];
        let mut open = Vec::new();
        for spec in &spec {
            open.push(store.bucket(spec).await.unwrap());
        }
        let [stable_id, heartbeat, election, assignment] = <[_; 4]>::try_from(open).unwrap();
        Self {
            stable_id,
            heartbeat,
            election,
            assignment,
        }
    }

    /// A stable ID and a heartbeat for `id`, as a live worker of instance `i-{id}` puts them.
    async fn live(&self, id: &str, applied: u64, released: u64) {
        let instance = format!("i-{id}");
        let claimed = StableIdValue {
            instance: instance.clone(),
            host: "test".into(),
            claimed_at: now_ms(),
        };
        self.stable_id
            .put(id, codec::encode(&claimed).unwrap())
            .await
            .unwrap();
        let beat: HeartbeatValue = serde_json::from_value(serde_json::json!({
            "instance": instance,
            "ts": now_ms(),
            "state": State::Stable,
            "appliedVersion": applied,
            "released": released,
        }))
        .unwrap();
        self.heartbeat
            .put(id, codec::encode(&beat).unwrap())
            .await
            .unwrap();
    }

    async fn leader(&self, id: &str, term: u64) {
        let lease = LeaderRecord {
            worker: WorkerId::new(id),
            instance: format!("i-{id}"),
            term,
            acquired_at: now_ms(),
        };
        self.election
            .put(LEADER_KEY, codec::encode(&lease).unwrap())
            .await
            .unwrap();
    }

    async fn floor(&self, version: u64) {
        self.assignment
            .put(
                FLOOR_KEY,
                codec::encode(&VersionFloor { version, term: 0 }).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Commits `map` as version `version` of term `term`.
    async fn commit(&self, version: u64, term: u64, map: &[(&str, &[&str])]) {
        let mut revisions = std::collections::BTreeMap::new();
        let mut count = 0;
        for (id, keys) in map {
            let record = WorkerRecord {
                version,
                term,
                lifecycle: Lifecycle::Running,
                partitions: keys
                    .iter()
                    .map(|k| Partition::new([*k], 1).unwrap())
                    .collect(),
                pending: Default::default(),
            };
            count += keys.len();
            let id = WorkerId::new(*id);
            let rev = self
                .assignment
                .put(&worker_key(&id, Slot::A), codec::encode(&record).unwrap())
                .await
                .unwrap();
            revisions.insert(id, rev);
        }
        let cluster = ClusterRecord {
            version,
            term,
            phase: ClusterPhase::Stable,
            reason: "test".into(),
            workers: revisions,
            partition_count: count,
            lifecycle: Lifecycle::Running,
            first_assignment_at: Some(now_ms()),
            lineages: Default::default(),
            parked: Default::default(),
        };
        self.assignment
            .put(CLUSTER_KEY, codec::encode(&cluster).unwrap())
            .await
            .unwrap();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn strings(
    json: &serde_json::Value,
    field: &str,
    f: impl Fn(&serde_json::Value) -> String,
) -> Vec<String> {
    let mut out: Vec<String> = json[field]
        .as_array()
        .unwrap_or_else(|| panic!("no array {field}: {json:#}"))
        .iter()
        .map(f)
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn status_flags_lag_garbage_in_every_bucket_and_versions_and_terms_below_their_floor() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let b = Buckets::create(&server, &Config::default()).await;

    // Healthy first: two live workers that applied version 5 of term 7, its floor, its leader.
    b.commit(5, 7, &[("worker-0", &["a", "b"]), ("worker-1", &["c"])])
        .await;
    b.floor(5).await;
    b.live("worker-0", 5, 5).await;
    b.live("worker-1", 5, 5).await;
    b.leader("worker-0", 7).await;
    let healthy = run(&url, None, &["status", "--json"]).await;
    assert_eq!(healthy.code, Some(0), "{healthy:?}");
    let json = healthy.json();
    for flag in ["lagging", "undecodable", "belowFloor", "issues"] {
        assert_eq!(json[flag], serde_json::json!([]), "{flag}: {json:#}");
    }

    // worker-1 still on version 3; a floor of 9 above the commit; a leader of term 2 under a
    // commit of term 7; and something that is not what its key must hold in every bucket.
    b.live("worker-1", 3, 3).await;
    b.floor(9).await;
    b.leader("worker-0", 2).await;
    let ghost = StableIdValue {
        instance: "i-ghost".into(),
        host: "test".into(),
        claimed_at: now_ms(),
    };
    b.stable_id
        .put("ghost", codec::encode(&ghost).unwrap())
        .await
        .unwrap();
    b.heartbeat
        .put("worker-7", "not json".into())
        .await
        .unwrap();
    b.election.put("junk", "{}".into()).await.unwrap();
    b.assignment
        .put("worker.worker-0", "{}".into())
        .await
        .unwrap();
    let stray = WorkerRecord {
        version: 5,
        term: 7,
        lifecycle: Lifecycle::Running,
        partitions: vec![Partition::new(["z"], 1).unwrap()],
        pending: Default::default(),
    };
    b.assignment
        .put("worker.ghost.b", codec::encode(&stray).unwrap())
        .await
        .unwrap();
    b.assignment
        .put(REFRESH_KEY, "\u{0}garbage".into())
        .await
        .unwrap();

    let out = run(&url, None, &["status", "--json"]).await;
    assert_eq!(
        out.code,
        Some(2),
        "a term below and garbage are errors: {out:?}"
    );
    let json = out.json();
    assert_eq!(json["consistent"], false);

    // lagging: worker-1, two versions behind; worker-0 is not.
    assert_eq!(
        json["lagging"],
        serde_json::json!([{
            "worker": "worker-1", "appliedVersion": 3, "assignedVersion": 5, "released": 3,
            "committedVersion": 5, "behind": 2
        }]),
        "{json:#}"
    );

    // undecodable: one or more keys in each of the four buckets, each with a reason.
    let undecodable = strings(&json, "undecodable", |u| {
        assert!(!u["reason"].as_str().unwrap().is_empty(), "{u}");
        format!(
            "{}/{}",
            u["bucket"].as_str().unwrap(),
            u["key"].as_str().unwrap()
        )
    });
    assert_eq!(
        undecodable,
        [
            "parti-assignment/refresh",
            "parti-assignment/worker.ghost.b",
            "parti-assignment/worker.worker-0",
            "parti-election/junk",
            "parti-heartbeat/worker-7",
            "parti-stableid/ghost",
        ],
        "{json:#}"
    );
    // None of them is a worker, a lease or part of the commit.
    let ids = strings(&json, "workers", |w| w["id"].as_str().unwrap().to_owned());
    assert_eq!(ids, ["worker-0", "worker-1"]);
    assert_eq!(json["leader"]["worker"], "worker-0");
    assert_eq!(json["cluster"]["ownedPartitions"], 3);

    // belowFloor: the version under the floor key, the term under the cluster record's.
    let below = strings(&json, "belowFloor", |b| {
        format!(
            "{} {} {}<{} {}",
            b["what"].as_str().unwrap(),
            b["subject"].as_str().unwrap(),
            b["value"],
            b["floor"],
            b["floorSource"].as_str().unwrap()
        )
    });
    assert_eq!(
        below,
        [
            "term parti-election/leader 2<7 parti-assignment/cluster",
            "version parti-assignment/cluster 5<9 parti-assignment/floor",
        ],
        "{json:#}"
    );

    // Each flag is an issue too, and a line of the human report.
    let kinds = strings(&json, "issues", |i| i["kind"].as_str().unwrap().to_owned());
    for kind in ["lagging", "undecodableValue", "belowFloor"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind}: {kinds:?}");
    }
    let human = run(&url, None, &["status"]).await;
    assert_eq!(human.code, Some(2), "{human:?}");
    // An issue line: severity, kind, `subject:`, message.
    let line = |kind: &str, subject: &str| {
        human
            .stdout
            .lines()
            .find(|l| {
                let words: Vec<&str> = l.split_whitespace().take(3).collect();
                words.get(1) == Some(&kind) && words.get(2) == Some(&&*format!("{subject}:"))
            })
            .unwrap_or_else(|| panic!("no {kind} line for {subject}:\n{}", human.stdout))
            .trim()
            .to_owned()
    };
    assert!(
        human
            .stdout
            .contains("flags      lagging 1, undecodable 6, belowFloor 2"),
        "{}",
        human.stdout
    );
    assert!(line("lagging", "worker-1").contains("2 version(s) behind"));
    assert!(line("undecodableValue", "parti-election/junk").starts_with("ERROR"));
    assert!(
        line("undecodableValue", "parti-stableid/ghost").contains("not a worker ID of the pool")
    );
    assert!(line("belowFloor", "parti-election/leader").starts_with("ERROR"));
    assert!(line("belowFloor", "parti-assignment/cluster").starts_with("warning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flags_a_live_worker_that_never_applies_as_lagging() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let (a, b) = tokio::join!(start_worker(&server), start_worker(&server));
    status_until(&url, &[], "two live workers in the map", |json| {
        json["cluster"]["workers"] == 2 && json["issues"] == serde_json::json!([])
    })
    .await;

    // worker-50 claims its ID and heartbeats like a live worker, but never applies anything.
    let buckets = Buckets::create(&server, &Config::fast_for_tests()).await;
    let stuck = tokio::spawn(async move {
        loop {
            buckets.live("worker-50", 0, 0).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let out = status_until(&url, &[], "worker-50 lagging in the map", |json| {
        json["lagging"].as_array().is_some_and(|l| {
            l.iter().any(|l| {
                l["worker"] == "worker-50" && l["assignedVersion"].as_u64().is_some_and(|v| v > 0)
            })
        })
    })
    .await;
    let json = out.json();
    assert_eq!(out.code, Some(0), "a lag is a warning: {json:#}");
    let lag = json["lagging"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["worker"] == "worker-50")
        .unwrap();
    assert_eq!(lag["appliedVersion"], 0);
    assert_eq!(lag["committedVersion"], json["cluster"]["version"]);
    assert!(lag["behind"].as_u64().unwrap() >= 1, "{json:#}");
    let human = run(&url, None, &["status"]).await;
    assert!(
        human
            .stdout
            .lines()
            .any(|l| l.contains("lagging") && l.contains("worker-50")),
        "{}",
        human.stdout
    );

    stuck.abort();
    for m in [a, b] {
        m.stop().await.unwrap();
    }
}
