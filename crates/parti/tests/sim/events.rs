//! The events of a run: chaos, and the events whose effect on the map is checked exactly.

use std::time::Duration;

use parti::WorkerId;
use rand::Rng;

use super::observer::{self, ids};
use super::{MAX_WORKERS, Sim, partition};

impl Sim {
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
        match self.rng.random_range(0..100) {
            0..20 if alive < MAX_WORKERS => {
                for _ in 0..self.rng.random_range(1..=3) {
                    self.join();
                }
            }
            20..32 if alive > 1 => {
                if let Some(n) = self.random_alive() {
                    self.leave(n);
                }
            }
            32..44 if alive > 1 => {
                if let Some(n) = self.random_alive() {
                    self.crash(n).await;
                }
            }
            44..50 if alive > 1 => {
                if let Some(n) = self.leader() {
                    self.shared.log("leader crash");
                    self.crash(n).await;
                }
            }
            50..64 => {
                if let Some(n) = self.random_alive() {
                    let ms = self.rng.random_range(500..=flap_max.as_millis() as u64);
                    self.cut_off(n, Duration::from_millis(ms), "flap");
                }
            }
            64..76 => self.refresh().await,
            76..84 => {
                if let Some(n) = self.random_alive() {
                    let secs = self.rng.random_range(5..=60);
                    self.cut_off(n, Duration::from_secs(secs), "worker outage");
                }
            }
            84..92 => {
                self.events += 1;
                let ms = self.rng.random_range(1_000..=40_000);
                self.shared.log(format!("store outage for {ms}ms"));
                let duration = Duration::from_millis(ms);
                self.store.backend_faults().cut_off_for(duration);
                self.faults_until = self
                    .faults_until
                    .max(tokio::time::Instant::now() + duration);
            }
            92..97 => {
                self.rolling_restart().await;
            }
            97..100 => self.full_restart().await,
            _ => {}
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
                        self.shared.violate(format!(
                            "a crash of {id:?} moved {p} from {owner} to {:?} (only orphans may move)",
                            owners.get(&p)
                        ));
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
                    self.shared.violate(format!(
                        "a rolling restart moved {moved} partitions (v{} → v{})",
                        before.version, after.version
                    ));
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

    /// Stops every worker gracefully, then starts as many again.
    async fn full_restart(&mut self) {
        self.finish_pending().await;
        let alive = self.alive();
        self.shared
            .log(format!("full restart of {} workers", alive.len()));
        for (n, _) in &alive {
            self.leave(*n);
        }
        self.finish_pending().await;
        for _ in 0..alive.len().max(1) {
            self.join();
        }
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
            let _ = manager.refresh_partitions().await;
        }
    }
}
