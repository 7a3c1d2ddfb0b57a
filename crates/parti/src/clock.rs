//! Wall-clock time for values written to KV (timestamps people and other processes read), and
//! the monotonic now of deadlines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, on tokio's clock (the paused test clock drives it): for deadlines, never written out.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in Unix nanoseconds, from one clock per process: the wall clock read once, advanced by
/// tokio's monotonic clock. Processes on one host agree (up to how their wall clocks agreed at
/// start), a stopped process sees the time it lost, and the paused test clock drives it.
pub(crate) fn unix_ns() -> u64 {
    use std::sync::OnceLock;
    static BASE: OnceLock<(u64, tokio::time::Instant)> = OnceLock::new();
    let (base_ns, base) = *BASE.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        (wall, tokio::time::Instant::now())
    });
    let elapsed = tokio::time::Instant::now().saturating_duration_since(base);
    base_ns.saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
}

/// Now, in Unix milliseconds, from the process clock of [`unix_ns`] (the paused test clock
/// drives it too).
pub(crate) fn process_unix_ms() -> u64 {
    unix_ns() / 1_000_000
}

/// Sleeps until `at`, or for ever when there is nothing to wait for (a `select!` branch that
/// only fires when a deadline is set).
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A duration drawn uniformly from `[0, max]`: the random part of a jittered delay.
pub(crate) fn uniform_up_to(max: Duration) -> Duration {
    use rand::Rng;
    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_draws_stay_within_the_bound_and_spread_over_it() {
        assert_eq!(uniform_up_to(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(500);
        let draws: Vec<Duration> = (0..200).map(|_| uniform_up_to(max)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        let (min, top) = (draws.iter().min(), draws.iter().max());
        assert!(
            matches!((min, top), (Some(lo), Some(hi)) if *hi - *lo > max / 2),
            "200 draws from [0, 500ms] spread over less than 250ms: {min:?}..{top:?}"
        );
    }
}
