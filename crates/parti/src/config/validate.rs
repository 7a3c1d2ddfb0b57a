//! The rules of SPEC §3, checked all at once.

use std::time::Duration;

use super::Config;
use super::duration::format;
use crate::error::{ConfigViolation, Error};

/// NATS refuses a stream `max_age` below this (nats-server: "max age needs to be >= 100ms").
const MIN_BUCKET_MAX_AGE: Duration = Duration::from_millis(100);

/// Replicas a JetStream stream may have.
const REPLICAS: std::ops::RangeInclusive<usize> = 1..=5;

/// True for `[A-Za-z0-9_-]+`: valid as a NATS KV bucket name and inside a KV key.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Collects violations; each rule is one `check`.
#[derive(Default)]
struct Violations(Vec<ConfigViolation>);

impl Violations {
    fn check(&mut self, ok: bool, field: &str, reason: impl FnOnce() -> String) {
        if !ok {
            self.0.push(ConfigViolation::new(field, reason()));
        }
    }

    fn positive(&mut self, d: Duration, field: &str) {
        self.check(!d.is_zero(), field, || "must be greater than 0".to_owned());
    }

    fn bucket_max_age(&mut self, d: Duration, field: &str) {
        self.check(d >= MIN_BUCKET_MAX_AGE, field, || {
            format!(
                "is {}, below NATS's minimum bucket max_age of {}",
                format(d),
                format(MIN_BUCKET_MAX_AGE)
            )
        });
    }
}

impl Config {
    /// Checks every rule of the configuration table and reports **all** violations, each with
    /// its camelCase field path (e.g. `assignment.minRebalanceInterval`).
    ///
    /// ```
    /// let mut config = parti::Config::default();
    /// config.heartbeat_ttl = std::time::Duration::from_secs(1);
    /// let err = config.validate().unwrap_err();
    /// assert!(err.to_string().contains("heartbeatTtl"), "{err}");
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        let violations = self.violations();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { violations })
        }
    }

    fn violations(&self) -> Vec<ConfigViolation> {
        let mut v = Violations::default();
        let hb = self.heartbeat_interval;

        v.check(is_name(&self.worker_id_prefix), "workerIdPrefix", || {
            format!("{:?} must match [A-Za-z0-9_-]+", self.worker_id_prefix)
        });
        v.check(
            self.worker_id_min <= self.worker_id_max,
            "workerIdMin",
            || {
                format!(
                    "{} must not exceed workerIdMax ({})",
                    self.worker_id_min, self.worker_id_max
                )
            },
        );

        v.check(
            self.worker_id_ttl >= hb.saturating_mul(3),
            "workerIdTtl",
            || {
                format!(
                    "{} must be at least 3 × heartbeatInterval ({})",
                    format(self.worker_id_ttl),
                    format(hb.saturating_mul(3))
                )
            },
        );
        v.check(
            self.worker_id_ttl >= self.heartbeat_ttl,
            "workerIdTtl",
            || {
                format!(
                    "{} must be at least heartbeatTtl ({})",
                    format(self.worker_id_ttl),
                    format(self.heartbeat_ttl)
                )
            },
        );
        // workerIdTtl ≥ heartbeatTtl ≥ NATS's floor, so its own floor needs no check.

        v.positive(hb, "heartbeatInterval");
        v.check(
            self.heartbeat_ttl >= hb.saturating_mul(2),
            "heartbeatTtl",
            || {
                format!(
                    "{} must be at least 2 × heartbeatInterval ({})",
                    format(self.heartbeat_ttl),
                    format(hb.saturating_mul(2))
                )
            },
        );
        v.bucket_max_age(self.heartbeat_ttl, "heartbeatTtl");

        v.check(
            self.cold_start_window >= self.planned_scale_window,
            "coldStartWindow",
            || {
                format!(
                    "{} must be at least plannedScaleWindow ({})",
                    format(self.cold_start_window),
                    format(self.planned_scale_window)
                )
            },
        );
        // plannedScaleWindow ≥ 0 and coldStartQuiet ≥ 0 hold by type (a zero quiet period
        // turns the stretching off). A derived coldStartMaxWindow meets both rules below.
        if let Some(max) = self.cold_start_max_window {
            v.check(max >= self.cold_start_window, "coldStartMaxWindow", || {
                format!(
                    "{} must be at least coldStartWindow ({}), the shortest cold-start window",
                    format(max),
                    format(self.cold_start_window)
                )
            });
            v.check(
                self.startup_timeout.is_zero() || max < self.startup_timeout,
                "coldStartMaxWindow",
                || {
                    format!(
                        "{} must be shorter than startupTimeout ({}), or the first workers of a \
                         long cold start time out before it ends",
                        format(max),
                        format(self.startup_timeout)
                    )
                },
            );
        }

        // A derived grace period (1.5 × interval) is within heartbeatTtl whenever the
        // heartbeatTtl rule holds, so only an explicit one is checked here.
        if let Some(grace) = self.emergency_grace_period {
            v.check(grace <= self.heartbeat_ttl, "emergencyGracePeriod", || {
                format!(
                    "{} must not exceed heartbeatTtl ({})",
                    format(grace),
                    format(self.heartbeat_ttl)
                )
            });
        }

        let ratio = self.restart_detection_ratio;
        v.check(ratio > 0.0 && ratio <= 1.0, "restartDetectionRatio", || {
            format!("{ratio} must be in (0, 1]")
        });
        v.check(self.restart_min_workers >= 1, "restartMinWorkers", || {
            "must be at least 1".to_owned()
        });

        v.check(self.election_ttl > hb, "electionTtl", || {
            format!(
                "{} must be greater than heartbeatInterval ({})",
                format(self.election_ttl),
                format(hb)
            )
        });
        v.bucket_max_age(self.election_ttl, "electionTtl");

        v.positive(self.startup_timeout, "startupTimeout");
        // `start()` returns once Stable, and a cold start is not Stable before its window
        // closes: a shorter bound could never be met.
        v.check(
            self.startup_timeout.is_zero() || self.startup_timeout > self.cold_start_window,
            "startupTimeout",
            || {
                format!(
                    "must exceed coldStartWindow ({}), or a cold start can never finish in time",
                    format(self.cold_start_window)
                )
            },
        );
        v.check(
            self.start_jitter.is_zero() || self.start_jitter < self.startup_timeout,
            "startJitter",
            || {
                format!(
                    "{} must be shorter than startupTimeout ({}), which it counts towards",
                    format(self.start_jitter),
                    format(self.startup_timeout)
                )
            },
        );
        v.check(
            self.assignment_debounce < self.heartbeat_ttl,
            "assignmentDebounce",
            || {
                format!(
                    "{} must be shorter than heartbeatTtl ({})",
                    format(self.assignment_debounce),
                    format(self.heartbeat_ttl)
                )
            },
        );
        v.check(
            self.consumer_api_rate.is_finite() && self.consumer_api_rate >= 0.0,
            "consumerApiRate",
            || {
                format!(
                    "{} must be a number of calls per second, at least 0 (0: no limit)",
                    self.consumer_api_rate
                )
            },
        );
        v.positive(self.shutdown_timeout, "shutdownTimeout");
        v.positive(self.operation_timeout, "operationTimeout");
        v.positive(self.handoff_timeout, "handoffTimeout");

        let cooldown = self.assignment.min_rebalance_interval;
        v.positive(cooldown, "assignment.minRebalanceInterval");
        v.check(
            cooldown <= self.planned_scale_window,
            "assignment.minRebalanceInterval",
            || {
                format!(
                    "{} must not exceed plannedScaleWindow ({})",
                    format(cooldown),
                    format(self.planned_scale_window)
                )
            },
        );
        let threshold = self.assignment.min_rebalance_threshold;
        v.check(
            (0.0..1.0).contains(&threshold),
            "assignment.minRebalanceThreshold",
            || format!("{threshold} must be in [0, 1)"),
        );

        let grace = self.assignment.label_spill_grace;
        v.positive(grace, "assignment.labelSpillGrace");

        self.check_buckets(&mut v);
        self.check_degraded(&mut v);
        if let Err(Error::InvalidConfig { violations }) = self.profile() {
            v.0.extend(violations);
        }
        v.0
    }

    fn check_buckets(&self, v: &mut Violations) {
        let names = self.kv_buckets.names();
        for (i, (field, name)) in names.iter().enumerate() {
            let path = format!("kvBuckets.{field}");
            v.check(is_name(name), &path, || {
                format!("{name:?} is not a valid bucket name ([A-Za-z0-9_-]+)")
            });
            if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
                v.check(false, &path, || {
                    format!("{name:?} is already the kvBuckets.{other} bucket")
                });
            }
        }
        let replicas = self.kv_buckets.replicas;
        v.check(REPLICAS.contains(&replicas), "kvBuckets.replicas", || {
            format!("{replicas} must be in 1..=5")
        });
    }

    fn check_degraded(&self, v: &mut Violations) {
        let b = &self.degraded_behavior;
        v.positive(b.enter_threshold, "degradedBehavior.enterThreshold");
        v.positive(b.exit_threshold, "degradedBehavior.exitThreshold");
        v.check(
            b.kv_error_threshold > 0,
            "degradedBehavior.kvErrorThreshold",
            || "must be greater than 0".to_owned(),
        );
        v.positive(b.kv_error_window, "degradedBehavior.kvErrorWindow");
        // recoveryGracePeriod may be 0: declare crashes as soon as the leader recovers.

        let alert = &self.degraded_alert;
        let mut previous: Option<(&str, Duration)> = None;
        for (level, threshold) in alert.thresholds() {
            if threshold.is_zero() {
                continue; // disabled level
            }
            if let Some((lower, at)) = previous {
                v.check(
                    threshold > at,
                    &format!("degradedAlert.{level}Threshold"),
                    || {
                        format!(
                            "{} must be greater than {lower}Threshold ({}); enabled levels ascend",
                            format(threshold),
                            format(at)
                        )
                    },
                );
            }
            previous = Some((level, threshold));
        }
        v.positive(alert.alert_interval, "degradedAlert.alertInterval");
    }
}
