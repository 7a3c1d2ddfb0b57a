//! Injectable faults of a [`MemoryStore`](super::MemoryStore) client or of its whole backend.
// The setters are the `test-util` API; without it only the checks run.
#![cfg_attr(not(any(test, feature = "test-util")), allow(dead_code))]

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::time::Instant;

/// A handle on the faults of one client (or, from
/// `MemoryStore::backend_faults` (`test-util` feature), of every client at once: an
/// outage of the backend). Cheap to clone; every clone controls the same faults.
///
/// While cut off, every call fails with [`StoreError::Backend`](crate::StoreError::Backend),
/// `is_connected()` is false and watches stall (after one `Err` item); they resume when the
/// cut-off ends, either where they stopped or, with [`resnapshot_on_reconnect`], with a fresh
/// snapshot.
///
/// While paused (a model of a process stopped by `SIGSTOP`), every call blocks until the pause
/// ends and then goes on as if nothing happened; a reply due during the pause is delivered after
/// it; watches deliver nothing during the pause, and no error either.
///
/// [`resnapshot_on_reconnect`]: Faults::resnapshot_on_reconnect
#[derive(Debug, Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<FaultState>,
    /// Bumped on every change, so stalled watches re-check.
    changed: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct FaultState {
    cut_off: Option<CutOff>,
    paused: Option<CutOff>,
    fail_next: u32,
    failure_rate: f64,
    lost_reply_rate: f64,
    latency: (Duration, Duration),
    resnapshot: bool,
}

/// How long a cut-off or a pause lasts.
#[derive(Debug, Clone, Copy)]
enum CutOff {
    UntilReconnect,
    Until(Instant),
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(FaultState::default()),
                changed: watch::channel(()).0,
            }),
        }
    }
}

impl Faults {
    fn state(&self) -> MutexGuard<'_, FaultState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut FaultState)) {
        f(&mut self.state());
        self.inner.changed.send_replace(());
    }

    /// Cuts the client off until [`reconnect`](Self::reconnect).
    pub fn cut_off(&self) {
        self.update(|s| s.cut_off = Some(CutOff::UntilReconnect));
    }

    /// Cuts the client off for `duration` from now (extends a shorter cut-off, never shortens
    /// one).
    pub fn cut_off_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        self.update(|s| s.cut_off = extend(s.cut_off, until));
    }

    /// Ends a cut-off at once.
    pub fn reconnect(&self) {
        self.update(|s| s.cut_off = None);
    }

    /// Pauses the client until [`resume`](Self::resume): every call blocks (see the type docs).
    pub fn pause(&self) {
        self.update(|s| s.paused = Some(CutOff::UntilReconnect));
    }

    /// Pauses the client for `duration` from now (extends a shorter pause, never shortens one).
    pub fn pause_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        self.update(|s| s.paused = extend(s.paused, until));
    }

    /// Ends a pause at once: blocked calls go on.
    pub fn resume(&self) {
        self.update(|s| s.paused = None);
    }

    /// Whether the client is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused_until(Instant::now()).is_some()
    }

    /// Whether the client is cut off now.
    pub fn is_cut_off(&self) -> bool {
        self.cut_off_until(Instant::now()).is_some()
    }

    /// Makes the next `n` calls fail with a backend error.
    pub fn fail_next(&self, n: u32) {
        self.update(|s| s.fail_next = s.fail_next.saturating_add(n));
    }

    /// Makes each call fail with probability `p` (clamped to `[0, 1]`), drawn from the store's
    /// seeded generator.
    pub fn set_failure_rate(&self, p: f64) {
        self.update(|s| s.failure_rate = clamp01(p));
    }

    /// Makes each write report a timeout with probability `p` although it was applied (a lost
    /// reply).
    pub fn set_lost_reply_rate(&self, p: f64) {
        self.update(|s| s.lost_reply_rate = clamp01(p));
    }

    /// Delays each call by a duration drawn uniformly from `[min, max]`.
    pub fn set_latency(&self, min: Duration, max: Duration) {
        self.update(|s| s.latency = (min.min(max), max.max(min)));
    }

    /// Whether a watch re-snapshots (`Init` … `InitDone`) after a cut-off instead of resuming
    /// where it stopped. Both are allowed by the [`Bucket::watch`](crate::store::Bucket::watch)
    /// contract; consumers must handle either.
    pub fn resnapshot_on_reconnect(&self, yes: bool) {
        self.update(|s| s.resnapshot = yes);
    }

    /// `Some(None)` while cut off until a reconnect, `Some(Some(t))` while cut off until `t`,
    /// `None` when connected.
    pub(super) fn cut_off_until(&self, now: Instant) -> Option<Option<Instant>> {
        active(self.state().cut_off, now)
    }

    /// Like [`cut_off_until`](Self::cut_off_until), for the pause.
    pub(super) fn paused_until(&self, now: Instant) -> Option<Option<Instant>> {
        active(self.state().paused, now)
    }

    pub(super) fn resnapshots(&self) -> bool {
        self.state().resnapshot
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<()> {
        self.inner.changed.subscribe()
    }

    pub(super) fn latency(&self, rng: &mut StdRng) -> Duration {
        let (min, max) = self.state().latency;
        if max.is_zero() {
            return Duration::ZERO;
        }
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(nanos(min)..=nanos(max)))
    }

    /// Whether this call fails (consumes one of `fail_next` first).
    pub(super) fn fails(&self, rng: &mut StdRng) -> bool {
        let mut s = self.state();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return true;
        }
        s.failure_rate > 0.0 && rng.random_bool(s.failure_rate)
    }

    pub(super) fn loses_reply(&self, rng: &mut StdRng) -> bool {
        let p = self.state().lost_reply_rate;
        p > 0.0 && rng.random_bool(p)
    }
}

/// `current` extended to last at least until `until`.
fn extend(current: Option<CutOff>, until: Instant) -> Option<CutOff> {
    match current {
        Some(CutOff::UntilReconnect) => Some(CutOff::UntilReconnect),
        Some(CutOff::Until(t)) if t >= until => Some(CutOff::Until(t)),
        _ => Some(CutOff::Until(until)),
    }
}

/// `Some(None)` while `span` lasts until it is ended by hand, `Some(Some(t))` while it lasts
/// until `t`, `None` when it is over.
fn active(span: Option<CutOff>, now: Instant) -> Option<Option<Instant>> {
    match span {
        Some(CutOff::UntilReconnect) => Some(None),
        Some(CutOff::Until(t)) if now < t => Some(Some(t)),
        _ => None,
    }
}

/// Waits until neither `a` nor `b` is paused (at once when neither is).
pub(super) async fn wait_unpaused(a: &Faults, b: &Faults) {
    let (mut a_changes, mut b_changes) = (a.subscribe(), b.subscribe());
    loop {
        a_changes.borrow_and_update();
        b_changes.borrow_and_update();
        let now = Instant::now();
        let Some(until) = merge_cut_offs(a.paused_until(now), b.paused_until(now)) else {
            return;
        };
        let timer = crate::clock::sleep_until_opt(until);
        tokio::select! {
            () = timer => {}
            _ = a_changes.changed() => {}
            _ = b_changes.changed() => {}
        }
    }
}

fn clamp01(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// The later of two cut-offs (`None` inside means "until a reconnect").
pub(super) fn merge_cut_offs(
    a: Option<Option<Instant>>,
    b: Option<Option<Instant>>,
) -> Option<Option<Instant>> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(None), _) | (_, Some(None)) => Some(None),
        (Some(Some(x)), Some(Some(y))) => Some(Some(x.max(y))),
    }
}
