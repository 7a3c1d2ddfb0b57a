//! [`WorkerId`], on its own so that every layer (errors included) can name a worker without
//! depending on the partition model.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A worker's stable ID, e.g. `worker-3`.
///
/// ```
/// use parti::WorkerId;
/// let id = WorkerId::new("worker-3");
/// assert_eq!(id.as_str(), "worker-3");
/// assert_eq!(id.to_string(), "worker-3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(String);

impl WorkerId {
    /// Wraps a string as a worker ID.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for WorkerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for WorkerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for WorkerId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for WorkerId {
    fn from(s: String) -> Self {
        Self(s)
    }
}
