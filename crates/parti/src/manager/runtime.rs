//! The worker's lifecycle loop: claim an ID, heartbeat, take part in the election, follow the
//! published assignment, lead when elected, fence on a lost ID, degrade and recover, stop.
//!
//! One task owns every component (each a task of its own behind an abort-on-drop handle), so
//! dropping this loop — a crash — stops everything without running any stop path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::bucket_guard::{BucketGuard, Probes, Trouble};
use super::degraded::{DegradedTracker, Verdict};
use super::fence::{FenceCommand, NO_LINEAGE, extend_lease};
use super::follower::{Follower, FollowerView};
use super::holding::{Holder, HoldingChange};
use super::state_cell::StateCell;
use crate::assignment::Assignment;
use crate::clock::unix_ms;
use crate::clock::unix_ns;
use crate::config::Config;
use crate::controller::{CrashHold, LeaderContext, PlannerConfig, run_leader};
use crate::election::{ElectionAgent, Elector, Leadership, NatsLeaseElection};
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::heartbeat::HeartbeatInfo;
use crate::heartbeat::Heartbeater;
use crate::ownership::OwnershipLog;
use crate::partition::WorkerId;
use crate::records::{REFRESH_KEY, RefreshRequest, VersionFloor};
use crate::source::PartitionSource;
use crate::stable_id::{self, IdStatus, StableIdConfig, StableIdLease};
use crate::state::{ClusterPhase, DegradedReason, State};
use crate::store::{Bucket, Store, codec};
use crate::strategy::AssignmentStrategy;

/// The four buckets, opened once by the manager.
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    pub(crate) stable_id: Arc<dyn Bucket>,
    pub(crate) heartbeat: Arc<dyn Bucket>,
    pub(crate) election: Arc<dyn Bucket>,
    pub(crate) assignment: Arc<dyn Bucket>,
}

/// The channels the [`Manager`](crate::Manager) handle reads.
#[derive(Debug)]
pub(crate) struct Outputs {
    pub(crate) state: StateCell,
    pub(crate) assignment: watch::Sender<Arc<Assignment>>,
    pub(crate) worker_id: watch::Sender<Option<WorkerId>>,
    pub(crate) leader: watch::Sender<bool>,
    /// Why the worker is degraded (`None` while it is not).
    pub(crate) degraded_reason: watch::Sender<Option<DegradedReason>>,
    /// The error the worker ended with on its own, set before the state becomes `Shutdown`
    /// (so a state waiter that sees `Shutdown` finds it; see `Manager::wait_for`).
    pub(crate) ended: Ended,
}

/// The slot for the error a worker ended with (taken by the first reader).
pub(crate) type Ended = Arc<std::sync::Mutex<Option<Error>>>;

/// Sets `parti_degraded` and `parti_degraded_reason{reason}` (1 for the current reason, 0 for
/// the others; all 0 while not degraded).
fn publish_degraded_metrics(current: Option<DegradedReason>) {
    metrics::gauge!("parti_degraded").set(if current.is_some() { 1.0 } else { 0.0 });
    for reason in DegradedReason::ALL {
        metrics::gauge!("parti_degraded_reason", "reason" => reason.as_str())
            .set(if current == Some(reason) { 1.0 } else { 0.0 });
    }
}

/// The lease is held for `heartbeatTtl − heartbeatTtl / LEASE_MARGIN_DIVISOR` after a renewal
/// started: room for clocks that run at slightly different rates.
const LEASE_MARGIN_DIVISOR: u64 = 20;

/// The state of one stable ID's run that the loop's handlers share.
#[derive(Debug)]
struct Session {
    id: WorkerId,
    /// What the heartbeat says.
    info: watch::Sender<HeartbeatInfo>,
    /// Whether a commit gave this worker an assignment yet.
    had_assignment: bool,
    /// Whether the hooks heard of the first assignment.
    told: bool,
    /// The highest commit version handed to the fence task.
    sent_version: u64,
}

/// Raises the floor seen to at least `version` and `term`.
fn raise_floor(floor: &watch::Sender<VersionFloor>, version: u64, term: u64) {
    floor.send_if_modified(|f| {
        let raised = version > f.version || term > f.term;
        f.version = f.version.max(version);
        f.term = f.term.max(term);
        raised
    });
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sleeps until `at` on the ownership clock (Unix ns), for ever when `None`.
async fn sleep_until_ns(at: Option<u64>) {
    match at {
        Some(at) => {
            let wait = Duration::from_nanos(at.saturating_sub(unix_ns()));
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// While degraded, crash declarations are held back "for ever"; leaving degraded mode replaces
/// this with `recoveryGracePeriod`.
const SUPPRESS_WHILE_DEGRADED: Duration = Duration::from_secs(24 * 3600);

/// How the loop around one stable ID ended.
enum IdExit {
    Shutdown,
    Lost,
}

#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) buckets: Buckets,
    pub(crate) strategy: Arc<dyn AssignmentStrategy>,
    pub(crate) source: Arc<dyn PartitionSource>,
    pub(crate) election: Option<Arc<dyn ElectionAgent>>,
    pub(crate) instance: String,
    pub(crate) events: EventSink,
    /// Stamps this worker's ownership records (here: lease extensions).
    pub(crate) ownership: OwnershipLog,
    /// The lease deadline (Unix ns) holdings are valid until; the fence task reads it.
    pub(crate) lease: watch::Sender<u64>,
    /// Carries out holding changes, in order.
    pub(crate) fence: mpsc::UnboundedSender<FenceCommand>,
    /// The highest commit version the fence task finished releasing for.
    pub(crate) released: watch::Receiver<u64>,
    /// The highest lineage a change of which the fence task could not start because the lease
    /// had run out by the time it carried it out: that lineage ends (a lapse, when it is still
    /// current), so that a commit naming the next one gives those partitions again.
    pub(crate) missed: watch::Receiver<u64>,
    /// The current lineage as the fence task sees it (see [`FenceParts::lineage`]): set after
    /// every change of the holder's lineage, before anything decided under the new one is
    /// handed on.
    pub(crate) lineage: Arc<std::sync::atomic::AtomicU64>,
    /// What this process may hold (self-fencing); created on the first claim.
    pub(crate) holder: Option<Holder>,
    /// The consumer gate's lease deadline (if a consumer was given): enforced per message.
    pub(crate) gate_lease: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// How many workers share `consumerApiRate` (if a consumer was given): the workers of the
    /// latest commit, stored on every commit seen.
    pub(crate) consumer_fleet: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// How many lapses are queued in the fence task (lease extensions wait behind them).
    pub(crate) lapse_pending: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) out: Outputs,
    pub(crate) refresh: mpsc::UnboundedReceiver<()>,
    /// The highest commit version and leader term this process has seen: what the bucket
    /// guard writes back as the floor of an assignment bucket that was created again.
    pub(crate) floor_seen: watch::Sender<VersionFloor>,
    /// A bucket missing or replaced, from the bucket guard (set when [`run`](Self::run)
    /// starts it).
    pub(crate) bucket_trouble: watch::Receiver<Option<Trouble>>,
    /// Whether the bucket guard probes on its timer (while this worker leads).
    pub(crate) guard_periodic: watch::Sender<bool>,
    /// Makes the bucket guard probe now (this worker's KV calls failed).
    pub(crate) guard_probe: Arc<tokio::sync::Notify>,
}

/// The leader's controller while this worker leads.
struct LeaderTask {
    cancel: CancellationToken,
    task: AbortOnDropHandle<Result<()>>,
    refresh: mpsc::UnboundedSender<()>,
}

impl LeaderTask {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

impl Runtime {
    /// Runs until `cancel` (graceful stop). Errors only for what start-up cannot get past.
    pub(crate) async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        let [stable_id, election, heartbeat, assignment] = self.config.bucket_specs();
        // The heartbeats first: trouble there is reported before any other bucket's (it hides
        // who is alive, and crash declarations are held back for it).
        let guarded = vec![
            (heartbeat, Arc::clone(&self.buckets.heartbeat)),
            (assignment.clone(), Arc::clone(&self.buckets.assignment)),
            (election, Arc::clone(&self.buckets.election)),
            (stable_id, Arc::clone(&self.buckets.stable_id)),
        ];
        let probes = Probes {
            periodic: self.guard_periodic.subscribe(),
            now: Arc::clone(&self.guard_probe),
        };
        let (guard, trouble) = BucketGuard::spawn(
            Arc::clone(&self.store),
            guarded,
            &assignment.name,
            self.floor_seen.subscribe(),
            probes,
            self.config.heartbeat_ttl,
        );
        self.bucket_trouble = trouble;
        let result = self.run_ids(cancel).await;
        guard.stop().await;
        result
    }

    /// Claims an ID and runs with it, again after each loss, until stopped.
    async fn run_ids(&mut self, cancel: CancellationToken) -> Result<()> {
        let mut first = true;
        loop {
            if !self.out.state.set(State::ClaimingId) {
                return Err(Error::Shutdown);
            }
            let lease = match self.claim(&cancel, first).await {
                Ok(lease) => lease,
                Err(Error::Shutdown) => {
                    self.out.state.set(State::Shutdown);
                    return Ok(());
                }
                Err(e) => {
                    *self
                        .out
                        .ended
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    self.out.state.set(State::Shutdown);
                    return Err(Error::Shutdown);
                }
            };
            first = false;
            match self.with_id(lease, &cancel).await {
                IdExit::Shutdown => return Ok(()),
                IdExit::Lost => continue,
            }
        }
    }

    fn id_pool(&self) -> StableIdConfig {
        StableIdConfig {
            prefix: self.config.worker_id_prefix.clone(),
            min: self.config.worker_id_min,
            max: self.config.worker_id_max,
            renew_interval: self.config.stable_id_renew_interval(),
        }
    }

    async fn claim(&self, cancel: &CancellationToken, first: bool) -> Result<StableIdLease> {
        let cfg = self.id_pool();
        let max = self
            .config
            .heartbeat_interval
            .max(Duration::from_millis(100));
        let mut delays = crate::retry::doubling(Duration::from_millis(50), max);
        loop {
            match stable_id::claim(Arc::clone(&self.buckets.stable_id), &cfg, &self.instance).await
            {
                Ok(lease) => return Ok(lease),
                // On first start a full pool is the caller's problem; later our own old ID
                // frees up when its TTL runs out, so keep trying.
                Err(e @ Error::IdPoolExhausted { .. }) if first => return Err(e),
                Err(e) => {
                    self.events.error(e);
                    tokio::select! {
                        () = cancel.cancelled() => return Err(Error::Shutdown),
                        () = tokio::time::sleep(delays.next_delay()) => {}
                    }
                }
            }
        }
    }

    fn agent_for(&self, id: &WorkerId) -> Arc<dyn ElectionAgent> {
        match &self.election {
            Some(agent) => Arc::clone(agent),
            None => Arc::new(
                NatsLeaseElection::new(
                    Arc::clone(&self.buckets.election),
                    id.clone(),
                    self.instance.clone(),
                    self.config.election_ttl,
                )
                .with_term_floor(Arc::clone(&self.buckets.assignment))
                .with_seen_terms(self.floor_seen.subscribe()),
            ),
        }
    }

    fn leader_context(
        &self,
        agent: Arc<dyn ElectionAgent>,
        crash_hold: watch::Receiver<Option<CrashHold>>,
    ) -> LeaderContext {
        let c = &self.config;
        LeaderContext {
            assignment_bucket: Arc::clone(&self.buckets.assignment),
            heartbeat_bucket: Arc::clone(&self.buckets.heartbeat),
            stable_id_bucket: Arc::clone(&self.buckets.stable_id),
            strategy: Arc::clone(&self.strategy),
            source: Arc::clone(&self.source),
            agent,
            planner: PlannerConfig::from(&**c),
            membership_resync: c.heartbeat_ttl,
            applied_before: self.out.assignment.borrow().version,
            source_timeout: c.operation_timeout,
            handoff_timeout: c.handoff_timeout,
            min_rebalance_threshold: c.assignment.min_rebalance_threshold,
            max_moves_per_step: c.assignment.max_moves_per_step,
            unlabelled_policy: c.assignment.unlabelled_policy,
            label_spill_grace: c.assignment.label_spill_grace,
            history: None,
            events: self.events.clone(),
            crash_hold,
        }
    }

    /// Everything that happens while this worker holds one stable ID.
    async fn with_id(&mut self, lease: StableIdLease, cancel: &CancellationToken) -> IdExit {
        let id = lease.id().clone();
        tracing::info!(worker = %id, instance = %self.instance, "claimed stable ID");
        self.out.worker_id.send_replace(Some(id.clone()));
        self.out.state.set(State::Election);

        // The holder is created on the first claim: none yet means the process's first session.
        let first_session = self.holder.is_none();
        let holder = self.holder_mut();
        // A new stable ID is a new lineage: commits naming this process under an older ID
        // must not be held again.
        holder.restart();
        let lapses = holder.lapses();
        self.lineage
            .store(lapses, std::sync::atomic::Ordering::Release);
        let (info_tx, info_rx) = watch::channel(HeartbeatInfo {
            lapses,
            ..HeartbeatInfo::new(State::Election, 0)
        });
        let mut session = Session {
            id: id.clone(),
            info: info_tx,
            had_assignment: false,
            told: false,
            sent_version: 0,
        };
        // Validated with the configuration at start.
        let profile = self.config.profile().unwrap_or_default();
        let heartbeater = Heartbeater::spawn_with_profile(
            Arc::clone(&self.buckets.heartbeat),
            id.clone(),
            self.instance.clone(),
            self.config.heartbeat_interval,
            info_rx,
            profile,
        );
        let agent = self.agent_for(&id);
        let election = Some(Arc::clone(&self.buckets.election));
        let elector = if first_session {
            Elector::spawn(Arc::clone(&agent), election)
        } else {
            // What the earlier session's watch saw is gone with it.
            Elector::spawn_again(Arc::clone(&agent), election)
        };
        let follower = Follower::spawn(
            Arc::clone(&self.buckets.assignment),
            id.clone(),
            self.config.heartbeat_ttl,
            self.config.assignment_debounce,
            cancel.child_token(),
        );
        self.out.state.set(State::WaitingAssignment);

        let mut id_status = lease.status();
        let mut leadership = elector.leadership();
        let mut view = follower.view();
        let mut hb_failures = heartbeater.failures();
        let mut renewed = heartbeater.renewed();
        let mut revoked = heartbeater.revoked();
        let mut id_failures = lease.failures();
        let (hold_tx, hold_rx) = watch::channel(None::<CrashHold>);
        let mut leader: Option<LeaderTask> = None;
        let ttl = self.config.heartbeat_ttl;
        let restart_delays = move || crate::retry::doubling(Duration::from_millis(100), ttl);
        let mut restarts = restart_delays();
        let mut restart_at: Option<tokio::time::Instant> = None;
        let mut released = self.released.clone();
        let mut missed = self.missed.clone();
        // Misses of an earlier session are that session's business.
        missed.borrow_and_update();
        let mut degraded =
            DegradedTracker::new(self.config.degraded_behavior, self.config.degraded_alert);
        // Whether this degraded episode hides the heartbeats (crash declarations held back).
        let mut blind = false;
        let mut tick =
            tokio::time::interval(Duration::from_millis(100).min(self.config.heartbeat_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let exit = loop {
            self.report(&session);
            let deadline = self.holder.as_ref().and_then(Holder::next_deadline);
            tokio::select! {
                () = cancel.cancelled() => break IdExit::Shutdown,
                () = crate::clock::sleep_until_opt(restart_at) => {
                    restart_at = None;
                    let still_leading = *leadership.borrow();
                    if let (Leadership::Leader { term }, None) = (still_leading, &leader) {
                        leader = Some(self.spawn_leader(Arc::clone(&agent), term, hold_rx.clone()));
                    }
                }
                () = sleep_until_ns(deadline) => {
                    let change = self.holder_mut().tick(unix_ns());
                    self.send_change(&mut session, change);
                }
                changed = released.changed() => {
                    if changed.is_err() { break IdExit::Shutdown; }
                    released.borrow_and_update();
                }
                changed = id_status.changed() => {
                    let lost = changed.is_err() || matches!(*id_status.borrow_and_update(), IdStatus::Lost { .. });
                    if lost {
                        break IdExit::Lost;
                    }
                }
                changed = leadership.changed() => {
                    if changed.is_err() { break IdExit::Lost; }
                    let now_leading = *leadership.borrow_and_update();
                    match now_leading {
                        Leadership::Leader { term } if leader.is_none() => {
                            raise_floor(&self.floor_seen, 0, term);
                            self.guard_periodic.send_replace(true);
                            restarts = restart_delays();
                            leader = Some(self.spawn_leader(Arc::clone(&agent), term, hold_rx.clone()));
                            self.out.leader.send_replace(true);
                            metrics::gauge!("parti_leader").set(1.0);
                            tracing::info!(worker = %id, term, "leadership gained");
                            self.events.emit(Event::LeadershipChanged { is_leader: true, term: Some(term) });
                        }
                        Leadership::Follower if leader.is_some() => {
                            // Say so at once: the lease is no longer trusted, and whatever the
                            // controller still has in flight is fenced by its term. Stopping it
                            // waits for its store calls in flight, which may take long (a paused
                            // process finishes them when it resumes).
                            self.out.leader.send_replace(false);
                            metrics::gauge!("parti_leader").set(0.0);
                            tracing::warn!(worker = %id, "leadership lost");
                            self.events.emit(Event::LeadershipChanged { is_leader: false, term: None });
                            if let Some(task) = leader.take() { task.stop().await; }
                            self.guard_periodic.send_replace(false);
                        }
                        _ => {}
                    }
                }
                changed = renewed.changed() => {
                    if changed.is_err() { continue; }
                    let started = *renewed.borrow_and_update();
                    if let Some(started) = started {
                        self.extend_lease(&mut session, started);
                    }
                }
                changed = revoked.changed() => {
                    if changed.is_err() { continue; }
                    let lapses = *revoked.borrow_and_update();
                    let change = self.holder_mut().revoked(lapses, unix_ns());
                    self.send_change(&mut session, change);
                }
                changed = missed.changed() => {
                    if changed.is_err() { continue; }
                    // Holdings the fence task could not start: lapse that lineage, as if
                    // revoked (nothing when it has ended already).
                    let lineage = *missed.borrow_and_update();
                    let change = self.holder_mut().revoked(lineage, unix_ns());
                    self.send_change(&mut session, change);
                }
                changed = view.changed() => {
                    if changed.is_err() { continue; }
                    let snapshot = view.borrow_and_update().clone();
                    self.apply(&mut session, &snapshot, degraded.is_degraded());
                }
                request = self.refresh.recv() => {
                    if request.is_none() { continue; }
                    match &leader {
                        Some(task) => { let _ = task.refresh.send(()); }
                        None => self.request_refresh(&id).await,
                    }
                }
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    degraded.set_bucket_trouble(self.bucket_trouble.borrow().as_ref().map(|t| t.reason));
                    if hb_failures.has_changed().unwrap_or(false) && *hb_failures.borrow_and_update() > 0 {
                        degraded.record_error(now);
                        self.guard_probe.notify_one();
                    }
                    if id_failures.has_changed().unwrap_or(false) && *id_failures.borrow_and_update() > 0 {
                        degraded.record_error(now);
                        self.guard_probe.notify_one();
                    }
                    match degraded.observe(now, self.store.is_connected()) {
                        Verdict::Enter(reason) => {
                            tracing::warn!(worker = %id, %reason, "entering degraded mode: keeping the last assignment");
                            publish_degraded_metrics(Some(reason));
                            metrics::counter!("parti_degraded_entered_total", "reason" => reason.as_str()).increment(1);
                            // No crash is declared while we cannot see the cluster — unless
                            // what is wrong is a bucket other than the heartbeats: the
                            // heartbeats still tell who is alive, and a crash meanwhile must be
                            // handled at once.
                            blind = !matches!(reason, DegradedReason::BucketMissing | DegradedReason::BucketRecreated)
                                || self.bucket_trouble.borrow().as_ref().is_some_and(|t| t.bucket == self.buckets.heartbeat.name());
                            if blind {
                                // A spell that starts within the last one's recovery grace
                                // continues it: what was noticed then is still in doubt.
                                let now = tokio::time::Instant::now().into_std();
                                let since = hold_tx.borrow().filter(|h| h.until > now).map_or(now, |h| h.blind_since);
                                hold_tx.send_replace(Some(CrashHold::blind(since, now + SUPPRESS_WHILE_DEGRADED)));
                            }
                            // The reason first: whoever sees the state sees why.
                            self.out.degraded_reason.send_replace(Some(reason));
                            if self.out.state.set(State::Degraded) {
                                self.events.emit(Event::DegradedEntered { reason });
                            }
                        }
                        Verdict::Exit => {
                            tracing::info!(worker = %id, "leaving degraded mode");
                            publish_degraded_metrics(None);
                            metrics::gauge!("parti_alert_level").set(0.0);
                            self.out.degraded_reason.send_replace(None);
                            if matches!(*id_status.borrow(), IdStatus::Lost { .. }) {
                                break IdExit::Lost;
                            }
                            // Workers cut off with us are not mass-evicted (SPEC §7).
                            // Crashes noticed before the spell are declared from now on.
                            if std::mem::take(&mut blind) {
                                let now = tokio::time::Instant::now().into_std();
                                let until = now + self.config.degraded_behavior.recovery_grace_period;
                                hold_tx.send_modify(|hold| *hold = hold.map(|h| h.recovered(now, until)));
                            }
                            let snapshot = view.borrow().clone();
                            self.apply(&mut session, &snapshot, false);
                        }
                        Verdict::Unchanged => {}
                    }
                    if let Some((level, duration)) = degraded.due_alert(now) {
                        tracing::warn!(worker = %id, %level, degraded_for_s = duration.as_secs(), "degraded alert");
                        metrics::gauge!("parti_alert_level").set(level as u8 as f64 + 1.0);
                        self.events.emit(Event::DegradedAlert { level, duration });
                    }
                }
                result = async { match leader.as_mut() { Some(t) => (&mut t.task).await, None => std::future::pending().await } } => {
                    // The controller ended while we still lead (a transient failure): restart it.
                    leader = None;
                    if let Ok(Err(e)) = result && !matches!(e, Error::Shutdown | Error::LeadershipLost) {
                        self.events.error(e);
                    }
                    let still_leading = *leadership.borrow();
                    if let Leadership::Leader { .. } = still_leading {
                        // Back off between restarts (a controller failing at once would
                        // otherwise spin), up to the heartbeat TTL — on a timer, so that this
                        // loop keeps renewing and following meanwhile.
                        restart_at = Some(tokio::time::Instant::now() + restarts.next_delay());
                    }
                }
            }
        };

        if let Some(task) = leader.take() {
            task.stop().await;
        }
        // Leaving this ID's run (a stop, a lost ID) ends a degraded episode too.
        if self.out.degraded_reason.send_replace(None).is_some() {
            publish_degraded_metrics(None);
            metrics::gauge!("parti_alert_level").set(0.0);
        }
        self.guard_periodic.send_replace(false);
        if self.out.leader.send_replace(false) {
            metrics::gauge!("parti_leader").set(0.0);
            self.events.emit(Event::LeadershipChanged {
                is_leader: false,
                term: None,
            });
        }
        match exit {
            IdExit::Shutdown => {
                self.out.state.set(State::Shutdown);
                tracing::debug!(worker = %id, "stop: begin");
                // Hand over fast, leave gracefully, then free the ID.
                if let Err(e) = elector.stop().await {
                    self.events.error(e);
                }
                tracing::debug!(worker = %id, "stop: election released");
                follower.stop().await;
                tracing::debug!(worker = %id, "stop: follower stopped");
                // Release everything (consumer gated, in-flight calls done, hooks told), then
                // say so in a last heartbeat before leaving: the leader hands our partitions
                // on at once only on that word.
                let change = self.holder_mut().close();
                self.send_change(&mut session, change);
                self.flush_fence().await;
                let last = HeartbeatInfo {
                    state: State::Shutdown,
                    released: *self.released.borrow(),
                    degraded_reason: None,
                    ..*session.info.borrow()
                };
                if let Err(e) = heartbeater.stop_with(last).await {
                    self.events.error(e);
                }
                tracing::debug!(worker = %id, "stop: heartbeat deleted");
                if let Err(e) = lease.release().await {
                    self.events.error(e);
                }
                IdExit::Shutdown
            }
            IdExit::Lost => {
                // Fence at once: stop processing what we no longer own. The ID (and its
                // heartbeat key) may belong to another instance now, so nothing of it is
                // deleted.
                tracing::warn!(worker = %id, "stable ID lost: fencing and re-claiming");
                heartbeater.abort();
                follower.stop().await;
                lease.abort();
                self.lease.send_replace(0);
                let change = self.holder_mut().close();
                self.send_change(&mut session, change);
                // Nothing queued under this ID starts or extends from here on.
                self.lineage
                    .store(NO_LINEAGE, std::sync::atomic::Ordering::Release);
                self.clear_assignment();
                // Then a leader lease held is given up (deleted only while the key is still
                // ours, by revision), so that another worker leads at once rather than a TTL
                // later; the controller has stopped above. Bounded: the store may be away. A
                // follower has nothing to give up and re-claims at once.
                if elector.agent().is_leader() {
                    match tokio::time::timeout(self.config.operation_timeout, elector.stop()).await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "cannot release the leader lease");
                        }
                        Err(_) => tracing::debug!("releasing the leader lease timed out"),
                    }
                } else {
                    elector.abort();
                }
                IdExit::Lost
            }
        }
    }

    /// A heartbeat that started at `started` (Unix ns) succeeded: the lease runs until the key
    /// could first expire (less the margin), unless it had lapsed already. After a lapse whose
    /// release is still queued, the extension waits behind it in the fence task.
    fn extend_lease(&mut self, session: &mut Session, started: u64) {
        // The instant the renewal is judged at: the extension is recorded at it, and made
        // current before the change is handed on, so that the fence task never starts what
        // the change gains on the old deadline.
        let now = unix_ns();
        let change = self.holder_mut().renewed(started, now);
        let valid_until_ns = self.holder_mut().lease_until();
        let behind_lapse = change.lapse
            || self
                .lapse_pending
                .load(std::sync::atomic::Ordering::Acquire)
                > 0;
        if !behind_lapse {
            extend_lease(
                &self.lease,
                self.gate_lease.as_deref(),
                (&self.ownership, now),
                &self.events,
                &session.id,
                valid_until_ns,
            );
            self.send_change(session, change);
            return;
        }
        let extend = FenceCommand::Extend {
            worker: session.id.clone(),
            valid_until_ns,
            lineage: self.holder_mut().lapses(),
        };
        if change.lapse {
            // The lapse first (it releases what the old lineage held), then the extension.
            self.send_change(session, change);
            let _ = self.fence.send(extend);
        } else {
            // Behind an earlier lapse still queued: the extension first, so that what this
            // renewal gains starts on the new deadline.
            let lineage = self.holder_mut().lapses();
            self.lineage
                .store(lineage, std::sync::atomic::Ordering::Release);
            let _ = self.fence.send(extend);
            self.send_change(session, change);
        }
    }

    fn holder_mut(&mut self) -> &mut Holder {
        let ttl_ns = nanos(self.config.heartbeat_ttl);
        let keep = self.config.degraded_holding == crate::config::DegradedHolding::Keep;
        let instance = &self.instance;
        self.holder.get_or_insert_with(|| {
            let holder = Holder::new(instance, ttl_ns, ttl_ns / LEASE_MARGIN_DIVISOR);
            if keep {
                holder.keep_past_lease()
            } else {
                holder
            }
        })
    }

    /// Hands a change of holdings to the fence task (the first one always: the hooks hear of
    /// the initial assignment).
    fn send_change(&mut self, session: &mut Session, change: HoldingChange) {
        let first = !session.told && session.had_assignment;
        // A lapse goes through even when this side held nothing: the fence task may still be
        // releasing earlier holdings, and lease extensions must queue behind the lapse.
        if change.is_empty() && !change.lapse && !first && change.version <= session.sent_version {
            return;
        }
        session.told |= first;
        session.sent_version = session.sent_version.max(change.version);
        let mut change = change;
        let lineage = self.holder_mut().lapses();
        change.lineage = lineage;
        self.lineage
            .store(lineage, std::sync::atomic::Ordering::Release);
        if change.lapse {
            self.lapse_pending
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let _ = self.fence.send(FenceCommand::Change {
            worker: session.id.clone(),
            change,
            first,
        });
    }

    /// Waits until the fence task carried out everything sent so far.
    async fn flush_fence(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.fence.send(FenceCommand::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Keeps the heartbeat value current: state, versions, lineage, why degraded.
    fn report(&self, session: &Session) {
        let state = self.out.state.get();
        let info = HeartbeatInfo {
            state,
            applied_version: self.out.assignment.borrow().version,
            released: *self.released.borrow(),
            lapses: self.holder.as_ref().map_or(0, Holder::lapses),
            degraded_reason: (*self.out.degraded_reason.borrow())
                .filter(|_| state == State::Degraded),
        };
        session.info.send_if_modified(|current| {
            let changed = *current != info;
            *current = info;
            changed
        });
    }

    fn spawn_leader(
        &self,
        agent: Arc<dyn ElectionAgent>,
        term: u64,
        crash_hold: watch::Receiver<Option<CrashHold>>,
    ) -> LeaderTask {
        let ctx = self.leader_context(agent, crash_hold);
        let cancel = CancellationToken::new();
        let (refresh, refresh_rx) = mpsc::unbounded_channel();
        let task = AbortOnDropHandle::new(tokio::spawn(run_leader(
            ctx,
            term,
            refresh_rx,
            cancel.clone(),
        )));
        LeaderTask {
            cancel,
            task,
            refresh,
        }
    }

    /// Follows the latest commit: the assignment it gives this worker (when newer), what this
    /// worker may hold under it, and the cluster phase mirrored as this worker's state.
    fn apply(&mut self, session: &mut Session, view: &FollowerView, degraded: bool) {
        if let Some(cluster) = &view.cluster {
            raise_floor(&self.floor_seen, cluster.version, cluster.term);
            if let Some(fleet) = &self.consumer_fleet {
                let workers = u64::try_from(cluster.workers).unwrap_or(u64::MAX);
                fleet.store(workers, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let Some(next) = view.committed(session.had_assignment) {
            let held = self.out.assignment.borrow().clone();
            if !session.had_assignment || next.version > held.version {
                let next = Arc::new(next);
                self.out.assignment.send_replace(Arc::clone(&next));
                session.had_assignment = true;
                metrics::gauge!("parti_applied_version").set(next.version as f64);
                metrics::gauge!("parti_partitions_owned").set(next.partitions.len() as f64);
                metrics::gauge!("parti_owned_weight").set(next.weight() as f64);
                tracing::info!(worker = %session.id, version = next.version, partitions = next.partitions.len(), "assignment applied");
            }
        }
        if let Some(commit) = view.my_commit() {
            let change = self.holder_mut().committed(commit, unix_ns());
            self.send_change(session, change);
        }
        let target = if degraded {
            State::Degraded
        } else if !session.had_assignment {
            State::WaitingAssignment
        } else {
            view.cluster
                .as_ref()
                .map_or(ClusterPhase::Stable, |c| c.phase)
                .worker_state()
        };
        self.move_to(target);
    }

    /// Moves to `target`, through Stable when the table has no direct edge (for example
    /// Rebalancing → Scaling when the leader opens a new window right after a publish).
    fn move_to(&mut self, target: State) {
        let current = self.out.state.get();
        if current == target
            || current == State::WaitingAssignment && target == State::WaitingAssignment
        {
            return;
        }
        if !current.can_transition_to(target)
            && current.can_transition_to(State::Stable)
            && State::Stable.can_transition_to(target)
        {
            self.out.state.set(State::Stable);
        }
        self.out.state.set(target);
    }

    /// Forgets the assignment of a lost ID (the fence task already released its holdings).
    fn clear_assignment(&mut self) {
        let held = self.out.assignment.borrow().clone();
        if !held.partitions.is_empty() {
            self.out.assignment.send_replace(Arc::new(Assignment {
                version: held.version,
                lifecycle: held.lifecycle,
                partitions: Vec::new(),
            }));
            metrics::gauge!("parti_partitions_owned").set(0.0);
            metrics::gauge!("parti_owned_weight").set(0.0);
        }
        self.out.state.set(State::ClaimingId);
    }

    async fn request_refresh(&self, id: &WorkerId) {
        let request = RefreshRequest {
            requested_by: id.clone(),
            at: unix_ms(),
        };
        let result = match codec::encode(&request) {
            Ok(value) => self
                .buckets
                .assignment
                .put(REFRESH_KEY, value)
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.events.error(e);
        }
    }
}
