//! The events of a run: chaos, and the events whose effect on the map is checked exactly.

use std::time::Duration;

use parti::WorkerId;
use parti::ownership::now_ns;
use parti_testkit::checker::FaultRecord;
use rand::Rng;

use super::observer::{self, ids};
use super::{MAX_WORKERS, Sim, partition};

/// One event of a chaos burst.
#[derive(Debug, Clone, Copy)]
enum Chaos {
    Join,
    Leave,
    Crash,
    LeaderCrash,
    /// A cut-off shorter than the grace period.
    Flap,
    Refresh,
    /// A worker cut off for 5–60 s.
    WorkerOutage,
    /// Every worker cut off for 1–40 s.
    StoreOutage,
    RollingRestart,
    FullRestart,
    /// A worker stopped (`SIGSTOP`) past its leases, then resumed.
    Pause,
    /// A worker cut off past `workerIdTtl` while another takes its stable ID.
    StealId,
    Garbage,
    RecreateBucket,
    ErrorBurst,
}

/// How often each chaos event is drawn (weights out of their sum).
const CHAOS: &[(Chaos, u32)] = &[
    (Chaos::Join, 16),
    (Chaos::Leave, 10),
    (Chaos::Crash, 10),
    (Chaos::LeaderCrash, 6),
    (Chaos::Flap, 10),
    (Chaos::Refresh, 10),
    (Chaos::WorkerOutage, 6),
    (Chaos::StoreOutage, 6),
    (Chaos::RollingRestart, 4),
    (Chaos::FullRestart, 3),
    (Chaos::Pause, 5),
    (Chaos::StealId, 4),
    (Chaos::Garbage, 7),
    (Chaos::RecreateBucket, 3),
    (Chaos::ErrorBurst, 3),
];

impl Sim {
    fn draw_chaos(&mut self) -> Chaos {
        let total: u32 = CHAOS.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        for &(chaos, weight) in CHAOS {
            if pick < weight {
                return chaos;
            }
            pick -= weight;
        }
        unreachable!("the draw is below the sum of the weights")
    }

    pub(super) async fn chaos_event(&mut self) {
        let alive = self.alive().len()
            + self
                .starting
                .iter()
                .filter(|(_, t)| !t.is_finished())
                .count();
        let flap_max = (self.config.heartbeat_ttl + self.config.emergency_grace_period())
            .saturating_sub(self.config.heartbeat_interval * 2)
            .max(Duration::from_secs(1));
        match self.draw_chaos() {
            Chaos::Join if alive < MAX_WORKERS => {
                for _ in 0..self.rng.random_range(1..=3) {
                    self.join();
                }
            }
            Chaos::Leave if alive > 1 => {
                if let Some(n) = self.random_alive() {
                    self.leave(n);
                }
            }
            Chaos::Crash if alive > 1 => {
                if let Some(n) = self.random_alive() {
                    self.crash(n).await;
                }
            }
            Chaos::LeaderCrash if alive > 1 => {
                if let Some(n) = self.leader() {
                    self.shared.log("leader crash");
                    self.crash(n).await;
                }
            }
            Chaos::Flap => {
                if let Some(n) = self.random_alive() {
                    let ms = self.rng.random_range(500..=flap_max.as_millis() as u64);
                    self.cut_off(n, Duration::from_millis(ms), "flap");
                }
            }
            Chaos::Refresh => self.refresh().await,
            Chaos::WorkerOutage => {
                if let Some(n) = self.random_alive() {
                    let secs = self.rng.random_range(5..=60);
                    self.cut_off(n, Duration::from_secs(secs), "worker outage");
                }
            }
            Chaos::StoreOutage => {
                self.events += 1;
                let duration = Duration::from_millis(self.rng.random_range(1_000..=40_000));
                // SPEC §7: a leader that was cut off leaves Degraded only after `exitThreshold`
                // of health, then declares no crash for `recoveryGracePeriod` (workers cut off
                // with it are not mass-evicted): a worker that died during the outage is handed
                // on only after both, so the outage excuses gaps until then.
                let recovery = self.config.degraded_behavior.exit_threshold
                    + self.config.degraded_behavior.recovery_grace_period;
                self.record_fault("storeOutage", None, duration + recovery);
                self.store.backend_faults().cut_off_for(duration);
                self.faults_until = self
                    .faults_until
                    .max(tokio::time::Instant::now() + duration);
            }
            Chaos::RollingRestart => {
                self.rolling_restart().await;
            }
            Chaos::FullRestart => self.full_restart().await,
            Chaos::Pause => {
                if let Some(n) = self.random_alive() {
                    self.pause(n);
                }
            }
            Chaos::StealId => {
                if let Some(n) = self.random_alive() {
                    self.steal_id(n).await;
                }
            }
            Chaos::Garbage => self.garbage().await,
            Chaos::RecreateBucket => self.recreate_bucket(),
            Chaos::ErrorBurst => self.error_burst(),
            Chaos::Join | Chaos::Leave | Chaos::Crash | Chaos::LeaderCrash => {}
        }
    }

    /// One event with its effect on the map checked exactly: the cluster is settled before and
    /// after, and nothing else happens in between.
    pub(super) async fn checked_event(&mut self) -> Result<(), ()> {
        let before = self.shared.committed.lock().unwrap().clone();
        match self.rng.random_range(0..3) {
            0 | 1 if self.alive().len() > 1 => {
                let victim = if self.rng.random_bool(0.5) {
                    self.shared.log("checked leader crash");
                    self.leader()
                } else {
                    self.shared.log("checked crash");
                    self.random_alive()
                };
                let Some(victim) = victim else { return Ok(()) };
                let id = self
                    .alive()
                    .iter()
                    .find(|(n, _)| *n == victim)
                    .map(|(_, m)| m.worker_id());
                self.crash(victim).await;
                self.settle("checked crash").await?;
                let after = self.shared.committed.lock().unwrap().clone();
                let owners = after.owners();
                for (p, owner) in before.owners() {
                    if Some(&owner) != id.as_ref() && owners.get(&p) != Some(&owner) {
                        self.shared.violate(
                            "crashMovedOthers",
                            format!(
                                "a crash of {id:?} moved {p} from {owner} to {:?} (only orphans \
                                 may move)",
                                owners.get(&p)
                            ),
                        );
                    }
                }
            }
            _ => {
                self.shared.log("checked rolling restart");
                let same_ids = self.rolling_restart().await;
                self.settle("checked rolling restart").await?;
                let after = self.shared.committed.lock().unwrap().clone();
                let moved = observer::moved(&before, &after);
                if same_ids && moved > 0 {
                    self.shared.violate(
                        "rollingRestartMoved",
                        format!(
                            "a rolling restart moved {moved} partitions (v{} → v{})",
                            before.version, after.version
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Restarts every live worker in turn (stop, start, wait until Stable). `Ok(true)` when each
    /// got its stable ID back.
    async fn rolling_restart(&mut self) -> bool {
        self.finish_pending().await;
        let alive: Vec<(usize, WorkerId)> = self
            .alive()
            .into_iter()
            .map(|(n, m)| (n, m.worker_id()))
            .collect();
        self.shared
            .log(format!("rolling restart of {} workers", alive.len()));
        let mut same = true;
        for (n, id) in alive {
            self.leave(n);
            self.finish_pending().await;
            self.join();
            let fresh = self.next_worker - 1;
            self.finish_pending().await;
            let back = self
                .alive()
                .into_iter()
                .find(|(m, _)| *m == fresh)
                .map(|(_, m)| m.worker_id());
            if back.as_ref() != Some(&id) {
                self.shared.log(format!("{id} came back as {back:?}"));
                same = false;
            }
        }
        same
    }

    /// Stops every worker gracefully, then starts as many again: nothing is held from the
    /// first stop until the new workers have started (recorded as a `fullRestart` fault).
    async fn full_restart(&mut self) {
        self.finish_pending().await;
        let alive = self.alive();
        self.shared
            .log(format!("full restart of {} workers", alive.len()));
        let start_ns = now_ns();
        for (n, _) in &alive {
            self.leave(*n);
        }
        self.finish_pending().await;
        for _ in 0..alive.len().max(1) {
            self.join();
        }
        self.finish_pending().await;
        self.shared.fault(FaultRecord {
            kind: "fullRestart".into(),
            worker: None,
            instance: None,
            start_ns,
            end_ns: now_ns(),
            ends_process: false,
        });
    }

    /// Adds, removes and re-weights partitions, then asks a random worker to refresh.
    async fn refresh(&mut self) {
        self.events += 1;
        let mut next = self.partitions.clone();
        let remove = self.rng.random_range(0..=next.len() / 5);
        for _ in 0..remove {
            if next.len() > 1 {
                let i = self.rng.random_range(0..next.len());
                next.remove(i);
            }
        }
        for p in next.iter_mut() {
            if self.rng.random_bool(0.1) {
                *p = p.clone().with_weight(self.rng.random_range(1..=500));
            }
        }
        for _ in 0..self.rng.random_range(0..=10) {
            next.push(partition(&mut self.rng, self.next_partition));
            self.next_partition += 1;
        }
        self.shared.sources.lock().unwrap().push(ids(&next));
        self.source.set(next.clone()).await;
        self.partitions = next;
        let Some(n) = self.random_alive() else { return };
        self.shared.log(format!(
            "partition refresh ({} partitions, -{remove}) asked of w{n}",
            self.partitions.len()
        ));
        if let Some((_, manager)) = self.alive().into_iter().find(|(m, _)| *m == n) {
            let _ = manager.refresh_partitions();
        }
    }
}
