//! Probes inside the workers: their event streams and periodic samples of their leadership.
//! What they *hold* is not probed here: every manager reports it to its ownership recorder,
//! which the checker reads.

use std::sync::Arc;
use std::time::Duration;

use parti::{Event, State};

use super::Slots;
use super::observer::Shared;

/// Follows one worker's events, in order: the terms it leads under (no two workers may lead
/// under one term) and the state changes worth a trace line.
pub(super) async fn listen(
    n: usize,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    shared: Arc<Shared>,
) {
    loop {
        match events.recv().await {
            Ok(Event::LeadershipChanged { is_leader, term }) => {
                shared.log(format!("w{n} leadership {is_leader} term {term:?}"));
                if let Some(term) = term {
                    shared.leader_term(term, n);
                }
            }
            Ok(Event::StateChanged { from, to, .. }) => {
                if matches!(to, State::Degraded | State::ClaimingId) || from == State::Degraded {
                    shared.log(format!("w{n} {from} -> {to}"));
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                shared.violate(
                    "listenerLagged",
                    format!("w{n}: the event listener missed {missed} events"),
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Samples the live workers every 500 ms: at most one leads.
pub(super) async fn sample(slots: Slots, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_leaders = Vec::new();
    loop {
        tick.tick().await;
        let leaders: Vec<usize> = slots
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.alive && s.manager.is_leader())
            .map(|s| s.n)
            .collect();
        if leaders.len() > 1 && leaders != last_leaders {
            shared.violate(
                "twoLeaders",
                format!("{} workers lead at once: {leaders:?}", leaders.len()),
            );
        }
        last_leaders = leaders;
    }
}
