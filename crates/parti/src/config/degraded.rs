//! Degraded-mode settings (SPEC §7): when a worker enters and leaves degraded mode, and when it
//! raises alerts while degraded.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::duration::{self, HumanDuration};
use crate::error::{ConfigViolation, Error};

/// A named set of [`DegradedBehaviorConfig`] thresholds.
///
/// | preset | enter | exit | KV errors | KV error window | recovery grace |
/// |---|---|---|---|---|---|
/// | `conservative` | 30s | 10s | 10 | 30s | 20s |
/// | `balanced` (default) | 10s | 5s | 5 | 30s | 15s |
/// | `aggressive` | 5s | 3s | 3 | 15s | 10s |
///
/// ```
/// use parti::config::{DegradedBehaviorConfig, DegradedPreset};
/// use std::time::Duration;
///
/// let preset: DegradedPreset = "aggressive".parse()?;
/// assert_eq!(preset.config().enter_threshold, Duration::from_secs(5));
/// assert_eq!(DegradedBehaviorConfig::default(), DegradedPreset::Balanced.config());
/// # Ok::<(), parti::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DegradedPreset {
    /// Slow to enter degraded mode; for production networks with occasional blips.
    Conservative,
    /// The default.
    #[default]
    Balanced,
    /// Quick to enter and leave degraded mode; for development and tests.
    Aggressive,
}

impl DegradedPreset {
    /// Every preset, from the slowest to react to the quickest.
    pub const ALL: [DegradedPreset; 3] = [Self::Conservative, Self::Balanced, Self::Aggressive];

    const NAMES: &'static [&'static str] = &["conservative", "balanced", "aggressive"];

    /// The preset's name as written in a configuration file.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Conservative => "conservative",
            Self::Balanced => "balanced",
            Self::Aggressive => "aggressive",
        }
    }

    /// The thresholds of this preset.
    pub const fn config(self) -> DegradedBehaviorConfig {
        let (enter, exit, errors, window, grace) = match self {
            Self::Conservative => (30, 10, 10, 30, 20),
            Self::Balanced => (10, 5, 5, 30, 15),
            Self::Aggressive => (5, 3, 3, 15, 10),
        };
        DegradedBehaviorConfig {
            enter_threshold: Duration::from_secs(enter),
            exit_threshold: Duration::from_secs(exit),
            kv_error_threshold: errors,
            kv_error_window: Duration::from_secs(window),
            recovery_grace_period: Duration::from_secs(grace),
        }
    }
}

impl fmt::Display for DegradedPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DegradedPreset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::InvalidConfig {
                violations: vec![ConfigViolation::new(
                    "degradedBehavior",
                    format!(
                        "unknown preset {s:?}, expected one of {}",
                        Self::NAMES.join(", ")
                    ),
                )],
            })
    }
}

/// What a worker may still process once its lease ran out (`degradedHolding`): NATS has been
/// unreachable, or the process was paused, for longer than the lease.
///
/// ```
/// use parti::config::DegradedHolding;
/// let keep: DegradedHolding = serde_json::from_str("\"keep\"")?;
/// assert_eq!(keep, DegradedHolding::Keep);
/// assert_eq!(DegradedHolding::default(), DegradedHolding::Fence);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DegradedHolding {
    /// Hold nothing past the lease (the default): the worker stops processing before anyone
    /// else may start, so each partition has one holder at a time. After the outage it holds
    /// again once it re-verified its ID and a commit names it.
    #[default]
    Fence,
    /// Keep processing the last assignment for as long as the outage lasts: availability over
    /// exclusivity. **This gives up the ownership guarantee**: the leader hands a silent
    /// worker's partitions on after `heartbeatTtl` + grace, and from then on two workers
    /// process them until the silent one hears of the new map. Choose it only when the
    /// application tolerates that (idempotent, commutative processing).
    Keep,
}

/// When a worker enters and leaves degraded mode (`degradedBehavior`).
///
/// In YAML this is either a preset name, or a mapping of thresholds laid over a base preset
/// (`preset:`, `balanced` when absent). Written back, it is always the full mapping:
///
/// ```yaml
/// degradedBehavior: aggressive
/// # or
/// degradedBehavior:
///   preset: conservative     # optional base, default balanced
///   enterThreshold: 20s      # overrides the preset's value
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DegradedBehaviorConfig {
    /// How long NATS must be unreachable before the worker enters degraded mode.
    #[serde(with = "duration")]
    pub enter_threshold: Duration,
    /// How long NATS must be healthy again before the worker leaves degraded mode.
    #[serde(with = "duration")]
    pub exit_threshold: Duration,
    /// This many KV errors within `kvErrorWindow` also enter degraded mode.
    pub kv_error_threshold: u32,
    /// The sliding window in which KV errors are counted.
    #[serde(with = "duration")]
    pub kv_error_window: Duration,
    /// How long a leader that recovered waits before it declares crashes, so that workers cut
    /// off together with it are not mass-evicted.
    #[serde(with = "duration")]
    pub recovery_grace_period: Duration,
}

impl Default for DegradedBehaviorConfig {
    fn default() -> Self {
        DegradedPreset::Balanced.config()
    }
}

impl From<DegradedPreset> for DegradedBehaviorConfig {
    fn from(preset: DegradedPreset) -> Self {
        preset.config()
    }
}

/// The keys of a `degradedBehavior` mapping.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Preset,
    EnterThreshold,
    ExitThreshold,
    KvErrorThreshold,
    KvErrorWindow,
    RecoveryGracePeriod,
}

impl<'de> Deserialize<'de> for DegradedBehaviorConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BehaviorVisitor)
    }
}

struct BehaviorVisitor;

impl<'de> Visitor<'de> for BehaviorVisitor {
    type Value = DegradedBehaviorConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a preset name (conservative, balanced, aggressive) or a mapping of thresholds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        DegradedPreset::ALL
            .into_iter()
            .find(|p| p.name() == v)
            .map(DegradedPreset::config)
            .ok_or_else(|| E::unknown_variant(v, DegradedPreset::NAMES))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Collected first and laid over the preset afterwards, so key order does not matter.
        let mut preset: Option<DegradedPreset> = None;
        let mut enter = None;
        let mut exit = None;
        let mut errors = None;
        let mut window = None;
        let mut grace = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Preset => put(&mut preset, map.next_value()?, "preset")?,
                Field::EnterThreshold => {
                    put(&mut enter, next_duration(&mut map)?, "enterThreshold")?
                }
                Field::ExitThreshold => put(&mut exit, next_duration(&mut map)?, "exitThreshold")?,
                Field::KvErrorThreshold => {
                    put(&mut errors, map.next_value()?, "kvErrorThreshold")?;
                }
                Field::KvErrorWindow => {
                    put(&mut window, next_duration(&mut map)?, "kvErrorWindow")?
                }
                Field::RecoveryGracePeriod => {
                    put(&mut grace, next_duration(&mut map)?, "recoveryGracePeriod")?;
                }
            }
        }
        let base = preset.unwrap_or_default().config();
        Ok(DegradedBehaviorConfig {
            enter_threshold: enter.unwrap_or(base.enter_threshold),
            exit_threshold: exit.unwrap_or(base.exit_threshold),
            kv_error_threshold: errors.unwrap_or(base.kv_error_threshold),
            kv_error_window: window.unwrap_or(base.kv_error_window),
            recovery_grace_period: grace.unwrap_or(base.recovery_grace_period),
        })
    }
}

fn next_duration<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Duration, A::Error> {
    map.next_value::<HumanDuration>().map(|d| d.0)
}

fn put<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    match slot.replace(value) {
        Some(_) => Err(E::duplicate_field(name)),
        None => Ok(()),
    }
}

/// When a degraded worker raises alerts (`degradedAlert`).
///
/// A level fires once the worker has been degraded for its threshold, and repeats every
/// `alertInterval` until the next level or recovery. A threshold of zero disables that level;
/// the enabled thresholds must be strictly ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct DegradedAlertConfig {
    /// Degraded this long → `info` alert (default 30s).
    #[serde(with = "duration")]
    pub info_threshold: Duration,
    /// Degraded this long → `warn` alert (default 2m).
    #[serde(with = "duration")]
    pub warn_threshold: Duration,
    /// Degraded this long → `error` alert (default 5m).
    #[serde(with = "duration")]
    pub error_threshold: Duration,
    /// Degraded this long → `critical` alert (default 10m).
    #[serde(with = "duration")]
    pub critical_threshold: Duration,
    /// Interval at which the current level's alert is repeated (default 1m).
    #[serde(with = "duration")]
    pub alert_interval: Duration,
}

impl Default for DegradedAlertConfig {
    fn default() -> Self {
        Self {
            info_threshold: Duration::from_secs(30),
            warn_threshold: Duration::from_secs(120),
            error_threshold: Duration::from_secs(300),
            critical_threshold: Duration::from_secs(600),
            alert_interval: Duration::from_secs(60),
        }
    }
}

impl DegradedAlertConfig {
    /// The thresholds by level name (`info`, `warn`, `error`, `critical`), in ascending order of
    /// severity, including disabled (zero) ones.
    pub fn thresholds(&self) -> [(&'static str, Duration); 4] {
        [
            ("info", self.info_threshold),
            ("warn", self.warn_threshold),
            ("error", self.error_threshold),
            ("critical", self.critical_threshold),
        ]
    }
}
