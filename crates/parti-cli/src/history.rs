//! `parti history`: the last publishes of a cluster — version, term, time, reason, and every
//! partition moved with from → to and why — from the `history.<version>` keys the leader
//! writes into the assignment bucket (the last 64 publishes are kept; see
//! [`parti::records::HistoryEntry`]). `--follow` then prints each new publish as it lands.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt as _;
use parti::records::{HISTORY_KEY_PREFIX, HistoryEntry, read_history};
use parti::store::{WatchEvent, codec};

use crate::buckets::ClusterBuckets;
use crate::global::Global;
use crate::output::{print, say};

/// Options of `parti history`.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// How many of the last publishes to show.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub(crate) last: usize,
    /// One JSON object per publish, one per line (the `HistoryEntry` fields, camelCase).
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep printing new publishes until Ctrl-C.
    #[arg(long)]
    pub(crate) follow: bool,
    /// Moves listed per publish in the text output (all are in the JSON).
    #[arg(long, default_value_t = 20)]
    pub(crate) moves: usize,
}

/// Runs `parti history`.
pub(crate) async fn run(args: HistoryArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let client = global.connect.connect("parti history").await?;
    let js = async_nats::jetstream::new(client);
    let buckets = ClusterBuckets::open(&js, &config.kv_buckets, config.operation_timeout).await?;
    let bucket = buckets.assignment()?;
    // Watch first, so that nothing published while the history is read is missed.
    let mut watch = if args.follow {
        Some(
            bucket
                .watch(&format!("{HISTORY_KEY_PREFIX}>"))
                .await
                .context("cannot watch the history")?,
        )
    } else {
        None
    };
    let (entries, garbage) = read_history(&*bucket)
        .await
        .context("cannot read the history")?;
    for key in &garbage {
        say(&format!(
            "warning: {key} does not hold a history entry (ignored)"
        ));
    }
    let shown = &entries[entries.len().saturating_sub(args.last)..];
    for entry in shown {
        show(entry, &args)?;
    }
    let mut last = shown.last().map_or(0, |e| e.version);
    let Some(watch) = watch.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        let event = tokio::select! {
            event = watch.next() => event,
            signal = crate::signal::stop_requested() => {
                say(&format!("{signal}: stopping"));
                return Ok(ExitCode::SUCCESS);
            }
        };
        let Some(event) = event else {
            anyhow::bail!("the history watch ended");
        };
        let entry = match event {
            Ok(WatchEvent::Put(e) | WatchEvent::InitApply(e)) => e,
            Ok(_) => continue,
            Err(e) => {
                say(&format!("warning: history watch: {e}"));
                continue;
            }
        };
        match codec::decode::<HistoryEntry>(bucket.name(), &entry.key, &entry.value) {
            Ok(h) if h.version > last => {
                last = h.version;
                show(&h, &args)?;
            }
            Ok(_) => {}
            Err(_) => say(&format!(
                "warning: {} does not hold a history entry (ignored)",
                entry.key
            )),
        }
    }
}

fn show(entry: &HistoryEntry, args: &HistoryArgs) -> anyhow::Result<()> {
    if args.json {
        return print(&format!("{}\n", serde_json::to_string(entry)?));
    }
    print(&human(entry, args.moves))
}

/// `v12 2026-11-30T23:59:01.123Z term 3 scale_up: 4 workers, 200 partitions, 52 moved`, then
/// one line per move (at most `moves`).
fn human(entry: &HistoryEntry, moves: usize) -> String {
    let at = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(entry.at_ms),
    );
    let mut text = format!(
        "v{} {at} term {} {}: {} workers, {} partitions, {} moved\n",
        entry.version, entry.term, entry.reason, entry.workers, entry.partitions, entry.moved
    );
    for m in entry.moves.iter().take(moves) {
        let from = m.from.as_ref().map_or("(none)", |w| w.as_str());
        text.push_str(&format!(
            "  {}\t{from} -> {}\t{}\n",
            m.partition, m.to, m.why
        ));
    }
    let listed = entry.moves.len().min(moves);
    if entry.moved > listed {
        text.push_str(&format!("  (+{} more)\n", entry.moved - listed));
    }
    text
}
