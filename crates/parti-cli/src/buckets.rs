//! Reading a cluster's KV buckets without creating or changing them.
//!
//! The library's [`Store::bucket`] creates a missing bucket and checks an existing one against
//! the spec a worker would use. An inspection tool must do neither: it must not leave buckets
//! behind on a server that has no cluster, and it must be able to read a cluster whose timings
//! differ from its own config. So a bucket is first looked up ([`stream_config`], the one
//! look-up every command that reads the server goes through); a missing one is reported as such,
//! and an existing one is opened with a spec taken from its own settings (which the compatibility
//! check then accepts as is).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, ErrorCode};
use parti::config::KvBucketConfig;
use parti::store::{Bucket, BucketSpec, NatsStore, Store};
use serde::{Serialize, Serializer};

/// What a bucket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Role {
    /// The stable worker-ID bucket (`kvBuckets.stableId`).
    StableId,
    /// The leader-lease bucket (`kvBuckets.election`).
    Election,
    /// The heartbeat bucket (`kvBuckets.heartbeat`).
    Heartbeat,
    /// The assignment bucket (`kvBuckets.assignment`).
    Assignment,
}

impl Role {
    /// The four roles, in the order of `parti::Config::bucket_specs`.
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

    /// The name reports and JSON documents use: `stableId`, `election`, `heartbeat`,
    /// `assignment`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::StableId => "stableId",
            Role::Election => "election",
            Role::Heartbeat => "heartbeat",
            Role::Assignment => "assignment",
        }
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
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

    /// The assignment bucket, or an error saying there is no cluster: for the commands that
    /// act on a cluster's committed state and never create its buckets.
    pub(crate) fn assignment(&self) -> anyhow::Result<Arc<dyn Bucket>> {
        let found = self.get(Role::Assignment);
        found.bucket.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "no Parti cluster here: the assignment bucket {} does not exist (start a worker, \
                 or `parti provision apply`, first)",
                found.name
            )
        })
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

/// The configuration of the JetStream stream `name` (a bucket's is `KV_<bucket>`), or `None`
/// when there is no such stream; each call is bounded by `bound`.
pub(crate) async fn stream_config(
    js: &jetstream::Context,
    name: &str,
    bound: Duration,
) -> anyhow::Result<Option<stream::Config>> {
    let lookup = tokio::time::timeout(bound, js.get_stream(name))
        .await
        .with_context(|| format!("timed out reading the stream {name}"))?;
    match lookup {
        // The look-up is the stream's info request: its answer carries the configuration.
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the stream {name} (is JetStream enabled?)"))
        }
    }
}

/// Whether a stream look-up failed because the stream does not exist.
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
    let Some(config) = stream_config(js, &format!("KV_{name}"), op_timeout).await? else {
        return Ok(None);
    };
    let max_age = (!config.max_age.is_zero()).then_some(config.max_age);
    let history = u8::try_from(config.max_messages_per_subject.max(1)).unwrap_or(u8::MAX);
    // Reading an existing bucket: never create one. Reading never depends on markers either
    // (asking for them would reject a bucket without), so they stay off.
    let mut spec = BucketSpec::new(name)
        .replicas(config.num_replicas)
        .create_if_missing(false);
    spec.max_age = max_age;
    spec.history = history;
    let bucket = store.bucket(&spec).await?;
    Ok(Some((bucket, max_age)))
}
