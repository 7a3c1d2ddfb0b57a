//! What [`WorkerConsumer::health`](super::WorkerConsumer::health) reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The consumer's overall condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConsumerStatus {
    /// No assignment received yet.
    Idle,
    /// Consuming the assigned partitions.
    Running,
    /// The assignment is empty: the consumer exists with a filter that matches nothing.
    Paused,
    /// The message loop or the consumer configuration hit an error and is retrying with
    /// backoff (NATS unreachable, consumer deleted, server restarting).
    Recovering,
    /// [`close`](super::WorkerConsumer::close) was called.
    Closed,
}

/// A snapshot of the consumer's health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerHealth {
    /// Overall condition.
    pub status: ConsumerStatus,
    /// The durable consumer's name, once known.
    pub consumer: Option<String>,
    /// Subjects in the server-side filter.
    pub subjects: usize,
    /// Assigned subjects not in the filter yet because another consumer of a work-queue
    /// stream still holds them (retried with backoff; see the module docs).
    pub waiting_subjects: usize,
    /// Newly gained subjects whose older messages are still being drained (on a work queue:
    /// watched for `ackWait` after the gain, see the module docs).
    pub catching_up: usize,
    /// Messages the handler accepted.
    pub processed: u64,
    /// Messages the handler failed (nak'ed in [`AckMode::Auto`](super::AckMode::Auto)).
    pub failed: u64,
    /// Messages kept from the handler because their partition was not held (see
    /// [`WorkerConsumer::set_held`](super::WorkerConsumer::set_held)); nak'ed for redelivery.
    pub gated: u64,
    /// Consumer configuration changes sent to the server.
    pub updates: u64,
    /// Times the message loop had to reopen its pull subscription after an error.
    pub loop_restarts: u64,
    /// The last error seen, cleared on recovery.
    pub last_error: Option<String>,
}

impl ConsumerHealth {
    /// True when running or paused, with nothing held back.
    pub fn is_healthy(&self) -> bool {
        matches!(
            self.status,
            ConsumerStatus::Running | ConsumerStatus::Paused
        ) && self.waiting_subjects == 0
    }
}

/// Reconciler-owned part of the health.
#[derive(Debug, Default, Clone)]
pub(crate) struct ConfigState {
    pub(crate) consumer: Option<String>,
    pub(crate) subjects: usize,
    pub(crate) waiting: usize,
    pub(crate) catching_up: usize,
    pub(crate) error: Option<String>,
}

/// Shared between the handle, the reconciler, the loop and the drains. Counters are atomics
/// so the per-message path takes no lock.
#[derive(Debug, Default)]
pub(crate) struct HealthCell {
    config: Mutex<ConfigState>,
    loop_error: Mutex<Option<String>>,
    loop_ok: AtomicBool,
    closed: AtomicBool,
    processed: AtomicU64,
    failed: AtomicU64,
    gated: AtomicU64,
    updates: AtomicU64,
    restarts: AtomicU64,
}

impl HealthCell {
    pub(crate) fn processed(&self) {
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn gated(&self) {
        self.gated.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("parti_consumer_gated_total").increment(1);
    }

    pub(crate) fn updated(&self) {
        self.updates.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("parti_consumer_updates_total").increment(1);
    }

    pub(crate) fn loop_ok(&self) {
        if !self.loop_ok.swap(true, Ordering::Relaxed) {
            *lock(&self.loop_error) = None;
            self.publish_gauge();
        }
    }

    pub(crate) fn loop_failed(&self, error: String) {
        self.loop_ok.store(false, Ordering::Relaxed);
        self.restarts.fetch_add(1, Ordering::Relaxed);
        *lock(&self.loop_error) = Some(error);
        self.publish_gauge();
    }

    pub(crate) fn set_config(&self, state: ConfigState) {
        metrics::gauge!("parti_consumer_subjects").set(state.subjects as f64);
        *lock(&self.config) = state;
        self.publish_gauge();
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.publish_gauge();
    }

    fn publish_gauge(&self) {
        let healthy = self.snapshot().is_healthy();
        metrics::gauge!("parti_consumer_healthy").set(if healthy { 1.0 } else { 0.0 });
    }

    pub(crate) fn snapshot(&self) -> ConsumerHealth {
        let config = lock(&self.config).clone();
        let loop_error = lock(&self.loop_error).clone();
        let loop_ok = self.loop_ok.load(Ordering::Relaxed);
        let status = if self.closed.load(Ordering::Relaxed) {
            ConsumerStatus::Closed
        } else if config.consumer.is_none() {
            ConsumerStatus::Idle
        } else if config.error.is_some() || !loop_ok {
            ConsumerStatus::Recovering
        } else if config.subjects == 0 {
            ConsumerStatus::Paused
        } else {
            ConsumerStatus::Running
        };
        ConsumerHealth {
            status,
            consumer: config.consumer,
            subjects: config.subjects,
            waiting_subjects: config.waiting,
            catching_up: config.catching_up,
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            gated: self.gated.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            loop_restarts: self.restarts.load(Ordering::Relaxed),
            last_error: config.error.or(loop_error),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
