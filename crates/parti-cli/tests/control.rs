//! `parti drain|undrain|pin|unpin|freeze|unfreeze` against real `parti worker` processes, and
//! the intents in `parti status`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DEADLINE, Files, Proc, history_moves, history_until, run, status_until};
use parti_testkit::NatsServer;

/// Waits for a line for which `matches` holds, printed after the first `after` lines.
async fn wait_line_after(proc: &Proc, after: usize, what: &str, matches: impl Fn(&str) -> bool) {
    let found = parti_testkit::wait_until_sync(DEADLINE, what, || {
        proc.lines().iter().skip(after).any(|l| matches(l))
    })
    .await;
    assert!(found.is_ok(), "{what} not printed: {:?}", proc.lines());
}

#[tokio::test]
async fn a_drained_worker_process_ends_with_nothing_and_status_shows_the_intents() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let files = Files::new(20);
    let config = files.config();
    let cfg = Some(config.as_path());

    // No cluster yet: refused, nothing created.
    let out = run(&url, cfg, &["drain", "worker-0"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no Parti cluster"), "{out:?}");

    let a = Proc::worker(&url, &files, &[]);
    let b = Proc::worker(&url, &files, &[]);
    let (id_a, id_b) = (a.id().await, b.id().await);
    status_until(
        &url,
        &["--config", config.to_str().unwrap()],
        "both workers in the map",
        |s| s["cluster"]["workers"] == 2 && s["cluster"]["ownedPartitions"] == 20,
    )
    .await;

    let (seen_a, seen_b) = (a.lines().len(), b.lines().len());
    let out = run(&url, cfg, &["drain", &id_b, "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["drained"][0], id_b.as_str(), "{out:?}");
    // The drained worker's own log says it holds nothing; the other holds everything.
    wait_line_after(&b, seen_b, "b holds nothing", |l| {
        l.contains(": 0 partitions")
    })
    .await;
    wait_line_after(&a, seen_a, "a holds all", |l| l.contains(": 20 partitions")).await;
    let status = status_until(
        &url,
        &["--config", config.to_str().unwrap()],
        "the drain in status",
        |s| s["intents"]["drained"][0] == id_b.as_str(),
    )
    .await;
    assert_eq!(status.code, Some(0), "{status:?}");
    let text = run(&url, cfg, &["status"]).await;
    assert!(
        text.stdout.contains(&format!("intents    drained: {id_b}")),
        "{text:?}"
    );
    // The history names the drain as the reason of every move of its publish.
    let history = history_until(&url, &config, "the drain", |e| e["reason"] == "operator").await;
    let drain = history.iter().find(|e| e["reason"] == "operator").unwrap();
    let moves = history_moves(drain);
    assert!(!moves.is_empty(), "{drain}");
    let why = format!("drain of {id_b}");
    assert!(moves.iter().all(|(_, w)| *w == why), "{drain}");

    // A pin to a live worker, then freeze: both recorded and shown.
    let out = run(&url, cfg, &["pin", "p3", &id_a]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&format!("pinned: p3 → {id_a}")),
        "{out:?}"
    );
    let out = run(&url, cfg, &["pin", "bad key", &id_a]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let out = run(&url, cfg, &["freeze"]).await;
    assert!(out.stdout.contains("frozen"), "{out:?}");
    let out = run(&url, cfg, &["drain", "worker-77"]).await;
    assert!(
        out.stdout.contains("worker-77") && out.stdout.contains("warning"),
        "{out:?}"
    );

    // Undrain and unfreeze: the worker gets a share again.
    run(&url, cfg, &["unfreeze"]).await;
    run(&url, cfg, &["undrain", "worker-77"]).await;
    run(&url, cfg, &["unpin", "p3"]).await;
    let seen_b = b.lines().len();
    let out = run(&url, cfg, &["undrain", &id_b, "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.json(),
        serde_json::json!({"drained": [], "pinned": [], "frozen": false})
    );
    wait_line_after(&b, seen_b, "b holds some again", |l| {
        l.starts_with("assignment v") && !l.contains(": 0 partitions")
    })
    .await;
}
