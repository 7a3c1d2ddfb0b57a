//! Work-queue overlap: who holds a subject this worker was assigned.
//!
//! What to take from a consumer of the same group that kept such a subject too long (a
//! crashed or stuck worker) is decided by [`plan::takeover`](super::plan::takeover) and done
//! by the [reconciler](super::reconcile).

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::consumer;

use super::subjects::overlaps;
use super::{api, markers};

/// Another consumer whose filter overlaps a subject we want.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    /// The consumer as listed (its name and configuration, which a takeover rewrites).
    pub(crate) info: consumer::Info,
    /// A durable of our group (same prefix), as opposed to someone else's consumer.
    pub(crate) in_group: bool,
}

/// Among the stream's `consumers`, the others (not `durable`) whose filter overlaps a gained
/// subject, by subject. Catch-up consumers are never in the group.
pub(crate) fn holders(
    group: &str,
    durable: &str,
    consumers: Vec<consumer::Info>,
    gained: &BTreeSet<String>,
) -> BTreeMap<String, Vec<Holder>> {
    let mut by_subject: BTreeMap<String, Vec<Holder>> = BTreeMap::new();
    for info in consumers {
        if info.name == durable {
            continue;
        }
        let filters = api::info_filters(&info.config);
        let meta = &info.config.metadata;
        let in_group = meta.get(markers::GROUP).map(String::as_str) == Some(group)
            && !meta.contains_key(markers::CATCHUP);
        for s in gained {
            if filters.is_empty() || filters.iter().any(|f| overlaps(f, s)) {
                by_subject.entry(s.clone()).or_default().push(Holder {
                    info: info.clone(),
                    in_group,
                });
            }
        }
    }
    by_subject
}
