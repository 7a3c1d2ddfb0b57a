//! `PARTI_…` environment overrides.

use std::time::Duration;

use super::*;

#[test]
fn top_level_and_nested_fields() {
    let c = Config::default()
        .with_env_overrides_from([
            ("PARTI_HEARTBEAT_INTERVAL", "500ms"),
            ("PARTI_HEARTBEAT_TTL", "1500ms"),
            ("PARTI_WORKER_ID_PREFIX", "pod"),
            ("PARTI_WORKER_ID_MAX", "7"),
            ("PARTI_EMERGENCY_GRACE_PERIOD", "1s"),
            ("PARTI_COLD_START_QUIET", "2s"),
            ("PARTI_COLD_START_MAX_WINDOW", "40s"),
            ("PARTI_RESTART_DETECTION_RATIO", "0.25"),
            ("PARTI_ASSIGNMENT_MIN_REBALANCE_INTERVAL", "2s"),
            ("PARTI_KV_BUCKETS_REPLICAS", "3"),
            ("PARTI_KV_BUCKETS_HEARTBEAT", "beats"),
            ("PARTI_DEGRADED_ALERT_INFO_THRESHOLD", "0s"),
        ])
        .expect("valid");
    assert_eq!(c.heartbeat_interval, ms(500));
    assert_eq!(c.heartbeat_ttl, ms(1500));
    assert_eq!(c.worker_id_prefix, "pod");
    assert_eq!(c.worker_id_max, 7);
    assert_eq!(c.emergency_grace_period, Some(s(1)));
    assert_eq!(
        (c.cold_start_quiet, c.cold_start_max_window),
        (s(2), Some(s(40)))
    );
    assert_eq!(c.restart_detection_ratio, 0.25);
    assert_eq!(c.assignment.min_rebalance_interval, s(2));
    assert_eq!(c.kv_buckets.replicas, 3);
    assert_eq!(c.kv_buckets.heartbeat, "beats");
    assert_eq!(c.degraded_alert.info_threshold, Duration::ZERO);
}

#[test]
fn layered_over_a_file() {
    let file = Config::from_yaml_str(EVERY_KEY).expect("valid");
    let c = file
        .clone()
        .with_env_overrides_from([("PARTI_OPERATION_TIMEOUT", "9s")])
        .expect("valid");
    assert_eq!(
        c,
        Config {
            operation_timeout: s(9),
            ..file
        }
    );
}

#[test]
fn preset_then_field_overrides_in_any_order() {
    let c = Config::default()
        .with_env_overrides_from([
            ("PARTI_DEGRADED_BEHAVIOR_EXIT_THRESHOLD", "1s"),
            ("PARTI_DEGRADED_BEHAVIOR", "aggressive"),
        ])
        .expect("valid");
    assert_eq!(
        c.degraded_behavior,
        DegradedBehaviorConfig {
            exit_threshold: s(1),
            ..DegradedPreset::Aggressive.config()
        }
    );
}

#[test]
fn foreign_and_reserved_variables_are_ignored() {
    let c = Config::default()
        .with_env_overrides_from([
            ("PATH", "/bin"),
            ("PARTI_NATS_SERVER", "/opt/nats-server"),
            ("PARTI_NATS_URL", "nats://localhost:4222"),
            ("parti_heartbeat_interval", "1ms"),
        ])
        .expect("valid");
    assert_eq!(c, Config::default());
}

#[test]
fn bad_values_name_the_variable_and_field() {
    let found = violations(Config::default().with_env_overrides_from([
        ("PARTI_HEARTBEAT_INTERVAL", "fast"),
        ("PARTI_KV_BUCKETS_REPLICAS", "-1"),
        ("PARTI_RESTART_DETECTION_RATIO", "NaN"),
        ("PARTI_DEGRADED_BEHAVIOR", "reckless"),
        ("PARTI_WORKER_ID_MAX", "99999999999"),
    ]));
    assert_eq!(
        fields(&found),
        // Whole sections first, then by name.
        [
            "degradedBehavior",
            "heartbeatInterval",
            "restartDetectionRatio",
            "workerIdMax",
            "kvBuckets.replicas",
        ]
    );
    assert!(found[0].reason.contains("reckless"), "{}", found[0]);
    assert!(
        found[1]
            .reason
            .starts_with("PARTI_HEARTBEAT_INTERVAL=\"fast\""),
        "{}",
        found[1]
    );
    assert!(found[1].reason.contains("invalid duration"), "{}", found[1]);
}

#[test]
fn unknown_variables_are_named() {
    let found = violations(Config::default().with_env_overrides_from([
        ("PARTI_HEARTBEAT_INTERVALL", "1s"),
        ("PARTI_SOMETHING_ELSE", "x"),
    ]));
    assert_eq!(
        fields(&found),
        ["PARTI_HEARTBEAT_INTERVALL", "PARTI_SOMETHING_ELSE"]
    );
    assert!(
        found[0]
            .reason
            .contains("did you mean PARTI_HEARTBEAT_INTERVAL?"),
        "{}",
        found[0]
    );
    assert!(
        found[1].reason.contains("PARTI_KV_BUCKETS_REPLICAS"),
        "{}",
        found[1]
    );
}

#[test]
fn the_result_is_validated() {
    let found = violations(
        Config::default().with_env_overrides_from([("PARTI_HEARTBEAT_INTERVAL", "11s")]),
    );
    assert_eq!(
        fields(&found),
        ["workerIdTtl", "heartbeatTtl", "electionTtl"]
    );
}
