//! `parti worker` as a child process: its output, its HTTP endpoints, SIGTERM and SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DEADLINE, Files, Proc, http_get, run, status_until};
use parti_testkit::{NatsServer, wait_until};
use rustix::process::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_prints_its_assignment_becomes_ready_and_stops_on_sigterm() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let files = Files::new(8);
    let mut worker = Proc::worker(&url, &files, &["--metrics-addr", "127.0.0.1:0"]);

    let addr = worker.metrics_addr().await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);

    // Alone, it owns all eight partitions.
    let line = worker.wait_line("assignment v").await;
    let (version, rest) = line
        .strip_prefix("assignment v")
        .and_then(|l| l.split_once(':'))
        .unwrap_or_else(|| panic!("{line}"));
    assert!(version.parse::<u64>().is_ok(), "{line}");
    assert!(
        rest.starts_with(" 8 partitions, weight 108 (+8 -0) +p0 "),
        "{line}"
    );
    let id = worker.id().await;

    wait_until(DEADLINE, "/readyz to answer 200", || async move {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await
    .unwrap();
    let (_, body) = http_get(addr, "/readyz").await;
    assert!(
        body.starts_with(&format!("ready: stable, assignment v{version}")),
        "{body}"
    );
    let (code, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("parti_partitions_owned 8"), "{metrics}");
    assert!(
        metrics.contains("parti_state{state=\"stable\"} 1"),
        "{metrics}"
    );

    worker.signal(Signal::TERM);
    assert_eq!(worker.wait_exit().await, Some(0), "{}", worker.stderr());
    let lines = worker.lines();
    assert!(
        lines.contains(&"SIGTERM: stopping gracefully".to_owned()),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("stopped"),
        "{lines:?}"
    );

    // A graceful leave: heartbeat deleted and ID released, only the last map still names it.
    let out = run(&url, None, &["status", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let json = out.json();
    let w = &json["workers"][0];
    assert_eq!(
        (w["id"].as_str(), w["health"].as_str()),
        (Some(id.as_str()), Some("stale"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_shows_as_expired_in_status() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let files = Files::new(12);
    let mut survivor = Proc::worker(&url, &files, &[]);
    let mut victim = Proc::worker(&url, &files, &[]);
    let victim_id = victim.id().await;
    survivor.id().await;
    status_until(&url, &[], "two live workers in the map", |json| {
        let workers = json["workers"].as_array().map_or(&[][..], Vec::as_slice);
        workers.len() == 2
            && workers
                .iter()
                .all(|w| w["health"] == "live" && w["inMap"] == true)
    })
    .await;

    victim.signal(Signal::KILL);
    assert_eq!(victim.wait_exit().await, None, "killed by a signal");

    // Its heartbeat expires (600 ms); its stable ID is held for 10 s without renewal.
    let out = status_until(&url, &[], "the killed worker to show as expired", |json| {
        json["workers"].as_array().is_some_and(|ws| {
            ws.iter()
                .any(|w| w["id"] == victim_id.as_str() && w["health"] == "expired")
        })
    })
    .await;
    assert_eq!(out.code, Some(0), "an expired worker is a warning: {out:?}");
    let json = out.json();
    let issue = json["issues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["subject"] == victim_id.as_str())
        .unwrap_or_else(|| panic!("no issue for {victim_id}: {json:#}"));
    assert_eq!(issue["kind"], "expiredWorker");
    assert_eq!(issue["severity"], "warning");

    // The human view shows it too.
    let human = run(&url, None, &["status"]).await;
    let row = human
        .stdout
        .lines()
        .find(|l| l.starts_with(&victim_id))
        .unwrap_or_else(|| panic!("{}", human.stdout));
    assert!(row.contains("expired"), "{row}");

    survivor.signal(Signal::TERM);
    assert_eq!(survivor.wait_exit().await, Some(0), "{}", survivor.stderr());
}

#[tokio::test]
async fn a_bad_partition_list_is_a_clear_error() {
    // Checked before connecting: no server needed, the URL is never used.
    let files = Files::new(0);
    files.write(
        "parts.yaml",
        "- keys: [a, b]\n- keys: [c]\n- keys: [a, b]\n  weight: 3\n",
    );
    let mut worker = Proc::worker("nats://127.0.0.1:9", &files, &[]);
    assert_eq!(worker.wait_exit().await, Some(1));
    let stderr = worker.stderr();
    assert!(stderr.contains("invalid partition list"), "{stderr}");
    assert!(
        stderr.contains("a.b") && stderr.contains("duplicate"),
        "{stderr}"
    );

    let files = Files::new(0);
    files.write("parts.yaml", "- keys: [\"has space\"]\n");
    let mut worker = Proc::worker("nats://127.0.0.1:9", &files, &[]);
    assert_eq!(worker.wait_exit().await, Some(1));
    assert!(worker.stderr().contains("has space"), "{}", worker.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_logs_what_it_holds_and_every_message_it_handles() {
    use async_nats::jetstream::{self, stream};

    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let js = jetstream::new(server.client().await.unwrap());
    js.create_stream(stream::Config {
        name: "EV".into(),
        subjects: vec!["ev.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let files = Files::new(4);
    let ownership = files.dir.path().join("own.jsonl");
    let processed = files.dir.path().join("proc.jsonl");
    let mut worker = Proc::worker(
        &url,
        &files,
        &[
            "--ownership-log",
            ownership.to_str().unwrap(),
            "--stream",
            "EV",
            "--subject-template",
            "ev.{partition}.x",
            "--process-log",
            processed.to_str().unwrap(),
            "--ack-wait",
            "2s",
        ],
    );
    let id = worker.id().await;
    let ack = js
        .publish("ev.p2.x", "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let read = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_until(DEADLINE, "the message to be logged", || {
        let lines = read(&processed);
        async move { !lines.is_empty() }
    })
    .await
    .unwrap();
    worker.signal(Signal::TERM);
    assert_eq!(worker.wait_exit().await, Some(0), "{}", worker.stderr());

    let records = read(&ownership);
    let instance = records[0]["instance"].as_str().unwrap().to_owned();
    assert!(
        records
            .iter()
            .all(|r| r["worker"] == id.as_str() && r["instance"] == instance.as_str())
    );
    let events = |kind: &str| records.iter().filter(|r| r["event"] == kind).count();
    assert!(events("applied") >= 1, "{records:?}");
    assert_eq!(events("hold"), 4, "{records:?}");
    // The graceful stop releases everything held.
    assert_eq!(events("release"), 4, "{records:?}");
    let hold = records.iter().find(|r| r["event"] == "hold").unwrap();
    assert!(hold["validUntilNs"].as_u64().unwrap() > hold["atNs"].as_u64().unwrap());
    assert!(hold["epoch"].is_u64() && hold["partition"].is_string());

    let handled = read(&processed);
    assert_eq!(handled.len(), 1, "{handled:?}");
    let line = &handled[0];
    assert_eq!(line["partition"], "p2");
    assert_eq!(line["seq"], ack.sequence);
    assert_eq!(line["worker"], id.as_str());
    assert_eq!(line["instance"], instance.as_str());
    assert!(line["atNs"].as_u64().unwrap() >= hold["atNs"].as_u64().unwrap());
}
