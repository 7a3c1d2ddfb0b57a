//! The one list of known failures: violations today's protocol is expected to show under some
//! faults, each to be fixed by the companion issue "Ownership you can trust" (SPEC §13).
//!
//! A violation is *known* when its kind is listed here together with a fault kind that the
//! seed injected; anything else fails the run. The gate is on kinds, not seeds: without
//! `--cfg tokio_unstable` tokio's `select!` order is random, so which seeds hit a weakness
//! varies from run to run. When a fix lands, delete its line: the simulation then holds the
//! library to it.

/// A violation kind the simulation expects under some faults, and why.
pub struct Known {
    /// The checker's `kind` tag (`overlap`, `revived`, …) or one of the simulation's own
    /// (`notConverged`, `termReused`, …).
    pub violation: &'static str,
    /// Fault kinds (see `faults.rs`) any one of which, injected in the seed, explains it;
    /// empty when the violation needs no fault.
    pub faults: &'static [&'static str],
    /// One line: the weakness, and what fixes it.
    pub reason: &'static str,
}

/// Fault kinds that wipe or corrupt the committed `cluster` record.
const MAP_LOST: &[&str] = &["garbage", "bucketDeleted"];

/// Every known failure.
pub const KNOWN: &[Known] = &[
    Known {
        violation: "notConverged",
        faults: &["storeOutage"],
        reason: "a worker that died during a store outage expires unseen (no event while the \
                 watch was down), so its crash is noticed only after the outage and waits for \
                 the leader's recovery grace: the map can keep it longer than the settle time \
                 (seen before the ownership changes too: seed 208)",
    },
    Known {
        violation: "rollingRestartMoved",
        faults: &["pause", "idStolen"],
        reason: "a restarted worker whose old ID is still held (by a paused process, or one that \
                 took it while the owner was cut off) comes back under another ID, so its \
                 partitions move; the check assumes every ID comes back",
    },
    Known {
        violation: "notConverged",
        faults: &["garbage", "bucketDeleted", "idStolen"],
        reason: "with the commit lost or garbage, or a recreated bucket, recovery goes through \
                 a cold-start window and may outlast the settle time; a worker that lost its ID \
                 and re-claimed another is not always taken back into the map in time (§13 \
                 stable ID loss)",
    },
    Known {
        violation: "crashMovedOthers",
        faults: MAP_LOST,
        reason: "a leader that cannot read the commit places over the worker values left in \
                 the bucket; with those gone too (the bucket deleted) or garbage over a \
                 survivor's value, it places those partitions afresh, so a crash moves \
                 partitions of survivors too",
    },
];

/// Whether a violation of `kind` is explained by a fault the seed injected (or needs none).
pub fn explains(kind: &str, faults: &std::collections::BTreeSet<String>) -> bool {
    KNOWN.iter().any(|k| {
        k.violation == kind && (k.faults.is_empty() || k.faults.iter().any(|f| faults.contains(*f)))
    })
}

/// The reason recorded for `kind`, if it is known.
pub fn reason(kind: &str) -> Option<&'static str> {
    KNOWN.iter().find(|k| k.violation == kind).map(|k| k.reason)
}
