//! `NatsCluster`: an R3 bucket survives a killed node, which restarts and rejoins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use parti_testkit::{NatsCluster, connect_options, wait_until};

const DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_killed_node_leaves_an_r3_bucket_writable_and_rejoins_after_restart() {
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert!(urls.iter().all(|u| u.starts_with("nats://127.0.0.1:")));

    // Pinned to n1, which stays up.
    let client = connect_options()
        .ignore_discovered_servers()
        .connect(cluster.node(1).url())
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let bucket = kv::Config {
        bucket: "r3".into(),
        num_replicas: 3,
        ..Default::default()
    };
    let store = js.create_key_value(bucket).await.unwrap();
    store.put("k", "before".into()).await.unwrap();

    cluster.kill(0).await.unwrap();
    assert!(!cluster.node_mut(0).is_running());
    // If n0 led the stream, a new leader is elected first; puts succeed once it is.
    wait_until(DEADLINE, "a put on the R3 bucket with n0 down", || {
        let store = store.clone();
        async move { store.put("k", "during".into()).await.is_ok() }
    })
    .await
    .unwrap();

    cluster.restart(0).await.unwrap();
    assert!(cluster.node_mut(0).is_running());
    wait_until(
        DEADLINE,
        "n0 to be a current replica of the bucket again",
        || {
            let js = js.clone();
            async move {
                let Ok(info) = js
                    .get_stream("KV_r3")
                    .await
                    .map(|s| s.cached_info().clone())
                else {
                    return false;
                };
                let Some(cluster) = info.cluster else {
                    return false;
                };
                cluster.leader.as_deref() == Some("n0")
                    || cluster
                        .replicas
                        .iter()
                        .any(|p| p.name == "n0" && p.current && !p.offline)
            }
        },
    )
    .await
    .unwrap();

    // n0 caught up on the write it missed.
    let n0 = jetstream::new(
        connect_options()
            .ignore_discovered_servers()
            .connect(cluster.node(0).url())
            .await
            .unwrap(),
    );
    let on_n0 = n0.get_key_value("r3").await.unwrap();
    assert_eq!(
        on_n0.get("k").await.unwrap().as_deref(),
        Some(&b"during"[..])
    );
}
