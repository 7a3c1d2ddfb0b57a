//! The application's message handler and how its verdict becomes an acknowledgement.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use async_trait::async_trait;

use super::config::AckMode;
use super::health::HealthCell;
use crate::error::BoxError;

/// Processes one message of an owned partition.
///
/// With [`AckMode::Auto`] (the default) `Ok` acks the message and `Err` naks it, so that
/// JetStream redelivers it; with [`AckMode::Manual`] the handler acks itself. A message may be
/// handled more than once (at-least-once delivery: after a crash, a failed ack, or when a
/// partition changes hands), so handlers should be idempotent.
///
/// Any `Fn(Message) -> impl Future<Output = Result<(), BoxError>>` closure is a handler:
///
/// ```
/// use async_nats::jetstream::Message;
/// use parti::consumer::MessageHandler;
///
/// fn assert_handler(_: impl MessageHandler) {}
/// assert_handler(|msg: Message| async move {
///     println!("{}: {} bytes", msg.subject, msg.payload.len());
///     Ok::<(), parti::error::BoxError>(())
/// });
/// ```
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message; the result decides the ack in [`AckMode::Auto`].
    async fn handle(&self, message: &Message) -> Result<(), BoxError>;
}

#[async_trait]
impl<F, Fut> MessageHandler for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    async fn handle(&self, message: &Message) -> Result<(), BoxError> {
        self(message.clone()).await
    }
}

/// How the message loop and the catch-up drains settle a message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settle {
    pub(crate) mode: AckMode,
    pub(crate) nak_delay: Option<Duration>,
}

/// Runs the handler on one message and settles it; true when the handler succeeded.
pub(crate) async fn dispatch(
    handler: &dyn MessageHandler,
    settle: Settle,
    message: &Message,
    health: &HealthCell,
) -> bool {
    let result = handler.handle(message).await;
    let ok = result.is_ok();
    let ack = match (&result, settle.mode) {
        (Ok(()), AckMode::Auto) => Some(AckKind::Ack),
        (Err(_), AckMode::Auto) => Some(AckKind::Nak(settle.nak_delay)),
        (_, AckMode::Manual) => None,
    };
    match result {
        Ok(()) => health.processed(),
        Err(e) => {
            tracing::debug!(subject = %message.subject, error = %e, "handler failed");
            health.failed();
        }
    }
    if let Some(kind) = ack
        && let Err(e) = message.ack_with(kind).await
    {
        // The message is redelivered after ackWait: at-least-once still holds.
        tracing::debug!(subject = %message.subject, error = %e, "ack failed");
    }
    ok
}
