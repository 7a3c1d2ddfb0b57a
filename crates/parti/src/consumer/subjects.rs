//! Filter subjects rendered from an assignment, NATS name rules and subject overlap.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::partition::{Partition, WorkerId};

/// The placeholder of the subject template.
pub(crate) const PLACEHOLDER: &str = "{partition}";

/// Renders the template for every partition: de-duplicated and sorted (a `BTreeSet`).
///
/// More than `max` distinct subjects is an error rather than a truncated filter.
pub(crate) fn render(
    template: &str,
    partitions: &[Partition],
    max: usize,
) -> Result<BTreeSet<String>> {
    let subjects: BTreeSet<String> = partitions
        .iter()
        .map(|p| template.replace(PLACEHOLDER, &p.subject_key()))
        .collect();
    if subjects.len() > max {
        return Err(Error::TooManySubjects {
            count: subjects.len(),
            max,
        });
    }
    Ok(subjects)
}

/// Why a template cannot be used, if it cannot.
pub(crate) fn template_problem(template: &str) -> Option<String> {
    if !template.contains(PLACEHOLDER) {
        return Some(format!("must contain {PLACEHOLDER}"));
    }
    let sample = template.replace(PLACEHOLDER, "p");
    (!is_valid_filter(&sample)).then(|| format!("{template:?} does not render to a valid subject"))
}

/// A valid filter subject: non-empty tokens without whitespace; `*` and `>` only as whole
/// tokens, `>` only last.
pub(crate) fn is_valid_filter(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(char::is_whitespace)
            && (!t.contains('*') || *t == "*")
            && (!t.contains('>') || (*t == ">" && i == tokens.len() - 1))
    })
}

/// A valid NATS stream or consumer name (no `.`, `*`, `>`, path separators or whitespace).
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
}

/// The durable consumer of a worker: `{prefix}-{worker}`, every character outside
/// `[A-Za-z0-9_-]` replaced by `_` so the name is always valid.
pub(crate) fn durable_name(prefix: &str, worker: &WorkerId) -> String {
    format!("{prefix}-{worker}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The filter of a paused consumer: one subject nobody publishes to, unique per consumer so
/// that it never overlaps another consumer on a work-queue stream.
pub(crate) fn paused_subject(durable: &str) -> String {
    format!("_parti.paused.{durable}")
}

/// Whether some subject matches both filters.
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for (x, y) in a.iter().zip(&b) {
        if *x == ">" || *y == ">" {
            return true;
        }
        if *x != "*" && *y != "*" && x != y {
            return false;
        }
    }
    a.len() == b.len()
}

/// Whether the literal `subject` matches `filter` (`*`: one token, `>`: one or more).
pub(crate) fn is_match(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for f in filter.split('.') {
        match (f, subject.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (f, Some(s)) if f == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(keys: &[&[&str]]) -> Vec<Partition> {
        keys.iter()
            .map(|k| Partition::new(k.iter().copied(), 1).unwrap())
            .collect()
    }

    #[test]
    fn renders_sorted_and_deduplicated() {
        let p = parts(&[&["b"], &["a", "x"], &["c"], &["b"]]);
        let subjects = render("events.{partition}", &p, 10).unwrap();
        let v: Vec<&str> = subjects.iter().map(String::as_str).collect();
        assert_eq!(v, ["events.a.x", "events.b", "events.c"]);
    }

    #[test]
    fn placeholder_may_appear_anywhere_and_more_than_once() {
        let p = parts(&[&["t1"]]);
        let subjects = render("{partition}.in.{partition}.>", &p, 1).unwrap();
        assert_eq!(subjects.into_iter().collect::<Vec<_>>(), ["t1.in.t1.>"]);
    }

    #[test]
    fn too_many_subjects_is_a_clear_error() {
        let p = parts(&[&["a"], &["b"], &["c"]]);
        let err = render("e.{partition}", &p, 2).unwrap_err();
        assert!(
            matches!(err, Error::TooManySubjects { count: 3, max: 2 }),
            "{err}"
        );
        // Duplicates do not count twice.
        let dup = parts(&[&["a"], &["a"]]);
        assert_eq!(render("e.{partition}", &dup, 1).unwrap().len(), 1);
    }

    #[test]
    fn empty_assignment_renders_nothing() {
        assert!(render("e.{partition}", &[], 5).unwrap().is_empty());
    }

    #[test]
    fn templates_are_checked() {
        assert!(template_problem("events.{partition}").is_none());
        assert!(template_problem("events.{partition}.>").is_none());
        assert!(template_problem("events").is_some());
        assert!(template_problem("events..{partition}").is_some());
        assert!(template_problem("ev ents.{partition}").is_some());
        assert!(template_problem(">.{partition}").is_some());
    }

    #[test]
    fn durable_names_are_sanitised() {
        assert_eq!(
            durable_name("parti", &WorkerId::new("worker-3")),
            "parti-worker-3"
        );
        assert_eq!(durable_name("p", &WorkerId::new("a.b c*>")), "p-a_b_c__");
        assert!(is_valid_name(&durable_name(
            "x",
            &WorkerId::new("../..\\ w")
        )));
    }

    #[test]
    fn overlap_follows_nats_wildcards() {
        assert!(overlaps("a.b", "a.b"));
        assert!(!overlaps("a.b", "a.c"));
        assert!(overlaps("a.*", "a.c"));
        assert!(overlaps("a.>", "a.c.d"));
        assert!(!overlaps("a.>", "a"));
        assert!(!overlaps("a.b", "a.b.c"));
        assert!(overlaps(">", "x"));
        assert!(overlaps("*.b", "a.*"));
        assert!(!overlaps("_parti.paused.w", "events.>"));
    }

    #[test]
    fn subjects_match_filters() {
        assert!(is_match("a.b", "a.b"));
        assert!(!is_match("a.b", "a.c"));
        assert!(!is_match("a.b", "a.b.c"));
        assert!(!is_match("a.b.c", "a.b"));
        assert!(is_match("a.*", "a.x"));
        assert!(!is_match("a.*", "a.x.y"));
        assert!(is_match("a.>", "a.x.y"));
        assert!(!is_match("a.>", "a"));
        assert!(is_match("*.b.>", "x.b.c"));
    }
}
