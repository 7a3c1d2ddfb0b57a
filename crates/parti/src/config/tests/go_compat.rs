//! Files of the Go library (v1 and v2): keys mapped onto ours, keys accepted with a warning,
//! unknown keys still refused (with a suggestion).

use super::*;
use crate::UnlabelledPolicy;

/// A configuration as the Go library's v2 documentation writes it: its v1 keys (some under Go
/// names), the v2 keys, and the `kvBuckets` additions.
const GO_V2_FILE: &str = r#"
# parti.yaml, written for the Go library (v2)
workerIdPrefix: ingest
workerIdMin: 0
workerIdMax: 63
workerIdTtl: 30s
heartbeatInterval: 2s
heartbeatTtl: 6s
coldStartWindow: 30s
plannedScaleWindow: 10s
emergencyGracePeriod: 3s
restartDetectionRatio: 0.5
operationTimeout: 10s
electionTimeout: 5s
startupTimeout: 45s
shutdownTimeout: 10s

# Rate limiting (v2: top level, formerly assignment.minRebalanceInterval)
rebalanceCooldown: 5s

# Two-phase handoff (v2)
enableTwoPhaseHandoff: true
handoff:
  sweepInterval: 30s
  maxRetries: 3
  baseBackoff: 50ms
  maxBackoff: 500ms
  jitter: 0.2
  delayAfterPrepare: 0s
  delayBeforeStable: 0s

kvBuckets:
  stableIdBucket: ingest-stableid
  electionBucket: ingest-election
  heartbeatBucket: ingest-heartbeat
  assignmentBucket: ingest-assignment
  assignmentTtl: 0s
  handoffBucket: ingest-handoff
  handoffTtl: 2m

degradedBehavior:
  enterThreshold: 10s
  exitThreshold: 5s
  kvErrorThreshold: 5
  kvErrorWindow: 30s
  recoveryGracePeriod: 15s

degradedAlert:
  infoThreshold: 30s
  warnThreshold: 2m
  errorThreshold: 5m
  criticalThreshold: 10m
  alertInterval: 1m

workerLabels: [gpu, zone-a]
unlabeledPartitionPolicy: dedicated
labelSpillGrace: 90s
"#;

/// A configuration of the Go library's v1, with its `assignmentTtl` written as Go writes a zero
/// `time.Duration` (a bare number).
const GO_V1_FILE: &str = r#"
workerIdPrefix: worker
workerIdMin: 0
workerIdMax: 99
workerIdTtl: 30s
heartbeatInterval: 2s
heartbeatTtl: 6s
coldStartWindow: 30s
plannedScaleWindow: 10s
restartDetectionRatio: 0.5
operationTimeout: 10s
electionTimeout: 5s
startupTimeout: 45s
shutdownTimeout: 10s
assignment:
  minRebalanceThreshold: 0.15
  minRebalanceInterval: 10s
kvBuckets:
  stableIdBucket: parti-stableid
  electionBucket: parti-election
  heartbeatBucket: parti-heartbeat
  assignmentBucket: parti-assignment
  assignmentTtl: 0
"#;

fn report(yaml: &str) -> LoadReport {
    Config::from_yaml_str_with_warnings(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn warned(report: &LoadReport) -> Vec<&str> {
    report.warnings.iter().map(|w| w.field.as_str()).collect()
}

/// The single warning of `yaml`.
fn warning(yaml: &str) -> ConfigWarning {
    let mut r = report(yaml);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    r.warnings.remove(0)
}

#[test]
fn a_go_v2_file_loads_with_its_keys_mapped_or_reported() {
    let r = report(GO_V2_FILE);
    let c = &r.config;
    assert_eq!(c.worker_id_prefix, "ingest");
    assert_eq!(c.worker_id_max, 63);
    assert_eq!(c.election_ttl, s(5));
    assert_eq!(c.emergency_grace_period, Some(s(3)));
    assert_eq!(
        c.assignment.min_rebalance_interval,
        s(5),
        "rebalanceCooldown"
    );
    assert_eq!(c.handoff_timeout, s(30), "no handoff.timeout: the default");
    assert_eq!(
        c.kv_buckets.names().map(|(_, n)| n),
        [
            "ingest-stableid",
            "ingest-election",
            "ingest-heartbeat",
            "ingest-assignment"
        ]
    );
    assert_eq!(c.degraded_alert.warn_threshold, s(120));
    assert_eq!(
        warned(&r),
        [
            "enableTwoPhaseHandoff",
            "handoff",
            "kvBuckets.assignmentTtl",
            "kvBuckets.handoffBucket",
            "kvBuckets.handoffTtl",
        ]
    );
    assert_eq!(c.labels, ["gpu", "zone-a"]);
    assert_eq!(c.assignment.label_spill_grace, s(90));
    for w in &r.warnings {
        assert!(w.message.starts_with("ignored"), "{w}");
        assert_eq!(w.to_string(), format!("{}: {}", w.field, w.message));
    }
    let handoff = &r.warnings[1].message;
    for key in ["sweepInterval", "maxRetries", "jitter", "delayBeforeStable"] {
        assert!(handoff.contains(key), "{handoff}");
    }

    // The plain loader gives the same configuration (and logs the warnings).
    assert_eq!(&Config::from_yaml_str(GO_V2_FILE).expect("valid"), c);
    // Written back, only our names remain, and they read back without warnings.
    let written = c.to_yaml_string().expect("serialises");
    assert!(written.contains("minRebalanceInterval: 5s"), "{written}");
    let again = report(&written);
    assert_eq!(&again.config, c);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

#[test]
fn a_go_v1_file_still_loads() {
    let r = report(GO_V1_FILE);
    assert_eq!(r.config.assignment.min_rebalance_interval, s(10));
    assert_eq!(r.config.election_ttl, s(5));
    assert_eq!(warned(&r), ["kvBuckets.assignmentTtl"]);
    // The Go-v1 files of yaml.rs load without any warning.
    assert!(report(EVERY_KEY).warnings.is_empty());
}

#[test]
fn rebalance_cooldown_maps_to_min_rebalance_interval() {
    let r = report("rebalanceCooldown: 4s\n");
    assert_eq!(r.config.assignment.min_rebalance_interval, s(4));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    // Our own key (or its alias inside `assignment`) wins, and the Go key is reported.
    for ours in ["minRebalanceInterval", "rebalanceCooldown"] {
        let yaml = format!("rebalanceCooldown: 4s\nassignment:\n  {ours}: 3s\n");
        let r = report(&yaml);
        assert_eq!(r.config.assignment.min_rebalance_interval, s(3));
        assert_eq!(warned(&r), ["rebalanceCooldown"]);
        let message = &r.warnings[0].message;
        assert!(message.contains(&format!("assignment.{ours}")), "{message}");
        assert!(message.contains("4s"), "{message}");
    }

    // The mapped value is validated as ours is.
    let v = violations(Config::from_yaml_str("rebalanceCooldown: 20s\n"));
    assert_eq!(fields(&v), ["assignment.minRebalanceInterval"]);
    // A bad value names the Go key.
    let v = parse_error("rebalanceCooldown: 30\n");
    assert_eq!(v.field, "rebalanceCooldown");
    assert!(v.reason.contains("duration"), "{v}");
}

#[test]
fn enable_two_phase_handoff_is_accepted_with_a_warning() {
    let on = warning("enableTwoPhaseHandoff: true\n");
    assert_eq!(on.field, "enableTwoPhaseHandoff");
    assert!(on.message.contains("always on"), "{on}");
    let off = warning("enableTwoPhaseHandoff: false\n");
    assert!(off.message.contains("cannot be turned off"), "{off}");

    let v = parse_error("enableTwoPhaseHandoff: sometimes\n");
    assert_eq!(v.field, "enableTwoPhaseHandoff");
    assert!(v.reason.contains("true or false"), "{v}");
}

#[test]
fn handoff_timeout_maps_to_handoff_timeout() {
    let r = report("handoff:\n  timeout: 45s\n");
    assert_eq!(r.config.handoff_timeout, s(45));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    let r = report("handoffTimeout: 20s\nhandoff: { timeout: 45s }\n");
    assert_eq!(r.config.handoff_timeout, s(20), "ours wins");
    assert_eq!(warned(&r), ["handoff.timeout"]);
    assert!(r.warnings[0].message.contains("handoffTimeout"));

    let v = violations(Config::from_yaml_str("handoff: { timeout: 0s }\n"));
    assert_eq!(fields(&v), ["handoffTimeout"], "validated as ours");
    let v = parse_error("handoff: { timeout: soon }\n");
    assert_eq!(v.field, "handoff.timeout");
}

#[test]
fn the_rest_of_handoff_is_reported_in_one_warning() {
    let w = warning("handoff:\n  timeout: 1m\n  sweepInterval: 30s\n  jitter: 0.2\n");
    assert_eq!(w.field, "handoff");
    assert!(w.message.contains("sweepInterval, jitter"), "{w}");
    assert!(!w.message.starts_with("ignored: timeout"), "{w}");

    let w = warning("handoff:\n");
    assert_eq!(
        (w.field.as_str(), w.message.as_str()),
        ("handoff", "ignored: an empty section")
    );

    // Keys the Go library's section does not have either are errors, with a suggestion.
    let v = parse_error("handoff:\n  timout: 1s\n");
    assert_eq!(v.field, "handoff.timout");
    assert!(v.reason.contains("did you mean `timeout`?"), "{v}");
    let v = parse_error("handoff:\n  zzz: 1s\n");
    assert!(v.reason.contains("expected one of `timeout`"), "{v}");
    let v = parse_error("handoff: 30s\n");
    assert_eq!(v.field, "handoff");
    assert!(v.reason.contains("expected a map"), "{v}");
}

#[test]
fn kv_bucket_go_keys_are_reported() {
    let r = report(
        "kvBuckets:\n  handoffBucket: h\n  handoffTtl: 2m\n  assignmentTtl: 1h\n  replicas: 3\n",
    );
    assert_eq!(
        r.config.kv_buckets.replicas, 3,
        "the keys around them still apply"
    );
    assert_eq!(
        warned(&r),
        [
            "kvBuckets.handoffBucket",
            "kvBuckets.handoffTtl",
            "kvBuckets.assignmentTtl"
        ]
    );
    assert!(r.warnings[0].message.contains("no handoff bucket"));
    assert!(r.warnings[2].message.contains("never expire"));
}

#[test]
fn a_top_level_assignment_ttl_is_reported() {
    let w = warning("assignmentTtl: 0s\n");
    assert_eq!(w.field, "assignmentTtl");
    assert!(w.message.contains("never expire"), "{w}");
}

#[test]
fn worker_labels_become_labels_and_a_map_of_them_is_reported() {
    let r = report("workerLabels: [gpu, ssd]\n");
    assert_eq!(r.warnings, []);
    assert_eq!(r.config.labels, ["gpu", "ssd"]);
    assert!(r.config.profile().unwrap().has_label("ssd"));
    assert_eq!(report("workerLabels:\n").warnings, []);
    let w = warning("workerLabels: { zone: a, tier: gold }\n");
    assert_eq!(w.field, "workerLabels");
    assert!(w.message.contains("key=value"), "{w}");
    // Ours wins.
    let r = report("labels: [a]\nworkerLabels: [b]\n");
    assert_eq!(r.config.labels, ["a"]);
    assert_eq!(warned(&r), ["workerLabels"]);
    let v = parse_error("workerLabels: gpu\n");
    assert_eq!(v.field, "workerLabels");
    assert!(v.reason.contains("a list of labels"), "{v}");
    let v = parse_error("workerLabels: [[nested]]\n");
    assert!(v.reason.contains("a label name"), "{v}");
}

#[test]
fn go_label_placement_keys_map_onto_the_assignment_section() {
    let r = report("unlabeledPartitionPolicy: shared\nlabelSpillGrace: 2m\n");
    assert_eq!(r.warnings, []);
    assert_eq!(
        r.config.assignment.unlabelled_policy,
        UnlabelledPolicy::Shared
    );
    assert_eq!(r.config.assignment.label_spill_grace, s(120));
    // 0 in a Go file means its default.
    let r = report("labelSpillGrace: 0s\n");
    assert_eq!(warned(&r), ["labelSpillGrace"]);
    assert_eq!(r.config.assignment.label_spill_grace, s(60));
    // Ours wins.
    let r =
        report("unlabeledPartitionPolicy: shared\nassignment: { unlabelledPolicy: dedicated }\n");
    assert_eq!(
        r.config.assignment.unlabelled_policy,
        UnlabelledPolicy::Dedicated
    );
    assert_eq!(warned(&r), ["unlabeledPartitionPolicy"]);
    let v = parse_error("unlabeledPartitionPolicy: everyone\n");
    assert_eq!(v.field, "unlabeledPartitionPolicy");
    assert!(v.reason.contains("dedicated or shared"), "{v}");
}

#[test]
fn a_go_key_given_twice_is_an_error() {
    let v = parse_error("enableTwoPhaseHandoff: true\nenableTwoPhaseHandoff: false\n");
    assert_eq!(v.field, "enableTwoPhaseHandoff");
    assert!(v.reason.contains("duplicate field"), "{v}");
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    let cases = [
        (
            "heartbeatIntervl: 1s\n",
            "heartbeatIntervl",
            Some("heartbeatInterval"),
        ),
        ("HeartbeatTtl: 1s\n", "HeartbeatTtl", Some("heartbeatTtl")),
        (
            "electionTimeot: 1s\n",
            "electionTimeot",
            Some("electionTimeout"),
        ),
        (
            "enableTwoPhaseHandof: true\n",
            "enableTwoPhaseHandof",
            Some("enableTwoPhaseHandoff"),
        ),
        (
            "kvBuckets:\n  handofBucket: h\n",
            "kvBuckets.handofBucket",
            Some("handoffBucket"),
        ),
        (
            "assignment:\n  minRebalanceIntervl: 1s\n",
            "assignment.minRebalanceIntervl",
            Some("minRebalanceInterval"),
        ),
        (
            "degradedAlert:\n  infoTreshold: 1s\n",
            "degradedAlert.infoTreshold",
            Some("infoThreshold"),
        ),
        (
            "degradedBehavior:\n  enterThreshld: 1s\n",
            "degradedBehavior.enterThreshld",
            Some("enterThreshold"),
        ),
        ("totallyUnrelated: 1\n", "totallyUnrelated", None),
    ];
    for (yaml, field, suggestion) in cases {
        // (YAML positions are left out for the very first character of a document.)
        let yaml = format!("# a configuration\n{yaml}");
        let v = parse_error(&yaml);
        assert_eq!(v.field, field, "{yaml}");
        let key = field.rsplit('.').next().unwrap_or(field);
        assert!(
            v.reason.starts_with(&format!("unknown field `{key}`")),
            "{v}"
        );
        assert!(v.reason.contains("line "), "the position is kept: {v}");
        match suggestion {
            Some(name) => {
                assert!(v.reason.contains(&format!("did you mean `{name}`?")), "{v}");
            }
            None => {
                assert!(!v.reason.contains("did you mean"), "{v}");
                assert!(v.reason.contains("expected one of"), "{v}");
            }
        }
    }
}

#[test]
fn parse_yaml_str_reports_without_validating() {
    let r =
        Config::parse_yaml_str("heartbeatTtl: 1s\nenableTwoPhaseHandoff: true\n").expect("parses");
    assert_eq!(r.config.heartbeat_ttl, s(1));
    assert_eq!(warned(&r), ["enableTwoPhaseHandoff"]);
    assert_eq!(fields(&violations(r.config.validate())), ["heartbeatTtl"]);
    // The validating loaders refuse it.
    assert!(Config::from_yaml_str_with_warnings("heartbeatTtl: 1s\n").is_err());
    // Parse errors are errors here too.
    assert_eq!(
        fields(&violations(Config::parse_yaml_str("heartbeatTtl: soon\n"))),
        ["heartbeatTtl"]
    );
    let empty = Config::parse_yaml_str("# nothing\n").expect("parses");
    assert_eq!((empty.config, empty.warnings), (Config::default(), vec![]));
}
