//! The leader controller (SPEC §6).
//!
//! The decision logic is the sans-I/O [`Planner`]: membership events, partition changes and
//! time go in, [`Decision`]s (announce a phase, publish a map) come out. The runner around it
//! does the I/O: it feeds each event, carries out the decisions in order, feeds the result
//! back and sleeps until [`Planner::next_wakeup`].
//!
//! # Layout
//!
//! - `placement` (pure) applies the operator's intents around the strategy (drained workers
//!   get nothing, pins, a frozen cluster places only orphans) and cuts a rebalance into paced
//!   steps (`maxMovesPerStep`).
//! - `planner` (pure) decides when to announce a phase and when to publish; `handoff` (pure)
//!   decides which moved partitions stay pending and when a republish or an expulsion is due;
//!   `compat` (pure) decides what the leader may rely on from each worker in a fleet of mixed
//!   versions (protocol and capabilities from the heartbeats).
//! - `leader::Leader` owns one term's state: its context, the `Publisher` (the fenced writer
//!   and the commit it last read or made), the `Planner`, the partitions the map was last built
//!   from, and the hand-off bookkeeping (members' heartbeats, lineages seen, batching,
//!   expulsions). It has one method per operation: feed an input, execute a decision, complete
//!   hand-offs, expel overdue losers, say when to wake next.
//! - `history` writes each publish (its moves and their reasons) under `history.<version>`,
//!   in a task of its own so that the publish path never waits for it.
//! - `runner` is the thin I/O shell: it owns the membership watcher and the channels (its
//!   `Feeds`), turns each event into one `Leader` call, and races the `Leader`'s store and
//!   source calls against the term's cancellation.

pub(crate) mod compat;
pub(crate) mod handoff;
pub(crate) mod history;
mod leader;
pub(crate) mod placement;
pub(crate) mod planner;
pub(crate) mod publisher;
mod runner;

pub(crate) use leader::LeaderContext;
pub(crate) use runner::run as run_leader;

pub(crate) use planner::{CrashHold, PlannerConfig};
