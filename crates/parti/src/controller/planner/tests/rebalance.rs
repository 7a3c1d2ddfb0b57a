//! Partition changes, leader change, phase conversion.

use super::*;

// ---- partition changes ------------------------------------------------------------------

#[test]
fn partition_change_respects_the_cooldown_and_coalesces() {
    let mut h = H::running(&[0, 1]);
    h.join(2, 0);
    h.wake(WINDOW);
    h.published(&[0, 1, 2], 10_000);
    assert_eq!(h.partitions_changed(11_000), []);
    assert_eq!(h.partitions_changed(12_000), []);
    assert_eq!(
        h.wake(10_000 + COOLDOWN),
        rebalance(&[0, 1, 2], RebalanceReason::PartitionChange)
    );
    assert_eq!(h.published(&[0, 1, 2], 15_100), [set(Phase::Stable)]);
    assert_eq!(h.p.next_wakeup(), None);
    // Long after the last publish: at once.
    assert_eq!(
        h.partitions_changed(40_000),
        rebalance(&[0, 1, 2], RebalanceReason::PartitionChange)
    );
}

#[test]
fn a_new_leader_rebalances_partition_changes_at_once() {
    let mut h = H::running(&[0, 1]);
    assert_eq!(
        h.partitions_changed(100),
        rebalance(&[0, 1], RebalanceReason::PartitionChange)
    );
}

#[test]
fn partition_change_is_folded_into_the_cold_start_publish() {
    let mut h = H::new();
    h.leader(None, &[0], 0);
    assert_eq!(h.partitions_changed(1_000), []);
    assert_eq!(h.wake(COLD), rebalance(&[0], RebalanceReason::ColdStart));
    h.published(&[0], COLD);
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn partition_change_during_a_publish_is_deferred_not_dropped() {
    let mut h = H::running(&[0, 1]);
    h.join(2, 0);
    assert_eq!(
        h.wake(WINDOW),
        rebalance(&[0, 1, 2], RebalanceReason::ScaleUp)
    );
    assert_eq!(h.partitions_changed(10_500), []);
    assert_eq!(h.published(&[0, 1, 2], 11_000), [set(Phase::Stable)]);
    assert_eq!(
        h.wake(11_000 + COOLDOWN),
        rebalance(&[0, 1, 2], RebalanceReason::PartitionChange)
    );
}

#[test]
fn partition_change_waits_for_an_open_window_then_follows_even_a_rolling_update() {
    let mut h = H::running(&[0, 1]);
    h.leave(1, 1_000);
    assert_eq!(h.partitions_changed(2_000), []);
    h.join(1, 3_000);
    // Membership is unchanged, so the window itself publishes nothing, but the partition
    // change is still owed (no publish for longer than the cooldown: at once).
    assert_eq!(
        h.wake(1_000 + WINDOW),
        rebalance(&[0, 1], RebalanceReason::PartitionChange)
    );
}

#[test]
fn an_emergency_does_not_count_as_the_partition_rebalance() {
    let mut h = H::running(&[0, 1, 2]);
    h.partitions_changed(0);
    h.published(&[0, 1, 2], 500);
    h.expire(2, 1_000);
    assert_eq!(h.partitions_changed(2_000), []);
    assert_eq!(h.wake(1_000 + GRACE), emergency(&[0, 1]));
    h.published(&[0, 1], 4_000);
    assert_eq!(
        h.wake(4_000 + COOLDOWN),
        rebalance(&[0, 1], RebalanceReason::PartitionChange)
    );
}

// ---- leader change ----------------------------------------------------------------------

#[test]
fn leader_change_with_an_up_to_date_map_publishes_nothing() {
    let mut h = H::new();
    let out = h.leader(Some(running_view(42, &[0, 1, 2])), &[0, 1, 2], 0);
    assert_eq!(out, [set(Phase::Stable)]);
    assert_eq!(h.p.lifecycle(), Lifecycle::Running);
    assert_eq!(h.p.version(), 42);
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn leader_change_with_new_live_workers_opens_a_window() {
    let mut h = H::new();
    let out = h.leader(Some(running_view(9, &[0, 1])), &[0, 1, 2], 0);
    assert_eq!(out, [h.scaling(PlannedScale, WINDOW)]);
    assert_eq!(h.join(3, 2_000), []);
    assert_eq!(
        h.wake(WINDOW),
        rebalance(&[0, 1, 2, 3], RebalanceReason::LeaderChange)
    );
}

#[test]
fn leader_change_suspects_absent_map_workers_from_now() {
    let mut h = H::new();
    let out = h.leader(Some(running_view(9, &[0, 1, 2])), &[0, 1], 5_000);
    assert_eq!(out, [set(Phase::Stable)]);
    assert_eq!(h.wake(5_000 + GRACE), emergency(&[0, 1]));
}

#[test]
fn leader_change_absent_worker_that_returns_in_grace_keeps_everything() {
    let mut h = H::new();
    h.leader(Some(running_view(9, &[0, 1, 2])), &[0, 1], 0);
    assert_eq!(h.join(2, 2_000), []);
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn leader_change_absent_worker_known_to_have_left_is_a_rolling_update() {
    // The old leader stepped down gracefully and restarts: the runner reports its deleted
    // heartbeat as a leave, which opens a window instead of a crash timer.
    let mut h = H::new();
    h.leader(Some(running_view(9, &[0, 1, 2])), &[0, 1], 0);
    assert_eq!(h.leave(2, 100), [h.scaling(PlannedScale, 100 + WINDOW)]);
    assert_eq!(h.join(2, 8_000), []);
    assert_eq!(h.wake(100 + WINDOW), [set(Phase::Stable)]);
}

#[test]
fn became_leader_resets_everything_from_a_previous_term() {
    let mut h = H::running(&[0, 1, 2]);
    h.expire(1, 1_000);
    h.join(5, 1_000);
    h.partitions_changed(1_000);
    let out = h.leader(Some(running_view(3, &[0, 1, 2])), &[0, 1, 2], 2_000);
    assert_eq!(out, [set(Phase::Stable)]);
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn phase_converts_to_wall_clock() {
    let t = Instant::now();
    let d = Duration::from_millis(1_500);
    let scaling = |until| Phase::Scaling {
        reason: PlannedScale,
        until,
    };
    let in_future = scaling(t + d).to_cluster_phase(t, 10_000);
    let in_past = scaling(t).to_cluster_phase(t + d, 10_000);
    let reason = PlannedScale;
    assert_eq!(
        in_future,
        ClusterPhase::Scaling {
            reason,
            until_ms: 11_500
        }
    );
    assert_eq!(
        in_past,
        ClusterPhase::Scaling {
            reason,
            until_ms: 8_500
        }
    );
    assert_eq!(
        Phase::Emergency.to_cluster_phase(t, 1),
        ClusterPhase::Emergency
    );
}

// ---- a publish that failed for good -------------------------------------------------------

#[test]
fn a_cold_start_that_failed_to_publish_is_a_short_cold_start_again() {
    // The cold start's map over worker-0 alone cannot be published (its value is too large).
    let mut h = H::new();
    h.leader(None, &[0], 0);
    assert_eq!(h.wake(COLD), rebalance(&[0], RebalanceReason::ColdStart));
    let now = h.at(COLD);
    assert_eq!(
        h.p.handle(Input::PublishFailed { now }),
        [h.scaling(ColdStart, COLD + 1_000)]
    );
    // Alone, it is tried again a second later (and fails again).
    assert_eq!(
        h.wake(COLD + 1_000),
        rebalance(&[0], RebalanceReason::ColdStart)
    );
    let now = h.at(COLD + 1_000);
    h.p.handle(Input::PublishFailed { now });
    // A join is taken in as in any cold start; the window's publish covers it.
    h.join(1, COLD + 1_100);
    let at = h.p.next_wakeup().unwrap();
    assert!(at > h.at(COLD + 1_100));
    assert_eq!(
        h.p.handle(Input::Tick { now: at }),
        rebalance(&[0, 1], RebalanceReason::ColdStart)
    );
    assert_eq!(
        h.p.handle(Input::Published {
            version: 1,
            workers: ws(&[0, 1]),
            now: at
        }),
        [set(Phase::Stable)]
    );
    assert_eq!(h.p.lifecycle(), Lifecycle::Running);
    assert_eq!(h.p.next_wakeup(), None);
}

/// worker-3 joined a running cluster of three at t0: the scale-up decided at the window's end,
/// not yet published.
fn scale_up_outstanding() -> H {
    let mut h = H::running(&[0, 1, 2]);
    h.join(3, 0);
    assert_eq!(
        h.wake(WINDOW),
        rebalance(&[0, 1, 2, 3], RebalanceReason::ScaleUp)
    );
    h
}

#[test]
fn a_failed_scale_up_is_retried_over_the_workers_live_then_and_a_crash_is_not_forgotten() {
    let mut h = scale_up_outstanding();
    // The publish fails for good: the phase stays Rebalancing while it is owed.
    let now = h.at(WINDOW);
    assert_eq!(h.p.handle(Input::PublishFailed { now }), []);
    // worker-2 crashes before the retry: the retry leaves it out ...
    assert_eq!(h.expire(2, WINDOW + 100), []);
    assert_eq!(
        h.wake(WINDOW + 1_000),
        [publish(&[0, 1, 3], RebalanceReason::ScaleUp)]
    );
    // ... and fails again: worker-2 is a crash suspect of the published map again, handled
    // after its grace.
    let now = h.at(WINDOW + 1_000);
    assert_eq!(h.p.handle(Input::PublishFailed { now }), []);
    assert_eq!(
        h.wake(WINDOW + 1_000 + 1_000),
        [publish(&[0, 1, 3], RebalanceReason::ScaleUp)]
    );
    let now = h.at(WINDOW + 2_000);
    h.p.handle(Input::PublishFailed { now });
    assert_eq!(h.p.next_wakeup(), Some(h.at(WINDOW + 3_000)));
    // The suspect's grace (from the first failure) ends at WINDOW + 1_000 + GRACE.
    let mut saw_emergency = false;
    for _ in 0..4 {
        let at = h.p.next_wakeup().unwrap();
        let out = h.p.handle(Input::Tick { now: at });
        if out.contains(&publish(&[0, 1, 3], RebalanceReason::Emergency)) {
            saw_emergency = true;
            break;
        }
        h.p.handle(Input::PublishFailed { now: at });
    }
    assert!(saw_emergency, "the crash of worker-2 was forgotten");
}

#[test]
fn a_republish_while_a_publish_is_outstanding_leaves_it_outstanding() {
    // A hand-off republish lands after the planner decided a scale-up, before the runner ran it.
    let mut h = scale_up_outstanding();
    let now = h.at(WINDOW);
    assert_eq!(h.p.handle(Input::Republished { version: 7, now }), []);
    assert_eq!(h.p.version(), 7);
    // Still outstanding: nothing else is decided, and its failure is retried.
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.p.handle(Input::PublishFailed { now }), []);
    assert_eq!(
        h.wake(WINDOW + 1_000),
        [publish(&[0, 1, 2, 3], RebalanceReason::ScaleUp)]
    );
}
