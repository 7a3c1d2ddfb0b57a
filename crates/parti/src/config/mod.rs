//! Configuration (SPEC §3).
//!
//! A [`Config`] is read from YAML with camelCase keys (compatible with the Go library's files),
//! optionally overlaid with `PARTI_…` environment variables, and validated as a whole:
//! [`Config::validate`] reports every violated rule, each with its field path.
//!
//! Choices where the spec is silent:
//! - Durations are strings (`"500ms"`, `"30s"`, `"1m30s"`, `"1.5s"`); bare numbers are refused.
//!   They are written back in the compact exact form (`"1m30s"`).
//! - `emergencyGracePeriod` left out (or `null`) means 1.5 × `heartbeatInterval`; an explicit
//!   `"0s"` means no grace at all (the Go library read 0 as "derive it").
//! - `coldStartMaxWindow` left out (or `null`) means 3 × `coldStartWindow`, but no more than
//!   halfway from `coldStartWindow` to `startupTimeout` (a worker that started first must still
//!   reach `Stable` within `startupTimeout`); set explicitly, it must be `≥ coldStartWindow` and
//!   `< startupTimeout`.
//! - `degradedBehavior` is a preset name or a mapping laid over a preset (see
//!   [`DegradedBehaviorConfig`]).
//! - An empty YAML document is the default configuration.
//! - Go names accepted as aliases: `electionTimeout` (→ `electionTtl`), `rebalanceCooldown`
//!   (inside `assignment:`, → `minRebalanceInterval`), `kvBuckets.stableIdBucket` /
//!   `electionBucket` / `heartbeatBucket` / `assignmentBucket`.
//! - Files of the Go library up to v2 load: its top-level `rebalanceCooldown` sets
//!   `assignment.minRebalanceInterval` and `handoff.timeout` sets `handoffTimeout` (each unless
//!   our own key is also set); its keys without a meaning here (`enableTwoPhaseHandoff`, the rest
//!   of `handoff`, `workerLabels`, `assignmentTtl`, `kvBuckets.handoffBucket` / `handoffTtl` /
//!   `assignmentTtl`) are accepted with a [`ConfigWarning`]. A key that is neither ours nor the
//!   Go library's is still an error, with a "did you mean" when a known key is close. The table
//!   is in `docs/configuration-go-compat.md`.
//! - The TTLs that become bucket `max_age`s (`workerIdTtl`, `heartbeatTtl`, `electionTtl`) must
//!   be at least 100ms, NATS's floor for a stream's `max_age`.

#[cfg(feature = "yaml")]
mod compat;
mod degraded;
mod duration;
mod env;
#[cfg(feature = "yaml")]
mod filter;
#[cfg(feature = "yaml")]
mod load;
mod sections;
mod suggest;
mod validate;

#[cfg(all(test, feature = "yaml"))]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(feature = "yaml")]
pub use compat::{ConfigWarning, LoadReport};
pub use degraded::{DegradedAlertConfig, DegradedBehaviorConfig, DegradedHolding, DegradedPreset};
pub use sections::{AssignmentConfig, KvBucketConfig, MovesPerStep, StepBudget};

/// Everything a worker's coordination can be tuned with.
///
/// Build one from [`Config::default()`] (production timings), `Config::fast_for_tests()` (`test-util` feature), or a
/// YAML file; [`validate`](Config::validate) it before use (the loaders do).
///
/// ```
/// use parti::Config;
/// use std::time::Duration;
///
/// let config = Config::from_yaml_str(
///     r#"
/// workerIdPrefix: ingest
/// heartbeatInterval: 1s
/// heartbeatTtl: 3s
/// electionTimeout: 5s          # the Go library's name for electionTtl
/// assignment:
///   minRebalanceInterval: 5s
/// kvBuckets:
///   replicas: 3
/// degradedBehavior: aggressive
/// "#,
/// )?;
/// assert_eq!(config.worker_id_prefix, "ingest");
/// assert_eq!(config.election_ttl, Duration::from_secs(5));
/// assert_eq!(config.emergency_grace_period(), Duration::from_millis(1500)); // 1.5 × heartbeat
/// assert_eq!(config.degraded_behavior.enter_threshold, Duration::from_secs(5));
///
/// // Every violation is reported, each with its field path.
/// let Err(parti::Error::InvalidConfig { violations }) =
///     Config::from_yaml_str("workerIdMin: 9\nworkerIdMax: 1\nkvBuckets: { replicas: 7 }")
/// else {
///     panic!("expected an invalid configuration");
/// };
/// let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
/// assert_eq!(fields, ["workerIdMin", "kvBuckets.replicas"]);
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Prefix of stable worker IDs, `"{prefix}-{n}"` (default `worker`; `[A-Za-z0-9_-]+`).
    pub worker_id_prefix: String,
    /// Lowest stable ID number (default 0; `≤ workerIdMax`).
    pub worker_id_min: u32,
    /// Highest stable ID number (default 99).
    pub worker_id_max: u32,
    /// Lease of a stable ID, renewed every third of it (default 30s; `≥ 3 × heartbeatInterval`,
    /// `≥ heartbeatTtl`).
    #[serde(with = "duration")]
    pub worker_id_ttl: Duration,
    /// Interval between heartbeats (default 2s; `> 0`).
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A worker whose heartbeat is older than this has crashed (default 6s;
    /// `≥ 2 × heartbeatInterval`).
    #[serde(with = "duration")]
    pub heartbeat_ttl: Duration,
    /// How long the leader waits after the first join of a cold start (or full restart) before
    /// the first assignment, at least (default 30s; `≥ plannedScaleWindow`). While joins keep
    /// arriving the wait stretches, see `coldStartQuiet`.
    #[serde(with = "duration")]
    pub cold_start_window: Duration,
    /// A join less than this before the end of a cold-start (or full-restart) window pushes the
    /// end back by this much, up to `coldStartMaxWindow`: a fleet whose starts spread over more
    /// than `coldStartWindow` still gets one first assignment (default 5s; `0s` turns the
    /// stretching off). Crash handling is not delayed by it.
    #[serde(with = "duration")]
    pub cold_start_quiet: Duration,
    /// The longest a cold-start (or full-restart) window may stretch to, from the first join;
    /// `None` (the default) means 3 × `coldStartWindow`, but no more than halfway from
    /// `coldStartWindow` to `startupTimeout` (45s with the defaults). Read it through
    /// [`cold_start_max_window()`](Config::cold_start_max_window). `≥ coldStartWindow`,
    /// `< startupTimeout`; equal to `coldStartWindow`, windows never stretch.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cold_start_max_window: Option<Duration>,
    /// How long joins and graceful leaves are batched before one rebalance (default 10s).
    #[serde(with = "duration")]
    pub planned_scale_window: Duration,
    /// How long a crashed worker must stay gone before its partitions are reassigned; `None`
    /// (the default) means 1.5 × `heartbeatInterval`. Read it through
    /// [`emergency_grace_period()`](Config::emergency_grace_period). `≤ heartbeatTtl`.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub emergency_grace_period: Option<Duration>,
    /// A restart of a cluster of at least `restartMinWorkers` workers in which fewer than this
    /// fraction are active is treated as a cold start (default 0.5; in `(0, 1]`).
    pub restart_detection_ratio: f64,
    /// Smallest previous cluster size for which full-restart detection applies (default 10;
    /// `≥ 1`).
    pub restart_min_workers: u32,
    /// Lease of the leader, renewed every third of it (default 10s; `> heartbeatInterval`).
    /// Alias: `electionTimeout` (Go).
    #[serde(with = "duration", alias = "electionTimeout")]
    pub election_ttl: Duration,
    /// Bound on `start()` reaching `Stable` (default 60s; `> coldStartWindow`, since a cold
    /// start is not Stable before its window closes).
    #[serde(with = "duration")]
    pub startup_timeout: Duration,
    /// A random delay, uniform in `[0, startJitter]`, before a worker's first call to NATS
    /// (opening the buckets, then claiming its stable ID) (default 0: none; `< startupTimeout`,
    /// and it counts towards it). Spreads the start-up calls of a fleet started at once (a
    /// rollout of hundreds of pods) over this time instead of one burst.
    #[serde(with = "duration")]
    pub start_jitter: Duration,
    /// How long a worker gathers the changes its assignment watch delivers before acting on
    /// them (default 0: at once; `< heartbeatTtl`). The first change of a burst is acted on
    /// this long after it arrived, together with everything that arrived meanwhile — a
    /// publish, its commit and the phase change after it become one reaction (one hook call,
    /// one consumer update) instead of several. It delays hand-offs by at most this much.
    #[serde(with = "duration")]
    pub assignment_debounce: Duration,
    /// JetStream API calls per second that the whole fleet's
    /// [`WorkerConsumer`](crate::WorkerConsumer) create and update calls may make together
    /// (default 0: no limit). Each worker takes its share — this rate divided by the number of
    /// workers in the latest published map — and makes its calls on a grid of that spacing, at
    /// a random offset of its own, so a fleet started (or re-assigned) at once spreads its
    /// consumer calls over one spacing instead of sending them in one burst. Changes that
    /// arrive while a call waits for its turn are merged into it. Costs latency: with 200
    /// workers at 100 calls/s a worker's consumer follows its assignment up to 2 s late
    /// (holding is not affected: the local gate changes at once). On a work-queue stream keep
    /// that spacing well below the consumer's `takeoverAfter`, or gainers take subjects over
    /// from healthy workers whose release is still waiting for its turn. A call that waits
    /// for its turn reports a failure in the consumer's health and the log, not as an
    /// [`Event::Error`](crate::Event::Error).
    pub consumer_api_rate: f64,
    /// Whether a worker creates the KV buckets that do not exist (default `true`), at start and
    /// when one is deleted under it. `false` for fleets whose buckets are provisioned by an
    /// operator (`parti provision apply`): a missing bucket then fails the start with
    /// [`StoreError::BucketMissing`](crate::StoreError::BucketMissing), and one deleted while
    /// running keeps the workers Degraded (`bucketMissing`) until it is back.
    pub auto_provision: bool,
    /// Bound on a graceful `stop()` (default 10s; `> 0`).
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Bound on every single KV call (default 5s; `> 0`).
    #[serde(with = "duration")]
    pub operation_timeout: Duration,
    /// How long the leader waits for a worker to release a partition it moved elsewhere
    /// (default 30s; `> 0`). A worker that has not released by then (a handler call or hook
    /// that does not return) is *expelled*: its lease is revoked, and the partition goes to its
    /// new holder once that lease has provably run out, one `heartbeatTtl` later.
    #[serde(with = "duration")]
    pub handoff_timeout: Duration,
    /// What a worker whose lease ran out (NATS unreachable, paused) may still process
    /// (default `fence`, see [`DegradedHolding`]).
    pub degraded_holding: DegradedHolding,
    /// This worker's share of the load relative to the others (default 1.0; from 0.01 to
    /// 10000, kept to two decimals): a worker of capacity 2.0 is given twice the load of one of
    /// 1.0 (see [`profile`](crate::profile)).
    pub capacity: f64,
    /// The labels whose partitions this worker may receive (default none; at most 16, each 1
    /// to 64 bytes without whitespace or commas, see
    /// [`check_label`](crate::partition::check_label)). A list, or in the environment a
    /// comma-separated text (`PARTI_LABELS=gpu,zone-a`). Go Parti's `workerLabels` is read as
    /// this. See [`profile`](crate::profile).
    #[serde(deserialize_with = "labels_list")]
    pub labels: Vec<String>,
    /// Rebalancing cadence.
    pub assignment: AssignmentConfig,
    /// KV bucket names and replicas.
    pub kv_buckets: KvBucketConfig,
    /// When to enter and leave degraded mode.
    pub degraded_behavior: DegradedBehaviorConfig,
    /// When to alert while degraded.
    pub degraded_alert: DegradedAlertConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            worker_id_prefix: "worker".to_owned(),
            worker_id_min: 0,
            worker_id_max: 99,
            worker_id_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_ttl: Duration::from_secs(6),
            cold_start_window: Duration::from_secs(30),
            cold_start_quiet: Duration::from_secs(5),
            cold_start_max_window: None,
            planned_scale_window: Duration::from_secs(10),
            emergency_grace_period: None,
            restart_detection_ratio: 0.5,
            restart_min_workers: 10,
            election_ttl: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(60),
            start_jitter: Duration::ZERO,
            assignment_debounce: Duration::ZERO,
            consumer_api_rate: 0.0,
            auto_provision: true,
            shutdown_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(5),
            handoff_timeout: Duration::from_secs(30),
            degraded_holding: DegradedHolding::Fence,
            capacity: 1.0,
            labels: Vec::new(),
            assignment: AssignmentConfig::default(),
            kv_buckets: KvBucketConfig::default(),
            degraded_behavior: DegradedBehaviorConfig::default(),
            degraded_alert: DegradedAlertConfig::default(),
        }
    }
}

/// `labels` as a list, or as one comma-separated text (how the environment sets it).
fn labels_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(list) => list,
        Raw::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Config {
    /// This worker's [`WorkerProfile`](crate::WorkerProfile): `capacity` and `labels`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the capacity is out of range
    /// or a label is not valid.
    pub fn profile(&self) -> crate::error::Result<crate::WorkerProfile> {
        let mut violations = Vec::new();
        let capacity = crate::Capacity::new(self.capacity).unwrap_or_else(|_| {
            violations.push(crate::ConfigViolation::new(
                "capacity",
                format!(
                    "{} must be a number from {} to {}",
                    self.capacity,
                    crate::Capacity::MIN,
                    crate::Capacity::MAX
                ),
            ));
            crate::Capacity::DEFAULT
        });
        let mut profile = crate::WorkerProfile::new().with_capacity(capacity);
        for label in &self.labels {
            match crate::partition::check_label(label) {
                Ok(()) => {
                    profile.labels.insert(label.clone());
                }
                Err(why) => violations.push(crate::ConfigViolation::new("labels", why)),
            }
        }
        if profile.labels.len() > crate::partition::MAX_WORKER_LABELS {
            violations.push(crate::ConfigViolation::new(
                "labels",
                crate::profile::too_many_labels(),
            ));
        }
        if violations.is_empty() {
            Ok(profile)
        } else {
            Err(crate::Error::InvalidConfig { violations })
        }
    }

    /// Timings for tests against a real NATS server: heartbeats every 200ms, crash detection
    /// within about a second, windows of a few hundred milliseconds. Valid under
    /// [`validate`](Config::validate). Needs the `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn fast_for_tests() -> Self {
        let ms = Duration::from_millis;
        Self {
            worker_id_ttl: ms(2_000),
            heartbeat_interval: ms(200),
            heartbeat_ttl: ms(600),
            cold_start_window: ms(1_000),
            cold_start_quiet: ms(300),
            planned_scale_window: ms(500),
            election_ttl: ms(1_000),
            startup_timeout: ms(10_000),
            shutdown_timeout: ms(2_000),
            operation_timeout: ms(1_000),
            handoff_timeout: ms(2_000),
            assignment: AssignmentConfig {
                min_rebalance_interval: ms(100),
                ..AssignmentConfig::default()
            },
            degraded_behavior: DegradedBehaviorConfig {
                enter_threshold: ms(1_000),
                exit_threshold: ms(500),
                kv_error_threshold: 3,
                kv_error_window: ms(2_000),
                recovery_grace_period: ms(1_000),
            },
            degraded_alert: DegradedAlertConfig {
                info_threshold: ms(500),
                warn_threshold: ms(1_000),
                error_threshold: ms(2_000),
                critical_threshold: ms(3_000),
                alert_interval: ms(500),
            },
            ..Self::default()
        }
    }

    /// The effective emergency grace period: the configured one, or 1.5 × `heartbeatInterval`.
    pub fn emergency_grace_period(&self) -> Duration {
        self.emergency_grace_period
            .unwrap_or_else(|| self.heartbeat_interval.saturating_mul(3) / 2)
    }

    /// The effective longest cold-start window: the configured one, or 3 × `coldStartWindow`
    /// but no more than halfway from `coldStartWindow` to `startupTimeout` (so that a worker
    /// that started first still reaches `Stable` in time), and never less than
    /// `coldStartWindow`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut config = parti::Config::default(); // window 30s, startup timeout 60s
    /// assert_eq!(config.cold_start_max_window(), Duration::from_secs(45));
    /// config.startup_timeout = Duration::from_secs(600);
    /// assert_eq!(config.cold_start_max_window(), Duration::from_secs(90));
    /// config.cold_start_max_window = Some(Duration::from_secs(120));
    /// assert_eq!(config.cold_start_max_window(), Duration::from_secs(120));
    /// ```
    pub fn cold_start_max_window(&self) -> Duration {
        let window = self.cold_start_window;
        self.cold_start_max_window.unwrap_or_else(|| {
            let halfway = window.saturating_add(self.startup_timeout.saturating_sub(window) / 2);
            window.saturating_mul(3).min(halfway).max(window)
        })
    }

    /// How often the leader renews its lease: a third of `electionTtl`.
    pub fn election_renew_interval(&self) -> Duration {
        self.election_ttl / 3
    }

    /// How often a worker renews its stable ID: a third of `workerIdTtl`.
    pub fn stable_id_renew_interval(&self) -> Duration {
        self.worker_id_ttl / 3
    }

    /// The specs of the four KV buckets a worker with this configuration opens, in the order
    /// stable ID, election, heartbeat, assignment (that of [`KvBucketConfig::names`]): the first
    /// three expire after `workerIdTtl`, `electionTtl` and `heartbeatTtl` with limit markers, the
    /// assignment bucket never expires; all have history 1 and `kvBuckets.replicas` replicas.
    /// Each accepts at least four watches per ID of the pool, plus 64 (see
    /// [`BucketSpec::min_consumers`](crate::store::BucketSpec::min_consumers)): a worker keeps
    /// up to three on the assignment bucket while leading, and resyncs briefly overlap.
    ///
    /// ```
    /// use std::time::Duration;
    /// let [stable_id, election, heartbeat, assignment] = parti::Config::default().bucket_specs();
    /// assert_eq!(stable_id.name, "parti-stableid");
    /// assert_eq!(election.max_age, Some(Duration::from_secs(10)));
    /// assert_eq!(heartbeat.max_age, Some(Duration::from_secs(6)));
    /// assert_eq!((assignment.max_age, assignment.limit_markers), (None, false));
    /// ```
    pub fn bucket_specs(&self) -> [crate::store::BucketSpec; 4] {
        let b = &self.kv_buckets;
        let pool = self
            .worker_id_max
            .saturating_sub(self.worker_id_min)
            .saturating_add(1);
        let consumers = pool.saturating_mul(4).saturating_add(64);
        [
            crate::stable_id::bucket_spec(&b.stable_id, self.worker_id_ttl, b.replicas),
            crate::election::bucket_spec(&b.election, self.election_ttl, b.replicas),
            crate::heartbeat::bucket_spec(&b.heartbeat, self.heartbeat_ttl, b.replicas),
            crate::store::BucketSpec::new(b.assignment.clone()).replicas(b.replicas),
        ]
        .map(|spec| {
            spec.min_consumers(consumers)
                .create_if_missing(self.auto_provision)
        })
    }
}

/// An [`Error::InvalidConfig`](crate::Error::InvalidConfig) with one violation.
pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> crate::Error {
    crate::Error::InvalidConfig {
        violations: vec![crate::ConfigViolation::new(field, reason)],
    }
}
