//! The one error type of the crate.

use std::fmt;

use crate::state::State;
use crate::worker_id::WorkerId;

/// A boxed error from a dependency (NATS client, I/O, a user's source or strategy).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in Parti.
///
/// Each variant is something a caller can act on: fix the configuration, free IDs, retry later,
/// or give up. The enum is `#[non_exhaustive]` so new failure modes are not breaking changes.
///
/// ```
/// use parti::Error;
///
/// fn describe(err: &Error) -> &'static str {
///     match err {
///         Error::InvalidConfig { .. } => "fix the configuration",
///         Error::IdPoolExhausted { .. } => "raise workerIdMax or stop some workers",
///         _ => "see the message",
///     }
/// }
/// let err = Error::IdPoolExhausted { min: 0, max: 3 };
/// assert_eq!(describe(&err), "raise workerIdMax or stop some workers");
/// assert_eq!(err.to_string(), "stable ID pool exhausted: every ID in [0, 3] is taken");
/// ```
///
/// Causes are kept typed as each variant's [`source`](std::error::Error::source), so a caller
/// can get its own error back from a failed strategy or source:
///
/// ```
/// use std::error::Error as _;
///
/// #[derive(Debug)]
/// struct InventoryDown;
/// impl std::fmt::Display for InventoryDown {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("inventory service unavailable")
///     }
/// }
/// impl std::error::Error for InventoryDown {}
///
/// let err = parti::Error::Source(Box::new(InventoryDown));
/// assert_eq!(err.to_string(), "partition source failed: inventory service unavailable");
/// assert!(err.source().is_some_and(|cause| cause.is::<InventoryDown>()));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; every violation is listed, each with its field name.
    #[error("invalid configuration: {}", ConfigViolation::join(.violations))]
    InvalidConfig {
        /// All violations found (never empty).
        violations: Vec<ConfigViolation>,
    },
    /// A configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    ConfigFile {
        /// The file that was read.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Every stable ID in `[min, max]` is held by a live worker.
    #[error("stable ID pool exhausted: every ID in [{min}, {max}] is taken")]
    IdPoolExhausted {
        /// Lowest ID number of the pool.
        min: u32,
        /// Highest ID number of the pool.
        max: u32,
    },
    /// `start()` did not reach `Stable` within `startupTimeout`.
    #[error("startup timed out in state {state}")]
    StartupTimeout {
        /// The state the worker was stuck in.
        state: State,
    },
    /// [`Manager::wait_for_state`](crate::Manager::wait_for_state) (or `wait_for`) gave up:
    /// the awaited state was not reached within `timeout`.
    #[error("the awaited state was not reached within {timeout:?}; the worker is {state}")]
    StateTimeout {
        /// The state the worker was in when the time ran out.
        state: State,
        /// How long was waited.
        timeout: std::time::Duration,
    },
    /// The coordination store failed: NATS JetStream KV, or the backend behind a custom
    /// [`Store`](crate::store::Store). The [`StoreError`] says what went wrong (unreachable,
    /// timed out, a bucket missing, a revision conflict, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The assignment strategy failed.
    ///
    /// The cause is kept as the error's [`source`](std::error::Error::source): a custom
    /// strategy can return its own error type (`Error::Strategy(Box::new(my_error))`) and the
    /// caller can downcast it back; a plain message converts with `.into()`.
    #[error("assignment strategy failed: {0}")]
    Strategy(#[source] BoxError),
    /// The partition source failed (or did not answer within the controller's deadline).
    ///
    /// The cause is kept as the error's [`source`](std::error::Error::source), as for
    /// [`Strategy`](Self::Strategy). When a source returns another `parti::Error` (say a store
    /// failure, [`Store`](Self::Store)), that error is the source.
    #[error("partition source failed: {0}")]
    Source(#[source] BoxError),
    /// A partition is malformed, or a partition list contains a duplicate.
    #[error("invalid partition {partition:?}: {reason}")]
    InvalidPartition {
        /// The partition's keys, joined with `.` (or the raw input when it could not be read).
        partition: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value read from a KV bucket could not be decoded.
    #[error("cannot decode value of {bucket}/{key}: {reason}")]
    Decode {
        /// The bucket the value came from.
        bucket: String,
        /// The key of the value.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// This worker lost leadership while acting as leader.
    #[error("leadership lost")]
    LeadershipLost,
    /// The manager is shutting down or has shut down.
    #[error("the manager is shut down")]
    Shutdown,
    /// A JetStream consumer operation failed: the stream is missing, the server refused a
    /// consumer configuration, or NATS is unreachable.
    ///
    /// `context` names what was being done (e.g. `stream EVENTS`, `update consumer`); the
    /// cause is the error's [`source`](std::error::Error::source), for NATS failures the
    /// `async-nats` error itself, so a caller can downcast it.
    #[error("JetStream consumer: {context}: {source}")]
    Consumer {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// An assignment renders to more filter subjects than `maxSubjects` allows.
    #[error("the assignment needs {count} filter subjects, more than maxSubjects ({max})")]
    TooManySubjects {
        /// Distinct subjects the assignment renders to.
        count: usize,
        /// The configured `maxSubjects`.
        max: usize,
    },
    /// A consumer was asked to follow another worker ID than the one it started with, and
    /// `allowWorkerIdChange` is off.
    #[error("worker ID changed from {from} to {to} (allow it with allow_worker_id_change)")]
    WorkerIdChanged {
        /// The worker ID the consumer follows.
        from: WorkerId,
        /// The worker ID it was asked to follow.
        to: WorkerId,
    },
}

/// One violated configuration rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigViolation {
    /// The camelCase field path, e.g. `heartbeatTtl` or `assignment.minRebalanceInterval`.
    pub field: String,
    /// The rule that is violated.
    pub reason: String,
}

impl ConfigViolation {
    /// Creates a violation for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn join(violations: &[ConfigViolation]) -> String {
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for ConfigViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// An error of the coordination store (the KV layer under every primitive).
///
/// `Conflict` and `AlreadyExists` are the expected outcomes of a lost race and are what the
/// primitives branch on; the other variants are failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A revision-checked write found another revision (someone else wrote the key).
    #[error("revision conflict on {bucket}/{key}")]
    Conflict {
        /// Bucket name.
        bucket: String,
        /// Key name.
        key: String,
    },
    /// A create found a live value under the key.
    #[error("key {bucket}/{key} already exists")]
    AlreadyExists {
        /// Bucket name.
        bucket: String,
        /// Key name.
        key: String,
    },
    /// An operation did not complete within `operationTimeout`.
    #[error("{op} on {bucket} timed out")]
    Timeout {
        /// The operation, e.g. `update`.
        op: &'static str,
        /// Bucket name.
        bucket: String,
    },
    /// An existing bucket has settings Parti cannot work with.
    #[error("bucket {bucket} exists with incompatible settings: {reason}")]
    IncompatibleBucket {
        /// Bucket name.
        bucket: String,
        /// What differs.
        reason: String,
    },
    /// The bucket does not exist and the spec forbids creating it
    /// ([`BucketSpec::create_if_missing`](crate::store::BucketSpec::create_if_missing) off:
    /// `autoProvision: false`).
    #[error(
        "bucket {bucket} does not exist and is not created here (autoProvision is off): create it with `parti provision apply`"
    )]
    BucketMissing {
        /// Bucket name.
        bucket: String,
    },
    /// A value larger than the store accepts under one key (for NATS, the server's
    /// `max_payload` less room for headers). Nothing was written. For the leader's worker
    /// values it means one worker's share of the partitions is too large to publish: fewer or
    /// shorter partition keys per worker (more workers), or a larger `max_payload`.
    #[error("value of {size} bytes for {bucket}/{key} exceeds the store's limit of {limit} bytes")]
    ValueTooLarge {
        /// Bucket name.
        bucket: String,
        /// Key name.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// The largest value accepted, in bytes.
        limit: usize,
    },
    /// A key or bucket name is not valid for the store.
    #[error("invalid key or bucket name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The store is unreachable or failed for another reason.
    #[error("{op} on {bucket} failed: {source}")]
    Backend {
        /// The operation, e.g. `put`.
        op: &'static str,
        /// Bucket name.
        bucket: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// A failure of the store behind `bucket` while doing `op`, known only by its message.
    ///
    /// The message becomes the [`source`](std::error::Error::source) as text; when there is
    /// an error value, prefer [`backend_source`](Self::backend_source), which keeps it typed.
    pub fn backend(op: &'static str, bucket: &str, error: impl fmt::Display) -> Self {
        Self::backend_source(op, bucket, error.to_string())
    }

    /// A failure of the store behind `bucket` while doing `op`, caused by `source`.
    ///
    /// The cause stays typed, so a caller can downcast it:
    ///
    /// ```
    /// use std::error::Error as _;
    /// use parti::StoreError;
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
    /// let err = StoreError::backend_source("put", "parti-heartbeat", io);
    /// assert_eq!(err.to_string(), "put on parti-heartbeat failed: reset by peer");
    /// let cause = err.source().and_then(|e| e.downcast_ref::<std::io::Error>());
    /// assert_eq!(cause.map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionReset));
    /// ```
    pub fn backend_source(op: &'static str, bucket: &str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            op,
            bucket: bucket.to_owned(),
            source: source.into(),
        }
    }

    /// True for the outcome of a lost race (CAS conflict or create on an existing key), as
    /// opposed to a failure of the store.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::AlreadyExists { .. })
    }
}

/// Shorthand for `Result<T, parti::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
