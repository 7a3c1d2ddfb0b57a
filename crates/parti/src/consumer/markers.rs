//! Hand-off bookkeeping kept in the durable consumers' metadata.
//!
//! On streams that keep processed messages (Limits, Interest), a worker that gains a subject
//! must know where the previous owners stopped. Every durable of the group carries true
//! statements of the form "every message of subject `s` below sequence `n` was processed":
//!
//! - a durable that **holds** `s` with no pending drain: its ack floor + 1;
//! - `parti.pending.{s}` = `n` while the backlog of a gained `s` is being drained (the drain
//!   started at `n`; until it finishes, the ack floor says nothing about `s`);
//! - `parti.released.{s}` = `n` written, in the same configuration update, when a durable
//!   gives `s` up.
//!
//! The gainer drains from the **largest** statement found (the maximum of true lower bounds is
//! one). With no statement at all it drains from the start of the stream. Dropping a
//! statement (a deleted consumer, a pruned marker) only means more duplicates, never a loss.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_nats::jetstream::consumer::Info;

use super::api;

pub(crate) const GROUP: &str = "parti.group";
pub(crate) const WORKER: &str = "parti.worker";
pub(crate) const CATCHUP: &str = "parti.catchup";
const PENDING: &str = "parti.pending.";
const RELEASED: &str = "parti.released.";

/// Only the keys Parti owns (the server adds its own `_nats.*` keys to what it returns).
pub(crate) fn ours(metadata: &HashMap<String, String>) -> HashMap<String, String> {
    metadata
        .iter()
        .filter(|(k, _)| k.starts_with("parti."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(crate) fn pending_key(subject: &str) -> String {
    format!("{PENDING}{subject}")
}

pub(crate) fn released_key(subject: &str) -> String {
    format!("{RELEASED}{subject}")
}

fn number(metadata: &HashMap<String, String>, key: &str) -> Option<u64> {
    metadata.get(key).and_then(|v| v.parse().ok())
}

/// The drain start recorded for a subject whose backlog is still being drained.
pub(crate) fn pending(metadata: &HashMap<String, String>, subject: &str) -> Option<u64> {
    number(metadata, &pending_key(subject))
}

/// Subjects with a pending drain.
pub(crate) fn pending_subjects(metadata: &HashMap<String, String>) -> BTreeSet<String> {
    metadata
        .keys()
        .filter_map(|k| k.strip_prefix(PENDING).map(str::to_owned))
        .collect()
}

/// Keeps at most `max` released markers, dropping the oldest positions first.
pub(crate) fn prune_released(metadata: &mut HashMap<String, String>, max: usize) {
    let mut released: Vec<(u64, String)> = metadata
        .iter()
        .filter(|(k, _)| k.starts_with(RELEASED))
        .map(|(k, v)| (v.parse().unwrap_or(0), k.clone()))
        .collect();
    if released.len() <= max {
        return;
    }
    released.sort();
    let excess = released.len() - max;
    for (_, key) in released.into_iter().take(excess) {
        metadata.remove(&key);
    }
}

/// For each subject, the largest statement found in the group (0: none, drain from the start).
///
/// `me` is our own durable: its released markers count (we may regain what we gave up), its
/// filter does not (we are gaining the subjects because it does not hold them).
pub(crate) fn lower_bounds(
    group: &str,
    me: &str,
    consumers: &[Info],
    own: &HashMap<String, String>,
    subjects: &BTreeSet<String>,
) -> BTreeMap<String, u64> {
    let mut bounds: BTreeMap<String, u64> = subjects.iter().map(|s| (s.clone(), 0)).collect();
    let mut raise = |s: &str, n: u64| {
        if let Some(b) = bounds.get_mut(s) {
            *b = (*b).max(n);
        }
    };
    for s in subjects {
        if let Some(n) = number(own, &released_key(s)) {
            raise(s, n);
        }
    }
    for info in consumers {
        let meta = &info.config.metadata;
        if info.name == me || meta.get(GROUP).map(String::as_str) != Some(group) {
            continue;
        }
        let held: BTreeSet<String> = api::info_filters(&info.config).into_iter().collect();
        for s in subjects {
            let statement = if held.contains(s) {
                Some(pending(meta, s).unwrap_or(info.ack_floor.stream_sequence + 1))
            } else {
                number(meta, &released_key(s))
            };
            if let Some(n) = statement {
                raise(s, n);
            }
        }
    }
    bounds
}

/// A consumer's info as the server reports it, for tests: `name` with `filters`, the group
/// marker (if any) plus `meta`, and (delivered, ack floor) stream positions.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn consumer_info(
    name: &str,
    group: Option<&str>,
    filters: &[&str],
    (delivered, ack_floor): (u64, u64),
    meta: &[(&str, &str)],
) -> Info {
    let mut metadata: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if let Some(group) = group {
        metadata.insert(GROUP.into(), group.into());
    }
    let json = serde_json::json!({
        "stream_name": "S", "name": name, "created": "2024-01-01T00:00:00Z",
        "config": { "durable_name": name, "ack_policy": "explicit", "deliver_policy": "all",
                    "replay_policy": "instant",
                    "filter_subjects": filters, "metadata": metadata },
        "delivered": { "consumer_seq": 0, "stream_seq": delivered },
        "ack_floor": { "consumer_seq": 0, "stream_seq": ack_floor },
        "num_ack_pending": 0, "num_redelivered": 0, "num_waiting": 0, "num_pending": 0
    });
    serde_json::from_value(json).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, group: &str, filters: &[&str], floor: u64, meta: &[(&str, &str)]) -> Info {
        consumer_info(name, Some(group), filters, (floor, floor), meta)
    }

    fn set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn takes_the_largest_true_statement() {
        let consumers = vec![
            // Crashed long ago, still holds e.1 with a low floor.
            info("g-a", "g", &["e.1"], 10, &[]),
            // Released e.1 much later.
            info("g-b", "g", &["e.9"], 900, &[("parti.released.e.1", "800")]),
            // Holds e.2 but is still draining it from 50.
            info("g-c", "g", &["e.2"], 1000, &[("parti.pending.e.2", "50")]),
            // Another group: ignored.
            info("h-x", "h", &["e.1", "e.3"], 5000, &[]),
        ];
        let own = HashMap::from([(released_key("e.3"), "70".to_owned())]);
        let b = lower_bounds(
            "g",
            "g-me",
            &consumers,
            &own,
            &set(&["e.1", "e.2", "e.3", "e.4"]),
        );
        assert_eq!(b["e.1"], 800);
        assert_eq!(b["e.2"], 50);
        assert_eq!(b["e.3"], 70);
        assert_eq!(b["e.4"], 0, "never owned: from the start");
    }

    #[test]
    fn own_filter_is_not_a_statement() {
        let consumers = vec![info("g-me", "g", &["e.1"], 500, &[])];
        let b = lower_bounds("g", "g-me", &consumers, &HashMap::new(), &set(&["e.1"]));
        assert_eq!(b["e.1"], 0);
    }

    #[test]
    fn prunes_oldest_released_markers() {
        let mut m: HashMap<String, String> = (0..5)
            .map(|i| (released_key(&format!("e.{i}")), (i * 10).to_string()))
            .collect();
        m.insert(GROUP.into(), "g".into());
        prune_released(&mut m, 3);
        assert_eq!(m.len(), 4);
        assert!(!m.contains_key(&released_key("e.0")));
        assert!(!m.contains_key(&released_key("e.1")));
        assert!(m.contains_key(&released_key("e.4")));
    }
}
