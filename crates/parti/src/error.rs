//! The one error type of the crate.

use std::fmt;

use crate::partition::WorkerId;
use crate::state::State;

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
    /// The manager has not been started (or has already stopped).
    #[error("the manager is not started")]
    NotStarted,
    /// `start()` was called on a manager that is already running.
    #[error("the manager is already started")]
    AlreadyStarted,
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
    /// The coordination store (NATS JetStream KV) failed.
    #[error(transparent)]
    Nats(#[from] StoreError),
    /// The assignment strategy failed.
    #[error("assignment strategy failed: {0}")]
    Strategy(String),
    /// The partition source failed.
    #[error("partition source failed: {0}")]
    Source(String),
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
    /// The worker is degraded: NATS is unreachable or failing.
    #[error("the worker is degraded (NATS unreachable or failing)")]
    Degraded,
    /// The manager is shutting down or has shut down.
    #[error("the manager is shut down")]
    Shutdown,
    /// A JetStream consumer operation failed: the stream is missing, the server refused a
    /// consumer configuration, or NATS is unreachable.
    #[error("JetStream consumer: {0}")]
    Consumer(String),
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
    /// A failure of the store behind `bucket` while doing `op`.
    pub fn backend(op: &'static str, bucket: &str, error: impl fmt::Display) -> Self {
        Self::Backend {
            op,
            bucket: bucket.to_owned(),
            source: error.to_string().into(),
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
