//! `parti bench` end to end at a tiny size: real worker processes, every figure present and
//! plausible, the ownership checker clean over the run's two kills.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::parti;

/// Bound on one run: start-up, the steady second, two kills and their recoveries, the stop.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn bench_measures_a_tiny_fleet_of_real_processes() {
    let mut cmd = parti();
    if let Ok(server) = parti_testkit::find_nats_server() {
        cmd.env(parti_testkit::NATS_SERVER_ENV, server);
    }
    cmd.args([
        "bench",
        "--workers",
        "3",
        "--partitions",
        "30",
        "--steady",
        "1s",
        "--json",
    ]);
    let out = tokio::time::timeout(RUN_DEADLINE, cmd.output())
        .await
        .expect("parti bench did not finish in time")
        .expect("cannot run parti bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "parti bench failed:\n{stdout}\n{stderr}"
    );
    let f: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let number = |path: &str| {
        f.pointer(path)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{path} is not a number: {f:#}"))
    };
    assert_eq!(number("/workers"), 3.0);
    assert!(number("/allAppliedMs") > 0.0);
    assert!(number("/consistentMs") >= number("/allAppliedMs"));
    assert!(number("/coldStartPublishes") >= 1.0);
    assert!(
        number("/stableIdWritesPerWorker") >= 1.0,
        "every worker claimed an ID"
    );
    assert!(
        number("/steadyKvWritesPerSec/heartbeat") > 0.0,
        "heartbeats go on"
    );
    assert!(number("/rssKb/mean") > 0.0);
    // The killed follower and the killed leader held partitions: they went unheld until
    // someone held them again.
    assert!(number("/crashToHeldMs") > 0.0);
    assert!(number("/leaderCrashToHeldMs") > 0.0);
    assert_eq!(number("/violations"), 0.0, "{f:#}");
}
