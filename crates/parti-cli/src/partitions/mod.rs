//! `parti partitions list|add|remove|set`: the partition list kept in NATS KV
//! ([`parti::source::NatsKv`]), which workers started with `--partitions-bucket` follow.
//!
//! Every edit is revision-checked by the library (`add` and `remove` by two operators at once
//! both land; `set` replaces whatever is there); a duplicate, or removing a partition that is not listed, is refused with the
//! partition named and nothing written. `set` also repairs a key that holds garbage.
//!
//! - `file` — the partition list file format (`--file`, and `parti worker --partitions`).

pub(crate) mod file;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use parti::Partition;
use parti::source::{Listed, NatsKv};
use parti::store::{BucketSpec, NatsStore};
use serde::Serialize;

use crate::global::Global;
use crate::output::{print, say};

/// Options of `parti partitions`.
#[derive(Debug, Args)]
pub(crate) struct PartitionsArgs {
    /// The KV bucket holding the list.
    #[arg(long, global = true, default_value = NatsKv::DEFAULT_BUCKET, value_name = "NAME")]
    pub(crate) bucket: String,
    /// The key holding the list.
    #[arg(long, global = true, default_value = NatsKv::DEFAULT_KEY, value_name = "KEY")]
    pub(crate) key: String,
    #[command(subcommand)]
    pub(crate) action: Action,
}

/// What to do with the list.
#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// Print the list (keys joined with `.`, weight) and its revision.
    List {
        /// One JSON object: `{"bucket","key","revision","partitions":[{"keys","weight"}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Append partitions: from a file, or given as keys joined with `.` (`tenant-a.sensor-1`).
    Add(Edit),
    /// Remove partitions, given as keys joined with `.`.
    Remove {
        /// The partitions to remove.
        #[arg(required = true, value_name = "PARTITION")]
        partitions: Vec<String>,
    },
    /// Replace the whole list with a file's (creating the bucket when missing).
    Set {
        /// A YAML or JSON list of `{keys: [...], weight: N}`.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
}

/// Partitions to add.
#[derive(Debug, Args)]
pub(crate) struct Edit {
    /// A YAML or JSON list of `{keys: [...], weight: N}`.
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "partitions")]
    file: Option<PathBuf>,
    /// Partitions as keys joined with `.`.
    #[arg(value_name = "PARTITION", required_unless_present = "file")]
    partitions: Vec<String>,
    /// The weight of partitions given on the command line (0: the default weight).
    #[arg(long, default_value_t = 0, conflicts_with = "file")]
    weight: u64,
    /// The label of partitions given on the command line: only workers with that label
    /// receive them.
    #[arg(long, conflicts_with = "file")]
    label: Option<String>,
}

impl Edit {
    fn partitions(&self) -> anyhow::Result<Vec<Partition>> {
        match &self.file {
            Some(path) => file::load(path),
            None => self
                .partitions
                .iter()
                .map(|key| {
                    let p = Partition::new(key.split('.'), self.weight)?;
                    Ok(match &self.label {
                        Some(label) => p.with_label(label.clone())?,
                        None => p,
                    })
                })
                .collect(),
        }
    }
}

/// `list --json` output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListJson<'a> {
    bucket: &'a str,
    key: &'a str,
    revision: Option<u64>,
    partitions: &'a [Partition],
}

/// Runs `parti partitions`.
pub(crate) async fn run(args: PartitionsArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let creates = !matches!(args.action, Action::List { .. } | Action::Remove { .. });
    let client = global.connect.connect("parti partitions").await?;
    let store = NatsStore::new(async_nats::jetstream::new(client));
    let spec = BucketSpec::new(args.bucket.clone())
        .replicas(config.kv_buckets.replicas)
        .create_if_missing(creates);
    let kv = match NatsKv::open_in(&store, &spec).await {
        Ok(kv) => kv.key(args.key.clone()),
        Err(parti::Error::Store(parti::StoreError::BucketMissing { .. })) => {
            if let Action::List { json } = args.action {
                print_list(&args, &Listed::default(), json)?;
                return Ok(ExitCode::SUCCESS);
            }
            anyhow::bail!(
                "there is no partition list: bucket {} does not exist",
                args.bucket
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open the bucket {}", args.bucket));
        }
    };
    let target = format!("{}/{}", args.bucket, args.key);
    match &args.action {
        Action::List { json } => {
            let listed = kv
                .read()
                .await
                .with_context(|| format!("cannot read the partition list {target}"))?;
            print_list(&args, &listed, *json)?;
        }
        Action::Add(edit) => {
            let added = edit.partitions()?;
            let count = added.len();
            let revision = kv
                .add(added)
                .await
                .with_context(|| format!("cannot add to {target}"))?;
            say(&format!(
                "added {count} partition(s) to {target} (revision {revision})"
            ));
        }
        Action::Remove { partitions } => {
            let revision = kv
                .remove(partitions.iter().cloned())
                .await
                .with_context(|| format!("cannot remove from {target}"))?;
            say(&format!(
                "removed {} partition(s) from {target} (revision {revision})",
                partitions.len()
            ));
        }
        Action::Set { file: path } => {
            let partitions = file::load(path)?;
            let count = partitions.len();
            let revision = kv
                .set(partitions)
                .await
                .with_context(|| format!("cannot write {target}"))?;
            say(&format!(
                "{target} now lists {count} partition(s) (revision {revision})"
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(args: &PartitionsArgs, listed: &Listed, json: bool) -> anyhow::Result<()> {
    if json {
        let text = serde_json::to_string(&ListJson {
            bucket: &args.bucket,
            key: &args.key,
            revision: listed.revision,
            partitions: &listed.partitions,
        })?;
        return print(&format!("{text}\n"));
    }
    let Some(revision) = listed.revision else {
        return print(&format!(
            "no partition list in {}/{} (write one with `parti partitions set --file F`)\n",
            args.bucket, args.key
        ));
    };
    let mut text = format!(
        "{}/{}: {} partition(s), revision {revision}\n",
        args.bucket,
        args.key,
        listed.partitions.len()
    );
    for p in &listed.partitions {
        let label = p.label().map(|l| format!("\t{l}")).unwrap_or_default();
        text.push_str(&format!(
            "{}\t{}{label}\n",
            p.subject_key(),
            p.effective_weight()
        ));
    }
    print(&text)
}
