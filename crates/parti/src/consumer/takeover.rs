//! Work-queue overlap: who holds a subject this worker was assigned, and taking it from a
//! consumer of the same group that kept it too long (a crashed or stuck worker).

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::consumer;
use tokio::time::Instant;

use super::api::{self, ApiError};
use super::subjects::{overlaps, paused_subject};
use super::{Shared, markers};
use crate::error::Result;

/// Another consumer whose filter overlaps a subject we want.
pub(crate) struct Holder {
    pub(crate) info: consumer::Info,
    /// A durable of our group (same prefix), as opposed to someone else's consumer.
    pub(crate) in_group: bool,
}

/// Other consumers whose filter overlaps a gained subject, by subject.
pub(crate) async fn holders(
    shared: &Shared,
    durable: &str,
    gained: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<Holder>>> {
    let consumers = api::list(&shared.stream).await?;
    let prefix = &shared.config.consumer_prefix;
    let mut by_subject: BTreeMap<String, Vec<Holder>> = BTreeMap::new();
    for info in consumers {
        if info.name == durable {
            continue;
        }
        let filters = api::info_filters(&info.config);
        let meta = &info.config.metadata;
        let in_group =
            meta.get(markers::GROUP) == Some(prefix) && !meta.contains_key(markers::CATCHUP);
        for s in gained {
            if filters.is_empty() || filters.iter().any(|f| overlaps(f, s)) {
                by_subject.entry(s.clone()).or_default().push(Holder {
                    info: info.clone(),
                    in_group,
                });
            }
        }
    }
    Ok(by_subject)
}

/// Takes subjects blocked for longer than `takeoverAfter` from the group consumers that
/// hold them (crashed or stuck workers). Returns the subjects freed.
pub(crate) async fn take_over(
    shared: &Shared,
    blocked: &BTreeMap<String, Instant>,
    holders: &BTreeMap<String, Vec<Holder>>,
) -> BTreeSet<String> {
    let now = Instant::now();
    let after = shared.config.takeover_after;
    let due: BTreeSet<String> = holders
        .iter()
        .filter(|(s, hs)| {
            hs.iter().all(|h| h.in_group)
                && blocked
                    .get(*s)
                    .is_some_and(|since| now.duration_since(*since) >= after)
        })
        .map(|(s, _)| s.clone())
        .collect();
    let mut victims: BTreeMap<String, consumer::Info> = BTreeMap::new();
    for s in &due {
        for h in &holders[s] {
            victims
                .entry(h.info.name.clone())
                .or_insert_with(|| h.info.clone());
        }
    }
    let mut freed = due.clone();
    for (name, info) in victims {
        let mut config = info.config.clone();
        let kept: Vec<String> = api::info_filters(&config)
            .into_iter()
            .filter(|f| !due.iter().any(|s| overlaps(f, s)))
            .collect();
        config.filter_subject = String::new();
        config.filter_subjects = if kept.is_empty() {
            vec![paused_subject(&name)]
        } else {
            kept
        };
        tracing::warn!(from = %name, subjects = due.len(), after = ?after, "taking over assigned subjects still held by another worker's consumer");
        match api::update(&shared.stream, config).await {
            Ok(_) | Err(ApiError::NotFound) => {}
            Err(e) => {
                tracing::warn!(from = %name, error = %e.message(), "takeover failed");
                freed.retain(|s| !holders[s].iter().any(|h| h.info.name == name));
            }
        }
    }
    freed
}
