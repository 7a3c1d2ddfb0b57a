//! Tests of the whole configuration: defaults, YAML, validation rules, presets, environment.

mod env;
mod go_compat;
mod props;
mod rules;
mod yaml;

use std::time::Duration;

use super::*;
use crate::error::{ConfigViolation, Error};

pub(super) fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

pub(super) fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The violations of an `InvalidConfig` error; panics (test failure) on anything else.
pub(super) fn violations<T: std::fmt::Debug>(result: Result<T, Error>) -> Vec<ConfigViolation> {
    match result {
        Err(Error::InvalidConfig { violations }) => violations,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

pub(super) fn fields(violations: &[ConfigViolation]) -> Vec<&str> {
    violations.iter().map(|v| v.field.as_str()).collect()
}

/// The single violation of parsing `yaml`.
pub(super) fn parse_error(yaml: &str) -> ConfigViolation {
    let mut v = violations(Config::from_yaml_str(yaml));
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

pub(super) const EVERY_KEY: &str = r#"
workerIdPrefix: ingest_01
workerIdMin: 5
workerIdMax: 500
workerIdTtl: 1m
heartbeatInterval: 500ms
heartbeatTtl: 1s500ms
coldStartWindow: 1m30s
coldStartQuiet: 10s
coldStartMaxWindow: 1m45s
plannedScaleWindow: 20s
emergencyGracePeriod: 750ms
restartDetectionRatio: 0.75
restartMinWorkers: 4
electionTtl: 3s
startupTimeout: 2m
shutdownTimeout: 5s
operationTimeout: 2s
assignment:
  minRebalanceInterval: 15s
  minRebalanceThreshold: 0.3
kvBuckets:
  stableId: a-ids
  election: a-leader
  heartbeat: a-beats
  assignment: a-map
  replicas: 3
degradedBehavior:
  enterThreshold: 20s
  exitThreshold: 7s
  kvErrorThreshold: 8
  kvErrorWindow: 45s
  recoveryGracePeriod: 12s
degradedAlert:
  infoThreshold: 10s
  warnThreshold: 0s
  errorThreshold: 3m
  criticalThreshold: 1h
  alertInterval: 30s
"#;

#[test]
fn defaults_match_the_table() {
    let c = Config::default();
    assert_eq!(c.worker_id_prefix, "worker");
    assert_eq!((c.worker_id_min, c.worker_id_max), (0, 99));
    assert_eq!(c.worker_id_ttl, s(30));
    assert_eq!(c.heartbeat_interval, s(2));
    assert_eq!(c.heartbeat_ttl, s(6));
    assert_eq!(c.cold_start_window, s(30));
    assert_eq!(c.cold_start_quiet, s(5));
    assert_eq!(c.cold_start_max_window, None);
    assert_eq!(
        c.cold_start_max_window(),
        s(45),
        "3 × coldStartWindow, at most halfway to startupTimeout"
    );
    assert_eq!(c.planned_scale_window, s(10));
    assert_eq!(c.emergency_grace_period, None);
    assert_eq!(c.emergency_grace_period(), s(3), "1.5 × heartbeatInterval");
    assert_eq!(c.restart_detection_ratio, 0.5);
    assert_eq!(c.restart_min_workers, 10);
    assert_eq!(c.election_ttl, s(10));
    // 60 s rather than the table's 30 s: it must exceed the 30 s cold-start window.
    assert_eq!(c.startup_timeout, s(60));
    assert_eq!(c.shutdown_timeout, s(10));
    assert_eq!(c.operation_timeout, s(5));
    assert_eq!(c.assignment.min_rebalance_interval, s(10));
    assert_eq!(c.assignment.min_rebalance_threshold, 0.15);
    assert_eq!(c.kv_buckets.stable_id, "parti-stableid");
    assert_eq!(c.kv_buckets.election, "parti-election");
    assert_eq!(c.kv_buckets.heartbeat, "parti-heartbeat");
    assert_eq!(c.kv_buckets.assignment, "parti-assignment");
    assert_eq!(c.kv_buckets.replicas, 1);
    let b = c.degraded_behavior;
    assert_eq!(
        (b.enter_threshold, b.exit_threshold, b.kv_error_threshold),
        (s(10), s(5), 5)
    );
    assert_eq!((b.kv_error_window, b.recovery_grace_period), (s(30), s(15)));
    let a = c.degraded_alert;
    assert_eq!(
        [
            a.info_threshold,
            a.warn_threshold,
            a.error_threshold,
            a.critical_threshold
        ],
        [s(30), s(120), s(300), s(600)]
    );
    assert_eq!(a.alert_interval, s(60));
    c.validate().expect("the defaults are valid");
}

#[test]
fn empty_document_is_the_default() {
    for yaml in ["", "\n", "# nothing here\n", "---\n"] {
        assert_eq!(Config::from_yaml_str(yaml).expect(yaml), Config::default());
    }
    assert_eq!(Config::from_yaml_str("{}").expect("{}"), Config::default());
}

#[test]
fn fast_for_tests_is_valid_and_fast() {
    let c = Config::fast_for_tests();
    c.validate().expect("valid");
    assert!(c.heartbeat_interval >= ms(100) && c.heartbeat_interval <= ms(200));
    assert_eq!(c.heartbeat_ttl, c.heartbeat_interval * 3);
    assert!(c.cold_start_window <= s(1) && c.planned_scale_window <= ms(500));
    assert!(c.cold_start_quiet < c.cold_start_window);
    assert!(c.cold_start_max_window() > c.cold_start_window);
    assert!(c.election_ttl <= s(1));
    assert!(c.operation_timeout <= s(1));
    assert!(c.degraded_behavior.enter_threshold <= s(1));
    assert_eq!(
        Config::from_yaml_str(&c.to_yaml_string().expect("serialises")).expect("reads back"),
        c
    );
}

#[test]
fn derived_intervals() {
    let mut c = Config::default();
    assert_eq!(
        c.election_renew_interval(),
        Duration::from_millis(3333) + Duration::from_nanos(333_333)
    );
    assert_eq!(c.stable_id_renew_interval(), s(10));
    c.heartbeat_interval = ms(500);
    assert_eq!(c.emergency_grace_period(), ms(750));
    c.emergency_grace_period = Some(ms(100));
    assert_eq!(c.emergency_grace_period(), ms(100));
}

#[test]
fn derived_cold_start_max_window() {
    let mut c = Config::default();
    // Halfway from the 30 s window to the 60 s startup timeout.
    assert_eq!(c.cold_start_max_window(), s(45));
    // 3 × the window once the startup timeout leaves room for it.
    c.startup_timeout = s(600);
    assert_eq!(c.cold_start_max_window(), s(90));
    // Never below the window, whatever the (invalid) startup timeout.
    c.startup_timeout = s(10);
    assert_eq!(c.cold_start_max_window(), s(30));
    c.startup_timeout = Duration::ZERO;
    assert_eq!(c.cold_start_max_window(), s(30));
    // No overflow on absurd durations.
    c.cold_start_window = Duration::MAX;
    c.startup_timeout = Duration::MAX;
    assert_eq!(c.cold_start_max_window(), Duration::MAX);
    // An explicit one is taken as it is.
    c.cold_start_max_window = Some(s(1));
    assert_eq!(c.cold_start_max_window(), s(1));
    // The derived value always passes validation.
    for (window, startup) in [(1, 2), (1, 10), (30, 31), (30, 60), (30, 600)] {
        let c = Config {
            cold_start_window: s(window),
            startup_timeout: s(startup),
            ..Config::default()
        };
        let max = c.cold_start_max_window();
        assert!(
            max >= c.cold_start_window && max < c.startup_timeout,
            "{max:?}"
        );
    }
}
