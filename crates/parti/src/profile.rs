//! What a worker announces about itself for placement: its [`Capacity`] and its labels.
//!
//! A worker's [`WorkerProfile`] is set in its configuration (`capacity`, `labels`) or builder
//! ([`ManagerBuilder::profile`](crate::ManagerBuilder::profile)) and announced in its heartbeat.
//! The leader applies both around the strategy, so every strategy respects them:
//!
//! - **Capacity**: a worker of capacity 2.0 is given the load of two workers of capacity 1.0
//!   (it stands for two equal shares in the strategy's input). The strategy's balance bound then
//!   holds relative to capacity.
//! - **Labels**: a partition with a [label](crate::Partition::label) goes only to workers
//!   that have that label. Unlabelled partitions go to workers without labels
//!   ([`UnlabelledPolicy::Dedicated`], the default) or to every worker
//!   ([`UnlabelledPolicy::Shared`]). A label no live worker has *parks* its partitions (no one
//!   holds them) for `assignment.labelSpillGrace`, then *spills* them to where unlabelled
//!   partitions go, until a worker with the label is back.
//!
//! ```
//! use parti::{Capacity, WorkerProfile};
//! let profile = WorkerProfile::new()
//!     .with_capacity(Capacity::new(2.0)?)
//!     .with_label("gpu")?;
//! assert_eq!(profile.capacity().get(), 2.0);
//! assert!(profile.has_label("gpu"));
//! assert!(Capacity::new(0.0).is_err());
//! # Ok::<(), parti::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigViolation, Error, Result};
use crate::partition::{WorkerId, check_label};

/// How much load a worker takes relative to others: `1.0` by default, from `0.01` to `10000`,
/// kept to two decimals (so that equal capacities compare equal and placement needs no
/// floating point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capacity(u32);

impl Capacity {
    /// The capacity of a worker that declares none.
    pub const DEFAULT: Capacity = Capacity(100);
    /// The smallest capacity.
    pub const MIN: f64 = 0.01;
    /// The largest capacity.
    pub const MAX: f64 = 10_000.0;

    /// A capacity, rounded to two decimals.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `value` is not a finite number from [`MIN`](Self::MIN) to
    /// [`MAX`](Self::MAX).
    pub fn new(value: f64) -> Result<Self> {
        Self::checked(value).ok_or_else(|| {
            invalid(
                "capacity",
                format!(
                    "{value} must be a number from {} to {}",
                    Self::MIN,
                    Self::MAX
                ),
            )
        })
    }

    /// `value` as a capacity, or `None` out of range.
    fn checked(value: f64) -> Option<Self> {
        if !(value.is_finite() && (Self::MIN..=Self::MAX).contains(&value)) {
            return None;
        }
        // In range, so the hundredths fit in a u32 (at most 1,000,000).
        Some(Self(((value * 100.0).round() as u32).max(1)))
    }

    /// The capacity as a number.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// In hundredths: `100` for `1.0`.
    pub(crate) fn hundredths(self) -> u32 {
        self.0
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Serialize for Capacity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

impl<'de> Deserialize<'de> for Capacity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let value = f64::deserialize(d)?;
        Self::checked(value).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "capacity {value} is not a number from {} to {}",
                Self::MIN,
                Self::MAX
            ))
        })
    }
}

/// An [`Error::InvalidConfig`] naming one field.
fn invalid(field: &str, reason: String) -> Error {
    Error::InvalidConfig {
        violations: vec![ConfigViolation::new(field, reason)],
    }
}

/// A worker's capacity and labels (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WorkerProfile {
    /// Relative share of the load.
    pub capacity: Capacity,
    /// The labels whose partitions this worker may receive. A worker with labels receives
    /// unlabelled partitions only under [`UnlabelledPolicy::Shared`].
    pub labels: BTreeSet<String>,
}

impl WorkerProfile {
    /// Capacity 1.0, no labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `capacity`.
    #[must_use]
    pub fn with_capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// With one more label.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `label` is not a valid label name
    /// ([`check_label`]), or when the worker would have more than
    /// [`MAX_WORKER_LABELS`](crate::partition::MAX_WORKER_LABELS) labels.
    pub fn with_label(mut self, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        check_label(&label).map_err(|why| invalid("labels", why))?;
        self.labels.insert(label);
        if self.labels.len() > crate::partition::MAX_WORKER_LABELS {
            return Err(invalid("labels", too_many_labels()));
        }
        Ok(self)
    }

    /// The capacity.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Whether the worker has `label`.
    pub fn has_label(&self, label: &str) -> bool {
        self.labels.contains(label)
    }
}

/// Where partitions without a label go (`assignment.unlabelledPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum UnlabelledPolicy {
    /// Only to workers without labels, so labelled workers stay free for their label's work.
    /// When every worker has a label, to all of them.
    #[default]
    Dedicated,
    /// To every worker, labelled or not.
    Shared,
}

impl UnlabelledPolicy {
    /// The name used in configuration: `dedicated` or `shared`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dedicated => "dedicated",
            Self::Shared => "shared",
        }
    }
}

/// Everything the leader applies around the strategy besides the operator's
/// [intents](crate::records::Intents): the workers' profiles, where unlabelled partitions go,
/// and the labels whose parked partitions have spilled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlacementRules {
    /// Each worker's profile; a worker not listed has capacity 1.0 and no labels.
    pub profiles: BTreeMap<WorkerId, WorkerProfile>,
    /// Where unlabelled partitions go.
    pub unlabelled_policy: UnlabelledPolicy,
    /// Labels no worker has whose `labelSpillGrace` ran out: their partitions go where
    /// unlabelled partitions go. A label that a worker has again is ignored here.
    pub spilled: BTreeSet<String>,
}

impl PlacementRules {
    /// No profiles (every worker capacity 1.0, no labels), `dedicated`, nothing spilled.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `profiles`.
    #[must_use]
    pub fn with_profiles(mut self, profiles: BTreeMap<WorkerId, WorkerProfile>) -> Self {
        self.profiles = profiles;
        self
    }

    /// With `policy` for unlabelled partitions.
    #[must_use]
    pub fn with_unlabelled_policy(mut self, policy: UnlabelledPolicy) -> Self {
        self.unlabelled_policy = policy;
        self
    }

    /// With `spilled` labels.
    #[must_use]
    pub fn with_spilled(mut self, spilled: BTreeSet<String>) -> Self {
        self.spilled = spilled;
        self
    }

    /// The labels of `worker` (none when it has no profile).
    pub fn labels_of(&self, worker: &WorkerId) -> Option<&BTreeSet<String>> {
        self.profiles.get(worker).map(|p| &p.labels)
    }
}

/// Why a worker's label set is refused for its size.
pub(crate) fn too_many_labels() -> String {
    format!(
        "a worker may have at most {} labels",
        crate::partition::MAX_WORKER_LABELS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_are_kept_to_two_decimals_and_bounded() {
        assert_eq!(Capacity::new(1.0).unwrap(), Capacity::DEFAULT);
        assert_eq!(Capacity::new(1.004).unwrap(), Capacity::DEFAULT);
        assert_eq!(Capacity::new(2.5).unwrap().hundredths(), 250);
        for bad in [0.0, -1.0, 0.001, 10_001.0, f64::NAN, f64::INFINITY] {
            let err = Capacity::new(bad).unwrap_err();
            assert!(err.to_string().contains("capacity"), "{err}");
        }
        let read: Capacity = serde_json::from_str("2.0").unwrap();
        assert_eq!(read.get(), 2.0);
        assert!(serde_json::from_str::<Capacity>("-3").is_err());
    }

    #[test]
    fn labels_are_checked() {
        assert!(WorkerProfile::new().with_label("gpu").is_ok());
        let err = WorkerProfile::new().with_label("g pu").unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
    }
}
