//! Leader election (SPEC §5.3): a lease on the `leader` key of the election bucket.
//!
//! [`ElectionAgent`] is the pluggable part (acquire, renew, release a lease); `NatsLeaseElection`
//! is the default agent over the election bucket. The `Elector` is the loop around any agent: it
//! requests leadership as a follower — with a watch on the leader key, only when the key is
//! vacated or its renewals stop showing, so followers write nothing while a leader renews —
//! renews it as a leader, steps down at once when a renewal says the lease is lost, and never
//! believes it leads past the lease after transient errors. It publishes `Leadership` on a
//! `watch` channel.

mod elector;
mod nats_lease;

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

#[cfg(feature = "tools")]
pub use elector::{Elector, Leadership};
#[cfg(not(feature = "tools"))]
pub(crate) use elector::{Elector, Leadership};
#[cfg(feature = "tools")]
pub use nats_lease::NatsLeaseElection;
#[cfg(not(feature = "tools"))]
pub(crate) use nats_lease::NatsLeaseElection;
#[cfg(feature = "tools")]
pub use nats_lease::{LEADER_KEY, LeaderRecord, bucket_spec, current_leader};
#[cfg(not(feature = "tools"))]
#[allow(unused_imports)]
pub(crate) use nats_lease::{LEADER_KEY, LeaderRecord, bucket_spec, current_leader};

/// A way to hold a leadership lease. The manager's elector drives it; a user may supply their
/// own.
#[async_trait]
pub trait ElectionAgent: Send + Sync + std::fmt::Debug {
    /// Tries to acquire leadership: `Some(term)` when this worker now leads (or already led),
    /// `None` when another worker leads.
    async fn request(&self) -> Result<Option<u64>>;

    /// Extends the lease: `Ok(false)` when leadership is lost (the lease was taken or is gone);
    /// `Err` for a transient failure, after which the worker still leads until the lease would
    /// have run out.
    async fn renew(&self) -> Result<bool>;

    /// Gives the lease up so that another worker can take it at once.
    async fn release(&self) -> Result<()>;

    /// Whether this agent believes it holds the lease.
    fn is_leader(&self) -> bool;

    /// The term of the lease held, if any: strictly increasing across leaders (a fencing token).
    fn term(&self) -> Option<u64>;

    /// How long a lease lasts without renewal.
    fn lease_ttl(&self) -> Duration;
}
