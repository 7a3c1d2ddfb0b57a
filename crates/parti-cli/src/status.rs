//! `parti status`: one look at a cluster — workers, leader, assignment, anything wrong.
//!
//! Reads the four KV buckets named by the configuration without creating or changing anything
//! (see [`crate::buckets`]), checks them (see [`crate::health`]) and prints an aligned table, or
//! with `--json` the document described in `docs/cli-status-json.md`.
//!
//! Exit codes:
//! - `0` — the cluster was read and nothing inconsistent was found (warnings such as an expired
//!   worker do not change the code: they are a normal part of a crash being handled);
//! - `1` — an error: NATS unreachable, a bad config, a bucket that cannot be read;
//! - `2` — an inconsistency is flagged (an issue of severity `error`: a partition with two
//!   owners or none, an incomplete map, a key of any bucket that does not hold what it must
//!   (`undecodable`), a leader term below a committed term (`belowFloor`)); the warnings
//!   `lagging` and a version `belowFloor` leave the code as it is;
//! - `3` — no Parti cluster: none of the four buckets exists on the server.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use parti::records::{Published, read_published};
use parti::stable_id::StableIdConfig;
use parti::store::Entry;

use crate::buckets::{ClusterBuckets, Found, Role};
use crate::global::Global;
use crate::health::{BucketReport, Report, Snapshot, analyze};

/// Exit code when an inconsistency is flagged.
pub(crate) const EXIT_INCONSISTENT: u8 = 2;
/// Exit code when no cluster exists on the server.
pub(crate) const EXIT_NO_CLUSTER: u8 = 3;

/// Options of `parti status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print the report as JSON (schema in docs/cli-status-json.md).
    #[arg(long)]
    pub(crate) json: bool,
    /// Also list every worker's partitions.
    #[arg(long)]
    pub(crate) partitions: bool,
}

/// Runs `parti status`.
pub(crate) async fn run(args: StatusArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let client = global.connect.connect("parti status").await?;
    let js = async_nats::jetstream::new(client);
    let buckets = ClusterBuckets::open(&js, &config.kv_buckets, config.operation_timeout).await?;
    let snapshot = read_snapshot(&buckets, args.partitions, pool(&config)).await?;
    let report = analyze(&snapshot);
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        json.push('\n');
        json
    } else if report.found {
        crate::render::human(&report, &global.connect.nats)
    } else {
        format!("{}\n", not_found(&report, &global.connect.nats))
    };
    crate::output::print(&text)?;
    Ok(exit_code(&report))
}

/// The exit code for a report (see the module docs).
pub(crate) fn exit_code(report: &Report) -> ExitCode {
    if !report.found {
        ExitCode::from(EXIT_NO_CLUSTER)
    } else if !report.consistent {
        ExitCode::from(EXIT_INCONSISTENT)
    } else {
        ExitCode::SUCCESS
    }
}

/// The message for a server without any of the buckets.
pub(crate) fn not_found(report: &Report, server: &str) -> String {
    let names: Vec<&str> = report.buckets.iter().map(|b| b.name.as_str()).collect();
    format!(
        "no Parti cluster on {server}: none of the buckets {} exists.\n\
         No worker has run with these bucket names yet; start one (`parti worker`), or pass the \
         --config the cluster uses if its bucket names differ.",
        names.join(", ")
    )
}

/// The buckets as the report lists them.
pub(crate) fn bucket_reports(buckets: &ClusterBuckets) -> Vec<BucketReport> {
    buckets
        .all
        .iter()
        .map(|f| BucketReport {
            role: f.role,
            name: f.name.clone(),
            exists: f.bucket.is_some(),
            max_age_ms: f
                .max_age
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
        .collect()
}

/// Reads everything the report needs.
///
/// The order matters for a cluster that changes while it is read: heartbeats before the
/// assignment (a worker cannot report a version committed after its heartbeat was read), the
/// assignment before the leader lease (a leader elected meanwhile has a higher term, not a
/// lower one).
async fn read_snapshot(
    buckets: &ClusterBuckets,
    with_partitions: bool,
    pool: StableIdConfig,
) -> anyhow::Result<Snapshot> {
    let stable_ids = list_all(buckets.get(Role::StableId)).await?;
    let heartbeats = list_all(buckets.get(Role::Heartbeat)).await?;
    let (published, assignment) = match &buckets.get(Role::Assignment).bucket {
        Some(bucket) => {
            let (published, entries) = read_assignment(&**bucket).await?;
            (Some(published), entries)
        }
        None => (None, BTreeMap::new()),
    };
    let election = list_all(buckets.get(Role::Election)).await?;
    Ok(Snapshot {
        now_ms: unix_ms(),
        buckets: bucket_reports(buckets),
        stable_ids,
        heartbeats,
        election,
        published,
        assignment,
        pool: Some(pool),
        with_partitions,
    })
}

/// Every live entry of a bucket by key (none when it does not exist).
async fn list_all(found: &Found) -> anyhow::Result<BTreeMap<String, Entry>> {
    match &found.bucket {
        Some(bucket) => bucket
            .list(">")
            .await
            .with_context(|| format!("cannot read the bucket {}", found.name))
            .map(|entries| entries.into_iter().map(|e| (e.key.clone(), e)).collect()),
        None => Ok(BTreeMap::new()),
    }
}

/// The committed map and every entry of the assignment bucket. A publish writes the `floor`
/// before it commits: a committed version below the floor is read again before it is reported.
async fn read_assignment(
    bucket: &dyn parti::store::Bucket,
) -> anyhow::Result<(Published, BTreeMap<String, Entry>)> {
    let mut attempt = 0;
    loop {
        let published = read_committed(bucket).await?;
        let entries: BTreeMap<String, Entry> = bucket
            .list(">")
            .await
            .with_context(|| format!("cannot read the bucket {}", bucket.name()))?
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        let below = published.record.as_ref().is_some_and(|(record, _)| {
            crate::health::floor_version(&entries).is_some_and(|floor| floor > record.version)
        });
        attempt += 1;
        if !below || attempt == 3 {
            return Ok((published, entries));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The worker-ID pool of a configuration: keys outside it are never workers.
pub(crate) fn pool(config: &parti::Config) -> StableIdConfig {
    StableIdConfig::new(
        config.worker_id_prefix.clone(),
        config.worker_id_min,
        config.worker_id_max,
        config.stable_id_renew_interval(),
    )
}

/// Reads the committed map. A publish landing between the read of `cluster` and of the worker
/// values makes them look uncommitted for an instant: read again before reporting that.
pub(crate) async fn read_committed(bucket: &dyn parti::store::Bucket) -> anyhow::Result<Published> {
    let mut attempt = 0;
    loop {
        let published = read_published(bucket)
            .await
            .with_context(|| format!("cannot read the bucket {}", bucket.name()))?;
        let complete = published
            .record
            .as_ref()
            .is_none_or(|(r, _)| r.workers.len() == published.workers.len());
        attempt += 1;
        if complete || attempt == 3 {
            return Ok(published);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
