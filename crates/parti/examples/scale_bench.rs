//! How a cluster of many [`Manager`]s starts, idles and recovers from a crash, measured on a
//! real nats-server.
//!
//! ```text
//! cargo run --release -p parti --example scale_bench -- --workers 50 --partitions 5000
//! cargo run --release -p parti --example scale_bench -- --workers 200 --partitions 20000 --json
//! cargo run --release -p parti --example scale_bench -- --workers 10 --partitions 100 --default-timings --steady-secs 30
//! cargo run --release -p parti --example scale_bench -- --workers 200 --partitions 20000 --consumers [--herd] --json
//! cargo run --release -p parti --example scale_bench -- --workers 300 --partitions 30000 --default-timings --cluster --json
//! ```
//!
//! Starts one local nats-server (found like the test kit finds it: `$PARTI_NATS_SERVER`,
//! `.tools/bin`, then `PATH`) — with `--cluster` a local 3-node cluster, every bucket at 3
//! replicas and each manager's client knowing all three nodes — opens the four KV buckets with the workers' own specs (creating
//! a bucket writes no KV message), then starts N = `--workers` managers at once, each on its
//! own connection, over P = `--partitions` equally weighted partitions, with
//! [`Config::fast_for_tests`] timings (`--default-timings`: [`Config::default`]). Each manager
//! is started with [`ManagerBuilder::spawn`](parti::ManagerBuilder::spawn) and then waited
//! for with [`Manager::wait_for_state`]`(Stable)`. Figures (times in ms from the moment the
//! first manager is started):
//!
//! - `allJoinedMs`, `allStableMs`: the last `spawn()` / `wait_for_state(Stable)` returned.
//! - `consistentMapMs`: the committed `cluster` record names exactly the N workers, its
//!   committed map covers all P partitions, and every worker's `assignment()` has the record's
//!   version (polled every 10 ms); `coldStartPublishes`: the commits of distinct versions
//!   (the cold start's phase announcement, version 0, aside) seen by a watch on the `cluster`
//!   key from the start up to that version.
//! - `kvWritesAtStart`: messages appended to each bucket's stream (`KV_<bucket>`, by
//!   `last_sequence`) until the cluster is both stable and consistent; this counts every
//!   message, TTL markers included. `stableIdWritesPerWorker`: the stable-ID writes from the
//!   first start until the last worker has joined (its claim done), ÷ N — the claims, without
//!   the renewals that follow every third of `workerIdTtl`.
//! - `steadyKvWritesPerSec`: the same, per second, over `--steady-secs` (default 10) after that.
//! - `steadyCpuPercent`: CPU time (user + system, percent of one core) over that steady
//!   window, of the nats-server process (`natsServer`) and of this process — every manager
//!   and the bench's own samplers (`fleet`). Linux only (`/proc`).
//! - `rssKbPerManager`: (VmRSS once stable − VmRSS before the first manager) ÷ N.
//! - `peakConsumers`: the most consumers seen on each bucket's stream (sampled every 250 ms
//!   from the first start to the crash below): watches, listings and those not yet deleted.
//! - `crashToHeldMs`: a non-leader is [`Manager::kill`]ed, at a random point of a heartbeat
//!   interval; from the kill until the survivors' [`Manager::held`] together cover all P
//!   partitions again. `leaderCrashToHeldMs`: then the leader is killed the same way; until
//!   the survivors hold all P again (a new leader is elected and publishes).
//!   `crashPartitions` and `leaderCrashPartitions`: what each victim held.
//! - `mapBytes`: the committed map once consistent, in bytes: its worker values (`values`),
//!   the `cluster` record (`cluster`), how many commit pages it is copied into (`pages`), the
//!   largest page (`largestPage`), and what the followers read of one commit, each its own
//!   page (`toFollowers`; were each to read the whole record, N × `cluster`), and the workers
//!   of the map whose page does not give them their committed value (`unpagedWorkers`: 0). (What one publish costs the leader alone is
//!   measured by `cargo test --release -p parti --lib publish_at_scale -- --ignored --nocapture`.)
//! - `jsApi`: JetStream API requests of the account (`$JS.API.>`: consumer creates and
//!   updates, watches, listings, stream infos; not KV puts), from the account info sampled
//!   every 250 ms — which itself adds about 4 requests/s, as do the bench's own stream infos —
//!   `atStart` until the cluster is stable, consistent (and, with `--consumers`, every
//!   consumer follows its worker), `peakPerSec` the most in any 1 s over that time, and
//!   `steadyPerSec`; `perSecondAtStart` lists the requests of each second from the start.
//!
//! `--consumers` gives every manager a [`WorkerConsumer`] on a stream `BENCH` (`bench.>`,
//! memory storage, no messages) and reports `allConsumingMs`: every durable filters exactly
//! its worker's assignment. `--herd` turns on the herd controls: `startJitter` = half the
//! cold-start window, `assignmentDebounce` = 100 ms and `consumerApiRate` = N ÷ 3 (one round of
//! consumer calls spread over 3 s).

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use parti::records::read_published;
use parti::source::Static;
use parti::store::{NatsStore, Store};
use parti::{Assignment, Config, Manager, Partition, State, WorkerConsumer, WorkerId};
use parti_testkit::{NatsCluster, NatsServer};
use tokio::sync::{Notify, watch};
use tokio_util::task::AbortOnDropHandle;

/// Errors of the example: anything, with a message.
pub type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The stream the `--consumers` managers consume from, and its subjects' prefix.
const STREAM: &str = "BENCH";
const SUBJECT_PREFIX: &str = "bench.";

/// The longest any phase (start-up, recovery) may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// Workers that joined: their IDs and assignment receivers, shared with the consistency poller.
type Joined = Arc<Mutex<Vec<(WorkerId, watch::Receiver<Arc<Assignment>>)>>>;

/// Command-line options.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Managers to start (N).
    pub workers: usize,
    /// Partitions in the source (P).
    pub partitions: usize,
    /// Seconds of steady state to sample.
    pub steady_secs: u64,
    /// `Config::default()` instead of `Config::fast_for_tests()`.
    pub default_timings: bool,
    /// One JSON object on stdout instead of a summary.
    pub json: bool,
    /// Every manager gets a `WorkerConsumer`.
    pub consumers: bool,
    /// The herd controls on (`startJitter`, `assignmentDebounce`, `consumerApiRate`).
    pub herd: bool,
    /// A local 3-node cluster with every bucket at 3 replicas instead of one server.
    pub cluster: bool,
}

impl Options {
    /// Reads `--workers N`, `--partitions P`, `--steady-secs S`, `--default-timings`, `--json`,
    /// `--consumers`, `--herd`, `--cluster`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let options = Self {
            workers: number(args, "--workers", 10)?,
            partitions: number(args, "--partitions", 1000)?,
            steady_secs: number(args, "--steady-secs", 10)?,
            default_timings: args.iter().any(|a| a == "--default-timings"),
            json: args.iter().any(|a| a == "--json"),
            consumers: args.iter().any(|a| a == "--consumers"),
            herd: args.iter().any(|a| a == "--herd"),
            cluster: args.iter().any(|a| a == "--cluster"),
        };
        if options.workers < 3 {
            return Err(
                "--workers must be at least 3 (a non-leader and then the leader are killed, \
                 and someone must be left)"
                    .into(),
            );
        }
        if options.partitions < options.workers {
            return Err("--partitions must be at least --workers".into());
        }
        Ok(options)
    }
}

/// The value after `name`, or `default` when `name` is absent.
fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let Some(at) = args.iter().position(|a| a == name) else {
        return Ok(default);
    };
    let value = args
        .get(at + 1)
        .ok_or_else(|| format!("{name} needs a value"))?;
    value
        .parse()
        .map_err(|e| format!("{name} {value}: {e}").into())
}

/// Runs the benchmark once; returns its figures as one JSON object.
pub async fn run(options: &Options) -> Result<serde_json::Value> {
    let (n, p) = (options.workers, options.partitions);
    let mut config = if options.default_timings {
        Config::default()
    } else {
        Config::fast_for_tests()
    };
    // A pool large enough for the fleet (the default holds 100 IDs).
    let needed = u32::try_from(n).unwrap_or(u32::MAX).saturating_sub(1);
    config.worker_id_max = config
        .worker_id_max
        .max(config.worker_id_min.saturating_add(needed));
    if options.herd {
        config.start_jitter = config.cold_start_window / 2;
        config.assignment_debounce = Duration::from_millis(100);
        config.consumer_api_rate = n as f64 / 3.0;
    }
    let server = if options.cluster {
        config.kv_buckets.replicas = 3;
        Nats::Cluster(NatsCluster::start(3).await?)
    } else {
        Nats::Single(Box::new(NatsServer::start().await?))
    };
    let js = jetstream::new(server.client().await?);
    if options.consumers {
        js.create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECT_PREFIX}>")],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await?;
    }
    let api = ApiSampler::start(js.clone()).await?;
    let store = NatsStore::new(js.clone());
    let [.., assignment_spec] = config.bucket_specs();
    for spec in config.bucket_specs() {
        store.bucket(&spec).await?;
    }
    let assignment_bucket = store.bucket(&assignment_spec).await?;
    let buckets = config.kv_buckets.names();
    let source = Static::new(
        (0..p)
            .map(|i| Partition::new([format!("p{i}")], 100))
            .collect::<parti::Result<Vec<_>>>()?,
    );

    // Start-up.
    let rss_before = rss_kb()?;
    let seq_before = sequences(&js, &buckets).await?;
    let joined: Joined = Arc::default();
    let t0 = Instant::now();
    let peak_consumers: Arc<Mutex<[usize; 4]>> = Arc::default();
    let _sampler = AbortOnDropHandle::new(tokio::spawn({
        let (js, peak) = (js.clone(), Arc::clone(&peak_consumers));
        let names: Vec<String> = buckets.iter().map(|(_, b)| format!("KV_{b}")).collect();
        async move {
            loop {
                for (i, name) in names.iter().enumerate() {
                    if let Ok(mut stream) = js.get_stream(name).await
                        && let Ok(info) = stream.info().await
                        && let Ok(mut peak) = peak.lock()
                    {
                        peak[i] = peak[i].max(info.state.consumer_count);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }));
    // Every version committed from the start (one watch on the `cluster` key).
    let commits: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let _commit_watch = AbortOnDropHandle::new(tokio::spawn({
        let (bucket, commits) = (Arc::clone(&assignment_bucket), Arc::clone(&commits));
        async move {
            use futures::StreamExt;
            let Ok(mut events) = bucket.watch(parti::records::CLUSTER_KEY).await else {
                return;
            };
            while let Some(event) = events.next().await {
                let entry = match event {
                    Ok(
                        parti::store::WatchEvent::InitApply(e) | parti::store::WatchEvent::Put(e),
                    ) => e,
                    _ => continue,
                };
                if let Ok(record) = parti::store::codec::decode::<parti::records::ClusterRecord>(
                    bucket.name(),
                    &entry.key,
                    &entry.value,
                ) && record.version > 0
                    && let Ok(mut commits) = commits.lock()
                {
                    commits.insert(record.version);
                }
            }
        }
    }));
    let poller = tokio::spawn({
        let (joined, bucket) = (Arc::clone(&joined), Arc::clone(&assignment_bucket));
        async move {
            let deadline = Instant::now() + DEADLINE;
            while Instant::now() < deadline {
                if let Some(version) = consistent(&*bucket, &joined, n, p).await? {
                    return Ok((t0.elapsed(), version));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let versions: std::collections::BTreeMap<u64, usize> = joined
                .lock()
                .map_err(|_| "poisoned")?
                .iter()
                .fold(Default::default(), |mut count, (_, rx)| {
                    *count.entry(rx.borrow().version).or_default() += 1;
                    count
                });
            let record = read_published(&*bucket)
                .await?
                .record
                .map(|(r, _)| (r.version, r.workers.len()));
            Err::<_, Box<dyn Error + Send + Sync>>(
                format!(
                    "the map did not become consistent: workers per applied version {versions:?}, \
                     published (version, workers) {record:?}"
                )
                .into(),
            )
        }
    });
    // The stable-ID writes of the claims alone: sampled when the last worker has joined,
    // before the first renewals (a third of `workerIdTtl` after each claim).
    let claimed = {
        let (joined, js, buckets) = (Arc::clone(&joined), js.clone(), &buckets);
        async move {
            let deadline = Instant::now() + DEADLINE;
            while joined.lock().map_err(|_| "poisoned")?.len() < n {
                if Instant::now() >= deadline {
                    return Err::<_, Box<dyn Error + Send + Sync>>(
                        "not every worker joined".into(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sequences(&js, buckets).await
        }
    };
    let consumers = options.consumers;
    let (started, claimed) = tokio::join!(
        futures::future::join_all(
            (0..n).map(|_| start_one(&server, &config, &source, consumers, &joined, t0)),
        ),
        claimed
    );
    let mut live = Vec::with_capacity(n);
    let (mut all_joined, mut all_stable) = (Duration::ZERO, Duration::ZERO);
    for result in started {
        let (manager, joined_at, stable_at) = result.inspect_err(|_| {
            if let Ok(peak) = peak_consumers.lock() {
                eprintln!(
                    "start-up failed; peak consumers per bucket stream: {:?}",
                    *peak
                );
            }
        })?;
        all_joined = all_joined.max(joined_at);
        all_stable = all_stable.max(stable_at);
        live.push(manager);
    }
    let (consistent_at, consistent_version) = poller.await??;
    let cold_start_publishes = commits
        .lock()
        .map_err(|_| "poisoned")?
        .range(..=consistent_version)
        .count();
    let all_consuming = if consumers {
        Some(all_consuming(&js, &live, t0).await?)
    } else {
        None
    };
    let api_started = api.now()?;
    let seq_started = sequences(&js, &buckets).await?;
    let rss_after = rss_kb()?;
    let map_bytes = committed_bytes(&*assignment_bucket).await?;
    let writes_at_start = diff(&seq_before, &seq_started);
    let writes_to_join = diff(&seq_before, &claimed?);
    eprintln!(
        "{n} workers, {p} partitions: joined {:.0} ms, stable {:.0} ms, consistent {:.0} ms at v{consistent_version} ({cold_start_publishes} publishes)",
        ms(all_joined),
        ms(all_stable),
        ms(consistent_at)
    );

    // Steady state.
    let nats_pids = server.pids()?;
    let nats_ticks = || -> Result<u64> {
        nats_pids
            .iter()
            .map(|pid| cpu_ticks(&pid.to_string()))
            .sum::<Result<u64>>()
    };
    let cpu_from = (cpu_ticks("self")?, nats_ticks()?);
    let steady_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.steady_secs)).await;
    let seq_steady = sequences(&js, &buckets).await?;
    let api_steady = api.now()?;
    let steady_secs = steady_from.elapsed().as_secs_f64();
    let cpu_to = (cpu_ticks("self")?, nats_ticks()?);
    // Percent of one core: ticks are 1/100 s (`CLK_TCK` on Linux).
    let cpu_percent = |from: u64, to: u64| round1(to.saturating_sub(from) as f64 / steady_secs);
    let steady: Vec<f64> = diff(&seq_started, &seq_steady)
        .iter()
        .map(|w| round1(*w as f64 / steady_secs))
        .collect();

    // A non-leader crashes, then the leader.
    let crash = crash_to_held(&mut live, p, config.heartbeat_interval, Victim::Follower).await?;
    eprintln!(
        "crash: {} partitions held again after {:.0} ms",
        crash.1,
        ms(crash.0)
    );
    let leader_crash =
        crash_to_held(&mut live, p, config.heartbeat_interval, Victim::Leader).await?;
    eprintln!(
        "leader crash: {} partitions held again after {:.0} ms",
        leader_crash.1,
        ms(leader_crash.0)
    );
    let peak = *peak_consumers.lock().map_err(|_| "poisoned")?;
    let api_peak = api.peak_per_sec(t0, api_started.0)?;
    let api_timeline = api.per_second(t0, api_started.0)?;
    futures::future::join_all(live.iter().map(Manager::kill)).await;
    drop(server);

    let per_bucket = |values: &[serde_json::Value]| -> serde_json::Value {
        buckets
            .iter()
            .zip(values)
            .map(|((label, _), v)| ((*label).to_owned(), v.clone()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let start_json: Vec<serde_json::Value> = writes_at_start.iter().map(|w| (*w).into()).collect();
    let mut steady_json = per_bucket(&steady.iter().map(|w| (*w).into()).collect::<Vec<_>>());
    if let Some(object) = steady_json.as_object_mut() {
        object.insert("total".into(), round1(steady.iter().sum()).into());
    }
    Ok(serde_json::json!({
        "workers": n,
        "partitions": p,
        "nats": if options.cluster { "3-node cluster, R3" } else { "one server" },
        "timings": if options.default_timings { "default" } else { "fast" },
        "allJoinedMs": ms(all_joined),
        "allStableMs": ms(all_stable),
        "consistentMapMs": ms(consistent_at),
        "coldStartPublishes": cold_start_publishes,
        "kvWritesAtStart": per_bucket(&start_json),
        "stableIdWritesPerWorker": round1(writes_to_join[0] as f64 / n as f64),
        "steadySecs": round1(steady_secs),
        "steadyKvWritesPerSec": steady_json,
        "steadyCpuPercent": {
            "natsServer": cpu_percent(cpu_from.1, cpu_to.1),
            "fleet": cpu_percent(cpu_from.0, cpu_to.0),
        },
        "crashToHeldMs": ms(crash.0),
        "crashPartitions": crash.1,
        "leaderCrashToHeldMs": ms(leader_crash.0),
        "leaderCrashPartitions": leader_crash.1,
        "mapBytes": {
            "values": map_bytes.values,
            "cluster": map_bytes.cluster,
            "pages": map_bytes.pages,
            "largestPage": map_bytes.largest_page,
            "toFollowers": map_bytes.to_followers,
            "unpagedWorkers": map_bytes.unpaged,
        },
        "rssKbPerManager": (rss_after - rss_before) / n as i64,
        "peakConsumers": per_bucket(&peak.iter().map(|c| (*c).into()).collect::<Vec<_>>()),
        "herdControls": options.herd,
        "allConsumingMs": all_consuming.map(ms),
        "jsApi": {
            "atStart": api_started.1.saturating_sub(api.first),
            "peakPerSec": api_peak,
            "perSecondAtStart": api_timeline,
            "steadyPerSec": round1(
                api_steady.1.saturating_sub(api_started.1) as f64
                    / api_steady.0.duration_since(api_started.0).as_secs_f64().max(1e-3)
            ),
        },
    }))
}

/// Spawns one manager on its own connection and waits until it is Stable; returns it with
/// the times (since `t0`) its `spawn()` and its `wait_for_state` returned.
async fn start_one(
    server: &Nats,
    config: &Config,
    source: &Static,
    consumer: bool,
    joined: &Joined,
    t0: Instant,
) -> Result<(Manager, Duration, Duration)> {
    let js = jetstream::new(server.client().await?);
    let mut builder = Manager::builder(js.clone())
        .config(config.clone())
        .source(source.clone());
    if consumer {
        let consumer = WorkerConsumer::builder(js, STREAM)
            .subject_template(format!("{SUBJECT_PREFIX}{{partition}}"))
            .handler(|_msg: jetstream::Message| async { Ok::<(), parti::error::BoxError>(()) })
            .build()
            .await?;
        builder = builder.consumer(consumer);
    }
    let manager = builder.spawn().await?;
    let joined_at = t0.elapsed();
    joined
        .lock()
        .map_err(|_| "poisoned")?
        .push((manager.worker_id(), manager.watch_assignment()));
    manager.wait_for_state(State::Stable, DEADLINE).await?;
    Ok((manager, joined_at, t0.elapsed()))
}

/// The committed version when the `cluster` record names exactly the `n` joined workers, its
/// committed map covers `p` partitions and every worker's assignment has its version.
async fn consistent(
    bucket: &dyn parti::store::Bucket,
    joined: &Joined,
    n: usize,
    p: usize,
) -> Result<Option<u64>> {
    let workers: Vec<(WorkerId, u64)> = {
        let joined = joined.lock().map_err(|_| "poisoned")?;
        joined
            .iter()
            .map(|(w, rx)| (w.clone(), rx.borrow().version))
            .collect()
    };
    // Checked without I/O first: a listing costs a consumer on the bucket's stream, and
    // polling one every 10 ms would crowd the stream's consumer limit at a large start-up.
    let version = workers.first().map(|(_, v)| *v).unwrap_or(0);
    if workers.len() < n || version == 0 || workers.iter().any(|(_, v)| *v != version) {
        return Ok(None);
    }
    let published = read_published(bucket).await?;
    let Some((record, _)) = &published.record else {
        return Ok(None);
    };
    let ids: BTreeSet<&WorkerId> = workers.iter().map(|(w, _)| w).collect();
    let ok = record.workers.keys().collect::<BTreeSet<_>>() == ids
        && published.map.workers().collect::<BTreeSet<_>>() == ids
        && published.map.iter().map(|(_, ps)| ps.len()).sum::<usize>() == p
        && workers.iter().all(|(_, v)| *v == record.version);
    Ok(ok.then_some(record.version))
}

/// The time (since `t0`) at which every manager's durable consumer filters exactly its
/// assignment's subjects (polled every 250 ms).
async fn all_consuming(js: &jetstream::Context, live: &[Manager], t0: Instant) -> Result<Duration> {
    use futures::TryStreamExt;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let infos: Vec<jetstream::consumer::Info> = js
            .get_stream(STREAM)
            .await?
            .consumers()
            .try_collect()
            .await?;
        let filters: std::collections::HashMap<&str, BTreeSet<&str>> = infos
            .iter()
            .map(|i| {
                let mut subjects: BTreeSet<&str> = i
                    .config
                    .filter_subjects
                    .iter()
                    .map(String::as_str)
                    .collect();
                if !i.config.filter_subject.is_empty() {
                    subjects.insert(i.config.filter_subject.as_str());
                }
                (i.name.as_str(), subjects)
            })
            .collect();
        let behind: Vec<String> = live
            .iter()
            .filter_map(|m| {
                let want: BTreeSet<String> = m
                    .assignment()
                    .partitions
                    .iter()
                    .map(|p| format!("{SUBJECT_PREFIX}{}", p.subject_key()))
                    .collect();
                let name = format!("parti-{}", m.worker_id());
                let lagging = filters.get(name.as_str()).is_none_or(|got| {
                    got.len() != want.len() || want.iter().any(|w| !got.contains(w.as_str()))
                });
                lagging.then(|| {
                    let got = filters.get(name.as_str()).map(BTreeSet::len);
                    format!("{name}: {got:?} of {} subjects", want.len())
                })
            })
            .collect();
        if behind.is_empty() {
            return Ok(t0.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} of {} consumers listed; {} do not follow their assignment, e.g. {:?}",
                infos.len(),
                live.len(),
                behind.len(),
                &behind[..behind.len().min(5)]
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Samples the account's JetStream API request count every 250 ms.
struct ApiSampler {
    /// The count before anything started.
    first: u64,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    _task: AbortOnDropHandle<()>,
}

impl ApiSampler {
    async fn start(js: jetstream::Context) -> Result<Self> {
        let first = js.query_account().await?.requests.total;
        let samples = Arc::new(Mutex::new(vec![(Instant::now(), first)]));
        let task = AbortOnDropHandle::new(tokio::spawn({
            let samples = Arc::clone(&samples);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if let Ok(account) = js.query_account().await
                        && let Ok(mut samples) = samples.lock()
                    {
                        samples.push((Instant::now(), account.requests.total));
                    }
                }
            }
        }));
        Ok(Self {
            first,
            samples,
            _task: task,
        })
    }

    /// The latest sample.
    fn now(&self) -> Result<(Instant, u64)> {
        let samples = self.samples.lock().map_err(|_| "poisoned")?;
        Ok(*samples.last().ok_or("no sample")?)
    }

    /// Requests in each whole second from `from` to `to` (from the samples nearest each
    /// second's start).
    fn per_second(&self, from: Instant, to: Instant) -> Result<Vec<u64>> {
        let samples = self.samples.lock().map_err(|_| "poisoned")?;
        let at = |t: Instant| {
            samples
                .iter()
                .rev()
                .find(|(when, _)| *when <= t)
                .or(samples.first())
                .map_or(0, |(_, total)| *total)
        };
        let seconds = to.duration_since(from).as_secs();
        Ok((0..seconds)
            .map(|i| {
                let start = from + Duration::from_secs(i);
                at(start + Duration::from_secs(1)).saturating_sub(at(start))
            })
            .collect())
    }

    /// The most requests in any 1 s (between samples about 1 s apart) from `from` to `to`.
    fn peak_per_sec(&self, from: Instant, to: Instant) -> Result<f64> {
        let samples = self.samples.lock().map_err(|_| "poisoned")?;
        let window: Vec<&(Instant, u64)> = samples
            .iter()
            .filter(|(at, _)| *at + Duration::from_secs(1) >= from && *at <= to)
            .collect();
        let mut peak = 0.0_f64;
        for (i, (at, total)) in window.iter().enumerate() {
            if let Some((then, before)) = window[..i]
                .iter()
                .rev()
                .find(|(then, _)| at.duration_since(*then) >= Duration::from_secs(1))
            {
                let rate =
                    total.saturating_sub(*before) as f64 / at.duration_since(*then).as_secs_f64();
                peak = peak.max(rate);
            }
        }
        Ok(round1(peak))
    }
}

/// Which manager [`crash_to_held`] kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// A non-leader that holds something.
    Follower,
    /// The leader (whatever it holds: its partitions wait for a new leader as well).
    Leader,
}

/// The sizes of the committed map, in bytes.
struct MapBytes {
    /// The worker values the `cluster` record names.
    values: usize,
    /// The `cluster` record.
    cluster: usize,
    /// Commit pages in the bucket.
    pages: usize,
    /// The largest commit page.
    largest_page: usize,
    /// What the followers read of one commit: each worker of the map its own page.
    to_followers: usize,
    /// Workers of the map whose page is missing or does not give the committed revision of
    /// their value (0 once the pages are written).
    unpaged: usize,
}

/// The sizes of the committed map: its worker values (the revisions the `cluster` record
/// names), the `cluster` record itself, and its commit pages.
async fn committed_bytes(bucket: &dyn parti::store::Bucket) -> Result<MapBytes> {
    let Some(cluster) = bucket.get(parti::records::CLUSTER_KEY).await? else {
        return Err("no cluster record".into());
    };
    let record = read_published(bucket)
        .await?
        .record
        .ok_or("the cluster record does not decode")?
        .0;
    let values = bucket
        .list(&format!("{}>", parti::records::WORKER_KEY_PREFIX))
        .await?
        .iter()
        .filter(|e| {
            parti::records::parse_worker_key(&e.key)
                .is_some_and(|(w, _)| record.workers.get(&w) == Some(&e.revision))
        })
        .map(|e| e.value.len())
        .sum();
    let mut pages: BTreeMap<usize, (usize, Option<parti::records::CommitPage>)> = BTreeMap::new();
    for e in bucket
        .list(&format!("{}>", parti::records::PAGE_KEY_PREFIX))
        .await?
    {
        if let Some(page) = parti::records::parse_page_key(&e.key) {
            let copy = parti::store::codec::decode(bucket.name(), &e.key, &e.value).ok();
            pages.insert(page, (e.value.len(), copy));
        }
    }
    let mut to_followers = 0;
    let mut unpaged = 0;
    for (worker, revision) in &record.workers {
        match pages.get(&parti::records::page_of(worker)) {
            Some((len, Some(copy))) if copy.workers.get(worker) == Some(revision) => {
                to_followers += len;
            }
            _ => unpaged += 1,
        }
    }
    Ok(MapBytes {
        values,
        cluster: cluster.value.len(),
        pages: pages.len(),
        largest_page: pages.values().map(|(len, _)| *len).max().unwrap_or(0),
        to_followers,
        unpaged,
    })
}

/// Kills `victim` (taking it out of `live`); returns the time from the kill until the
/// survivors together hold all `p` partitions, and how many it held.
async fn crash_to_held(
    live: &mut Vec<Manager>,
    p: usize,
    heartbeat_interval: Duration,
    victim: Victim,
) -> Result<(Duration, usize)> {
    let deadline = Instant::now() + DEADLINE;
    while held_by(live) < p {
        if Instant::now() >= deadline {
            return Err(format!(
                "not every partition was held before the crash: {}",
                shortfall(live, p)
            )
            .into());
        }
        // Counting 100k holdings costs milliseconds: a tight poll would starve the fleet.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fleet's heartbeats run in phase (every worker writes one at once when its state
    // changes, as all do at the cold start's end), so a kill a whole number of intervals later
    // would always come right after the victim's last heartbeat: the slowest case. A random
    // point of the interval gives the typical one.
    tokio::time::sleep(heartbeat_interval.mul_f64(rand::random::<f64>())).await;
    let victim = match victim {
        Victim::Follower => live
            .iter()
            .position(|m| !m.is_leader() && !m.held().is_empty())
            .ok_or("no non-leader holding partitions")?,
        Victim::Leader => live
            .iter()
            .position(Manager::is_leader)
            .ok_or("no leader")?,
    };
    let victim = live.remove(victim);
    let lost = victim.held().len();
    // Wake the check on every change of a survivor's holdings.
    let changed = Arc::new(Notify::new());
    let _watchers: Vec<AbortOnDropHandle<()>> = live
        .iter()
        .map(|m| {
            let (mut held, changed) = (m.watch_held(), Arc::clone(&changed));
            AbortOnDropHandle::new(tokio::spawn(async move {
                while held.changed().await.is_ok() {
                    changed.notify_one();
                }
            }))
        })
        .collect();
    let killed = Instant::now();
    tracing::info!(worker = %victim.worker_id(), lost, leader = victim.is_leader(), "killing a worker");
    victim.kill().await;
    while held_by(live) < p {
        if Instant::now() >= killed + DEADLINE {
            return Err(format!(
                "the killed worker's partitions were not held again: {}",
                shortfall(live, p)
            )
            .into());
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changed.notified()).await;
        // At most one count per 10 ms however often holdings change (the resolution of the
        // figure), so that the measurement does not starve what it measures.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((killed.elapsed(), lost))
}

/// What the managers hold of `p` partitions, their states and applied versions, and a few of
/// those that hold less than their assignment.
fn shortfall(live: &[Manager], p: usize) -> String {
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    let mut versions = std::collections::BTreeMap::<u64, usize>::new();
    for m in live {
        *states.entry(format!("{:?}", m.state())).or_default() += 1;
        *versions.entry(m.assignment().version).or_default() += 1;
    }
    let short: Vec<String> = live
        .iter()
        .filter(|m| m.held().len() < m.assignment().partitions.len())
        .take(5)
        .map(|m| {
            format!(
                "{} holds {} of {} (v{}, {:?})",
                m.worker_id(),
                m.held().len(),
                m.assignment().partitions.len(),
                m.assignment().version,
                m.state()
            )
        })
        .collect();
    format!(
        "{} of {p} held; states {states:?}, applied versions {versions:?}, short: {short:?}",
        held_by(live)
    )
}

/// How many distinct partitions `managers` hold together.
fn held_by(managers: &[Manager]) -> usize {
    let helds: Vec<_> = managers.iter().map(Manager::held).collect();
    let mut ids = std::collections::HashSet::with_capacity(helds.iter().map(|h| h.len()).sum());
    ids.extend(
        helds
            .iter()
            .flat_map(|h| h.iter().map(|(partition, _)| partition.id())),
    );
    ids.len()
}

/// The NATS the fleet runs on: one server, or a 3-node cluster (each manager's client knows
/// every node and connects to one of them).
enum Nats {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Nats {
    async fn client(&self) -> Result<async_nats::Client> {
        Ok(match self {
            Self::Single(server) => server.client().await?,
            Self::Cluster(cluster) => cluster.client().await?,
        })
    }

    /// The server processes.
    fn pids(&self) -> Result<Vec<u32>> {
        let pids = match self {
            Self::Single(server) => vec![server.pid()],
            Self::Cluster(cluster) => (0..cluster.size()).map(|i| cluster.node(i).pid()).collect(),
        };
        Ok(pids
            .into_iter()
            .collect::<Option<Vec<u32>>>()
            .ok_or("a nats-server process is gone")?)
    }
}

/// User plus system CPU time of process `pid` (or `self`) so far, in clock ticks.
fn cpu_ticks(pid: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, so split after its `)`): state is
    // field 3 of stat(5), utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("unreadable /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Result<u64> {
        Ok(fields
            .get(n - 3)
            .ok_or("short /proc stat")?
            .parse::<u64>()?)
    };
    Ok(field(14)? + field(15)?)
}

/// `last_sequence` of each bucket's stream, in the order of `buckets`.
async fn sequences(js: &jetstream::Context, buckets: &[(&str, &str); 4]) -> Result<[u64; 4]> {
    let mut out = [0; 4];
    for (slot, (_, bucket)) in out.iter_mut().zip(buckets) {
        let mut stream = js.get_stream(format!("KV_{bucket}")).await?;
        *slot = stream.info().await?.state.last_sequence;
    }
    Ok(out)
}

/// `after − before`, bucket by bucket.
fn diff(before: &[u64; 4], after: &[u64; 4]) -> [u64; 4] {
    std::array::from_fn(|i| after[i].saturating_sub(before[i]))
}

/// This process's resident set (VmRSS), in kB.
fn rss_kb() -> Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kb = line
        .split_whitespace()
        .nth(1)
        .ok_or("VmRSS without a value")?;
    Ok(kb.parse()?)
}

/// `d` in milliseconds, rounded to 0.1 ms.
fn ms(d: Duration) -> f64 {
    round1(d.as_secs_f64() * 1e3)
}

/// `x` rounded to one decimal.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<()> {
    // `RUST_LOG=parti=debug` shows what the fleet does (to stderr); silent otherwise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options::parse(&args)?;
    let figures = run(&options).await?;
    if options.json {
        println!("{figures}");
    } else {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    }
    Ok(())
}
