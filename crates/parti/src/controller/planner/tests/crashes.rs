//! Crashes, their grace period, and how they interleave with windows and publishes.

use super::*;

// ---- crash ------------------------------------------------------------------------------

#[test]
fn crash_is_declared_after_the_grace_period_and_moves_only_orphans() {
    let mut h = H::running(&[0, 1, 2]);
    assert_eq!(h.expire(1, 1_000), []);
    assert_eq!(h.p.phase(), Phase::Stable);
    assert_eq!(h.tick(1_000 + GRACE - 1), []);
    assert_eq!(h.wake(1_000 + GRACE), emergency(&[0, 2]));
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.published(&[0, 2], 4_100), [set(Phase::Stable)]);
    assert_eq!(h.p.next_wakeup(), None);
    // It comes back later: a new member, balanced by a planned scale.
    assert_eq!(h.join(1, 6_000), [h.scaling(PlannedScale, 6_000 + WINDOW)]);
    assert_eq!(
        h.wake(6_000 + WINDOW),
        rebalance(&[0, 1, 2], RebalanceReason::ScaleUp)
    );
}

#[test]
fn flap_inside_grace_clears_the_timer() {
    let mut h = H::running(&[0, 1, 2]);
    assert_eq!(h.expire(1, 1_000), []);
    assert_eq!(h.join(1, 2_000), []);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.tick(1_000 + GRACE), []);
    // A later expiry gets a fresh grace period, not the remains of the first.
    assert_eq!(h.expire(1, 10_000), []);
    assert_eq!(h.tick(1_000 + GRACE + 8_000), []);
    assert_eq!(h.wake(10_000 + GRACE), emergency(&[0, 2]));
}

#[test]
fn two_crashes_in_a_row_are_each_handled() {
    let mut h = H::running(&[0, 1, 2, 3]);
    h.expire(1, 1_000);
    assert_eq!(h.wake(1_000 + GRACE), emergency(&[0, 2, 3]));
    h.published(&[0, 2, 3], 4_100);
    h.expire(2, 5_000);
    assert_eq!(h.wake(5_000 + GRACE), emergency(&[0, 3]));
    assert_eq!(h.published(&[0, 3], 8_100), [set(Phase::Stable)]);
    assert_eq!(h.p.next_wakeup(), None);
}

#[test]
fn a_second_crash_inside_the_first_ones_grace_is_folded_into_one_emergency() {
    let mut h = H::running(&[0, 1, 2, 3]);
    h.expire(1, 1_000);
    h.expire(2, 2_000);
    assert_eq!(h.wake(1_000 + GRACE), emergency(&[0, 3]));
    assert_eq!(h.published(&[0, 3], 4_100), [set(Phase::Stable)]);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.tick(2_000 + GRACE), []);
}

#[test]
fn a_crash_during_an_outstanding_publish_waits_for_it() {
    let mut h = H::running(&[0, 1, 2, 3]);
    h.expire(1, 1_000);
    assert_eq!(h.wake(1_000 + GRACE), emergency(&[0, 2, 3]));
    // worker-2 is in the map being published; it crashes before the publish completes.
    assert_eq!(h.expire(2, 4_500), []);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.published(&[0, 2, 3], 5_000), [set(Phase::Stable)]);
    assert_eq!(h.wake(4_500 + GRACE), emergency(&[0, 3]));
}

#[test]
fn a_crash_that_fell_due_during_a_publish_is_published_right_after_it() {
    let mut h = H::running(&[0, 1, 2, 3]);
    h.expire(1, 1_000);
    h.wake(1_000 + GRACE);
    h.expire(2, 4_500);
    // Still in Emergency, so no new phase: the next emergency follows at once.
    assert_eq!(
        h.published(&[0, 2, 3], 9_000),
        [publish(&[0, 3], RebalanceReason::Emergency)]
    );
}

#[test]
fn an_expired_worker_never_in_the_map_just_leaves_the_live_set() {
    let mut h = H::running(&[0, 1]);
    h.join(2, 1_000);
    assert_eq!(h.expire(2, 2_000), []);
    assert_eq!(h.p.live().cloned().collect::<Vec<_>>(), ws(&[0, 1]));
    assert_eq!(h.p.next_wakeup(), Some(h.at(1_000 + WINDOW)));
}

#[test]
fn no_crash_is_declared_before_suppression_ends() {
    let mut h = H::running(&[0, 1, 2, 3]);
    let (until, now) = (h.at(20_000), h.at(0));
    let hold = CrashHold::blind(now, until);
    assert_eq!(h.p.handle(Input::HoldCrashes { hold, now }), []);
    h.expire(1, 1_000);
    h.expire(2, 1_000);
    assert_eq!(h.tick(1_000 + GRACE), []);
    // worker-2 is back before suppression ends: it is not declared.
    h.join(2, 15_000);
    assert_eq!(h.wake(20_000), emergency(&[0, 2, 3]));
    // After the suppression, crashes get their normal grace again.
    h.published(&[0, 2, 3], 20_100);
    h.expire(3, 25_000);
    assert_eq!(h.wake(25_000 + GRACE), emergency(&[0, 2]));
}

#[test]
fn a_crash_noticed_before_the_leader_went_blind_waits_only_for_its_recovery() {
    let mut h = H::running(&[0, 1, 2, 3]);
    // worker-1's expiry is seen while the leader is healthy; then the leader goes blind.
    h.expire(1, 0);
    let blind = CrashHold::blind(h.at(500), h.at(500 + 86_400_000));
    assert_eq!(
        h.p.handle(Input::HoldCrashes {
            hold: blind,
            now: h.at(500)
        }),
        []
    );
    // Blind: nothing is declared, even past the grace period.
    assert_eq!(h.tick(GRACE + 5_000), []);
    // Recovered at 10 s with a recovery grace until 25 s: worker-1 is declared at once.
    let recovered = blind.recovered(h.at(10_000), h.at(25_000));
    assert_eq!(
        h.p.handle(Input::HoldCrashes {
            hold: recovered,
            now: h.at(10_000)
        }),
        emergency(&[0, 2, 3])
    );
    // A crash noticed after the recovery still waits for the recovery grace.
    h.published(&[0, 2, 3], 10_100);
    h.expire(2, 12_000);
    assert_eq!(h.wake(25_000), emergency(&[0, 3]));
}

#[test]
fn an_early_crash_is_not_declared_early_when_that_would_evict_a_worker_cut_off_with_the_leader() {
    let mut h = H::running(&[0, 1, 2, 3]);
    h.expire(1, 0);
    let blind = CrashHold::blind(h.at(500), h.at(500 + 86_400_000));
    h.p.handle(Input::HoldCrashes {
        hold: blind,
        now: h.at(500),
    });
    // worker-2's expiry is seen while blind: it may be the leader's own outage.
    h.expire(2, 2_000);
    let recovered = blind.recovered(h.at(10_000), h.at(25_000));
    // Declaring worker-1 now would drop worker-2 from the map too: both wait for the grace.
    assert_eq!(
        h.p.handle(Input::HoldCrashes {
            hold: recovered,
            now: h.at(10_000)
        }),
        []
    );
    assert_eq!(h.p.next_wakeup(), Some(h.at(25_000)));
    // worker-2 comes back in time: worker-1 alone is held back no longer, and only it is
    // declared.
    assert_eq!(h.join(2, 20_000), emergency(&[0, 2, 3]));
}

#[test]
fn a_crash_noticed_before_a_recovery_grace_still_waits_for_its_own_grace() {
    let mut h = H::running(&[0, 1, 2]);
    h.expire(1, 0);
    let blind = CrashHold::blind(h.at(100), h.at(86_400_000));
    h.p.handle(Input::HoldCrashes {
        hold: blind,
        now: h.at(100),
    });
    // Recovered before worker-1's grace ran out: declared when it does, not earlier.
    let recovered = blind.recovered(h.at(1_000), h.at(20_000));
    assert_eq!(
        h.p.handle(Input::HoldCrashes {
            hold: recovered,
            now: h.at(1_000)
        }),
        []
    );
    assert_eq!(h.p.next_wakeup(), Some(h.at(GRACE)));
    assert_eq!(h.wake(GRACE), emergency(&[0, 2]));
}

// ---- interleavings ----------------------------------------------------------------------

#[test]
fn a_crash_pre_empts_a_window_whose_joins_are_balanced_when_it_closes() {
    let mut h = H::running(&[0, 1, 2]);
    assert_eq!(h.join(3, 1_000), [h.scaling(PlannedScale, 1_000 + WINDOW)]);
    h.expire(1, 2_000);
    assert_eq!(h.wake(2_000 + GRACE), emergency(&[0, 2]));
    assert_eq!(
        h.published(&[0, 2], 5_100),
        [h.scaling(PlannedScale, 1_000 + WINDOW)]
    );
    assert_eq!(
        h.wake(1_000 + WINDOW),
        rebalance(&[0, 2, 3], RebalanceReason::ScaleUp)
    );
}

#[test]
fn a_window_that_falls_due_during_an_emergency_closes_right_after_it() {
    let mut h = H::running(&[0, 1, 2]);
    h.join(3, 0);
    h.expire(1, 5_000);
    assert_eq!(h.wake(5_000 + GRACE), emergency(&[0, 2]));
    // The window's deadline (10 s) passes while the emergency is being published.
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(
        h.published(&[0, 2], 12_000),
        rebalance(&[0, 2, 3], RebalanceReason::ScaleUp)
    );
}

#[test]
fn join_during_an_emergency_is_balanced_by_a_window_after_it() {
    let mut h = H::running(&[0, 1, 2]);
    h.expire(1, 1_000);
    assert_eq!(h.wake(1_000 + GRACE), emergency(&[0, 2]));
    assert_eq!(h.join(5, 5_000), []);
    assert_eq!(h.p.phase(), Phase::Emergency);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(
        h.published(&[0, 2], 6_000),
        [h.scaling(PlannedScale, 5_000 + WINDOW)]
    );
    assert_eq!(
        h.wake(5_000 + WINDOW),
        rebalance(&[0, 2, 5], RebalanceReason::ScaleUp)
    );
}

#[test]
fn when_every_map_worker_crashed_the_joiners_take_the_orphans() {
    let mut h = H::running(&[0, 1]);
    h.join(2, 1_000);
    h.expire(0, 1_000);
    h.expire(1, 1_000);
    assert_eq!(h.wake(1_000 + GRACE), emergency(&[2]));
}

#[test]
fn with_no_one_live_a_declared_crash_waits_for_a_join() {
    let mut h = H::running(&[0, 1]);
    h.expire(0, 1_000);
    h.expire(1, 1_000);
    assert_eq!(h.p.next_wakeup(), None);
    assert_eq!(h.tick(1_000 + GRACE), []);
    // worker-1 comes back: it kept its partitions; worker-0's go to it at once.
    assert_eq!(h.join(1, 9_000), emergency(&[1]));
}

#[test]
fn a_window_that_falls_due_with_no_one_live_closes_at_the_next_join() {
    let mut h = H::running(&[0, 1, 2]);
    assert_eq!(h.leave(0, 1_000), [h.scaling(PlannedScale, 1_000 + WINDOW)]);
    h.expire(2, 2_000);
    h.leave(1, 3_000);
    assert_eq!(h.p.next_wakeup(), None);
    // worker-2 comes back inside nobody's grace: the map still lists the leavers.
    assert_eq!(
        h.join(2, 30_000),
        rebalance(&[2], RebalanceReason::ScaleDown)
    );
}
