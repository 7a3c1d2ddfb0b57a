//! `parti drain|undrain|pin|unpin|freeze|unfreeze`: the operator's placement intents
//! ([`parti::control`]), kept in the cluster's assignment bucket and applied by its leader.
//!
//! Each command edits the intents with a revision check (concurrent operators do not undo
//! each other), prints what is now in force, and warns when it names a worker that has no
//! heartbeat (the intent then applies once that worker is live). The cluster must exist: its
//! assignment bucket is never created here.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use parti::WorkerId;
use parti::control::{Control, Intents};
use serde::Serialize;

use crate::buckets::{ClusterBuckets, Role};
use crate::global::Global;
use crate::output::{print, say};

/// An intent to record.
#[derive(Debug)]
pub(crate) enum Intent {
    /// Drain a worker.
    Drain(WorkerId),
    /// End a worker's drain.
    Undrain(WorkerId),
    /// Pin a partition to a worker.
    Pin(String, WorkerId),
    /// Remove a partition's pin.
    Unpin(String),
    /// Freeze (`true`) or unfreeze placement.
    Freeze(bool),
}

/// `parti drain|undrain WORKER`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The worker ID, e.g. `worker-3`.
    pub(crate) worker: String,
    /// Print the intents in force afterwards as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `parti pin PARTITION WORKER`.
#[derive(Debug, Args)]
pub(crate) struct PinArgs {
    /// The partition, its keys joined with `.` (`tenant-a.sensor-1`).
    pub(crate) partition: String,
    /// The worker ID it goes to whenever that worker is live and not drained.
    pub(crate) worker: String,
    /// Print the intents in force afterwards as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `parti unpin PARTITION`.
#[derive(Debug, Args)]
pub(crate) struct PartitionArgs {
    /// The partition, its keys joined with `.`.
    pub(crate) partition: String,
    /// Print the intents in force afterwards as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `parti freeze|unfreeze`.
#[derive(Debug, Args)]
pub(crate) struct FreezeArgs {
    /// Print the intents in force afterwards as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--json` output: the intents in force.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IntentsJson<'a> {
    drained: Vec<&'a str>,
    pinned: Vec<PinJson<'a>>,
    frozen: bool,
}

#[derive(Serialize)]
struct PinJson<'a> {
    partition: &'a str,
    worker: &'a str,
}

/// Records `intent` and prints the intents in force.
pub(crate) async fn run(intent: Intent, json: bool, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let client = global.connect.connect("parti control").await?;
    let js = async_nats::jetstream::new(client);
    let buckets = ClusterBuckets::open(&js, &config.kv_buckets, config.operation_timeout).await?;
    let bucket = buckets.assignment()?;
    let control = Control::new(bucket);
    if let Intent::Drain(worker) | Intent::Pin(_, worker) = &intent {
        warn_unless_live(&buckets, worker).await;
    }
    let intents = match intent {
        Intent::Drain(worker) => control.drain(worker).await,
        Intent::Undrain(worker) => control.undrain(&worker).await,
        Intent::Pin(partition, worker) => control.pin(&partition, worker).await,
        Intent::Unpin(partition) => control.unpin(&partition).await,
        Intent::Freeze(frozen) => control.set_frozen(frozen).await,
    }
    .context("cannot record the intent")?;
    if json {
        print(&format!("{}\n", serde_json::to_string(&to_json(&intents))?))?;
    } else {
        print(&crate::render::intents(&intents))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Warns when `worker` has no heartbeat.
async fn warn_unless_live(buckets: &ClusterBuckets, worker: &WorkerId) {
    let Some(heartbeats) = &buckets.get(Role::Heartbeat).bucket else {
        return;
    };
    // A heartbeat's key is the worker ID.
    if let Ok(None) = heartbeats.get(worker.as_str()).await {
        say(&format!(
            "warning: {worker} has no heartbeat (not live); the intent applies once it is"
        ));
    }
}

fn to_json(intents: &Intents) -> IntentsJson<'_> {
    IntentsJson {
        drained: intents.drained.iter().map(WorkerId::as_str).collect(),
        pinned: intents
            .pinned
            .iter()
            .map(|(partition, worker)| PinJson {
                partition,
                worker: worker.as_str(),
            })
            .collect(),
        frozen: intents.frozen,
    }
}
