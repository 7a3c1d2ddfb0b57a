//! The demo's own `nats-server`: found, started with JetStream on a free loopback port and a
//! temporary store, killed and, after a short downtime, started again in place (the "NATS restart" fault), killed at the
//! end (the temporary directory goes with it).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Names the `nats-server` binary to use; checked first.
pub(crate) const NATS_SERVER_ENV: &str = "PARTI_NATS_SERVER";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `$PARTI_NATS_SERVER`, then the workspace's `.tools/bin/nats-server` (installed by
/// `scripts/setup`), then `nats-server` on `PATH`. `Err` lists what was tried.
pub(crate) fn find() -> Result<PathBuf, Vec<PathBuf>> {
    let mut tried = Vec::new();
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        tried.push(path);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }
    tried.push(local);
    if let Some(path_var) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path_var) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    tried.push(PathBuf::from("nats-server on PATH"));
    Err(tried)
}

/// A running `nats-server` child process.
#[derive(Debug)]
pub(crate) struct NatsProcess {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    pub(crate) version: String,
}

impl NatsProcess {
    /// Starts the server and waits until JetStream answers.
    pub(crate) async fn start(binary: PathBuf) -> anyhow::Result<Self> {
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .await
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default();
        let dir = tempfile::Builder::new()
            .prefix("parti-sim-")
            .tempdir()
            .context("cannot create a temporary directory for nats-server")?;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port")?
            .port();
        let mut server = Self {
            binary,
            port,
            dir,
            child: None,
            version,
        };
        server.launch().await?;
        Ok(server)
    }

    /// The client URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the process (SIGKILL: no clean shutdown) and waits for it to exit.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Kills the server, leaves it down for `downtime`, and starts it again on the same port
    /// with the same store.
    pub(crate) async fn restart(&mut self, downtime: Duration) -> anyhow::Result<()> {
        self.kill().await;
        tokio::time::sleep(downtime).await;
        self.launch().await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let store = self.dir.path().join("store");
        let log_path = self.dir.path().join("nats-server.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("cannot open the nats-server log")?;
        let log_err = log.try_clone().context("cannot open the nats-server log")?;
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                anyhow::bail!("nats-server exited ({status}):\n{}", tail.join("\n"));
            }
            if jetstream_answers(&self.url()).await {
                return Ok(());
            }
            if start.elapsed() >= READY_TIMEOUT {
                anyhow::bail!(
                    "nats-server on port {} was not ready within {READY_TIMEOUT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn jetstream_answers(url: &str) -> bool {
    let Ok(client) = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .connect(url)
        .await
    else {
        return false;
    };
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_millis(500));
    js.query_account().await.is_ok()
}
