//! # Parti
//!
//! Weighted partitions (work units: a sensor, a tenant, a message subject) handed to a changing
//! set of worker processes, coordinated only through NATS JetStream key-value buckets.
//!
//! Each worker embeds a [`Manager`]. It claims a stable ID, heartbeats, takes part in a leader
//! election ([`election`]), and follows the assignment
//! the leader's controller publishes with a pluggable [`strategy`]. The application hears of
//! changes through [`hooks`], [`Manager::watch_assignment`] and [`Manager::events`]; a
//! [`WorkerConsumer`] can keep a JetStream consumer pointed at exactly its partitions.
//!
//! # Ownership
//!
//! The promise that matters most: **at most one worker holds a partition at any instant**. A
//! worker *holds* a partition while the application may process it; every change of holding
//! is an [ownership record](ownership) with an **epoch** (strictly increasing per partition
//! from one holder to the next: use it as a fencing token in your own stores). Holdings end at
//! the worker's lease deadline unless renewed (self-fencing, with NATS reachable or not), moves
//! are release-then-acquire (the gainer starts only after the loser released or provably
//! stopped), and versions never go back. The contract and the protocol are in
//! `docs/ownership.md`; where it differs from SPEC §5, §7 and §9 (the `worker.{id}` values carry
//! pending partitions, the `cluster` record names each worker's lineage, heartbeats carry the
//! released version), the contract wins. A [`WorkerConsumer`] handed to the manager is gated:
//! its handler runs only for partitions held at that instant.
//!
//! The example runs three workers in one process over the in-memory store (the same code runs
//! over NATS with [`Manager::builder`]):
//!
//! ```
//! use std::sync::Arc;
//! use parti::{Config, Manager, Partition, source::Static, store::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> parti::Result<()> {
//! let partitions = (0..30)
//!     .map(|i| Partition::new([format!("p{i}")], 100))
//!     .collect::<parti::Result<Vec<_>>>()?;
//! let store = MemoryStore::new();
//! let start = || {
//!     Manager::builder_with_store(Arc::new(store.client()))
//!         .config(Config::fast_for_tests())
//!         .source(Static::new(partitions.clone()))
//!         .start()
//! };
//! let (a, b, c) = tokio::try_join!(start(), start(), start())?;
//! let owned: usize = [&a, &b, &c].iter().map(|m| m.assignment().partitions.len()).sum();
//! assert_eq!(owned, 30); // every partition exactly once
//! assert_eq!([&a, &b, &c].iter().filter(|m| m.is_leader()).count(), 1);
//! for m in [a, b, c] {
//!     m.stop().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Three layers; arrows point down only.
//!
//! **What an application embeds** (the semver promise):
//! - [`manager`]: the [`Manager`], its builder and the [`hooks`] trait. One `Runtime` task per
//!   worker owns the state machine; the follower, the holdings, the bucket guard and the
//!   dispatcher of hooks are its children, each owned, cancelled and awaited.
//! - [`events`]: the [`Event`]s hooks are called for and [`Manager::events`] broadcasts — a
//!   low floor every layer reports through, depending on none of them.
//! - [`config`]: [`Config`], from YAML, the environment or code, with every violation reported
//!   at once. [`state`]: [`State`], [`ClusterPhase`], [`DegradedReason`].
//! - [`partition`], [`assignment`], [`ownership`]: the values the application receives —
//!   [`Partition`], [`WorkerId`], [`Assignment`], [`OwnershipRecord`] and its epochs.
//! - [`strategy`] and [`source`]: the two extension points the leader calls (which worker gets
//!   which partition; where partitions come from — a [`Static`](source::Static) list, or
//!   [`NatsKv`](source::NatsKv), a list in a KV bucket edited at run time).
//! - [`control`]: the operator's placement intents (drain, pin, freeze), kept in KV and applied
//!   by the leader around any strategy.
//! - [`consumer`]: [`WorkerConsumer`], a JetStream durable that follows the worker's holdings.
//! - [`error`]: [`Error`] and [`StoreError`], typed, with their causes as sources.
//!
//! **What an extension needs**: [`store`], the [`Store`](store::Store)/[`Bucket`](store::Bucket)
//! trait with its NATS and in-memory implementations, both held to one conformance suite (in
//! `parti-testkit`), for a custom backend; and [`election`]'s [`ElectionAgent`] for a custom
//! lease.
//!
//! **Building blocks** the manager is made of, public only with the `tools` feature (the
//! `parti` CLI and the test kit read the buckets and drive the leases through them):
//! - `stable_id`, `heartbeat` and the election's `Elector`: the three leases, each a small
//!   task around one bucket.
//! - `controller` (crate-private): the leader — a pure planner (events in, decisions out) driven by a runner
//!   that does the I/O, a pure placement step (intents and paced moves around the strategy),
//!   and the publisher that writes versioned, fenced maps.
//! - `records` (public with the `tools` feature): the wire format of the assignment bucket
//!   (SPEC §5.4), and `store::codec`, the value encoding of every bucket.
//!
//! **Private**: the wall clock (`clock`), the retry delays (`retry`), the `WorkerId` type's
//! home (`worker_id`, re-exported from [`partition`]).
//!
//! The public items are listed in `tests/public_api.txt`; a test fails when the code and the
//! list differ, so that a change of surface is a deliberate, reviewed change.
//!
//! # Feature flags
//!
//! - **`nats`** (default): NATS JetStream — [`NatsStore`](store::NatsStore),
//!   [`Manager::builder`] over a JetStream context, the [`WorkerConsumer`], and the
//!   `open(jetstream)` constructors of [`NatsKv`](source::NatsKv) and
//!   [`Control`](control::Control). Without it the crate has no `async-nats` dependency and a
//!   [`Manager`] runs over any [`Store`](store::Store) given to
//!   [`Manager::builder_with_store`] (the in-memory one, or your own backend).
//! - **`yaml`** (default): configuration from YAML ([`Config::from_yaml_file`] and friends,
//!   Go Parti's files included, with [`ConfigWarning`](config::ConfigWarning)s). Without it,
//!   configuration comes from code and the environment
//!   ([`Config::with_env_overrides`]).
//! - **`tools`**: what tools need to read the buckets and drive the leases (the `parti`
//!   command and the test kit enable it): `records` (the assignment bucket's values,
//!   `read_published`, `read_history`), `store::codec`, `stable_id`, `heartbeat`, the
//!   election's `Elector`, `bucket_spec`, `LeaderRecord` and `current_leader`. It follows the
//!   bucket format, so it is not part of the stable API.
//! - **`test-util`**: helpers for tests and drills, which are not part of the stable API:
//!   `Config::fast_for_tests` (timings of a few hundred milliseconds), `Manager::kill` (stop
//!   every task as a killed process would), and the fault injection of
//!   [`MemoryStore`](store::MemoryStore) (`faults`, `backend_faults`, `delete_bucket`). As
//!   with tokio's own `test-util`, enable it in `[dev-dependencies]` only.
//!
//! The library asks tokio only for `rt`, `sync`, `time` and `macros`; the application
//! chooses its runtime flavour and the rest.
//!
//! Decisions are pure functions tested whole (the planner, the consumer's plan, the stable-ID
//! claim's choice); every task and retry loop lives in a thin shell around them.

pub mod assignment;
mod clock;
pub mod config;
#[cfg(feature = "nats")]
pub mod consumer;
pub mod control;
pub(crate) mod controller;
pub mod election;
pub mod error;
pub mod events;
#[cfg(feature = "tools")]
pub mod heartbeat;
#[cfg(not(feature = "tools"))]
pub(crate) mod heartbeat;
pub mod manager;
pub mod ownership;
pub mod partition;
pub mod profile;
#[cfg(feature = "tools")]
pub mod records;
#[cfg(not(feature = "tools"))]
pub(crate) mod records;
mod retry;
pub mod source;
#[cfg(feature = "tools")]
pub mod stable_id;
#[cfg(not(feature = "tools"))]
pub(crate) mod stable_id;
pub mod state;
pub mod store;
pub mod strategy;
mod worker_id;

pub use assignment::{Assignment, AssignmentMap, Lifecycle};
pub use config::Config;
#[cfg(feature = "nats")]
pub use consumer::{
    AckMode, ConsumerConfig, ConsumerHealth, ConsumerStatus, MessageHandler, WorkerConsumer,
    WorkerConsumerBuilder,
};
pub use election::ElectionAgent;
#[cfg(feature = "tools")]
pub use election::{Elector, Leadership, NatsLeaseElection};
pub use error::{ConfigViolation, Error, Result, StoreError};
pub use events::{AlertLevel, Event};
#[cfg(feature = "tools")]
pub use heartbeat::{Heartbeater, MembershipEvent, MembershipWatcher};
pub use manager::hooks::{self, Hooks};
pub use manager::{Manager, ManagerBuilder};
pub use ownership::{OwnershipEvent, OwnershipRecord, OwnershipRecorder, OwnershipSink};
pub use partition::{Partition, WorkerId};
pub use profile::{Capacity, PlacementRules, UnlabelledPolicy, WorkerProfile};
#[cfg(feature = "tools")]
pub use stable_id::{IdStatus, StableIdConfig, StableIdLease};
pub use state::{ClusterPhase, DegradedReason, ScalingReason, State};
pub use strategy::{AssignmentStrategy, ConsistentHash, RoundRobin, WeightedConsistentHash};

/// The README's code, compiled as a doc test so that it cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
