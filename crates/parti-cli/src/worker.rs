//! `parti worker`: one worker process from a config and a partition list file.
//!
//! Prints its assignment when it starts and at every change, its state and leadership changes,
//! degraded alerts and recovered errors, one line each on stdout (logs go to stderr). SIGTERM or
//! SIGINT stops it gracefully (hand over leadership, delete the heartbeat, release the ID) within
//! `shutdownTimeout`; a second signal during the stop exits at once. A signal during start-up
//! exits without a graceful stop (nothing was handed out yet; the ID expires by TTL).
//!
//! With `--ownership-log FILE` every change of what the worker *holds* is appended to `FILE` as
//! one JSON object per line (the library's [`OwnershipRecord`]; format in
//! `docs/ownership-log.md`). With `--stream NAME` the worker also consumes that JetStream stream
//! through a [`WorkerConsumer`] kept on its partitions' subjects, and with `--process-log FILE`
//! appends one line per message handled (`{"atNs","worker","instance","partition","seq"}`).
//! Each line is one `write_all` on an unbuffered append-mode file, so a `kill -9` loses at most
//! a partial last line; a failed write is logged and the worker carries on.
//!
//! Exit codes: 0 after a graceful stop, 1 on any error (start-up failure, a failed stop, the
//! worker shutting down on its own).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, Message};
use clap::Args;
use parti::error::BoxError;
use parti::ownership::{OwnershipRecord, OwnershipSink, now_ns};
use parti::source::{NatsKv, PartitionSource};
use parti::{Assignment, Event, Manager, Partition, State, WorkerConsumer};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::global::Global;
use crate::metrics_server::{self, Readiness};
use crate::output::say;
use crate::signal::stop_requested;
use crate::text::age;

/// Partition keys listed per added/removed side of an assignment change.
const KEYS_SHOWN: usize = 10;

/// Options of `parti worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Partition list: YAML or JSON list of `{keys: [...], weight: N}`.
    #[arg(
        long,
        short = 'p',
        value_name = "FILE",
        required_unless_present = "partitions_bucket",
        conflicts_with = "partitions_bucket"
    )]
    pub(crate) partitions: Option<PathBuf>,
    /// Follow the partition list kept in this NATS KV bucket instead of a file (edit it with
    /// `parti partitions`); the leader rebalances on every change. The bucket is created when
    /// missing; until a list is written the leader reports an error and publishes nothing.
    #[arg(long, value_name = "NAME")]
    pub(crate) partitions_bucket: Option<String>,
    /// The key of the list in --partitions-bucket.
    #[arg(long, default_value = parti::source::NatsKv::DEFAULT_KEY, requires = "partitions_bucket", value_name = "KEY")]
    pub(crate) partitions_key: String,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (port 0: any free port;
    /// the bound address is printed).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Append every change of what this worker holds (hold, release, extend, applied) to this
    /// file, one JSON object per line (see docs/ownership-log.md).
    #[arg(long, value_name = "FILE")]
    pub(crate) ownership_log: Option<PathBuf>,
    /// Consume this JetStream stream (it must exist): one durable consumer kept on the subjects
    /// of the partitions this worker holds.
    #[arg(long, value_name = "NAME")]
    pub(crate) stream: Option<String>,
    /// The subject of a partition's messages; `{partition}` becomes its keys joined with `.`.
    #[arg(
        long,
        default_value = "events.{partition}",
        requires = "stream",
        value_name = "TEMPLATE"
    )]
    pub(crate) subject_template: String,
    /// Append one JSON object per message handled to this file:
    /// `{"atNs","worker","instance","partition","seq"}` (seq: the stream sequence).
    #[arg(long, value_name = "FILE", requires = "stream")]
    pub(crate) process_log: Option<PathBuf>,
    /// How long JetStream waits for a message's ack before redelivering it (with --stream).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, requires = "stream", value_name = "DURATION")]
    pub(crate) ack_wait: Duration,
    /// On a work-queue stream, how long another worker's consumer may keep a subject this
    /// worker was assigned before it is taken over (with --stream).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "stream", value_name = "DURATION")]
    pub(crate) takeover_after: Duration,
    /// Use only the servers given with --nats, never those a server advertises (a client
    /// behind a proxy must not reconnect around it).
    #[arg(long)]
    pub(crate) ignore_discovered_servers: bool,
}

/// Runs `parti worker` until SIGTERM/SIGINT.
pub(crate) async fn run(args: WorkerArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let listed = match &args.partitions {
        Some(path) => {
            let partitions = crate::partitions::file::load(path)?;
            if partitions.is_empty() {
                eprintln!("warning: {} lists no partitions", path.display());
            }
            Some(partitions)
        }
        None => None,
    };

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

    let identity = Identity::default();
    let ownership_log = match &args.ownership_log {
        Some(path) => Some(JsonLines::open(path)?),
        None => None,
    };
    let process_log = match &args.process_log {
        Some(path) => Some(JsonLines::open(path)?),
        None => None,
    };
    let client = connect(global, args.ignore_discovered_servers).await?;
    let js = jetstream::new(client);
    let replicas = config.kv_buckets.replicas;
    let (source, max_subjects): (Arc<dyn PartitionSource>, usize) =
        match (listed, &args.partitions_bucket) {
            (Some(partitions), _) => {
                let count = partitions.len();
                (Arc::new(parti::source::Static::new(partitions)), count)
            }
            (None, Some(bucket)) => {
                let spec = parti::store::BucketSpec::new(bucket.clone())
                    .replicas(replicas)
                    .create_if_missing(config.auto_provision);
                let kv = NatsKv::open_in(&parti::store::NatsStore::new(js.clone()), &spec)
                    .await
                    .with_context(|| format!("cannot open the partition bucket {bucket}"))?
                    .key(args.partitions_key.clone());
                // The list may grow while the worker runs: leave room for it.
                let count = kv.read().await.map(|l| l.partitions.len()).unwrap_or(0);
                (Arc::new(kv), count.saturating_mul(4).max(10_000))
            }
            (None, None) => anyhow::bail!("give --partitions FILE or --partitions-bucket NAME"),
        };
    let mut builder = Manager::builder(js.clone())
        .config(config)
        .ownership_sink(Arc::new(OwnershipLogSink {
            file: ownership_log,
            identity: identity.clone(),
        }));
    if let Some(stream) = &args.stream {
        let handler = ProcessLogger {
            template: SubjectTemplate::new(&args.subject_template)?,
            identity,
            log: process_log.map(Arc::new),
        };
        let consumer = WorkerConsumer::builder(js, stream)
            .subject_template(args.subject_template.clone())
            .max_subjects(max_subjects.max(500))
            .ack_wait(args.ack_wait)
            .takeover_after(args.takeover_after)
            .check_interval(args.takeover_after.min(Duration::from_secs(10)) / 2)
            .handler(move |message: Message| {
                let handler = handler.clone();
                async move { handler.handle(&message).await }
            })
            .build()
            .await
            .with_context(|| format!("cannot consume the stream {stream:?}"))?;
        builder = builder.consumer(consumer);
    }
    let start = builder.source_arc(source).start();
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

/// Connects with the global options; with `ignore_discovered` only to the servers given.
async fn connect(global: &Global, ignore_discovered: bool) -> anyhow::Result<async_nats::Client> {
    if !ignore_discovered {
        return global.connect.connect("parti worker").await;
    }
    let urls = global.connect.urls();
    if urls.is_empty() {
        anyhow::bail!("--nats is empty: give at least one server URL");
    }
    global
        .connect
        .options("parti worker")
        .await?
        .ignore_discovered_servers()
        .connect(urls)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", global.connect.nats))
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
        Event::DegradedEntered { reason } => Some(format!("degraded: {reason}")),
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

/// A file that receives one JSON object per line, each line with a single `write_all` on an
/// unbuffered append-mode handle: lines of concurrent writers never interleave, and a process
/// killed mid-write leaves at most a partial last line.
#[derive(Debug)]
struct JsonLines {
    path: PathBuf,
    file: File,
    failures: AtomicU64,
}

impl JsonLines {
    /// Opens (creating if needed) `path` for appending.
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            failures: AtomicU64::new(0),
        })
    }

    /// Appends `value` as one line. A failure is logged (the 1st, 2nd, 4th, 8th… of them, so a
    /// full disk does not flood the log) and otherwise ignored.
    fn append(&self, value: &impl Serialize) {
        let written = serde_json::to_vec(value)
            .map_err(std::io::Error::from)
            .and_then(|mut line| {
                line.push(b'\n');
                (&self.file).write_all(&line)
            });
        if let Err(e) = written {
            let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if failures.is_power_of_two() {
                tracing::warn!(file = %self.path.display(), error = %e, failures, "cannot append a log line");
            }
        }
    }
}

/// Who this process is, as its ownership records say: `(worker ID, instance ID)`, the latest
/// seen. Written by the ownership sink, read by the message logger (the consumer is built before
/// the manager exists, so the records are where the handler learns its identity).
#[derive(Debug, Clone)]
struct Identity(Arc<watch::Sender<Option<(String, String)>>>);

impl Default for Identity {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(None)))
    }
}

impl Identity {
    /// Takes the identity from a record (a no-op when unchanged).
    fn learn(&self, record: &OwnershipRecord) {
        self.0.send_if_modified(|known| {
            let changed = known.as_ref().is_none_or(|(worker, instance)| {
                worker != record.worker.as_str() || *instance != record.instance
            });
            if changed {
                *known = Some((record.worker.to_string(), record.instance.clone()));
            }
            changed
        });
    }

    /// The identity, waiting up to `wait` for the first record (empty strings if none came).
    async fn get(&self, wait: Duration) -> (String, String) {
        if let Some(known) = self.0.borrow().clone() {
            return known;
        }
        let mut rx = self.0.subscribe();
        let known = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        let value = match known {
            Ok(Ok(value)) => value.clone(),
            _ => None,
        };
        value.unwrap_or_default()
    }
}

/// The [`OwnershipSink`] of `parti worker`: the `--ownership-log` file (if any) and the
/// process's [`Identity`].
#[derive(Debug)]
struct OwnershipLogSink {
    file: Option<JsonLines>,
    identity: Identity,
}

impl OwnershipSink for OwnershipLogSink {
    fn record(&self, record: &OwnershipRecord) {
        self.identity.learn(record);
        if let Some(file) = &self.file {
            file.append(record);
        }
    }
}

/// One line of `--process-log` (the checker's `ProcessedRecord`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessedLine<'a> {
    at_ns: u64,
    worker: &'a str,
    instance: &'a str,
    partition: &'a str,
    seq: u64,
}

/// How long the first message waits for the first ownership record (which names the process).
const IDENTITY_WAIT: Duration = Duration::from_secs(5);

/// The message handler of `--stream`: logs each message to `--process-log` and acks it.
#[derive(Debug, Clone)]
struct ProcessLogger {
    template: SubjectTemplate,
    identity: Identity,
    log: Option<Arc<JsonLines>>,
}

impl ProcessLogger {
    async fn handle(&self, message: &Message) -> Result<(), BoxError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let at_ns = now_ns();
        let (worker, instance) = self.identity.get(IDENTITY_WAIT).await;
        let partition = self.template.partition_id(message.subject.as_str());
        let seq = message.info().map(|info| info.stream_sequence);
        match (partition, seq) {
            (Some(partition), Ok(seq)) => log.append(&ProcessedLine {
                at_ns,
                worker: &worker,
                instance: &instance,
                partition: &partition,
                seq,
            }),
            _ => {
                tracing::warn!(subject = %message.subject, "a message that is not a partition's: not logged")
            }
        }
        Ok(())
    }
}

/// A subject template split around `{partition}`, to map a subject back to its partition.
#[derive(Debug, Clone)]
struct SubjectTemplate {
    prefix: String,
    suffix: String,
}

impl SubjectTemplate {
    /// Splits `template`, which must contain `{partition}` once.
    fn new(template: &str) -> anyhow::Result<Self> {
        match template.split_once("{partition}") {
            Some((prefix, suffix)) if !suffix.contains("{partition}") => Ok(Self {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
            }),
            _ => anyhow::bail!(
                "--subject-template {template:?} must contain {{partition}} exactly once"
            ),
        }
    }

    /// The [`Partition::id`] of a subject (its keys joined with `-`): the subject key between
    /// the template's prefix and suffix, with `.` (which no key contains) turned into `-`.
    fn partition_id(&self, subject: &str) -> Option<String> {
        let key = subject
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        let partition = Partition::new(key.split('.'), 0).ok()?;
        Some(partition.id())
    }
}

#[cfg(test)]
mod tests {
    use parti::ownership::OwnershipEvent;

    use super::*;

    fn assignment(version: u64, keys: &[&str]) -> Arc<Assignment> {
        Arc::new(Assignment::new(
            version,
            parti::Lifecycle::Running,
            keys.iter()
                .map(|k| Partition::new([*k], 10).unwrap())
                .collect(),
        ))
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

    #[test]
    fn entering_degraded_is_printed_with_its_reason() {
        let line = event_line(&Event::DegradedEntered {
            reason: parti::DegradedReason::NatsUnreachable,
        });
        assert_eq!(line.as_deref(), Some("degraded: natsUnreachable"));
    }

    #[test]
    fn subjects_map_back_to_partition_ids() {
        let template = SubjectTemplate::new("events.{partition}.v1").unwrap();
        assert_eq!(
            template.partition_id("events.tenant.o-7.v1").as_deref(),
            Some("tenant-o-7")
        );
        assert_eq!(template.partition_id("events.p3.v2"), None);
        assert_eq!(template.partition_id("other.p3.v1"), None);
        assert!(SubjectTemplate::new("events").is_err());
        assert!(SubjectTemplate::new("{partition}.{partition}").is_err());
    }

    #[test]
    fn json_lines_are_appended_whole_and_the_identity_is_learned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("own.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let identity = Identity::default();
        let sink = OwnershipLogSink {
            file: Some(JsonLines::open(&path).unwrap()),
            identity: identity.clone(),
        };
        let record = OwnershipRecord::new(
            7,
            parti::WorkerId::new("worker-2"),
            "i9",
            OwnershipEvent::Applied { version: 4 },
        );
        sink.record(&record);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let parsed: OwnershipRecord = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(parsed, record);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (worker, instance) = runtime.block_on(identity.get(Duration::from_millis(10)));
        assert_eq!((worker.as_str(), instance.as_str()), ("worker-2", "i9"));
        let unknown = runtime.block_on(Identity::default().get(Duration::from_millis(10)));
        assert_eq!(unknown, (String::new(), String::new()));
    }
}
