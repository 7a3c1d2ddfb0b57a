//! Waiting on conditions with a deadline, so tests never rely on bare sleeps.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::TestkitError;

/// How often conditions are re-evaluated.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` every ~20 ms until it yields `true`, and returns how long that took.
///
/// A condition that hangs is cut off at the deadline. On timeout the error names `what`, so
/// phrase it as the thing awaited ("the bucket to be writable").
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), parti_testkit::TestkitError> {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// let calls = Arc::new(AtomicU32::new(0));
/// let elapsed = parti_testkit::wait_until(Duration::from_secs(5), "the third call", || {
///     let calls = calls.clone();
///     async move { calls.fetch_add(1, Ordering::SeqCst) >= 2 }
/// })
/// .await?;
/// assert!(elapsed < Duration::from_secs(5));
/// # Ok(())
/// # }
/// ```
pub async fn wait_until<F, Fut>(
    deadline: Duration,
    what: &str,
    mut condition: F,
) -> Result<Duration, TestkitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let end = start + deadline;
    loop {
        if let Ok(true) = tokio::time::timeout_at(end, condition()).await {
            return Ok(start.elapsed());
        }
        if Instant::now() >= end {
            return Err(TestkitError::Timeout {
                what: what.to_owned(),
                waited: deadline,
            });
        }
        tokio::time::sleep(POLL_INTERVAL.min(end - Instant::now())).await;
    }
}

/// [`wait_until`] for a plain (non-async) condition; still awaits between polls.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), parti_testkit::TestkitError> {
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// parti_testkit::wait_until_sync(Duration::from_secs(5), "50 ms to pass", || {
///     start.elapsed() >= Duration::from_millis(50)
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn wait_until_sync<F>(
    deadline: Duration,
    what: &str,
    mut condition: F,
) -> Result<Duration, TestkitError>
where
    F: FnMut() -> bool,
{
    wait_until(deadline, what, || std::future::ready(condition())).await
}
