//! `parti status` against a real nats-server: a live cluster, an inconsistent one, none at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{run, status_until};
use parti::records::{CLUSTER_KEY, ClusterRecord, Slot, WorkerRecord, worker_key};
use parti::store::{BucketSpec, NatsStore, Store, codec};
use parti::{ClusterPhase, Config, Lifecycle, Manager, Partition, WorkerId};
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
    for (id, keys) in [("w-0", vec!["a", "b"]), ("w-1", vec!["b"])] {
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
    };
    assignment
        .put(CLUSTER_KEY, codec::encode(&cluster).unwrap())
        .await
        .unwrap();
    heartbeat.put("w-9", "not json".into()).await.unwrap();

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
        issues.contains(&("undecodableValue".into(), "parti-heartbeat/w-9".into())),
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
