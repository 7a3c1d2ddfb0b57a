//! The leader's I/O shell: reads membership, heartbeats, refresh requests, the source check
//! and timers, turns each into one call on the [`Leader`], and carries out the decisions that
//! come back in order. Runs only while this worker holds the lease; cancelled at once when it
//! is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::compat;
use super::history::HistoryWriter;
use super::leader::{Leader, LeaderContext};
use super::planner::{CrashHold, Decision, Input, PlannerConfig};
use super::publisher::Publisher;
use crate::clock::now;
use crate::error::{Error, Result};
use crate::heartbeat::{HeartbeatValue, MembershipEvent, MembershipWatcher};
use crate::partition::WorkerId;
use crate::records::{INTENTS_KEY, REFRESH_KEY};
use crate::store::{WatchEvent, WatchStream};

/// Runs the controller until `cancel` fires or leadership is lost.
pub(crate) async fn run(
    mut ctx: LeaderContext,
    term: u64,
    mut refresh: mpsc::UnboundedReceiver<()>,
    cancel: CancellationToken,
) -> Result<()> {
    let (history, sender) =
        HistoryWriter::spawn(Arc::clone(&ctx.assignment_bucket), ctx.source_timeout);
    ctx.history = Some(sender);
    let result = run_term(ctx, term, &mut refresh, &cancel).await;
    history.stop().await;
    result
}

/// [`run`] with the term's history writer running.
async fn run_term(
    ctx: LeaderContext,
    term: u64,
    refresh: &mut mpsc::UnboundedReceiver<()>,
    cancel: &CancellationToken,
) -> Result<()> {
    let publisher = crate::retry::until_cancelled(cancel, "loading the committed map", || {
        Publisher::load(Arc::clone(&ctx.assignment_bucket), term)
    })
    .await
    .ok_or(Error::Shutdown)?;
    let (membership, mut members) = MembershipWatcher::spawn_with_ttl(
        Arc::clone(&ctx.heartbeat_bucket),
        ctx.membership_resync,
        ctx.membership_resync,
    );
    let result = lead(ctx, publisher, &membership, &mut members, refresh, cancel).await;
    membership.stop().await;
    result
}

/// The channels the leader listens on. Each event becomes one [`Leader`] call; the membership
/// watcher and the two receivers stay with [`run`], which stops the watcher once the term ends.
struct Feeds<'a> {
    /// Joins, graceful leaves and expiries from the membership watcher.
    members: &'a mut mpsc::UnboundedReceiver<MembershipEvent>,
    /// Refresh requests from this worker's manager.
    refresh: &'a mut mpsc::UnboundedReceiver<()>,
    /// Refresh requests written to the refresh key (by any worker); `None` once the watch has
    /// ended or when it could not be opened.
    refresh_watch: Option<WatchStream>,
    /// Every live member's heartbeat value: what hand-offs are completed from.
    heartbeats: watch::Receiver<BTreeMap<WorkerId, HeartbeatValue>>,
    /// Set by the manager around its degraded spells (see [`LeaderContext::crash_hold`]).
    crash_hold: watch::Receiver<Option<CrashHold>>,
    /// When to ask the source whether it changed by itself.
    source_check: tokio::time::Interval,
    /// Writes to the operator's intents key; `None` once the watch has ended or when it
    /// could not be opened (the periodic check remains).
    intents_watch: Option<WatchStream>,
    /// Writes to the assignment bucket (`>`): a committed worker value or a commit page
    /// overwritten under the leader is written again. `None` once the watch has ended or when
    /// it could not be opened.
    slots_watch: Option<WatchStream>,
    /// Change notices from a source that can tell (see
    /// [`PartitionSource::changes`](crate::source::PartitionSource::changes)); `None` when it
    /// cannot, or once the stream has ended (the periodic check remains).
    source_changes: Option<BoxStream<'static, ()>>,
}

/// Takes over from the first membership snapshot, then serves the term.
async fn lead(
    ctx: LeaderContext,
    publisher: Publisher,
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
    let live_now: BTreeSet<WorkerId> = membership.live().borrow().clone();
    let assignment_bucket = Arc::clone(&ctx.assignment_bucket);
    // A source that hangs here must not delay the takeover: it is followed by re-reading.
    let source_changes = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        changes = tokio::time::timeout(ctx.source_timeout, ctx.source.changes()) => {
            changes.ok().flatten()
        }
    };
    let check_every = ctx
        .planner
        .min_rebalance_interval
        .max(Duration::from_secs(1));
    let mut crash_hold = ctx.crash_hold.clone();
    let mut heartbeats = membership.values();
    let known = compat::members_from(&heartbeats.borrow_and_update());
    let mut leader = Leader::new(ctx, publisher, known, cancel.clone());
    let mut decisions = leader.take_over(&live_now);
    let held = *crash_hold.borrow_and_update();
    if let Some(hold) = held {
        decisions.extend(leader.handle(Input::HoldCrashes { hold, now: now() }));
    }
    // These takeover reads (stable IDs, the refresh watch) are not raced against `cancel`.
    decisions.extend(leader.departed_gracefully(&live_now).await);
    decisions.extend(leader.intents_at_takeover().await);

    let refresh_watch = assignment_bucket.watch(REFRESH_KEY).await.ok();
    let intents_watch = assignment_bucket.watch(INTENTS_KEY).await.ok();
    let slots_watch = leader.watch_slots().await;
    let mut source_check = tokio::time::interval(check_every);
    // After a long publish or a slow source, one check, not one per missed period.
    source_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    source_check.tick().await;
    let feeds = Feeds {
        members,
        refresh,
        refresh_watch,
        heartbeats,
        crash_hold,
        source_check,
        intents_watch,
        slots_watch,
        source_changes,
    };
    serve(leader, feeds, decisions, cancel).await
}

/// The term's loop: carry out the pending decisions, then the hand-offs they allow, then wait
/// for the next event or wake-up and feed it. Every store or source call is raced against
/// `cancel`: an interrupted publish leaves the committed map as it was.
async fn serve(
    mut leader: Leader,
    mut feeds: Feeds<'_>,
    mut decisions: Vec<Decision>,
    cancel: &CancellationToken,
) -> Result<()> {
    loop {
        let mut batch = std::mem::take(&mut decisions).into_iter().peekable();
        while let Some(decision) = batch.next() {
            if let Decision::SetPhase(phase) = decision
                && matches!(batch.peek(), Some(Decision::Publish { .. }))
                && leader.carry_phase(phase)
            {
                continue;
            }
            let follow_up = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                follow_up = leader.execute(decision) => follow_up?,
            };
            decisions.extend(plan(&mut leader, &mut feeds, follow_up));
        }
        if !decisions.is_empty() {
            continue;
        }
        let done = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            done = leader.complete_handoffs() => done?,
        };
        if !done.is_empty() {
            decisions = plan(&mut leader, &mut feeds, done);
            continue;
        }
        // Before the steps that feed the planner the time, and before the wait, where a
        // wake-up that fell due meanwhile could be picked first (see `plan`).
        if let Some(queued) = take_queued(&mut leader, &mut feeds) {
            decisions = queued;
            continue;
        }
        // A commit page that lags holds its workers back: written again as soon as it is due.
        if leader.pages_due() {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = leader.repair_pages() => {}
            }
        }
        decisions = leader.step_due();
        if !decisions.is_empty() {
            continue;
        }
        decisions = leader.placement_due();
        if !decisions.is_empty() {
            continue;
        }
        let wake = leader.next_wake();
        // Events with nothing for the planner go round again: hand-offs may have come due.
        let input = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = sleep_until(wake) => Input::Tick { now: now() },
            event = feeds.members.recv() => match event {
                Some(event) => {
                    decisions = on_member(&mut leader, &mut feeds, event);
                    continue;
                }
                None => return Err(Error::Shutdown),
            },
            request = feeds.refresh.recv() => match request {
                Some(()) => Input::PartitionsChanged { now: now() },
                None => return Err(Error::Shutdown),
            },
            event = next_refresh(&mut feeds.refresh_watch) => match event {
                Some(()) => Input::PartitionsChanged { now: now() },
                None => { feeds.refresh_watch = None; continue; }
            },
            changed = feeds.heartbeats.changed() => {
                if changed.is_err() { return Err(Error::Shutdown); }
                let members = compat::members_from(&feeds.heartbeats.borrow_and_update());
                let inputs = leader.on_heartbeats(members);
                decisions = feed(&mut leader, inputs);
                continue;
            },
            changed = feeds.crash_hold.changed() => {
                if changed.is_err() { return Err(Error::Shutdown); }
                match *feeds.crash_hold.borrow_and_update() {
                    Some(hold) => Input::HoldCrashes { hold, now: now() },
                    None => continue,
                }
            },
            written = next_write(&mut feeds.intents_watch) => {
                if written.is_none() {
                    feeds.intents_watch = None;
                    continue;
                }
                let changed = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    changed = leader.intents_changed() => changed,
                };
                match changed {
                    Some(input) => input,
                    None => continue,
                }
            },
            written = next_slot_write(&mut feeds.slots_watch) => {
                let Some((key, revision)) = written else {
                    feeds.slots_watch = None;
                    continue;
                };
                let mut damaged = leader.note_slot_write(&key, revision);
                // A publish writes one value per worker: take in the rest of the burst in this
                // wake-up rather than one round of the loop per value.
                loop {
                    match next_slot_write(&mut feeds.slots_watch).now_or_never() {
                        Some(Some((key, revision))) => {
                            damaged |= leader.note_slot_write(&key, revision);
                        }
                        Some(None) => {
                            feeds.slots_watch = None;
                            break;
                        }
                        None => break,
                    }
                }
                if !damaged {
                    continue;
                }
                let repaired = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    repaired = leader.repair_commit() => repaired?,
                };
                decisions = plan(&mut leader, &mut feeds, repaired);
                continue;
            },
            notice = next_notice(&mut feeds.source_changes) => {
                if notice.is_none() {
                    feeds.source_changes = None;
                    continue;
                }
                let changed = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    changed = leader.source_changed(true) => changed,
                };
                match changed {
                    Some(input) => input,
                    None => continue,
                }
            },
            _ = feeds.source_check.tick() => {
                if feeds.slots_watch.is_none() {
                    feeds.slots_watch = leader.watch_slots().await;
                }
                let repaired = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    repaired = leader.repair_commit() => repaired?,
                };
                if !repaired.is_empty() {
                    decisions = plan(&mut leader, &mut feeds, repaired);
                    if !decisions.is_empty() {
                        continue;
                    }
                }
                let (changed, intents) = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    changed = async {
                        (leader.source_changed(false).await, leader.intents_changed().await)
                    } => changed,
                };
                match (changed, intents) {
                    (Some(partitions), Some(intents)) => {
                        decisions = leader.handle(intents);
                        decisions.extend(leader.handle(partitions));
                        continue;
                    }
                    (Some(input), None) | (None, Some(input)) => input,
                    (None, None) => continue,
                }
            },
        };
        decisions = leader.handle(input);
    }
}

/// Feeds `inputs` to the planner — after what is already queued on the membership and
/// crash-hold feeds. Any input lets a deadline that fell due meanwhile fire (a crash's grace
/// ends at the `Published` of a publish that took seconds on a slow store): a crash must not be
/// declared for a worker whose return is queued, nor under a hold already replaced. With no
/// `inputs`, only what is queued is fed.
fn plan(leader: &mut Leader, feeds: &mut Feeds<'_>, inputs: Vec<Input>) -> Vec<Decision> {
    let mut decisions = take_queued(leader, feeds).unwrap_or_default();
    let at = now();
    decisions.extend(feed(
        leader,
        inputs.into_iter().map(|input| input.at(at)).collect(),
    ));
    decisions
}

/// Feeds every membership event already queued and a crash hold that changed; returns what
/// the planner decides, or `None` when nothing was queued.
fn take_queued(leader: &mut Leader, feeds: &mut Feeds<'_>) -> Option<Vec<Decision>> {
    let mut decisions = None::<Vec<Decision>>;
    while let Ok(event) = feeds.members.try_recv() {
        let decided = on_member(leader, feeds, event);
        decisions.get_or_insert_default().extend(decided);
    }
    if feeds.crash_hold.has_changed().unwrap_or(false)
        && let Some(hold) = *feeds.crash_hold.borrow_and_update()
    {
        let decided = leader.handle(Input::HoldCrashes { hold, now: now() });
        decisions.get_or_insert_default().extend(decided);
    }
    decisions
}

/// Feeds one membership event to the planner; returns what it decides. A join is judged on
/// the heartbeat that made it (a worker this leader does not understand is not fed to the
/// planner).
fn on_member(leader: &mut Leader, feeds: &mut Feeds<'_>, event: MembershipEvent) -> Vec<Decision> {
    let mut decisions = Vec::new();
    if matches!(event, MembershipEvent::Joined(_)) {
        let members = compat::members_from(&feeds.heartbeats.borrow_and_update());
        let inputs = leader.on_heartbeats(members);
        decisions = feed(leader, inputs);
    }
    let input = leader.on_membership(event);
    decisions.extend(leader.handle(input));
    decisions
}

/// Feeds `inputs` to the planner in order; returns what it decides.
fn feed(leader: &mut Leader, inputs: Vec<Input>) -> Vec<Decision> {
    inputs
        .into_iter()
        .flat_map(|input| leader.handle(input))
        .collect()
}

async fn next_refresh(watch: &mut Option<WatchStream>) -> Option<()> {
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

/// The next write (or delete) of a watched key after the snapshot; `None` when the watch
/// ended, pending for ever when there is none.
async fn next_write(watch: &mut Option<WatchStream>) -> Option<()> {
    let Some(stream) = watch.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match stream.next().await? {
            Ok(WatchEvent::Put(_) | WatchEvent::Deleted { .. } | WatchEvent::Expired { .. }) => {
                return Some(());
            }
            _ => continue,
        }
    }
}

/// The key and revision of the next write or delete of a watched key, the snapshot
/// included; `None` when the watch ended, pending for ever when there is none.
async fn next_slot_write(watch: &mut Option<WatchStream>) -> Option<(String, u64)> {
    let Some(stream) = watch.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match stream.next().await? {
            Ok(WatchEvent::Put(e) | WatchEvent::InitApply(e)) => return Some((e.key, e.revision)),
            Ok(WatchEvent::Deleted { key, revision } | WatchEvent::Expired { key, revision }) => {
                return Some((key, revision));
            }
            _ => continue,
        }
    }
}

/// The next change notice of the source; pending for ever when there is no stream.
async fn next_notice(changes: &mut Option<BoxStream<'static, ()>>) -> Option<()> {
    match changes.as_mut() {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl From<&crate::config::Config> for PlannerConfig {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            cold_start_window: c.cold_start_window,
            cold_start_quiet: c.cold_start_quiet,
            cold_start_max_window: c.cold_start_max_window(),
            planned_scale_window: c.planned_scale_window,
            emergency_grace_period: c.emergency_grace_period(),
            restart_detection_ratio: c.restart_detection_ratio,
            restart_min_workers: c.restart_min_workers as usize,
            min_rebalance_interval: c.assignment.min_rebalance_interval,
        }
    }
}
