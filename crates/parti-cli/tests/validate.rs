//! `parti validate [--live] [--json]`: exit codes 0/1/3/4, the JSON shape, Go files with
//! warnings, suggestions for misspelt keys and variables, and buckets compared on a real server
//! (as `parti provision` compares them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{DEADLINE, Files, Output, parti, run};
use parti::store::{BucketSpec, NatsStore, Store};
use parti_testkit::NatsServer;
use serde_json::json;

/// A Go library (v2) configuration: v1 keys, v2 keys, the `kvBuckets` additions.
const GO_V2: &str = "\
workerIdPrefix: ingest
workerIdMax: 63
heartbeatInterval: 2s
heartbeatTtl: 6s
electionTimeout: 5s
rebalanceCooldown: 5s
enableTwoPhaseHandoff: true
handoff:
  timeout: 20s
  sweepInterval: 30s
  maxRetries: 3
kvBuckets:
  stableIdBucket: ingest-stableid
  electionBucket: ingest-election
  heartbeatBucket: ingest-heartbeat
  assignmentBucket: ingest-assignment
  assignmentTtl: 0s
  handoffBucket: ingest-handoff
  handoffTtl: 2m
workerLabels: { zone: a }
";

/// Runs `parti [--config FILE] validate ARGS…` with the given `PARTI_…` variables.
async fn validate(config: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = parti();
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("validate").args(args).envs(env.iter().copied());
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("parti validate did not finish in time")
        .expect("cannot run parti");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn strings(value: &serde_json::Value, key: &str) -> Vec<String> {
    value
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|v| v[key].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_go_v2_file_is_valid_with_warnings() {
    let files = Files::new(1);
    let config = files.write("go.yaml", GO_V2);
    let out = validate(Some(&config), &["--json"], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let json = out.json();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["valid"], true);
    assert_eq!(json["config"], config.display().to_string());
    assert_eq!(json["violations"], json!([]));
    assert_eq!(json["live"], serde_json::Value::Null);
    assert_eq!(
        strings(&json["warnings"], "field"),
        [
            "enableTwoPhaseHandoff",
            "handoff",
            "kvBuckets.assignmentTtl",
            "kvBuckets.handoffBucket",
            "kvBuckets.handoffTtl",
            "workerLabels"
        ]
    );
    for w in json["warnings"].as_array().unwrap() {
        assert!(w["message"].as_str().unwrap().starts_with("ignored"), "{w}");
    }

    // The text form says the same, one line each.
    let out = validate(Some(&config), &[], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("warning: kvBuckets.handoffTtl: ignored"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("result: valid (6 warnings)"),
        "{}",
        out.stdout
    );

    // No file at all: the defaults are valid.
    let out = validate(None, &["--json"], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["config"], serde_json::Value::Null);
}

#[tokio::test]
async fn every_violation_is_reported_and_exits_3() {
    let files = Files::new(1);
    let config = files.write(
        "bad.yaml",
        "workerIdMin: 9\nworkerIdMax: 1\nheartbeatTtl: 1s\nkvBuckets: { replicas: 7 }\n",
    );
    let out = validate(Some(&config), &["--json"], &[]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    let json = out.json();
    assert_eq!(json["valid"], false);
    assert_eq!(
        strings(&json["violations"], "field"),
        ["workerIdMin", "heartbeatTtl", "kvBuckets.replicas"]
    );
    for v in json["violations"].as_array().unwrap() {
        assert!(v["reason"].is_string(), "{v}");
        assert_eq!(v["suggestion"], serde_json::Value::Null, "{v}");
    }

    let out = validate(Some(&config), &[], &[]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout.matches("invalid: ").count(), 3, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("result: invalid (3 violations, 0 warnings)"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn misspelt_keys_and_variables_get_a_suggestion() {
    let files = Files::new(1);
    let config = files.write("typo.yaml", "# typo\nheartbeatIntervl: 1s\n");
    let out = validate(Some(&config), &["--json"], &[]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    let json = out.json();
    let v = &json["violations"][0];
    assert_eq!(v["field"], "heartbeatIntervl");
    assert_eq!(v["suggestion"], "heartbeatInterval");
    assert!(
        v["reason"].as_str().unwrap().contains("did you mean"),
        "{v}"
    );

    let out = validate(Some(&config), &[], &[]).await;
    assert!(
        out.stdout.contains("did you mean `heartbeatInterval`?"),
        "{}",
        out.stdout
    );

    // A Go key misspelt is suggested too.
    let config = files.write("go-typo.yaml", "enableTwoPhaseHandof: true\n");
    let json = validate(Some(&config), &["--json"], &[]).await.json();
    assert_eq!(json["violations"][0]["suggestion"], "enableTwoPhaseHandoff");

    // The environment is laid over the file and checked as well.
    let config = files.write("ok.yaml", "heartbeatInterval: 1s\nheartbeatTtl: 3s\n");
    let out = validate(
        Some(&config),
        &["--json"],
        &[
            ("PARTI_HEARTBEAT_TTLL", "4s"),
            ("PARTI_ELECTION_TTL", "500ms"),
        ],
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    let json = out.json();
    assert_eq!(
        strings(&json["violations"], "field"),
        ["PARTI_HEARTBEAT_TTLL"],
        "{json:#}"
    );
    assert_eq!(json["violations"][0]["suggestion"], "PARTI_HEARTBEAT_TTL");
    let out = validate(
        Some(&config),
        &["--json"],
        &[("PARTI_ELECTION_TTL", "500ms")],
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(strings(&out.json()["violations"], "field"), ["electionTtl"]);
}

#[tokio::test]
async fn an_unreadable_file_is_an_error() {
    let files = Files::new(1);
    let out = validate(
        Some(&files.dir.path().join("missing.yaml")),
        &["--json"],
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("cannot read the configuration"),
        "{out:?}"
    );
}

#[tokio::test]
async fn live_without_a_server_exits_4() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let args = [
        "--live",
        "--json",
        "--nats",
        &url,
        "--connect-timeout",
        "1s",
    ];
    let out = validate(None, &args, &[]).await;
    assert_eq!(out.code, Some(4), "{out:?}");
    let json = out.json();
    assert_eq!(json["valid"], true);
    assert_eq!(json["live"]["reachable"], false);
    assert_eq!(json["live"]["compatible"], serde_json::Value::Null);
    assert!(
        json["live"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{json:#}"
    );

    // An invalid configuration is not compared, and says so: 3, not 4.
    let files = Files::new(1);
    let config = files.write("bad.yaml", "heartbeatTtl: 1s\n");
    let out = validate(Some(&config), &args, &[]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.json()["live"]["reachable"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_compares_the_buckets_with_the_configuration() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let files = Files::new(1);
    let config_path = files.write(
        "live.yaml",
        "heartbeatTtl: 6s\nkvBuckets: { stableId: v-ids, election: v-lead, heartbeat: v-beats, \
         assignment: v-map }\n",
    );
    let args = ["--live", "--json", "--nats", url.as_str()];

    // Nothing on the server yet: every bucket is missing, which is fine.
    let out = validate(Some(&config_path), &args, &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let json = out.json();
    assert_eq!(json["live"]["reachable"], true);
    assert_eq!(json["live"]["compatible"], true);
    assert_eq!(
        strings(&json["live"]["buckets"], "role"),
        ["stableId", "election", "heartbeat", "assignment"]
    );
    assert_eq!(
        strings(&json["live"]["buckets"], "name"),
        ["v-ids", "v-lead", "v-beats", "v-map"]
    );
    for b in json["live"]["buckets"].as_array().unwrap() {
        assert_eq!(
            (&b["exists"], &b["differences"]),
            (&json!(false), &json!([])),
            "{b}"
        );
    }

    // A stable-ID bucket as a worker creates it, and a heartbeat bucket with another TTL.
    let config = parti::Config::from_yaml_file(&config_path).unwrap();
    let store = NatsStore::new(async_nats::jetstream::new(server.client().await.unwrap()));
    store
        .bucket(&parti::stable_id::bucket_spec(
            "v-ids",
            config.worker_id_ttl,
            1,
        ))
        .await
        .unwrap();
    store
        .bucket(&parti::heartbeat::bucket_spec(
            "v-beats",
            Duration::from_secs(10),
            1,
        ))
        .await
        .unwrap();
    store.bucket(&BucketSpec::new("v-map")).await.unwrap();

    let out = validate(Some(&config_path), &args, &[]).await;
    assert_eq!(
        out.code,
        Some(3),
        "a worker would refuse the heartbeat bucket: {out:?}"
    );
    let json = out.json();
    assert_eq!(json["valid"], true, "the configuration itself is valid");
    assert_eq!(json["live"]["compatible"], false);
    let buckets = json["live"]["buckets"].as_array().unwrap();
    let exists: Vec<bool> = buckets.iter().map(|b| b["exists"] == true).collect();
    assert_eq!(exists, [true, false, true, true]);
    assert_eq!(buckets[0]["differences"], json!([]));
    assert_eq!(buckets[3]["differences"], json!([]));
    assert_eq!(
        buckets[2]["differences"],
        json!([{ "setting": "maxAge", "expected": "6s", "actual": "10s" }])
    );

    // The text form names the difference.
    let out = validate(Some(&config_path), &["--live", "--nats", url.as_str()], &[]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.stdout.contains("differs: maxAge is 10s, expected 6s"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("missing (a worker creates it)"),
        "{}",
        out.stdout
    );

    // `parti provision` makes the same comparison: once it has fixed the buckets, they match.
    let apply = ["provision", "apply", "--policy", "adopt"];
    let out = run(url.as_str(), Some(&config_path), &apply).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = validate(Some(&config_path), &args, &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let json = out.json();
    assert_eq!(json["live"]["compatible"], true);
    for b in json["live"]["buckets"].as_array().unwrap() {
        assert_eq!(
            (&b["exists"], &b["differences"]),
            (&json!(true), &json!([])),
            "{b}"
        );
    }
}
