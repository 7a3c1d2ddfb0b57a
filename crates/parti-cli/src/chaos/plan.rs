//! The pure part of a chaos run: the workers' timings, the fault kinds and their seeded
//! schedule, the checker's bounds. No I/O, no clock.

use std::time::Duration;

use parti::Config;
use serde::Serialize;

use crate::rng::SplitMix;

/// Average time between two faults of a long run; a short run still gets every kind once.
const MEAN_SPACING: Duration = Duration::from_secs(15);

/// Something the runner does to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum FaultKind {
    /// `kill -9` of a worker that does not lead, restarted at once.
    Kill,
    /// `kill -9` of the leader, restarted at once.
    LeaderKill,
    /// SIGSTOP for longer than the leases, then SIGCONT.
    Pause,
    /// SIGSTOP with the worker's link blackholed too; still cut for a while after SIGCONT.
    PauseCut,
    /// The worker's link blackholed for longer than `workerIdTtl`, then healed.
    Cut,
    /// The (single) nats-server killed and restarted on the same port and store.
    NatsRestart,
    /// One node of the 3-node cluster killed and restarted.
    NodeKill,
    /// Garbage written over live keys of every bucket.
    Garbage,
    /// Every worker in turn stopped gracefully (SIGTERM) and started again.
    RollingRestart,
}

impl FaultKind {
    /// The kinds of a run: the server fault depends on the topology.
    pub(crate) fn all(cluster: bool) -> Vec<FaultKind> {
        vec![
            Self::Kill,
            Self::LeaderKill,
            Self::Pause,
            Self::PauseCut,
            Self::Cut,
            if cluster {
                Self::NodeKill
            } else {
                Self::NatsRestart
            },
            Self::Garbage,
            Self::RollingRestart,
        ]
    }

    /// Every kind, whatever the topology.
    pub(crate) fn every() -> Vec<FaultKind> {
        let mut kinds = Self::all(false);
        kinds.push(Self::NodeKill);
        kinds
    }

    /// Its name in fault records and reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::LeaderKill => "leaderKill",
            Self::Pause => "pause",
            Self::PauseCut => "pauseCut",
            Self::Cut => "cut",
            Self::NatsRestart => "natsRestart",
            Self::NodeKill => "nodeKill",
            Self::Garbage => "garbage",
            Self::RollingRestart => "rollingRestart",
        }
    }
}

/// One fault of the schedule: what, and when (since the fleet first settled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    pub(crate) at: Duration,
    pub(crate) kind: FaultKind,
}

/// The schedule: `max(kinds, duration / 15 s)` faults evenly spread over `duration`, in
/// rounds that each hold every kind once, shuffled by `rng`.
pub(crate) fn schedule(
    rng: &mut SplitMix,
    kinds: &[FaultKind],
    duration: Duration,
) -> Vec<Planned> {
    if kinds.is_empty() {
        return Vec::new();
    }
    let by_time =
        usize::try_from(duration.as_secs() / MEAN_SPACING.as_secs()).unwrap_or(usize::MAX);
    let count = by_time.max(kinds.len());
    let spacing = duration / u32::try_from(count + 1).unwrap_or(u32::MAX);
    let mut order = Vec::with_capacity(count);
    while order.len() < count {
        let mut round = kinds.to_vec();
        shuffle(rng, &mut round);
        order.extend(round);
    }
    order.truncate(count);
    order
        .into_iter()
        .zip(1u32..)
        .map(|(kind, i)| Planned {
            at: spacing * i,
            kind,
        })
        .collect()
}

/// Fisher–Yates with the run's generator.
fn shuffle<T>(rng: &mut SplitMix, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let bound = u64::try_from(i + 1).unwrap_or(u64::MAX);
        let j = usize::try_from(rng.next() % bound).unwrap_or(0);
        items.swap(i, j);
    }
}

/// The workers' configuration: short timings so that faults heal in seconds, and replicas 3
/// on a cluster. On a cluster the leases are three times longer: losing a node stalls the
/// replicated buckets while their streams elect new leaders (seconds), and a lease shorter
/// than that fences every worker at once — correct, but then every partition waits.
pub(crate) fn worker_config(cluster: bool) -> Config {
    let ms = Duration::from_millis;
    let scale = if cluster { 3 } else { 1 };
    let mut config = Config::fast_for_tests();
    config.heartbeat_interval = ms(250) * scale;
    config.heartbeat_ttl = ms(1_000) * scale;
    config.worker_id_ttl = ms(2_000) * scale;
    config.election_ttl = ms(1_500) * scale;
    config.cold_start_window = ms(2_000);
    config.planned_scale_window = ms(1_000);
    config.startup_timeout = ms(20_000);
    config.shutdown_timeout = ms(5_000);
    config.operation_timeout = ms(1_000);
    config.assignment.min_rebalance_interval = ms(200);
    config.kv_buckets.replicas = if cluster { 3 } else { 1 };
    config
}

/// How long each fault lasts, derived from the workers' timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timings {
    /// SIGSTOP → SIGCONT: past every lease (the stable ID's included).
    pub(crate) pause: Duration,
    /// After SIGCONT, how long a `pauseCut` worker stays cut off: long enough to run several
    /// heartbeats that cannot reach NATS.
    pub(crate) cut_after_resume: Duration,
    /// A `cut`: longer than `workerIdTtl`, so the stable ID expires.
    pub(crate) cut: Duration,
    /// How long the server (or node) stays down.
    pub(crate) downtime: Duration,
    /// The longest a partition may stay unheld after a fault healed (the checker's gap bound):
    /// heartbeatTtl + emergency grace + electionTtl + 2 s.
    pub(crate) gap_bound: Duration,
    /// The longest the runner waits for the fleet to settle after a fault or a start.
    pub(crate) settle: Duration,
    /// The longest a graceful stop may take before the process is killed.
    pub(crate) stop: Duration,
}

impl Timings {
    /// The timings for workers running `config`.
    pub(crate) fn new(config: &Config) -> Self {
        let gap_bound = config.heartbeat_ttl
            + config.emergency_grace_period()
            + config.election_ttl
            + Duration::from_secs(2);
        Self {
            pause: config.worker_id_ttl.max(config.heartbeat_ttl) + Duration::from_secs(1),
            cut_after_resume: config.heartbeat_interval * 6,
            cut: config.worker_id_ttl + Duration::from_millis(1_500),
            downtime: Duration::from_secs(1),
            gap_bound,
            settle: gap_bound + config.cold_start_window + Duration::from_secs(5),
            stop: config.shutdown_timeout + Duration::from_secs(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_configuration_is_valid() {
        worker_config(false).validate().unwrap();
        worker_config(true).validate().unwrap();
    }

    #[test]
    fn faults_outlast_the_leases() {
        let config = worker_config(false);
        let t = Timings::new(&config);
        assert!(t.pause > config.worker_id_ttl && t.pause > config.heartbeat_ttl);
        assert!(t.cut > config.worker_id_ttl);
        assert!(t.cut_after_resume > config.heartbeat_interval * 2);
        assert_eq!(
            t.gap_bound,
            Duration::from_millis(1_000 + 375 + 1_500 + 2_000)
        );
    }

    #[test]
    fn a_short_run_gets_every_kind_once_and_a_long_one_repeats_them() {
        let kinds = FaultKind::all(false);
        let short = schedule(&mut SplitMix(3), &kinds, Duration::from_secs(40));
        let mut seen: Vec<FaultKind> = short.iter().map(|p| p.kind).collect();
        seen.sort();
        let mut expected = kinds.clone();
        expected.sort();
        assert_eq!(seen, expected);
        assert!(short.windows(2).all(|w| w[0].at < w[1].at));
        assert!(short.last().is_some_and(|p| p.at < Duration::from_secs(40)));

        let long = schedule(&mut SplitMix(3), &kinds, Duration::from_secs(30 * 60));
        assert_eq!(long.len(), 120);
        for kind in &kinds {
            assert!(long.iter().filter(|p| p.kind == *kind).count() >= 15);
        }
        assert_eq!(
            schedule(&mut SplitMix(3), &kinds, Duration::from_secs(40)),
            short,
            "the seed decides"
        );
        assert!(FaultKind::all(true).contains(&FaultKind::NodeKill));
        assert!(!FaultKind::all(true).contains(&FaultKind::NatsRestart));
    }
}
