//! `parti worker`: one worker process from a config and a partition list file.
//!
//! Prints its assignment when it starts and at every change, its state and leadership changes,
//! degraded alerts and recovered errors, one line each on stdout (logs go to stderr). SIGTERM or
//! SIGINT stops it gracefully (hand over leadership, delete the heartbeat, release the ID) within
//! `shutdownTimeout`; a second signal during the stop exits at once. A signal during start-up
//! exits without a graceful stop (nothing was handed out yet; the ID expires by TTL).
//!
//! Exit codes: 0 after a graceful stop, 1 on any error (start-up failure, a failed stop, the
//! worker shutting down on its own).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use parti::{Assignment, Event, Manager, State};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::cli::Global;
use crate::metrics_server::{self, Readiness};
use crate::output::say;
use crate::render::age;
use crate::signal::stop_requested;

/// Partition keys listed per added/removed side of an assignment change.
const KEYS_SHOWN: usize = 10;

/// Options of `parti worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Partition list: YAML or JSON list of `{keys: [...], weight: N}`.
    #[arg(long, short = 'p', value_name = "FILE")]
    pub(crate) partitions: PathBuf,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (port 0: any free port;
    /// the bound address is printed).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// Runs `parti worker` until SIGTERM/SIGINT.
pub(crate) async fn run(args: WorkerArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let partitions = crate::partitions::load(&args.partitions)?;
    if partitions.is_empty() {
        eprintln!("warning: {} lists no partitions", args.partitions.display());
    }

    let cancel = CancellationToken::new();
    let _cancel_on_exit = cancel.clone().drop_guard();
    let readiness = Readiness::default();
    let _server = match args.metrics_addr {
        Some(addr) => {
            let handle = metrics_server::install_recorder()?;
            let server =
                metrics_server::serve(addr, handle, readiness.clone(), cancel.clone()).await?;
            say(&format!("metrics on http://{}/metrics", server.addr));
            Some(server)
        }
        None => None,
    };

    let client = global.connect.connect("parti worker").await?;
    let start = Manager::builder(async_nats::jetstream::new(client))
        .config(config)
        .source(parti::source::Static::new(partitions))
        .start();
    let manager = tokio::select! {
        started = start => started.context("the worker did not start")?,
        signal = stop_requested() => {
            say(&format!("{signal} during start-up: exiting"));
            return Ok(ExitCode::SUCCESS);
        }
    };
    readiness.set(&manager);
    let outcome = follow(&manager).await;
    match outcome {
        Ok(signal) => say(&format!("{signal}: stopping gracefully")),
        Err(e) => {
            let _ = manager.stop().await;
            return Err(e);
        }
    }
    tokio::select! {
        stopped = manager.stop() => stopped.context("the graceful stop failed")?,
        signal = stop_requested() => anyhow::bail!("{signal} during the graceful stop: exiting at once"),
    }
    say("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Prints what happens until a stop signal (its name is returned) or the worker's own end.
async fn follow(manager: &Manager) -> anyhow::Result<&'static str> {
    let mut events = manager.events();
    let mut assignments = manager.watch_assignment();
    let mut shown = assignments.borrow_and_update().clone();
    let mut seen = Seen {
        state: manager.state(),
        leader: manager.is_leader(),
    };
    say(&format!(
        "worker {} started: state {}, {}",
        manager.worker_id(),
        seen.state,
        if seen.leader { "leader" } else { "follower" }
    ));
    say(&describe(&Assignment::default(), &shown));
    let stop = stop_requested();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => return Ok(signal),
            changed = assignments.changed() => {
                changed.context("the worker stopped")?;
                let next = assignments.borrow_and_update().clone();
                if next != shown {
                    say(&describe(&shown, &next));
                    shown = next;
                }
            }
            event = events.recv() => match event {
                Ok(event) => {
                    if let Some(line) = seen.line(&event) {
                        say(&line);
                    }
                    if let Event::StateChanged { to: State::Shutdown, .. } = event {
                        anyhow::bail!("the worker shut down on its own (see the log above)");
                    }
                }
                Err(RecvError::Lagged(n)) => say(&format!("({n} events missed)")),
                Err(RecvError::Closed) => anyhow::bail!("the worker stopped"),
            },
        }
    }
}

/// What was last printed. Events are broadcast after the hooks ran, so the first ones may
/// describe what `started:` already showed; those are skipped.
struct Seen {
    state: State,
    leader: bool,
}

impl Seen {
    /// The line for an event, if it tells something new.
    fn line(&mut self, event: &Event) -> Option<String> {
        match event {
            Event::StateChanged { to, .. } if *to == self.state => return None,
            Event::StateChanged { to, .. } => self.state = *to,
            Event::LeadershipChanged { is_leader, .. } if *is_leader == self.leader => return None,
            Event::LeadershipChanged { is_leader, .. } => self.leader = *is_leader,
            _ => {}
        }
        event_line(event)
    }
}

/// One line for an event; assignment changes are printed from the watch channel instead.
fn event_line(event: &Event) -> Option<String> {
    match event {
        Event::StateChanged { from, to, after } => Some(format!(
            "state {from} -> {to} (after {})",
            age(millis(*after))
        )),
        Event::LeadershipChanged {
            is_leader: true,
            term,
        } => Some(match term {
            Some(term) => format!("leadership gained (term {term})"),
            None => "leadership gained".to_owned(),
        }),
        Event::LeadershipChanged {
            is_leader: false, ..
        } => Some("leadership lost".to_owned()),
        Event::DegradedAlert { level, duration } => Some(format!(
            "degraded alert {level}: degraded for {}",
            age(millis(*duration))
        )),
        Event::Error(error) => Some(format!("error (recovering): {error}")),
        _ => None,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `assignment v3: 10 partitions, weight 1000 (+2 -1) +a.b +c -d`
fn describe(previous: &Assignment, next: &Assignment) -> String {
    let before: BTreeSet<String> = previous
        .partitions
        .iter()
        .map(|p| p.subject_key())
        .collect();
    let after: BTreeSet<String> = next.partitions.iter().map(|p| p.subject_key()).collect();
    let added: Vec<&String> = after.difference(&before).collect();
    let removed: Vec<&String> = before.difference(&after).collect();
    let mut line = format!(
        "assignment v{}: {} partitions, weight {} (+{} -{})",
        next.version,
        next.partitions.len(),
        next.weight(),
        added.len(),
        removed.len()
    );
    for (sign, keys) in [('+', &added), ('-', &removed)] {
        for key in keys.iter().take(KEYS_SHOWN) {
            line.push_str(&format!(" {sign}{key}"));
        }
        if keys.len() > KEYS_SHOWN {
            line.push_str(&format!(" ({sign}{} more)", keys.len() - KEYS_SHOWN));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parti::Partition;

    use super::*;

    fn assignment(version: u64, keys: &[&str]) -> Arc<Assignment> {
        Arc::new(Assignment {
            version,
            lifecycle: parti::Lifecycle::Running,
            partitions: keys
                .iter()
                .map(|k| Partition::new([*k], 10).unwrap())
                .collect(),
        })
    }

    #[test]
    fn changes_are_described() {
        let line = describe(&assignment(1, &["a", "b"]), &assignment(2, &["b", "c"]));
        assert_eq!(line, "assignment v2: 2 partitions, weight 20 (+1 -1) +c -a");
        let many: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let line = describe(&Assignment::default(), &assignment(1, &many));
        assert!(line.ends_with("+p09 (+2 more)"), "{line}");
    }
}
