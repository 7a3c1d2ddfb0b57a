//! Random event sequences with monotonic times, checked against invariants that hold by
//! design, and against convergence once every timer has fired.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const COLD: Duration = Duration::from_millis(8_000);
const QUIET: Duration = Duration::from_millis(1_000);
const COLD_MAX: Duration = Duration::from_millis(11_000);
const WINDOW: Duration = Duration::from_millis(4_000);
const GRACE: Duration = Duration::from_millis(1_500);
const COOLDOWN: Duration = Duration::from_millis(3_000);
const POOL: u8 = 6;

fn cfg() -> PlannerConfig {
    PlannerConfig {
        cold_start_window: COLD,
        cold_start_quiet: QUIET,
        cold_start_max_window: COLD_MAX,
        planned_scale_window: WINDOW,
        emergency_grace_period: GRACE,
        restart_detection_ratio: 0.5,
        restart_min_workers: 4,
        min_rebalance_interval: COOLDOWN,
    }
}

#[derive(Debug, Clone)]
enum Ev {
    Join(u8),
    Leave(u8),
    Expire(u8),
    PartitionsChanged,
    IntentsChanged,
    StepDue,
    Published,
    /// The runner commits the map in force again (hand-offs, repair), whatever is outstanding.
    Republished,
    /// The leader goes blind, holding crashes back for this many ms at most.
    Blind(u64),
    /// The leader recovers, with a recovery grace of this many ms.
    Recover(u64),
    Tick,
    /// Jump to `next_wakeup` and tick there.
    Wake,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => (0..POOL).prop_map(Ev::Join),
        2 => (0..POOL).prop_map(Ev::Leave),
        2 => (0..POOL).prop_map(Ev::Expire),
        1 => Just(Ev::PartitionsChanged),
        1 => Just(Ev::IntentsChanged),
        1 => Just(Ev::StepDue),
        3 => Just(Ev::Published),
        1 => Just(Ev::Republished),
        1 => (0..100_000u64).prop_map(Ev::Blind),
        1 => (0..10_000u64).prop_map(Ev::Recover),
        1 => Just(Ev::Tick),
        3 => Just(Ev::Wake),
    ]
}

fn id(n: u8) -> WorkerId {
    WorkerId::new(format!("worker-{n}"))
}

fn ids(set: &BTreeSet<u8>) -> Vec<WorkerId> {
    set.iter().map(|&n| id(n)).collect()
}

/// What the test knows independently of the planner, and the invariants over it.
struct Model {
    planner: Planner,
    now: Instant,
    live: BTreeSet<WorkerId>,
    /// When each absent worker's heartbeat expired (cleared when it joins or leaves).
    expired_at: BTreeMap<WorkerId, Instant>,
    map: BTreeSet<WorkerId>,
    running: bool,
    outstanding: Option<Vec<WorkerId>>,
    last_published: Option<Instant>,
    /// The crash hold last fed.
    hold: Option<CrashHold>,
    /// A partition change not yet covered by a full publish emitted after it.
    dirty: bool,
    /// The partition list (not only the intents) changed since the last full publish.
    list_dirty: bool,
    /// The intents changed since the last full publish.
    intents_dirty: bool,
    phase: Phase,
    /// The earliest moment a cold-start window can have opened (first worker seen).
    cold_since: Option<Instant>,
    /// The first membership event since the last window publish: a planned window opens at
    /// one of these, so its publish is at least a window later, and there is one publish per
    /// window.
    first_change: Option<Instant>,
    /// A full restart detected at takeover: the inherited map's workers and when. Its window
    /// may end early: once all of them are back, or a planned window after it opened.
    restart: Option<(BTreeSet<WorkerId>, Instant)>,
    /// When the open cold-start (or restart) window opened: the time it was first announced.
    cold_open: Option<Instant>,
    /// The time of the last join.
    last_join: Option<Instant>,
}

impl Model {
    fn start(view: Option<ClusterView>, live: BTreeSet<u8>) -> Result<Self, TestCaseError> {
        let now = Instant::now();
        let mut m = Model {
            planner: Planner::new(cfg()),
            now,
            live: live.iter().map(|&n| id(n)).collect(),
            expired_at: BTreeMap::new(),
            map: BTreeSet::new(),
            running: false,
            outstanding: None,
            last_published: None,
            hold: None,
            dirty: false,
            list_dirty: false,
            intents_dirty: false,
            phase: Phase::Stable,
            cold_since: (!live.is_empty()).then_some(now),
            first_change: Some(now),
            restart: None,
            cold_open: None,
            last_join: None,
        };
        let out = m.planner.handle(Input::BecameLeader {
            cluster: view.clone(),
            live: ids(&live),
            now,
        });
        if let Some(v) = view.as_ref().filter(|v| v.lifecycle == Lifecycle::Running)
            && m.planner.lifecycle() != Lifecycle::Running
        {
            m.restart = Some((v.workers.iter().cloned().collect(), now));
        }
        if m.planner.lifecycle() == Lifecycle::Running {
            let view = view.unwrap_or_default();
            m.running = true;
            m.map = view.workers.into_iter().collect();
            for w in m.map.difference(&m.live) {
                m.expired_at.insert(w.clone(), now);
            }
        }
        m.check(&out, true)?;
        Ok(m)
    }

    fn feed(&mut self, input: Input) -> Result<(), TestCaseError> {
        let out = self.planner.handle(input);
        self.check(&out, false)
    }

    fn apply(&mut self, ev: Ev) -> Result<(), TestCaseError> {
        let now = self.now;
        if let Ev::Join(_) | Ev::Leave(_) | Ev::Expire(_) = ev {
            self.first_change.get_or_insert(now);
        }
        if let Ev::Join(_) = ev {
            self.cold_since.get_or_insert(now);
        }
        match ev {
            Ev::Join(n) => {
                let new = self.live.insert(id(n));
                self.expired_at.remove(&id(n));
                self.last_join = Some(now);
                self.feed(Input::Joined { worker: id(n), now })?;
                // A new worker's join inside a cold-start window leaves at least QUIET before
                // it closes, unless the maximum comes first (a restart window may instead be
                // brought forward).
                if let (true, Some((_, until)), Some(open), None) =
                    (new, cold_phase(self.phase), self.cold_open, &self.restart)
                {
                    let limit = open + COLD_MAX.max(COLD);
                    prop_assert!(
                        until >= (now + QUIET).min(limit),
                        "closes too soon after a join"
                    );
                }
                Ok(())
            }
            Ev::Leave(n) => {
                self.live.remove(&id(n));
                self.expired_at.remove(&id(n));
                self.feed(Input::Left { worker: id(n), now })
            }
            Ev::Expire(n) => {
                if self.live.remove(&id(n)) {
                    self.expired_at.insert(id(n), now);
                }
                self.feed(Input::Expired { worker: id(n), now })
            }
            Ev::PartitionsChanged => {
                self.dirty = true;
                self.list_dirty = true;
                self.feed(Input::PartitionsChanged { now })
            }
            Ev::IntentsChanged => {
                self.dirty = true;
                self.intents_dirty = true;
                self.feed(Input::IntentsChanged { now })
            }
            Ev::StepDue => {
                self.dirty = true;
                self.feed(Input::StepDue { now })
            }
            Ev::Published => self.publish_done(),
            Ev::Republished => {
                // Only over a committed map, which a republish leaves as it is.
                if !self.running {
                    return Ok(());
                }
                self.last_published = Some(now);
                let version = self.planner.version() + 1;
                self.feed(Input::Republished { version, now })
            }
            Ev::Blind(ms) => {
                let hold = CrashHold::blind(now, now + Duration::from_millis(ms));
                self.hold = Some(hold);
                self.feed(Input::HoldCrashes { hold, now })
            }
            Ev::Recover(ms) => {
                let Some(hold) = self.hold else {
                    return Ok(());
                };
                let hold = hold.recovered(now, now + Duration::from_millis(ms));
                self.hold = Some(hold);
                self.feed(Input::HoldCrashes { hold, now })
            }
            Ev::Tick => self.feed(Input::Tick { now }),
            Ev::Wake => match self.planner.next_wakeup() {
                Some(t) => {
                    self.now = t;
                    self.feed(Input::Tick { now: t })
                }
                None => Ok(()),
            },
        }
    }

    fn publish_done(&mut self) -> Result<(), TestCaseError> {
        let Some(workers) = self.outstanding.take() else {
            return Ok(());
        };
        self.map = workers.iter().cloned().collect();
        self.running = true;
        self.last_published = Some(self.now);
        let version = self.planner.version() + 1;
        let now = self.now;
        self.feed(Input::Published {
            version,
            workers,
            now,
        })
    }

    fn check(&mut self, out: &[Decision], became_leader: bool) -> Result<(), TestCaseError> {
        let now = self.now;
        if let Some(t) = self.planner.next_wakeup() {
            prop_assert!(t >= now, "next_wakeup in the past");
        }
        let phases = out
            .iter()
            .filter(|d| matches!(d, Decision::SetPhase(_)))
            .count();
        prop_assert!(phases <= 1 && out.len() <= 2, "{out:?}");
        // A cold-start window that fell due with no one live waits for the next first join,
        // which opens a new one.
        if cold_phase(self.phase).is_some_and(|(_, until)| until <= now) && self.live.is_empty() {
            self.cold_open = None;
        }
        for d in out {
            match d {
                Decision::SetPhase(p) => {
                    prop_assert!(became_leader || *p != self.phase, "repeated {p:?}");
                    self.phase = *p;
                    if let Some((_, until)) = cold_phase(*p) {
                        let open = *self.cold_open.get_or_insert(now);
                        prop_assert!(until >= now, "a cold-start window announced as past");
                        prop_assert!(
                            until <= open + COLD_MAX.max(COLD),
                            "stretched past the maximum"
                        );
                        let quiet_end = self.last_join.map_or(open, |t| t + QUIET * 2);
                        prop_assert!(
                            until <= (open + COLD).max(quiet_end),
                            "stretched with no recent join"
                        );
                    }
                }
                Decision::Publish {
                    workers,
                    reason,
                    orphans_only,
                } => self.check_publish(workers, *reason, *orphans_only)?,
            }
        }
        prop_assert_eq!(self.planner.phase(), self.phase);
        Ok(())
    }

    fn check_publish(
        &mut self,
        workers: &[WorkerId],
        reason: RebalanceReason,
        orphans_only: bool,
    ) -> Result<(), TestCaseError> {
        use RebalanceReason::*;
        let now = self.now;
        prop_assert!(self.outstanding.is_none(), "two publishes outstanding");
        prop_assert!(!workers.is_empty());
        prop_assert!(
            workers.windows(2).all(|p| p[0] < p[1]),
            "unsorted {workers:?}"
        );
        prop_assert!(workers.iter().all(|w| self.live.contains(w)), "not live");
        prop_assert_eq!(orphans_only, reason == Emergency);
        if !self.running {
            // No publish while in cold start before the window's deadline.
            prop_assert!(
                matches!(reason, ColdStart | Restart),
                "{reason} in cold start"
            );
            let since = self.cold_since;
            let restart_ends_early = reason == Restart
                && self
                    .restart
                    .as_ref()
                    .is_some_and(|(map, at)| map.is_subset(&self.live) || now >= *at + WINDOW);
            prop_assert!(
                restart_ends_early || since.is_some_and(|t| now >= t + COLD),
                "early cold-start publish"
            );
        }
        match reason {
            ColdStart | Restart => {
                prop_assert!(!self.running, "cold-start publish in a running cluster");
                self.cold_open = None;
            }
            Emergency => {
                prop_assert!(self.running, "emergency before the first map");
                let declared = self.expired_at.iter().any(|(w, &t)| {
                    // A crash seen before the blind spell waits only for the recovery,
                    // unless one seen since would be evicted with it.
                    let fire = self.hold.map_or(t + GRACE, |h| {
                        let alone = self.expired_at.iter().all(|(w, &seen)| {
                            !self.map.contains(w) || self.live.contains(w) || seen < h.blind_since
                        });
                        let held = match h.recovered_at {
                            Some(r) if t < h.blind_since && alone => r,
                            _ => h.until,
                        };
                        held.max(t + GRACE)
                    });
                    self.map.contains(w) && fire <= now
                });
                prop_assert!(declared, "emergency with no crash past its grace");
            }
            PartitionChange | Operator | Paced | Placement => {
                prop_assert!(self.running);
                prop_assert_eq!(
                    reason == PartitionChange,
                    self.list_dirty,
                    "reason partitions_changed exactly when the list changed"
                );
                prop_assert_eq!(
                    reason == Operator,
                    !self.list_dirty && self.intents_dirty,
                    "reason operator exactly when the intents (and not the list) changed"
                );
                if let Some(t) = self.last_published {
                    prop_assert!(now >= t + COOLDOWN, "cooldown skipped");
                }
            }
            ScaleUp | ScaleDown | PlannedScale | LeaderChange => {
                prop_assert!(self.running);
                let first = self.first_change.take();
                prop_assert!(first.is_some(), "a second publish for one window");
                prop_assert!(
                    first.is_some_and(|t| now >= t + WINDOW),
                    "early window publish"
                );
            }
        }
        if !orphans_only {
            self.dirty = false;
            self.list_dirty = false;
            self.intents_dirty = false;
        }
        self.outstanding = Some(workers.to_vec());
        Ok(())
    }

    /// Completes every publish and fires every timer.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..100 {
            if self.outstanding.is_some() {
                self.publish_done()?;
            } else if let Some(t) = self.planner.next_wakeup() {
                self.now = t;
                self.feed(Input::Tick { now: t })?;
            } else {
                return Ok(());
            }
        }
        Err(TestCaseError::fail("the planner never settles"))
    }
}

/// The reason and end of a cold-start (or restart) scaling phase.
fn cold_phase(phase: Phase) -> Option<(ScalingReason, Instant)> {
    match phase {
        Phase::Scaling { reason, until } if reason != ScalingReason::PlannedScale => {
            Some((reason, until))
        }
        _ => None,
    }
}

fn start() -> impl Strategy<Value = (Option<(bool, BTreeSet<u8>)>, BTreeSet<u8>)> {
    let set = || proptest::collection::btree_set(0..POOL, 0..=POOL as usize);
    (proptest::option::of((any::<bool>(), set())), set())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_and_the_planner_converges(
        (cluster, live) in start(),
        events in proptest::collection::vec((0..3_000u64, ev()), 0..60),
    ) {
        let view = cluster.map(|(running, workers)| ClusterView {
            version: 5,
            lifecycle: if running { Lifecycle::Running } else { Lifecycle::ColdStart },
            workers: ids(&workers),
        });
        let mut m = Model::start(view, live)?;
        for (advance, ev) in events {
            m.now += Duration::from_millis(advance);
            m.apply(ev)?;
        }
        m.drain()?;
        prop_assert_eq!(m.planner.next_wakeup(), None);
        if !m.live.is_empty() {
            // Every membership change and partition change ends up published.
            prop_assert_eq!(m.planner.lifecycle(), Lifecycle::Running);
            prop_assert_eq!(&m.map, &m.live);
            prop_assert!(!m.dirty, "a partition change was dropped");
            prop_assert_eq!(m.planner.phase(), Phase::Stable);
        }
    }
}
