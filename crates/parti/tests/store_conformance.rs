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
