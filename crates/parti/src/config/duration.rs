//! Durations as human-readable strings (`"500ms"`, `"30s"`, `"1m30s"`) in configuration files.
//!
//! Parsing is humantime's (which also takes `"1.5s"`, `"2h 30m"`); formatting is our own compact,
//! exact form (`"1m30s"`, `"1s500ms"`), so that a value written back parses to the same duration.
//! Bare numbers are refused: a unit-less `30` is too easily read as seconds by one reader and as
//! nanoseconds (Go) by another.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Formats `d` compactly and exactly, e.g. `"1m30s"`, `"500ms"`, `"0s"`.
pub(crate) fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let mut out = String::new();
    for (value, unit) in parts {
        if value > 0 {
            // Writing to a String cannot fail.
            let _ = write!(out, "{value}{unit}");
        }
    }
    out
}

/// Parses a duration string, with an error message that quotes the input.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); expected e.g. \"500ms\", \"30s\", \"1m30s\"")
    })
}

/// A [`Duration`] that (de)serialises as a human-readable string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"30s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse(v).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// `#[serde(with = "duration")]` for a `Duration` field.
pub(crate) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    HumanDuration(*d).serialize(serializer)
}

/// `#[serde(with = "duration")]` for a `Duration` field.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    HumanDuration::deserialize(deserializer).map(|d| d.0)
}

/// `#[serde(with = "duration::option")]` for an `Option<Duration>` field (`null` is `None`).
pub(crate) mod option {
    use super::*;

    /// Serialises `Some(d)` as a string and `None` as `null`.
    pub(crate) fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        d.map(HumanDuration).serialize(serializer)
    }

    /// Deserialises a string, or `null` as `None`.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<HumanDuration>::deserialize(deserializer)?.map(|d| d.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_compactly() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_secs(2 * 86_400 + 1), "48h1s"),
            (Duration::from_nanos(1_001_001), "1ms1us1ns"),
        ];
        for (d, s) in cases {
            assert_eq!(format(d), s);
            assert_eq!(parse(s), Ok(d), "{s} must parse back");
        }
    }

    #[test]
    fn parses_human_forms() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage_naming_the_input() {
        for bad in ["", "abc", "30", "-1s", "5 parsecs", "1.s"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    #[cfg(feature = "yaml")]
    fn refuses_bare_numbers_in_yaml() {
        let err = serde_yaml_ng::from_str::<HumanDuration>("30").expect_err("a number");
        assert!(err.to_string().contains("duration"), "{err}");
    }
}
