//! A deterministic cluster simulation: many managers in one process over one [`MemoryStore`], on
//! tokio's paused clock, driven by a seeded schedule of faults, judged by what the workers
//! *held*.
//!
//! One seed is one run: the same seed gives the same schedule, the same store faults and (with
//! `--cfg tokio_unstable`, which seeds tokio's `select!`) the same interleaving.
//!
//! A run: a cold start of 3–6 workers, then 3–5 phases, each either one *checked* event on a
//! settled cluster (a crash or leader crash, which may move only the victim's partitions; a
//! rolling restart, which may move nothing when every worker gets its ID back) or a burst of
//! chaos: joins, graceful leaves, crashes, leader crashes, flaps shorter than the grace period,
//! partition refreshes, one worker or the whole store cut off, rolling and full restarts, a
//! worker paused past its leases (`SIGSTOP`), a stable ID taken while its owner is cut off,
//! garbage over any key of any bucket, a bucket deleted and created again, bursts of failed
//! calls (see `faults.rs`). Every seed's store also has latency (one in five a slow store, up
//! to 500 ms a call) and, in some seeds, random failures and lost replies (applied writes whose
//! reply is lost).
//!
//! What is checked:
//! - **the ownership checker** (`parti_testkit::checker`), at the end of the seed, over every
//!   manager's ownership records (each manager has an `OwnershipRecorder` as its sink), the
//!   faults injected (a kill ends its process's holdings; every fault excuses gaps until it
//!   heals), and the committed `cluster` versions the observer saw; tolerance 0, gap bound
//!   2 × heartbeatTtl + grace + electionTtl + 2 s, window from the end of the cold start to the
//!   start of the final stop, gaps over the partitions the source served all along;
//! - the simulation's own checks, which the checker does not make: every phase ends by
//!   settling (the cluster converges within [`quiet`] of the last fault and stays so:
//!   `notConverged`), a checked crash moves only orphans (`crashMovedOthers`), a rolling
//!   restart moves nothing (`rollingRestartMoved`), at most one worker leads at a time
//!   (`twoLeaders`) and under one term (`termReused`), a graceful stop leaves no heartbeat or
//!   stable ID behind (`stopLeftKeys`).
//!
//! A violation fails the seed unless `known.rs` lists its kind with a fault the seed injected.
//!
//! The configuration is the default one except `startupTimeout`: by default it equals
//! `coldStartWindow` (30 s), so every worker of a cold start times out just before the window
//! closes.

mod events;
mod faults;
pub mod known;
mod observer;
mod probes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parti::ownership::{OwnershipRecord, OwnershipRecorder, OwnershipSink, now_ns};
use parti::source::Static;
use parti::store::{BucketSpec, MemoryStore, Store};
use parti::{Config, Manager, Partition, State, WorkerId};
use parti_testkit::checker::{CheckConfig, FaultRecord, History, Report, check};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use observer::{Committed, Shared, ids};

/// What one run covered, and the known violations it showed (an unknown one fails the run).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub simulated: Duration,
    pub events: usize,
    pub publishes: u64,
    /// Known violations found: kind → how many.
    pub known: BTreeMap<String, usize>,
    /// The fault kinds the seed injected (see `faults.rs`).
    pub faults: BTreeSet<String>,
}

/// Runs one seed on a fresh paused runtime. `Err` holds the report of a run that failed (a
/// violation `known.rs` does not explain): seed, violations, the checker's report, the trace.
pub fn run_seed(seed: u64, verbose: bool) -> Result<Outcome, String> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("runtime");
    runtime.block_on(async move {
        let shared = Shared::new(verbose);
        let mut sim = Sim::new(seed, Arc::clone(&shared));
        let result = sim.run().await;
        let publishes = *shared.publishes.lock().unwrap();
        let events = sim.events;
        let window = (sim.window_from, now_ns());
        sim.shutdown(result.is_ok()).await;
        let report = check(&sim.history(window), &sim.check_config());
        let faults = sim.fault_kinds();
        let mut found: BTreeMap<String, usize> = BTreeMap::new();
        for kind in report.violations.iter().map(violation_kind) {
            *found.entry(kind).or_default() += 1;
        }
        for (kind, _) in shared.violations() {
            *found.entry(kind.to_owned()).or_default() += 1;
        }
        let unknown: Vec<&String> = found
            .keys()
            .filter(|kind| !known::explains(kind, &faults))
            .collect();
        if verbose {
            eprintln!("{report}");
        }
        // A run cut short by a failed check (`notConverged`) is judged by that check's kind.
        if unknown.is_empty() {
            return Ok(Outcome {
                simulated: shared.elapsed(),
                events,
                publishes,
                known: found,
                faults,
            });
        }
        let own: Vec<String> = shared
            .violations()
            .into_iter()
            .map(|(kind, what)| format!("{kind}: {what}"))
            .collect();
        Err(format!(
            "simulation seed {seed} failed with violations not in known.rs: {unknown:?} \
             (faults injected: {faults:?}; reproduce: PARTI_SIM_SEED={seed} cargo test -p parti \
             --test sim_cluster)\nsimulation checks:\n  {}\n{}trace:\n{}",
            own.join("\n  "),
            summary(&report),
            shared.trace().join("\n")
        ))
    })
}

/// The `kind` tag of a checker violation (`overlap`, `gap`, …), as `known.rs` names it.
pub fn violation_kind(violation: &parti_testkit::checker::Violation) -> String {
    serde_json::to_value(violation)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The checker's report, cut short: the counts and the first violations of each kind.
fn summary(report: &Report) -> String {
    const PER_KIND: usize = 5;
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = format!(
        "ownership check: {} violation(s) over {} holding(s) of {} instance(s)\n",
        report.violations.len(),
        report.counts.holdings,
        report.counts.instances
    );
    for violation in &report.violations {
        let seen = shown.entry(violation_kind(violation)).or_default();
        *seen += 1;
        if *seen <= PER_KIND {
            out.push_str(&format!("  - {violation}\n"));
        }
    }
    out
}

/// A worker the simulation started.
struct Slot {
    n: usize,
    manager: Arc<Manager>,
    client: MemoryStore,
    /// What this worker held, as its manager reported it.
    recorder: OwnershipRecorder,
    alive: bool,
    listener: JoinHandle<()>,
}

type Slots = Arc<Mutex<Vec<Slot>>>;

struct Sim {
    rng: StdRng,
    store: MemoryStore,
    config: Config,
    source: Static,
    partitions: Vec<Partition>,
    next_partition: usize,
    shared: Arc<Shared>,
    slots: Slots,
    starting: Vec<(usize, JoinHandle<()>)>,
    stopping: Vec<JoinHandle<()>>,
    next_worker: usize,
    /// Per-seed store faults every worker client gets.
    fault_profile: FaultProfile,
    background: Vec<JoinHandle<()>>,
    events: usize,
    /// When the last timed fault heals.
    faults_until: tokio::time::Instant,
    /// Every manager's ownership records, including those of managers that never started.
    recorders: Vec<OwnershipRecorder>,
    /// When the cold start ended: the checker's window opens there.
    window_from: u64,
}

/// The store faults every worker client of a seed gets.
#[derive(Debug, Clone, Copy)]
struct FaultProfile {
    max_latency: Duration,
    failure_rate: f64,
    lost_reply_rate: f64,
}

impl FaultProfile {
    /// Its fault kinds, as `known.rs` names them.
    fn kinds(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.max_latency > Duration::from_millis(5), "slowStore"),
            (self.failure_rate > 0.0, "failures"),
            (self.lost_reply_rate > 0.0, "lostReplies"),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
    }
}

const MAX_WORKERS: usize = 10;
/// How often a settling cluster is checked.
const POLL: Duration = Duration::from_secs(1);
/// How long a cluster must stay converged to count as settled.
const HOLD: Duration = Duration::from_secs(20);
/// A wait that ends a phase: longer than every window and timer the cluster can be inside.
fn quiet(config: &Config) -> Duration {
    let d = &config.degraded_behavior;
    config.cold_start_window
        + config.planned_scale_window
        + config.election_ttl
        + config.worker_id_ttl
        + config.heartbeat_ttl
        + config.emergency_grace_period()
        + d.exit_threshold
        + d.recovery_grace_period
        + config.assignment.min_rebalance_interval
}

impl Sim {
    fn new(seed: u64, shared: Arc<Shared>) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut config = Config::default();
        config.worker_id_max = 49;
        // By default startupTimeout = coldStartWindow: see the module docs.
        config.startup_timeout = config.cold_start_window * 3;
        if rng.random_bool(0.5) {
            // A grace period that a flapping heartbeat can come back within (SPEC §11.6).
            config.emergency_grace_period = Some(config.heartbeat_ttl);
        }
        let count = rng.random_range(20..=120);
        let partitions: Vec<Partition> = (0..count).map(|i| partition(&mut rng, i)).collect();
        let fault_profile = FaultProfile {
            // One seed in five gets a slow store: calls of up to 500 ms overlap outages, lease
            // changes and publishes.
            max_latency: Duration::from_millis(if rng.random_bool(0.2) {
                rng.random_range(50..=500)
            } else {
                rng.random_range(0..=5)
            }),
            failure_rate: if rng.random_bool(0.3) { 0.01 } else { 0.0 },
            lost_reply_rate: if rng.random_bool(0.3) { 0.005 } else { 0.0 },
        };
        shared.log(format!(
            "seed {seed}: {count} partitions, grace {:?}, faults {fault_profile:?}",
            config.emergency_grace_period()
        ));
        shared.sources.lock().unwrap().push(ids(&partitions));
        Self {
            store: MemoryStore::with_seed(seed),
            source: Static::new(partitions.clone()),
            next_partition: count,
            partitions,
            config,
            rng,
            shared,
            slots: Slots::default(),
            starting: Vec::new(),
            stopping: Vec::new(),
            next_worker: 0,
            fault_profile,
            background: Vec::new(),
            events: 0,
            faults_until: tokio::time::Instant::now(),
            recorders: Vec::new(),
            window_from: now_ns(),
        }
    }

    // ---- the ownership check ----

    /// Everything the checker judges, over `window` (from the end of the cold start to the
    /// start of the final stop). Gaps are checked for the partitions the source served all
    /// along; those added or removed by a refresh are not (they are held only part of the run).
    fn history(&self, window: (u64, u64)) -> History {
        let sources = self.shared.sources.lock().unwrap();
        let mut partitions = sources.first().cloned().unwrap_or_default();
        for source in sources.iter().skip(1) {
            partitions.retain(|p| source.contains(p));
        }
        History {
            ownership: self.recorders.iter().flat_map(|r| r.records()).collect(),
            faults: self.shared.faults.lock().unwrap().clone(),
            versions: self.shared.versions.lock().unwrap().clone(),
            partitions: partitions.into_iter().collect(),
            window,
            ..History::default()
        }
    }

    /// Tolerance 0 (one clock), and a partition may go unheld for heartbeatTtl + grace +
    /// electionTtl + 2 s after the last fault before it healed, plus one heartbeat TTL: a
    /// worker that comes back as a new process under a mapped ID is named only once its
    /// predecessor's lease has provably ended, and the moves a new leader makes right after a
    /// crash are release-then-acquire.
    fn check_config(&self) -> CheckConfig {
        let c = &self.config;
        let bound = c.heartbeat_ttl * 2
            + c.emergency_grace_period()
            + c.election_ttl
            + Duration::from_secs(2);
        CheckConfig {
            tolerance_ns: 0,
            gap_bound_ns: u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// The fault kinds injected in this seed: the recorded faults and the store profile.
    fn fault_kinds(&self) -> BTreeSet<String> {
        let recorded = self.shared.faults.lock().unwrap();
        recorded
            .iter()
            .map(|f| f.kind.clone())
            .chain(self.fault_profile.kinds().map(str::to_owned))
            .collect()
    }

    async fn run(&mut self) -> Result<(), ()> {
        let bucket = self
            .store
            .bucket(&BucketSpec::new(self.config.kv_buckets.assignment.clone()))
            .await
            .map_err(drop)?;
        self.background.push(tokio::spawn(observer::observe(
            bucket,
            Arc::clone(&self.shared),
        )));
        self.background.push(tokio::spawn(probes::sample(
            Arc::clone(&self.slots),
            Arc::clone(&self.shared),
        )));

        let initial = self.rng.random_range(3..=6);
        self.shared.log(format!("cold start of {initial} workers"));
        for _ in 0..initial {
            self.join();
        }
        self.settle("cold start").await?;
        self.window_from = now_ns();
        let phases = self.rng.random_range(3..=5);
        for _ in 0..phases {
            if self.rng.random_bool(0.35) {
                self.checked_event().await?;
            } else {
                let burst = self.rng.random_range(1..=4);
                for _ in 0..burst {
                    self.chaos_event().await;
                    let gap = Duration::from_millis(self.rng.random_range(0..=15_000));
                    tokio::time::sleep(gap).await;
                }
                self.settle("chaos burst").await?;
            }
            if self.alive().is_empty() {
                // Nobody holds anything until the new workers start: a fault that heals then.
                let empty_since = now_ns();
                for _ in 0..self.rng.random_range(1..=3) {
                    self.join();
                }
                self.finish_pending().await;
                self.shared.fault(FaultRecord {
                    kind: "rejoin".into(),
                    worker: None,
                    instance: None,
                    start_ns: empty_since,
                    end_ns: now_ns(),
                    ends_process: false,
                });
                self.settle("rejoin").await?;
            }
        }
        Ok(())
    }

    // ---- workers ----

    fn alive(&self) -> Vec<(usize, Arc<Manager>)> {
        self.slots
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.alive)
            .map(|s| (s.n, Arc::clone(&s.manager)))
            .collect()
    }

    /// The stable ID of worker `n` and its instance (from its ownership records; `None` before
    /// it recorded anything).
    fn identity(&self, n: usize) -> (String, Option<String>) {
        let slots = self.slots.lock().unwrap();
        let Some(slot) = slots.iter().rev().find(|s| s.n == n) else {
            return (String::new(), None);
        };
        let instance = slot.recorder.records().first().map(|r| r.instance.clone());
        (slot.manager.worker_id().as_str().to_owned(), instance)
    }

    /// The store client of live worker `n`.
    fn client(&self, n: usize) -> Option<MemoryStore> {
        let slots = self.slots.lock().unwrap();
        slots
            .iter()
            .find(|s| s.n == n && s.alive)
            .map(|s| s.client.clone())
    }

    fn join(&mut self) {
        self.join_with(self.config.clone());
    }

    /// Starts a worker with `config` (the seed's, or one aimed at a stable ID).
    fn join_with(&mut self, config: Config) {
        self.events += 1;
        let n = self.next_worker;
        self.next_worker += 1;
        let client = self.store.client();
        let f = self.fault_profile;
        client.faults().set_latency(Duration::ZERO, f.max_latency);
        client.faults().set_failure_rate(f.failure_rate);
        client.faults().set_lost_reply_rate(f.lost_reply_rate);
        client
            .faults()
            .resnapshot_on_reconnect(self.rng.random_bool(0.5));
        let recorder = OwnershipRecorder::default();
        self.recorders.push(recorder.clone());
        let sink: Arc<dyn OwnershipSink> = match traced_partition(&self.shared) {
            Some(partition) => Arc::new(TracedSink {
                n,
                partition,
                recorder: recorder.clone(),
                shared: Arc::clone(&self.shared),
            }),
            None => Arc::new(recorder.clone()),
        };
        let builder = Manager::builder_with_store(Arc::new(client.clone()))
            .config(config)
            .source(self.source.clone())
            .ownership_sink(sink);
        let (shared, slots) = (Arc::clone(&self.shared), Arc::clone(&self.slots));
        shared.log(format!("join w{n}"));
        let task = tokio::spawn(async move {
            match builder.start().await {
                Ok(manager) => {
                    let manager = Arc::new(manager);
                    shared.log(format!(
                        "w{n} started as {} ({})",
                        manager.worker_id(),
                        if manager.is_leader() {
                            "leader"
                        } else {
                            "follower"
                        }
                    ));
                    let listener =
                        tokio::spawn(probes::listen(n, manager.events(), Arc::clone(&shared)));
                    slots.lock().unwrap().push(Slot {
                        n,
                        manager,
                        client,
                        recorder,
                        alive: true,
                        listener,
                    });
                }
                Err(e) => shared.log(format!("w{n} did not start: {e}")),
            }
        });
        self.starting.push((n, task));
    }

    /// Marks a worker dead for the checks and hands back its manager.
    fn take(&mut self, n: usize) -> Option<Arc<Manager>> {
        let mut slots = self.slots.lock().unwrap();
        let slot = slots.iter_mut().find(|s| s.n == n && s.alive)?;
        slot.alive = false;
        Some(Arc::clone(&slot.manager))
    }

    /// Kills worker `n` (no stop path) and records the kill: its holdings end there.
    async fn crash(&mut self, n: usize) {
        self.events += 1;
        if let Some(manager) = self.take(n) {
            self.shared
                .log(format!("crash w{n} ({})", manager.worker_id()));
            manager.kill().await;
            let (worker, instance) = self.identity(n);
            let at = now_ns();
            self.shared.fault(FaultRecord {
                kind: "kill".into(),
                worker: Some(worker),
                instance,
                start_ns: at,
                end_ns: at,
                ends_process: true,
            });
        }
    }

    fn leave(&mut self, n: usize) {
        self.events += 1;
        if self.client(n).is_some() {
            // A graceful leave releases at once, but its partitions are placed again only when
            // the planned window closes (docs/ownership.md, "What is not done yet"): the leave
            // excuses gaps for one planned window, and the gap bound applies after it.
            self.record_fault("leave", Some(n), self.config.planned_scale_window);
        }
        let Some(manager) = self.take(n) else { return };
        let shared = Arc::clone(&self.shared);
        shared.log(format!("graceful leave w{n} ({})", manager.worker_id()));
        self.stopping.push(tokio::spawn(async move {
            if let Err(e) = manager.stop().await {
                shared.log(format!("w{n} stop: {e}"));
            }
        }));
    }

    /// Cuts worker `n` off from the store for `duration` (`what` names it in the trace).
    fn cut_off(&mut self, n: usize, duration: Duration, what: &str) {
        self.events += 1;
        let Some(client) = self.client(n) else { return };
        self.shared.log(format!("{what}: w{n} cut off"));
        self.record_fault("cut", Some(n), duration);
        client.faults().cut_off_for(duration);
        let until = tokio::time::Instant::now() + duration;
        self.faults_until = self.faults_until.max(until);
    }

    fn leader(&self) -> Option<usize> {
        self.alive()
            .into_iter()
            .find(|(_, m)| m.is_leader())
            .map(|(n, _)| n)
    }

    fn random_alive(&mut self) -> Option<usize> {
        let alive: Vec<usize> = self.alive().into_iter().map(|(n, _)| n).collect();
        alive.choose(&mut self.rng).copied()
    }

    /// Waits for every start and stop in flight (each is bounded by its own timeout).
    async fn finish_pending(&mut self) {
        for (_, task) in self.starting.drain(..) {
            let _ = task.await;
        }
        for task in self.stopping.drain(..) {
            let _ = task.await;
        }
    }

    // ---- checks ----

    /// Waits for starts, stops and cut-offs to end; then, within [`quiet`] (longer than every
    /// window and timer) plus [`HOLD`], the cluster must be converged and stay so for [`HOLD`].
    async fn settle(&mut self, what: &str) -> Result<(), ()> {
        self.finish_pending().await;
        tokio::time::sleep_until(self.faults_until).await;
        let deadline = tokio::time::Instant::now() + quiet(&self.config) + HOLD;
        let mut since = None;
        loop {
            let now = tokio::time::Instant::now();
            let problems = self.convergence_problems();
            if !problems.is_empty() {
                since = None;
                if now >= deadline {
                    for problem in problems {
                        self.shared.violate(
                            "notConverged",
                            format!(
                                "not converged {:?} after {what}: {problem}",
                                quiet(&self.config) + HOLD
                            ),
                        );
                    }
                    return Err(());
                }
            } else if now.duration_since(*since.get_or_insert(now)) >= HOLD {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let committed = self.shared.committed.lock().unwrap().clone();
        self.shared.log(format!(
            "settled after {what}: v{} (term {}, {}) over {} workers",
            committed.version,
            committed.term,
            committed.reason,
            self.alive().len()
        ));
        Ok(())
    }

    /// Why the cluster is not converged: every live worker Stable with exactly its share of
    /// the map, the map over exactly the live workers and the source's partitions, one leader.
    fn convergence_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let committed: Committed = self.shared.committed.lock().unwrap().clone();
        let alive = self.alive();
        if alive.is_empty() {
            // Nothing is published over zero workers: the map waits for the next join.
            return problems;
        }
        let mut live_ids = BTreeSet::new();
        for (n, m) in &alive {
            let id = m.worker_id();
            if !live_ids.insert(id.clone()) {
                problems.push(format!("two live workers hold {id}"));
            }
            if m.state() != State::Stable {
                problems.push(format!("w{n} ({id}) is {}", m.state()));
            }
            let mine = committed.map.get(&id).cloned().unwrap_or_default();
            if m.assignment().partitions != mine {
                problems.push(format!(
                    "w{n} ({id}) owns {} partitions (v{}), the map v{} gives it {}",
                    m.assignment().partitions.len(),
                    m.assignment().version,
                    committed.version,
                    mine.len()
                ));
            }
        }
        let mapped: BTreeSet<WorkerId> = committed.map.keys().cloned().collect();
        if mapped != live_ids {
            problems.push(format!(
                "the map's workers {mapped:?} are not the live ones {live_ids:?}"
            ));
        }
        let covered: BTreeSet<_> = committed.map.values().flat_map(|ps| ids(ps)).collect();
        if covered != ids(&self.partitions) {
            problems.push(format!(
                "the map covers {} partitions, the source has {}",
                covered.len(),
                self.partitions.len()
            ));
        }
        let leaders: Vec<usize> = alive
            .iter()
            .filter(|(_, m)| m.is_leader())
            .map(|(n, _)| *n)
            .collect();
        if leaders.len() != 1 {
            problems.push(format!("leaders: {leaders:?}"));
        }
        problems
    }

    /// Stops everything that is left, gracefully, and (when the run got this far) checks that
    /// each of those workers deleted its heartbeat and released its stable ID (crashed ones
    /// expire by TTL instead).
    async fn shutdown(&mut self, completed: bool) {
        for task in self.background.drain(..) {
            task.abort();
        }
        if completed {
            // A stop that meets an injected failure leaves keys to expire: not what is checked.
            for slot in self.slots.lock().unwrap().iter() {
                slot.client.faults().set_failure_rate(0.0);
            }
            let stopped: Vec<String> = self
                .alive()
                .into_iter()
                .map(|(n, m)| {
                    self.leave(n);
                    m.worker_id().as_str().to_owned()
                })
                .collect();
            self.finish_pending().await;
            let b = &self.config.kv_buckets;
            for spec in [
                parti::heartbeat::bucket_spec(&b.heartbeat, self.config.heartbeat_ttl, 1),
                parti::stable_id::bucket_spec(&b.stable_id, self.config.worker_id_ttl, 1),
            ] {
                let left = match self.store.bucket(&spec).await {
                    Ok(bucket) => bucket.list(">").await,
                    Err(e) => Err(e),
                };
                match left {
                    Ok(left) => {
                        let kept: Vec<&String> = left
                            .iter()
                            .map(|e| &e.key)
                            .filter(|k| stopped.contains(k))
                            .collect();
                        if !kept.is_empty() {
                            self.shared.violate(
                                "stopLeftKeys",
                                format!("after a graceful stop {} still holds {kept:?}", spec.name),
                            );
                        }
                    }
                    Err(e) => self
                        .shared
                        .violate("harness", format!("list {}: {e}", spec.name)),
                }
            }
        }
        for slot in self.slots.lock().unwrap().drain(..) {
            slot.listener.abort();
        }
        for (_, task) in self.starting.drain(..) {
            task.abort();
        }
    }
}

fn partition(rng: &mut StdRng, i: usize) -> Partition {
    let weight = if rng.random_bool(0.2) {
        rng.random_range(100..=1_000)
    } else {
        100
    };
    Partition::new([format!("p{i}")], weight).expect("partition")
}

/// With `PARTI_SIM_TRACE=p7` (a partition ID) on a verbose run, every ownership record about
/// that partition goes into the trace as it happens.
fn traced_partition(shared: &Shared) -> Option<String> {
    shared
        .verbose
        .then(|| std::env::var("PARTI_SIM_TRACE").ok())
        .flatten()
}

/// An ownership sink that records, and logs the records about one partition to the trace.
struct TracedSink {
    n: usize,
    partition: String,
    recorder: OwnershipRecorder,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TracedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedSink")
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl OwnershipSink for TracedSink {
    fn record(&self, record: &OwnershipRecord) {
        self.recorder.record(record);
        let line = format!("{:?}", record.event);
        if line.contains(&format!("\"{}\"", self.partition)) {
            self.shared.log(format!(
                "w{} {} ({}) at {}: {line}",
                self.n, record.worker, record.instance, record.at_ns
            ));
        }
    }
}
