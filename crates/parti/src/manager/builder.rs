//! [`ManagerBuilder`]: configuration, plug-ins, start-up.

use std::sync::Arc;

use tokio::sync::{Mutex, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::dispatcher::{ManagedConsumer, SharedConsumer, spawn_dispatcher};
use super::fence::{FenceParts, spawn_fence};
use super::hooks::{Hooks, NoHooks};
use super::runtime::{Buckets, Ended, Outputs, Runtime};
use super::state_cell::StateCell;
use super::{Manager, WaitFailed};
use crate::assignment::Assignment;
use crate::config::Config;
use crate::election::ElectionAgent;
use crate::error::{Error, Result, StoreError};
use crate::ownership::{Holdings, OwnershipLog, OwnershipSink};
use crate::records::VersionFloor;
use crate::source::{PartitionSource, Static};
use crate::state::State;
use crate::store::{BucketSpec, Store};
use crate::strategy::{AssignmentStrategy, WeightedConsistentHash};

/// Where the coordination store comes from.
#[derive(Debug)]
pub(crate) enum StoreSource {
    /// NATS KV over this context; built at start so that `operationTimeout` applies.
    #[cfg(feature = "nats")]
    Nats(Box<async_nats::jetstream::Context>),
    /// A store supplied as is.
    Custom(Arc<dyn Store>),
}

/// Builds and starts a [`Manager`].
///
/// Defaults: [`Config::default`], an empty [`Static`] source, [`WeightedConsistentHash`], no
/// hooks, and the NATS KV lease for elections.
#[derive(Debug)]
#[must_use = "a builder does nothing until `start` or `spawn`"]
pub struct ManagerBuilder {
    store: StoreSource,
    config: Config,
    source: Arc<dyn PartitionSource>,
    strategy: Arc<dyn AssignmentStrategy>,
    hooks: Arc<dyn Hooks>,
    election: Option<Arc<dyn ElectionAgent>>,
    consumer: Option<ManagedConsumer>,
    ownership: Option<Arc<dyn OwnershipSink>>,
}

impl ManagerBuilder {
    pub(crate) fn new(store: StoreSource) -> Self {
        Self {
            store,
            config: Config::default(),
            source: Arc::new(Static::default()),
            strategy: Arc::new(WeightedConsistentHash::default()),
            hooks: Arc::new(NoHooks),
            election: None,
            consumer: None,
            ownership: None,
        }
    }

    /// The configuration (validated by [`start`](Self::start)).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// This worker's capacity and labels (see [`profile`](crate::profile)): sets `capacity`
    /// and `labels` of the configuration, so call it after [`config`](Self::config).
    pub fn profile(mut self, profile: crate::WorkerProfile) -> Self {
        self.config.capacity = profile.capacity.get();
        self.config.labels = profile.labels.into_iter().collect();
        self
    }

    /// Where the partitions come from.
    pub fn source(mut self, source: impl PartitionSource) -> Self {
        self.source = Arc::new(source);
        self
    }

    /// Same as [`source`](Self::source), for a shared source.
    pub fn source_arc(mut self, source: Arc<dyn PartitionSource>) -> Self {
        self.source = source;
        self
    }

    /// How the leader assigns partitions.
    pub fn strategy(mut self, strategy: impl AssignmentStrategy + 'static) -> Self {
        self.strategy = Arc::new(strategy);
        self
    }

    /// Same as [`strategy`](Self::strategy), for a shared strategy.
    pub fn strategy_arc(mut self, strategy: Arc<dyn AssignmentStrategy>) -> Self {
        self.strategy = strategy;
        self
    }

    /// Application callbacks, called sequentially and in order.
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// Replaces the NATS KV lease with another election agent. It is really used: this
    /// worker leads exactly when the agent says so.
    pub fn election_agent(mut self, agent: Arc<dyn ElectionAgent>) -> Self {
        self.election = Some(agent);
        self
    }

    /// A JetStream consumer kept pointed at this worker's partitions: updated on the initial
    /// assignment and on every change, before the hooks run; paused when the worker owns
    /// nothing or is fenced; closed by [`Manager::stop`]. Needs the `nats` feature.
    #[cfg(feature = "nats")]
    pub fn consumer(mut self, consumer: crate::WorkerConsumer) -> Self {
        self.consumer = Some(consumer);
        self
    }

    /// Where to send this worker's [ownership records](crate::ownership) as they happen
    /// (for example an [`OwnershipRecorder`](crate::OwnershipRecorder) in tests, or the
    /// `--ownership-log` file of `parti worker`).
    pub fn ownership_sink(mut self, sink: Arc<dyn OwnershipSink>) -> Self {
        self.ownership = Some(sink);
        self
    }

    /// Validates the configuration, opens the buckets, starts the worker and waits until it is
    /// `Stable`, within `startupTimeout`: [`spawn`](Self::spawn) followed by
    /// [`Manager::wait_for_state`]`(State::Stable, …)` under one deadline.
    ///
    /// Errors: `InvalidConfig`, `IdPoolExhausted`, `Store` (buckets cannot be opened or are
    /// incompatible), `StartupTimeout { state }` with the state the worker was stuck in. A start
    /// that fails stops the worker gracefully (its stable ID is released).
    ///
    /// Cancel safety: dropping this future before it completes stops every task at once, like
    /// dropping a [`Manager`]; nothing keeps running, but a stable ID already claimed is not
    /// released — it expires after `workerIdTtl`.
    pub async fn start(self) -> Result<Manager> {
        let (manager, deadline) = self.launch().await?;
        manager
            .settle_start(deadline, |state| state == State::Stable)
            .await?;
        Ok(manager)
    }

    /// Starts the worker and returns as soon as it has **joined**: it holds a stable ID, its
    /// heartbeat task runs (the first put may still be in flight) and it takes part in the
    /// election (state `WaitingAssignment` or later),
    /// before its first assignment. [`Manager::worker_id`] is set from then on.
    ///
    /// Use it to let a service come up (health endpoint, other subsystems) while the cluster
    /// settles, then [`Manager::wait_for_state`] or [`Manager::watch_state`] for `Stable`.
    /// Joining is bounded by `startupTimeout`; the same errors and the same cancel safety as
    /// [`start`](Self::start) apply.
    pub async fn spawn(self) -> Result<Manager> {
        let (manager, deadline) = self.launch().await?;
        manager.settle_start(deadline, State::has_joined).await?;
        Ok(manager)
    }

    /// Validates, opens the buckets and spawns the worker's tasks; returns the manager and the
    /// start-up deadline.
    async fn launch(self) -> Result<(Manager, tokio::time::Instant)> {
        self.config.validate()?;
        let config = Arc::new(self.config);
        #[cfg_attr(not(feature = "nats"), allow(clippy::infallible_destructuring_match))]
        let store: Arc<dyn Store> = match self.store {
            #[cfg(feature = "nats")]
            StoreSource::Nats(js) => Arc::new(
                crate::store::NatsStore::new(*js).with_operation_timeout(config.operation_timeout),
            ),
            StoreSource::Custom(store) => store,
        };
        let deadline = tokio::time::Instant::now() + config.startup_timeout;
        // `startJitter`: before the first call to NATS (opening the buckets is a burst of
        // JetStream API calls of its own), counted towards the start-up deadline.
        if !config.start_jitter.is_zero() {
            let delay = crate::clock::uniform_up_to(config.start_jitter);
            tracing::debug!(?delay, "start jitter");
            tokio::time::sleep(delay).await;
        }
        // NATS may still be coming up: retry transient failures until the start-up deadline;
        // a misconfigured or (without autoProvision) missing bucket is reported at once.
        let open = |spec: BucketSpec| {
            let store = Arc::clone(&store);
            async move {
                let mut delays = crate::retry::doubling(
                    std::time::Duration::from_millis(50),
                    std::time::Duration::from_secs(2),
                );
                loop {
                    let delay = delays.next_delay();
                    let error = match tokio::time::timeout_at(deadline, store.bucket(&spec)).await {
                        Ok(Ok(bucket)) => return Ok(bucket),
                        Ok(Err(
                            e @ (StoreError::IncompatibleBucket { .. }
                            | StoreError::InvalidName { .. }
                            | StoreError::BucketMissing { .. }),
                        )) => {
                            return Err(Error::from(e));
                        }
                        Ok(Err(e)) => e,
                        Err(_) => return Err(Error::StartupTimeout { state: State::Init }),
                    };
                    if tokio::time::Instant::now() + delay >= deadline {
                        return Err(Error::from(error));
                    }
                    tracing::warn!(bucket = %spec.name, %error, "cannot open bucket yet; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let [stable_id, election, heartbeat, assignment] = config.bucket_specs();
        let buckets = Buckets {
            stable_id: open(stable_id).await?,
            heartbeat: open(heartbeat).await?,
            election: open(election).await?,
            assignment: open(assignment).await?,
        };

        let (events, _) = broadcast::channel(super::EVENTS_CAPACITY);
        let gate_lease = self.consumer.as_ref().map(ManagedConsumer::lease_cell);
        let consumer_fleet = self
            .consumer
            .as_ref()
            .map(|c| c.pace(config.consumer_api_rate));
        let consumer: SharedConsumer = Arc::new(Mutex::new(self.consumer));
        let instance = new_instance_id();
        let ownership = OwnershipLog::new(self.ownership, &instance);
        let (lease, _) = watch::channel(0);
        let (released_tx, released) = watch::channel(0);
        let (missed_tx, missed) = watch::channel(0);
        let lineage = Arc::new(std::sync::atomic::AtomicU64::new(super::fence::NO_LINEAGE));
        let lapse_pending = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (sink, dispatcher) = spawn_dispatcher(self.hooks, events.clone());
        let holdings = Holdings::new(ownership.clone());
        let held = holdings.watch();
        let (fence, fence_task) = spawn_fence(FenceParts {
            consumer: Arc::clone(&consumer),
            consumer_timeout: config.operation_timeout,
            events: sink.clone(),
            holdings,
            lease: lease.clone(),
            released: released_tx,
            missed: missed_tx,
            lineage: Arc::clone(&lineage),
            lapse_pending: Arc::clone(&lapse_pending),
            gate_lease: gate_lease.clone(),
            log: ownership.clone(),
        });
        let (state, state_rx) = StateCell::new(sink.clone());
        let (assignment, assignment_rx) = watch::channel(Arc::new(Assignment::default()));
        let (worker_id, worker_id_rx) = watch::channel(None);
        let (leader, leader_rx) = watch::channel(false);
        let (degraded_reason, degraded_reason_rx) = watch::channel(None);
        let (refresh, refresh_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let ended = Ended::default();
        let runtime = Runtime {
            config: Arc::clone(&config),
            store,
            buckets,
            strategy: self.strategy,
            source: self.source,
            election: self.election,
            instance: instance.clone(),
            events: sink,
            ownership,
            lease,
            fence,
            released,
            missed,
            lineage,
            holder: None,
            gate_lease,
            consumer_fleet,
            lapse_pending,
            out: Outputs {
                state,
                assignment,
                worker_id,
                leader,
                degraded_reason,
                ended: Arc::clone(&ended),
            },
            refresh: refresh_rx,
            floor_seen: watch::channel(VersionFloor {
                version: 0,
                term: 0,
            })
            .0,
            // Replaced by the bucket guard's when the runtime starts.
            bucket_trouble: watch::channel(None).1,
            guard_periodic: watch::channel(false).0,
            guard_probe: Arc::new(tokio::sync::Notify::new()),
        };
        let task = AbortOnDropHandle::new(tokio::spawn(runtime.run(cancel.clone())));
        let manager = Manager {
            state: state_rx,
            assignment: assignment_rx,
            worker_id: worker_id_rx,
            leader: leader_rx,
            degraded_reason: degraded_reason_rx,
            held,
            instance,
            events,
            refresh,
            cancel,
            shutdown_timeout: config.shutdown_timeout,
            runtime: Mutex::new(Some(task)),
            consumer,
            dispatcher: Mutex::new(Some(AbortOnDropHandle::new(dispatcher))),
            fence: Mutex::new(Some(AbortOnDropHandle::new(fence_task))),
            ended,
        };
        Ok((manager, deadline))
    }
}

impl Manager {
    /// Waits until the state satisfies `reached`, by `deadline`; on failure stops the worker
    /// (releasing its ID) and returns `StartupTimeout` or the reason the worker ended.
    async fn settle_start(
        &self,
        deadline: tokio::time::Instant,
        reached: impl FnMut(State) -> bool,
    ) -> Result<()> {
        let result = match self.wait_until(deadline, reached).await {
            Ok(_) => return Ok(()),
            Err(WaitFailed::Deadline(state)) => Err(Error::StartupTimeout { state }),
            Err(WaitFailed::Ended(e)) => Err(e),
        };
        let _ = self.stop().await;
        result
    }
}

/// A random identifier of this process start.
fn new_instance_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!("{:016x}", rng.random::<u64>())
}
