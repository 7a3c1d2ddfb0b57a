//! The worker's current state: transitions are checked against the table of SPEC §4 and made
//! observable (watch channel, ordered hook, metric, `tracing` event).

use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::{Event, EventSink};
use crate::state::State;

#[derive(Debug)]
pub(crate) struct StateCell {
    tx: watch::Sender<State>,
    entered: Instant,
    events: EventSink,
}

impl StateCell {
    pub(crate) fn new(events: EventSink) -> (Self, watch::Receiver<State>) {
        let (tx, rx) = watch::channel(State::Init);
        publish_metric(State::Init);
        (
            Self {
                tx,
                entered: Instant::now(),
                events,
            },
            rx,
        )
    }

    pub(crate) fn get(&self) -> State {
        *self.tx.borrow()
    }

    /// Moves to `to` if the table allows it; a disallowed transition is a bug: logged, refused.
    pub(crate) fn set(&mut self, to: State) -> bool {
        let from = self.get();
        if from == to {
            return true;
        }
        if !from.can_transition_to(to) {
            tracing::error!(%from, %to, "refused state transition not in the table");
            return false;
        }
        let after = self.entered.elapsed();
        self.entered = Instant::now();
        self.tx.send_replace(to);
        tracing::info!(%from, %to, after_ms = after.as_millis() as u64, "state changed");
        publish_metric(to);
        self.events.emit(Event::StateChanged { from, to, after });
        true
    }
}

fn publish_metric(state: State) {
    for s in State::ALL {
        metrics::gauge!("parti_state", "state" => s.as_str()).set(if s == state {
            1.0
        } else {
            0.0
        });
    }
}
