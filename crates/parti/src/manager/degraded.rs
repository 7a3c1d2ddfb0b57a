//! When to enter and leave Degraded mode, why, and when to alert (SPEC §7). Pure: time is an
//! argument; the runtime does the I/O.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{DegradedAlertConfig, DegradedBehaviorConfig};
use crate::events::AlertLevel;
use crate::state::DegradedReason;

/// What the tracker concluded from one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing changed.
    Unchanged,
    /// Enter Degraded now, for this reason.
    Enter(DegradedReason),
    /// Leave Degraded now (after `exitThreshold` of health).
    Exit,
}

/// Why to enter Degraded, given what one observation found (`None`: stay out).
///
/// - `cut_off`: the connection has been down for `enterThreshold`;
/// - `disconnected`: the connection is down now (for however long);
/// - `failing`: `kvErrorThreshold` KV errors within `kvErrorWindow`.
///
/// No connection wins over KV errors: errors that pile up while the connection is down are its
/// symptom, and the connection is what an operator must look at. A bucket in trouble
/// (`bucket`, see [`bucket_guard`](super::bucket_guard)) comes next: it is why calls fail.
pub(crate) fn entry_reason(
    cut_off: bool,
    disconnected: bool,
    failing: bool,
    bucket: Option<DegradedReason>,
) -> Option<DegradedReason> {
    if cut_off || (failing && disconnected) {
        Some(DegradedReason::NatsUnreachable)
    } else if bucket.is_some() {
        bucket
    } else if failing {
        Some(DegradedReason::KvErrors)
    } else {
        None
    }
}

#[derive(Debug)]
pub(crate) struct DegradedTracker {
    behavior: DegradedBehaviorConfig,
    alerts: DegradedAlertConfig,
    /// Since when the store has been unreachable (None while connected).
    disconnected_since: Option<Instant>,
    /// Recent KV errors, within `kvErrorWindow`.
    errors: VecDeque<Instant>,
    /// Since when we are degraded, and why.
    degraded_since: Option<(Instant, DegradedReason)>,
    /// Since when we have been healthy while degraded.
    healthy_since: Option<Instant>,
    /// Highest alert level raised in this episode, and when the last alert fired.
    last_alert: Option<(AlertLevel, Instant)>,
    /// A bucket missing or replaced and not yet repaired (its reason), from the bucket guard.
    bucket: Option<DegradedReason>,
}

impl DegradedTracker {
    pub(crate) fn new(behavior: DegradedBehaviorConfig, alerts: DegradedAlertConfig) -> Self {
        Self {
            behavior,
            alerts,
            disconnected_since: None,
            errors: VecDeque::new(),
            degraded_since: None,
            healthy_since: None,
            last_alert: None,
            bucket: None,
        }
    }

    /// Records what the bucket guard reports now: a bucket in trouble (its reason) enters
    /// Degraded at the next observation and keeps it there until repaired.
    pub(crate) fn set_bucket_trouble(&mut self, reason: Option<DegradedReason>) {
        if reason.is_some() {
            self.healthy_since = None;
        }
        self.bucket = reason;
    }

    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded_since.is_some()
    }

    /// Why we are degraded (`None` while not).
    #[cfg(test)]
    pub(crate) fn reason(&self) -> Option<DegradedReason> {
        self.degraded_since.map(|(_, reason)| reason)
    }

    /// Records one failed KV call.
    pub(crate) fn record_error(&mut self, now: Instant) {
        self.errors.push_back(now);
        self.healthy_since = None;
    }

    /// Records the current connection status and decides.
    pub(crate) fn observe(&mut self, now: Instant, connected: bool) -> Verdict {
        let window = self.behavior.kv_error_window;
        while self
            .errors
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.errors.pop_front();
        }
        if connected {
            self.disconnected_since = None;
        } else {
            self.disconnected_since.get_or_insert(now);
            self.healthy_since = None;
        }
        match self.degraded_since {
            None => {
                let cut_off = self.disconnected_since.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.behavior.enter_threshold
                });
                let failing = self.errors.len() >= self.behavior.kv_error_threshold as usize;
                match entry_reason(cut_off, !connected, failing, self.bucket) {
                    Some(reason) => {
                        self.degraded_since = Some((now, reason));
                        self.healthy_since = None;
                        self.last_alert = None;
                        Verdict::Enter(reason)
                    }
                    None => Verdict::Unchanged,
                }
            }
            Some(_) => {
                // Healthy = connected with no KV error since the exit window started
                // (`record_error` restarts it).
                if !connected || self.bucket.is_some() {
                    self.healthy_since = None;
                    return Verdict::Unchanged;
                }
                let healthy_since = *self.healthy_since.get_or_insert(now);
                if now.saturating_duration_since(healthy_since) >= self.behavior.exit_threshold {
                    self.degraded_since = None;
                    self.healthy_since = None;
                    self.errors.clear();
                    Verdict::Exit
                } else {
                    Verdict::Unchanged
                }
            }
        }
    }

    /// The alert due now, if any: a new level reached, or the current level repeated after
    /// `alertInterval`. Zero thresholds disable their level.
    pub(crate) fn due_alert(&mut self, now: Instant) -> Option<(AlertLevel, Duration)> {
        let (since, _) = self.degraded_since?;
        let degraded_for = now.saturating_duration_since(since);
        let levels = [
            (AlertLevel::Info, self.alerts.info_threshold),
            (AlertLevel::Warn, self.alerts.warn_threshold),
            (AlertLevel::Error, self.alerts.error_threshold),
            (AlertLevel::Critical, self.alerts.critical_threshold),
        ];
        let reached = levels
            .iter()
            .filter(|(_, t)| !t.is_zero() && degraded_for >= *t)
            .map(|(l, _)| *l)
            .max()?;
        let due = match self.last_alert {
            None => true,
            Some((level, _)) if reached > level => true,
            Some((_, at)) => {
                !self.alerts.alert_interval.is_zero()
                    && now.saturating_duration_since(at) >= self.alerts.alert_interval
            }
        };
        if due {
            self.last_alert = Some((reached, now));
            Some((reached, degraded_for))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> DegradedTracker {
        DegradedTracker::new(
            DegradedBehaviorConfig {
                enter_threshold: Duration::from_secs(10),
                exit_threshold: Duration::from_secs(5),
                kv_error_threshold: 3,
                kv_error_window: Duration::from_secs(30),
                recovery_grace_period: Duration::from_secs(15),
            },
            DegradedAlertConfig {
                info_threshold: Duration::from_secs(30),
                warn_threshold: Duration::from_secs(120),
                error_threshold: Duration::ZERO,
                critical_threshold: Duration::from_secs(600),
                alert_interval: Duration::from_secs(60),
            },
        )
    }

    #[test]
    fn enters_after_enter_threshold_of_disconnection_and_exits_after_exit_threshold() {
        let t0 = Instant::now();
        let mut t = tracker();
        assert_eq!(t.observe(t0, false), Verdict::Unchanged);
        assert_eq!(
            t.observe(t0 + Duration::from_secs(9), false),
            Verdict::Unchanged
        );
        assert_eq!(
            t.observe(t0 + Duration::from_secs(10), false),
            Verdict::Enter(DegradedReason::NatsUnreachable)
        );
        assert_eq!(t.reason(), Some(DegradedReason::NatsUnreachable));
        assert_eq!(
            t.observe(t0 + Duration::from_secs(11), true),
            Verdict::Unchanged
        );
        assert_eq!(
            t.observe(t0 + Duration::from_secs(13), false),
            Verdict::Unchanged,
            "flap resets"
        );
        assert_eq!(
            t.observe(t0 + Duration::from_secs(14), true),
            Verdict::Unchanged
        );
        assert_eq!(
            t.observe(t0 + Duration::from_secs(18), true),
            Verdict::Unchanged
        );
        assert_eq!(t.observe(t0 + Duration::from_secs(19), true), Verdict::Exit);
        assert!(!t.is_degraded());
        assert_eq!(t.reason(), None);
    }

    #[test]
    fn a_short_disconnection_does_not_degrade() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.observe(t0, false);
        assert_eq!(
            t.observe(t0 + Duration::from_secs(5), true),
            Verdict::Unchanged
        );
        assert_eq!(
            t.observe(t0 + Duration::from_secs(12), false),
            Verdict::Unchanged
        );
    }

    #[test]
    fn enters_on_error_burst_within_window_only() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.record_error(t0);
        t.record_error(t0 + Duration::from_secs(1));
        // The first error leaves the window before the third arrives.
        t.record_error(t0 + Duration::from_secs(31));
        assert_eq!(
            t.observe(t0 + Duration::from_secs(31), true),
            Verdict::Unchanged
        );
        t.record_error(t0 + Duration::from_secs(32));
        t.record_error(t0 + Duration::from_secs(33));
        assert_eq!(
            t.observe(t0 + Duration::from_secs(33), true),
            Verdict::Enter(DegradedReason::KvErrors),
            "three errors within the window"
        );
        assert_eq!(t.reason(), Some(DegradedReason::KvErrors));
    }

    #[test]
    fn alerts_escalate_in_order_skip_disabled_levels_and_repeat() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.observe(t0, false);
        let start = t0 + Duration::from_secs(10);
        assert_eq!(
            t.observe(start, false),
            Verdict::Enter(DegradedReason::NatsUnreachable)
        );
        assert_eq!(t.due_alert(start + Duration::from_secs(29)), None);
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(t.due_alert(at(30)).map(|a| a.0), Some(AlertLevel::Info));
        assert_eq!(t.due_alert(at(60)), None);
        assert_eq!(
            t.due_alert(at(90)).map(|a| a.0),
            Some(AlertLevel::Info),
            "repeat"
        );
        assert_eq!(t.due_alert(at(120)).map(|a| a.0), Some(AlertLevel::Warn));
        // Error level disabled (zero): next is Critical at 600 s.
        assert_eq!(t.due_alert(at(180)).map(|a| a.0), Some(AlertLevel::Warn));
        assert_eq!(
            t.due_alert(at(600)).map(|a| a.0),
            Some(AlertLevel::Critical)
        );
    }

    #[test]
    fn entry_reason_names_each_condition_and_prefers_the_connection() {
        use DegradedReason::{KvErrors, NatsUnreachable};
        // (cut_off, disconnected, failing) → reason
        let cases = [
            ((false, false, false), None),
            ((false, true, false), None),
            ((true, true, false), Some(NatsUnreachable)),
            ((false, false, true), Some(KvErrors)),
            ((false, true, true), Some(NatsUnreachable)),
            ((true, true, true), Some(NatsUnreachable)),
        ];
        for ((cut_off, disconnected, failing), want) in cases {
            assert_eq!(
                entry_reason(cut_off, disconnected, failing, None),
                want,
                "cut_off {cut_off}, disconnected {disconnected}, failing {failing}"
            );
        }
        // A bucket in trouble comes after the connection and before KV errors.
        let missing = Some(DegradedReason::BucketMissing);
        assert_eq!(entry_reason(false, false, true, missing), missing);
        assert_eq!(entry_reason(false, false, false, missing), missing);
        assert_eq!(
            entry_reason(true, true, false, missing),
            Some(NatsUnreachable)
        );
    }

    #[test]
    fn a_bucket_in_trouble_degrades_at_once_and_holds_until_repaired() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.set_bucket_trouble(Some(DegradedReason::BucketMissing));
        assert_eq!(
            t.observe(t0, true),
            Verdict::Enter(DegradedReason::BucketMissing)
        );
        // Still missing long after: no exit.
        assert_eq!(
            t.observe(t0 + Duration::from_secs(60), true),
            Verdict::Unchanged
        );
        t.set_bucket_trouble(None);
        let repaired = t0 + Duration::from_secs(61);
        assert_eq!(t.observe(repaired, true), Verdict::Unchanged);
        let exit = t.behavior.exit_threshold;
        assert_eq!(t.observe(repaired + exit, true), Verdict::Exit);
    }

    #[test]
    fn an_error_burst_while_disconnected_is_the_connection() {
        let t0 = Instant::now();
        let mut t = tracker();
        // Three failed calls within a second of losing the connection: well before
        // `enterThreshold` (10 s), but the connection is what is down.
        assert_eq!(t.observe(t0, false), Verdict::Unchanged);
        for s in 0..3 {
            t.record_error(t0 + Duration::from_millis(300 * s));
        }
        assert_eq!(
            t.observe(t0 + Duration::from_secs(1), false),
            Verdict::Enter(DegradedReason::NatsUnreachable)
        );
    }

    #[test]
    fn the_reason_is_kept_for_the_episode_and_a_new_episode_decides_again() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut t = tracker();
        for s in 0..3 {
            t.record_error(at(s));
        }
        assert_eq!(
            t.observe(at(2), true),
            Verdict::Enter(DegradedReason::KvErrors)
        );
        // The connection drops while degraded: still the reason it entered for.
        assert_eq!(t.observe(at(3), false), Verdict::Unchanged);
        assert_eq!(t.observe(at(20), false), Verdict::Unchanged);
        assert_eq!(t.reason(), Some(DegradedReason::KvErrors));
        assert_eq!(t.observe(at(21), true), Verdict::Unchanged);
        assert_eq!(t.observe(at(26), true), Verdict::Exit);
        // A new episode: cut off this time.
        assert_eq!(t.observe(at(30), false), Verdict::Unchanged);
        assert_eq!(
            t.observe(at(40), false),
            Verdict::Enter(DegradedReason::NatsUnreachable)
        );
        assert_eq!(t.reason(), Some(DegradedReason::NatsUnreachable));
    }
}
