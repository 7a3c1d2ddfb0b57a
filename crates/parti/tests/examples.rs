//! The examples, run for real against a nats-server (each example exposes a `run` function
//! that its `main` calls).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/basic.rs"]
mod basic;
#[path = "../examples/consumer.rs"]
mod consumer;
#[path = "../examples/custom_strategy.rs"]
mod custom_strategy;
#[path = "../examples/kv_watcher.rs"]
mod kv_watcher;
#[path = "../examples/scale_bench.rs"]
mod scale_bench;

use std::time::Duration;

use parti::{AssignmentStrategy, Config, WorkerId};
use parti_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_worker_gets_every_partition_alone_and_the_watcher_sees_the_publish() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let watcher = tokio::spawn({
        let url = url.clone();
        async move {
            kv_watcher::run(&url, "parti-assignment", Some(1))
                .await
                .unwrap()
        }
    });
    let held = basic::run(&url, Config::fast_for_tests(), Some(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(held, 32, "a lone worker owns every partition");
    let versions = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap();
    // One publish; a new group's first version is its leader's clock (Unix milliseconds).
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(u128::from(versions[0]) >= started_ms, "{versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_strategy_keeps_tenants_together() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let (a, b) = tokio::join!(
        custom_strategy::run(&url, Config::fast_for_tests(), Duration::from_secs(3)),
        custom_strategy::run(&url, Config::fast_for_tests(), Duration::from_secs(3)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.len() + b.len(),
        4,
        "each tenant served by exactly one worker: {a:?} {b:?}"
    );
    assert!(a.iter().all(|t| !b.contains(t)));

    let parts: Vec<_> = (0..6)
        .map(|i| parti::Partition::new([format!("t{}", i % 3), format!("p{i}")], 1).unwrap())
        .collect();
    let workers = [WorkerId::new("w1"), WorkerId::new("w0")];
    let map = custom_strategy::TenantAffinity
        .assign(&workers, &parts, None)
        .unwrap();
    map.verify(&workers, &parts).unwrap();
    assert!(
        custom_strategy::TenantAffinity
            .assign(&[], &parts, None)
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_example_processes_messages_published_before_and_after_it_starts() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let worker = tokio::spawn({
        let url = url.clone();
        async move {
            consumer::run(&url, Config::fast_for_tests(), Some(Duration::from_secs(4)))
                .await
                .unwrap()
        }
    });
    let js = async_nats::jetstream::new(server.client().await.unwrap());
    // Publish once the example has created its stream.
    parti_testkit::wait_until(Duration::from_secs(10), "the EVENTS stream", || {
        let js = js.clone();
        async move { js.get_stream("EVENTS").await.is_ok() }
    })
    .await
    .unwrap();
    for i in 0..8 {
        js.publish(format!("events.orders.o{i}"), "hello".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let processed = tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        processed, 8,
        "every message of its partitions processed once"
    );
}

/// Runs the scale benchmark with `args` (space-separated); prints and returns its figures.
async fn scale_bench_figures(args: &str) -> serde_json::Value {
    let args: Vec<String> = args.split(' ').map(String::from).collect();
    let options = scale_bench::Options::parse(&args).unwrap();
    let figures = scale_bench::run(&options).await.unwrap();
    println!("{figures}");
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_bench_runs_at_a_tiny_size_and_prints_its_figures() {
    let figures = scale_bench_figures("--workers 3 --partitions 30 --steady-secs 1 --json").await;
    let number = |field: &str| {
        figures
            .pointer(field)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{field} missing or not a number in {figures}"))
    };
    assert_eq!(number("/workers"), 3.0);
    assert_eq!(number("/partitions"), 30.0);
    assert_eq!(figures["timings"], "fast");
    assert!(number("/allJoinedMs") > 0.0);
    assert!(number("/allStableMs") >= number("/allJoinedMs"));
    assert!(number("/consistentMapMs") > 0.0);
    // Three workers starting at once: one cold-start publish (a count, not a version).
    assert_eq!(number("/coldStartPublishes"), 1.0, "{figures}");
    for bucket in ["stableId", "election", "heartbeat", "assignment"] {
        assert!(
            number(&format!("/kvWritesAtStart/{bucket}")) >= 1.0,
            "{bucket}"
        );
        assert!(
            number(&format!("/steadyKvWritesPerSec/{bucket}")) >= 0.0,
            "{bucket}"
        );
    }
    assert!(
        number("/kvWritesAtStart/stableId") >= 3.0,
        "one claim per worker at least"
    );
    assert!(number("/stableIdWritesPerWorker") >= 1.0);
    assert!(
        number("/steadyKvWritesPerSec/total") > 0.0,
        "heartbeats keep going"
    );
    assert!(number("/crashToHeldMs") > 0.0);
    assert!(number("/crashPartitions") >= 1.0);
    assert!(number("/leaderCrashToHeldMs") > 0.0);
    number("/leaderCrashPartitions");
    assert!(
        number("/mapBytes/values") >= 30.0 * 4.0,
        "thirty partition keys at least"
    );
    assert!(number("/mapBytes/cluster") > 0.0);
    // Three workers: each finds its committed value on its page.
    let pages = number("/mapBytes/pages");
    assert!((1.0..=3.0).contains(&pages), "{pages} commit pages");
    assert_eq!(
        number("/mapBytes/unpagedWorkers"),
        0.0,
        "a worker without its page"
    );
    assert!(number("/mapBytes/toFollowers") >= number("/mapBytes/largestPage"));
    number("/rssKbPerManager");
    assert!(
        number("/jsApi/atStart") > 0.0,
        "watches are JetStream API calls"
    );
    assert!(number("/jsApi/peakPerSec") > 0.0);
    assert!(number("/steadyCpuPercent/natsServer") >= 0.0);
    assert!(
        number("/steadyCpuPercent/fleet") > 0.0,
        "three managers heartbeat for a second"
    );
    assert_eq!(figures["nats"], "one server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_bench_runs_on_a_three_node_cluster_at_a_tiny_size() {
    let figures =
        scale_bench_figures("--workers 3 --partitions 30 --steady-secs 1 --cluster --json").await;
    assert_eq!(figures["nats"], "3-node cluster, R3");
    // `run` fails unless the map became consistent and the crash was recovered.
    assert!(figures["crashToHeldMs"].as_f64().is_some_and(|ms| ms > 0.0));
    assert!(
        figures["steadyCpuPercent"]["natsServer"]
            .as_f64()
            .is_some_and(|cpu| cpu > 0.0),
        "three replicating servers use some CPU: {figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_bench_with_consumers_and_herd_controls_runs_at_a_tiny_size() {
    let figures = scale_bench_figures(
        "--workers 3 --partitions 30 --steady-secs 1 --consumers --herd --json",
    )
    .await;
    assert_eq!(figures["herdControls"], true);
    // `run` fails unless every consumer ends up filtering exactly its worker's partitions.
    assert!(
        figures["allConsumingMs"].as_f64().unwrap() > 0.0,
        "{figures}"
    );
    assert!(figures["jsApi"]["perSecondAtStart"].is_array(), "{figures}");
}
