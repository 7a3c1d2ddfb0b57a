//! The local processing gate: which partitions the handler may run for right now (SPEC §13).
//!
//! The server-side filter follows the assignment through NATS and may lag (or be unreachable);
//! the gate is the purely local part of a hand-off. [`Gate::set_held`] changes the held set at
//! once, under one lock, so that no handler call for a released partition starts afterwards;
//! [`Gate::wait`] then waits for the calls that were already running for it.
//!
//! Until the first `set_held` the gate is *open*: every message is handled (the behaviour of a
//! consumer whose user never calls [`WorkerConsumer::set_held`](super::WorkerConsumer::set_held)).
//!
//! Messages are mapped to partitions through the subject template: with one `{partition}` and
//! no wildcard (`events.{partition}`, `in.{partition}.cmd`) the partition key is what lies
//! between the template's prefix and suffix, one hash lookup; any other template is matched
//! against each held partition's rendered filter.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::subjects::{PLACEHOLDER, is_match};

/// How a message subject leads back to a partition's subject key.
#[derive(Debug)]
enum Derive {
    /// One placeholder and no wildcard: the key is what lies between `prefix` and `suffix`.
    Affix { prefix: String, suffix: String },
    /// Anything else: match the subject against every held partition's rendered filter.
    Scan,
}

/// One partition the gate knows: held, or released with handler calls still running.
#[derive(Debug)]
struct Slot {
    held: bool,
    /// The partition's filter subject (the template rendered for it).
    filter: String,
    /// Bumped on every release: a call admitted in an earlier generation ran before it.
    generation: u64,
    /// Calls admitted in the current generation and still running.
    current: usize,
    /// Calls admitted before the last release and still running.
    older: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Whether `set_held` was ever called (until then every message passes).
    closed: bool,
    /// Calls admitted while the gate was open and still running.
    open_running: usize,
    /// Partition subject key → slot.
    slots: HashMap<Arc<str>, Slot>,
}

/// The held partitions and the handler calls running for each. Shared by the message loop,
/// the catch-up drains and the handle.
#[derive(Debug)]
pub(crate) struct Gate {
    derive: Derive,
    state: Mutex<State>,
    /// The holder's lease deadline (ownership clock, Unix ns; 0: none). Past it nothing is
    /// admitted, whatever the held set says: a worker whose lease lapsed stops at once, even
    /// before its manager gets round to releasing.
    valid_until: Arc<AtomicU64>,
    /// Woken when the last call of a released partition (or of the open gate) finishes.
    finished: Notify,
}

/// What a [`Gate::set_held`] must wait for: the calls running before it for what it released.
#[derive(Debug, Default)]
pub(crate) struct Releases {
    keys: Vec<Arc<str>>,
    open: bool,
}

/// A running handler call, counted until dropped.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    gate: &'a Gate,
    key: Option<(Arc<str>, u64)>,
}

impl Gate {
    /// A gate for messages whose subjects are rendered from `template`; open until the first
    /// [`set_held`](Self::set_held).
    pub(crate) fn new(template: &str) -> Self {
        let parts: Vec<&str> = template.split(PLACEHOLDER).collect();
        let wildcard = template.split('.').any(|t| t == "*" || t == ">");
        let derive = match parts.as_slice() {
            [prefix, suffix] if !wildcard => Derive::Affix {
                prefix: (*prefix).to_owned(),
                suffix: (*suffix).to_owned(),
            },
            _ => Derive::Scan,
        };
        Self {
            derive,
            state: Mutex::new(State::default()),
            valid_until: Arc::new(AtomicU64::new(0)),
            finished: Notify::new(),
        }
    }

    /// The lease deadline cell (see [`Gate::valid_until`]): the manager stores each renewal's
    /// deadline in it.
    pub(crate) fn lease(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.valid_until)
    }

    /// Whether the lease (if one was given) has run out.
    fn lapsed(&self) -> bool {
        let until = self.valid_until.load(Ordering::Acquire);
        until != 0 && crate::clock::unix_ns() >= until
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a handler call for a message on `subject`: `None` when its partition is not held
    /// (the message must not reach the handler).
    pub(crate) fn admit(&self, subject: &str) -> Option<Permit<'_>> {
        let mut state = self.lock();
        if state.closed && self.lapsed() {
            return None;
        }
        if !state.closed {
            state.open_running += 1;
            return Some(Permit {
                gate: self,
                key: None,
            });
        }
        let key = match &self.derive {
            Derive::Affix { prefix, suffix } => {
                let key = subject.strip_prefix(prefix.as_str())?;
                key.strip_suffix(suffix.as_str())?
            }
            Derive::Scan => {
                let (key, _) = state
                    .slots
                    .iter()
                    .find(|(_, slot)| slot.held && is_match(&slot.filter, subject))?;
                let key = Arc::clone(key);
                let slot = state.slots.get_mut(&key)?;
                slot.current += 1;
                let generation = slot.generation;
                return Some(Permit {
                    gate: self,
                    key: Some((key, generation)),
                });
            }
        };
        let (key, slot) = state.slots.get_key_value(key)?;
        if !slot.held {
            return None;
        }
        let (key, generation) = (Arc::clone(key), slot.generation);
        let slot = state.slots.get_mut(&key)?;
        slot.current += 1;
        Some(Permit {
            gate: self,
            key: Some((key, generation)),
        })
    }

    /// Whether a message on `subject` would be admitted now (no call is counted).
    #[cfg(test)]
    fn passes(&self, subject: &str) -> bool {
        self.admit(subject).is_some()
    }

    /// Makes exactly these partitions (subject key, rendered filter) held, at once. Returns
    /// what [`wait`](Self::wait) must wait for: the calls already running for partitions no
    /// longer held (on the first call: every call admitted while the gate was open).
    pub(crate) fn set_held(&self, held: impl IntoIterator<Item = (String, String)>) -> Releases {
        let mut state = self.lock();
        let held: HashMap<String, String> = held.into_iter().collect();
        let mut releases = Releases {
            keys: Vec::new(),
            open: !state.closed && state.open_running > 0,
        };
        state.closed = true;
        for (key, slot) in &mut state.slots {
            let keep = held.contains_key(key.as_ref());
            if slot.held && !keep {
                slot.held = false;
                slot.generation += 1;
                slot.older += slot.current;
                slot.current = 0;
                if slot.older > 0 {
                    releases.keys.push(Arc::clone(key));
                }
            }
        }
        state
            .slots
            .retain(|_, slot| slot.held || slot.current + slot.older > 0);
        for (key, filter) in held {
            match state.slots.get_mut(key.as_str()) {
                Some(slot) => {
                    slot.held = true;
                    slot.filter = filter;
                }
                None => {
                    state.slots.insert(
                        key.into(),
                        Slot {
                            held: true,
                            filter,
                            generation: 0,
                            current: 0,
                            older: 0,
                        },
                    );
                }
            }
        }
        releases
    }

    fn released(&self, releases: &Releases) -> bool {
        let state = self.lock();
        (!releases.open || state.open_running == 0)
            && releases.keys.iter().all(|key| {
                state
                    .slots
                    .get(key.as_ref())
                    .is_none_or(|slot| slot.older == 0)
            })
    }

    /// Completes once every call that `releases` names has finished.
    pub(crate) async fn wait(&self, releases: Releases) {
        loop {
            let mut finished = pin!(self.finished.notified());
            finished.as_mut().enable();
            if self.released(&releases) {
                return;
            }
            finished.await;
        }
    }

    fn finish(&self, key: Option<&(Arc<str>, u64)>) {
        let mut state = self.lock();
        let wake = match key {
            None => {
                state.open_running = state.open_running.saturating_sub(1);
                state.open_running == 0
            }
            Some((key, generation)) => {
                let Some(slot) = state.slots.get_mut(key.as_ref()) else {
                    return;
                };
                let wake = if slot.generation == *generation {
                    slot.current = slot.current.saturating_sub(1);
                    false
                } else {
                    slot.older = slot.older.saturating_sub(1);
                    slot.older == 0
                };
                if !slot.held && slot.current + slot.older == 0 {
                    state.slots.remove(key.as_ref());
                }
                wake
            }
        };
        drop(state);
        if wake {
            self.finished.notify_waiters();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gate.finish(self.key.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn held(keys: &[&str]) -> Vec<(String, String)> {
        keys.iter()
            .map(|k| ((*k).to_owned(), format!("events.{k}")))
            .collect()
    }

    async fn done(gate: &Gate, releases: Releases) -> bool {
        tokio::time::timeout(Duration::from_millis(50), gate.wait(releases))
            .await
            .is_ok()
    }

    #[test]
    fn open_until_first_set_held() {
        let gate = Gate::new("events.{partition}");
        assert!(gate.passes("events.a"));
        assert!(gate.passes("anything.else"));
        let _ = gate.set_held(held(&["a", "b.c"]));
        assert!(gate.passes("events.a"));
        assert!(gate.passes("events.b.c"), "multi-key partitions");
        assert!(!gate.passes("events.b"));
        assert!(!gate.passes("events.z"));
        assert!(!gate.passes("other.a"));
        let _ = gate.set_held(Vec::new());
        assert!(!gate.passes("events.a"), "nothing held: nothing passes");
    }

    #[test]
    fn suffix_and_wildcard_templates() {
        let gate = Gate::new("in.{partition}.cmd");
        let _ = gate.set_held([("a".to_owned(), "in.a.cmd".to_owned())]);
        assert!(gate.passes("in.a.cmd"));
        assert!(!gate.passes("in.a.other"));
        let gate = Gate::new("ev.{partition}.>");
        let _ = gate.set_held([("a".to_owned(), "ev.a.>".to_owned())]);
        assert!(gate.passes("ev.a.x.y"));
        assert!(!gate.passes("ev.b.x"));
        assert!(!gate.passes("ev.a"));
    }

    #[tokio::test]
    async fn release_waits_for_running_calls_of_released_partitions_only() {
        let gate = Gate::new("events.{partition}");
        let _ = gate.set_held(held(&["a", "b"]));
        let a = gate.admit("events.a").unwrap();
        let b = gate.admit("events.b").unwrap();
        let releases = gate.set_held(held(&["b"]));
        assert!(!gate.passes("events.a"), "no new call once released");
        let wait = gate.wait(releases);
        let mut wait = pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.as_mut())
                .await
                .is_err(),
            "a's call still runs"
        );
        drop(b);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.as_mut())
                .await
                .is_err(),
            "b is still held: its call does not count"
        );
        drop(a);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn nothing_to_wait_for_when_nothing_runs() {
        let gate = Gate::new("events.{partition}");
        let releases = gate.set_held(held(&["a"]));
        assert!(done(&gate, releases).await);
        let releases = gate.set_held(held(&[]));
        assert!(done(&gate, releases).await);
    }

    #[tokio::test]
    async fn first_set_held_waits_for_calls_admitted_while_open() {
        let gate = Gate::new("events.{partition}");
        let open = gate.admit("events.a").unwrap();
        let releases = gate.set_held(held(&["a"]));
        let wait = gate.wait(releases);
        let mut wait = pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.as_mut())
                .await
                .is_err()
        );
        drop(open);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn gain_during_in_flight_call() {
        let gate = Gate::new("events.{partition}");
        let _ = gate.set_held(held(&["a"]));
        let old = gate.admit("events.a").unwrap();
        let released = gate.set_held(held(&[]));
        // Regained while the old call still runs: deliverable at once.
        let regained = gate.set_held(held(&["a"]));
        let new = gate.admit("events.a").expect("deliverable at once");
        assert!(done(&gate, regained).await, "regaining waits for nothing");
        let wait = gate.wait(released);
        let mut wait = pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.as_mut())
                .await
                .is_err(),
            "the call from before the release still runs"
        );
        drop(old);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait)
                .await
                .is_ok(),
            "calls started after regaining do not hold the release up"
        );
        // Released again: now the new call counts.
        let again = gate.set_held(held(&[]));
        let wait = gate.wait(again);
        let mut wait = pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.as_mut())
                .await
                .is_err()
        );
        drop(new);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait)
                .await
                .is_ok()
        );
        assert!(gate.lock().slots.is_empty(), "nothing left behind");
    }
}
