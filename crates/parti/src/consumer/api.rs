//! The few JetStream calls the consumer makes, with the outcomes it branches on.

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, FromConsumer, IntoConsumerConfig, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{
    ConsumerErrorKind, ConsumerResetErrorKind, ConsumerUpdateErrorKind, LastRawMessageErrorKind,
    Stream,
};
use futures::TryStreamExt;

use crate::error::{BoxError, Error};

/// What a call's failure means to the caller.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The consumer does not exist.
    NotFound,
    /// A work-queue stream refused a filter that overlaps another consumer's.
    Overlap,
    /// Anything else (server error, timeout, no connection): what was being done, and the
    /// cause (the `async-nats` error where there is one).
    Other {
        /// What was being done, e.g. `update consumer`.
        what: String,
        /// Why it failed.
        source: BoxError,
    },
}

const NOT_FOUND: &str = "consumer not found";
const OVERLAP: &str = "filter overlaps another consumer of the work-queue stream";

impl ApiError {
    pub(crate) fn other(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Other {
            what: what.into(),
            source: source.into(),
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Self::NotFound => NOT_FOUND.into(),
            Self::Overlap => OVERLAP.into(),
            Self::Other { what, source } => format!("{what}: {source}"),
        }
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        let (context, source): (String, BoxError) = match e {
            ApiError::NotFound => ("durable consumer".into(), NOT_FOUND.into()),
            ApiError::Overlap => ("filter update".into(), OVERLAP.into()),
            ApiError::Other { what, source } => (what, source),
        };
        Error::Consumer { context, source }
    }
}

fn overlap_or(e: async_nats::jetstream::Error, what: &str) -> ApiError {
    if e.error_code() == ErrorCode::CONSUMER_WQ_CONSUMER_NOT_UNIQUE {
        ApiError::Overlap
    } else {
        ApiError::other(what, e)
    }
}

/// The consumer, or `None` when it does not exist.
pub(crate) async fn get(stream: &Stream, name: &str) -> Result<Option<PullConsumer>, ApiError> {
    match stream.get_consumer::<pull::Config>(name).await {
        Ok(c) => Ok(Some(c)),
        Err(e) => match e.downcast_ref::<async_nats::jetstream::context::ConsumerInfoError>() {
            Some(info) if info.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
            _ => Err(ApiError::other("consumer info", e)),
        },
    }
}

/// Creates the consumer, or updates it if it exists.
pub(crate) async fn create(
    stream: &Stream,
    config: pull::Config,
) -> Result<PullConsumer, ApiError> {
    stream
        .create_consumer(config)
        .await
        .map_err(|e| match e.kind() {
            ConsumerErrorKind::JetStream(js) => overlap_or(js, "create consumer"),
            _ => ApiError::other("create consumer", e),
        })
}

/// Updates an existing consumer in place.
pub(crate) async fn update<C>(
    stream: &Stream,
    config: C,
) -> Result<async_nats::jetstream::consumer::Consumer<C>, ApiError>
where
    C: IntoConsumerConfig + FromConsumer,
{
    stream
        .update_consumer(config)
        .await
        .map_err(|e| match e.kind() {
            ConsumerUpdateErrorKind::DoesNotExist => ApiError::NotFound,
            ConsumerUpdateErrorKind::JetStream(js) => overlap_or(js, "update consumer"),
            _ => ApiError::other("update consumer", e),
        })
}

/// Every consumer of the stream.
pub(crate) async fn list(stream: &Stream) -> Result<Vec<consumer::Info>, ApiError> {
    stream
        .consumers()
        .try_collect()
        .await
        .map_err(|e| ApiError::other("list consumers", e))
}

/// Moves the consumer back so that the next delivered message has a sequence ≥ `seq`
/// (ADR-60, nats-server ≥ 2.14).
pub(crate) async fn reset(stream: &Stream, name: &str, seq: u64) -> Result<(), ApiError> {
    match stream.reset_consumer(name, Some(seq)).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ConsumerResetErrorKind::NotFound => Err(ApiError::NotFound),
        Err(e) => Err(ApiError::other("reset consumer", e)),
    }
}

/// Sequence of the oldest message stored for `subject`, if any.
pub(crate) async fn first_seq(stream: &Stream, subject: &str) -> Result<Option<u64>, ApiError> {
    match stream.get_first_raw_message_by_subject(subject, 1).await {
        Ok(m) => Ok(Some(m.sequence)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(ApiError::other("get message", e)),
    }
}

/// The stream's last sequence.
pub(crate) async fn last_seq(stream: &Stream) -> Result<u64, ApiError> {
    stream
        .get_info()
        .await
        .map(|info| info.state.last_sequence)
        .map_err(|e| ApiError::other("stream info", e))
}

/// Deletes a consumer; a missing one is fine.
pub(crate) async fn delete(stream: &Stream, name: &str) -> Result<(), ApiError> {
    match stream.delete_consumer(name).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            ConsumerErrorKind::JetStream(js)
                if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND =>
            {
                Ok(())
            }
            _ => Err(ApiError::other("delete consumer", e)),
        },
    }
}

/// Stops the consumer's delivery until `bound` from now at the latest (any configuration
/// write without a pause, or [`resume`], ends it sooner).
pub(crate) async fn pause(
    stream: &Stream,
    name: &str,
    bound: std::time::Duration,
) -> Result<(), ApiError> {
    let until = async_nats::datetime::add_std_duration(async_nats::datetime::now(), bound)
        .map_err(|e| ApiError::other("pause consumer", e))?;
    stream
        .pause_consumer(name, until)
        .await
        .map(|_| ())
        .map_err(|e| not_found_or(e, "pause consumer"))
}

/// Ends a [`pause`].
pub(crate) async fn resume(stream: &Stream, name: &str) -> Result<(), ApiError> {
    stream
        .resume_consumer(name)
        .await
        .map(|_| ())
        .map_err(|e| not_found_or(e, "resume consumer"))
}

fn not_found_or(e: async_nats::jetstream::stream::ConsumerError, what: &str) -> ApiError {
    match e.kind() {
        ConsumerErrorKind::JetStream(js) if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {
            ApiError::NotFound
        }
        _ => ApiError::other(what, e),
    }
}

/// The filter subjects of a consumer's configuration (`filter_subject` or `filter_subjects`).
pub(crate) fn info_filters(config: &consumer::Config) -> Vec<String> {
    let mut all = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        all.push(config.filter_subject.clone());
    }
    all
}
