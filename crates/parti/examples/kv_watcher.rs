//! Watches a Parti cluster's published assignment from outside: every publish is printed with
//! its version, reason, phase and per-worker load. Read-only.
//!
//! ```sh
//! cargo run -p parti --example kv_watcher -- nats://127.0.0.1:4222
//! ```

use std::time::Duration;

use futures::StreamExt;
use parti::records::read_published;
use parti::store::{BucketSpec, NatsStore, Store, WatchEvent};

/// Prints a line per published version until `versions` were seen (or for ever); returns the
/// versions seen.
pub async fn run(
    url: &str,
    bucket: &str,
    versions: Option<usize>,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let nats = async_nats::connect(url).await?;
    let store = NatsStore::new(async_nats::jetstream::new(nats))
        .with_operation_timeout(Duration::from_secs(2));
    let bucket = store.bucket(&BucketSpec::new(bucket)).await?;
    let mut watch = bucket.watch("cluster").await?;
    let mut seen = Vec::new();
    while let Some(event) = watch.next().await {
        match event {
            Ok(WatchEvent::Put(_) | WatchEvent::InitApply(_)) => {}
            Ok(_) => continue,
            Err(e) => {
                eprintln!("watch: {e}");
                continue;
            }
        }
        let published = read_published(&*bucket).await?;
        let Some((record, _)) = &published.record else {
            continue;
        };
        if record.version == 0 || seen.last() == Some(&record.version) {
            continue; // a phase change (the cold-start window), not a publish
        }
        seen.push(record.version);
        let loads: Vec<String> = published
            .map
            .iter()
            .map(|(w, ps)| format!("{w}={}", ps.len()))
            .collect();
        println!(
            "v{} term {} reason {} phase {:?}: {}",
            record.version,
            record.term,
            record.reason,
            record.phase,
            loads.join(" ")
        );
        if versions.is_some_and(|n| seen.len() >= n) {
            break;
        }
    }
    Ok(seen)
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    run(&url, "parti-assignment", None).await?;
    Ok(())
}
