//! The publish history writer: one task per leader term that turns each publish into a
//! [`HistoryEntry`] under `history.<version>` of the assignment bucket and keeps the last
//! [`HISTORY_KEEP`]. Off the publish path: the leader hands a publish over without waiting
//! (a full queue drops the entry, never delays a publish), and the task's store calls are
//! bounded by `operationTimeout`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::assignment::AssignmentMap;
use crate::partition::{Partition, WorkerId};
use crate::records::{HISTORY_KEEP, HISTORY_KEY_PREFIX, Intents, history_key};
use crate::store::{Bucket, codec};

/// Publishes waiting to be written; beyond it they are dropped (and counted).
const QUEUE: usize = 8;

/// One publish, as the leader hands it over.
#[derive(Debug)]
pub(crate) struct Publish {
    /// The map before (what the leader last published).
    pub(crate) before: AssignmentMap,
    /// The map committed.
    pub(crate) after: AssignmentMap,
    /// The intents it was placed under (for the reason of each move).
    pub(crate) intents: Intents,
    pub(crate) version: u64,
    pub(crate) term: u64,
    /// When it was committed (Unix ms).
    pub(crate) at_ms: u64,
    pub(crate) reason: String,
}

/// The leader's side: hands publishes to the writer task without waiting.
#[derive(Debug, Clone)]
pub(crate) struct HistorySender(mpsc::Sender<Publish>);

impl HistorySender {
    /// Queues `publish`; a full queue drops it (the history loses an entry, counted in
    /// `parti_history_dropped_total`).
    pub(crate) fn record(&self, publish: Publish) {
        if let Err(e) = self.0.try_send(publish) {
            metrics::counter!("parti_history_dropped_total").increment(1);
            tracing::warn!(error = %e, "publish history entry dropped");
        }
    }
}

/// The writer task of one term: owned by the runner, stopped and awaited when the term ends.
#[derive(Debug)]
pub(crate) struct HistoryWriter {
    cancel: CancellationToken,
    task: AbortOnDropHandle<()>,
}

impl HistoryWriter {
    /// Starts the task writing into `bucket`, each store call bounded by `timeout`.
    pub(crate) fn spawn(bucket: Arc<dyn Bucket>, timeout: Duration) -> (Self, HistorySender) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let cancel = CancellationToken::new();
        let task =
            AbortOnDropHandle::new(tokio::spawn(write_all(bucket, timeout, rx, cancel.clone())));
        (Self { cancel, task }, HistorySender(tx))
    }

    /// Stops the task (an entry being written is abandoned) and waits for it.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await
            && !e.is_cancelled()
        {
            tracing::error!(error = %e, "publish history task failed");
        }
    }
}

async fn write_all(
    bucket: Arc<dyn Bucket>,
    timeout: Duration,
    mut rx: mpsc::Receiver<Publish>,
    cancel: CancellationToken,
) {
    // The versions in the bucket, oldest first: listed before the first write of the term.
    let mut kept: Option<VecDeque<u64>> = None;
    loop {
        let publish = tokio::select! {
            () = cancel.cancelled() => return,
            next = rx.recv() => match next {
                Some(publish) => publish,
                None => return,
            },
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = write_one(&*bucket, timeout, publish, &mut kept) => {}
        }
    }
}

/// Writes one entry and trims the oldest beyond [`HISTORY_KEEP`]. Failures are logged: the
/// history is best effort.
async fn write_one(
    bucket: &dyn Bucket,
    timeout: Duration,
    publish: Publish,
    kept: &mut Option<VecDeque<u64>>,
) {
    let version = publish.version;
    // Computing the moves reads both maps: on the blocking pool for big ones.
    let entry = match tokio::task::spawn_blocking(move || {
        history_entry(
            &publish.before,
            &publish.after,
            &publish.intents,
            (
                publish.version,
                publish.term,
                publish.at_ms,
                &publish.reason,
            ),
        )
    })
    .await
    {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!(error = %e, version, "cannot build a publish history entry");
            return;
        }
    };
    let value = match codec::encode(&entry) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!(error = %e, version, "cannot encode a publish history entry");
            return;
        }
    };
    match tokio::time::timeout(timeout, bucket.put(&history_key(version), value)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, version, "publish history entry not written");
            return;
        }
        Err(_) => {
            tracing::warn!(version, "publish history entry not written: timed out");
            return;
        }
    }
    if kept.is_none() {
        let pattern = format!("{HISTORY_KEY_PREFIX}>");
        match tokio::time::timeout(timeout, bucket.list(&pattern)).await {
            Ok(Ok(entries)) => {
                let mut versions: Vec<u64> = entries
                    .iter()
                    .filter_map(|e| e.key.strip_prefix(HISTORY_KEY_PREFIX)?.parse().ok())
                    .collect();
                versions.sort_unstable();
                *kept = Some(versions.into());
            }
            _ => {
                tracing::warn!("cannot list the publish history; not trimmed this time");
                return;
            }
        }
    }
    let Some(history) = kept.as_mut() else {
        return;
    };
    if history.back().is_none_or(|last| *last < version) {
        history.push_back(version);
    }
    while history.len() > HISTORY_KEEP {
        let Some(oldest) = history.pop_front() else {
            break;
        };
        match tokio::time::timeout(timeout, bucket.delete(&history_key(oldest), None)).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!(oldest, "cannot trim the publish history"),
        }
    }
}

/// Why a publish with `reason` moves `partition` from `from` (its owner in `before`; `None`
/// when it had none) to `to` (its owner in `after`), as `parti plan` and `parti history` say
/// it: `new partition`, `crash of worker-3` (an emergency), `worker-3 left`, `drain of
/// worker-3`, `pin`, `worker-3 joined`, `pacing step`, `partition list change`, `capacity or
/// label change`, `rebalance`.
pub fn move_reason(
    partition: &Partition,
    from: Option<&WorkerId>,
    to: &WorkerId,
    before: &AssignmentMap,
    after: &AssignmentMap,
    intents: &Intents,
    reason: &str,
) -> String {
    let Some(from) = from else {
        return "new partition".into();
    };
    if !after.contains_worker(from) {
        return if reason == "emergency" {
            format!("crash of {from}")
        } else {
            format!("{from} left")
        };
    }
    if intents.drained.contains(from) {
        return format!("drain of {from}");
    }
    if intents.pinned.get(&partition.subject_key()) == Some(to) {
        return "pin".into();
    }
    if !before.contains_worker(to) {
        return format!("{to} joined");
    }
    match reason {
        "paced" => "pacing step".into(),
        "partitions_changed" => "partition list change".into(),
        "placement" => "capacity or label change".into(),
        _ => "rebalance".into(),
    }
}

/// The history entry of a publish from `before` to `after` (see [`HistoryEntry`]).
pub(crate) fn history_entry(
    before: &AssignmentMap,
    after: &AssignmentMap,
    intents: &Intents,
    (version, term, at_ms, reason): (u64, u64, u64, &str),
) -> crate::records::HistoryEntry {
    let owners = before.owners();
    let mut moved = 0;
    let mut moves = Vec::new();
    let mut all: Vec<(&Partition, Option<&WorkerId>, &WorkerId)> = after
        .iter()
        .flat_map(|(to, held)| {
            let owners = &owners;
            held.iter().filter_map(move |p| {
                let from = owners.get(p.keys()).copied();
                (from != Some(to)).then_some((p, from, to))
            })
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (p, from, to) in all {
        moved += 1;
        if moves.len() < crate::records::HISTORY_MOVES_LISTED {
            moves.push(crate::records::HistoryMove {
                partition: p.subject_key(),
                from: from.cloned(),
                to: to.clone(),
                why: move_reason(p, from, to, before, after, intents, reason),
            });
        }
    }
    crate::records::HistoryEntry {
        version,
        term,
        at_ms,
        reason: reason.to_owned(),
        workers: after.len(),
        partitions: after.partition_count(),
        moved,
        moves,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::partition::{Partition, WorkerId};
    use crate::records::read_history;
    use crate::store::{BucketSpec, MemoryStore, Store};

    fn publish(version: u64, before: &AssignmentMap, after: &AssignmentMap) -> Publish {
        Publish {
            before: before.clone(),
            after: after.clone(),
            intents: Intents::default(),
            version,
            term: 1,
            at_ms: version,
            reason: "scale_up".into(),
        }
    }

    #[tokio::test]
    async fn entries_are_written_and_only_the_last_ones_kept() {
        let store = MemoryStore::new();
        let bucket = store.bucket(&BucketSpec::new("a")).await.unwrap();
        let (writer, sender) = HistoryWriter::spawn(Arc::clone(&bucket), Duration::from_secs(1));
        let (w0, w1) = (WorkerId::new("w0"), WorkerId::new("w1"));
        let p = Partition::new(["p"], 1).unwrap();
        let mut before = AssignmentMap::with_workers([&w0]);
        before.push(&w0, p.clone());
        let mut after = AssignmentMap::with_workers([&w0, &w1]);
        after.push(&w1, p);
        let last = HISTORY_KEEP as u64 + 5;
        for version in 1..=last {
            // Waits for room rather than dropping: this test wants every entry.
            sender
                .0
                .send(publish(version, &before, &after))
                .await
                .unwrap();
        }
        // Closing the queue lets the task write everything queued, then end.
        drop(sender);
        writer.task.await.unwrap();
        let (entries, garbage) = read_history(&*bucket).await.unwrap();
        assert!(garbage.is_empty());
        assert_eq!(entries.len(), HISTORY_KEEP);
        assert_eq!(entries.last().unwrap().version, last);
        assert_eq!(entries[0].version, 6);
        assert_eq!(entries[0].moves[0].why, "w1 joined");
    }
}
