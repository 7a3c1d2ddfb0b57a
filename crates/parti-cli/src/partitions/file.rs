//! The partition list file of `parti worker`: a YAML or JSON list of `{keys: [...], weight: N}`.
//!
//! ```yaml
//! - keys: [tenant-a, sensor-1]
//!   weight: 200
//! - keys: [tenant-b]          # weight 0 or left out: the default weight (100)
//! ```
//!
//! A file ending in `.json` is read as JSON, anything else as YAML (which also reads most JSON).
//! Invalid keys, unknown fields and duplicates are errors that name the partition.

use std::path::Path;

use anyhow::Context as _;
use parti::Partition;

/// Reads and checks a partition list file.
pub(crate) fn load(path: &Path) -> anyhow::Result<Vec<Partition>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the partition list {}", path.display()))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse(&text, json).with_context(|| format!("invalid partition list {}", path.display()))
}

/// Parses a partition list (JSON or YAML) and rejects duplicates.
pub(crate) fn parse(text: &str, json: bool) -> anyhow::Result<Vec<Partition>> {
    let partitions: Vec<Partition> = if json {
        serde_json::from_str(text)?
    } else {
        serde_yaml_ng::from_str(text)?
    };
    parti::partition::check_unique(&partitions)?;
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_lists() {
        let yaml = "- keys: [a, b]\n  weight: 5\n- keys: [c]\n";
        let parts = parse(yaml, false).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].subject_key(), "a.b");
        assert_eq!(
            parts[1].effective_weight(),
            parti::partition::DEFAULT_WEIGHT
        );
        let json = r#"[{"keys": ["a", "b"], "weight": 5}, {"keys": ["c"]}]"#;
        assert_eq!(parse(json, true).unwrap(), parts);
        assert_eq!(parse(json, false).unwrap(), parts, "YAML reads JSON too");
    }

    #[test]
    fn errors_name_the_problem() {
        let dup = parse("- keys: [a]\n- keys: [a]\n  weight: 3\n", false).unwrap_err();
        assert!(format!("{dup:#}").contains("duplicate"), "{dup:#}");
        let bad = parse("- keys: [a.b]\n", false).unwrap_err();
        assert!(format!("{bad:#}").contains("a.b"), "{bad:#}");
        let unknown = parse("- keys: [a]\n  wieght: 3\n", false).unwrap_err();
        assert!(format!("{unknown:#}").contains("wieght"), "{unknown:#}");
        assert!(parse("{}", true).is_err());
    }
}
