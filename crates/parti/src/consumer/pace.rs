//! Spacing of one worker's consumer reconciliations, so that a fleet's together stay under
//! `consumerApiRate`.
//!
//! A fleet of hundreds that starts at once, or is re-assigned by one publish, would otherwise
//! create or update hundreds of durable consumers in the same instant: a burst of JetStream API
//! calls the server (and, on a cluster, its meta leader) must absorb at once. Each worker takes
//! its share of the fleet's rate — the rate divided by the workers in the latest published map
//! — and spaces its reconciliations that far apart. Its first one waits a random part of one
//! spacing, so workers that start together spread out instead of queueing in step.
//!
//! This is not a token bucket from a rate-limiting crate on purpose: the share changes with
//! the fleet, the first slot is randomised, and the clock is tokio's (paused in tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The fleet's rate and size, set by the [`Manager`](crate::Manager) and read by the pacer.
#[derive(Debug, Default)]
pub(crate) struct PaceCell {
    /// Calls per second for the whole fleet, as `f64` bits (0: no limit).
    rate: AtomicU64,
    /// Workers in the latest published map (0 is read as 1); the manager's runtime stores it.
    fleet: Arc<AtomicU64>,
}

impl PaceCell {
    /// Sets the fleet-wide rate (`consumerApiRate`; 0 or less: no limit).
    pub(crate) fn set_rate(&self, per_second: f64) {
        self.rate.store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// The cell holding the number of workers sharing the rate.
    pub(crate) fn fleet(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.fleet)
    }

    /// This worker's spacing between reconciliations; `None` without a limit.
    pub(crate) fn spacing(&self) -> Option<Duration> {
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let fleet = self.fleet.load(Ordering::Relaxed).max(1) as f64;
        Duration::try_from_secs_f64(fleet / rate).ok()
    }
}

/// When this worker's next reconciliation may go: on a grid of the spacing, at a random
/// offset drawn once per worker.
///
/// The grid is what spreads the fleet not only when it starts but every time one publish
/// re-assigns it: a worker idle for a while does not go at once (every worker would, in the
/// same instant), it waits for its next grid point, and the workers' offsets are spread over
/// one spacing. A worker's reconciliations keep to its grid: one per spacing on average (one
/// whose timer fired late may be followed closely by the next, on its grid point).
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    /// This worker's first grid point (`None`: none has been asked for yet).
    anchor: Option<Instant>,
    /// The earliest instant of the next one after the last that went.
    next: Option<Instant>,
    /// The slot a deferred reconciliation was given: it goes once that time has come, however
    /// late its timer fires (recomputing the grid then would push it a spacing further, for
    /// ever).
    promised: Option<Instant>,
}

impl Pacer {
    /// When a reconciliation asked for at `now` may go: `now` without a limit; otherwise the
    /// slot promised earlier, or the first grid point at or after `now` and not before a
    /// spacing after the previous one.
    pub(crate) fn slot(&mut self, spacing: Option<Duration>, now: Instant) -> Instant {
        let Some(spacing) = spacing.filter(|s| !s.is_zero()) else {
            return now;
        };
        if let Some(promised) = self.promised {
            return promised.max(now);
        }
        let anchor = *self
            .anchor
            .get_or_insert_with(|| now + crate::clock::uniform_up_to(spacing));
        let grid = if now <= anchor {
            anchor
        } else {
            let steps = (now - anchor).as_nanos().div_ceil(spacing.as_nanos());
            u64::try_from(steps.saturating_mul(spacing.as_nanos()))
                .ok()
                .and_then(|ns| anchor.checked_add(Duration::from_nanos(ns)))
                .unwrap_or(now)
        };
        let slot = self.next.map_or(grid, |next| grid.max(next));
        if slot > now {
            self.promised = Some(slot);
        }
        slot
    }

    /// A reconciliation went at `at`: the next one waits a spacing from its slot.
    pub(crate) fn went(&mut self, spacing: Option<Duration>, at: Instant) {
        let base = self.promised.take().map_or(at, |p| p.min(at));
        self.next = Some(base + spacing.unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(rate: f64, fleet: usize) -> PaceCell {
        let cell = PaceCell::default();
        cell.set_rate(rate);
        cell.fleet().store(fleet as u64, Ordering::Relaxed);
        cell
    }

    #[test]
    fn the_share_is_the_fleet_rate_divided_by_the_workers() {
        assert_eq!(cell(100.0, 200).spacing(), Some(Duration::from_secs(2)));
        assert_eq!(cell(100.0, 1).spacing(), Some(Duration::from_millis(10)));
        assert_eq!(cell(100.0, 0).spacing(), Some(Duration::from_millis(10)));
        for no_limit in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(cell(no_limit, 200).spacing(), None, "{no_limit}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_every_call_goes_at_once() {
        let mut pacer = Pacer::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(pacer.slot(None, now), now);
            pacer.went(None, now);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_a_spacing_apart_and_the_first_within_one_spacing() {
        let spacing = Some(Duration::from_secs(2));
        let mut pacer = Pacer::default();
        let t0 = Instant::now();
        let first = pacer.slot(spacing, t0);
        assert!(first >= t0 && first <= t0 + Duration::from_secs(2));
        // Asking again before it went does not move the slot.
        assert_eq!(pacer.slot(spacing, t0 + Duration::from_millis(1)), first);
        pacer.went(spacing, first);
        let second = pacer.slot(spacing, first);
        assert_eq!(second, first + Duration::from_secs(2));
        pacer.went(spacing, second);
        // A call long after the last waits for its grid point: within a spacing, on the grid.
        let late = first + Duration::from_millis(10_500);
        assert_eq!(pacer.slot(spacing, late), first + Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_call_goes_when_its_timer_fires_even_late() {
        let spacing = Some(Duration::from_secs(2));
        let mut pacer = Pacer::default();
        let t0 = Instant::now();
        let slot = pacer.slot(spacing, t0 + Duration::from_millis(1));
        let late = slot.max(t0 + Duration::from_millis(1)) + Duration::from_millis(3);
        assert_eq!(
            pacer.slot(spacing, late),
            late,
            "deferred again instead of going"
        );
        pacer.went(spacing, late);
        // The next one keeps to the grid: a spacing after the slot, not after the late start.
        assert_eq!(pacer.slot(spacing, late), slot + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_fleet_re_assigned_at_once_spreads_its_calls_again() {
        let spacing = Some(Duration::from_secs(2));
        let t0 = Instant::now();
        let mut fleet: Vec<Pacer> = (0..200).map(|_| Pacer::default()).collect();
        for pacer in &mut fleet {
            let slot = pacer.slot(spacing, t0);
            pacer.went(spacing, slot);
        }
        // A minute later one publish re-assigns every worker at the same instant.
        let t1 = t0 + Duration::from_secs(60);
        let slots: Vec<Duration> = fleet.iter_mut().map(|p| p.slot(spacing, t1) - t1).collect();
        assert!(
            slots.iter().all(|s| *s <= Duration::from_secs(2)),
            "{slots:?}"
        );
        assert!(densest_100ms(slots) <= 40);
    }

    /// The most of `at` that fall within one 100 ms.
    fn densest_100ms(mut at: Vec<Duration>) -> usize {
        at.sort();
        (0..at.len())
            .map(|i| {
                at[i..]
                    .iter()
                    .take_while(|b| **b - at[i] < Duration::from_millis(100))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_starting_together_spreads_its_first_calls_over_one_spacing() {
        let spacing = Some(Duration::from_secs(2));
        let t0 = Instant::now();
        let firsts: Vec<Duration> = (0..200)
            .map(|_| Pacer::default().slot(spacing, t0) - t0)
            .collect();
        assert!(firsts.iter().all(|f| *f <= Duration::from_secs(2)));
        // In any 100 ms, about 10 of 200 (uniform over 2 s); a burst would put them all in one.
        let densest = densest_100ms(firsts);
        assert!(densest <= 40, "{densest} of 200 first calls within 100 ms");
    }
}
