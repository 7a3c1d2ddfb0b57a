//! Injecting each fault: the I/O shell around the [`Runner`]'s fleet and servers. Every fault
//! returns the [`FaultRecord`] the checker reads and a line saying what exactly was done.

use anyhow::Context as _;
use backon::Retryable as _;
use parti::ownership::now_ns;
use parti::records::{page_key, page_of, parse_worker_key};
use parti_testkit::checker::FaultRecord;
use rustix::process::Signal;

use super::Runner;
use super::fleet::Identity;
use super::plan::FaultKind;
use crate::buckets::{ClusterBuckets, Role};

/// Garbage written over live keys: neither JSON nor UTF-8.
const GARBAGE: &[u8] = b"\x00\xffgarbage{not json";
/// A heartbeat key that is no worker ID of the pool.
const NOT_A_WORKER: &str = "not-a-worker";

/// A fault as done: the record for the checker and what it was done to.
pub(crate) struct Done {
    pub(crate) record: FaultRecord,
    pub(crate) detail: String,
}

impl Done {
    fn new(kind: FaultKind, start_ns: u64, end_ns: u64, detail: String) -> Self {
        Self {
            record: FaultRecord {
                kind: kind.name().into(),
                worker: None,
                instance: None,
                start_ns,
                end_ns,
                ends_process: false,
            },
            detail,
        }
    }

    fn on(mut self, identity: Identity) -> Self {
        self.record.worker = identity.worker;
        self.record.instance = identity.instance;
        self
    }
}

impl Runner {
    /// Injects one fault of `kind` and returns it once healed.
    pub(crate) async fn inject(&mut self, kind: FaultKind) -> anyhow::Result<Done> {
        match kind {
            FaultKind::Kill => {
                let slot = self.pick_follower().await;
                self.kill(kind, slot).await
            }
            FaultKind::LeaderKill => match self.leader_slot().await {
                Some(slot) => self.kill(kind, slot).await,
                None => {
                    let slot = self.pick_slot();
                    let mut done = self.kill(FaultKind::Kill, slot).await?;
                    done.detail.push_str(" (no leader found: a plain kill)");
                    Ok(done)
                }
            },
            FaultKind::Pause => self.pause(kind, false).await,
            FaultKind::PauseCut => self.pause(kind, true).await,
            FaultKind::Cut => self.cut().await,
            FaultKind::NatsRestart | FaultKind::NodeKill => {
                let start = now_ns();
                let what = self
                    .backend
                    .outage(&mut self.rng, self.timings.downtime)
                    .await?;
                Ok(Done::new(
                    kind,
                    start,
                    now_ns(),
                    format!("{what} down for {:?}", self.timings.downtime),
                ))
            }
            FaultKind::Garbage => self.garbage().await,
            FaultKind::RollingRestart => self.rolling_restart().await,
        }
    }

    /// A random slot.
    fn pick_slot(&mut self) -> usize {
        let slots: Vec<usize> = (0..self.fleet.slots.len()).collect();
        self.rng.choose(&slots).unwrap_or(0)
    }

    /// A random slot whose process does not lead (any slot if the leader is unknown or alone).
    async fn pick_follower(&mut self) -> usize {
        let leader = self.leader_slot().await;
        let slots: Vec<usize> = (0..self.fleet.slots.len())
            .filter(|s| Some(*s) != leader)
            .collect();
        match self.rng.choose(&slots) {
            Some(slot) => slot,
            None => self.pick_slot(),
        }
    }

    /// The slot of the leader named by the election bucket's `leader` key, if it can be read.
    /// A read is tried a few times: on a busy server (a large fleet rebalancing) one can time
    /// out, and a leader kill must not quietly become a follower's.
    async fn leader_slot(&mut self) -> Option<usize> {
        let instance = (|| self.leader_instance())
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(200))
                    .with_max_delay(std::time::Duration::from_secs(2))
                    .with_max_times(5),
            )
            .await
            .ok()?;
        self.fleet.slot_of_instance(&instance)
    }

    /// The instance of the leader named by the election bucket's `leader` key.
    async fn leader_instance(&self) -> anyhow::Result<String> {
        let buckets = self.buckets().await?;
        let election = buckets
            .get(Role::Election)
            .bucket
            .clone()
            .context("no election bucket")?;
        let leader = parti::election::current_leader(election.as_ref())
            .await?
            .context("no leader")?;
        Ok(leader.instance)
    }

    /// The cluster's four buckets, opened as they are on the server.
    async fn buckets(&self) -> anyhow::Result<ClusterBuckets> {
        ClusterBuckets::open(
            &self.js,
            &self.config.kv_buckets,
            self.config.operation_timeout,
        )
        .await
    }

    /// `kill -9` of the process in `slot`, then a new process in its place.
    async fn kill(&mut self, kind: FaultKind, slot: usize) -> anyhow::Result<Done> {
        let process = self
            .fleet
            .process_mut(slot)
            .with_context(|| format!("no process in slot {slot}"))?;
        let identity = process.identity();
        let name = process.name.clone();
        let start = now_ns();
        process.kill().await?;
        let mut done = Done::new(
            kind,
            start,
            start,
            format!("{name} ({})", describe(&identity)),
        )
        .on(identity);
        done.record.ends_process = true;
        let restarted = self.fleet.spawn(slot)?;
        done.detail
            .push_str(&format!(", restarted as {}", restarted.name));
        Ok(done)
    }

    /// SIGSTOP past every lease, then SIGCONT; with `cut`, the link is blackholed for the
    /// pause and stays cut for a while after the process resumed.
    async fn pause(&mut self, kind: FaultKind, cut: bool) -> anyhow::Result<Done> {
        let slot = self.pick_slot();
        let timings = self.timings;
        let place = self.fleet.slots.get_mut(slot).context("no such slot")?;
        let link = &place.link;
        let process = place
            .process
            .as_mut()
            .with_context(|| format!("no process in slot {slot}"))?;
        let identity = process.identity();
        let start = now_ns();
        process.signal(Signal::STOP)?;
        if cut {
            link.cut();
        }
        tokio::time::sleep(timings.pause).await;
        let resumed = process.signal(Signal::CONT);
        if cut {
            tokio::time::sleep(timings.cut_after_resume).await;
            link.heal();
        }
        resumed?;
        let mut detail = format!(
            "{} ({}) stopped for {:?}",
            process.name,
            describe(&identity),
            timings.pause
        );
        if cut {
            detail.push_str(&format!(
                ", its link cut until {:?} after SIGCONT",
                timings.cut_after_resume
            ));
        }
        Ok(Done::new(kind, start, now_ns(), detail).on(identity))
    }

    /// The link of a random worker blackholed past `workerIdTtl`, then healed.
    async fn cut(&mut self) -> anyhow::Result<Done> {
        let slot = self.pick_slot();
        let duration = self.timings.cut;
        let identity = self
            .fleet
            .process_mut(slot)
            .map(|p| p.identity())
            .unwrap_or_default();
        let link = self.fleet.link(slot).context("no such slot")?;
        let start = now_ns();
        link.cut();
        tokio::time::sleep(duration).await;
        link.heal();
        let detail = format!(
            "slot {slot} ({}) cut off for {duration:?}",
            describe(&identity)
        );
        Ok(Done::new(FaultKind::Cut, start, now_ns(), detail).on(identity))
    }

    /// Garbage over a live key of every bucket: `cluster`, a `worker.*` slot and that worker's
    /// commit page in the assignment bucket, a heartbeat key that is no worker ID, the
    /// election's `leader` key, and a live stable-ID key.
    async fn garbage(&mut self) -> anyhow::Result<Done> {
        let buckets = self.buckets().await?;
        let bucket = |role: Role| {
            buckets
                .get(role)
                .bucket
                .clone()
                .with_context(|| format!("the {role:?} bucket does not exist"))
        };
        let assignment = bucket(Role::Assignment)?;
        let heartbeat = bucket(Role::Heartbeat)?;
        let election = bucket(Role::Election)?;
        let stable_id = bucket(Role::StableId)?;
        let slot_keys: Vec<String> = assignment
            .list("worker.>")
            .await
            .context("cannot list the assignment bucket")?
            .into_iter()
            .map(|e| e.key)
            .collect();
        let id_keys: Vec<String> = stable_id
            .list(">")
            .await
            .context("cannot list the stable-ID bucket")?
            .into_iter()
            .map(|e| e.key)
            .collect();
        let mut targets: Vec<(&dyn parti::store::Bucket, String)> = vec![
            (assignment.as_ref(), parti::records::CLUSTER_KEY.into()),
            (heartbeat.as_ref(), NOT_A_WORKER.into()),
            (election.as_ref(), parti::election::LEADER_KEY.into()),
        ];
        let slot_indexes: Vec<usize> = (0..slot_keys.len()).collect();
        if let Some(i) = self.rng.choose(&slot_indexes) {
            targets.push((assignment.as_ref(), slot_keys[i].clone()));
            if let Some((worker, _)) = parse_worker_key(&slot_keys[i]) {
                targets.push((assignment.as_ref(), page_key(page_of(&worker))));
            }
        }
        let id_indexes: Vec<usize> = (0..id_keys.len()).collect();
        if let Some(i) = self.rng.choose(&id_indexes) {
            targets.push((stable_id.as_ref(), id_keys[i].clone()));
        }
        let start = now_ns();
        let mut written = Vec::with_capacity(targets.len());
        for (bucket, key) in targets {
            bucket
                .put(&key, GARBAGE.into())
                .await
                .with_context(|| format!("cannot write garbage to {}/{key}", bucket.name()))?;
            written.push(format!("{}/{key}", bucket.name()));
        }
        Ok(Done::new(
            FaultKind::Garbage,
            start,
            now_ns(),
            format!("garbage in {}", written.join(", ")),
        ))
    }

    /// Each worker in turn: SIGTERM, wait for the graceful stop, start a new process, wait
    /// until it has applied an assignment.
    async fn rolling_restart(&mut self) -> anyhow::Result<Done> {
        let start = now_ns();
        let mut steps = Vec::new();
        for slot in 0..self.fleet.slots.len() {
            let Some(process) = self.fleet.process_mut(slot) else {
                continue;
            };
            let name = process.name.clone();
            let graceful = process.stop(self.timings.stop).await?;
            let next = self.fleet.spawn(slot)?.name.clone();
            self.wait_applied(slot).await;
            steps.push(if graceful {
                format!("{name}→{next}")
            } else {
                format!("{name} (killed: no graceful stop)→{next}")
            });
        }
        Ok(Done::new(
            FaultKind::RollingRestart,
            start,
            now_ns(),
            steps.join(", "),
        ))
    }
}

/// `worker-3/1a2b…` or `not started`.
fn describe(identity: &Identity) -> String {
    match (&identity.worker, &identity.instance) {
        (Some(worker), Some(instance)) => {
            format!("{worker}/{}", instance.chars().take(8).collect::<String>())
        }
        _ => "not started yet".into(),
    }
}
