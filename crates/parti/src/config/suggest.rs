//! "Did you mean …?" for a misspelt key or variable: the closest known name by edit distance.

/// The candidate closest to `unknown`, if it is close enough to be a likely misspelling.
///
/// Case is ignored when measuring, so `HeartbeatInterval` suggests `heartbeatInterval`; a name
/// qualifies when at most 3 edits away and fewer than half its own length, so that short names do
/// not suggest anything at all.
#[cfg(feature = "yaml")]
pub(crate) fn closest<'a>(
    unknown: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let wanted = unknown.to_ascii_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != unknown)
        .map(|c| (edit_distance(&wanted, &c.to_ascii_lowercase()), c))
        .filter(|(distance, c)| *distance <= 3 && *distance * 2 < c.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// The reason of an unknown key: a suggestion when one is close, the known keys otherwise.
#[cfg(feature = "yaml")]
pub(crate) fn unknown_field(key: &str, known: &[&str]) -> String {
    match closest(key, known.iter().copied()) {
        Some(name) => format!("unknown field `{key}`, did you mean `{name}`?"),
        None => {
            let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown field `{key}`, expected one of {}",
                known.join(", ")
            )
        }
    }
}

/// Adds "did you mean" to serde's unknown-field message for `key` when a known key is close:
/// ``unknown field `heartbeatIntervl`, expected one of `workerIdPrefix`, … at line 1 column 1``
/// becomes ``unknown field `heartbeatIntervl`, did you mean `heartbeatInterval`? at line 1
/// column 1``. The known keys are those the message lists, plus `extra`. Any other message is
/// returned as is.
#[cfg(feature = "yaml")]
pub(crate) fn with_suggestion(message: &str, key: &str, extra: &[&str]) -> String {
    let head = format!("unknown field `{key}`");
    let Some(rest) = message.strip_prefix(&head) else {
        return message.to_owned();
    };
    // Position, if any, as the YAML deserializer appends it.
    let (listing, position) = match rest.rfind(" at line ") {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let listed = listing
        .split_once("expected")
        .map_or("", |(_, names)| names)
        .split('`')
        .skip(1)
        .step_by(2);
    match closest(key, listed.chain(extra.iter().copied())) {
        Some(name) => format!("{head}, did you mean `{name}`?{position}"),
        None => message.to_owned(),
    }
}

/// Levenshtein distance over bytes (the names are ASCII).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn closest_ignores_case_and_far_names() {
        let names = ["heartbeatInterval", "heartbeatTtl", "electionTtl"];
        assert_eq!(
            closest("heartbeatIntervl", names),
            Some("heartbeatInterval")
        );
        assert_eq!(
            closest("HeartbeatInterval", names),
            Some("heartbeatInterval")
        );
        assert_eq!(closest("heartbeat_ttl", names), Some("heartbeatTtl"));
        assert_eq!(closest("replicas", names), None);
        assert_eq!(closest("ttl", ["tl", "x"]), None, "too short to guess");
    }

    #[test]
    fn serde_messages_get_a_suggestion() {
        let message = "unknown field `replicaz`, expected one of `stableId`, `replicas` \
                       at line 2 column 3";
        assert_eq!(
            with_suggestion(message, "replicaz", &[]),
            "unknown field `replicaz`, did you mean `replicas`? at line 2 column 3"
        );
        let message = "unknown field `handofBucket`, expected `stableId`";
        assert_eq!(
            with_suggestion(message, "handofBucket", &["handoffBucket"]),
            "unknown field `handofBucket`, did you mean `handoffBucket`?"
        );
        let far = "unknown field `zzz`, expected `stableId`";
        assert_eq!(with_suggestion(far, "zzz", &[]), far);
        assert_eq!(with_suggestion("invalid type", "x", &["x"]), "invalid type");
    }

    #[test]
    fn unknown_field_lists_the_keys_when_nothing_is_close() {
        assert_eq!(
            unknown_field("timout", &["timeout", "jitter"]),
            "unknown field `timout`, did you mean `timeout`?"
        );
        assert_eq!(
            unknown_field("zzz", &["timeout", "jitter"]),
            "unknown field `zzz`, expected one of `timeout`, `jitter`"
        );
    }
}
