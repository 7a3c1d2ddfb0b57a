//! `PARTI_…` environment variables laid over a configuration (SPEC §3).
//!
//! Each field maps to `PARTI_` + its camelCase path in SCREAMING_SNAKE_CASE, the sections joined
//! by `_`: `heartbeatInterval` ← `PARTI_HEARTBEAT_INTERVAL`, `assignment.minRebalanceInterval`
//! ← `PARTI_ASSIGNMENT_MIN_REBALANCE_INTERVAL`. `PARTI_DEGRADED_BEHAVIOR` takes a preset name and
//! is applied before the `PARTI_DEGRADED_BEHAVIOR_*` fields, which override it.
//!
//! `PARTI_NATS_*` is reserved for connection settings of the tools (CLI, test kit) and ignored
//! here; any other unknown `PARTI_` variable is an error, so that a typo is not silently lost.

use serde_json::{Map, Value};

use super::Config;
use super::invalid;
use super::suggest::edit_distance;
use crate::error::{ConfigViolation, Error, Result};

const PREFIX: &str = "PARTI_";
const RESERVED_PREFIX: &str = "PARTI_NATS_";

/// Sections that also take a scalar (a preset name) as a whole.
const SCALAR_SECTIONS: &[&str] = &["degradedBehavior"];

/// How the text of a variable becomes a value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Unsigned,
    Float,
    Bool,
}

/// One settable field.
#[derive(Debug)]
struct EnvField {
    var: String,
    path: Vec<String>,
    kind: Kind,
}

impl Config {
    /// Lays the process's `PARTI_…` environment variables over `self`, then
    /// [validates](Config::validate) the result.
    ///
    /// See [`with_env_overrides_from`](Config::with_env_overrides_from) for the rules.
    pub fn with_env_overrides(self) -> Result<Config> {
        let vars = std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        });
        self.with_env_overrides_from(vars)
    }

    /// Lays `PARTI_…` variables from `vars` over `self`, then [validates](Config::validate) the
    /// result. Variables without the `PARTI_` prefix, and `PARTI_NATS_*` (reserved for
    /// connection settings of the tools), are ignored.
    ///
    /// A field is set by `PARTI_` + its camelCase path in SCREAMING_SNAKE_CASE, sections joined
    /// by `_` (`PARTI_KV_BUCKETS_REPLICAS`); `PARTI_DEGRADED_BEHAVIOR` takes a preset name and is
    /// applied before the `PARTI_DEGRADED_BEHAVIOR_*` fields. Problems are one
    /// [`Error::InvalidConfig`] listing all of them: an unknown `PARTI_` variable is a violation
    /// whose `field` is the variable; a bad value one whose `field` is the camelCase path and
    /// whose reason starts with `VARIABLE="value"`.
    ///
    /// ```
    /// use parti::Config;
    /// use std::time::Duration;
    ///
    /// let config = Config::default().with_env_overrides_from([
    ///     ("PARTI_HEARTBEAT_INTERVAL", "500ms"),
    ///     ("PARTI_HEARTBEAT_TTL", "2s"),
    ///     ("PARTI_DEGRADED_BEHAVIOR", "aggressive"),
    ///     ("HOME", "/root"), // not ours: ignored
    /// ])?;
    /// assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
    /// assert_eq!(config.degraded_behavior.enter_threshold, Duration::from_secs(5));
    /// assert!(Config::default().with_env_overrides_from([("PARTI_HEARTBEAT", "1s")]).is_err());
    /// # Ok::<(), parti::Error>(())
    /// ```
    pub fn with_env_overrides_from<I, K, V>(self, vars: I) -> Result<Config>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let fields = env_fields()?;
        let mut violations = Vec::new();
        let mut overrides = Vec::new();
        for (var, raw) in vars {
            let var = var.as_ref();
            if !var.starts_with(PREFIX) || var.starts_with(RESERVED_PREFIX) {
                continue;
            }
            match fields.iter().find(|f| f.var == var) {
                Some(field) => overrides.push((field, raw.as_ref().to_owned())),
                None => {
                    violations.push(ConfigViolation::new(var, unknown_var_reason(var, &fields)))
                }
            }
        }
        // Whole sections (a preset) first, then the fields that override parts of them.
        overrides.sort_by(|(a, _), (b, _)| (a.path.len(), &a.var).cmp(&(b.path.len(), &b.var)));

        let mut config = self;
        for (field, raw) in overrides {
            match config.overlay(field, &raw) {
                Ok(updated) => config = updated,
                Err(reason) => violations.push(ConfigViolation::new(
                    field.path.join("."),
                    format!("{}={raw:?}: {reason}", field.var),
                )),
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidConfig { violations });
        }
        config.validate()?;
        Ok(config)
    }

    /// `self` with one field replaced by the text `raw`, through the same deserialiser as a file.
    fn overlay(&self, field: &EnvField, raw: &str) -> Result<Config, String> {
        let new = match field.kind {
            Kind::Text => Value::String(raw.to_owned()),
            Kind::Unsigned => raw
                .trim()
                .parse::<u64>()
                .map(Value::from)
                .map_err(|e| format!("expected an unsigned integer ({e})"))?,
            Kind::Float => raw
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| "expected a finite number".to_owned())?,
            Kind::Bool => raw
                .trim()
                .parse::<bool>()
                .map(Value::Bool)
                .map_err(|_| "expected true or false".to_owned())?,
        };
        let mut value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        set_path(&mut value, &field.path, new)?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

/// Every settable field, derived from the serialised default so that it cannot drift from the
/// struct.
fn env_fields() -> Result<Vec<EnvField>> {
    let defaults = serde_json::to_value(Config::default())
        .map_err(|e| invalid("(environment)", e.to_string()))?;
    let mut fields = Vec::new();
    if let Value::Object(map) = &defaults {
        collect(map, &mut Vec::new(), &mut fields);
    }
    // Skipped in the default because they are derived when absent.
    fields.push(field(&["emergencyGracePeriod".to_owned()], Kind::Text));
    fields.push(field(&["coldStartMaxWindow".to_owned()], Kind::Text));
    Ok(fields)
}

fn collect(map: &Map<String, Value>, path: &mut Vec<String>, out: &mut Vec<EnvField>) {
    for (key, value) in map {
        path.push(key.clone());
        let kind = match value {
            Value::Object(inner) => {
                if SCALAR_SECTIONS.contains(&key.as_str()) && path.len() == 1 {
                    out.push(field(path, Kind::Text));
                }
                collect(inner, path, out);
                None
            }
            Value::Number(n) if n.is_f64() => Some(Kind::Float),
            Value::Number(_) => Some(Kind::Unsigned),
            Value::Bool(_) => Some(Kind::Bool),
            Value::String(_) | Value::Null | Value::Array(_) => Some(Kind::Text),
        };
        if let Some(kind) = kind {
            out.push(field(path, kind));
        }
        path.pop();
    }
}

fn field(path: &[String], kind: Kind) -> EnvField {
    let var = path
        .iter()
        .map(|segment| screaming_snake(segment))
        .collect::<Vec<_>>()
        .join("_");
    EnvField {
        var: format!("{PREFIX}{var}"),
        path: path.to_vec(),
        kind,
    }
}

/// `minRebalanceInterval` → `MIN_REBALANCE_INTERVAL`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn set_path(value: &mut Value, path: &[String], new: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty field path".to_owned());
    };
    let mut node = value;
    for key in parents {
        node = node
            .get_mut(key)
            .ok_or_else(|| format!("no section {key}"))?;
    }
    let map = node
        .as_object_mut()
        .ok_or_else(|| format!("{} is not a section", parents.join(".")))?;
    map.insert(last.clone(), new);
    Ok(())
}

fn unknown_var_reason(var: &str, fields: &[EnvField]) -> String {
    let closest = fields
        .iter()
        .map(|f| (edit_distance(var, &f.var), f.var.as_str()))
        .min();
    match closest {
        Some((distance, name)) if distance <= 3 => {
            format!("unknown Parti environment variable; did you mean {name}?")
        }
        _ => {
            let names: Vec<&str> = fields.iter().map(|f| f.var.as_str()).collect();
            format!(
                "unknown Parti environment variable; known: {} (PARTI_NATS_* is reserved)",
                names.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_a_comma_separated_list_in_the_environment() {
        let config = Config::default()
            .with_env_overrides_from([("PARTI_LABELS", "gpu, zone-a"), ("PARTI_CAPACITY", "2.5")])
            .expect("valid");
        assert_eq!(config.labels, ["gpu", "zone-a"]);
        let profile = config.profile().expect("valid");
        assert_eq!(profile.capacity.get(), 2.5);
        assert!(profile.has_label("zone-a"));
        let err = Config::default()
            .with_env_overrides_from([("PARTI_LABELS", "g pu"), ("PARTI_CAPACITY", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels") && err.contains("capacity"), "{err}");
    }

    #[test]
    fn names_are_derived_from_the_camel_case_paths() {
        let fields = env_fields().expect("fields");
        let vars: Vec<&str> = fields.iter().map(|f| f.var.as_str()).collect();
        for expected in [
            "PARTI_WORKER_ID_PREFIX",
            "PARTI_HEARTBEAT_INTERVAL",
            "PARTI_EMERGENCY_GRACE_PERIOD",
            "PARTI_RESTART_MIN_WORKERS",
            "PARTI_ASSIGNMENT_MIN_REBALANCE_INTERVAL",
            "PARTI_ASSIGNMENT_MIN_REBALANCE_THRESHOLD",
            "PARTI_KV_BUCKETS_STABLE_ID",
            "PARTI_KV_BUCKETS_REPLICAS",
            "PARTI_DEGRADED_BEHAVIOR",
            "PARTI_DEGRADED_BEHAVIOR_KV_ERROR_WINDOW",
            "PARTI_DEGRADED_ALERT_ALERT_INTERVAL",
            "PARTI_HANDOFF_TIMEOUT",
            "PARTI_DEGRADED_HOLDING",
            "PARTI_START_JITTER",
            "PARTI_ASSIGNMENT_DEBOUNCE",
            "PARTI_CONSUMER_API_RATE",
            "PARTI_COLD_START_QUIET",
            "PARTI_COLD_START_MAX_WINDOW",
            "PARTI_AUTO_PROVISION",
            "PARTI_CAPACITY",
            "PARTI_LABELS",
            "PARTI_ASSIGNMENT_UNLABELLED_POLICY",
            "PARTI_ASSIGNMENT_LABEL_SPILL_GRACE",
        ] {
            assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
        }
        let mut unique = vars.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), vars.len(), "variable names collide: {vars:?}");
        // 23 top-level scalars + emergencyGracePeriod + coldStartMaxWindow,
        // 4 + 5 + (1 + 5) + 5 in the sections.
        assert_eq!(vars.len(), 25 + 4 + 5 + 6 + 5);
    }
}
