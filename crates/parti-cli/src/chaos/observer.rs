//! The observer: follows the `cluster` key of the assignment bucket from outside the workers,
//! recording every committed version it sees as a [`VersionRecord`] (source `cluster`) and
//! keeping the latest commit for the runner's "has the fleet settled" check.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use parti::ownership::now_ns;
use parti::records::{CLUSTER_KEY, ClusterRecord};
use parti::store::{Bucket, WatchEvent, codec};
use parti_testkit::checker::VersionRecord;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Pause before watching again after the watch failed or ended (a server restart).
const REWATCH: Duration = Duration::from_millis(100);

/// Watches until `cancel`; returns every version seen. A value that does not decode (the
/// garbage fault) is skipped.
pub(crate) async fn run(
    bucket: Arc<dyn Bucket>,
    latest: watch::Sender<Option<ClusterRecord>>,
    cancel: CancellationToken,
) -> Vec<VersionRecord> {
    let mut seen = Vec::new();
    let follow = async {
        loop {
            if let Ok(mut events) = bucket.watch(CLUSTER_KEY).await {
                while let Some(event) = events.next().await {
                    let entry = match event {
                        Ok(WatchEvent::InitApply(entry) | WatchEvent::Put(entry)) => entry,
                        _ => continue,
                    };
                    let Ok(record) =
                        codec::decode::<ClusterRecord>(bucket.name(), &entry.key, &entry.value)
                    else {
                        continue;
                    };
                    seen.push(VersionRecord {
                        at_ns: now_ns(),
                        source: "cluster".into(),
                        version: record.version,
                    });
                    latest.send_replace(Some(record));
                }
            }
            tokio::time::sleep(REWATCH).await;
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = follow => {}
    }
    seen
}
