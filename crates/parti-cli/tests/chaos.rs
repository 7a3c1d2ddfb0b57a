//! `parti chaos` end to end: real worker processes, real faults, the checker's report.
//!
//! With today's protocol the checker is *expected* to find violations (double holdings after
//! a pause, a cut-off or garbage in the buckets): that is what the instrument is for. So these
//! tests assert that a run completes, injects every fault kind it scheduled, and produces a
//! well-formed report whose exit code agrees with it; whether it was clean is printed (run
//! with `--nocapture` to see the report), not asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::parti;

/// Bound on one run: its schedule, start-up, the final drain and the stop.
const RUN_DEADLINE: Duration = Duration::from_secs(150);

/// Runs `parti chaos ARGS… --json-report FILE` and checks the report; returns it.
async fn chaos(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut cmd = parti();
    if let Ok(server) = parti_testkit::find_nats_server() {
        cmd.env(parti_testkit::NATS_SERVER_ENV, server);
    }
    cmd.arg("chaos").args(args).arg("--json-report").arg(&json);
    let out = tokio::time::timeout(RUN_DEADLINE, cmd.output())
        .await
        .expect("parti chaos did not finish in time")
        .expect("cannot run parti chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 2)),
        "the run did not complete (exit {code:?}):\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json).unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stderr}")),
    )
    .unwrap();

    // Every kind scheduled was injected, each with a start, an end and a recovery.
    let scheduled: Vec<&str> = report["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let faults = report["faults"].as_array().unwrap();
    for kind in &scheduled {
        assert!(
            faults.iter().any(|f| f["kind"] == *kind),
            "{kind} was scheduled but not injected:\n{stdout}"
        );
    }
    for fault in faults {
        assert!(fault["startNs"].as_u64().unwrap() <= fault["endNs"].as_u64().unwrap());
        assert!(fault["recovery"]["outcome"].is_string(), "{fault}");
        if fault["endsProcess"] == true {
            assert!(
                fault["instance"].is_string(),
                "a kill names its process: {fault}"
            );
        }
    }

    // The checker's report is complete and agrees with the exit code and the text.
    let check = &report["check"];
    let counts = &check["counts"];
    for field in [
        "holdings",
        "instances",
        "messagesSent",
        "messagesHandled",
        "messagesLost",
        "messagesDuplicated",
    ] {
        assert!(counts[field].is_u64(), "counts.{field} missing: {check}");
    }
    assert!(counts["holdings"].as_u64().unwrap() > 0);
    assert!(counts["messagesSent"].as_u64().unwrap() > 0);
    assert_eq!(
        counts["faults"].as_u64().unwrap(),
        u64::try_from(faults.len()).unwrap()
    );
    let violations = check["violations"].as_array().unwrap();
    let by_kind: u64 = report["violationsByKind"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_kind, u64::try_from(violations.len()).unwrap());
    let clean = report["clean"].as_bool().unwrap();
    assert_eq!(clean, violations.is_empty());
    assert_eq!(code, Some(if clean { 0 } else { 2 }));
    assert!(
        stdout.contains("faults (") && stdout.contains("result: "),
        "{stdout}"
    );
    // A drain that gave up says where the messages were left.
    assert_eq!(
        report["drained"] == false,
        report["leftover"]["messages"].is_u64(),
        "{report:#}"
    );
    println!(
        "chaos {args:?}: {} faults, {} violations {:?} (expected until the ownership contract is met)",
        faults.len(),
        violations.len(),
        report["violationsByKind"]
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_injects_every_fault_and_reports() {
    let report = chaos(&[
        "--duration",
        "40s",
        "--workers",
        "3",
        "--partitions",
        "30",
        "--rate",
        "60",
        "--seed",
        "7",
    ])
    .await;
    let scheduled = report["scheduled"].as_array().unwrap();
    for kind in [
        "kill",
        "leaderKill",
        "pause",
        "pauseCut",
        "cut",
        "natsRestart",
        "garbage",
        "rollingRestart",
    ] {
        assert!(scheduled.iter().any(|k| k == kind), "{kind} not scheduled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_on_a_cluster_kills_a_node() {
    let report = chaos(&[
        "--cluster",
        "--duration",
        "35s",
        "--workers",
        "3",
        "--partitions",
        "20",
        "--rate",
        "40",
        "--seed",
        "11",
    ])
    .await;
    assert_eq!(report["header"]["cluster"], true);
    let faults = report["faults"].as_array().unwrap();
    assert!(faults.iter().any(|f| f["kind"] == "nodeKill"));
    assert!(!faults.iter().any(|f| f["kind"] == "natsRestart"));
}
