//! `parti provision plan|apply` against a real nats-server: creation, drift, adopt, force, and
//! the exit codes for an unreachable server and a bad configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use common::{Files, Output, run};
use parti::Config;
use parti::store::{NatsStore, Store};
use parti_testkit::NatsServer;

/// The four default bucket names, in report order.
const BUCKETS: [&str; 4] = [
    "parti-stableid",
    "parti-election",
    "parti-heartbeat",
    "parti-assignment",
];

/// `(name, action)` of every resource of a JSON report.
fn actions(out: &Output) -> Vec<(String, String)> {
    let json = out.json();
    json["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("no resources: {out:?}"))
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The report entry of one resource.
fn resource(out: &Output, name: &str) -> serde_json::Value {
    out.json()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in the report: {out:?}"))
}

fn all(names: &[&str], action: &str) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| ((*n).to_owned(), action.to_owned()))
        .collect()
}

async fn js(server: &NatsServer) -> jetstream::Context {
    jetstream::new(server.client().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_apply_plan_on_an_empty_server() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();

    // Plan: all four to create; exit 0 unless --fail-on-drift.
    let out = run(&url, None, &["provision", "plan", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(actions(&out), all(&BUCKETS, "create"));
    assert_eq!(out.json()["summary"]["create"], 4);
    let out = run(&url, None, &["provision", "plan", "--fail-on-drift"]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    for name in BUCKETS {
        assert!(out.stdout.contains(name), "{out:?}");
    }
    assert!(out.stdout.contains("4 to create"), "{out:?}");

    // A dry run changes nothing.
    let out = run(&url, None, &["provision", "apply", "--dry-run", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["dryRun"], true);
    let out = run(&url, None, &["provision", "plan", "--fail-on-drift"]).await;
    assert_eq!(out.code, Some(2), "a dry run created something: {out:?}");

    // Apply creates them; a second plan is clean.
    let out = run(&url, None, &["provision", "apply", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(actions(&out), all(&BUCKETS, "create"));
    assert!(
        out.json()["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["applied"] == true),
        "{out:?}"
    );
    let out = run(
        &url,
        None,
        &["provision", "plan", "--fail-on-drift", "--json"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(actions(&out), all(&BUCKETS, "ok"));

    // What was created is exactly what a worker opens.
    let store = NatsStore::new(js(&server).await);
    for spec in Config::default().bucket_specs() {
        store
            .bucket(&spec)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    }

    // A second apply has nothing to do.
    let out = run(&url, None, &["provision", "apply"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("4 ok"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_changed_by_hand_is_reported_and_adopted() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let out = run(&url, None, &["provision", "apply"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");

    // Someone recreates the heartbeat bucket with history 5, a 1m max_age and no markers.
    let js = js(&server).await;
    js.delete_key_value("parti-heartbeat").await.unwrap();
    js.create_key_value(kv::Config {
        bucket: "parti-heartbeat".into(),
        history: 5,
        max_age: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();

    let out = run(
        &url,
        None,
        &["provision", "plan", "--json", "--fail-on-drift"],
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let heartbeat = resource(&out, "parti-heartbeat");
    assert_eq!(heartbeat["action"], "drift", "{heartbeat:#}");
    assert_eq!(
        heartbeat["changes"],
        serde_json::json!([
            {"field": "max_age", "have": "1m", "want": "6s", "inPlace": true},
            {"field": "history", "have": "5", "want": "1", "inPlace": true},
            {"field": "limit_markers", "have": "off", "want": "on", "inPlace": true},
        ])
    );
    assert_eq!(resource(&out, "parti-stableid")["action"], "ok");
    // The table names the fields too.
    let out = run(&url, None, &["provision", "plan"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("history: have 5, want 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("max_age: have 1m, want 6s"),
        "{}",
        out.stdout
    );

    // warn (the default) changes nothing and exits 2.
    let out = run(&url, None, &["provision", "apply"]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stdout.contains("Still differing: parti-heartbeat"),
        "{out:?}"
    );
    let out = run(&url, None, &["provision", "plan", "--fail-on-drift"]).await;
    assert_eq!(out.code, Some(2), "{out:?}");

    // adopt updates it in place, keeping its values.
    let bucket = js.get_key_value("parti-heartbeat").await.unwrap();
    bucket.put("kept", "v".into()).await.unwrap();
    let out = run(
        &url,
        None,
        &["provision", "apply", "--policy", "adopt", "--json"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let heartbeat = resource(&out, "parti-heartbeat");
    assert_eq!(heartbeat["action"], "update", "{heartbeat:#}");
    assert_eq!(heartbeat["applied"], true, "{heartbeat:#}");
    assert_eq!(heartbeat["remaining"], serde_json::json!([]));
    let out = run(
        &url,
        None,
        &["provision", "plan", "--fail-on-drift", "--json"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(actions(&out), all(&BUCKETS, "ok"));
    let info = js
        .get_stream("KV_parti-heartbeat")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(
        (
            info.max_messages_per_subject,
            info.max_age,
            info.allow_message_ttl
        ),
        (1, Duration::from_secs(6), true)
    );
    assert_eq!(
        bucket.get("kept").await.unwrap().as_deref(),
        Some(&b"v"[..]),
        "adopt must keep the data"
    );
    // A worker accepts the adopted bucket.
    let store = NatsStore::new(js.clone());
    store
        .bucket(&Config::default().bucket_specs()[2])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_recreates_only_with_consent() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let out = run(&url, None, &["provision", "apply"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");

    // The election bucket in memory: storage cannot change in place.
    let js = js(&server).await;
    js.delete_key_value("parti-election").await.unwrap();
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "parti-election".into(),
            history: 1,
            max_age: Duration::from_secs(10),
            storage: stream::StorageType::Memory,
            limit_markers: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .await
        .unwrap();
    bucket.put("data", "v".into()).await.unwrap();

    // adopt cannot fix it: exit 2, storage remains.
    let out = run(
        &url,
        None,
        &["provision", "apply", "--policy", "adopt", "--json"],
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let election = resource(&out, "parti-election");
    assert_eq!(election["action"], "drift", "{election:#}");
    assert_eq!(
        election["changes"],
        serde_json::json!([{"field": "storage", "have": "memory", "want": "file", "inPlace": false}])
    );
    assert_eq!(election["remaining"], serde_json::json!(["storage"]));

    // force without consent: refused, exit 1, nothing changed.
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["provision", "apply", "--policy", "force"];
        args.extend_from_slice(extra);
        let out = run(&url, None, &args).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("--yes-destroy-data"), "{out:?}");
        assert!(out.stderr.contains("parti-election"), "{out:?}");
    }
    assert_eq!(
        bucket.get("data").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );

    // With consent it is recreated (empty) and the plan is clean.
    let out = run(
        &url,
        None,
        &[
            "provision",
            "apply",
            "--policy",
            "force",
            "--yes-destroy-data",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let election = resource(&out, "parti-election");
    assert_eq!(
        (&election["action"], &election["applied"]),
        (&serde_json::json!("recreate"), &serde_json::json!(true))
    );
    // Only the drifting bucket is recreated.
    assert_eq!(resource(&out, "parti-stableid")["action"], "ok");
    let out = run(&url, None, &["provision", "plan", "--fail-on-drift"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let bucket = js.get_key_value("parti-election").await.unwrap();
    assert_eq!(bucket.get("data").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumer_stream_is_provisioned() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let stream_args = ["--stream", "events", "--subjects", "orders.>,refunds.>"];
    let args = |cmd: &'static str, extra: &[&'static str]| {
        let mut args = vec!["provision", cmd];
        args.extend_from_slice(&stream_args);
        args.extend_from_slice(extra);
        args
    };

    let out = run(&url, None, &args("plan", &["--json"])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let events = resource(&out, "events");
    assert_eq!(
        (&events["kind"], &events["role"], &events["action"]),
        (
            &serde_json::json!("stream"),
            &serde_json::json!("stream"),
            &serde_json::json!("create")
        )
    );
    assert_eq!(events["want"]["retention"], "work-queue");
    assert_eq!(events["want"]["subjects"], "orders.>,refunds.>");

    let out = run(&url, None, &args("apply", &[])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let info = js(&server)
        .await
        .get_stream("events")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(info.retention, stream::RetentionPolicy::WorkQueue);
    assert_eq!(info.subjects, ["orders.>", "refunds.>"]);
    let out = run(&url, None, &args("plan", &["--fail-on-drift"])).await;
    assert_eq!(out.code, Some(0), "{out:?}");

    // Another retention is drift that only a recreate fixes; a new subject is added in place.
    let out = run(
        &url,
        None,
        &args(
            "plan",
            &["--retention", "limits", "--json", "--fail-on-drift"],
        ),
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        resource(&out, "events")["changes"],
        serde_json::json!([
            {"field": "retention", "have": "work-queue", "want": "limits", "inPlace": false}
        ])
    );
    let out = run(
        &url,
        None,
        &[
            "provision",
            "apply",
            "--policy",
            "adopt",
            "--stream",
            "events",
            "--subjects",
            "orders.>,refunds.>,returns.>",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run(
        &url,
        None,
        &[
            "provision",
            "plan",
            "--fail-on-drift",
            "--stream",
            "events",
            "--subjects",
            "orders.>,refunds.>,returns.>",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nats_exits_4() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    for cmd in ["plan", "apply"] {
        let out = run(&url, None, &["provision", cmd, "--connect-timeout", "1s"]).await;
        assert_eq!(out.code, Some(4), "{out:?}");
        assert!(out.stderr.contains("cannot connect to NATS"), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_exits_3() {
    // No server is needed: the configuration is checked first.
    let url = "nats://127.0.0.1:1";
    let files = Files::new(1);
    let bad = files.write("bad.yaml", "workerIdMin: 9\nworkerIdMax: 1\n");
    let out = run(url, Some(&bad), &["provision", "plan"]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("workerIdMin"), "{out:?}");

    let unknown = files.write("unknown.yaml", "noSuchKey: 1\n");
    let out = run(url, Some(&unknown), &["provision", "apply"]).await;
    assert_eq!(out.code, Some(3), "{out:?}");

    let out = run(
        url,
        None,
        &["provision", "plan", "--stream", "a.b", "--subjects", "x.>"],
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    let out = run(
        url,
        None,
        &["provision", "plan", "--stream", "ok", "--subjects", "x.>.y"],
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:?}");

    let mut cmd = common::parti();
    cmd.env("PARTI_HEARTBEAT_INTERVAL", "soon")
        .args(["--nats", url, "provision", "plan"]);
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_names_and_timings_come_from_the_config() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let files = Files::new(1);
    let config = files.write(
        "names.yaml",
        "heartbeatTtl: 9s\nkvBuckets:\n  heartbeat: team-hb\n",
    );
    let out = run(&url, Some(&config), &["provision", "apply", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(resource(&out, "team-hb")["want"]["max_age"], "9s");
    let info = js(&server)
        .await
        .get_stream("KV_team-hb")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(info.max_age, Duration::from_secs(9));
    // The default configuration now drifts on that bucket's name only: it is missing.
    let out = run(&url, None, &["provision", "plan", "--json"]).await;
    assert_eq!(resource(&out, "parti-heartbeat")["action"], "create");
    assert_eq!(resource(&out, "parti-stableid")["action"], "ok");
}
