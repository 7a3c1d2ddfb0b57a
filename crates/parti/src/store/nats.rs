//! The NATS JetStream KV implementation of [`Store`](super::Store).
//!
//! Writes are published straight to the bucket's stream with the
//! `Nats-Expected-Last-Subject-Sequence` header, so a lost race is told apart from a failure
//! exactly. Watches are ordered push consumers over the stream, recreated from the last
//! delivered sequence as soon as the client reconnects, so a server restart neither loses nor
//! repeats an event. Expiries are seen through NATS ≥ 2.11 limit markers (`Nats-Marker-Reason: MaxAge`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MARKER_REASON};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, ConsumerErrorKind};
use async_nats::jetstream::{self, Context, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::names::{check_compatible, check_key, check_pattern, valid_bucket_name};
use super::{Bucket, BucketSpec, Entry, Store, StoreError, WatchEvent, WatchStream};
use crate::error::BoxError;

/// Default bound on a single KV call.
const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// NATS refuses delete-marker TTLs under one second.
const MIN_MARKER_TTL: Duration = Duration::from_secs(1);
const KV_OPERATION: &str = "KV-Operation";

/// A [`Store`] on NATS JetStream key-value buckets.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use parti::store::{BucketSpec, NatsStore, Store};
///
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let store = NatsStore::new(async_nats::jetstream::new(client))
///     .with_operation_timeout(Duration::from_secs(2));
/// let bucket = store.bucket(&BucketSpec::new("parti-heartbeat").expiring(Duration::from_secs(6))).await?;
/// let revision = bucket.put("worker-0", "{}".into()).await?;
/// assert!(revision > 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsStore {
    js: Context,
    op_timeout: Duration,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl NatsStore {
    /// A store on the given JetStream context, with a 5 s bound on every call.
    pub fn new(js: Context) -> Self {
        Self {
            js,
            op_timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }

    /// Bounds every single KV call (`operationTimeout` in the config).
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The consumers per stream the connected server allows a stream that sets no limit of its
    /// own: 1,000 from nats-server 2.15 on, unlimited (`None`) before.
    pub fn default_consumer_limit(&self) -> Option<u32> {
        let version = self.js.client().server_info().version;
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        ((major, minor) >= (2, 15)).then_some(1_000)
    }

    /// The JetStream context the store uses.
    pub fn context(&self) -> &Context {
        &self.js
    }

    async fn open(&self, spec: &BucketSpec) -> Result<kv::Store, StoreError> {
        let name = spec.name.as_str();
        let backend = |op, e: BoxError| StoreError::backend_source(op, name, e);
        match self.js.get_stream(format!("KV_{name}")).await {
            Ok(stream) => self.adopt(spec, stream).await,
            Err(e) if is_stream_not_found(&e) && !spec.create_if_missing => {
                Err(StoreError::BucketMissing {
                    bucket: name.to_owned(),
                })
            }
            Err(e) if is_stream_not_found(&e) => {
                let config = kv::Config {
                    bucket: name.to_owned(),
                    history: i64::from(spec.history),
                    max_age: spec.max_age.unwrap_or_default(),
                    num_replicas: spec.replicas,
                    limit_markers: spec
                        .limit_markers
                        .then(|| spec.max_age.unwrap_or_default().max(MIN_MARKER_TTL)),
                    ..Default::default()
                };
                // Another worker may create it between our look-up and create: then it is
                // theirs that is checked. A create that failed otherwise is the error to report.
                let created = self.js.create_key_value(config).await;
                let stream = match self.js.get_stream(format!("KV_{name}")).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        return Err(match created {
                            Err(create) => backend("create bucket", create.into()),
                            Ok(_) => backend("create bucket", e.into()),
                        });
                    }
                };
                self.adopt(spec, stream).await
            }
            Err(e) => Err(backend("open bucket", e.into())),
        }
    }

    /// Checks an existing bucket's stream against `spec`, raises its consumer limit to
    /// `spec.min_consumers`, and opens it.
    async fn adopt(
        &self,
        spec: &BucketSpec,
        mut stream: stream::Stream,
    ) -> Result<kv::Store, StoreError> {
        let name = spec.name.as_str();
        let backend = |op, e: BoxError| StoreError::backend_source(op, name, e);
        let info = stream
            .info()
            .await
            .map_err(|e| backend("stream info", e.into()))?;
        check_compatible(spec, &existing_spec(name, &info.config))?;
        let limit = match info.config.max_consumers {
            n if n > 0 => Some(n),
            // No limit of the stream's own: the server's default applies, if it has one.
            _ => self
                .default_consumer_limit()
                .and_then(|n| i32::try_from(n).ok()),
        };
        if let Some(wanted) = spec.min_consumers.and_then(|n| i32::try_from(n).ok())
            && let Some(limit) = limit
            && limit < wanted
        {
            let mut config = info.config.clone();
            config.max_consumers = wanted;
            match self.js.update_stream(config).await {
                Ok(_) => tracing::info!(
                    bucket = name,
                    from = limit,
                    to = wanted,
                    "raised the bucket's consumer limit"
                ),
                Err(e) => tracing::warn!(
                    bucket = name,
                    limit,
                    wanted,
                    error = %e,
                    "could not raise the bucket's consumer limit; a large fleet may be refused watches"
                ),
            }
        }
        self.js
            .get_key_value(name)
            .await
            .map_err(|e| backend("open bucket", e.into()))
    }
}

/// A revision check that failed. async-nats maps only code 10071 to `WrongLastSequence`;
/// clustered servers answer the same condition with 10164 (`wrong last sequence`, constant form).
fn is_wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(js) = err.downcast_ref::<jetstream::Error>() {
            return matches!(
                js.error_code(),
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            );
        }
        source = err.source();
    }
    false
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

/// What an existing bucket's stream is configured with, as a spec to compare.
fn existing_spec(name: &str, config: &stream::Config) -> BucketSpec {
    BucketSpec {
        name: name.to_owned(),
        max_age: (!config.max_age.is_zero()).then_some(config.max_age),
        history: u8::try_from(config.max_messages_per_subject).unwrap_or(u8::MAX),
        replicas: config.num_replicas,
        limit_markers: config.allow_message_ttl && config.subject_delete_marker_ttl.is_some(),
        min_consumers: u32::try_from(config.max_consumers).ok().filter(|n| *n > 0),
        create_if_missing: true,
    }
}

#[async_trait]
impl Store for NatsStore {
    async fn bucket(&self, spec: &BucketSpec) -> Result<Arc<dyn Bucket>, StoreError> {
        if !valid_bucket_name(&spec.name) {
            return Err(StoreError::InvalidName {
                name: spec.name.clone(),
                reason: "bucket names are made of A-Z, a-z, 0-9, '_' and '-'".into(),
            });
        }
        let kv = timed(self.op_timeout, "open bucket", &spec.name, self.open(spec)).await?;
        Ok(Arc::new(NatsBucket {
            js: self.js.clone(),
            subject_prefix: kv.prefix.clone(),
            kv,
            name: spec.name.clone(),
            op_timeout: self.op_timeout,
            retired: Retired::default(),
        }))
    }

    fn is_connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }
}

/// Runs a store call under the operation timeout.
async fn timed<T>(
    limit: Duration,
    op: &'static str,
    bucket: &str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(StoreError::Timeout {
            op,
            bucket: bucket.to_owned(),
        })
    })
}

/// Room left in the server's `max_payload` for a write's headers (the expected-revision
/// header of a revision-checked write, a TTL marker's): a value may use the rest.
const HEADER_ROOM: usize = 512;

struct NatsBucket {
    js: Context,
    kv: kv::Store,
    /// `$KV.{bucket}.`
    subject_prefix: String,
    name: String,
    op_timeout: Duration,
    /// Watch consumers whose watch ended, deleted when the next watch starts.
    retired: Retired,
}

/// Names of watch consumers nobody reads any more. The server would delete each only after
/// the ordered consumer's 30 s inactivity threshold; watches restart at every resync (each
/// heartbeat TTL), so on a fleet they pile up to the stream's consumer limit (1,000 by
/// default) and new watches are refused. They are deleted when the next watch of the bucket
/// starts — usually at once, by the resync that ended them.
type Retired = Arc<std::sync::Mutex<Vec<String>>>;

impl std::fmt::Debug for NatsBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBucket")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NatsBucket {
    /// A failure of this bucket while doing `op`, with the client's error as the cause.
    fn backend(&self, op: &'static str, e: impl Into<BoxError>) -> StoreError {
        StoreError::backend_source(op, &self.name, e)
    }

    /// Publishes to the key's subject, optionally fenced on the key's last revision.
    async fn publish(
        &self,
        op: &'static str,
        key: &str,
        headers: HeaderMap,
        value: Bytes,
    ) -> Result<u64, StoreError> {
        check_key(key)?;
        // Refused here with the sizes rather than by the client with a bare "payload too
        // large" (or, past a client's check, by the server closing the connection).
        let max_payload = self.js.client().server_info().max_payload;
        if max_payload > 0 {
            let limit = max_payload.saturating_sub(HEADER_ROOM);
            if value.len() > limit {
                return Err(StoreError::ValueTooLarge {
                    bucket: self.name.clone(),
                    key: key.to_owned(),
                    size: value.len(),
                    limit,
                });
            }
        }
        let subject = format!("{}{}", self.subject_prefix, key);
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(|e| self.publish_error(op, key, e))?;
        let ack = ack.await.map_err(|e| self.publish_error(op, key, e))?;
        Ok(ack.sequence)
    }

    fn publish_error(
        &self,
        op: &'static str,
        key: &str,
        e: jetstream::context::PublishError,
    ) -> StoreError {
        match e.kind() {
            _ if is_wrong_last_sequence(&e) => StoreError::Conflict {
                bucket: self.name.clone(),
                key: key.to_owned(),
            },
            PublishErrorKind::TimedOut => StoreError::Timeout {
                op,
                bucket: self.name.clone(),
            },
            _ => self.backend(op, e),
        }
    }

    async fn write_expecting(
        &self,
        op: &'static str,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> Result<u64, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        self.publish(op, key, headers, value).await
    }

    /// The last message on the key's subject, tombstones and markers included.
    async fn last_raw(&self, key: &str) -> Result<Option<kv::Entry>, StoreError> {
        check_key(key)?;
        self.kv.entry(key).await.map_err(|e| self.backend("get", e))
    }

    async fn create_inner(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        match self.write_expecting("create", key, value.clone(), 0).await {
            Err(StoreError::Conflict { .. }) => {}
            other => return other,
        }
        // The subject has messages: free only if the last one is a delete or expiry marker.
        match self.last_raw(key).await? {
            Some(entry) if entry.operation != kv::Operation::Put => self
                .write_expecting("create", key, value, entry.revision)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { bucket, key } => {
                        StoreError::AlreadyExists { bucket, key }
                    }
                    other => other,
                }),
            Some(_) => Err(StoreError::AlreadyExists {
                bucket: self.name.clone(),
                key: key.to_owned(),
            }),
            // Gone between the two calls (marker aged out): try a clean create once more.
            None => self
                .write_expecting("create", key, value, 0)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { bucket, key } => {
                        StoreError::AlreadyExists { bucket, key }
                    }
                    other => other,
                }),
        }
    }

    async fn snapshot(&self, pattern: &str) -> Result<Vec<Entry>, StoreError> {
        let mut watch = self.watch_stream(pattern).await?;
        let mut entries = Vec::new();
        while let Some(event) = watch.next().await {
            match event? {
                WatchEvent::InitApply(entry) => entries.push(entry),
                WatchEvent::InitDone => break,
                _ => {}
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    async fn watch_stream(&self, pattern: &str) -> Result<WatchStream, StoreError> {
        check_pattern(pattern)?;
        Ok(NatsWatch {
            stream: self.kv.stream.clone(),
            client: self.js.client(),
            filter: format!("{}{}", self.subject_prefix, pattern),
            subject_prefix: self.subject_prefix.clone(),
            bucket: self.name.clone(),
            op_timeout: self.op_timeout,
            retired: Arc::clone(&self.retired),
        }
        .into_stream())
    }
}

#[async_trait]
impl Bucket for NatsBucket {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let entry = timed(self.op_timeout, "get", &self.name, self.last_raw(key)).await?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Entry {
                key: e.key,
                value: e.value,
                revision: e.revision,
            }))
    }

    async fn last_change(&self, key: &str) -> Result<Option<WatchEvent>, StoreError> {
        let entry = timed(self.op_timeout, "get", &self.name, self.last_raw(key)).await?;
        Ok(entry.map(|e| match e.operation {
            kv::Operation::Put => WatchEvent::Put(Entry {
                key: e.key,
                value: e.value,
                revision: e.revision,
            }),
            kv::Operation::Delete => WatchEvent::Deleted {
                key: e.key,
                revision: e.revision,
            },
            // The client reads an expiry's limit marker (`MaxAge`) as a purge; no Parti
            // bucket is ever purged, so a purge is an expiry here.
            kv::Operation::Purge => WatchEvent::Expired {
                key: e.key,
                revision: e.revision,
            },
        }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        timed(
            self.op_timeout,
            "create",
            &self.name,
            self.create_inner(key, value),
        )
        .await
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, StoreError> {
        if expected == 0 {
            // Revision 0 means "no message at all" to NATS: that is a create, not an update.
            return Err(StoreError::Conflict {
                bucket: self.name.clone(),
                key: key.to_owned(),
            });
        }
        timed(
            self.op_timeout,
            "update",
            &self.name,
            self.write_expecting("update", key, value, expected),
        )
        .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        timed(
            self.op_timeout,
            "put",
            &self.name,
            self.publish("put", key, HeaderMap::new(), value),
        )
        .await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        if let Some(revision) = expected {
            headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, revision.to_string());
        }
        timed(
            self.op_timeout,
            "delete",
            &self.name,
            self.publish("delete", key, headers, Bytes::new()),
        )
        .await
        .map(drop)
    }

    async fn list(&self, pattern: &str) -> Result<Vec<Entry>, StoreError> {
        timed(self.op_timeout, "list", &self.name, self.snapshot(pattern)).await
    }

    async fn watch(&self, pattern: &str) -> Result<WatchStream, StoreError> {
        self.watch_stream(pattern).await
    }

    /// The bucket stream's creation time, hashed; `None` when the stream is gone.
    async fn incarnation(&self) -> Result<Option<u64>, StoreError> {
        let stream = format!("KV_{}", self.name);
        timed(self.op_timeout, "bucket info", &self.name, async {
            match self.js.get_stream(&stream).await {
                Ok(s) => {
                    let created = s.cached_info().created.to_string();
                    Ok(Some(xxhash_rust::xxh3::xxh3_64(created.as_bytes())))
                }
                Err(e) if is_stream_not_found(&e) => Ok(None),
                Err(e) => Err(self.backend("bucket info", e)),
            }
        })
        .await
    }
}

/// What a message on the bucket's stream means.
enum Op {
    Put,
    Deleted,
    Expired,
}

fn classify(message: &async_nats::Message) -> Op {
    let Some(headers) = message.headers.as_ref() else {
        return Op::Put;
    };
    if let Some(op) = headers.get(KV_OPERATION) {
        return match op.as_str() {
            "DEL" | "PURGE" => Op::Deleted,
            _ => Op::Put,
        };
    }
    match headers.get(NATS_MARKER_REASON).map(|r| r.as_str()) {
        Some("MaxAge") => Op::Expired,
        Some(_) => Op::Deleted,
        None => Op::Put,
    }
}

/// Bound on deleting one retired watch consumer (see `NatsWatch::delete_retired`).
const RETIRE_DELETE_BOUND: Duration = Duration::from_millis(250);
/// Consecutive errors after which a watch drops its consumer and starts a fresh snapshot.
const WATCH_ERRORS_BEFORE_RESNAPSHOT: u32 = 5;
const WATCH_RETRY_MIN: Duration = Duration::from_millis(50);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// A watch stream's progress between two events.
struct WatchState {
    watch: Arc<NatsWatch>,
    session: Option<WatchSession>,
    backoff: Duration,
    errors: u32,
}

/// The state of one watch: re-created (with a fresh snapshot) when its consumer ends.
struct NatsWatch {
    stream: stream::Stream,
    client: async_nats::Client,
    filter: String,
    subject_prefix: String,
    bucket: String,
    op_timeout: Duration,
    retired: Retired,
}

impl NatsWatch {
    fn into_stream(self) -> WatchStream {
        let state = WatchState {
            watch: Arc::new(self),
            session: None,
            backoff: Duration::ZERO,
            errors: 0,
        };
        futures::stream::unfold(state, |mut state| async move {
            // Errors come back at once from a broken consumer: pace them, so a consumer of
            // this stream never spins (and stays cancellable).
            if !state.backoff.is_zero() {
                tokio::time::sleep(state.backoff).await;
            }
            let event = match state.session.as_mut() {
                None => match state.watch.start().await {
                    Ok(session) => {
                        state.session = Some(session);
                        Ok(WatchEvent::Init)
                    }
                    Err(e) => Err(e),
                },
                Some(session) => match session.next_event(&state.watch).await {
                    Some(event) => event,
                    // The consumer is gone for good: start over with a fresh snapshot.
                    None => {
                        state.session = None;
                        Err(StoreError::backend(
                            "watch",
                            &state.watch.bucket,
                            "watch consumer ended; re-snapshotting",
                        ))
                    }
                },
            };
            match &event {
                Ok(_) => {
                    state.errors = 0;
                    state.backoff = Duration::ZERO;
                }
                Err(_) => {
                    state.errors += 1;
                    state.backoff = (state.backoff * 2).clamp(WATCH_RETRY_MIN, WATCH_RETRY_MAX);
                    if state.errors >= WATCH_ERRORS_BEFORE_RESNAPSHOT {
                        state.session = None;
                        state.errors = 0;
                    }
                }
            }
            Some((event, state))
        })
        .boxed()
    }

    /// Deletes the consumers of ended watches, best effort and briefly: a consumer the
    /// server already dropped is no error, and at the first delete that fails or takes longer
    /// than [`RETIRE_DELETE_BOUND`] (the server is away) the rest are left to expire by
    /// themselves, so a new watch is never held up.
    async fn delete_retired(&self) {
        let names = std::mem::take(
            &mut *self
                .retired
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for name in names {
            let deleted =
                tokio::time::timeout(RETIRE_DELETE_BOUND, self.stream.delete_consumer(&name)).await;
            match deleted {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.to_string().contains("not found") => {}
                Ok(Err(e)) => {
                    tracing::trace!(consumer = %name, error = %e, "retired watch consumers left to expire");
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Creates an ordered push consumer over the watched keys, starting at `from`.
    async fn consumer(
        &self,
        from: DeliverPolicy,
    ) -> Result<(String, u64, jetstream::consumer::push::Ordered), StoreError> {
        let backend = |e: BoxError| StoreError::backend_source("watch", &self.bucket, e);
        let timeout = || StoreError::Timeout {
            op: "watch",
            bucket: self.bucket.clone(),
        };
        let create = self.stream.create_consumer(OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            description: Some("parti watch".into()),
            filter_subject: self.filter.clone(),
            deliver_policy: from,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            ..Default::default()
        });
        let consumer = match tokio::time::timeout(self.op_timeout, create).await {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) if e.kind() == ConsumerErrorKind::TimedOut => return Err(timeout()),
            Ok(Err(e)) => return Err(backend(e.into())),
            Err(_) => return Err(timeout()),
        };
        let pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let messages = consumer.messages().await.map_err(|e| backend(e.into()))?;
        Ok((name, pending, messages))
    }

    async fn start(&self) -> Result<WatchSession, StoreError> {
        // Read before the consumer exists: a reconnect after this point is one to resume from.
        let connects = self.connects();
        let (name, initial_pending, messages) =
            self.consumer(DeliverPolicy::LastPerSubject).await?;
        // Only once the new watch exists: its events queue meanwhile.
        self.delete_retired().await;
        Ok(WatchSession {
            name,
            retired: Arc::clone(&self.retired),
            messages,
            snapshot_left: (initial_pending > 0).then_some(initial_pending),
            init_done_sent: false,
            last_sequence: None,
            connects,
            resume_due: false,
            reconnect_check: reconnect_check(),
        })
    }

    /// How many times the client has (re)connected.
    fn connects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How often a watch checks whether its client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);

/// The timer of [`RECONNECT_CHECK`]: one per session, so a busy watch does not arm a new timer
/// for every message.
fn reconnect_check() -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + RECONNECT_CHECK,
        RECONNECT_CHECK,
    );
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

struct WatchSession {
    /// The consumer's name, retired when the session ends.
    name: String,
    retired: Retired,
    messages: jetstream::consumer::push::Ordered,
    /// Snapshot messages still expected; `None` once the snapshot is complete.
    snapshot_left: Option<u64>,
    init_done_sent: bool,
    /// The stream sequence of the last message read, the point a resumed consumer starts after.
    last_sequence: Option<u64>,
    /// The client's connect count when this session last (re)created its consumer.
    connects: u64,
    /// The client reconnected and the consumer has not been recreated yet.
    resume_due: bool,
    /// When to look at the client's connect count next.
    reconnect_check: tokio::time::Interval,
}

impl Drop for WatchSession {
    fn drop(&mut self) {
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(std::mem::take(&mut self.name));
    }
}

impl WatchSession {
    /// Notes a reconnect of the client since the consumer was last created.
    ///
    /// async-nats recreates an ordered consumer after a reconnect too, but on its own backoff,
    /// which reaches 10 s between attempts once a few failed while the server was away; a watch
    /// that waits for it misses every change meanwhile. A session recreates its consumer itself
    /// as soon as the client is connected again.
    fn check_reconnect(&mut self, watch: &NatsWatch) {
        let connects = watch.connects();
        if connects != self.connects
            && watch.client.connection_state() == async_nats::connection::State::Connected
        {
            self.connects = connects;
            self.resume_due = true;
        }
    }

    /// Replaces the consumer with one that starts after the last message read.
    ///
    /// `None` when the session cannot resume exactly (its snapshot was not complete, or it
    /// read nothing yet): the watch then starts over with a fresh snapshot.
    async fn resume(&mut self, watch: &NatsWatch) -> Option<Result<(), StoreError>> {
        let last = self
            .last_sequence
            .filter(|_| self.snapshot_left.is_none())?;
        let from = DeliverPolicy::ByStartSequence {
            start_sequence: last.saturating_add(1),
        };
        match watch.consumer(from).await {
            Ok((name, _, messages)) => {
                tracing::debug!(bucket = %watch.bucket, after = last, "watch resumed after a reconnect");
                self.messages = messages;
                let old = std::mem::replace(&mut self.name, name);
                self.retired
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(old);
                self.resume_due = false;
                watch.delete_retired().await;
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }

    async fn next_event(&mut self, watch: &NatsWatch) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if self.snapshot_left.is_none() && !self.init_done_sent {
                self.init_done_sent = true;
                return Some(Ok(WatchEvent::InitDone));
            }
            if self.resume_due
                && let Err(e) = self.resume(watch).await?
            {
                return Some(Err(e));
            }
            let next = tokio::select! {
                next = self.messages.next() => next?,
                _ = self.reconnect_check.tick() => {
                    self.check_reconnect(watch);
                    continue;
                }
            };
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    return Some(Err(StoreError::backend_source("watch", &watch.bucket, e)));
                }
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let (revision, pending) = (info.stream_sequence, info.pending);
            self.last_sequence = Some(revision);
            let Some(key) = message
                .subject
                .strip_prefix(watch.subject_prefix.as_str())
                .map(str::to_owned)
            else {
                continue;
            };
            let op = classify(&message);
            if let Some(left) = self.snapshot_left {
                let left = left.saturating_sub(1);
                self.snapshot_left = (left > 0 && pending > 0).then_some(left);
                if let Op::Put = op {
                    return Some(Ok(WatchEvent::InitApply(Entry {
                        key,
                        value: message.payload.clone(),
                        revision,
                    })));
                }
                continue;
            }
            return Some(Ok(match op {
                Op::Put => WatchEvent::Put(Entry {
                    key,
                    value: message.payload.clone(),
                    revision,
                }),
                Op::Deleted => WatchEvent::Deleted { key, revision },
                Op::Expired => WatchEvent::Expired { key, revision },
            }));
        }
    }
}
