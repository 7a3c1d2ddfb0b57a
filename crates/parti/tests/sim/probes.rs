//! Probes inside the workers: their event streams and periodic samples of their state.

use std::sync::Arc;
use std::time::Duration;

use parti::{Event, State};

use super::Slots;
use super::observer::Shared;

/// Follows one worker's events, in order: the terms it leads under, and that it holds no
/// partition when it fences itself (moves to `ClaimingId` after losing its stable ID).
pub(super) async fn listen(
    n: usize,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    shared: Arc<Shared>,
) {
    let mut held = 0;
    loop {
        match events.recv().await {
            Ok(Event::LeadershipChanged { is_leader, term }) => {
                shared.log(format!("w{n} leadership {is_leader} term {term:?}"));
                if let Some(term) = term {
                    shared.leader_term(term, n);
                }
            }
            Ok(Event::AssignmentChanged { assignment, .. }) => held = assignment.partitions.len(),
            Ok(Event::StateChanged { from, to, .. }) => {
                if matches!(to, State::Degraded | State::ClaimingId) || from == State::Degraded {
                    shared.log(format!("w{n} {from} -> {to}"));
                }
                if to == State::ClaimingId && from != State::Init && held > 0 {
                    shared.violate(format!("w{n} fenced itself still owning {held} partitions"));
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                shared.violate(format!("w{n}: the event listener missed {missed} events"));
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Samples the live workers every 500 ms: at most one leads; one that is re-claiming its
/// stable ID (fenced) owns nothing.
pub(super) async fn sample(slots: Slots, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_leaders = Vec::new();
    loop {
        tick.tick().await;
        let slots = slots.lock().unwrap();
        let leaders: Vec<usize> = slots
            .iter()
            .filter(|s| s.alive && s.manager.is_leader())
            .map(|s| s.n)
            .collect();
        if leaders.len() > 1 && leaders != last_leaders {
            shared.violate(format!(
                "{} workers lead at once: {leaders:?}",
                leaders.len()
            ));
        }
        last_leaders = leaders;
        for s in slots.iter().filter(|s| s.alive) {
            let owned = s.manager.assignment().partitions.len();
            if s.manager.state() == State::ClaimingId && owned > 0 {
                shared.violate(format!(
                    "w{} is fenced but still owns {owned} partitions",
                    s.n
                ));
            }
        }
    }
}
