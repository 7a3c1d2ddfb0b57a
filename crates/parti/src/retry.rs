//! Waiting between attempts: the crate's retry loops take their delays from here, built on
//! `backon` (as do the consumer's jittered back-off and the revision-conflict policy of
//! `store::conflict_backoff`), so there is one policy per kind of wait rather than one
//! hand-written doubling per loop.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Delays that start at `first` and double up to `max`, for ever (no jitter: these are
/// per-process waits for a store to come back, not a fleet contending for one key).
pub(crate) fn doubling(first: Duration, max: Duration) -> Delays {
    Delays {
        inner: ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(max)
            .without_max_times()
            .build(),
        max,
    }
}

/// An endless sequence of delays (see [`doubling`]).
#[derive(Debug)]
pub(crate) struct Delays {
    inner: ExponentialBackoff,
    max: Duration,
}

impl Delays {
    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.inner.next().unwrap_or(self.max)
    }
}

/// Calls `op` until it succeeds, waiting 50 ms, 100 ms, … up to 2 s between attempts; `None`
/// once `cancel` fires. Each failure is logged at debug level with `what`.
pub(crate) async fn until_cancelled<T, E, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    mut op: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let mut delays = doubling(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::debug!(error = %e, "{what}: retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delays.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_never_end() {
        let mut d = doubling(Duration::from_millis(50), Duration::from_millis(300));
        let got: Vec<u128> = (0..6).map(|_| d.next_delay().as_millis()).collect();
        assert_eq!(got, [50, 100, 200, 300, 300, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn until_cancelled_retries_until_success_and_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let got = until_cancelled(&cancel, "test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(crate::Error::Shutdown)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Some(3));
        cancel.cancel();
        let never: Option<()> = until_cancelled(&cancel, "test", || async {
            Err::<(), _>(crate::Error::Shutdown)
        })
        .await;
        assert_eq!(never, None);
    }
}
