//! One test per row of SPEC §6 and per interleaving, with explicit times.
//!
//! `H` drives a planner from a time origin: `h.join(3, 1_000)` is worker-3 joining at t0 + 1 s,
//! and `h.wake(ms)` asserts that `next_wakeup` is exactly t0 + ms before ticking there.

use std::time::{Duration, Instant};

use super::*;
use crate::state::ClusterPhase;
use crate::state::ScalingReason::{ColdStart, PlannedScale, Restart};

const COLD: u64 = 30_000;
const QUIET: u64 = 5_000;
const COLD_MAX: u64 = 90_000;
const WINDOW: u64 = 10_000;
const GRACE: u64 = 3_000;
const COOLDOWN: u64 = 5_000;

fn cfg() -> PlannerConfig {
    PlannerConfig {
        cold_start_window: Duration::from_millis(COLD),
        cold_start_quiet: Duration::from_millis(QUIET),
        cold_start_max_window: Duration::from_millis(COLD_MAX),
        planned_scale_window: Duration::from_millis(WINDOW),
        emergency_grace_period: Duration::from_millis(GRACE),
        restart_detection_ratio: 0.5,
        restart_min_workers: 4,
        min_rebalance_interval: Duration::from_millis(COOLDOWN),
    }
}

fn w(n: u32) -> WorkerId {
    WorkerId::new(format!("worker-{n}"))
}

fn ws(ns: &[u32]) -> Vec<WorkerId> {
    let mut v: Vec<WorkerId> = ns.iter().map(|&n| w(n)).collect();
    v.sort();
    v
}

/// A planner and a time origin; `at(ms)` is `t0 + ms`.
struct H {
    p: Planner,
    t0: Instant,
}

impl H {
    fn new() -> Self {
        Self {
            p: Planner::new(cfg()),
            t0: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn leader(&mut self, cluster: Option<ClusterView>, live: &[u32], ms: u64) -> Vec<Decision> {
        let now = self.at(ms);
        self.p.handle(Input::BecameLeader {
            cluster,
            live: ws(live),
            now,
        })
    }

    /// A leader of a running cluster whose map is `workers`, all live, published at t0.
    fn running(workers: &[u32]) -> Self {
        let mut h = Self::new();
        let view = running_view(1, workers);
        assert_eq!(h.leader(Some(view), workers, 0), [set(Phase::Stable)]);
        h
    }

    fn join(&mut self, n: u32, ms: u64) -> Vec<Decision> {
        let now = self.at(ms);
        self.p.handle(Input::Joined { worker: w(n), now })
    }

    fn leave(&mut self, n: u32, ms: u64) -> Vec<Decision> {
        let now = self.at(ms);
        self.p.handle(Input::Left { worker: w(n), now })
    }

    fn expire(&mut self, n: u32, ms: u64) -> Vec<Decision> {
        let now = self.at(ms);
        self.p.handle(Input::Expired { worker: w(n), now })
    }

    fn tick(&mut self, ms: u64) -> Vec<Decision> {
        let now = self.at(ms);
        self.p.handle(Input::Tick { now })
    }

    fn partitions_changed(&mut self, ms: u64) -> Vec<Decision> {
        let now = self.at(ms);
        self.p.handle(Input::PartitionsChanged { now })
    }

    fn published(&mut self, workers: &[u32], ms: u64) -> Vec<Decision> {
        let now = self.at(ms);
        let version = self.p.version() + 1;
        self.p.handle(Input::Published {
            version,
            workers: ws(workers),
            now,
        })
    }

    /// Ticks at `next_wakeup`, asserting it is `ms`.
    fn wake(&mut self, ms: u64) -> Vec<Decision> {
        assert_eq!(self.p.next_wakeup(), Some(self.at(ms)), "next wakeup");
        self.tick(ms)
    }

    fn scaling(&self, reason: ScalingReason, ms: u64) -> Decision {
        set(Phase::Scaling {
            reason,
            until: self.at(ms),
        })
    }
}

fn running_view(version: u64, workers: &[u32]) -> ClusterView {
    ClusterView {
        version,
        lifecycle: Lifecycle::Running,
        workers: ws(workers),
    }
}

fn set(phase: Phase) -> Decision {
    Decision::SetPhase(phase)
}

fn publish(workers: &[u32], reason: RebalanceReason) -> Decision {
    Decision::Publish {
        workers: ws(workers),
        reason,
        orphans_only: reason == RebalanceReason::Emergency,
    }
}

fn rebalance(workers: &[u32], reason: RebalanceReason) -> Vec<Decision> {
    vec![set(Phase::Rebalancing), publish(workers, reason)]
}

fn emergency(workers: &[u32]) -> Vec<Decision> {
    vec![
        set(Phase::Emergency),
        publish(workers, RebalanceReason::Emergency),
    ]
}

mod crashes;
mod membership;
mod rebalance;

#[test]
fn a_cold_start_end_to_end_with_the_default_configuration() {
    let t0 = Instant::now();
    let mut planner = Planner::new(PlannerConfig::default());
    let live = vec![WorkerId::new("worker-0"), WorkerId::new("worker-1")];
    planner.handle(Input::BecameLeader {
        cluster: None,
        live: live.clone(),
        now: t0,
    });
    let deadline = planner.next_wakeup().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(30));
    let decisions = planner.handle(Input::Tick { now: deadline });
    assert!(decisions.contains(&Decision::Publish {
        workers: live.clone(),
        reason: RebalanceReason::ColdStart,
        orphans_only: false,
    }));
    planner.handle(Input::Published {
        version: 1,
        workers: live,
        now: deadline,
    });
    assert_eq!(planner.lifecycle(), Lifecycle::Running);
}

#[test]
fn a_scaling_phase_is_published_with_wall_clock_milliseconds() {
    let now = Instant::now();
    let phase = Phase::Scaling {
        reason: ScalingReason::ColdStart,
        until: now + Duration::from_secs(2),
    };
    assert_eq!(
        phase.to_cluster_phase(now, 1_000),
        crate::ClusterPhase::Scaling {
            reason: ScalingReason::ColdStart,
            until_ms: 3_000
        },
    );
}
