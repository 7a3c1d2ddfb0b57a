//! Test support for Parti: real `nats-server` processes, clusters, a fault-injecting TCP proxy
//! and condition waits.
//!
//! Everything here runs real infrastructure on loopback: [`NatsServer`] spawns a `nats-server`
//! with JetStream on a free port and a temporary store (installed by `scripts/setup`),
//! [`NatsCluster`] clusters several of them, [`FaultProxy`] sits between a client and a server
//! to stall, reset or delay the link, and [`wait_until`] lets tests wait on conditions with a
//! deadline instead of sleeping. One level up, [`HookedBucket`] wraps a real store bucket so a
//! test can make chosen calls misbehave (a stale read, a lost reply, a watch that misses events).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use parti_testkit::{FaultProxy, NatsServer, wait_until};
//!
//! let server = NatsServer::start().await?;
//! let proxy = FaultProxy::start(server.addr()).await?;
//! let client = parti_testkit::connect_options()
//!     .ping_interval(Duration::from_millis(100))
//!     .ignore_discovered_servers()
//!     .connect(proxy.url())
//!     .await?;
//! proxy.blackhole();
//! wait_until(Duration::from_secs(5), "the client to notice the stall", || {
//!     let state = client.connection_state();
//!     async move { state == async_nats::connection::State::Disconnected }
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

mod auth;
mod bucket;
pub mod checker;
mod cluster;
pub mod conformance;
mod error;
mod proxy;
mod server;
mod wait;

pub use auth::{ServerAuth, ServerTls, TlsFiles};
pub use bucket::{BucketHooks, HookedBucket, Write};
pub use cluster::NatsCluster;
pub use error::TestkitError;
pub use proxy::{FaultProxy, LinkMode};
pub use server::{
    NATS_SERVER_ENV, NatsServer, NatsServerBuilder, connect_options, find_nats_server,
};
pub use wait::{wait_until, wait_until_sync};
