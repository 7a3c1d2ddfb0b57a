//! Protocol version and capabilities a worker announces in its heartbeat (rolling upgrades).
//!
//! Every heartbeat carries `protocol` (a number) and `capabilities` (a set of names). The
//! **protocol** changes only on an incompatible change of the coordination protocol: a leader
//! keeps a live worker whose protocol it does not understand (above [`PROTOCOL`] or below
//! [`MIN_PROTOCOL`]) out of the map, with a visible reason ([`Refusal`]). Compatible additions
//! are **capabilities**: a leader relies on a [`Capability`] only for workers that announce it,
//! and falls back to a safe path for the others.
//!
//! A heartbeat written before these fields existed reads as protocol 0 with no capabilities;
//! a capability name this build does not know is kept and ignored, never a decode error.
//!
//! ```
//! use parti::heartbeat::protocol::{self, Capability, MIN_PROTOCOL, PROTOCOL};
//! assert!(MIN_PROTOCOL <= PROTOCOL);
//! assert!(protocol::understood(PROTOCOL).is_ok());
//! assert!(protocol::understood(PROTOCOL + 1).is_err());
//! assert!(protocol::capabilities().contains(Capability::ReleaseAck.as_str()));
//! ```

use std::collections::BTreeSet;
use std::fmt;

/// The protocol version this build speaks (and writes in its heartbeats).
///
/// - `0`: heartbeats without a `protocol` field (builds before it existed). Understood; such
///   a worker announces no capabilities.
/// - `1`: heartbeats announce `protocol` and `capabilities`.
/// - `2`: followers read their commit page (`commit.{page}`,
///   [`CommitPage`](crate::records::CommitPage)) instead of the whole `cluster` record. A
///   leader of protocol 1 writes no pages, so it keeps workers of protocol 2 out of the map;
///   a leader of protocol 2 still writes the whole record, which workers of protocol 0 and 1
///   read.
pub const PROTOCOL: u32 = 2;

/// The lowest protocol a leader of this build understands. Workers below it are refused.
pub const MIN_PROTOCOL: u32 = 0;

/// A behaviour of a worker that a leader relies on only when the worker announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// `releaseAck`: the heartbeat's `released` says that the worker finished releasing a
    /// hand-off (consumer gated, in-flight calls done, hooks returned). A leader waits for it
    /// before letting the gainer hold. Without it, the leader revokes the loser's lease at once
    /// and lets the gainer hold one heartbeat TTL later (the lease fence).
    ReleaseAck,
    /// `leaseRevocation`: heartbeats are renewed revision-checked, so that a leader's
    /// expulsion marker ends the worker's lease within one heartbeat TTL. Without it a leader
    /// never counts on a revocation: a partition the worker lost stays pending until the worker
    /// releases it (when it acknowledges releases) or departs.
    LeaseRevocation,
}

impl Capability {
    /// Every capability this build knows and has.
    pub const ALL: [Self; 2] = [Self::ReleaseAck, Self::LeaseRevocation];

    /// The name written in heartbeats.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReleaseAck => "releaseAck",
            Self::LeaseRevocation => "leaseRevocation",
        }
    }

    /// The capability of a name; `None` for a name this build does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The capability names this build announces in its heartbeats.
pub fn capabilities() -> BTreeSet<String> {
    Capability::ALL
        .into_iter()
        .map(|c| c.as_str().to_owned())
        .collect()
}

/// Why a leader keeps a live worker out of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The worker speaks a newer protocol than this leader understands.
    ProtocolTooNew {
        /// The worker's protocol.
        protocol: u32,
        /// The highest this leader understands.
        max: u32,
    },
    /// The worker speaks an older protocol than this leader still understands.
    ProtocolTooOld {
        /// The worker's protocol.
        protocol: u32,
        /// The lowest this leader understands.
        min: u32,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProtocolTooNew { protocol, max } => write!(
                f,
                "protocol {protocol} is newer than this leader understands (up to {max})"
            ),
            Self::ProtocolTooOld { protocol, min } => write!(
                f,
                "protocol {protocol} is older than this leader understands (from {min})"
            ),
        }
    }
}

/// Whether a leader of this build understands `protocol`.
pub fn understood(protocol: u32) -> Result<(), Refusal> {
    if protocol > PROTOCOL {
        Err(Refusal::ProtocolTooNew {
            protocol,
            max: PROTOCOL,
        })
    } else if !(MIN_PROTOCOL..=PROTOCOL).contains(&protocol) {
        // Below the range (written as a range: `MIN_PROTOCOL` may be 0 today).
        Err(Refusal::ProtocolTooOld {
            protocol,
            min: MIN_PROTOCOL,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(Capability::from_name(c.as_str()), Some(c));
        }
        assert_eq!(Capability::from_name("teleport"), None);
        assert_eq!(capabilities().len(), Capability::ALL.len());
    }

    #[test]
    fn only_known_protocols_are_understood() {
        assert_eq!(understood(0), Ok(()));
        assert_eq!(understood(PROTOCOL), Ok(()));
        let refusal = understood(PROTOCOL + 1).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::ProtocolTooNew {
                protocol: PROTOCOL + 1,
                max: PROTOCOL
            }
        );
        assert!(refusal.to_string().contains("newer"), "{refusal}");
    }
}
