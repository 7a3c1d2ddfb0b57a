//! The leader controller (SPEC §6).
//!
//! The decision logic is the sans-I/O [`Planner`]: membership events, partition changes and
//! time go in, [`Decision`]s (announce a phase, publish a map) come out. The runner around it
//! does the I/O: it feeds each event, carries out the decisions in order, feeds the result
//! back and sleeps until [`Planner::next_wakeup`].

pub(crate) mod handoff;
pub(crate) mod planner;
pub(crate) mod publisher;
mod runner;

pub(crate) use runner::{LeaderContext, run as run_leader};

pub use planner::{
    ClusterView, Decision, Input, Phase, Planner, PlannerConfig, RebalanceReason, reassign_orphans,
};
