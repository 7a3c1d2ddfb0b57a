//! The store conformance suite against a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parti::store::{NatsStore, Store};
use parti_testkit::NatsServer;
use parti_testkit::conformance::{self, StoreHarness};
use tokio::sync::Mutex;

struct NatsHarness {
    server: Mutex<NatsServer>,
}

impl StoreHarness for NatsHarness {
    fn store(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async move {
            let client = self.server.lock().await.client().await.expect("connect");
            Arc::new(NatsStore::new(async_nats::jetstream::new(client))) as Arc<dyn Store>
        })
    }

    fn restart(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.server.lock().await.restart().await.expect("restart");
        })
    }

    fn delete_bucket<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let client = self.server.lock().await.client().await.expect("connect");
            async_nats::jetstream::new(client)
                .delete_key_value(name)
                .await
                .expect("delete bucket");
        })
    }
}

#[tokio::test]
async fn nats_store_passes_the_conformance_suite() {
    let server = NatsServer::start().await.expect("nats-server");
    let harness = NatsHarness {
        server: Mutex::new(server),
    };
    conformance::run(&harness).await;
}

/// nats-server ≥ 2.15 limits a stream to 1,000 consumers unless the stream sets a limit; a
/// bucket spec that asks for more watches raises it, so a large fleet's watches are accepted.
#[tokio::test]
async fn a_bucket_accepts_the_watches_its_spec_asks_for_beyond_the_server_default() {
    use futures::StreamExt;
    use parti::store::{BucketSpec, WatchEvent};

    const WATCHES: usize = 1_501;
    let server = NatsServer::start().await.expect("nats-server");
    let js = async_nats::jetstream::new(server.client().await.expect("connect"));
    let store = NatsStore::new(js.clone());

    let limited = store
        .bucket(&BucketSpec::new("limited"))
        .await
        .expect("open");
    let default_limit = js
        .get_stream("KV_limited")
        .await
        .expect("stream")
        .cached_info()
        .config
        .max_consumers;
    let raised = store
        .bucket(&BucketSpec::new("raised").min_consumers(2_064))
        .await
        .expect("open");
    let limit = js
        .get_stream("KV_raised")
        .await
        .expect("stream")
        .cached_info()
        .config
        .max_consumers;
    assert_eq!(limit, 2_064, "the consumer limit is raised to the spec's");

    let mut watches = Vec::new();
    for i in 0..WATCHES {
        let mut watch = raised
            .watch(">")
            .await
            .unwrap_or_else(|e| panic!("watch {i}: {e}"));
        // A watch's consumer exists once its snapshot began.
        match watch.next().await {
            Some(Ok(WatchEvent::Init)) => {}
            other => panic!("watch {i}: {other:?}"),
        }
        watches.push(watch);
    }
    // The server's own default refuses the same number, where it has one (≥ 2.15).
    let limits_by_default = default_limit <= 0 && store.default_consumer_limit().is_some();
    if limits_by_default {
        let mut refused = false;
        let mut others = Vec::new();
        for _ in 0..WATCHES {
            let mut watch = limited.watch(">").await.expect("watch");
            if let Some(Err(_)) = watch.next().await {
                refused = true;
                break;
            }
            others.push(watch);
        }
        assert!(
            refused,
            "a bucket without the raise accepted {WATCHES} watches"
        );
    }
}

#[tokio::test]
async fn a_nats_failure_keeps_the_client_error_as_its_typed_source() {
    use parti::StoreError;
    use parti::store::BucketSpec;
    use std::error::Error as _;

    let server = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(server.client().await.unwrap());
    let store = NatsStore::new(js.clone());
    let bucket = store.bucket(&BucketSpec::new("typed")).await.unwrap();
    bucket.put("k", "v".into()).await.unwrap();
    // The bucket's stream is gone under the handle: the client's error must reach the caller
    // typed, not as text.
    js.delete_stream("KV_typed").await.unwrap();
    let err = bucket.get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    let source = err.source().expect("a source");
    assert!(
        source.is::<async_nats::jetstream::kv::EntryError>(),
        "the source is not the client's error: {source:?}"
    );
}
