//! The reconciler's decisions, without I/O: what to do to the durable consumer, given what it
//! should be and what the server last said it is.
//!
//! # Layout
//!
//! The reconciler is split in two, as in openraft's engine (events in, commands out) and
//! kube-runtime's watcher (a state value moved by a step):
//!
//! - **this module** decides. Its functions take plain values — the [`Desired`] filter and
//!   the [`Observed`] durable ([`Applied`], the stream's consumers, the drains in progress) —
//!   and return a list of [`Command`]s. No async, no clock, no server: every case is a unit
//!   test comparing the whole list.
//! - **[`reconcile`](super::reconcile)** is the shell: it reads what [`reads`] asks for,
//!   calls [`sync`], executes the commands in order (stopping at the first failed write),
//!   and owns retries with backoff, errors, logging and the bookkeeping between steps
//!   (re-planning after an overlap or a deletion, the blocked subjects, the drain tasks).
//!
//! One reconciliation attempt is:
//!
//! 1. `target` = the assignment minus the subjects found held by another consumer of a
//!    work-queue stream ([`target`]);
//! 2. [`reads`]: which server reads the decision needs (a fresh ack floor, the consumer list);
//! 3. [`sync`]: the commands — nothing when the server already has it;
//! 4. on a work-queue overlap, [`takeover`] plans what to take from stuck group consumers;
//!    the shell then tries again with the subjects still held left out.
//!
//! [`adopt`] and [`seen`] turn a consumer the server reported into an [`Applied`] (and the
//! drains an earlier process left unfinished).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use tokio::time::Instant;

use super::config::ConsumerConfig;
use super::subjects::{overlaps, paused_subject};
use super::takeover::Holder;
use super::{Mode, api, markers};
use crate::partition::WorkerId;

/// The durable as last seen on, or written to, the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Whether the durable exists: a missing one is created (not updated), and nothing of it
    /// is released.
    pub(crate) exists: bool,
    /// Its filter subjects without the paused placeholder: what it holds, so what a new
    /// target gains and releases.
    pub(crate) subjects: BTreeSet<String>,
    /// Its `parti.*` metadata: the hand-off markers the next write starts from, and compared
    /// with the next one to skip a write that would change nothing.
    pub(crate) metadata: HashMap<String, String>,
    /// Its deliver policy: an update must keep it (the server refuses to change it).
    pub(crate) deliver: DeliverPolicy,
    /// Its ack floor (stream sequence): + 1 is where the next owner of a released subject
    /// resumes on a replay stream.
    pub(crate) floor: u64,
}

impl Applied {
    /// No durable on the server.
    pub(crate) fn missing() -> Self {
        Self {
            exists: false,
            subjects: BTreeSet::new(),
            metadata: HashMap::new(),
            deliver: DeliverPolicy::All,
            floor: 0,
        }
    }
}

/// What the durable should become.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Desired<'a> {
    /// The stream's retention: work queues rewind the durable over a gained backlog and keep
    /// no released markers; other streams replay the backlog with a catch-up consumer.
    pub(crate) mode: Mode,
    /// The consumer prefix: written as the group marker, and the only group whose hand-off
    /// statements count.
    pub(crate) group: &'a str,
    /// Our durable's name: its paused placeholder, and the one consumer whose filter is no
    /// statement about the subjects we gain.
    pub(crate) durable: &'a str,
    /// Written as the worker marker (who owns the durable).
    pub(crate) worker: &'a WorkerId,
    /// The subjects to filter on now (see [`target`]).
    pub(crate) target: &'a BTreeSet<String>,
    /// How many released markers to keep (`maxSubjects`), so metadata stays bounded.
    pub(crate) max_released: usize,
}

/// What the server (and the drain tasks) said, as far as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    /// Our durable, with the fresh ack floor when [`Reads::ack_floor`] asked for it.
    pub(crate) applied: &'a Applied,
    /// Every consumer of the stream when [`Reads::consumers`] asked for them (empty
    /// otherwise): their markers and floors say where a gained subject's backlog starts.
    pub(crate) consumers: &'a [consumer::Info],
    /// Subject → the gain draining it: a subject still draining keeps its pending marker.
    pub(crate) draining: &'a HashMap<String, u64>,
    /// Subjects whose drain finished: their pending marker goes (unless draining again).
    pub(crate) drained: &'a BTreeSet<String>,
    /// The durable was deleted behind our back: the next creation waits for the server and
    /// checks the new store ([`Command::Recreate`]).
    pub(crate) recreate: bool,
}

/// Server reads [`sync`] needs before it can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reads {
    /// Read the durable's ack floor again (released subjects record it; the last check's
    /// value may be old).
    pub(crate) ack_floor: bool,
    /// List the stream's consumers (where the gained subjects' previous owners stopped).
    pub(crate) consumers: bool,
}

/// A durable configuration to write: create, re-create or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Write {
    /// The server-side filter: the target subjects, or the paused placeholder when there
    /// are none (a consumer is never unfiltered).
    pub(crate) filters: Vec<String>,
    /// The deliver policy: kept on update; on creation, where the durable starts.
    pub(crate) deliver: DeliverPolicy,
    /// The `parti.*` metadata (group, worker, hand-off markers).
    pub(crate) metadata: HashMap<String, String>,
}

/// Up to which stream sequence a drain reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upto {
    /// The delivered position the preceding write reported: above it, the durable delivers
    /// the gained subjects itself.
    Delivered,
    /// This position (a drain resumed on adoption: the durable's delivered position then).
    At(u64),
}

impl Upto {
    /// The stream sequence, given the delivered position the preceding write reported (none
    /// before any write: then everything, the safe side — more duplicates, nothing missed).
    pub(crate) fn resolve(self, delivered: Option<u64>) -> u64 {
        match self {
            Self::Delivered => delivered.unwrap_or(u64::MAX),
            Self::At(n) => n,
        }
    }
}

/// One step for the shell to execute, in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Replay: messages of `subject` below `below` are processed already; the message loop
    /// acks them unhandled ([`Known`](super::handoff::Known); `0` forgets the subject). Comes
    /// before the write, so that nothing the durable delivers after it is handled twice.
    SkipBelow {
        /// A gained subject.
        subject: String,
        /// Its drain start.
        below: u64,
    },
    /// Work queue, before a write that gains subjects: stop the durable's delivery until
    /// [`Command::Resume`] after the write. nats-server deletes, unprocessed, every stored message of a
    /// durable's filter at or below its delivered position that is not pending on it — on a
    /// consumer leader change, a snapshot, and every ~2 minutes in a cluster. A gained
    /// subject's backlog lies below that position, so the position is moved back first
    /// ([`Command::RewindTo`]) and must not move on before the write: hence the pause.
    Pause,
    /// Work queue, while paused: if stored messages of `subjects` lie at or below the
    /// durable's delivered position, reset it to the oldest of them, or to its ack floor + 1
    /// if that is lower (its own unacked messages come again; nothing is skipped).
    RewindTo {
        /// The subjects the next write gains.
        subjects: BTreeSet<String>,
    },
    /// Work queue, after the write that follows a [`Command::Pause`]: deliver again (a
    /// configuration write keeps a pause).
    Resume,
    /// Create the durable; the message loop then reads from it.
    Create(Write),
    /// Create the durable again after it was deleted: wait for the server to finish the
    /// deletion, create, check the new store with a no-op update (deleting it to retry if it
    /// fails); the message loop then reads from it.
    Recreate(Write),
    /// Update the durable in place.
    Update(Write),
    /// Work queue, after the write: if the message loop nak'ed gated messages of these
    /// released subjects, reset the durable to the ack floor the write reported + 1 (they
    /// stay pending on it otherwise, and a work queue gives them to no one else).
    ReleaseGated {
        /// The subjects the write dropped from the filter.
        released: BTreeSet<String>,
    },
    /// Drain the older messages of gained subjects in the background (rewind on a work
    /// queue, catch-up consumer otherwise).
    Drain {
        /// Gained subject → first sequence not known to be processed (0: from the start).
        from: BTreeMap<String, u64>,
        /// Where the durable's own delivery takes over.
        upto: Upto,
    },
    /// Work queue: take subjects from a group consumer (a crashed or stuck worker) that held
    /// them longer than `takeoverAfter`, by updating its filter.
    TakeOver {
        /// The holder's name.
        from: String,
        /// Its configuration with those subjects removed (paused if none is left; boxed: it
        /// is large).
        config: Box<consumer::Config>,
        /// The due subjects it holds: still held if this update fails.
        subjects: BTreeSet<String>,
    },
}

/// The subjects to filter on: the assignment minus those found held by another consumer of
/// a work-queue stream (the rest is applied; those wait).
pub(crate) fn target(assigned: &BTreeSet<String>, held: &BTreeSet<String>) -> BTreeSet<String> {
    assigned.difference(held).cloned().collect()
}

/// Subjects `target` adds to the durable's filter.
pub(crate) fn gained(applied: &Applied, target: &BTreeSet<String>) -> BTreeSet<String> {
    target.difference(&applied.subjects).cloned().collect()
}

/// What to read from the server before [`sync`] for moving `applied` to `target`.
pub(crate) fn reads(mode: Mode, applied: &Applied, target: &BTreeSet<String>) -> Reads {
    let replay = mode == Mode::Replay;
    Reads {
        ack_floor: replay && applied.exists && !applied.subjects.is_subset(target),
        consumers: replay && !gained(applied, target).is_empty(),
    }
}

/// The commands that bring the durable from `observed` to `desired` (none when it is there).
pub(crate) fn sync(desired: &Desired<'_>, observed: &Observed<'_>) -> Vec<Command> {
    let applied = observed.applied;
    let target = desired.target;
    let gained = gained(applied, target);
    let fresh = !applied.exists;
    let from = lower_bounds(desired, observed, &gained);
    let deliver = match (fresh, desired.mode) {
        (false, _) => applied.deliver,
        (true, Mode::WorkQueue) => DeliverPolicy::All,
        // Nobody processed any of these yet: the durable itself starts from the start.
        (true, Mode::Replay) if from.values().all(|n| *n == 0) => DeliverPolicy::All,
        (true, Mode::Replay) => DeliverPolicy::New,
    };
    // A fresh durable that delivers everything has no backlog behind it.
    let drain = !(gained.is_empty() || fresh && deliver == DeliverPolicy::All);
    let drained_from = if drain { from } else { BTreeMap::new() };
    let metadata = next_metadata(desired, observed, &drained_from);
    if !fresh && gained.is_empty() && *target == applied.subjects && metadata == applied.metadata {
        return Vec::new();
    }
    let mut commands = Vec::new();
    if desired.mode == Mode::Replay {
        commands.extend(gained.iter().map(|s| Command::SkipBelow {
            subject: s.clone(),
            below: drained_from.get(s).copied().unwrap_or(0),
        }));
    }
    let write = Write {
        filters: filters(desired.durable, target),
        deliver,
        metadata,
    };
    if desired.mode == Mode::WorkQueue && !fresh && !gained.is_empty() {
        commands.push(Command::Pause);
        commands.push(Command::RewindTo {
            subjects: gained.clone(),
        });
    }
    commands.push(match (fresh, observed.recreate) {
        (true, false) => Command::Create(write),
        (true, true) => Command::Recreate(write),
        (false, _) => Command::Update(write),
    });
    if commands.contains(&Command::Pause) {
        commands.push(Command::Resume);
    }
    let released: BTreeSet<String> = applied.subjects.difference(target).cloned().collect();
    if desired.mode == Mode::WorkQueue && !released.is_empty() {
        commands.push(Command::ReleaseGated { released });
    }
    if drain {
        // On a work queue the rewind before the write put the position below the backlog:
        // the reported position is exact even for a durable that had nothing assigned.
        commands.push(Command::Drain {
            from: drained_from,
            upto: Upto::Delivered,
        });
    }
    commands
}

/// Where the drain of each gained subject starts (work queues need no bound: they only
/// store what was not processed).
fn lower_bounds(
    desired: &Desired<'_>,
    observed: &Observed<'_>,
    gained: &BTreeSet<String>,
) -> BTreeMap<String, u64> {
    if gained.is_empty() || desired.mode == Mode::WorkQueue {
        return gained.iter().map(|s| (s.clone(), 0)).collect();
    }
    markers::lower_bounds(
        desired.group,
        desired.durable,
        observed.consumers,
        &observed.applied.metadata,
        gained,
    )
}

/// The metadata after moving to the target: released subjects get a released marker (their
/// drain start if still draining, else the ack floor + 1), gained ones a pending marker,
/// drained ones lose theirs.
fn next_metadata(
    desired: &Desired<'_>,
    observed: &Observed<'_>,
    gained: &BTreeMap<String, u64>,
) -> HashMap<String, String> {
    let applied = observed.applied;
    let target = desired.target;
    let mut m = applied.metadata.clone();
    m.insert(markers::GROUP.into(), desired.group.to_owned());
    m.insert(markers::WORKER.into(), desired.worker.to_string());
    let releasing: BTreeSet<String> = applied
        .subjects
        .difference(target)
        .cloned()
        .chain(
            markers::pending_subjects(&m)
                .into_iter()
                .filter(|s| !target.contains(s)),
        )
        .collect();
    for s in &releasing {
        let from = markers::pending(&m, s);
        m.remove(&markers::pending_key(s));
        if desired.mode == Mode::Replay {
            m.insert(
                markers::released_key(s),
                from.unwrap_or(applied.floor + 1).to_string(),
            );
        }
    }
    for s in observed.drained {
        if target.contains(s) && !observed.draining.contains_key(s) {
            m.remove(&markers::pending_key(s));
        }
    }
    for (s, from) in gained {
        m.remove(&markers::released_key(s));
        m.insert(markers::pending_key(s), from.to_string());
    }
    markers::prune_released(&mut m, desired.max_released);
    m
}

/// The server-side filter for `target`: the paused placeholder when empty.
fn filters(durable: &str, target: &BTreeSet<String>) -> Vec<String> {
    if target.is_empty() {
        vec![paused_subject(durable)]
    } else {
        target.iter().cloned().collect()
    }
}

/// The full consumer configuration of a [`Write`].
pub(crate) fn consumer_config(durable: &str, cfg: &ConsumerConfig, write: Write) -> pull::Config {
    pull::Config {
        durable_name: Some(durable.to_owned()),
        description: Some("parti: the partitions of one worker".into()),
        deliver_policy: write.deliver,
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_ack_pending: cfg.max_ack_pending,
        filter_subjects: write.filters,
        metadata: write.metadata,
        ..Default::default()
    }
}

/// Our durable as the server reported it.
pub(crate) fn seen(durable: &str, info: &consumer::Info) -> Applied {
    Applied {
        exists: true,
        subjects: server_subjects(durable, &info.config),
        metadata: markers::ours(&info.config.metadata),
        deliver: info.config.deliver_policy,
        floor: info.ack_floor.stream_sequence,
    }
}

/// Adopting the durable an earlier process left: what it is, and the drains to resume (its
/// pending markers of subjects still in its filter).
pub(crate) fn adopt(durable: &str, info: &consumer::Info) -> (Applied, Vec<Command>) {
    let applied = seen(durable, info);
    let meta = &info.config.metadata;
    let resume: BTreeMap<String, u64> = markers::pending_subjects(meta)
        .into_iter()
        .filter(|s| applied.subjects.contains(s))
        .map(|s| {
            let from = markers::pending(meta, &s).unwrap_or(0);
            (s, from)
        })
        .collect();
    let commands = if resume.is_empty() {
        Vec::new()
    } else {
        vec![Command::Drain {
            from: resume,
            upto: Upto::At(info.delivered.stream_sequence),
        }]
    };
    (applied, commands)
}

/// The subjects in a durable's server-side filter, without the paused placeholder.
fn server_subjects(durable: &str, config: &consumer::Config) -> BTreeSet<String> {
    let paused = paused_subject(durable);
    api::info_filters(config)
        .into_iter()
        .filter(|s| *s != paused)
        .collect()
}

/// Work queue, after an overlap: takes the subjects blocked for `after` or longer whose
/// holders are all group consumers (crashed or stuck workers) from those holders.
/// Consumers outside the group are never touched.
pub(crate) fn takeover(
    blocked: &BTreeMap<String, Instant>,
    holders: &BTreeMap<String, Vec<Holder>>,
    now: Instant,
    after: Duration,
) -> Vec<Command> {
    let due: BTreeSet<&String> = holders
        .iter()
        .filter(|(s, hs)| {
            hs.iter().all(|h| h.in_group)
                && blocked
                    .get(*s)
                    .is_some_and(|since| now.duration_since(*since) >= after)
        })
        .map(|(s, _)| s)
        .collect();
    let mut victims: BTreeMap<&str, (&consumer::Info, BTreeSet<String>)> = BTreeMap::new();
    for s in &due {
        for h in holders.get(*s).into_iter().flatten() {
            victims
                .entry(h.info.name.as_str())
                .or_insert_with(|| (&h.info, BTreeSet::new()))
                .1
                .insert((*s).clone());
        }
    }
    victims
        .into_iter()
        .map(|(name, (info, subjects))| {
            let mut config = info.config.clone();
            let kept: Vec<String> = api::info_filters(&config)
                .into_iter()
                .filter(|f| !due.iter().any(|s| overlaps(f, s)))
                .collect();
            config.filter_subject = String::new();
            config.filter_subjects = if kept.is_empty() {
                vec![paused_subject(name)]
            } else {
                kept
            };
            Command::TakeOver {
                from: name.to_owned(),
                config: Box::new(config),
                subjects,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "g";
    const DURABLE: &str = "g-w1";

    fn set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    /// Our markers (group, worker) plus `extra`.
    fn meta(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        m.insert(markers::GROUP.into(), GROUP.into());
        m.insert(markers::WORKER.into(), "w1".into());
        m
    }

    fn existing(subjects: &[&str], extra: &[(&str, &str)], floor: u64) -> Applied {
        Applied {
            exists: true,
            subjects: set(subjects),
            metadata: meta(extra),
            deliver: DeliverPolicy::All,
            floor,
        }
    }

    fn info(
        name: &str,
        group: Option<&str>,
        filters: &[&str],
        delivered: u64,
        meta: &[(&str, &str)],
    ) -> consumer::Info {
        let floor = delivered.saturating_sub(2);
        markers::consumer_info(name, group, filters, (delivered, floor), meta)
    }

    /// One planning case: the inputs [`sync`] sees, with quiet defaults.
    struct Case {
        mode: Mode,
        target: BTreeSet<String>,
        applied: Applied,
        consumers: Vec<consumer::Info>,
        draining: HashMap<String, u64>,
        drained: BTreeSet<String>,
        recreate: bool,
        max_released: usize,
    }

    impl Case {
        fn new(mode: Mode, applied: Applied, target: &[&str]) -> Self {
            Self {
                mode,
                target: set(target),
                applied,
                consumers: Vec::new(),
                draining: HashMap::new(),
                drained: BTreeSet::new(),
                recreate: false,
                max_released: 100,
            }
        }

        fn plan(&self) -> Vec<Command> {
            let worker = WorkerId::new("w1");
            let desired = Desired {
                mode: self.mode,
                group: GROUP,
                durable: DURABLE,
                worker: &worker,
                target: &self.target,
                max_released: self.max_released,
            };
            let observed = Observed {
                applied: &self.applied,
                consumers: &self.consumers,
                draining: &self.draining,
                drained: &self.drained,
                recreate: self.recreate,
            };
            sync(&desired, &observed)
        }
    }

    fn write(filters: &[&str], deliver: DeliverPolicy, extra: &[(&str, &str)]) -> Write {
        Write {
            filters: strings(filters),
            deliver,
            metadata: meta(extra),
        }
    }

    fn bounds(b: &[(&str, u64)]) -> BTreeMap<String, u64> {
        b.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
    }

    #[test]
    fn first_create_on_a_work_queue() {
        let case = Case::new(Mode::WorkQueue, Applied::missing(), &["e.2", "e.1"]);
        assert_eq!(
            case.plan(),
            [Command::Create(write(
                &["e.1", "e.2"],
                DeliverPolicy::All,
                &[]
            ))]
        );
    }

    #[test]
    fn first_create_on_a_replay_stream_nobody_processed_starts_from_the_start() {
        let case = Case::new(Mode::Replay, Applied::missing(), &["e.1"]);
        assert_eq!(
            case.plan(),
            [
                Command::SkipBelow {
                    subject: "e.1".into(),
                    below: 0
                },
                Command::Create(write(&["e.1"], DeliverPolicy::All, &[])),
            ]
        );
    }

    #[test]
    fn first_create_on_a_replay_stream_resumes_where_the_previous_owner_stopped() {
        let mut case = Case::new(Mode::Replay, Applied::missing(), &["e.1", "e.2"]);
        case.consumers = vec![
            info(
                "g-w0",
                Some(GROUP),
                &["e.9"],
                900,
                &[("parti.released.e.1", "800")],
            ),
            // Another group's statements do not count.
            info("h-x", Some("h"), &["e.2"], 5000, &[]),
        ];
        assert_eq!(
            case.plan(),
            [
                Command::SkipBelow {
                    subject: "e.1".into(),
                    below: 800
                },
                Command::SkipBelow {
                    subject: "e.2".into(),
                    below: 0
                },
                Command::Create(write(
                    &["e.1", "e.2"],
                    DeliverPolicy::New,
                    &[("parti.pending.e.1", "800"), ("parti.pending.e.2", "0")]
                )),
                Command::Drain {
                    from: bounds(&[("e.1", 800), ("e.2", 0)]),
                    upto: Upto::Delivered
                },
            ]
        );
    }

    #[test]
    fn recreation_after_a_deletion() {
        let mut case = Case::new(Mode::WorkQueue, Applied::missing(), &["e.1"]);
        case.recreate = true;
        assert_eq!(
            case.plan(),
            [Command::Recreate(write(&["e.1"], DeliverPolicy::All, &[]))]
        );
    }

    #[test]
    fn unchanged_durable_needs_no_command() {
        for mode in [Mode::WorkQueue, Mode::Replay] {
            let case = Case::new(mode, existing(&["e.1", "e.2"], &[], 10), &["e.1", "e.2"]);
            assert_eq!(case.plan(), [], "{mode:?}");
        }
    }

    #[test]
    fn paused_durable_with_nothing_assigned_stays_as_it_is() {
        let case = Case::new(Mode::WorkQueue, existing(&[], &[], 10), &[]);
        assert_eq!(case.plan(), []);
    }

    #[test]
    fn missing_markers_are_restored() {
        let mut applied = existing(&["e.1"], &[], 10);
        applied.metadata.remove(markers::WORKER);
        let case = Case::new(Mode::WorkQueue, applied, &["e.1"]);
        assert_eq!(
            case.plan(),
            [Command::Update(write(&["e.1"], DeliverPolicy::All, &[]))]
        );
    }

    #[test]
    fn filter_change_on_a_work_queue() {
        let case = Case::new(
            Mode::WorkQueue,
            existing(&["e.1", "e.2"], &[], 10),
            &["e.2", "e.3"],
        );
        assert_eq!(
            case.plan(),
            [
                Command::Pause,
                Command::RewindTo {
                    subjects: set(&["e.3"])
                },
                Command::Update(write(
                    &["e.2", "e.3"],
                    DeliverPolicy::All,
                    &[("parti.pending.e.3", "0")]
                )),
                Command::Resume,
                Command::ReleaseGated {
                    released: set(&["e.1"])
                },
                Command::Drain {
                    from: bounds(&[("e.3", 0)]),
                    upto: Upto::Delivered
                },
            ]
        );
    }

    #[test]
    fn filter_change_on_a_replay_stream_keeps_the_deliver_policy() {
        let mut applied = existing(&["e.1"], &[], 41);
        applied.deliver = DeliverPolicy::New;
        let mut case = Case::new(Mode::Replay, applied, &["e.2"]);
        case.consumers = vec![info("g-w0", Some(GROUP), &["e.2"], 70, &[])];
        assert_eq!(
            case.plan(),
            [
                Command::SkipBelow {
                    subject: "e.2".into(),
                    below: 69
                },
                Command::Update(write(
                    &["e.2"],
                    DeliverPolicy::New,
                    &[("parti.released.e.1", "42"), ("parti.pending.e.2", "69")]
                )),
                Command::Drain {
                    from: bounds(&[("e.2", 69)]),
                    upto: Upto::Delivered
                },
            ]
        );
    }

    #[test]
    fn regaining_a_released_subject_replaces_its_released_marker() {
        let applied = existing(&["e.1"], &[("parti.released.e.2", "30")], 50);
        let case = Case::new(Mode::Replay, applied, &["e.1", "e.2"]);
        assert_eq!(
            case.plan(),
            [
                Command::SkipBelow {
                    subject: "e.2".into(),
                    below: 30
                },
                Command::Update(write(
                    &["e.1", "e.2"],
                    DeliverPolicy::All,
                    &[("parti.pending.e.2", "30")]
                )),
                Command::Drain {
                    from: bounds(&[("e.2", 30)]),
                    upto: Upto::Delivered
                },
            ]
        );
    }

    #[test]
    fn nothing_assigned_pauses_a_work_queue_durable() {
        let case = Case::new(Mode::WorkQueue, existing(&["e.1", "e.2"], &[], 10), &[]);
        assert_eq!(
            case.plan(),
            [
                Command::Update(write(&["_parti.paused.g-w1"], DeliverPolicy::All, &[])),
                Command::ReleaseGated {
                    released: set(&["e.1", "e.2"])
                },
            ]
        );
    }

    #[test]
    fn nothing_assigned_on_a_replay_stream_records_where_the_next_owner_resumes() {
        // e.2's drain (started at 5) has not finished: its next owner resumes there, not
        // above the ack floor.
        let applied = existing(&["e.1", "e.2"], &[("parti.pending.e.2", "5")], 41);
        let mut case = Case::new(Mode::Replay, applied, &[]);
        case.draining = HashMap::from([("e.2".to_owned(), 7)]);
        assert_eq!(
            case.plan(),
            [Command::Update(write(
                &["_parti.paused.g-w1"],
                DeliverPolicy::All,
                &[("parti.released.e.1", "42"), ("parti.released.e.2", "5")]
            ))]
        );
    }

    #[test]
    fn work_queue_release_drops_pending_markers_and_records_nothing() {
        let applied = existing(&["e.1", "e.2"], &[("parti.pending.e.2", "0")], 10);
        let mut case = Case::new(Mode::WorkQueue, applied, &["e.1"]);
        case.draining = HashMap::from([("e.2".to_owned(), 1)]);
        assert_eq!(
            case.plan(),
            [
                Command::Update(write(&["e.1"], DeliverPolicy::All, &[])),
                Command::ReleaseGated {
                    released: set(&["e.2"])
                },
            ]
        );
    }

    #[test]
    fn paused_work_queue_durable_rewinds_over_the_backlog_before_the_write() {
        let case = Case::new(Mode::WorkQueue, existing(&[], &[], 10), &["e.1"]);
        assert_eq!(
            case.plan(),
            [
                Command::Pause,
                Command::RewindTo {
                    subjects: set(&["e.1"])
                },
                Command::Update(write(
                    &["e.1"],
                    DeliverPolicy::All,
                    &[("parti.pending.e.1", "0")]
                )),
                Command::Resume,
                Command::Drain {
                    from: bounds(&[("e.1", 0)]),
                    upto: Upto::Delivered
                },
            ]
        );
    }

    #[test]
    fn paused_replay_durable_drains_up_to_its_delivered_position() {
        let case = Case::new(Mode::Replay, existing(&[], &[], 10), &["e.1"]);
        assert_eq!(
            case.plan(),
            [
                Command::SkipBelow {
                    subject: "e.1".into(),
                    below: 0
                },
                Command::Update(write(
                    &["e.1"],
                    DeliverPolicy::All,
                    &[("parti.pending.e.1", "0")]
                )),
                Command::Drain {
                    from: bounds(&[("e.1", 0)]),
                    upto: Upto::Delivered
                },
            ]
        );
    }

    #[test]
    fn finished_drain_drops_its_pending_marker() {
        let applied = existing(&["e.1"], &[("parti.pending.e.1", "5")], 10);
        let mut case = Case::new(Mode::Replay, applied, &["e.1"]);
        case.drained = set(&["e.1"]);
        assert_eq!(
            case.plan(),
            [Command::Update(write(&["e.1"], DeliverPolicy::All, &[]))]
        );
    }

    #[test]
    fn subject_draining_again_keeps_its_pending_marker() {
        let applied = existing(&["e.1"], &[("parti.pending.e.1", "5")], 10);
        let mut case = Case::new(Mode::Replay, applied, &["e.1"]);
        case.drained = set(&["e.1"]);
        case.draining = HashMap::from([("e.1".to_owned(), 3)]);
        assert_eq!(case.plan(), []);
    }

    #[test]
    fn oldest_released_markers_are_pruned() {
        let applied = existing(
            &["e.1"],
            &[("parti.released.e.8", "3"), ("parti.released.e.9", "90")],
            41,
        );
        let mut case = Case::new(Mode::Replay, applied, &[]);
        case.max_released = 2;
        assert_eq!(
            case.plan(),
            [Command::Update(write(
                &["_parti.paused.g-w1"],
                DeliverPolicy::All,
                &[("parti.released.e.1", "42"), ("parti.released.e.9", "90")]
            ))]
        );
    }

    #[test]
    fn reads_are_asked_only_when_the_decision_needs_them() {
        let target = set(&["e.2"]);
        let holding = existing(&["e.1"], &[], 10);
        assert_eq!(
            reads(Mode::Replay, &holding, &target),
            Reads {
                ack_floor: true,
                consumers: true
            }
        );
        assert_eq!(
            reads(Mode::Replay, &Applied::missing(), &target),
            Reads {
                ack_floor: false,
                consumers: true
            }
        );
        assert_eq!(
            reads(Mode::Replay, &holding, &BTreeSet::new()),
            Reads {
                ack_floor: true,
                consumers: false
            }
        );
        assert_eq!(
            reads(Mode::Replay, &holding, &set(&["e.1"])),
            Reads {
                ack_floor: false,
                consumers: false
            }
        );
        assert_eq!(
            reads(Mode::WorkQueue, &holding, &target),
            Reads {
                ack_floor: false,
                consumers: false
            }
        );
    }

    #[test]
    fn drains_reach_the_reported_position_or_everything() {
        assert_eq!(Upto::Delivered.resolve(Some(12)), 12);
        assert_eq!(Upto::Delivered.resolve(None), u64::MAX);
        assert_eq!(Upto::At(7).resolve(Some(12)), 7);
    }

    #[test]
    fn target_leaves_out_subjects_held_elsewhere() {
        assert_eq!(
            target(&set(&["e.1", "e.2", "e.3"]), &set(&["e.2", "e.9"])),
            set(&["e.1", "e.3"])
        );
    }

    #[test]
    fn adopting_resumes_unfinished_drains_of_subjects_still_held() {
        let found = info(
            DURABLE,
            Some(GROUP),
            &["e.1", "e.2"],
            77,
            &[
                ("parti.pending.e.1", "12"),
                // No longer in the filter: nothing to resume.
                ("parti.pending.e.3", "4"),
                ("_nats.level", "1"),
            ],
        );
        let (applied, commands) = adopt(DURABLE, &found);
        let mut metadata = HashMap::from([
            ("parti.pending.e.1".to_owned(), "12".to_owned()),
            ("parti.pending.e.3".to_owned(), "4".to_owned()),
        ]);
        metadata.insert(markers::GROUP.into(), GROUP.into());
        assert_eq!(
            applied,
            Applied {
                exists: true,
                subjects: set(&["e.1", "e.2"]),
                metadata,
                deliver: DeliverPolicy::All,
                floor: 75,
            }
        );
        assert_eq!(
            commands,
            [Command::Drain {
                from: bounds(&[("e.1", 12)]),
                upto: Upto::At(77)
            }]
        );
    }

    #[test]
    fn adopting_a_paused_durable_sees_no_subject_and_resumes_nothing() {
        let found = info(DURABLE, Some(GROUP), &["_parti.paused.g-w1"], 5, &[]);
        let (applied, commands) = adopt(DURABLE, &found);
        assert_eq!(applied.subjects, BTreeSet::new());
        assert_eq!(commands, []);
    }

    fn holder(name: &str, in_group: bool, filters: &[&str]) -> Holder {
        Holder {
            info: info(name, in_group.then_some(GROUP), filters, 10, &[]),
            in_group,
        }
    }

    fn took(name: &str, filters: &[&str], subjects: &[&str]) -> Command {
        let mut config = info(name, Some(GROUP), &[], 10, &[]).config;
        config.filter_subjects = strings(filters);
        Command::TakeOver {
            from: name.into(),
            config: Box::new(config),
            subjects: set(subjects),
        }
    }

    const AFTER: Duration = Duration::from_secs(5);

    #[test]
    fn takeover_of_subjects_a_stuck_group_consumer_kept_too_long() {
        let since = Instant::now();
        let blocked = BTreeMap::from([("e.1".to_owned(), since), ("e.2".to_owned(), since)]);
        let holders = BTreeMap::from([
            (
                "e.1".to_owned(),
                vec![holder("g-w0", true, &["e.1", "e.2", "e.7"])],
            ),
            (
                "e.2".to_owned(),
                vec![holder("g-w0", true, &["e.1", "e.2", "e.7"])],
            ),
        ]);
        assert_eq!(
            takeover(&blocked, &holders, since + AFTER, AFTER),
            [took("g-w0", &["e.7"], &["e.1", "e.2"])]
        );
    }

    #[test]
    fn takeover_leaves_a_victim_with_nothing_paused() {
        let since = Instant::now();
        let blocked = BTreeMap::from([("e.1".to_owned(), since)]);
        let holders = BTreeMap::from([(
            "e.1".to_owned(),
            vec![
                holder("g-w0", true, &["e.>"]),
                holder("g-w2", true, &["e.1"]),
            ],
        )]);
        assert_eq!(
            takeover(&blocked, &holders, since + AFTER, AFTER),
            [
                took("g-w0", &["_parti.paused.g-w0"], &["e.1"]),
                took("g-w2", &["_parti.paused.g-w2"], &["e.1"]),
            ]
        );
    }

    #[test]
    fn no_takeover_before_takeover_after() {
        let since = Instant::now();
        let blocked = BTreeMap::from([("e.1".to_owned(), since)]);
        let holders = BTreeMap::from([("e.1".to_owned(), vec![holder("g-w0", true, &["e.1"])])]);
        assert_eq!(
            takeover(
                &blocked,
                &holders,
                since + AFTER - Duration::from_millis(1),
                AFTER
            ),
            []
        );
    }

    #[test]
    fn no_takeover_from_a_consumer_outside_the_group() {
        let since = Instant::now();
        let blocked = BTreeMap::from([("e.1".to_owned(), since)]);
        let holders = BTreeMap::from([(
            "e.1".to_owned(),
            vec![
                holder("g-w0", true, &["e.1"]),
                holder("other", false, &["e.>"]),
            ],
        )]);
        assert_eq!(takeover(&blocked, &holders, since + AFTER * 10, AFTER), []);
    }
}
