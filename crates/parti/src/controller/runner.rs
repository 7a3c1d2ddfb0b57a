//! The leader's I/O shell: feeds membership, refresh requests and timers to the
//! [`Planner`](super::Planner), and carries out its decisions (phase writes and fenced
//! publishes). Runs only while this worker holds the lease; cancelled at once when it is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::handoff::{self, Members};
use super::planner::{
    ClusterView, Decision, Input, Phase, Planner, PlannerConfig, RebalanceReason, reassign_orphans,
};
use super::publisher::{PublishMeta, Publisher};
use crate::assignment::{AssignmentMap, Lifecycle};
use crate::clock::unix_ms;
use crate::election::ElectionAgent;
use crate::error::{Error, Result};
use crate::heartbeat::HeartbeatValue;
use crate::heartbeat::{MembershipEvent, MembershipWatcher};
use crate::manager::hooks::EventSink;
use crate::partition::{Partition, WorkerId};
use crate::records::REFRESH_KEY;
use crate::records::{Lineage, WorkerRecord};
use crate::source::{PartitionSource, load_checked};
use crate::stable_id::StableIdConfig;
use crate::state::ScalingReason;
use crate::store::{Bucket, WatchEvent};
use crate::strategy::AssignmentStrategy;
use std::collections::BTreeMap;

/// Everything the leader needs; built by the manager.
#[derive(Debug, Clone)]
pub(crate) struct LeaderContext {
    pub(crate) assignment_bucket: Arc<dyn Bucket>,
    pub(crate) heartbeat_bucket: Arc<dyn Bucket>,
    /// Tells a graceful leave (ID released) from a crash (ID still held) for workers that
    /// were already gone when this leader took over.
    pub(crate) stable_id_bucket: Arc<dyn Bucket>,
    pub(crate) strategy: Arc<dyn AssignmentStrategy>,
    pub(crate) source: Arc<dyn PartitionSource>,
    pub(crate) agent: Arc<dyn ElectionAgent>,
    pub(crate) planner: PlannerConfig,
    pub(crate) membership_resync: Duration,
    /// The stable-ID pool: only its IDs can be members.
    pub(crate) id_pool: StableIdConfig,
    /// Bound on one partition-source call (`operationTimeout`).
    pub(crate) source_timeout: Duration,
    /// How long a loser may keep a gainer waiting before it is expelled (`handoffTimeout`).
    pub(crate) handoff_timeout: Duration,
    pub(crate) min_rebalance_threshold: f64,
    pub(crate) events: EventSink,
    /// Set by the manager when it recovers from Degraded: no crash is declared before it.
    pub(crate) suppress_crashes_until: watch::Receiver<Option<Instant>>,
}

/// Runs the controller until `cancel` fires or leadership is lost.
pub(crate) async fn run(
    ctx: LeaderContext,
    term: u64,
    mut refresh: mpsc::UnboundedReceiver<()>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut publisher = retry_until(&cancel, || {
        Publisher::load(Arc::clone(&ctx.assignment_bucket), term)
    })
    .await
    .ok_or(Error::Shutdown)?;
    let (membership, mut members) = MembershipWatcher::spawn_for_pool(
        Arc::clone(&ctx.heartbeat_bucket),
        ctx.membership_resync,
        ctx.membership_resync,
        ctx.id_pool.clone(),
    );
    let result = lead(
        &ctx,
        &mut publisher,
        &membership,
        &mut members,
        &mut refresh,
        &cancel,
    )
    .await;
    membership.stop().await;
    result
}

async fn lead(
    ctx: &LeaderContext,
    publisher: &mut Publisher,
    membership: &MembershipWatcher,
    members: &mut mpsc::UnboundedReceiver<MembershipEvent>,
    refresh: &mut mpsc::UnboundedReceiver<()>,
    cancel: &CancellationToken,
) -> Result<()> {
    // Wait for the first membership snapshot: the planner must start from the real live set.
    let mut synced = membership.synced();
    tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        done = synced.wait_for(|s| *s) => if done.is_err() { return Err(Error::Shutdown) },
    }
    // The snapshot's Joined events are summed up by the live set: drain them, then read it,
    // so every later event is news to the planner.
    while members.try_recv().is_ok() {}
    let live_now = membership.live().borrow().clone();
    let mut planner = Planner::new(ctx.planner.clone());
    let committed = publisher.committed();
    let cluster = committed.record.as_ref().map(|(r, _)| ClusterView {
        version: r.version,
        lifecycle: r.lifecycle,
        workers: r.workers.keys().cloned().collect(),
    });
    // What the inherited map covers, so that the source check notices a change made before
    // this term (a refresh request lost while the old leader was going away).
    let mut partitions: Option<Vec<Partition>> = (!committed.map.is_empty()).then(|| {
        let mut covered: Vec<Partition> = committed
            .map
            .iter()
            .flat_map(|(_, ps)| ps.iter().cloned())
            .collect();
        covered.sort();
        covered
    });
    let mut values = membership.values();
    let known = members_from(&values.borrow_and_update());
    let takeover = now();
    let lineage_seen = known
        .lineages
        .iter()
        .map(|(w, l)| (w.clone(), (l.clone(), takeover)))
        .collect();
    let mut state = RunnerState {
        members: known,
        waiting_since: BTreeMap::new(),
        expelled: BTreeMap::new(),
        handoff_ready_since: None,
        last_handoff: None,
        lineage_seen,
        left_gracefully: std::collections::BTreeSet::new(),
        last_map: committed.map.clone(),
        lifecycle: committed
            .record
            .as_ref()
            .map_or(Lifecycle::ColdStart, |(r, _)| r.lifecycle),
    };
    let absent: Vec<WorkerId> = cluster
        .as_ref()
        .map(|c| {
            c.workers
                .iter()
                .filter(|w| !live_now.contains(*w))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut decisions = planner.handle(Input::BecameLeader {
        cluster,
        live: live_now.into_iter().collect(),
        now: now(),
    });
    let mut suppress = ctx.suppress_crashes_until.clone();
    let suppressed = *suppress.borrow_and_update();
    if let Some(until) = suppressed {
        decisions.extend(planner.handle(Input::SuppressCrashesUntil { until, now: now() }));
    }
    // A published worker that is gone and released its stable ID left gracefully (a rolling
    // update in progress): a planned change, not a crash.
    for worker in absent {
        if let Ok(None) = ctx.stable_id_bucket.get(worker.as_str()).await {
            decisions.extend(planner.handle(Input::Left { worker, now: now() }));
        }
    }

    let mut refresh_watch = ctx.assignment_bucket.watch(REFRESH_KEY).await.ok();
    let mut source_check = tokio::time::interval(
        ctx.planner
            .min_rebalance_interval
            .max(Duration::from_secs(1)),
    );
    source_check.tick().await;

    loop {
        for decision in std::mem::take(&mut decisions) {
            // Cancellation (leadership lost, stop) cuts through a slow source or store call:
            // an interrupted publish leaves the committed map as it was.
            let executed = execute(
                ctx,
                publisher,
                &mut planner,
                &mut partitions,
                &mut state,
                decision,
                cancel,
            );
            let follow_up = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                follow_up = executed => follow_up?,
            };
            decisions.extend(follow_up);
        }
        if !decisions.is_empty() {
            continue;
        }
        decisions = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            done = complete_handoffs(ctx, publisher, &mut planner, &mut state) => done?,
        };
        if !decisions.is_empty() {
            continue;
        }
        let handoff_due = state.handoff_ready_since.map(|since| since + HANDOFF_BATCH);
        let wake = [
            planner.next_wakeup(),
            handoff_due,
            state.expulsion_due(ctx.handoff_timeout, now()),
        ]
        .into_iter()
        .flatten()
        .min();
        let input = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = sleep_until(wake) => Input::Tick { now: now() },
            event = members.recv() => match event {
                Some(MembershipEvent::Joined(worker)) => Input::Joined { worker, now: now() },
                Some(MembershipEvent::Left(worker)) => {
                    state.left_gracefully.insert(worker.clone());
                    Input::Left { worker, now: now() }
                }
                Some(MembershipEvent::Expired(worker)) => {
                    state.left_gracefully.remove(&worker);
                    Input::Expired { worker, now: now() }
                }
                None => return Err(Error::Shutdown),
            },
            request = refresh.recv() => match request {
                Some(()) => Input::PartitionsChanged { now: now() },
                None => return Err(Error::Shutdown),
            },
            event = next_refresh(&mut refresh_watch) => match event {
                Some(()) => Input::PartitionsChanged { now: now() },
                None => { refresh_watch = None; continue; }
            },
            changed = values.changed() => {
                if changed.is_err() { return Err(Error::Shutdown); }
                let members = members_from(&values.borrow_and_update());
                if members == state.members { continue; }
                let seen_at = now();
                for (worker, lineage) in &members.lineages {
                    let fresh = state.lineage_seen.get(worker).is_none_or(|(l, _)| l != lineage);
                    if fresh {
                        state.lineage_seen.insert(worker.clone(), (lineage.clone(), seen_at));
                    }
                }
                state.members = members;
                continue;
            },
            changed = suppress.changed() => {
                if changed.is_err() { return Err(Error::Shutdown); }
                match *suppress.borrow_and_update() {
                    Some(until) => Input::SuppressCrashesUntil { until, now: now() },
                    None => continue,
                }
            },
            _ = source_check.tick() => {
                // A source may change by itself: compare with what the map was built from.
                let checked = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    checked = load_checked(&*ctx.source, ctx.source_timeout) => checked,
                };
                match checked {
                    Ok(fresh) if partitions.as_ref().is_some_and(|p| *p != fresh) => Input::PartitionsChanged { now: now() },
                    Ok(_) => continue,
                    Err(e) => { ctx.events.error(e); continue; }
                }
            },
        };
        decisions = planner.handle(input);
    }
}

struct RunnerState {
    last_map: AssignmentMap,
    lifecycle: Lifecycle,
    /// What the live workers' heartbeats say: released versions, lineages, the version floor.
    members: Members,
    /// Since when some hand-offs could be completed (waiting for the rest of the batch).
    handoff_ready_since: Option<Instant>,
    /// When the last hand-off commit was made.
    last_handoff: Option<Instant>,
    /// Each member's current lineage and since when this leader has seen it.
    lineage_seen: BTreeMap<WorkerId, (Lineage, Instant)>,
    /// IDs whose last process left gracefully (released everything): a newcomer under one of
    /// them is named at once.
    left_gracefully: std::collections::BTreeSet<WorkerId>,
    /// Since when each live loser has kept some gainer waiting (see [`handoff::waited_on`]).
    waiting_since: BTreeMap<WorkerId, Instant>,
    /// Losers whose lease this leader revoked.
    expelled: BTreeMap<WorkerId, Expulsion>,
}

/// A loser whose lease was revoked: it holds nothing it lost up to `version` from `fenced_at`
/// on — one heartbeat TTL after the revocation was written, since every renewal it made
/// before then started before the write, and none can succeed after it.
#[derive(Debug, Clone, Copy)]
struct Expulsion {
    version: u64,
    fenced_at: Instant,
}

impl RunnerState {
    /// The members as hand-offs see them: an expelled loser whose lease has provably run out
    /// counts as having released, whatever its heartbeat says.
    fn members(&self, now: Instant) -> Members {
        let mut members = self.members.clone();
        for (worker, expulsion) in &self.expelled {
            if now >= expulsion.fenced_at {
                members.fenced(worker, expulsion.version);
            }
        }
        members
    }

    /// When an expulsion falls due or a revoked lease runs out.
    fn expulsion_due(&self, timeout: Duration, now: Instant) -> Option<Instant> {
        let overdue = self.waiting_since.values().map(|since| *since + timeout);
        let fenced = self
            .expelled
            .values()
            .map(|e| e.fenced_at)
            .filter(|at| *at > now);
        overdue.chain(fenced).min()
    }
}

/// The longest a completed release waits for the others of its batch before its gainer is
/// let in alone.
const HANDOFF_BATCH: Duration = Duration::from_millis(100);

/// Released versions, lineages and the version floor from the members' heartbeats.
fn members_from(values: &BTreeMap<WorkerId, HeartbeatValue>) -> Members {
    Members {
        released: values
            .iter()
            .map(|(w, v)| (w.clone(), v.released))
            .collect(),
        lineages: values
            .iter()
            .map(|(w, v)| {
                let lineage = Lineage {
                    instance: v.instance.clone(),
                    lapses: v.lapses,
                };
                (w.clone(), lineage)
            })
            .collect(),
        floor: values
            .values()
            .map(|v| v.applied_version.max(v.released))
            .max()
            .unwrap_or(0),
    }
}

/// Republishes the committed map when that lets someone hold more: a moved partition whose
/// previous holders all released, or a worker back with a new lineage (SPEC §13).
async fn complete_handoffs(
    ctx: &LeaderContext,
    publisher: &mut Publisher,
    planner: &mut Planner,
    state: &mut RunnerState,
) -> Result<Vec<Decision>> {
    let committed = publisher.committed();
    let Some((record, _)) = &committed.record else {
        return Ok(Vec::new());
    };
    if committed.map.is_empty() {
        return Ok(Vec::new());
    }
    let records: BTreeMap<WorkerId, WorkerRecord> = committed
        .workers
        .iter()
        .map(|(w, (_, r))| (w.clone(), r.clone()))
        .collect();
    // A cold start (or full restart) window ends in one publish that names every lineage:
    // republishing the old map for returning workers meanwhile would only add moves.
    let cold = matches!(
        planner.phase(),
        Phase::Scaling {
            reason: ScalingReason::ColdStart | ScalingReason::Restart,
            ..
        }
    );
    let ttl = ctx.membership_resync;
    let now_at = now();
    let settled = |w: &WorkerId| {
        state.left_gracefully.contains(w)
            || state
                .lineage_seen
                .get(w)
                .is_some_and(|(_, since)| now_at >= *since + ttl)
    };
    let stale =
        !cold && handoff::lineage_stale(&records, &record.lineages, &state.members, settled);
    if !stale
        && !cold
        && handoff::lineage_stale(&records, &record.lineages, &state.members, |_| true)
    {
        // A newcomer under a mapped ID waits out the previous process's lease: look again then.
        let due = state.lineage_seen.values().map(|(_, since)| *since).max();
        if let Some(due) = due {
            state
                .handoff_ready_since
                .get_or_insert(due + ttl - HANDOFF_BATCH.min(ttl));
        }
    }
    // Losers of one publish release within moments of each other: complete their hand-offs in
    // one commit, unless some keep the others waiting for longer than `HANDOFF_BATCH`.
    expel_overdue(ctx, &records, record.version, state).await;
    let members = state.members(now());
    let (ready, pending) = handoff::resolvable(&records, &members);
    let batch_due = match (ready, state.handoff_ready_since) {
        (0, _) => {
            state.handoff_ready_since = None;
            false
        }
        (_, None) => {
            state.handoff_ready_since = Some(now());
            ready == pending
        }
        (_, Some(since)) => ready == pending || now() >= since + HANDOFF_BATCH,
    };
    if !stale && !batch_due {
        return Ok(Vec::new());
    }
    // At most one such commit per `HANDOFF_BATCH`: lineages that keep changing (a worker whose
    // lease keeps lapsing) must not turn into a stream of publishes.
    if let Some(last) = state.last_handoff
        && now() < last + HANDOFF_BATCH
    {
        state.handoff_ready_since.get_or_insert(last);
        return Ok(Vec::new());
    }
    tracing::debug!(stale, ready, pending, "completing hand-offs");
    state.handoff_ready_since = None;
    state.last_handoff = Some(now());
    let map = committed.map.clone();
    let workers: Vec<WorkerId> = map.workers().cloned().collect();
    let meta = PublishMeta {
        phase: planner.phase().to_cluster_phase(now(), unix_ms()),
        reason: "handoff".to_owned(),
        lifecycle: state.lifecycle,
    };
    match publisher.publish(&map, meta, &members).await {
        Ok(version) => {
            tracing::debug!(version, "hand-off completed");
            Ok(planner.handle(Input::Published {
                version,
                workers,
                now: now(),
            }))
        }
        Err(Error::LeadershipLost) => Err(Error::LeadershipLost),
        Err(e) => {
            // Tried again at the next heartbeat change or decision.
            ctx.events.error(e);
            Ok(Vec::new())
        }
    }
}

/// Revokes the lease of every live loser that has kept a gainer waiting for `handoffTimeout`
/// (SPEC §13, expulsion): an expulsion marker written over its heartbeat, revision-checked
/// against the value read, so that no renewal of that lineage can succeed after it. One
/// heartbeat TTL later the loser holds nothing it lost up to `committed` (the latest commit,
/// which names no later lineage of it: a later lineage would have shown in the heartbeat the
/// write was checked against).
async fn expel_overdue(
    ctx: &LeaderContext,
    records: &BTreeMap<WorkerId, WorkerRecord>,
    committed: u64,
    state: &mut RunnerState,
) {
    let now_at = now();
    let waited = handoff::waited_on(records, &state.members(now_at));
    state.waiting_since.retain(|w, _| waited.contains_key(w));
    let raw = &state.members;
    state
        .expelled
        .retain(|w, e| now_at < e.fenced_at || raw.released.get(w).is_some_and(|r| *r < e.version));
    for (worker, version) in waited {
        let since = *state.waiting_since.entry(worker.clone()).or_insert(now_at);
        let covered = state
            .expelled
            .get(&worker)
            .is_some_and(|e| e.version >= version);
        if covered || now_at < since + ctx.handoff_timeout {
            continue;
        }
        match revoke_lease(&*ctx.heartbeat_bucket, &worker).await {
            Ok(true) => {
                tracing::warn!(
                    %worker,
                    version,
                    "hand-off not released within handoffTimeout: lease revoked"
                );
                metrics::counter!("parti_expulsions_total").increment(1);
                state.expelled.insert(
                    worker,
                    Expulsion {
                        version: committed,
                        fenced_at: now() + ctx.membership_resync,
                    },
                );
            }
            Ok(false) => {}
            // Tried again at the next wake-up.
            Err(e) => tracing::debug!(%worker, error = %e, "lease revocation failed"),
        }
    }
}

/// Writes the expulsion marker over `worker`'s heartbeat, checked against the revision read.
/// `false` when there is no live heartbeat to revoke (the membership watcher deals with it).
async fn revoke_lease(bucket: &dyn Bucket, worker: &WorkerId) -> Result<bool> {
    let key = worker.as_str();
    let Some(entry) = bucket.get(key).await? else {
        return Ok(false);
    };
    let Ok(value) = crate::store::codec::decode::<HeartbeatValue>(bucket.name(), key, &entry.value)
    else {
        return Ok(false);
    };
    if value.expelled {
        return Ok(true);
    }
    let marker = crate::store::codec::encode(&value.expel())?;
    bucket.update(key, marker, entry.revision).await?;
    Ok(true)
}

async fn execute(
    ctx: &LeaderContext,
    publisher: &mut Publisher,
    planner: &mut Planner,
    partitions: &mut Option<Vec<Partition>>,
    state: &mut RunnerState,
    decision: Decision,
    cancel: &CancellationToken,
) -> Result<Vec<Decision>> {
    match decision {
        Decision::SetPhase(phase) => {
            let published = phase.to_cluster_phase(now(), unix_ms());
            let mut delay = Duration::from_millis(50);
            loop {
                match publisher.set_phase(published).await {
                    Ok(()) => return Ok(Vec::new()),
                    Err(Error::LeadershipLost) => return Err(Error::LeadershipLost),
                    // A phase write is informational: give up after a few tries, the next
                    // publish carries the phase anyway.
                    Err(e) if delay > Duration::from_millis(400) => {
                        ctx.events.error(e);
                        return Ok(Vec::new());
                    }
                    Err(_) => {
                        tokio::select! {
                            () = cancel.cancelled() => return Err(Error::Shutdown),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay *= 2;
                    }
                }
            }
        }
        Decision::Publish {
            workers,
            reason,
            orphans_only,
        } => {
            let mut delay = Duration::from_millis(50);
            loop {
                match publish_once(
                    ctx,
                    publisher,
                    planner.phase(),
                    partitions,
                    state,
                    &workers,
                    reason.as_str(),
                    orphans_only,
                )
                .await
                {
                    Ok(version) => {
                        metrics::counter!("parti_rebalances_total", "reason" => reason.as_str())
                            .increment(1);
                        return Ok(planner.handle(Input::Published {
                            version,
                            workers,
                            now: now(),
                        }));
                    }
                    Err(Error::LeadershipLost) => return Err(Error::LeadershipLost),
                    Err(e) => {
                        // Retried with backoff until it succeeds or leadership is lost; the
                        // last good map stays in force meanwhile.
                        ctx.events.error(e);
                        if !ctx.agent.is_leader() {
                            return Err(Error::LeadershipLost);
                        }
                        tokio::select! {
                            () = cancel.cancelled() => return Err(Error::Shutdown),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish_once(
    ctx: &LeaderContext,
    publisher: &mut Publisher,
    phase: Phase,
    partitions: &mut Option<Vec<Partition>>,
    state: &mut RunnerState,
    workers: &[WorkerId],
    reason: &str,
    orphans_only: bool,
) -> Result<u64> {
    if !ctx.agent.is_leader() || ctx.agent.term() != Some(publisher.agent_term()) {
        return Err(Error::LeadershipLost);
    }
    let fresh = match load_checked(&*ctx.source, ctx.source_timeout).await {
        Ok(fresh) => fresh,
        // A refresh cannot happen without the source: report it, keep the map; the periodic
        // source check notices the change once the source answers again.
        Err(e) if reason == RebalanceReason::PartitionChange.as_str() => {
            ctx.events.error(e);
            return Ok(publisher.committed().version());
        }
        // Membership changes (a crash above all) must not wait for the source: place the last
        // good partition list over the new workers.
        Err(e) => match partitions.clone() {
            Some(last_good) => {
                ctx.events.error(e);
                last_good
            }
            None => return Err(e),
        },
    };
    let previous = &publisher.committed().map;
    let map = if orphans_only && !previous.is_empty() {
        reassign_orphans(&*ctx.strategy, previous, workers, &fresh)?
    } else {
        let previous = (!previous.is_empty()).then_some(previous);
        ctx.strategy.assign(workers, &fresh, previous)?
    };
    // Never publish a broken map, whatever the strategy returned.
    map.verify(workers, &fresh)?;
    if reason == RebalanceReason::PartitionChange.as_str()
        && let Some(gain) = reweight_gain(previous, &map, &fresh)
        && gain < ctx.min_rebalance_threshold
    {
        // Only weights changed, and rebalancing would improve the worst load by less than
        // `minRebalanceThreshold`: keep the map as it is.
        tracing::info!(
            gain,
            threshold = ctx.min_rebalance_threshold,
            "re-weight below threshold; rebalance skipped"
        );
        *partitions = Some(fresh);
        return Ok(publisher.committed().version());
    }
    let started = std::time::Instant::now();
    let moved = moved_partitions(&state.last_map, &map);
    let lifecycle = Lifecycle::Running;
    let version = publisher
        .publish(
            &map,
            PublishMeta {
                phase: phase.to_cluster_phase(now(), unix_ms()),
                reason: reason.to_owned(),
                lifecycle,
            },
            &state.members(now()),
        )
        .await?;
    metrics::histogram!("parti_rebalance_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("parti_partitions_moved_total").increment(moved as u64);
    metrics::gauge!("parti_assignment_version").set(version as f64);
    tracing::info!(
        version,
        reason,
        moved,
        workers = workers.len(),
        partitions = fresh.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "published assignment"
    );
    state.last_map = map;
    state.lifecycle = lifecycle;
    *partitions = Some(fresh);
    Ok(version)
}

/// For a change that only re-weights partitions (same keys, same workers): how much the
/// proposed map lowers the worst worker's load relative to the mean, compared with keeping the
/// current placement under the new weights. `None` when keys or workers changed.
fn reweight_gain(
    current: &AssignmentMap,
    proposed: &AssignmentMap,
    fresh: &[Partition],
) -> Option<f64> {
    let current_keys: std::collections::BTreeSet<&[String]> = current
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(Partition::keys))
        .collect();
    let fresh_keys: std::collections::BTreeSet<&[String]> =
        fresh.iter().map(Partition::keys).collect();
    if current_keys != fresh_keys || !current.workers().eq(proposed.workers()) || current.is_empty()
    {
        return None;
    }
    let weight: std::collections::BTreeMap<&[String], u64> = fresh
        .iter()
        .map(|p| (p.keys(), p.effective_weight()))
        .collect();
    let total: u64 = weight.values().sum();
    let mean = total as f64 / current.len() as f64;
    if mean == 0.0 {
        return None;
    }
    let worst = |map: &AssignmentMap| {
        map.iter()
            .map(|(_, ps)| {
                ps.iter()
                    .map(|p| weight.get(p.keys()).copied().unwrap_or(0))
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0) as f64
            / mean
    };
    Some(worst(current) - worst(proposed))
}

/// Partitions whose owner differs between two maps (new partitions count, removed do not).
pub(crate) fn moved_partitions(before: &AssignmentMap, after: &AssignmentMap) -> usize {
    let owners = before.owners();
    after
        .iter()
        .map(|(worker, parts)| {
            parts
                .iter()
                .filter(|p| owners.get(p.keys()).is_some_and(|w| *w != worker))
                .count()
        })
        .sum()
}

async fn next_refresh(watch: &mut Option<crate::store::WatchStream>) -> Option<()> {
    let Some(stream) = watch.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match stream.next().await? {
            Ok(WatchEvent::Put(_)) => return Some(()),
            _ => continue,
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn retry_until<T, F, Fut>(cancel: &CancellationToken, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::debug!(error = %e, "retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

impl From<&crate::config::Config> for PlannerConfig {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            cold_start_window: c.cold_start_window,
            planned_scale_window: c.planned_scale_window,
            emergency_grace_period: c.emergency_grace_period(),
            restart_detection_ratio: c.restart_detection_ratio,
            restart_min_workers: c.restart_min_workers as usize,
            min_rebalance_interval: c.assignment.min_rebalance_interval,
        }
    }
}
