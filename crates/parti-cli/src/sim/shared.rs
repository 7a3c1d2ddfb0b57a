//! What the driver, the observer, the event listeners and the live view share, with the records
//! kept in it ([`Publish`], [`Latest`]). A leaf of `sim`: depends on no other module of it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use parti_testkit::checker::VersionRecord;
use serde::Serialize;
use tokio::time::Instant;

/// One publish as the observer saw it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Publish {
    /// The committed assignment version.
    pub(crate) version: u64,
    /// The leader term it was published under.
    pub(crate) term: u64,
    /// Why the leader published it.
    pub(crate) reason: String,
    /// When it was seen, since the start of the run.
    pub(crate) at_ms: u64,
    /// Workers in the map.
    pub(crate) workers: usize,
    /// Partitions whose owner changed since the previous observed map (`None` when there is
    /// no previous map to compare with).
    pub(crate) moved: Option<u64>,
    /// The fewest partitions that had to move to reach the new map's load per worker.
    pub(crate) minimum: Option<u64>,
}

/// The latest commit, for the live view.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latest {
    /// The committed assignment version.
    pub(crate) version: u64,
    /// The leader term it was published under.
    pub(crate) term: u64,
    /// The cluster phase it records.
    pub(crate) phase: String,
    /// Why the leader published it.
    pub(crate) reason: String,
}

/// Shared state; every lock is held only for a quick read or write, never across an await.
#[derive(Debug)]
pub(crate) struct Shared {
    start: Instant,
    phase: Mutex<String>,
    violations: Mutex<Vec<String>>,
    publishes: Mutex<Vec<Publish>>,
    unobserved: Mutex<u64>,
    /// Every committed version the observer saw, for the checker.
    versions: Mutex<Vec<VersionRecord>>,
    latest: Mutex<Latest>,
    /// Leader term → the simulated worker (by start number) that led under it.
    terms: Mutex<BTreeMap<u64, usize>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            phase: Mutex::new("starting".into()),
            violations: Mutex::default(),
            publishes: Mutex::default(),
            unobserved: Mutex::default(),
            versions: Mutex::default(),
            latest: Mutex::default(),
            terms: Mutex::default(),
        }
    }

    /// Time since the run started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        millis(self.elapsed())
    }

    pub(crate) fn set_phase(&self, phase: impl Into<String>) {
        *lock(&self.phase) = phase.into();
    }

    pub(crate) fn phase(&self) -> String {
        lock(&self.phase).clone()
    }

    /// An invariant failed.
    pub(crate) fn violate(&self, what: impl Into<String>) {
        let what = format!("[{:.1}s] {}", self.elapsed().as_secs_f64(), what.into());
        tracing::error!("invariant violated: {what}");
        lock(&self.violations).push(what);
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    pub(crate) fn publish(&self, mut publish: Publish) {
        publish.at_ms = self.elapsed_ms();
        lock(&self.publishes).push(publish);
    }

    pub(crate) fn publishes(&self) -> Vec<Publish> {
        lock(&self.publishes).clone()
    }

    /// Publishes that happened while the observer's watch was reconnecting.
    pub(crate) fn unobserved(&self, count: u64) {
        *lock(&self.unobserved) += count;
    }

    pub(crate) fn unobserved_count(&self) -> u64 {
        *lock(&self.unobserved)
    }

    /// The observer saw a committed version.
    pub(crate) fn version(&self, record: VersionRecord) {
        lock(&self.versions).push(record);
    }

    /// Every committed version seen so far.
    pub(crate) fn versions(&self) -> Vec<VersionRecord> {
        lock(&self.versions).clone()
    }

    pub(crate) fn set_latest(&self, latest: Latest) {
        *lock(&self.latest) = latest;
    }

    pub(crate) fn latest(&self) -> Latest {
        lock(&self.latest).clone()
    }

    /// Worker `n` reported leading under `term`: no other worker may lead under the same term.
    pub(crate) fn leader_term(&self, term: u64, n: usize) {
        let previous = *lock(&self.terms).entry(term).or_insert(n);
        if previous != n {
            self.violate(format!(
                "two leaders in term {term}: workers #{previous} and #{n}"
            ));
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
