//! Property tests: no input makes the parser panic.

use proptest::prelude::*;

use super::*;

/// A line of YAML-ish text built from real keys, real and broken values, and odd indentation.
fn yamlish_line() -> impl Strategy<Value = String> {
    const KEYS: &[&str] = &[
        "workerIdPrefix",
        "workerIdMax",
        "heartbeatInterval",
        "heartbeatTtl",
        "electionTimeout",
        "emergencyGracePeriod",
        "restartDetectionRatio",
        "assignment",
        "minRebalanceInterval",
        "kvBuckets",
        "replicas",
        "degradedBehavior",
        "preset",
        "enterThreshold",
        "degradedAlert",
        "infoThreshold",
        "- ",
    ];
    let key = prop_oneof![
        proptest::sample::select(KEYS).prop_map(str::to_owned),
        "[a-zA-Z]{1,8}",
    ];
    let value = prop_oneof![
        Just(String::new()),
        Just("aggressive".to_owned()),
        Just("{ preset: balanced }".to_owned()),
        Just("~".to_owned()),
        Just("&a [*a]".to_owned()),
        Just("*undefined".to_owned()),
        Just("!!binary aGk=".to_owned()),
        "[0-9]{1,20}(ns|ms|s|m|h|d|x)?",
        "-?[0-9]{1,3}\\.[0-9]{0,3}",
        "[\\[\\]{}:,'\"#|>-]{0,6}",
        any::<String>(),
    ];
    (0usize..6, key, value)
        .prop_map(|(indent, key, value)| format!("{}{key}: {value}", " ".repeat(indent)))
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(input in any::<String>()) {
        let _ = Config::from_yaml_str(&input);
    }

    #[test]
    fn yamlish_input_never_panics_and_what_parses_round_trips(
        lines in proptest::collection::vec(yamlish_line(), 0..12)
    ) {
        let yaml = lines.join("\n");
        if let Ok(config) = Config::from_yaml_str(&yaml) {
            let written = config.to_yaml_string().expect("a valid config serialises");
            prop_assert_eq!(Config::from_yaml_str(&written).expect("reads back"), config);
        }
    }
}
