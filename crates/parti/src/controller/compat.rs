//! Mixed versions (rolling upgrades): what the leader may rely on from each live worker, from
//! the [protocol and capabilities](crate::heartbeat::protocol) its heartbeat announces. Pure.
//!
//! - A worker whose protocol this leader does not understand is **refused**: it is kept out of
//!   the map, nothing it says about releases is believed and its lease is never revoked (what
//!   it may hold waits until it departs).
//! - A worker without [`Capability::ReleaseAck`] cannot say that it released a hand-off: its
//!   `released` is ignored, and a partition it lost is handed on only once its lease has been
//!   revoked and has run out (at once, not after `handoffTimeout`).
//! - A worker without [`Capability::LeaseRevocation`] may write over an expulsion marker: it is
//!   never expelled, and what it lost waits for its release (if it acknowledges releases) or
//!   its departure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::handoff::Members;
use crate::heartbeat::HeartbeatValue;
use crate::heartbeat::protocol::{self, Capability, Refusal};
use crate::partition::WorkerId;
use crate::records::Lineage;

/// How the leader treats one live worker. Workers a [`Members`] does not list are [`FULL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Understood; what the leader may rely on.
    Trusted {
        /// Its `released` acknowledges finished releases.
        release_ack: bool,
        /// An expulsion marker ends its lease within one heartbeat TTL.
        revocable: bool,
    },
    /// Not understood: kept out of the map, never relied on.
    Refused(Refusal),
}

/// A worker of this build: everything is relied on.
pub(crate) const FULL: Standing = Standing::Trusted {
    release_ack: true,
    revocable: true,
};

impl Standing {
    /// Whether its `released` may be believed.
    pub(crate) fn release_ack(self) -> bool {
        matches!(
            self,
            Self::Trusted {
                release_ack: true,
                ..
            }
        )
    }

    /// Whether revoking its lease fences it.
    pub(crate) fn revocable(self) -> bool {
        matches!(
            self,
            Self::Trusted {
                revocable: true,
                ..
            }
        )
    }

    /// The capabilities it lacks that this leader would rely on (empty for a refused worker:
    /// nothing is relied on at all).
    pub(crate) fn missing(self) -> Vec<Capability> {
        let mut out = Vec::new();
        if let Self::Trusted {
            release_ack,
            revocable,
        } = self
        {
            if !release_ack {
                out.push(Capability::ReleaseAck);
            }
            if !revocable {
                out.push(Capability::LeaseRevocation);
            }
        }
        out
    }
}

/// The standing of a worker that wrote `value`.
pub(crate) fn standing(value: &HeartbeatValue) -> Standing {
    match protocol::understood(value.protocol) {
        Err(refusal) => Standing::Refused(refusal),
        Ok(()) => Standing::Trusted {
            release_ack: value.has(Capability::ReleaseAck),
            revocable: value.has(Capability::LeaseRevocation),
        },
    }
}

/// How the leader gets a live loser that keeps a gainer waiting to stop holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// Wait for its release acknowledgement; revoke its lease after `handoffTimeout`.
    AfterTimeout,
    /// It cannot acknowledge: revoke its lease at once and wait for it to run out.
    AtOnce,
    /// A revocation would not fence it: wait for its acknowledgement or its departure.
    Never,
}

/// The fence for `worker` (see [`Fence`]).
pub(crate) fn fence(members: &Members, worker: &WorkerId) -> Fence {
    let standing = members.standing(worker);
    match (standing.revocable(), standing.release_ack()) {
        (false, _) => Fence::Never,
        (true, false) => Fence::AtOnce,
        (true, true) => Fence::AfterTimeout,
    }
}

/// When a loser that has kept a gainer waiting since `since` is to have its lease revoked,
/// given its [`Fence`]: after `handoff_timeout`, at once, or never.
pub(crate) fn revocation_due(
    fence: Fence,
    since: Instant,
    handoff_timeout: Duration,
) -> Option<Instant> {
    match fence {
        Fence::AfterTimeout => Some(since + handoff_timeout),
        // No release acknowledgement will come: the lease fence is the only way.
        Fence::AtOnce => Some(since),
        // A revocation would not fence it.
        Fence::Never => None,
    }
}

/// Released versions, lineages, standings and the version floor from the members'
/// heartbeats. A member whose `released` cannot be believed counts as having released nothing.
pub(crate) fn members_from(values: &BTreeMap<WorkerId, HeartbeatValue>) -> Members {
    let standing: BTreeMap<WorkerId, Standing> = values
        .iter()
        .map(|(w, v)| (w.clone(), standing(v)))
        .filter(|(_, s)| *s != FULL)
        .collect();
    let believed = |w: &WorkerId| standing.get(w).is_none_or(|s| s.release_ack());
    Members {
        unproven: Default::default(),
        released: values
            .iter()
            .map(|(w, v)| (w.clone(), if believed(w) { v.released } else { 0 }))
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
        // Every member's versions, believed or not: a floor only ever raises the next version.
        floor: values
            .values()
            .map(|v| v.applied_version.max(v.released))
            .max()
            .unwrap_or(0),
        standing,
        profiles: values
            .iter()
            .map(|(w, v)| (w.clone(), v.profile()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::assignment::Lifecycle;
    use crate::controller::handoff::{Pending, resolvable, waited_on};
    use crate::heartbeat::{HeartbeatInfo, HeartbeatValue};
    use crate::partition::Partition;
    use crate::records::WorkerRecord;
    use crate::state::State;

    fn w(s: &str) -> WorkerId {
        WorkerId::new(s)
    }

    fn beat(released: u64, protocol: u32, capabilities: &[&str]) -> HeartbeatValue {
        let mut info = HeartbeatInfo::new(State::Stable, released);
        info.released = released;
        HeartbeatValue {
            protocol,
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            ..HeartbeatValue::announce("i", info)
        }
    }

    /// `b` holds `y`, pending on the loser `a` since version 3.
    fn moved_off_a() -> BTreeMap<WorkerId, WorkerRecord> {
        let pending: Pending = [("y".to_owned(), [(w("a"), 3)].into())].into();
        let record = |parts: &[&str], pending: Pending| WorkerRecord {
            version: 3,
            term: 1,
            lifecycle: Lifecycle::Running,
            partitions: parts
                .iter()
                .map(|k| Partition::new([*k], 1).unwrap())
                .collect(),
            pending,
        };
        [
            (w("a"), record(&["x"], Pending::new())),
            (w("b"), record(&["y"], pending)),
        ]
        .into()
    }

    #[test]
    fn a_current_worker_is_relied_on_fully() {
        let values = [(
            w("a"),
            HeartbeatValue::announce("i", HeartbeatInfo::new(State::Stable, 3)),
        )]
        .into();
        let members = members_from(&values);
        assert_eq!(members.standing(&w("a")), FULL);
        assert_eq!(fence(&members, &w("a")), Fence::AfterTimeout);
        assert_eq!(members.released[&w("a")], 3);
        assert_eq!(members.floor, 3);
        // Its release acknowledgement completes the hand-off.
        assert_eq!(resolvable(&moved_off_a(), &members), (1, 1));
    }

    #[test]
    fn a_loser_without_release_acks_is_fenced_at_once_not_believed() {
        // A build before protocols (no fields): says `released: 3`, but cannot be believed.
        let values = [
            (w("a"), beat(3, 0, &[])),
            (
                w("b"),
                HeartbeatValue::announce("j", HeartbeatInfo::new(State::Stable, 3)),
            ),
        ]
        .into();
        let mut members = members_from(&values);
        assert_eq!(members.released[&w("a")], 0, "its ack is ignored");
        assert_eq!(
            members.floor, 3,
            "its applied version still floors versions"
        );
        assert_eq!(
            members.standing(&w("a")).missing(),
            [Capability::ReleaseAck, Capability::LeaseRevocation]
        );
        let records = moved_off_a();
        assert_eq!(resolvable(&records, &members), (0, 1), "the gainer waits");
        assert_eq!(waited_on(&records, &members), [(w("a"), 3)].into());
        assert_eq!(
            fence(&members, &w("a")),
            Fence::Never,
            "no revocation capability: waits for its departure"
        );

        // With revocation but no ack: the lease fence is the way, at once.
        let values = [(w("a"), beat(3, 1, &["leaseRevocation"]))].into();
        members = members_from(&values);
        assert_eq!(fence(&members, &w("a")), Fence::AtOnce);
        assert_eq!(resolvable(&records, &members), (0, 1));
        members.fenced(&w("a"), 3);
        assert_eq!(resolvable(&records, &members), (1, 1), "fenced: handed on");

        // With acks but no revocation: its ack is believed, it is never expelled.
        let values = [(w("a"), beat(3, 1, &["releaseAck", "somethingNew"]))].into();
        members = members_from(&values);
        assert_eq!(fence(&members, &w("a")), Fence::Never);
        assert_eq!(resolvable(&records, &members), (1, 1));
    }

    #[test]
    fn revocation_waits_for_the_timeout_only_for_a_loser_that_can_acknowledge() {
        let since = Instant::now();
        let timeout = Duration::from_secs(30);
        assert_eq!(
            revocation_due(Fence::AfterTimeout, since, timeout),
            Some(since + timeout)
        );
        assert_eq!(revocation_due(Fence::AtOnce, since, timeout), Some(since));
        assert_eq!(revocation_due(Fence::Never, since, timeout), None);
    }

    #[test]
    fn a_worker_of_an_unknown_protocol_is_refused_with_its_reason() {
        let all: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
        let values = [
            (w("a"), beat(9, protocol::PROTOCOL + 1, &all)),
            (
                w("b"),
                HeartbeatValue::announce("j", HeartbeatInfo::new(State::Stable, 3)),
            ),
        ]
        .into();
        let members = members_from(&values);
        let refused: BTreeSet<&WorkerId> = members.refused().map(|(w, _)| w).collect();
        assert_eq!(refused, [&w("a")].into());
        assert_eq!(
            members.standing(&w("a")),
            Standing::Refused(Refusal::ProtocolTooNew {
                protocol: protocol::PROTOCOL + 1,
                max: protocol::PROTOCOL
            })
        );
        assert_eq!(members.released[&w("a")], 0, "nothing it says is believed");
        assert_eq!(members.floor, 9, "its versions only raise the floor");
        assert_eq!(fence(&members, &w("a")), Fence::Never);
        assert!(
            members.released.contains_key(&w("a")),
            "still a live member"
        );
    }
}
