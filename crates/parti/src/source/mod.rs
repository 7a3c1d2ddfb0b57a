//! Where partitions come from: the [`PartitionSource`] trait the leader asks, a [`Static`]
//! list set in code, and [`NatsKv`], a list kept in a KV bucket that operators edit at run time.

mod document;
mod nats_kv;

pub use nats_kv::{Listed, NatsKv};

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::RwLock;

use crate::error::Result;
use crate::partition::{Partition, check_unique};

/// Lists the partitions the cluster must cover.
///
/// Implementations are asked by the leader on cold start, on every rebalance and on
/// [`Manager::refresh_partitions`](crate::Manager::refresh_partitions). A source that errors, or
/// returns duplicates, leaves the last good assignment in force; the leader retries.
///
/// ```
/// use parti::{Partition, source::{PartitionSource, Static}};
/// # tokio_test_block(async {
/// let source = Static::new(vec![Partition::new(["a"], 1)?, Partition::new(["b"], 2)?]);
/// assert_eq!(source.list_partitions().await?.len(), 2);
/// # Ok::<(), parti::Error>(()) });
/// # fn tokio_test_block<F: std::future::Future<Output = parti::Result<()>>>(f: F) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap()
/// # }
/// ```
#[async_trait]
pub trait PartitionSource: Send + Sync + fmt::Debug + 'static {
    /// The current partitions. Duplicates are rejected by the caller.
    ///
    /// # Errors
    ///
    /// Any failure, best wrapped in [`Error::Source`](crate::Error::Source) with the cause
    /// kept typed (`Error::Source(Box::new(e))`). The leader reports it as
    /// [`Error::Source`](crate::Error::Source) either way: an error of another variant becomes
    /// that error's source.
    async fn list_partitions(&self) -> Result<Vec<Partition>>;

    /// A stream that yields whenever the list may have changed, for a source that can tell
    /// (a watch); the default is `None`.
    ///
    /// The leader opens it once per term and, on each item, re-reads the list and rebalances
    /// if it differs (within `minRebalanceInterval`; changes in a row coalesce). The leader
    /// also re-reads every source every `max(minRebalanceInterval, 1s)`, so a source without
    /// a stream, or whose stream ends, is still followed — only later.
    async fn changes(&self) -> Option<BoxStream<'static, ()>> {
        None
    }
}

/// A fixed list of partitions that can be replaced at run time (then call
/// [`Manager::refresh_partitions`](crate::Manager::refresh_partitions)).
#[derive(Debug, Clone, Default)]
pub struct Static {
    partitions: Arc<RwLock<Vec<Partition>>>,
}

impl Static {
    /// A source serving `partitions`.
    pub fn new(partitions: Vec<Partition>) -> Self {
        Self {
            partitions: Arc::new(RwLock::new(partitions)),
        }
    }

    /// Replaces the list; clones of this source see the new one.
    pub async fn set(&self, partitions: Vec<Partition>) {
        *self.partitions.write().await = partitions;
    }
}

#[async_trait]
impl PartitionSource for Static {
    async fn list_partitions(&self) -> Result<Vec<Partition>> {
        Ok(self.partitions.read().await.clone())
    }
}

/// Lists partitions from a source and checks them (no duplicates), as the leader does.
pub(crate) async fn load_checked(
    source: &dyn PartitionSource,
    deadline: std::time::Duration,
) -> Result<Vec<Partition>> {
    // A source that hangs must not stall the controller (crash handling above all).
    let listed = tokio::time::timeout(deadline, source.list_partitions())
        .await
        .map_err(|_| {
            crate::Error::Source(
                format!("the partition source did not answer within {deadline:?}").into(),
            )
        })?;
    let mut partitions = listed.map_err(|e| match e {
        crate::Error::Source(_) | crate::Error::InvalidPartition { .. } => e,
        other => crate::Error::Source(Box::new(other)),
    })?;
    check_unique(&partitions)?;
    partitions.sort();
    Ok(partitions)
}
