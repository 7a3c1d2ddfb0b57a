//! Helpers for the CLI tests: run the `parti` binary, follow worker child processes, probe HTTP.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Generous bound on anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn parti() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parti"));
    // Nothing from the environment may change what the tests see.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PARTI_") {
            cmd.env_remove(key);
        }
    }
    cmd.kill_on_drop(true);
    cmd
}

/// What a finished command returned.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `parti --nats URL [--config FILE] ARGS…` to completion.
pub async fn run(url: &str, config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = parti();
    cmd.arg("--nats").arg(url);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.args(args).output())
        .await
        .expect("parti did not finish in time")
        .expect("cannot run parti");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Fast timings (as `Config::fast_for_tests`), with a long stable-ID TTL so that a killed
/// worker stays visible as expired for several seconds.
pub const FAST_CONFIG: &str = "\
workerIdTtl: 10s
heartbeatInterval: 200ms
heartbeatTtl: 600ms
coldStartWindow: 1s
plannedScaleWindow: 500ms
electionTtl: 1s
startupTimeout: 10s
shutdownTimeout: 3s
operationTimeout: 1s
assignment:
  minRebalanceInterval: 100ms
";

/// A temp dir with `parti.yaml` (FAST_CONFIG) and `parts.yaml` (`n` partitions `p0`…).
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new(partitions: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("parti.yaml"), FAST_CONFIG).unwrap();
        let parts: String = (0..partitions)
            .map(|i| format!("- keys: [p{i}]\n  weight: {}\n", 10 + i))
            .collect();
        std::fs::write(dir.path().join("parts.yaml"), parts).unwrap();
        Self { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("parti.yaml")
    }

    pub fn partitions(&self) -> PathBuf {
        self.dir.path().join("parts.yaml")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A `parti` child process whose output lines are collected as they come.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Proc {
    /// `parti --nats URL --config FILE worker --partitions FILE EXTRA…`
    pub fn worker(url: &str, files: &Files, extra: &[&str]) -> Self {
        let mut cmd = parti();
        cmd.arg("--nats")
            .arg(url)
            .arg("--config")
            .arg(files.config())
            .arg("worker")
            .arg("--partitions")
            .arg(files.partitions())
            .args(extra);
        Self::start(cmd)
    }

    /// Starts a command with its output captured.
    pub fn start(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start parti");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        let out_reader = tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let err_reader = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            sink.lock().unwrap().push_str(&text);
        });
        Self {
            child,
            lines,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`; returns it.
    pub async fn wait_line(&self, needle: &str) -> String {
        let found = parti_testkit::wait_until_sync(DEADLINE, needle, || {
            self.lines().iter().any(|l| l.contains(needle))
        })
        .await;
        if let Err(e) = found {
            panic!(
                "{e}\nstdout:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.stderr()
            );
        }
        self.lines()
            .into_iter()
            .find(|l| l.contains(needle))
            .unwrap()
    }

    /// The worker ID from its `worker {id} started:` line.
    pub async fn id(&self) -> String {
        let line = self.wait_line(" started: ").await;
        line.split_whitespace().nth(1).unwrap().to_owned()
    }

    /// The address printed by `--metrics-addr`.
    pub async fn metrics_addr(&self) -> SocketAddr {
        let line = self.wait_line("metrics on http://").await;
        let addr = line
            .trim_start_matches("metrics on http://")
            .trim_end_matches("/metrics");
        addr.parse().unwrap()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
            .expect("the process has exited");
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits for the process to exit; returns its exit code (`None` when killed by a signal).
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the process did not exit in time")
            .unwrap();
        // Collect the rest of its output.
        for reader in self.readers.drain(..) {
            tokio::time::timeout(DEADLINE, reader)
                .await
                .unwrap()
                .unwrap();
        }
        status.code()
    }
}

/// A plain HTTP/1.0 GET; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs `parti status --json ARGS…` until `ready` holds for its JSON, within [`DEADLINE`];
/// returns that output. On timeout, panics with the last output.
pub async fn status_until(
    url: &str,
    args: &[&str],
    what: &str,
    mut ready: impl FnMut(&serde_json::Value) -> bool,
) -> Output {
    let mut cmd = vec!["status", "--json"];
    cmd.extend_from_slice(args);
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let out = run(url, None, &cmd).await;
        let parsed = serde_json::from_str::<serde_json::Value>(&out.stdout);
        if parsed.as_ref().is_ok_and(&mut ready) {
            return out;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out waiting for {what}; last status: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `parti history --json` until one of its entries satisfies `wanted`, within
/// [`DEADLINE`]; returns every entry (oldest first). On timeout, panics with the last output.
pub async fn history_until(
    url: &str,
    config: &Path,
    what: &str,
    mut wanted: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let out = run(url, Some(config), &["history", "-n", "64", "--json"]).await;
        let entries: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if out.code == Some(0) && entries.iter().any(&mut wanted) {
            return entries;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out waiting for {what} in the history; last output: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `(partition, why)` pairs of a history entry's moves.
pub fn history_moves(entry: &serde_json::Value) -> Vec<(String, String)> {
    entry["moves"]
        .as_array()
        .unwrap_or_else(|| panic!("no moves: {entry}"))
        .iter()
        .map(|m| {
            (
                m["partition"].as_str().unwrap().to_owned(),
                m["why"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
