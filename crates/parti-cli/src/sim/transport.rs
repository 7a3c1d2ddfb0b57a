//! Where coordination and messages go: a real nats-server (KV buckets, a JetStream stream and a
//! `WorkerConsumer` per worker) or the in-memory store (with the in-process log of `memlog`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::stream::{self, RetentionPolicy};
use async_nats::jetstream::{self, Message};
use parti::error::BoxError;
use parti::ownership::{OwnershipRecorder, now_ns};
use parti::store::{Bucket, BucketSpec, MemoryStore, NatsStore, Store};
use parti::{Config, Manager, WorkerConsumer};
use parti_testkit::checker::ProcessedRecord;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::holdings::{Holdings, WorkerSink};
use super::ledger::{Ledger, partition_id};
use super::memlog::{LetGo, MemLog, Reader};
use super::producer::{self, SUBJECT_PREFIX, Sink};
use super::server::NatsProcess;

/// The demo's stream (NATS transport).
pub(crate) const STREAM: &str = "sim-events";
/// How long the server stays down in a NATS restart.
const NATS_DOWNTIME: Duration = Duration::from_secs(1);
/// The in-memory stand-in for a NATS restart: every client cut off this long.
const MEMORY_OUTAGE: Duration = Duration::from_secs(2);

/// The transport of one run.
pub(crate) enum Transport {
    Nats(Box<Nats>),
    Memory {
        store: MemoryStore,
        log: Arc<MemLog>,
    },
}

/// The NATS transport's parts.
pub(crate) struct Nats {
    server: NatsProcess,
    /// The producer's connection.
    producer: jetstream::Context,
}

/// What a started worker holds besides its manager.
pub(crate) enum Attachment {
    /// Nothing: the manager owns the `WorkerConsumer` (and, through it, the connection).
    Nats,
    /// The in-memory log reader.
    Memory(Reader),
}

impl Transport {
    /// Starts a nats-server and creates the stream.
    pub(crate) async fn nats(binary: std::path::PathBuf) -> anyhow::Result<Self> {
        let server = NatsProcess::start(binary).await?;
        let producer = jetstream::new(connect(&server.url()).await?);
        producer
            .create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{SUBJECT_PREFIX}>")],
                retention: RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .context("cannot create the stream")?;
        Ok(Self::Nats(Box::new(Nats { server, producer })))
    }

    pub(crate) fn memory(seed: u64, partitions: usize) -> Self {
        Self::Memory {
            store: MemoryStore::with_seed(seed),
            log: Arc::new(MemLog::new(partitions)),
        }
    }

    /// `nats` or `memory`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Nats(_) => "nats",
            Self::Memory { .. } => "memory",
        }
    }

    /// One line on what is used.
    pub(crate) fn detail(&self) -> String {
        match self {
            Self::Nats(nats) => format!(
                "{} at {}; messages through JetStream stream {STREAM} (work-queue retention), one WorkerConsumer per worker",
                if nats.server.version.is_empty() {
                    "nats-server"
                } else {
                    &nats.server.version
                },
                nats.server.url()
            ),
            Self::Memory { .. } => "in-memory store; messages through an in-process log with committed offsets (at-least-once)".into(),
        }
    }

    /// What the outage fault does.
    pub(crate) fn outage_name(&self) -> &'static str {
        match self {
            Self::Nats(_) => "nats_restart",
            Self::Memory { .. } => "store_outage",
        }
    }

    /// The assignment bucket, opened with the spec the workers use.
    pub(crate) async fn assignment_bucket(
        &self,
        config: &Config,
    ) -> anyhow::Result<Arc<dyn Bucket>> {
        let b = &config.kv_buckets;
        let spec = BucketSpec::new(b.assignment.clone()).replicas(b.replicas);
        let bucket = match self {
            Self::Nats(nats) => {
                let js = jetstream::new(connect(&nats.server.url()).await?);
                NatsStore::new(js)
                    .with_operation_timeout(config.operation_timeout)
                    .bucket(&spec)
                    .await?
            }
            Self::Memory { store, .. } => store.client().bucket(&spec).await?,
        };
        Ok(bucket)
    }

    /// What starting a worker needs, detached from `self`.
    pub(crate) fn starter(&self) -> Starter {
        match self {
            Self::Nats(nats) => Starter::Nats {
                url: nats.server.url(),
            },
            Self::Memory { store, log } => Starter::Memory {
                store: store.clone(),
                log: Arc::clone(log),
            },
        }
    }

    /// Publishes `rate` messages a second, round-robin over the partitions, until cancelled.
    pub(crate) fn spawn_producer(
        &self,
        ledger: Arc<Ledger>,
        partitions: usize,
        rate: u32,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let sink = match self {
            Self::Nats(nats) => Sink::Nats(nats.producer.clone()),
            Self::Memory { store, log } => Sink::Memory(store.client(), Arc::clone(log)),
        };
        tokio::spawn(producer::run(sink, ledger, partitions, rate, cancel))
    }

    /// The outage fault: the server killed and started again, or every store client cut off.
    /// Returns how long after the return the outage still lasts (0 when it already healed).
    pub(crate) async fn outage(&mut self) -> anyhow::Result<Duration> {
        match self {
            Self::Nats(nats) => {
                nats.server.restart(NATS_DOWNTIME).await?;
                Ok(Duration::ZERO)
            }
            Self::Memory { store, .. } => {
                store.backend_faults().cut_off_for(MEMORY_OUTAGE);
                Ok(MEMORY_OUTAGE)
            }
        }
    }

    /// Stops the server, if any.
    pub(crate) async fn shutdown(&mut self) {
        if let Self::Nats(nats) = self {
            nats.server.kill().await;
        }
    }
}

/// Starts workers on a transport.
#[derive(Clone)]
pub(crate) enum Starter {
    Nats {
        url: String,
    },
    Memory {
        store: MemoryStore,
        log: Arc<MemLog>,
    },
}

impl Starter {
    /// Starts one worker, its ownership records going to `recorder`; returns once it is
    /// `Stable`.
    pub(crate) async fn start_worker(
        &self,
        config: Config,
        source: parti::source::Static,
        ledger: &Arc<Ledger>,
        recorder: &OwnershipRecorder,
        partitions: usize,
    ) -> anyhow::Result<(Arc<Manager>, Attachment)> {
        let holdings = Arc::new(Holdings::default());
        let sink = Arc::new(WorkerSink::new(recorder.clone(), Arc::clone(&holdings)));
        match self {
            Self::Nats { url } => {
                let client = connect(url).await?;
                let js = jetstream::new(client);
                let consumer = WorkerConsumer::builder(js.clone(), STREAM)
                    .subject_template(format!("{SUBJECT_PREFIX}{{partition}}"))
                    .consumer_prefix("sim")
                    .max_subjects(partitions.max(500))
                    .ack_wait(Duration::from_secs(3))
                    .takeover_after(Duration::from_secs(2))
                    .check_interval(Duration::from_secs(1))
                    .close_timeout(Duration::from_secs(3))
                    .handler(handler(Arc::clone(ledger), holdings))
                    .build()
                    .await?;
                let manager = Manager::builder(js)
                    .config(config)
                    .source(source)
                    .ownership_sink(sink)
                    .consumer(consumer)
                    .start()
                    .await?;
                Ok((Arc::new(manager), Attachment::Nats))
            }
            Self::Memory { store, log } => {
                let client = store.client();
                let let_go = LetGo {
                    holdings: Arc::clone(&holdings),
                    log: Arc::clone(log),
                };
                let manager = Manager::builder_with_store(Arc::new(client.clone()))
                    .config(config)
                    .source(source)
                    .ownership_sink(sink)
                    .hooks(let_go)
                    .start()
                    .await?;
                let manager = Arc::new(manager);
                let reader = Reader::spawn(
                    Arc::clone(log),
                    Arc::clone(ledger),
                    Arc::clone(&manager),
                    holdings,
                    client,
                );
                Ok((manager, Attachment::Memory(reader)))
            }
        }
    }
}

/// A connection that retries quickly after a server restart.
async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Records every message handled: when, by whom (as the worker's ownership records name it),
/// partition from the subject, sequence from the payload.
fn handler(
    ledger: Arc<Ledger>,
    holdings: Arc<Holdings>,
) -> impl Fn(Message) -> std::future::Ready<Result<(), BoxError>> + Send + Sync + 'static {
    move |msg: Message| {
        let at_ns = now_ns();
        let partition = msg
            .subject
            .as_str()
            .strip_prefix(SUBJECT_PREFIX)
            .and_then(|key| key.strip_prefix('p'))
            .and_then(|n| n.parse::<usize>().ok());
        let seq = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(partition), Some(seq)) = (partition, seq) {
            let (worker, instance) = holdings.identity();
            ledger.handled([ProcessedRecord {
                at_ns,
                worker,
                instance,
                partition: partition_id(partition),
                seq,
            }]);
        }
        std::future::ready(Ok(()))
    }
}
