//! Cold start, full restart, planned scale and rolling update.

use super::*;

// ---- cold start -------------------------------------------------------------------------

#[test]
fn cold_start_window_runs_from_the_first_join_and_publishes_once() {
    let mut h = H::new();
    assert_eq!(h.leader(None, &[], 0), []);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.join(0, 1_000), [h.scaling(ColdStart, 1_000 + COLD)]);
    assert_eq!(h.join(1, 5_000), []);
    // Exactly QUIET before the deadline: the window does not stretch.
    assert_eq!(h.join(2, 1_000 + COLD - QUIET), []);
    assert_eq!(h.tick(30_999), []);
    assert_eq!(h.p.lifecycle(), Lifecycle::ColdStart);
    assert_eq!(
        h.wake(31_000),
        rebalance(&[0, 1, 2], RebalanceReason::ColdStart)
    );
    assert_eq!(h.p.lifecycle(), Lifecycle::ColdStart);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.published(&[0, 1, 2], 31_100), [set(Phase::Stable)]);
    assert_eq!(h.p.lifecycle(), Lifecycle::Running);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.tick(100_000), []);
}

#[test]
fn cold_start_counts_workers_live_at_election_as_joined_then() {
    let mut h = H::new();
    assert_eq!(
        h.leader(None, &[0, 1], 500),
        [h.scaling(ColdStart, 500 + COLD)]
    );
    assert_eq!(h.join(2, 20_000), []);
    assert_eq!(h.leave(1, 25_000), []);
    assert_eq!(
        h.wake(500 + COLD),
        rebalance(&[0, 2], RebalanceReason::ColdStart)
    );
}

#[test]
fn a_cluster_record_still_in_cold_start_is_a_cold_start() {
    let mut h = H::new();
    let view = ClusterView {
        version: 0,
        lifecycle: Lifecycle::ColdStart,
        workers: ws(&[0, 1, 2]),
    };
    assert_eq!(h.leader(Some(view), &[0], 0), [h.scaling(ColdStart, COLD)]);
    assert_eq!(h.p.lifecycle(), Lifecycle::ColdStart);
    // An expiry during a cold start is no crash: the worker just drops out.
    assert_eq!(h.expire(0, 1_000), []);
    assert_eq!(h.join(1, 2_000), []);
    assert_eq!(h.wake(COLD), rebalance(&[1], RebalanceReason::ColdStart));
}

#[test]
fn a_cold_start_whose_workers_all_left_waits_for_the_next_first_join() {
    let mut h = H::new();
    h.leader(None, &[0], 0);
    h.leave(0, 1_000);
    assert_eq!(h.wake(COLD), []);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.join(3, 50_000), [h.scaling(ColdStart, 50_000 + COLD)]);
    assert_eq!(
        h.wake(50_000 + COLD),
        rebalance(&[3], RebalanceReason::ColdStart)
    );
}

#[test]
fn a_cold_start_spread_over_more_than_the_window_is_still_one_publish() {
    // 40 workers, one every 1.5 s: starting takes 58.5 s, twice the window.
    let mut h = H::new();
    assert_eq!(h.leader(None, &[], 0), []);
    assert_eq!(h.join(0, 0), [h.scaling(ColdStart, COLD)]);
    let mut phases = 0;
    for n in 1..40u32 {
        let t = u64::from(n) * 1_500;
        // Every timer that falls due meanwhile is fed; none publishes.
        while let Some(due) = h.p.next_wakeup().filter(|&d| d <= h.at(t)) {
            assert_eq!(h.p.handle(Input::Tick { now: due }), []);
        }
        for d in h.join(n, t) {
            let Decision::SetPhase(Phase::Scaling { reason, until }) = d else {
                panic!("{d:?} at {t}");
            };
            assert_eq!(reason, ColdStart);
            assert!(until >= h.at(t + QUIET) && until < h.at(t + 2 * QUIET));
            phases += 1;
        }
    }
    // The deadline moves in whole quiet periods: one announcement per period, not per join.
    assert_eq!(phases, 7, "30 s → 65 s in steps of 5 s");
    // Closes one step after the last join (at 58.5 s), with everyone.
    assert_eq!(
        h.wake(65_000),
        rebalance(&(0..40).collect::<Vec<_>>(), RebalanceReason::ColdStart)
    );
    assert_eq!(
        h.published(&(0..40).collect::<Vec<_>>(), 65_100),
        [set(Phase::Stable)]
    );
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn a_cold_start_window_never_stretches_past_its_maximum() {
    let mut h = H::new();
    assert_eq!(
        h.leader(None, &[0], 2_000),
        [h.scaling(ColdStart, 2_000 + COLD)]
    );
    // A join every 100 ms, for ever: the window ends at its maximum after it opened.
    let end = 2_000 + COLD_MAX;
    let mut t = 2_000;
    let mut n = 1;
    while t + 100 < end {
        t += 100;
        for d in h.join(n, t) {
            assert!(
                matches!(d, Decision::SetPhase(Phase::Scaling { until, .. }) if until <= h.at(end)),
                "{d:?} at {t}"
            );
        }
        assert!(h.p.next_wakeup() <= Some(h.at(end)));
        n += 1;
    }
    assert_eq!(h.p.next_wakeup(), Some(h.at(end)));
    // Still more joins right up to the end: nothing moves it.
    assert_eq!(h.join(n, end - 1), []);
    let Decision::Publish {
        workers, reason, ..
    } = h.wake(end).remove(1)
    else {
        panic!("no publish at the maximum");
    };
    assert_eq!(
        (workers.len(), reason),
        (n as usize + 1, RebalanceReason::ColdStart)
    );
}

#[test]
fn a_zero_quiet_period_or_a_maximum_equal_to_the_window_never_stretches() {
    for cfg in [
        PlannerConfig {
            cold_start_quiet: Duration::ZERO,
            ..cfg()
        },
        PlannerConfig {
            cold_start_max_window: Duration::from_millis(COLD),
            ..cfg()
        },
        // A maximum below the window counts as the window.
        PlannerConfig {
            cold_start_max_window: Duration::from_millis(1),
            ..cfg()
        },
    ] {
        let mut h = H::new();
        h.p = Planner::new(cfg);
        assert_eq!(h.leader(None, &[0], 0), [h.scaling(ColdStart, COLD)]);
        assert_eq!(h.join(1, COLD - 1), []);
        assert_eq!(h.wake(COLD), rebalance(&[0, 1], RebalanceReason::ColdStart));
    }
}

#[test]
fn an_expiry_in_a_stretched_cold_start_window_neither_stretches_nor_waits() {
    let mut h = H::new();
    h.leader(None, &[0], 0);
    assert_eq!(h.join(1, 27_000), [h.scaling(ColdStart, COLD + QUIET)]);
    // No one holds partitions yet: the expired worker just drops out, and the window does not
    // move for it.
    assert_eq!(h.expire(1, 33_000), []);
    assert_eq!(
        h.wake(COLD + QUIET),
        rebalance(&[0], RebalanceReason::ColdStart)
    );
}

#[test]
fn a_crash_right_after_a_stretched_cold_start_is_declared_after_its_grace_only() {
    let mut h = H::new();
    h.leader(None, &[0, 1], 0);
    assert_eq!(h.join(2, 29_000), [h.scaling(ColdStart, COLD + QUIET)]);
    assert_eq!(
        h.wake(COLD + QUIET),
        rebalance(&[0, 1, 2], RebalanceReason::ColdStart)
    );
    assert_eq!(h.published(&[0, 1, 2], 35_100), [set(Phase::Stable)]);
    // A join now opens a planned window, which never stretches; a crash inside it pre-empts it
    // exactly at the end of its grace period.
    assert_eq!(
        h.join(3, 36_000),
        [h.scaling(PlannedScale, 36_000 + WINDOW)]
    );
    assert_eq!(h.join(4, 36_000 + WINDOW - 1), []);
    assert_eq!(h.expire(1, 37_000), []);
    assert_eq!(h.wake(37_000 + GRACE), emergency(&[0, 2]));
    h.published(&[0, 2], 40_100);
    assert_eq!(
        h.wake(36_000 + WINDOW),
        rebalance(&[0, 2, 3, 4], RebalanceReason::ScaleUp)
    );
}

#[test]
fn a_restart_window_stretches_too_until_it_is_brought_forward() {
    let mut h = H::new();
    let view = running_view(7, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(h.leader(Some(view), &[0], 0), [h.scaling(Restart, COLD)]);
    // Still a full restart (2 of 10): the late join stretches the window.
    assert_eq!(h.join(1, 26_000), [h.scaling(Restart, COLD + QUIET)]);
    // 5 of 10 back: no full restart after all; the window ends at once (its planned-length
    // end is long past) and no later join stretches it again.
    h.join(2, 26_100);
    h.join(3, 26_200);
    let out = h.join(4, 26_300);
    assert_eq!(out, rebalance(&[0, 1, 2, 3, 4], RebalanceReason::Restart));
}

// ---- full restart -----------------------------------------------------------------------

#[test]
fn a_restart_window_ends_once_every_worker_of_the_inherited_map_is_back() {
    // A leader that took over right after a store outage saw the heartbeats expired: the
    // processes come back within moments, and waiting out the window would only be a gap.
    let mut h = H::new();
    let view = running_view(7, &[0, 1, 2, 3, 4]);
    assert_eq!(h.leader(Some(view), &[0], 0), [h.scaling(Restart, COLD)]);
    for n in 1..4 {
        h.join(n, u64::from(n) * 100);
    }
    let mut decisions = h.join(4, 500);
    decisions.retain(|d| matches!(d, Decision::Publish { .. }));
    assert_eq!(
        decisions,
        [Decision::Publish {
            workers: (0..5).map(w).collect(),
            reason: RebalanceReason::Restart,
            orphans_only: false,
        }],
        "the last one back ends the window"
    );
}

#[test]
fn a_restart_window_is_no_longer_than_a_planned_one_once_it_is_no_full_restart() {
    let mut h = H::new();
    let view = running_view(7, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(h.leader(Some(view), &[0], 0), [h.scaling(Restart, COLD)]);
    for n in 1..8 {
        h.join(n, u64::from(n) * 10);
    }
    // 8 of 10 back: no full restart after all; worker 8 and 9 may be gone for good.
    assert_eq!(h.p.next_wakeup(), Some(h.at(WINDOW)));
    assert_eq!(
        h.wake(WINDOW),
        rebalance(&[0, 1, 2, 3, 4, 5, 6, 7], RebalanceReason::Restart)
    );
}

#[test]
fn full_restart_is_a_cold_start_with_reason_restart() {
    let mut h = H::new();
    let view = running_view(7, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(
        h.leader(Some(view), &[0, 1, 2, 3], 0),
        [h.scaling(Restart, COLD)]
    );
    assert_eq!(h.p.lifecycle(), Lifecycle::ColdStart);
    assert_eq!(h.p.version(), 7);
    // Half of the old map back: no full restart after all (the leader may have looked right
    // after a store outage), so the window is no longer than a planned one.
    assert_eq!(h.join(4, 1_000), [h.scaling(Restart, WINDOW)]);
    for n in 5..8 {
        assert_eq!(h.join(n, u64::from(n) * 1_000), []);
    }
    // Workers of the old map that do not come back are no crash suspects.
    assert_eq!(
        h.wake(WINDOW),
        rebalance(&[0, 1, 2, 3, 4, 5, 6, 7], RebalanceReason::Restart)
    );
    assert_eq!(
        h.published(&[0, 1, 2, 3, 4, 5, 6, 7], WINDOW + 100),
        [set(Phase::Stable)]
    );
    assert_eq!(h.p.lifecycle(), Lifecycle::Running);
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn restart_detection_thresholds() {
    // Exactly the ratio (5 of 10) is no restart.
    let mut h = H::new();
    h.leader(
        Some(running_view(3, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9])),
        &[0, 1, 2, 3, 4],
        0,
    );
    assert_eq!(h.p.lifecycle(), Lifecycle::Running);
    // A map smaller than restart_min_workers is never a restart, even with no one back.
    let mut h = H::new();
    let out = h.leader(Some(running_view(3, &[0, 1, 2])), &[5], 0);
    assert_eq!(out, [h.scaling(PlannedScale, WINDOW)]);
    assert_eq!(h.p.lifecycle(), Lifecycle::Running);
}

// ---- planned scale and rolling update ---------------------------------------------------

#[test]
fn planned_scale_up_batches_joins_without_extending_the_deadline() {
    let mut h = H::running(&[0, 1, 2]);
    assert_eq!(h.join(3, 1_000), [h.scaling(PlannedScale, 1_000 + WINDOW)]);
    assert_eq!(h.join(4, 8_000), []);
    assert_eq!(h.join(5, 10_999), []);
    assert_eq!(
        h.wake(1_000 + WINDOW),
        rebalance(&[0, 1, 2, 3, 4, 5], RebalanceReason::ScaleUp)
    );
    assert_eq!(
        h.published(&[0, 1, 2, 3, 4, 5], 11_100),
        [set(Phase::Stable)]
    );
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn planned_scale_down_and_mixed_batches() {
    let mut h = H::running(&[0, 1, 2, 3]);
    assert_eq!(h.leave(3, 1_000), [h.scaling(PlannedScale, 1_000 + WINDOW)]);
    assert_eq!(h.leave(2, 2_000), []);
    assert_eq!(
        h.wake(1_000 + WINDOW),
        rebalance(&[0, 1], RebalanceReason::ScaleDown)
    );
    h.published(&[0, 1], 11_000);

    assert_eq!(
        h.join(5, 20_000),
        [h.scaling(PlannedScale, 20_000 + WINDOW)]
    );
    assert_eq!(h.leave(0, 21_000), []);
    assert_eq!(
        h.wake(20_000 + WINDOW),
        rebalance(&[1, 5], RebalanceReason::PlannedScale)
    );
}

#[test]
fn rolling_update_leave_and_return_inside_the_window_publishes_nothing() {
    let mut h = H::running(&[0, 1, 2]);
    assert_eq!(h.leave(1, 1_000), [h.scaling(PlannedScale, 1_000 + WINDOW)]);
    assert_eq!(h.join(1, 4_000), []);
    assert_eq!(h.leave(2, 5_000), []);
    assert_eq!(h.join(2, 9_000), []);
    assert_eq!(h.wake(1_000 + WINDOW), [set(Phase::Stable)]);
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn a_joiner_that_expires_inside_the_window_leaves_no_trace() {
    let mut h = H::running(&[0, 1]);
    assert_eq!(h.join(2, 1_000), [h.scaling(PlannedScale, 1_000 + WINDOW)]);
    assert_eq!(h.expire(2, 2_000), []);
    // Not in the map: no crash timer, only the window remains.
    assert_eq!(h.wake(1_000 + WINDOW), [set(Phase::Stable)]);
    assert_eq!(h.p.next_wakeup(), None);
}
