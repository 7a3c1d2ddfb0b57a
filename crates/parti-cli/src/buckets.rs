//! Opening a cluster's four KV buckets for reading, without creating or changing them.
//!
//! The library's [`Store::bucket`] creates a missing bucket and checks an existing one against
//! the spec a worker would use. An inspection tool must do neither: it must not leave buckets
//! behind on a server that has no cluster, and it must be able to read a cluster whose timings
//! differ from its own config. So a bucket is first looked up; a missing one is reported as such,
//! and an existing one is opened with a spec taken from its own settings (which the compatibility
//! check then accepts as is).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use parti::config::KvBucketConfig;
use parti::store::{Bucket, BucketSpec, NatsStore, Store};
use serde::Serialize;

/// What a bucket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Role {
    StableId,
    Election,
    Heartbeat,
    Assignment,
}

impl Role {
    pub(crate) const ALL: [Role; 4] = [
        Role::StableId,
        Role::Election,
        Role::Heartbeat,
        Role::Assignment,
    ];

    pub(crate) fn bucket_name(self, names: &KvBucketConfig) -> &str {
        match self {
            Role::StableId => &names.stable_id,
            Role::Election => &names.election,
            Role::Heartbeat => &names.heartbeat,
            Role::Assignment => &names.assignment,
        }
    }
}

/// One bucket as found on the server.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) role: Role,
    pub(crate) name: String,
    /// `None` when the bucket does not exist.
    pub(crate) bucket: Option<Arc<dyn Bucket>>,
    /// The bucket's `max_age` (the TTL of its values), if it has one.
    pub(crate) max_age: Option<Duration>,
}

/// The four buckets of a cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClusterBuckets {
    pub(crate) all: [Found; 4],
}

impl ClusterBuckets {
    /// Looks the four buckets up and opens those that exist.
    pub(crate) async fn open(
        js: &jetstream::Context,
        names: &KvBucketConfig,
        op_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let store = NatsStore::new(js.clone()).with_operation_timeout(op_timeout);
        let mut all = Vec::with_capacity(4);
        for role in Role::ALL {
            let name = role.bucket_name(names).to_owned();
            let found = open_existing(js, &store, &name, op_timeout)
                .await
                .with_context(|| format!("cannot open the {role:?} bucket {name:?}"))?;
            let (bucket, max_age) = found.unzip();
            all.push(Found {
                role,
                name,
                bucket,
                max_age: max_age.flatten(),
            });
        }
        let all: [Found; 4] = all
            .try_into()
            .map_err(|_| anyhow::anyhow!("expected four buckets"))?;
        Ok(Self { all })
    }

    pub(crate) fn get(&self, role: Role) -> &Found {
        // `all` is in `Role::ALL` order.
        &self.all[role as usize]
    }

    /// Whether all four exist.
    pub(crate) fn all_exist(&self) -> bool {
        self.all.iter().all(|f| f.bucket.is_some())
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The bucket and its `max_age`, or `None` when it does not exist.
async fn open_existing(
    js: &jetstream::Context,
    store: &NatsStore,
    name: &str,
    op_timeout: Duration,
) -> anyhow::Result<Option<(Arc<dyn Bucket>, Option<Duration>)>> {
    let lookup = tokio::time::timeout(op_timeout, js.get_stream(format!("KV_{name}")))
        .await
        .context("timed out looking the bucket up")?;
    let mut stream = match lookup {
        Ok(stream) => stream,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e).context("cannot look the bucket up (is JetStream enabled?)"),
    };
    let config = tokio::time::timeout(op_timeout, stream.info())
        .await
        .context("timed out reading the bucket's settings")?
        .context("cannot read the bucket's settings")?
        .config
        .clone();
    let max_age = (!config.max_age.is_zero()).then_some(config.max_age);
    let history = u8::try_from(config.max_messages_per_subject.max(1)).unwrap_or(u8::MAX);
    let spec = BucketSpec {
        name: name.to_owned(),
        max_age,
        history,
        replicas: config.num_replicas,
        // Reading never depends on markers; asking for them would reject a bucket without.
        limit_markers: false,
    };
    let bucket = store.bucket(&spec).await?;
    Ok(Some((bucket, max_age)))
}
