//! `parti plan`: what the leader would publish now, or after a hypothetical change — the move
//! list with weights and reasons, the balance before and after, the number of steps. Nothing
//! is written.
//!
//! The inputs are read as the leader reads them: the live workers (heartbeats that decode,
//! IDs of the pool), the committed map, the operator's intents and the partition list (a file,
//! a NATS-KV list, or by default the partitions the committed map covers). The hypothesis is
//! laid over them (`--add-worker`, `--remove-worker`, `--drain`, `--partitions`), and
//! [`parti::control::preview`] computes the map with the strategy `parti worker` runs
//! (`WeightedConsistentHash` with its defaults) — the same moves the next rebalance makes from
//! the same inputs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use parti::control::{Control, move_reason, preview};
use parti::heartbeat::HeartbeatValue;
use parti::source::NatsKv;
use parti::store::codec;
use parti::{AssignmentMap, Partition, PlacementRules, WeightedConsistentHash, WorkerId};
use serde::Serialize;

use crate::buckets::{ClusterBuckets, Role};
use crate::global::Global;
use crate::output::print;

/// Options of `parti plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// Suppose this worker joins (repeatable).
    #[arg(long, value_name = "ID")]
    pub(crate) add_worker: Vec<String>,
    /// Suppose this worker leaves (repeatable).
    #[arg(long, value_name = "ID")]
    pub(crate) remove_worker: Vec<String>,
    /// Suppose this worker is drained (repeatable).
    #[arg(long, value_name = "ID")]
    pub(crate) drain: Vec<String>,
    /// Suppose the partition list is this file's (YAML or JSON list of `{keys, weight}`).
    #[arg(long, value_name = "FILE", conflicts_with = "partitions_bucket")]
    pub(crate) partitions: Option<PathBuf>,
    /// Read the partition list from this NATS-KV bucket (as `parti worker --partitions-bucket`).
    #[arg(long, value_name = "NAME")]
    pub(crate) partitions_bucket: Option<String>,
    /// The key of the list in --partitions-bucket.
    #[arg(long, default_value = NatsKv::DEFAULT_KEY, value_name = "KEY")]
    pub(crate) partitions_key: String,
    /// Print the plan as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The plan, as `--json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanJson {
    workers: Vec<String>,
    partitions: usize,
    steps: usize,
    /// The largest load over the mean, before and after (1.0 is perfect balance).
    balance_before: Option<f64>,
    balance_after: Option<f64>,
    moves: Vec<MoveJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MoveJson {
    partition: String,
    weight: u64,
    from: Option<String>,
    to: String,
    reason: String,
}

/// Runs `parti plan`.
pub(crate) async fn run(args: PlanArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let client = global.connect.connect("parti plan").await?;
    let js = async_nats::jetstream::new(client);
    let buckets = ClusterBuckets::open(&js, &config.kv_buckets, config.operation_timeout).await?;
    let bucket = buckets.assignment()?;
    let committed = crate::status::read_committed(&*bucket).await?.map;
    let mut intents = Control::new(bucket).read().await?;
    intents
        .drained
        .extend(args.drain.iter().cloned().map(WorkerId::new));

    // The live workers, as the leader's membership sees them.
    let pool = crate::status::pool(&config);
    let mut workers: BTreeSet<WorkerId> = BTreeSet::new();
    // Each live worker's capacity and labels, as announced.
    let mut profiles = std::collections::BTreeMap::new();
    if let Some(heartbeats) = &buckets.get(Role::Heartbeat).bucket {
        for entry in heartbeats
            .list(">")
            .await
            .context("cannot read the heartbeats")?
        {
            let decoded =
                codec::decode::<HeartbeatValue>(heartbeats.name(), &entry.key, &entry.value);
            if let Ok(beat) = decoded
                && pool.is_pool_id(&entry.key)
            {
                let worker = WorkerId::new(entry.key);
                profiles.insert(worker.clone(), beat.profile());
                workers.insert(worker);
            }
        }
    }
    workers.extend(args.add_worker.iter().cloned().map(WorkerId::new));
    for gone in &args.remove_worker {
        workers.remove(&WorkerId::new(gone.clone()));
    }
    let workers: Vec<WorkerId> = workers.into_iter().collect();
    if workers.is_empty() {
        anyhow::bail!("no live worker (and none added with --add-worker): nothing to plan");
    }

    let partitions: Vec<Partition> = match (&args.partitions, &args.partitions_bucket) {
        (Some(path), _) => crate::partitions::file::load(path)?,
        (None, Some(name)) => {
            let spec = parti::store::BucketSpec::new(name.clone()).create_if_missing(false);
            NatsKv::open_in(&parti::store::NatsStore::new(js.clone()), &spec)
                .await
                .with_context(|| format!("cannot open the partition bucket {name}"))?
                .key(args.partitions_key.clone())
                .read()
                .await
                .with_context(|| format!("cannot read the partition list in {name}"))?
                .partitions
        }
        (None, None) => committed
            .iter()
            .flat_map(|(_, held)| held.iter().cloned())
            .collect(),
    };

    let strategy = WeightedConsistentHash::default();
    let plan = preview(
        &strategy,
        &workers,
        &partitions,
        &committed,
        &intents,
        &PlacementRules::new()
            .with_profiles(profiles)
            .with_unlabelled_policy(config.assignment.unlabelled_policy),
        config.assignment.max_moves_per_step,
    )
    .context("cannot compute the plan")?;
    let moves: Vec<MoveJson> = plan
        .moves
        .iter()
        .map(|m| MoveJson {
            partition: m.partition.subject_key(),
            weight: m.partition.effective_weight(),
            from: m.from.as_ref().map(ToString::to_string),
            to: m.to.to_string(),
            reason: move_reason(
                &m.partition,
                m.from.as_ref(),
                &m.to,
                &committed,
                &plan.map,
                &intents,
                "plan",
            ),
        })
        .collect();
    let json = PlanJson {
        workers: workers.iter().map(ToString::to_string).collect(),
        partitions: partitions.len(),
        steps: plan.steps,
        balance_before: balance(&committed),
        balance_after: balance(&plan.map),
        moves,
    };
    if args.json {
        print(&format!("{}\n", serde_json::to_string(&json)?))?;
    } else {
        print(&human(&json))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The largest load over the mean load, `None` for an empty map.
fn balance(map: &AssignmentMap) -> Option<f64> {
    let loads: Vec<u64> = map.workers().map(|w| map.load(w)).collect();
    let total: u64 = loads.iter().sum();
    if loads.is_empty() || total == 0 {
        return None;
    }
    let mean = total as f64 / loads.len() as f64;
    loads.iter().max().map(|&max| max as f64 / mean)
}

fn human(plan: &PlanJson) -> String {
    let ratio = |b: Option<f64>| b.map_or("-".to_owned(), |b| format!("{b:.3}"));
    let mut text = format!(
        "plan: {} workers, {} partitions, {} moves in {} step(s); max/mean load {} -> {}\n",
        plan.workers.len(),
        plan.partitions,
        plan.moves.len(),
        plan.steps,
        ratio(plan.balance_before),
        ratio(plan.balance_after),
    );
    for m in &plan.moves {
        text.push_str(&format!(
            "  {}\t{} -> {}\tweight {}\t{}\n",
            m.partition,
            m.from.as_deref().unwrap_or("(none)"),
            m.to,
            m.weight,
            m.reason
        ));
    }
    text
}
