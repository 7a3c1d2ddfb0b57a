//! [`ConsumerConfig`] (the defaults of SPEC §9) and the [`WorkerConsumerBuilder`].

use std::sync::Arc;
use std::time::Duration;

use super::WorkerConsumer;
use super::handler::{AckMode, MessageHandler};
use super::subjects::{is_valid_name, template_problem};
use crate::error::{ConfigViolation, Error, Result};

/// Settings of a [`WorkerConsumer`]; [`Default`] gives the defaults of SPEC §9.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The stream to consume (must exist).
    pub stream: String,
    /// Filter subject per partition; `{partition}` becomes
    /// [`Partition::subject_key`](crate::Partition::subject_key). Default `events.{partition}`.
    pub subject_template: String,
    /// Durable consumers are named `{consumer_prefix}-{workerId}` (sanitised). Default `parti`.
    pub consumer_prefix: String,
    /// Most filter subjects one worker may own; more is [`Error::TooManySubjects`]. Default 500.
    pub max_subjects: usize,
    /// Whether the consumer may follow a new worker ID (after the manager lost and re-claimed
    /// its ID); otherwise that is [`Error::WorkerIdChanged`]. Default `false`.
    pub allow_worker_id_change: bool,
    /// Who acknowledges messages. Default [`AckMode::Auto`].
    pub ack_mode: AckMode,
    /// How long JetStream waits for an ack before redelivering. Default 30 s.
    pub ack_wait: Duration,
    /// Most unacknowledged messages in flight per consumer. Default 1000.
    pub max_ack_pending: i64,
    /// Messages asked for per pull request. Default 200.
    pub batch: usize,
    /// Delay before a nak'ed message is redelivered (`None`: at once). Default `None`.
    pub nak_delay: Option<Duration>,
    /// On a work-queue stream, how long an overlapping consumer of the same prefix may keep a
    /// subject this worker was assigned before the subject is taken from it (it belongs to a
    /// crashed or stuck worker). Default 5 s.
    pub takeover_after: Duration,
    /// How often the durable consumer is checked (deleted? filter changed behind our back?).
    /// Default 5 s.
    pub check_interval: Duration,
    /// Bound on [`WorkerConsumer::close`] (waiting for the message in flight, releasing the
    /// subjects). Default 10 s.
    pub close_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            stream: String::new(),
            subject_template: "events.{partition}".into(),
            consumer_prefix: "parti".into(),
            max_subjects: 500,
            allow_worker_id_change: false,
            ack_mode: AckMode::Auto,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            batch: 200,
            nak_delay: None,
            takeover_after: Duration::from_secs(5),
            check_interval: Duration::from_secs(5),
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsumerConfig {
    /// Every violated rule, each with its field name.
    ///
    /// ```
    /// let mut config = parti::consumer::ConsumerConfig::default();
    /// config.stream = "EVENTS".into();
    /// assert!(config.validate().is_ok());
    /// config.subject_template = "events".into();
    /// assert!(config.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let mut violations = Vec::new();
        let mut check = |ok: bool, field: &str, reason: String| {
            if !ok {
                violations.push(ConfigViolation::new(format!("consumer.{field}"), reason));
            }
        };
        check(
            is_valid_name(&self.stream),
            "stream",
            format!("{:?} is not a valid stream name", self.stream),
        );
        let template = template_problem(&self.subject_template);
        check(
            template.is_none(),
            "subjectTemplate",
            template.unwrap_or_default(),
        );
        let prefix_ok = !self.consumer_prefix.is_empty()
            && self
                .consumer_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        check(
            prefix_ok,
            "consumerPrefix",
            "must match [A-Za-z0-9_-]+".into(),
        );
        check(
            self.max_subjects > 0,
            "maxSubjects",
            "must be at least 1".into(),
        );
        check(self.batch > 0, "batch", "must be at least 1".into());
        check(
            self.max_ack_pending > 0,
            "maxAckPending",
            "must be at least 1".into(),
        );
        for (field, value) in [
            ("ackWait", self.ack_wait),
            ("takeoverAfter", self.takeover_after),
            ("checkInterval", self.check_interval),
            ("closeTimeout", self.close_timeout),
        ] {
            check(!value.is_zero(), field, "must be greater than 0".into());
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { violations })
        }
    }
}

/// Builds a [`WorkerConsumer`]; start with [`WorkerConsumer::builder`].
#[must_use]
pub struct WorkerConsumerBuilder {
    jetstream: async_nats::jetstream::Context,
    config: ConsumerConfig,
    handler: Option<Arc<dyn MessageHandler>>,
}

impl std::fmt::Debug for WorkerConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConsumerBuilder")
            .field("config", &self.config)
            .field("handler", &self.handler.is_some())
            .finish_non_exhaustive()
    }
}

impl WorkerConsumerBuilder {
    pub(crate) fn new(jetstream: async_nats::jetstream::Context, stream: &str) -> Self {
        Self {
            jetstream,
            config: ConsumerConfig {
                stream: stream.to_owned(),
                ..ConsumerConfig::default()
            },
            handler: None,
        }
    }

    /// Replaces every setting at once (the stream name included).
    pub fn config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`ConsumerConfig::subject_template`].
    pub fn subject_template(mut self, template: impl Into<String>) -> Self {
        self.config.subject_template = template.into();
        self
    }

    /// See [`ConsumerConfig::consumer_prefix`].
    pub fn consumer_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.consumer_prefix = prefix.into();
        self
    }

    /// See [`ConsumerConfig::max_subjects`].
    pub fn max_subjects(mut self, max: usize) -> Self {
        self.config.max_subjects = max;
        self
    }

    /// See [`ConsumerConfig::allow_worker_id_change`].
    pub fn allow_worker_id_change(mut self, allow: bool) -> Self {
        self.config.allow_worker_id_change = allow;
        self
    }

    /// See [`ConsumerConfig::ack_mode`].
    pub fn ack_mode(mut self, mode: AckMode) -> Self {
        self.config.ack_mode = mode;
        self
    }

    /// See [`ConsumerConfig::ack_wait`].
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.config.ack_wait = wait;
        self
    }

    /// See [`ConsumerConfig::max_ack_pending`].
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.config.max_ack_pending = max;
        self
    }

    /// See [`ConsumerConfig::batch`].
    pub fn batch(mut self, batch: usize) -> Self {
        self.config.batch = batch;
        self
    }

    /// See [`ConsumerConfig::nak_delay`].
    pub fn nak_delay(mut self, delay: Duration) -> Self {
        self.config.nak_delay = Some(delay);
        self
    }

    /// See [`ConsumerConfig::takeover_after`].
    pub fn takeover_after(mut self, after: Duration) -> Self {
        self.config.takeover_after = after;
        self
    }

    /// See [`ConsumerConfig::check_interval`].
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.config.check_interval = interval;
        self
    }

    /// See [`ConsumerConfig::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// The message handler (required).
    pub fn handler(mut self, handler: impl MessageHandler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Same as [`handler`](Self::handler), for a shared handler.
    pub fn handler_arc(mut self, handler: Arc<dyn MessageHandler>) -> Self {
        self.handler = Some(handler);
        self
    }

    /// Validates the settings, looks the stream up and starts the (idle) consumer. The durable
    /// consumer is created by the first [`WorkerConsumer::update_assignment`], which names the
    /// worker.
    ///
    /// Errors: [`Error::InvalidConfig`] (bad settings, no handler), [`Error::Consumer`] (the
    /// stream does not exist or NATS is unreachable).
    pub async fn build(self) -> Result<WorkerConsumer> {
        let handler = match self.handler {
            Some(handler) => handler,
            None => {
                return Err(Error::InvalidConfig {
                    violations: vec![ConfigViolation::new(
                        "consumer.handler",
                        "a message handler is required",
                    )],
                });
            }
        };
        self.config.validate()?;
        WorkerConsumer::start(self.jetstream, self.config, handler).await
    }
}
