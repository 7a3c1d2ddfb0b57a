//! Validation rules and degraded-mode presets.

use std::time::Duration;

use super::*;

#[test]
fn each_rule_reports_its_field() {
    type Mutation = fn(&mut Config);
    let cases: &[(&str, Mutation)] = &[
        ("workerIdPrefix", |c| {
            c.worker_id_prefix = "bad.prefix".into()
        }),
        ("workerIdPrefix", |c| c.worker_id_prefix = String::new()),
        ("workerIdPrefix", |c| c.worker_id_prefix = "wörker".into()),
        ("workerIdMin", |c| {
            (c.worker_id_min, c.worker_id_max) = (10, 5)
        }),
        ("workerIdTtl", |c| {
            (c.heartbeat_ttl, c.worker_id_ttl) = (s(4), s(5))
        }),
        ("workerIdTtl", |c| {
            (c.heartbeat_interval, c.heartbeat_ttl, c.worker_id_ttl) = (s(1), s(10), s(5));
        }),
        ("heartbeatInterval", |c| {
            c.heartbeat_interval = Duration::ZERO
        }),
        ("heartbeatTtl", |c| c.heartbeat_ttl = s(3)),
        ("heartbeatTtl", |c| {
            (c.heartbeat_interval, c.heartbeat_ttl) = (ms(10), ms(50))
        }),
        ("coldStartWindow", |c| c.cold_start_window = s(5)),
        ("coldStartMaxWindow", |c| {
            c.cold_start_max_window = Some(s(29))
        }),
        ("coldStartMaxWindow", |c| {
            c.cold_start_max_window = Some(s(60))
        }),
        ("emergencyGracePeriod", |c| {
            c.emergency_grace_period = Some(s(7))
        }),
        ("restartDetectionRatio", |c| c.restart_detection_ratio = 0.0),
        ("restartDetectionRatio", |c| {
            c.restart_detection_ratio = 1.01
        }),
        ("restartDetectionRatio", |c| {
            c.restart_detection_ratio = f64::NAN
        }),
        ("restartMinWorkers", |c| c.restart_min_workers = 0),
        ("electionTtl", |c| c.election_ttl = s(2)),
        ("electionTtl", |c| {
            (c.heartbeat_interval, c.election_ttl) = (ms(10), ms(50))
        }),
        ("startupTimeout", |c| c.startup_timeout = Duration::ZERO),
        ("startupTimeout", |c| c.startup_timeout = s(30)),
        ("startJitter", |c| c.start_jitter = s(60)),
        ("assignmentDebounce", |c| c.assignment_debounce = s(6)),
        ("consumerApiRate", |c| c.consumer_api_rate = -1.0),
        ("consumerApiRate", |c| c.consumer_api_rate = f64::INFINITY),
        ("shutdownTimeout", |c| c.shutdown_timeout = Duration::ZERO),
        ("operationTimeout", |c| c.operation_timeout = Duration::ZERO),
        ("assignment.minRebalanceInterval", |c| {
            c.assignment.min_rebalance_interval = Duration::ZERO;
        }),
        ("assignment.minRebalanceInterval", |c| {
            c.assignment.min_rebalance_interval = s(11);
        }),
        ("assignment.minRebalanceThreshold", |c| {
            c.assignment.min_rebalance_threshold = 1.0;
        }),
        ("assignment.minRebalanceThreshold", |c| {
            c.assignment.min_rebalance_threshold = -0.1;
        }),
        ("assignment.minRebalanceThreshold", |c| {
            c.assignment.min_rebalance_threshold = f64::NAN;
        }),
        ("kvBuckets.stableId", |c| {
            c.kv_buckets.stable_id = "a.b".into()
        }),
        ("kvBuckets.election", |c| {
            c.kv_buckets.election = "with space".into()
        }),
        ("kvBuckets.heartbeat", |c| {
            c.kv_buckets.heartbeat = String::new()
        }),
        ("kvBuckets.assignment", |c| {
            c.kv_buckets.assignment = "kv>".into()
        }),
        ("kvBuckets.heartbeat", |c| {
            c.kv_buckets.heartbeat = "parti-election".into()
        }),
        ("kvBuckets.replicas", |c| c.kv_buckets.replicas = 0),
        ("kvBuckets.replicas", |c| c.kv_buckets.replicas = 6),
        ("degradedBehavior.enterThreshold", |c| {
            c.degraded_behavior.enter_threshold = Duration::ZERO;
        }),
        ("degradedBehavior.exitThreshold", |c| {
            c.degraded_behavior.exit_threshold = Duration::ZERO;
        }),
        ("degradedBehavior.kvErrorThreshold", |c| {
            c.degraded_behavior.kv_error_threshold = 0
        }),
        ("degradedBehavior.kvErrorWindow", |c| {
            c.degraded_behavior.kv_error_window = Duration::ZERO;
        }),
        ("degradedAlert.warnThreshold", |c| {
            c.degraded_alert.warn_threshold = s(20)
        }),
        ("degradedAlert.warnThreshold", |c| {
            c.degraded_alert.warn_threshold = s(30)
        }),
        ("degradedAlert.criticalThreshold", |c| {
            (
                c.degraded_alert.error_threshold,
                c.degraded_alert.critical_threshold,
            ) = (Duration::ZERO, s(60));
        }),
        ("degradedAlert.alertInterval", |c| {
            c.degraded_alert.alert_interval = Duration::ZERO
        }),
    ];
    for (field, mutate) in cases {
        let mut config = Config::default();
        mutate(&mut config);
        let found = violations(config.validate());
        assert_eq!(fields(&found), [*field], "{found:?}");
        assert!(!found[0].reason.is_empty());
    }
}

#[test]
fn a_cold_start_max_window_below_the_window_is_explained() {
    let found = violations(Config::from_yaml_str(
        "coldStartWindow: 20s\ncoldStartMaxWindow: 10s\n",
    ));
    assert_eq!(fields(&found), ["coldStartMaxWindow"]);
    let message = Error::InvalidConfig { violations: found }.to_string();
    assert!(
        message.contains("coldStartMaxWindow: 10s must be at least coldStartWindow (20s)"),
        "{message}"
    );
    let found = violations(Config::from_yaml_str("coldStartMaxWindow: 1m\n"));
    assert!(
        found[0].reason.contains("shorter than startupTimeout (1m)"),
        "{found:?}"
    );
}

#[test]
fn edge_values_that_are_allowed() {
    type Mutation = fn(&mut Config);
    let cases: &[Mutation] = &[
        |c| c.worker_id_prefix = "A-z_09".into(),
        |c| c.worker_id_max = c.worker_id_min,
        |c| c.worker_id_ttl = s(6), // = 3 × interval = heartbeatTtl
        |c| c.heartbeat_ttl = s(4), // = 2 × interval
        |c| c.cold_start_window = c.planned_scale_window,
        |c| c.cold_start_quiet = Duration::ZERO,
        |c| c.cold_start_quiet = s(60),
        |c| c.cold_start_max_window = Some(s(30)), // = coldStartWindow: no stretching
        |c| c.cold_start_max_window = Some(s(59)),
        |c| c.emergency_grace_period = Some(Duration::ZERO),
        |c| c.emergency_grace_period = Some(s(6)), // = heartbeatTtl
        |c| c.restart_detection_ratio = 1.0,
        |c| c.assignment.min_rebalance_interval = s(10), // = plannedScaleWindow
        |c| c.assignment.min_rebalance_threshold = 0.0,
        |c| c.kv_buckets.replicas = 5,
        |c| c.degraded_behavior.recovery_grace_period = Duration::ZERO,
        |c| c.degraded_alert.info_threshold = Duration::ZERO,
        |c| {
            let a = &mut c.degraded_alert;
            (a.info_threshold, a.warn_threshold, a.error_threshold) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        },
        |c| c.degraded_alert.error_threshold = Duration::ZERO, // critical 10m > warn 2m
    ];
    for (i, mutate) in cases.iter().enumerate() {
        let mut config = Config::default();
        mutate(&mut config);
        assert!(
            config.validate().is_ok(),
            "case {i}: {:?}",
            config.validate()
        );
    }
}

#[test]
fn every_violation_is_reported_at_once() {
    let yaml = "
workerIdPrefix: 'no spaces'
workerIdMin: 3
workerIdMax: 2
heartbeatTtl: 1s
electionTtl: 1s
kvBuckets: { replicas: 9, election: parti-stableid }
degradedBehavior: { kvErrorThreshold: 0 }
degradedAlert: { criticalThreshold: 1m }
";
    let found = violations(Config::from_yaml_str(yaml));
    assert_eq!(
        fields(&found),
        [
            "workerIdPrefix",
            "workerIdMin",
            "heartbeatTtl",
            "electionTtl",
            "kvBuckets.election",
            "kvBuckets.replicas",
            "degradedBehavior.kvErrorThreshold",
            "degradedAlert.criticalThreshold",
        ]
    );
    let message = Error::InvalidConfig { violations: found }.to_string();
    assert!(
        message.contains("kvBuckets.replicas: 9 must be in 1..=5"),
        "{message}"
    );
}

#[test]
fn presets_by_name() {
    for preset in DegradedPreset::ALL {
        let yaml = format!("degradedBehavior: {preset}\n");
        let c = Config::from_yaml_str(&yaml).expect("valid");
        assert_eq!(c.degraded_behavior, preset.config());
        assert_eq!(
            preset.name().parse::<DegradedPreset>().expect("parses"),
            preset
        );
    }
    let table = |b: DegradedBehaviorConfig| {
        (
            b.enter_threshold.as_secs(),
            b.exit_threshold.as_secs(),
            b.kv_error_threshold,
            b.kv_error_window.as_secs(),
            b.recovery_grace_period.as_secs(),
        )
    };
    assert_eq!(
        table(DegradedPreset::Conservative.config()),
        (30, 10, 10, 30, 20)
    );
    assert_eq!(table(DegradedPreset::Balanced.config()), (10, 5, 5, 30, 15));
    assert_eq!(
        table(DegradedPreset::Aggressive.config()),
        (5, 3, 3, 15, 10)
    );
    assert_eq!(
        DegradedBehaviorConfig::default(),
        DegradedPreset::Balanced.config()
    );
}

#[test]
fn preset_with_overrides() {
    let c = Config::from_yaml_str(
        "degradedBehavior:\n  enterThreshold: 20s\n  preset: conservative\n  kvErrorThreshold: 4\n",
    )
    .expect("valid");
    let expected = DegradedBehaviorConfig {
        enter_threshold: s(20),
        kv_error_threshold: 4,
        ..DegradedPreset::Conservative.config()
    };
    assert_eq!(c.degraded_behavior, expected);

    // Without `preset`, overrides apply to balanced.
    let c = Config::from_yaml_str("degradedBehavior: { exitThreshold: 1s }").expect("valid");
    assert_eq!(
        c.degraded_behavior,
        DegradedBehaviorConfig {
            exit_threshold: s(1),
            ..DegradedPreset::Balanced.config()
        }
    );
    // Written back as the full mapping.
    let written = c.to_yaml_string().expect("serialises");
    assert!(
        written.contains("  exitThreshold: 1s\n  kvErrorThreshold: 5\n"),
        "{written}"
    );
}

#[test]
fn bad_presets_are_named() {
    let v = parse_error("degradedBehavior: reckless\n");
    assert_eq!(v.field, "degradedBehavior");
    assert!(
        v.reason.contains("reckless") && v.reason.contains("conservative"),
        "{v}"
    );
    let v = parse_error("degradedBehavior: { preset: reckless }\n");
    assert_eq!(v.field, "degradedBehavior.preset");
    let v = parse_error("degradedBehavior: { exitThreshold: 1s, exitThreshold: 2s }\n");
    assert!(v.reason.contains("exitThreshold"), "{v}");
    let v = parse_error("degradedBehavior: 5\n");
    assert_eq!(v.field, "degradedBehavior");
    assert!(v.reason.contains("preset name"), "{v}");
    let err = "fast".parse::<DegradedPreset>().expect_err("unknown");
    assert!(err.to_string().contains("\"fast\""), "{err}");
}
