//! Name rules and bucket compatibility shared by every store, so that a name or a spec the
//! in-memory store accepts is accepted by NATS too.

use crate::store::{BucketSpec, StoreError};

pub(crate) fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let valid = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: key.to_owned(),
            reason: "keys are made of A-Z, a-z, 0-9 and -/_=. and do not start or end with '.'"
                .into(),
        })
    }
}

pub(crate) fn check_pattern(pattern: &str) -> Result<(), StoreError> {
    let count = pattern.split('.').count();
    let ok = !pattern.is_empty()
        && pattern.split('.').enumerate().all(|(i, token)| {
            !token.is_empty()
                && (token == "*" || (token == ">" && i == count - 1) || !token.contains(['*', '>']))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: pattern.to_owned(),
            reason: "a pattern is a key, or tokens with '*' and a final '>'".into(),
        })
    }
}

/// Compares the settings that change behaviour; reports every difference at once.
pub(crate) fn check_compatible(want: &BucketSpec, have: &BucketSpec) -> Result<(), StoreError> {
    let mut diffs = Vec::new();
    if want.max_age != have.max_age {
        diffs.push(format!(
            "max_age is {:?}, expected {:?}",
            have.max_age.unwrap_or_default(),
            want.max_age.unwrap_or_default()
        ));
    }
    if want.history != have.history {
        diffs.push(format!(
            "history is {}, expected {}",
            have.history, want.history
        ));
    }
    if want.replicas.max(1) != have.replicas.max(1) {
        diffs.push(format!(
            "replicas is {}, expected {}",
            have.replicas, want.replicas
        ));
    }
    if want.limit_markers && !have.limit_markers {
        diffs.push("limit markers are off, expected on (expiries would be invisible)".into());
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(StoreError::IncompatibleBucket {
            bucket: want.name.clone(),
            reason: format!(
                "{} (delete the bucket or align the configuration)",
                diffs.join(", ")
            ),
        })
    }
}
