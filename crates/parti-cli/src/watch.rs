//! `parti watch`: the `status` view, redrawn live until Ctrl-C.
//!
//! The stable-ID, heartbeat and election buckets are mirrored in memory from their watch streams
//! (snapshot, then live events; a re-snapshot after a reconnect replaces the mirror), so the
//! frequent heartbeats cost nothing but a redraw. A change in the assignment bucket triggers one
//! read of the committed map. Redraws are throttled to `--interval` and also happen every second
//! so that heartbeat ages move.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt as _;
use parti::records::Published;
use parti::store::{Entry, StoreError, WatchEvent};
use tokio::time::Instant;

use crate::buckets::{ClusterBuckets, Role};
use crate::global::Global;
use crate::health::{HoldBack, Snapshot, analyze};
use crate::status::{bucket_reports, not_found, pool, read_committed, unix_ms};

/// Options of `parti watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Shortest time between two redraws.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub(crate) interval: Duration,
    /// Print one JSON report per line (the `status --json` document) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also list every worker's partitions.
    #[arg(long)]
    pub(crate) partitions: bool,
}

/// Runs `parti watch` until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: WatchArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let client = global.connect.connect("parti watch").await?;
    let js = async_nats::jetstream::new(client);
    let server = global.connect.nats.as_str();
    // A worker lags for an instant after each publish, and the mirrored buckets are read at
    // slightly different instants: lag and floors must last a heartbeat interval to show.
    let mut screen = Screen::new(args.json, HoldBack::new(config.heartbeat_interval));
    let pool = pool(&config);
    let stop = crate::signal::stop_requested();
    tokio::pin!(stop);

    // Wait for a cluster to appear.
    let buckets = loop {
        let buckets =
            ClusterBuckets::open(&js, &config.kv_buckets, config.operation_timeout).await?;
        if buckets.all_exist() {
            break buckets;
        }
        let snapshot = Snapshot {
            now_ms: unix_ms(),
            buckets: bucket_reports(&buckets),
            ..Snapshot::default()
        };
        let report = analyze(&snapshot);
        if args.json {
            screen.show(&serde_json::to_string(&report)?)?;
        } else if !report.found {
            screen.show(&format!(
                "{}\n\nwaiting for it…",
                not_found(&report, server)
            ))?;
        } else {
            screen.show(&format!(
                "{}\nwaiting for the missing buckets…",
                crate::render::human(&report, server)
            ))?;
        }
        tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };

    let mut streams = Vec::new();
    for found in &buckets.all {
        let Some(bucket) = &found.bucket else {
            continue;
        };
        let role = found.role;
        let stream = bucket
            .watch(">")
            .await
            .with_context(|| format!("cannot watch the bucket {}", found.name))?;
        streams.push(stream.map(move |event| (role, event)).boxed());
    }
    let watched = streams.len();
    let mut events = futures::stream::select_all(streams);
    let mut mirror = Mirror::default();
    let assignment = buckets.get(Role::Assignment).bucket.clone();
    let mut published: Option<Published> = None;
    let (mut dirty, mut assignment_dirty) = (true, true);
    let mut next_draw = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = events.next() => {
                let Some((role, event)) = event else { break };
                assignment_dirty |= role == Role::Assignment;
                mirror.apply(role, event);
                dirty = true;
            }
            () = tokio::time::sleep_until(next_draw), if dirty && mirror.synced.len() == watched => {
                if assignment_dirty && let Some(bucket) = &assignment {
                    match read_committed(&**bucket).await {
                        Ok(p) => published = Some(p),
                        Err(e) => mirror.error = Some(format!("{e:#}")),
                    }
                    assignment_dirty = false;
                }
                let view = View { buckets: &buckets, args: &args, server, pool: &pool };
                screen.draw(&mirror, published.clone(), &view)?;
                dirty = false;
                next_draw = Instant::now() + args.interval;
            }
            _ = tick.tick() => dirty = true,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// In-memory copies of the watched buckets.
#[derive(Debug, Default)]
struct Mirror {
    live: BTreeMap<Role, BTreeMap<String, Entry>>,
    /// Entries of a snapshot in progress, per bucket.
    staging: BTreeMap<Role, BTreeMap<String, Entry>>,
    /// Buckets whose first snapshot is complete; nothing is drawn before all are, so that a
    /// half-read view never shows live workers as expired.
    synced: BTreeSet<Role>,
    /// The last watch error, shown until the next event of that bucket.
    error: Option<String>,
}

impl Mirror {
    fn apply(&mut self, role: Role, event: Result<WatchEvent, StoreError>) {
        let event = match event {
            Ok(event) => {
                self.error = None;
                event
            }
            Err(e) => {
                self.error = Some(format!("{e} (resyncing)"));
                return;
            }
        };
        match event {
            WatchEvent::Init => {
                self.staging.insert(role, BTreeMap::new());
            }
            WatchEvent::InitApply(entry) => {
                let target = match self.staging.get_mut(&role) {
                    Some(staging) => staging,
                    None => self.live.entry(role).or_default(),
                };
                target.insert(entry.key.clone(), entry);
            }
            WatchEvent::InitDone => {
                let snapshot = self.staging.remove(&role).unwrap_or_default();
                self.live.insert(role, snapshot);
                self.synced.insert(role);
            }
            WatchEvent::Put(entry) => {
                self.live
                    .entry(role)
                    .or_default()
                    .insert(entry.key.clone(), entry);
            }
            WatchEvent::Deleted { key, .. } | WatchEvent::Expired { key, .. } => {
                if let Some(live) = self.live.get_mut(&role) {
                    live.remove(&key);
                }
            }
            // An event this view does not know changes no key it shows.
            _ => {}
        }
    }

    fn entries(&self, role: Role) -> BTreeMap<String, Entry> {
        self.live.get(&role).cloned().unwrap_or_default()
    }
}

/// What a frame is drawn with, besides the buckets' contents.
struct View<'a> {
    buckets: &'a ClusterBuckets,
    args: &'a WatchArgs,
    server: &'a str,
    pool: &'a parti::stable_id::StableIdConfig,
}

/// Where the view goes: a redrawn terminal screen, or appended frames.
struct Screen {
    json: bool,
    terminal: bool,
    hold_back: HoldBack,
}

impl Screen {
    fn new(json: bool, hold_back: HoldBack) -> Self {
        Self {
            json,
            terminal: std::io::stdout().is_terminal(),
            hold_back,
        }
    }

    fn draw(
        &mut self,
        mirror: &Mirror,
        published: Option<Published>,
        view: &View<'_>,
    ) -> anyhow::Result<()> {
        let snapshot = Snapshot {
            now_ms: unix_ms(),
            buckets: bucket_reports(view.buckets),
            stable_ids: mirror.entries(Role::StableId),
            heartbeats: mirror.entries(Role::Heartbeat),
            election: mirror.entries(Role::Election),
            published,
            assignment: mirror.entries(Role::Assignment),
            pool: Some(view.pool.clone()),
            with_partitions: view.args.partitions,
        };
        let mut report = analyze(&snapshot);
        self.hold_back.apply(&mut report);
        if self.json {
            return self.show(&serde_json::to_string(&report)?);
        }
        let mut text = crate::render::human(&report, view.server);
        if let Some(error) = &mirror.error {
            text.push_str(&format!("\nwatch error: {error}\n"));
        }
        text.push_str("\nwatching (Ctrl-C to quit)");
        self.show(&text)
    }

    fn show(&mut self, text: &str) -> anyhow::Result<()> {
        let frame = if self.json {
            format!("{text}\n")
        } else if self.terminal {
            // Home, clear screen, then the frame.
            format!("\x1b[H\x1b[2J{text}")
        } else {
            format!("{text}\n----\n")
        };
        crate::output::print(&frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, revision: u64) -> Entry {
        Entry {
            key: key.into(),
            value: "{}".into(),
            revision,
        }
    }

    #[test]
    fn a_resnapshot_replaces_the_mirror() {
        let mut m = Mirror::default();
        let r = Role::Heartbeat;
        m.apply(r, Ok(WatchEvent::Init));
        m.apply(r, Ok(WatchEvent::InitApply(entry("a", 1))));
        m.apply(r, Ok(WatchEvent::InitApply(entry("b", 2))));
        m.apply(r, Ok(WatchEvent::InitDone));
        m.apply(r, Ok(WatchEvent::Put(entry("c", 3))));
        m.apply(
            r,
            Ok(WatchEvent::Expired {
                key: "a".into(),
                revision: 4,
            }),
        );
        assert_eq!(m.entries(r).keys().collect::<Vec<_>>(), ["b", "c"]);
        assert!(m.synced.contains(&r));
        // After a reconnect: a fresh snapshot without "b".
        m.apply(
            r,
            Err(StoreError::Timeout {
                op: "watch",
                bucket: "x".into(),
            }),
        );
        assert!(m.error.is_some());
        m.apply(r, Ok(WatchEvent::Init));
        m.apply(r, Ok(WatchEvent::InitApply(entry("c", 3))));
        assert_eq!(m.entries(r).len(), 2, "the old view stays until InitDone");
        m.apply(r, Ok(WatchEvent::InitDone));
        assert_eq!(m.entries(r).keys().collect::<Vec<_>>(), ["c"]);
        assert!(m.error.is_none());
        m.apply(
            r,
            Ok(WatchEvent::Deleted {
                key: "c".into(),
                revision: 5,
            }),
        );
        assert!(m.entries(r).is_empty());
    }
}
