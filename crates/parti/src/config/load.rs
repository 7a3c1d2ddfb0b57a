//! Reading a configuration from YAML, with errors that name the offending field.

use std::cell::RefCell;
use std::fmt::Display;
use std::path::Path;

use super::compat::{self, ConfigWarning, LoadReport};
use super::filter::{Filter, Level, Seen};
use super::{Config, invalid, suggest};
use crate::error::{ConfigViolation, Error, Result};

/// Field name used for an error that concerns the whole document (e.g. a YAML syntax error).
const DOCUMENT: &str = "(document)";

impl Config {
    /// Parses a YAML configuration and [validates](Config::validate) it.
    ///
    /// Keys left out take their defaults; an empty document is [`Config::default()`]. A syntax
    /// error, an unknown key, or a value of the wrong type or format is
    /// [`Error::InvalidConfig`] naming the field path (`assignment.minRebalanceInterval`); the
    /// reason of an unknown key that is close to a known one ends with
    /// ``did you mean `heartbeatInterval`?``.
    ///
    /// Files of the Go library load too: its keys are mapped where they have a meaning here
    /// (`rebalanceCooldown` → `assignment.minRebalanceInterval`, `handoff.timeout` →
    /// `handoffTimeout`) and otherwise accepted with a [`ConfigWarning`], logged with
    /// `tracing::warn!`; [`from_yaml_str_with_warnings`](Config::from_yaml_str_with_warnings)
    /// returns them instead.
    pub fn from_yaml_str(yaml: &str) -> Result<Config> {
        let report = parse_yaml(yaml)?;
        for warning in &report.warnings {
            tracing::warn!(field = %warning.field, "configuration: {}", warning.message);
        }
        report.config.validate()?;
        Ok(report.config)
    }

    /// Like [`from_yaml_str`](Config::from_yaml_str), but returns the warnings about keys of the
    /// Go library with the configuration instead of logging them.
    ///
    /// ```
    /// let report = parti::Config::from_yaml_str_with_warnings(
    ///     "rebalanceCooldown: 5s\nenableTwoPhaseHandoff: true\n",
    /// )?;
    /// assert_eq!(report.config.assignment.min_rebalance_interval.as_secs(), 5);
    /// let fields: Vec<_> = report.warnings.iter().map(|w| w.field.as_str()).collect();
    /// assert_eq!(fields, ["enableTwoPhaseHandoff"]);
    /// # Ok::<(), parti::Error>(())
    /// ```
    pub fn from_yaml_str_with_warnings(yaml: &str) -> Result<LoadReport> {
        let report = parse_yaml(yaml)?;
        report.config.validate()?;
        Ok(report)
    }

    /// Parses a YAML configuration **without validating it**, for tools that report every
    /// problem at once (`parti validate`): call [`validate`](Config::validate) on the result.
    ///
    /// Errors are those of parsing only (syntax, unknown keys, values of the wrong type), as
    /// for [`from_yaml_str`](Config::from_yaml_str).
    pub fn parse_yaml_str(yaml: &str) -> Result<LoadReport> {
        parse_yaml(yaml)
    }

    /// Reads a YAML configuration file and [validates](Config::validate) it, as
    /// [`from_yaml_str`](Config::from_yaml_str) (warnings are logged).
    ///
    /// An unreadable file is [`Error::ConfigFile`]; bad contents are [`Error::InvalidConfig`].
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let yaml = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&yaml)
    }

    /// Writes the configuration as YAML that [`from_yaml_str`](Config::from_yaml_str) reads
    /// back to an equal `Config` (durations as `"1m30s"`-style strings).
    pub fn to_yaml_string(&self) -> Result<String> {
        serde_yaml_ng::to_string(self).map_err(|e| invalid(DOCUMENT, e.to_string()))
    }
}

/// Parses without validating: the configuration, with the Go keys mapped or reported.
pub(crate) fn parse_yaml(yaml: &str) -> Result<LoadReport> {
    if is_empty_document(yaml) {
        return Ok(LoadReport {
            config: Config::default(),
            warnings: Vec::new(),
        });
    }
    let seen = RefCell::new(Seen::default());
    let deserializer = Filter::new(
        serde_yaml_ng::Deserializer::from_str(yaml),
        Level::Root,
        &seen,
    );
    let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let violation = path_violation(&e);
        Error::InvalidConfig {
            violations: vec![violation],
        }
    })?;
    let warnings: Vec<ConfigWarning> = compat::apply(&mut config, seen.into_inner())
        .map_err(|violations| Error::InvalidConfig { violations })?;
    Ok(LoadReport { config, warnings })
}

/// Only blank lines, comments and document markers: YAML's null document.
fn is_empty_document(yaml: &str) -> bool {
    yaml.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// A violation named by the path at which deserialisation failed. For an unknown key the path
/// ends with that key.
pub(crate) fn path_violation<E: Display>(err: &serde_path_to_error::Error<E>) -> ConfigViolation {
    let path = err.path().to_string();
    let message = err.inner().to_string();
    // `?` marks where a key could not even be read (a syntax error): name the enclosing section.
    let path = path.trim_end_matches('?').trim_end_matches('.');
    if path.is_empty() {
        return ConfigViolation::new(DOCUMENT, message);
    }
    let reason = strip_path_prefix(&message, path);
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let reason = suggest::with_suggestion(reason, key, compat::extra_candidates(parent));
    ConfigViolation::new(path, reason)
}

/// serde_yaml_ng prefixes its messages with its own path (the field's, or its parent's for an
/// unknown key); the violation already carries the path, so drop the repetition.
fn strip_path_prefix<'a>(message: &'a str, path: &str) -> &'a str {
    let mut prefix = path;
    loop {
        if let Some(rest) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(": "))
        {
            return rest;
        }
        match prefix.rfind('.') {
            Some(i) => prefix = &prefix[..i],
            None => return message,
        }
    }
}
