//! The application's message handler and how its verdict becomes an acknowledgement.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use async_trait::async_trait;

use super::gate::Permit;
use super::health::HealthCell;
use crate::error::BoxError;

/// Who acknowledges messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AckMode {
    /// Ack when the handler returns `Ok`, nak when it returns `Err` (redelivered by JetStream).
    #[default]
    Auto,
    /// The handler acks (or naks, or extends) each message itself.
    Manual,
}

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

/// Redelivery delay of a gated message when no `nak_delay` is configured: a message of a
/// partition this worker does not hold comes back at most this often until the filters move.
pub(crate) const GATED_NAK_DELAY: Duration = Duration::from_secs(1);

impl Settle {
    /// The redelivery delay of a message the gate kept from the handler.
    pub(crate) fn gated_delay(self) -> Duration {
        self.nak_delay.unwrap_or(GATED_NAK_DELAY)
    }
}

/// Runs the handler on one message admitted by the gate and settles it; true when the
/// handler succeeded. The call counts as running (the `permit`) until the handler returns.
pub(crate) async fn dispatch(
    handler: &dyn MessageHandler,
    settle: Settle,
    message: &Message,
    health: &HealthCell,
    permit: Permit<'_>,
) -> bool {
    let result = handler.handle(message).await;
    drop(permit);
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

/// Settles a message the gate kept from the handler (its partition is not held): nak'ed with
/// [`Settle::gated_delay`], whatever the [`AckMode`], so that JetStream redelivers it — to
/// whoever consumes its subject by then.
pub(crate) async fn gated(settle: Settle, message: &Message, health: &HealthCell) {
    health.gated();
    nak_gated(settle, message).await;
}

/// The nak of [`gated`], uncounted.
pub(crate) async fn nak_gated(settle: Settle, message: &Message) {
    tracing::trace!(subject = %message.subject, "partition not held: message nak'ed");
    if let Err(e) = message
        .ack_with(AckKind::Nak(Some(settle.gated_delay())))
        .await
    {
        tracing::debug!(subject = %message.subject, error = %e, "nak of a gated message failed");
    }
}
