//! `parti watch --json` follows a cluster live and stops on SIGINT.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DEADLINE, Proc, parti};
use parti::{Config, Manager, Partition};
use parti_testkit::{NatsServer, wait_until_sync};
use rustix::process::Signal;

async fn start_worker(server: &NatsServer) -> Manager {
    let partitions = (0..10)
        .map(|i| Partition::new([format!("p{i}")], 1).unwrap())
        .collect();
    Manager::builder(async_nats::jetstream::new(server.client().await.unwrap()))
        .config(Config::fast_for_tests())
        .source(parti::source::Static::new(partitions))
        .start()
        .await
        .unwrap()
}

/// Whether some frame printed so far shows exactly `ids` as live workers in the map.
fn shows(watch: &Proc, ids: &[String]) -> bool {
    watch.lines().iter().any(|line| {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        let live: Vec<&str> = json["workers"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|w| w["health"] == "live" && w["inMap"] == true)
            .map(|w| w["id"].as_str().unwrap_or(""))
            .collect();
        live == ids
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_on_kv_events_until_sigint() {
    let server = NatsServer::start().await.unwrap();
    let mut cmd = parti();
    cmd.args([
        "--nats",
        &server.url(),
        "watch",
        "--json",
        "--interval",
        "100ms",
    ]);
    // Started before any cluster exists: it waits for one.
    let mut watch = Proc::start(cmd);
    wait_until_sync(DEADLINE, "a frame saying no cluster exists yet", || {
        watch.lines().iter().any(|l| l.contains("\"found\":false"))
    })
    .await
    .unwrap();

    let first = start_worker(&server).await;
    let one = vec![first.worker_id().to_string()];
    wait_until_sync(DEADLINE, "a frame with the first worker", || {
        shows(&watch, &one)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", watch.lines().last()));

    let second = start_worker(&server).await;
    let mut two = vec![one[0].clone(), second.worker_id().to_string()];
    two.sort();
    wait_until_sync(DEADLINE, "a frame with both workers", || {
        shows(&watch, &two)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", watch.lines().last()));

    watch.signal(Signal::INT);
    assert_eq!(watch.wait_exit().await, Some(0), "{}", watch.stderr());
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}
