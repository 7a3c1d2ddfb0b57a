//! The Kubernetes manifests of `deploy/kubernetes/` checked against the real `parti worker`.
//!
//! Every YAML document there is parsed. The static checks: the kustomization lists every
//! manifest; the config file the Deployment passes with `--config` (read from the ConfigMap
//! volume mounted over its path) and the `PARTI_…` variables laid over it are accepted by
//! `parti::Config`'s loader (which refuses unknown keys); the partition list loads; the flags and
//! `PARTI_NATS_…` variables are ones `parti worker --help` lists; the probes, the container port
//! and the scrape annotation use the port of `--metrics-addr`; `terminationGracePeriodSeconds`
//! outlasts `shutdownTimeout`; the stable-ID pool holds `replicas + maxSurge`; the selectors
//! match the pod labels.
//!
//! The runtime checks run the binary with the Deployment's own command line and environment
//! (paths under the ConfigMap mount moved to a temp dir, the HTTP port to a free one, NATS to a
//! test server): the liveness, readiness and metrics paths are served (a wrong path is a 404);
//! readiness is 503 before the worker started and during a scaling window, 200 once stable; a
//! rolling restart of one pod (SIGTERM, then a new process) exits 0 within the grace period,
//! gives the new process the same stable ID and moves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{DEADLINE, Proc, http_get, parti};
use parti_testkit::{NatsServer, wait_until};
use rustix::process::Signal;
use serde::Deserialize as _;
use serde_json::Value;

/// Time the process may need beyond `shutdownTimeout`: from SIGTERM to the start of the stop,
/// and from its end to the exit.
const GRACE_MARGIN: Duration = Duration::from_secs(5);

/// Overrides for the runtime checks only: short windows, so that the cold start and a scaling
/// window take seconds instead of the production 30s and 15s. Nothing else of the file changes.
const FAST_WINDOWS: [(&str, &str); 3] = [
    ("PARTI_COLD_START_WINDOW", "3s"),
    ("PARTI_PLANNED_SCALE_WINDOW", "3s"),
    ("PARTI_ASSIGNMENT_MIN_REBALANCE_INTERVAL", "1s"),
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Every document of every `*.yaml` / `*.yml` file of the directory.
struct Manifests {
    /// File name → its non-empty documents.
    files: Vec<(String, Vec<Value>)>,
}

impl Manifests {
    fn load() -> Self {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(deploy_dir()).expect("deploy/kubernetes exists") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let docs = serde_yaml_ng::Deserializer::from_str(&text)
                .map(|doc| {
                    Value::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"))
                })
                .filter(|doc| !doc.is_null())
                .collect();
            files.push((name, docs));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Self { files }
    }

    fn objects(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.files
            .iter()
            .flat_map(|(name, docs)| docs.iter().map(move |doc| (name.as_str(), doc)))
    }

    /// The only object of `kind` (and `name`, if given).
    fn one(&self, kind: &str, name: Option<&str>) -> &Value {
        let found: Vec<&Value> = self
            .objects()
            .map(|(_, doc)| doc)
            .filter(|doc| doc["kind"] == kind)
            .filter(|doc| name.is_none_or(|n| doc["metadata"]["name"] == n))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {kind} {name:?} in deploy/kubernetes"
        );
        found[0]
    }

    fn deployment(&self) -> Pod<'_> {
        let deployment = self.one("Deployment", None);
        let spec = &deployment["spec"]["template"]["spec"];
        let containers = spec["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container: the worker");
        Pod {
            manifests: self,
            deployment,
            spec,
            container: &containers[0],
        }
    }
}

/// The Deployment's pod and its `parti worker` container.
struct Pod<'a> {
    manifests: &'a Manifests,
    deployment: &'a Value,
    spec: &'a Value,
    container: &'a Value,
}

impl Pod<'_> {
    /// `command` + `args`.
    fn command_line(&self) -> Vec<String> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let mut line = strings(&self.container["command"]);
        line.extend(strings(&self.container["args"]));
        line
    }

    /// The value of a flag (`--name=value` or `--name value`, or its short form).
    fn flag(&self, names: &[&str]) -> Option<String> {
        let line = self.command_line();
        let mut tokens = line.iter();
        while let Some(token) = tokens.next() {
            for name in names {
                if token == name {
                    return tokens.next().cloned();
                }
                if let Some(value) = token.strip_prefix(&format!("{name}=")) {
                    return Some(value.to_owned());
                }
            }
        }
        None
    }

    /// The variables with a literal `value`.
    fn env(&self) -> Vec<(String, String)> {
        self.container["env"]
            .as_array()
            .map(|vars| {
                vars.iter()
                    .filter_map(|var| {
                        Some((
                            var["name"].as_str()?.to_owned(),
                            var["value"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The contents the container sees at the absolute `path`, from the ConfigMap volume
    /// mounted over it; `None` if no such volume serves it.
    fn file(&self, path: &str) -> Option<String> {
        let mounts = self.container["volumeMounts"].as_array()?;
        for mount in mounts {
            let mount_path = mount["mountPath"].as_str().unwrap().trim_end_matches('/');
            let relative = match mount["subPath"].as_str() {
                Some(sub) if path == mount_path => sub.to_owned(),
                Some(_) => continue,
                None => match path.strip_prefix(&format!("{mount_path}/")) {
                    Some(rest) => rest.to_owned(),
                    None => continue,
                },
            };
            let volume = self.spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("no volume {} for mount {mount_path}", mount["name"]));
            let source = &volume["configMap"];
            let config_map = self
                .manifests
                .one("ConfigMap", Some(source["name"].as_str()?));
            let key = match source["items"].as_array() {
                Some(items) => items
                    .iter()
                    .find(|item| item["path"] == relative.as_str())?["key"]
                    .as_str()?
                    .to_owned(),
                None => relative,
            };
            return config_map["data"][key.as_str()].as_str().map(str::to_owned);
        }
        None
    }

    /// The text of a file given by a flag, which must be served by a ConfigMap volume.
    fn flag_file(&self, names: &[&str]) -> String {
        let path = self
            .flag(names)
            .unwrap_or_else(|| panic!("the worker must be given {}", names[0]));
        self.file(&path).unwrap_or_else(|| {
            panic!(
                "{} {path} is not a key of a ConfigMap mounted in the container",
                names[0]
            )
        })
    }

    /// `--metrics-addr`, parsed.
    fn metrics_addr(&self) -> SocketAddr {
        let addr = self
            .flag(&["--metrics-addr"])
            .expect("--metrics-addr: without it `parti worker` serves no probe endpoint");
        addr.parse()
            .unwrap_or_else(|e| panic!("--metrics-addr {addr}: {e}"))
    }

    /// A probe's port, a named container port resolved to its number.
    fn probe_port(&self, probe: &str) -> u16 {
        let port = &self.container[probe]["httpGet"]["port"];
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).unwrap();
        }
        let name = port
            .as_str()
            .unwrap_or_else(|| panic!("{probe} has no httpGet port"));
        self.container_port(name)
    }

    fn container_port(&self, name: &str) -> u16 {
        let ports = self.container["ports"].as_array().expect("ports");
        let port = ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port named {name}"));
        u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap()
    }

    fn probe_path(&self, probe: &str) -> String {
        self.container[probe]["httpGet"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} is not an httpGet probe with a path"))
            .to_owned()
    }

    /// The configuration the worker runs with: the file, then its `PARTI_…` variables.
    fn config(&self) -> parti::Config {
        let text = self.flag_file(&["--config", "-c"]);
        let file = parti::Config::from_yaml_str(&text)
            .unwrap_or_else(|e| panic!("the ConfigMap's config is refused: {e}"));
        file.with_env_overrides_from(self.env())
            .unwrap_or_else(|e| panic!("the Deployment's PARTI_… variables are refused: {e}"))
    }

    fn replicas(&self) -> u64 {
        self.deployment["spec"]["replicas"].as_u64().unwrap_or(1)
    }

    /// A `rollingUpdate` field as a pod count (`round_up`: surge rounds up, unavailable down).
    fn rolling(&self, field: &str, default: &str, round_up: bool) -> u64 {
        let value = &self.deployment["spec"]["strategy"]["rollingUpdate"][field];
        if let Some(n) = value.as_u64() {
            return n;
        }
        let percent: u64 = value
            .as_str()
            .unwrap_or(default)
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("rollingUpdate.{field}: {value}"));
        let scaled = self.replicas() * percent;
        if round_up {
            scaled.div_ceil(100)
        } else {
            scaled / 100
        }
    }
}

/// `parti worker --help`.
fn worker_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_parti"))
        .args(["worker", "--help"])
        .env_remove("PARTI_NATS_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let manifests = Manifests::load();
    let kustomization = manifests.one("Kustomization", None);
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files: BTreeSet<&str> = manifests
        .files
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| !name.starts_with("kustomization."))
        .collect();
    assert_eq!(listed, files, "kustomization.yaml resources vs. the files");
    for (name, docs) in &manifests.files {
        assert!(!docs.is_empty(), "{name} has no document");
    }
    for (file, doc) in manifests.objects() {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].is_string(), "{file}: a document without {field}");
        }
        if doc["kind"] != "Kustomization" {
            assert!(
                doc["metadata"]["name"].is_string(),
                "{file}: a document without metadata.name"
            );
        }
    }
}

#[test]
fn the_config_file_and_variables_are_accepted_by_the_loader() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    let text = pod.flag_file(&["--config", "-c"]);
    parti::Config::from_yaml_str(&text).unwrap_or_else(|e| panic!("refused: {e}"));
    pod.config();

    // The loader does refuse what it does not know: the check above means something.
    let typo = format!("{text}\nshutdownTimout: 10s\n");
    match parti::Config::from_yaml_str(&typo) {
        Err(parti::Error::InvalidConfig { violations }) => {
            assert_eq!(violations[0].field, "shutdownTimout", "{violations:?}");
        }
        other => panic!("an unknown key was accepted: {other:?}"),
    }

    // The partition list loads as `parti worker` reads it (YAML; unknown fields refused).
    let partitions = pod.flag_file(&["--partitions", "-p"]);
    let partitions: Vec<parti::Partition> = serde_yaml_ng::from_str(&partitions).unwrap();
    parti::partition::check_unique(&partitions).unwrap();
    assert!(!partitions.is_empty(), "the partition list is empty");
}

#[test]
fn flags_and_variables_are_the_clis() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    let line = pod.command_line();
    assert_eq!(line.first().map(String::as_str), Some("parti"), "{line:?}");
    assert_eq!(line.get(1).map(String::as_str), Some("worker"), "{line:?}");
    let help = worker_help();
    for token in &line[2..] {
        if let Some(flag) = token.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
                "`parti worker --help` has no --{flag}:\n{help}"
            );
        }
    }
    for (name, _) in pod.env() {
        if name.starts_with("PARTI_NATS_") {
            assert!(
                help.contains(&format!("[env: {name}="))
                    || help.contains(&format!("[env: {name}]")),
                "`parti worker --help` reads no {name}:\n{help}"
            );
        }
        // Other PARTI_… variables are configuration: `config()` checks them.
    }
    assert!(
        pod.env().iter().any(|(name, _)| name == "PARTI_NATS_URL"),
        "the NATS URL comes from PARTI_NATS_URL"
    );
    pod.config();

    // Service links would add <SERVICE>_… variables; for a Service named parti-… they are
    // PARTI_… variables, which the worker refuses as unknown configuration.
    assert_eq!(
        pod.spec["enableServiceLinks"], false,
        "enableServiceLinks must be false"
    );
    let link = [("PARTI_WORKER_METRICS_SERVICE_HOST", "10.0.0.1")];
    assert!(
        parti::Config::default()
            .with_env_overrides_from(link)
            .is_err()
    );
}

#[test]
fn probes_and_ports_are_those_of_metrics_addr() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    let addr = pod.metrics_addr();
    assert!(
        addr.ip().is_unspecified(),
        "--metrics-addr {addr} must listen on all interfaces: the kubelet probes the pod IP"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(pod.probe_port(probe), addr.port(), "{probe} port");
    }
    assert_eq!(pod.probe_path("livenessProbe"), "/healthz");
    assert_eq!(pod.probe_path("readinessProbe"), "/readyz");
    assert!(
        pod.container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"] == addr.port()),
        "no containerPort {}",
        addr.port()
    );
    let annotations = &pod.deployment["spec"]["template"]["metadata"]["annotations"];
    if let Some(port) = annotations["prometheus.io/port"].as_str() {
        assert_eq!(port, addr.port().to_string(), "prometheus.io/port");
    }
    if let Some(path) = annotations["prometheus.io/path"].as_str() {
        assert_eq!(path, "/metrics", "prometheus.io/path");
    }
    // `parti worker` documents what it serves there.
    let help = worker_help();
    assert!(
        help.contains("Serve Prometheus /metrics, /healthz and /readyz on this address"),
        "{help}"
    );
}

#[test]
fn the_grace_period_outlasts_the_graceful_stop() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    let shutdown = pod.config().shutdown_timeout;
    let grace = pod.spec["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30); // Kubernetes' default
    assert!(
        Duration::from_secs(grace) >= shutdown + GRACE_MARGIN,
        "terminationGracePeriodSeconds {grace} < shutdownTimeout {shutdown:?} + {GRACE_MARGIN:?}"
    );
    // A preStop hook runs before SIGTERM, within the same grace period, and holds the stable ID
    // meanwhile: the replacement pod would claim another one.
    assert!(
        pod.container["lifecycle"]["preStop"].is_null(),
        "no preStop hook: SIGTERM starts the graceful leave"
    );
}

#[test]
fn the_id_pool_holds_every_pod_and_nothing_surges() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    let config = pod.config();
    let pool = u64::from(config.worker_id_max - config.worker_id_min) + 1;
    let replicas = pod.replicas();
    let surge = pod.rolling("maxSurge", "25%", true);
    let unavailable = pod.rolling("maxUnavailable", "25%", false);
    assert!(
        pool >= replicas + surge,
        "stable-ID pool {pool} < replicas {replicas} + maxSurge {surge}"
    );
    assert_eq!(
        surge, 0,
        "a surge pod claims a new stable ID: the leader rebalances onto it"
    );
    assert!(
        unavailable >= 1,
        "maxUnavailable 0 with maxSurge 0 never rolls"
    );
    assert_eq!(
        pod.deployment["spec"]["strategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate"),
        "RollingUpdate"
    );
}

#[test]
fn selectors_match_the_pod_labels() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    let labels = &pod.deployment["spec"]["template"]["metadata"]["labels"];
    let matches = |selector: &Value, what: &str| {
        let wanted = selector["matchLabels"].as_object().expect("matchLabels");
        assert!(!wanted.is_empty(), "{what} selects everything");
        for (key, value) in wanted {
            assert_eq!(&labels[key], value, "{what}: label {key}");
        }
    };
    matches(&pod.deployment["spec"]["selector"], "Deployment selector");
    let pdb = manifests.one("PodDisruptionBudget", None);
    matches(&pdb["spec"]["selector"], "PodDisruptionBudget selector");
    // Every worker is not ready during a scaling window; AlwaysAllow would let a drain evict
    // all of them then.
    assert_eq!(
        pdb["spec"]["unhealthyPodEvictionPolicy"], "IfHealthyBudget",
        "unhealthyPodEvictionPolicy"
    );
}

/// The Deployment's container as a local process: its command line and environment, with
/// files under the ConfigMap mount written to `dir`, `--metrics-addr` on a free local port,
/// `PARTI_NATS_URL` set to `nats`, and `extra_env` laid over.
fn spawn_pod(pod: &Pod<'_>, dir: &Path, nats: &str, extra_env: &[(&str, &str)]) -> Proc {
    let line = pod.command_line();
    let mut cmd = parti();
    let mut after_metrics_flag = false;
    for token in &line[1..] {
        let token = if after_metrics_flag {
            "127.0.0.1:0".to_owned()
        } else if token.starts_with("--metrics-addr=") {
            "--metrics-addr=127.0.0.1:0".to_owned()
        } else {
            localize(pod, token, dir)
        };
        after_metrics_flag = token == "--metrics-addr";
        cmd.arg(token);
    }
    for (name, value) in pod.env() {
        let value = if name == "PARTI_NATS_URL" {
            nats.to_owned()
        } else {
            value
        };
        cmd.env(name, value);
    }
    for (name, value) in extra_env {
        cmd.env(name, value);
    }
    Proc::start(cmd)
}

/// A token whose value is a file of a mounted ConfigMap, with that file written under `dir`.
fn localize(pod: &Pod<'_>, token: &str, dir: &Path) -> String {
    let (prefix, value) = match token.split_once('=') {
        Some((flag, value)) if flag.starts_with('-') => (format!("{flag}="), value),
        _ => (String::new(), token),
    };
    if !value.starts_with('/') {
        return token.to_owned();
    }
    let Some(text) = pod.file(value) else {
        return token.to_owned();
    };
    let local = dir.join(value.trim_start_matches('/').replace('/', "_"));
    std::fs::write(&local, text).unwrap();
    format!("{prefix}{}", local.display())
}

/// Polls `path` until it answers `code`; returns the body.
async fn until_status(addr: SocketAddr, path: &str, code: u16) -> String {
    wait_until(
        DEADLINE,
        &format!("{path} to answer {code}"),
        || async move { http_get(addr, path).await.0 == code },
    )
    .await
    .unwrap();
    http_get(addr, path).await.1
}

fn assignment_lines(worker: &Proc) -> Vec<String> {
    worker
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("assignment v"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_until_the_worker_has_started() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    // A "server" that accepts and never speaks: the worker stays connecting, its HTTP up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nats = format!("nats://{}", listener.local_addr().unwrap());
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let worker = spawn_pod(&pod, dir.path(), &nats, &[]);
    let addr = worker.metrics_addr().await;

    assert_eq!(
        http_get(addr, &pod.probe_path("livenessProbe")).await.0,
        200
    );
    let (code, body) = http_get(addr, &pod.probe_path("readinessProbe")).await;
    assert_eq!((code, body.as_str()), (503, "not ready: starting\n"));
    assert_eq!(http_get(addr, "/metrics").await.0, 200);
    // A wrong path would not pass for a probe.
    assert_eq!(http_get(addr, "/health").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_serve_their_probes_and_a_rolling_restart_moves_nothing() {
    let manifests = Manifests::load();
    let pod = manifests.deployment();
    let grace = Duration::from_secs(pod.spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    let liveness = pod.probe_path("livenessProbe");
    let readiness = pod.probe_path("readinessProbe");
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();

    let mut old = spawn_pod(&pod, dir.path(), &url, &FAST_WINDOWS);
    let other = spawn_pod(&pod, dir.path(), &url, &FAST_WINDOWS);
    let (old_addr, other_addr) = (old.metrics_addr().await, other.metrics_addr().await);
    for addr in [old_addr, other_addr] {
        assert_eq!(http_get(addr, &liveness).await.0, 200);
        let body = until_status(addr, &readiness, 200).await;
        assert!(body.starts_with("ready: stable, assignment v"), "{body}");
        let (code, metrics) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            metrics.contains("parti_state{state=\"stable\"} 1"),
            "{metrics}"
        );
    }
    let old_id = old.id().await;
    let other_before = assignment_lines(&other);

    // The rollout: SIGTERM to the old pod, a graceful exit within the grace period.
    let stopping = Instant::now();
    old.signal(Signal::TERM);
    assert_eq!(old.wait_exit().await, Some(0), "{}", old.stderr());
    assert!(
        stopping.elapsed() < grace,
        "stopped in {:?}",
        stopping.elapsed()
    );
    assert_eq!(old.lines().last().map(String::as_str), Some("stopped"));

    // Its replacement. The remaining worker is in the scaling window the leave opened.
    let new = spawn_pod(&pod, dir.path(), &url, &FAST_WINDOWS);
    let body = until_status(other_addr, &readiness, 503).await;
    assert!(body.starts_with("not ready: scaling"), "{body}");
    assert_eq!(
        new.id().await,
        old_id,
        "the replacement claims the released ID"
    );
    let new_addr = new.metrics_addr().await;
    until_status(new_addr, &readiness, 200).await;
    until_status(other_addr, &readiness, 200).await;

    // Nothing moved: no new version for the worker that stayed (a new version would be printed
    // even with the same partitions), and the replacement applied the version in force.
    let other_after = assignment_lines(&other);
    assert_eq!(other_after, other_before, "a new assignment was published");
    let version = |line: &str| -> u64 {
        let v = line.strip_prefix("assignment v").unwrap();
        v.split(':').next().unwrap().parse().unwrap()
    };
    let in_force = version(other_after.last().unwrap());
    let new_lines = assignment_lines(&new);
    assert_eq!(new_lines.len(), 1, "{new_lines:?}");
    assert_eq!(version(&new_lines[0]), in_force, "{new_lines:?}");
    let old_last = assignment_lines(&old).last().map(|l| version(l));
    assert_eq!(old_last, Some(in_force), "{:?}", old.lines());
}
