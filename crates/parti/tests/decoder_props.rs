//! Every decoder of KV values, fed random bytes and mutated valid values: never a panic, and
//! garbage is never taken as a valid value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use parti::election::LeaderRecord;
use parti::heartbeat::HeartbeatValue;
use parti::records::{ClusterRecord, RefreshRequest, WorkerRecord};
use parti::stable_id::StableIdValue;
use parti::store::codec::decode;
use proptest::prelude::*;
use serde::de::DeserializeOwned;

/// Decodes with every decoder; none may panic.
fn decode_all(bytes: &[u8]) -> [bool; 6] {
    fn ok<T: DeserializeOwned>(bytes: &[u8]) -> bool {
        decode::<T>("bucket", "key", bytes).is_ok()
    }
    [
        ok::<HeartbeatValue>(bytes),
        ok::<StableIdValue>(bytes),
        ok::<LeaderRecord>(bytes),
        ok::<ClusterRecord>(bytes),
        ok::<WorkerRecord>(bytes),
        ok::<RefreshRequest>(bytes),
    ]
}

const VALID_WORKER: &str = r#"{"v":1,"version":3,"term":7,"lifecycle":"running","partitions":[{"keys":["a","b"],"weight":5}]}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_all(&bytes);
    }

    #[test]
    fn random_json_never_panics(json in "[ -~]{0,200}") {
        let _ = decode_all(json.as_bytes());
    }

    #[test]
    fn truncated_values_are_rejected(cut in 0usize..VALID_WORKER.len()) {
        let truncated = &VALID_WORKER.as_bytes()[..cut];
        prop_assert!(decode::<WorkerRecord>("b", "k", truncated).is_err());
    }

    #[test]
    fn single_byte_mutations_never_panic(pos in 0usize..VALID_WORKER.len(), byte in any::<u8>()) {
        let mut bytes = VALID_WORKER.as_bytes().to_vec();
        bytes[pos] = byte;
        let _ = decode_all(&bytes);
    }
}

#[test]
fn the_valid_value_decodes_and_invalid_partitions_do_not() {
    let record: WorkerRecord = decode("b", "k", VALID_WORKER.as_bytes()).unwrap();
    assert_eq!(record.partitions[0].subject_key(), "a.b");
    // A partition key that would break NATS subjects is refused even inside a valid record.
    let bad = VALID_WORKER.replace(r#"["a","b"]"#, r#"["a.b"]"#);
    assert!(decode::<WorkerRecord>("b", "k", bad.as_bytes()).is_err());
    let wrong_schema = VALID_WORKER.replace(r#""v":1"#, r#""v":2"#);
    assert!(decode::<WorkerRecord>("b", "k", wrong_schema.as_bytes()).is_err());
}
