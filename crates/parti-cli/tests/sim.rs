//! `parti sim`: a short run of the demo, with a real nats-server and with the in-memory store,
//! finishes with every invariant held, the ownership checker's report clean and no message
//! lost, and says so in its JSON report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Output, parti};

/// A 15 s run lasts about 20 s (cold start, faults waiting for the previous recovery, drain).
const RUN_LIMIT: Duration = Duration::from_secs(120);

async fn sim(extra: &[&str]) -> (Output, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut cmd = parti();
    cmd.args([
        "sim",
        "--workers",
        "4",
        "--partitions",
        "200",
        "--duration",
        "15s",
    ])
    .args(["--seed", "7", "--json-report"])
    .arg(&report)
    .args(extra);
    // `parti()` clears PARTI_…; name the server the other tests use.
    if let Ok(server) = parti_testkit::find_nats_server() {
        cmd.env("PARTI_NATS_SERVER", server);
    }
    let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("parti sim did not finish in time")
        .expect("cannot run parti sim");
    let out = Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let json = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {out:?}"));
    (out, serde_json::from_str(&json).unwrap())
}

/// Exit 0, no violation, nothing lost, every message handled, every fault recovered.
fn assert_clean_run(out: &Output, report: &serde_json::Value, transport: &str) {
    let context = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(report["transport"], transport, "{context}");
    assert_eq!(
        report["invariant_violations"].as_array().map(Vec::len),
        Some(0),
        "{context}"
    );
    assert_eq!(report["messages_lost"], 0, "{context}");
    // The ownership checker's verdict, on what the workers actually held and handled.
    assert_eq!(
        report["check"]["violations"].as_array().map(Vec::len),
        Some(0),
        "{context}"
    );
    let counts = &report["check"]["counts"];
    assert!(counts["holdings"].as_u64() >= Some(200), "{context}");
    assert_eq!(counts["faults"], 5, "{context}");
    assert!(out.stdout.contains("ownership check: clean"), "{context}");
    let sent = report["messages_sent"].as_u64().unwrap();
    assert!(sent > 0, "{context}");
    assert_eq!(
        report["messages_processed"].as_u64(),
        Some(sent),
        "{context}"
    );
    assert!(report["duplicates"].is_u64(), "{context}");
    let faults = report["faults"].as_array().unwrap();
    let kinds: Vec<&str> = faults.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    let outage = if transport == "nats" {
        "nats_restart"
    } else {
        "store_outage"
    };
    assert_eq!(
        kinds,
        ["crash", "graceful_leave", "join", "leader_kill", outage],
        "{context}"
    );
    for fault in faults {
        assert!(fault["recovered_ms"].is_u64(), "{fault} {context}");
    }
    assert!(
        report["publishes_by_reason"]["cold_start"].is_u64(),
        "{context}"
    );
    assert!(
        report["publishes_by_reason"]["emergency"].is_u64(),
        "{context}"
    );
    assert!(
        report["partitions_moved"].as_u64() >= report["partitions_moved_minimum"].as_u64(),
        "{context}"
    );
    assert_eq!(out.code, Some(0), "{context}");
    assert!(out.stdout.contains("result: PASS"), "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_run_on_nats_loses_nothing_and_violates_nothing() {
    parti_testkit::find_nats_server().expect("nats-server (run scripts/setup)");
    let (out, report) = sim(&[]).await;
    assert_clean_run(&out, &report, "nats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_run_in_memory_loses_nothing_and_violates_nothing() {
    let (out, report) = sim(&["--memory"]).await;
    assert_clean_run(&out, &report, "memory");
}
