//! `parti partitions list|add|remove|set` against a real nats-server, and a `parti worker
//! --partitions-bucket` that follows the edits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Files, Proc, history_moves, history_until, parti, run};
use parti_testkit::NatsServer;

/// The subject keys and weights of `list --json`.
fn listed(out: &common::Output) -> Vec<(String, u64)> {
    assert_eq!(out.code, Some(0), "{out:?}");
    out.json()["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions: {out:?}"))
        .iter()
        .map(|p| {
            let keys: Vec<&str> = p["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
            (keys.join("."), p["weight"].as_u64().unwrap_or(0))
        })
        .collect()
}

#[tokio::test]
async fn edits_are_checked_and_a_worker_follows_them() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let files = Files::new(3);
    let config = files.config();
    let cfg = Some(config.as_path());

    // Nothing yet: an empty listing, and the bucket is not created by looking.
    let out = run(&url, cfg, &["partitions", "list", "--json"]).await;
    assert_eq!(listed(&out), vec![]);
    assert!(out.json()["revision"].is_null(), "{out:?}");
    let js = async_nats::jetstream::new(server.client().await.unwrap());
    assert!(js.get_key_value("parti-partitions").await.is_err());

    let parts = files.partitions();
    let out = run(
        &url,
        cfg,
        &["partitions", "set", "--file", parts.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run(&url, cfg, &["partitions", "add", "x.y", "--weight", "5"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let want = vec![
        ("p0".to_owned(), 10),
        ("p1".to_owned(), 11),
        ("p2".to_owned(), 12),
        ("x.y".to_owned(), 5),
    ];
    assert_eq!(
        listed(&run(&url, cfg, &["partitions", "list", "--json"]).await),
        want
    );

    // Refused edits name the partition and write nothing.
    let out = run(&url, cfg, &["partitions", "add", "p0"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("\"p0\"") && out.stderr.contains("already in"),
        "{out:?}"
    );
    let out = run(&url, cfg, &["partitions", "remove", "nope"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("\"nope\""), "{out:?}");
    let dup = files.write("dup.yaml", "- keys: [a]\n- keys: [a]\n");
    let out = run(
        &url,
        cfg,
        &["partitions", "set", "--file", dup.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("duplicate"), "{out:?}");
    assert_eq!(
        listed(&run(&url, cfg, &["partitions", "list", "--json"]).await),
        want
    );

    // A worker following the list picks up an addition and a removal.
    let mut cmd = parti();
    cmd.arg("--nats")
        .arg(&url)
        .arg("--config")
        .arg(&config)
        .arg("worker")
        .arg("--partitions-bucket")
        .arg("parti-partitions");
    let mut worker = Proc::start(cmd);
    worker.wait_line("4 partitions").await;
    let before = history_until(&url, &config, "the cold start", |e| {
        e["reason"] == "cold_start"
    })
    .await
    .len();
    let out = run(&url, cfg, &["partitions", "add", "late"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    worker.wait_line("+late").await;
    // The edit made exactly one publish, and the history says why.
    let history = history_until(&url, &config, "the addition", |e| {
        e["reason"] == "partitions_changed"
    })
    .await;
    let after = &history[before..];
    assert_eq!(after.len(), 1, "one publish for one edit: {after:?}");
    assert_eq!(after[0]["reason"], "partitions_changed", "{after:?}");
    assert_eq!(
        history_moves(&after[0]),
        vec![("late".to_owned(), "new partition".to_owned())]
    );
    let out = run(&url, cfg, &["partitions", "remove", "p1", "x.y"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    worker.wait_line("-p1").await;

    // Garbage under the key: `list` says what is wrong, `set` repairs it; the worker keeps
    // what it holds meanwhile.
    let kv = js.get_key_value("parti-partitions").await.unwrap();
    kv.put("partitions", "garbage".into()).await.unwrap();
    let out = run(&url, cfg, &["partitions", "list"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot decode"), "{out:?}");
    let out = run(
        &url,
        cfg,
        &["partitions", "set", "--file", parts.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    worker.wait_line("+p1").await;
    assert!(
        !worker.lines().iter().any(|l| l.contains("0 partitions")),
        "the worker was left with nothing: {:?}",
        worker.lines()
    );

    worker.signal(rustix::process::Signal::TERM);
    assert_eq!(worker.wait_exit().await, Some(0), "{}", worker.stderr());
}
