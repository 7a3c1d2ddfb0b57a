//! Partitions (units of work) and worker IDs.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::{Error, Result};
pub use crate::worker_id::WorkerId;

/// The weight used for a partition whose weight is `0`.
pub const DEFAULT_WEIGHT: u64 = 100;

/// A unit of work: ordered keys and a relative weight.
///
/// Keys are non-empty and contain no `.`, `*`, `>` or whitespace, so that
/// [`subject_key`](Self::subject_key) is always a valid NATS subject fragment.
///
/// ```
/// use parti::Partition;
///
/// let p = Partition::new(["tenant-a", "sensor-7"], 250)?;
/// assert_eq!(p.subject_key(), "tenant-a.sensor-7");
/// assert_eq!(p.id(), "tenant-a-sensor-7");
/// assert_eq!(p.effective_weight(), 250);
/// assert_eq!(Partition::new(["x"], 0)?.effective_weight(), parti::partition::DEFAULT_WEIGHT);
/// assert!(Partition::new(["bad.key"], 1).is_err());
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPartition", into = "RawPartition")]
pub struct Partition {
    /// Shared: partitions are cloned into every map a strategy builds, and a clone must not
    /// copy the strings.
    keys: Arc<[String]>,
    weight: u64,
    /// The [label](Self::label) workers must have to receive this partition. Shared for the
    /// same reason as the keys.
    label: Option<Arc<str>>,
    /// [`hash_with_seed(0)`](Self::hash_with_seed), computed once: checks over large maps
    /// sort partitions by it without reading their keys, which live behind a pointer (a cache
    /// miss or two per partition on a map of a million).
    hash: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    keys: Vec<String>,
    #[serde(default)]
    weight: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

impl TryFrom<RawPartition> for Partition {
    type Error = Error;
    fn try_from(raw: RawPartition) -> Result<Self> {
        let partition = Partition::new(raw.keys, raw.weight)?;
        match raw.label {
            Some(label) => partition.with_label(label),
            None => Ok(partition),
        }
    }
}

impl From<Partition> for RawPartition {
    fn from(p: Partition) -> Self {
        RawPartition {
            keys: p.keys.to_vec(),
            weight: p.weight,
            label: p.label.map(|l| l.to_string()),
        }
    }
}

impl Partition {
    /// Creates a partition, validating its keys.
    pub fn new<I, S>(keys: I, weight: u64) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let invalid = |reason: String| Error::InvalidPartition {
            partition: keys.join("."),
            reason,
        };
        if keys.is_empty() {
            return Err(invalid("a partition needs at least one key".into()));
        }
        for key in &keys {
            if key.is_empty() {
                return Err(invalid("keys must not be empty".into()));
            }
            if let Some(c) = key
                .chars()
                .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace())
            {
                return Err(invalid(format!(
                    "key {key:?} contains forbidden character {c:?}"
                )));
            }
        }
        let hash = hash_keys(&keys, 0);
        Ok(Self {
            keys: keys.into(),
            weight,
            label: None,
            hash,
        })
    }

    /// Same keys and weight, placed only on workers that have `label` (see
    /// [`profile`](crate::profile)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPartition`] when the label is not a valid label name (see
    /// [`check_label`]).
    pub fn with_label(mut self, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        check_label(&label).map_err(|reason| Error::InvalidPartition {
            partition: self.subject_key(),
            reason,
        })?;
        self.label = Some(label.into());
        Ok(self)
    }

    /// Same keys and weight, without a label.
    #[must_use]
    pub fn without_label(mut self) -> Self {
        self.label = None;
        self
    }

    /// The label a worker must have to receive this partition, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The keys, in order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The weight as given (`0` means "default").
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// The weight used for balancing: the given weight, or [`DEFAULT_WEIGHT`] when it is `0`.
    pub fn effective_weight(&self) -> u64 {
        if self.weight == 0 {
            DEFAULT_WEIGHT
        } else {
            self.weight
        }
    }

    /// The keys joined with `.`: the fragment used in NATS subjects.
    pub fn subject_key(&self) -> String {
        self.keys.join(".")
    }

    /// The keys joined with `-`: a readable identifier.
    pub fn id(&self) -> String {
        self.keys.join("-")
    }

    /// A stable 64-bit hash of the keys (xxh3, chained over the keys, starting from `seed`).
    ///
    /// It does not depend on the weight, so re-weighting a partition does not move it on a ring.
    pub fn hash_with_seed(&self, seed: u64) -> u64 {
        if seed == 0 {
            return self.hash;
        }
        hash_keys(&self.keys, seed)
    }

    /// Same keys, different weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u64) -> Self {
        self.weight = weight;
        self
    }

    /// True when `other` has the same keys (a duplicate, whatever the weights).
    pub fn same_keys(&self, other: &Partition) -> bool {
        self.keys == other.keys
    }
}

/// [`Partition::hash_with_seed`] of `keys`.
fn hash_keys(keys: &[String], seed: u64) -> u64 {
    keys.iter().fold(seed, |h, key| {
        // The key length is mixed in so that ["ab","c"] and ["a","bc"] differ.
        xxh3_64_with_seed(key.as_bytes(), h ^ (key.len() as u64).rotate_left(32))
    })
}

impl fmt::Debug for Partition {
    /// The fields a partition is made of (not the cached hash).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("keys", &self.keys)
            .field("weight", &self.weight)
            .field("label", &self.label)
            .finish()
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject_key())
    }
}

/// The longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// The most labels one worker may have (as in Go Parti v2).
pub const MAX_WORKER_LABELS: usize = 16;

/// Checks a label name (of a partition or a worker): 1 to [`MAX_LABEL_LEN`] bytes of UTF-8
/// without whitespace, control characters or commas (a comma separates labels in
/// `PARTI_LABELS`). Every non-empty label Go Parti v2 accepts is valid here (it also refuses
/// `.`, which is allowed here). Returns why not.
///
/// ```
/// use parti::partition::check_label;
/// assert!(check_label("gpu").is_ok());
/// assert!(check_label("zone:eu-west/1").is_ok());
/// assert!(check_label("région=ouest").is_ok());
/// assert!(check_label("has space").is_err());
/// assert!(check_label("a,b").is_err());
/// assert!(check_label("").is_err());
/// ```
pub fn check_label(label: &str) -> std::result::Result<(), String> {
    if label.is_empty() {
        return Err("a label must not be empty".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label {label:?} is longer than {MAX_LABEL_LEN} bytes"
        ));
    }
    match label
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == ',')
    {
        Some(c) => Err(format!(
            "label {label:?} contains {c:?} (not allowed: whitespace, control characters, commas)"
        )),
        None => Ok(()),
    }
}

/// Checks that no two partitions have the same keys; the error names the duplicate.
///
/// ```
/// use parti::{Partition, partition::check_unique};
/// let a = Partition::new(["a"], 1)?;
/// let err = check_unique(&[a.clone(), a.with_weight(5)]).unwrap_err();
/// assert!(err.to_string().contains("duplicate"));
/// # Ok::<(), parti::Error>(())
/// ```
pub fn check_unique(partitions: &[Partition]) -> Result<()> {
    let mut seen: HashSet<&[String]> = HashSet::with_capacity(partitions.len());
    for p in partitions {
        if !seen.insert(p.keys()) {
            return Err(Error::InvalidPartition {
                partition: p.subject_key(),
                reason: "duplicate partition keys".into(),
            });
        }
    }
    Ok(())
}

/// A fleet for the benchmarks at scale: workers `worker-{i}` and equally weighted partitions
/// `p{i}`.
#[cfg(test)]
pub(crate) fn bench_fleet(workers: usize, partitions: usize) -> (Vec<WorkerId>, Vec<Partition>) {
    let workers = (0..workers)
        .map(|i| WorkerId::new(format!("worker-{i}")))
        .collect();
    let partitions = (0..partitions)
        .filter_map(|i| Partition::new([format!("p{i}")], 100).ok())
        .collect();
    (workers, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_hash_is_the_hash_of_the_keys_whatever_the_path() {
        let p = Partition::new(["tenant-a", "sensor-7"], 3).unwrap();
        let expected = hash_keys(&["tenant-a".to_owned(), "sensor-7".to_owned()], 0);
        let json = serde_json::to_string(&p).unwrap();
        let decoded: Partition = serde_json::from_str(&json).unwrap();
        let labelled = p.clone().with_label("gpu").unwrap();
        for q in [
            &p,
            &decoded,
            &p.clone().with_weight(9),
            &labelled,
            &labelled.clone().without_label(),
        ] {
            assert_eq!(q.hash_with_seed(0), expected, "{q:?}");
        }
        assert_ne!(p.hash_with_seed(1), expected, "other seeds are computed");
        assert_ne!(
            Partition::new(["tenant-a", "sensor-8"], 3)
                .unwrap()
                .hash_with_seed(0),
            expected
        );
    }

    #[test]
    fn rejects_bad_keys() {
        for keys in [
            vec![],
            vec![""],
            vec!["a b"],
            vec!["a*"],
            vec!["a>"],
            vec!["a.b"],
            vec!["a\t"],
        ] {
            assert!(
                matches!(
                    Partition::new(keys.clone(), 1),
                    Err(Error::InvalidPartition { .. })
                ),
                "{keys:?} must be rejected"
            );
        }
        assert!(Partition::new(["a", "b-c_d"], 1).is_ok());
    }

    #[test]
    fn hash_is_stable_seeded_and_weight_independent() {
        let p = Partition::new(["a", "b"], 1).unwrap();
        assert_eq!(
            p.hash_with_seed(7),
            p.clone().with_weight(99).hash_with_seed(7)
        );
        assert_ne!(p.hash_with_seed(7), p.hash_with_seed(8));
        let split = Partition::new(["ab", "c"], 1).unwrap();
        let other = Partition::new(["a", "bc"], 1).unwrap();
        assert_ne!(split.hash_with_seed(0), other.hash_with_seed(0));
    }

    #[test]
    fn orders_by_keys() {
        let mut v = [
            Partition::new(["b"], 1).unwrap(),
            Partition::new(["a", "z"], 1).unwrap(),
            Partition::new(["a"], 9).unwrap(),
        ];
        v.sort();
        let ids: Vec<_> = v.iter().map(Partition::id).collect();
        assert_eq!(ids, ["a", "a-z", "b"]);
    }

    #[test]
    fn serde_validates() {
        let ok: Partition = serde_json::from_str(r#"{"keys":["a","b"],"weight":3}"#).unwrap();
        assert_eq!(ok.subject_key(), "a.b");
        let default_weight: Partition = serde_json::from_str(r#"{"keys":["a"]}"#).unwrap();
        assert_eq!(default_weight.effective_weight(), DEFAULT_WEIGHT);
        assert!(serde_json::from_str::<Partition>(r#"{"keys":["a.b"]}"#).is_err());
        assert!(serde_json::from_str::<Partition>(r#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn duplicates_are_named() {
        let a = Partition::new(["x", "y"], 1).unwrap();
        let b = Partition::new(["z"], 1).unwrap();
        assert!(check_unique(&[a.clone(), b.clone()]).is_ok());
        let err = check_unique(&[a.clone(), b, a.with_weight(3)]).unwrap_err();
        assert!(err.to_string().contains("x.y"), "{err}");
    }
}
