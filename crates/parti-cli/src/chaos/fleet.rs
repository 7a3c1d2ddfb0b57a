//! The fleet: N slots, each a [`Link`] and the `parti worker` process currently running behind
//! it. Every process is a child spawned with `kill_on_drop`, so nothing outlives the run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use parti::ownership::{OwnershipEvent, OwnershipRecord};
use parti_testkit::checker::read_jsonl;
use rustix::process::{Pid, Signal, kill_process};
use tokio::process::{Child, Command};

use super::nats::Link;

/// Suffix of the ownership logs in the run directory.
pub(crate) const OWNERSHIP_SUFFIX: &str = ".ownership.jsonl";
/// Suffix of the process logs in the run directory.
pub(crate) const PROCESS_SUFFIX: &str = ".process.jsonl";

/// Everything needed to start a worker process.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The `parti` binary (this one).
    pub(crate) exe: PathBuf,
    /// The run directory: configuration, partition list, every log.
    pub(crate) dir: PathBuf,
    /// The worker configuration file.
    pub(crate) config: PathBuf,
    /// The partition list file.
    pub(crate) partitions: PathBuf,
    /// The stream the workers consume.
    pub(crate) stream: String,
    /// Its subject template.
    pub(crate) subject_template: String,
    /// The consumers' ack wait and takeover delay (short, so that the final drain is quick).
    pub(crate) ack_wait: Duration,
}

/// Who a process is, from its ownership log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Its latest stable ID.
    pub(crate) worker: Option<String>,
    /// Its instance ID.
    pub(crate) instance: Option<String>,
}

/// One `parti worker` child process.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    /// `w{slot}-{generation}`: names its files in the run directory.
    pub(crate) name: String,
    /// The process (killed when dropped).
    child: Child,
    /// Its `--ownership-log`.
    ownership_log: PathBuf,
    /// Its instance ID, once its log named it (it never changes).
    instance: Option<String>,
    /// Whether its log showed an applied assignment (it stays true).
    applied: bool,
}

impl WorkerProcess {
    fn spawn(launch: &Launch, link: &Link, name: String) -> anyhow::Result<Self> {
        let file = |suffix: &str| launch.dir.join(format!("{name}{suffix}"));
        let ownership_log = file(OWNERSHIP_SUFFIX);
        let out = File::create(file(".out"))
            .with_context(|| format!("cannot create the output file of {name}"))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot create the output file of {name}"))?;
        let ack_wait = humantime::format_duration(launch.ack_wait).to_string();
        let mut command = Command::new(&launch.exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PARTI_") {
                command.env_remove(key);
            }
        }
        command
            .arg("--nats")
            .arg(link.urls())
            .arg("--config")
            .arg(&launch.config)
            .arg("worker")
            .arg("--partitions")
            .arg(&launch.partitions)
            .arg("--ownership-log")
            .arg(&ownership_log)
            .arg("--process-log")
            .arg(file(PROCESS_SUFFIX))
            .arg("--stream")
            .arg(&launch.stream)
            .arg("--subject-template")
            .arg(&launch.subject_template)
            .args(["--ack-wait", &ack_wait, "--takeover-after", &ack_wait])
            .arg("--ignore-discovered-servers")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", launch.exe.display()))?;
        Ok(Self {
            name,
            child,
            ownership_log,
            instance: None,
            applied: false,
        })
    }

    /// Its process ID, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it still runs.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM…).
    pub(crate) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .with_context(|| format!("{} has exited", self.name))?;
        kill_process(pid, signal)
            .with_context(|| format!("cannot send {signal:?} to {}", self.name))
    }

    /// `kill -9`, and waits until it is gone.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("cannot kill {}", self.name))
    }

    /// SIGTERM, then waits up to `within` for the graceful stop; kills it after that. Returns
    /// whether it stopped by itself.
    pub(crate) async fn stop(&mut self, within: Duration) -> anyhow::Result<bool> {
        if !self.is_running() {
            return Ok(false);
        }
        self.signal(Signal::TERM)?;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                status.with_context(|| format!("cannot wait for {}", self.name))?;
                Ok(true)
            }
            Err(_) => {
                self.kill().await?;
                Ok(false)
            }
        }
    }

    /// Its ownership records so far (empty when none could be read yet).
    pub(crate) fn records(&self) -> Vec<OwnershipRecord> {
        read_ownership(&self.ownership_log)
    }

    /// Who it is, from its ownership log (read whole: call it once per fault, not in a loop).
    pub(crate) fn identity(&mut self) -> Identity {
        let records = self.records();
        if self.instance.is_none() {
            self.instance = records.first().map(|r| r.instance.clone());
        }
        Identity {
            worker: records.last().map(|r| r.worker.to_string()),
            instance: self.instance.clone(),
        }
    }

    /// Its instance ID, once it has written a record.
    pub(crate) fn instance(&mut self) -> Option<&str> {
        if self.instance.is_none() {
            self.instance = self.records().first().map(|r| r.instance.clone());
        }
        self.instance.as_deref()
    }

    /// Whether it has applied an assignment (it runs and is part of the cluster); the log is
    /// read only until it has.
    pub(crate) fn has_applied(&mut self) -> bool {
        if !self.applied {
            let records = self.records();
            if self.instance.is_none() {
                self.instance = records.first().map(|r| r.instance.clone());
            }
            self.applied = records
                .iter()
                .any(|r| matches!(r.event, OwnershipEvent::Applied { .. }));
        }
        self.applied
    }
}

/// An ownership log as far as it can be read (a missing or unreadable file reads as empty).
fn read_ownership(path: &Path) -> Vec<OwnershipRecord> {
    read_jsonl(path).unwrap_or_default()
}

/// One place in the fleet: a link, and the process behind it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The slot's own path to NATS.
    pub(crate) link: Link,
    /// The process running now (none between a kill and the restart).
    pub(crate) process: Option<WorkerProcess>,
    /// How many processes the slot has started.
    generation: u32,
}

/// N slots of worker processes.
#[derive(Debug)]
pub(crate) struct Fleet {
    /// How to start a worker.
    launch: Launch,
    /// The slots, in order.
    pub(crate) slots: Vec<Slot>,
}

impl Fleet {
    /// Creates `n` links (proxies in front of `nodes`) and starts a worker behind each.
    pub(crate) async fn start(
        launch: Launch,
        nodes: &[std::net::SocketAddr],
        n: usize,
    ) -> anyhow::Result<Self> {
        let mut fleet = Self {
            launch,
            slots: Vec::with_capacity(n),
        };
        for _ in 0..n {
            fleet.slots.push(Slot {
                link: Link::new(nodes).await?,
                process: None,
                generation: 0,
            });
        }
        for slot in 0..n {
            fleet.spawn(slot)?;
        }
        Ok(fleet)
    }

    /// Starts a new process in `slot` (whatever ran there must be gone).
    pub(crate) fn spawn(&mut self, slot: usize) -> anyhow::Result<&WorkerProcess> {
        let s = self
            .slots
            .get_mut(slot)
            .with_context(|| format!("no slot {slot}"))?;
        s.generation += 1;
        let name = format!("w{slot}-{}", s.generation);
        let process = WorkerProcess::spawn(&self.launch, &s.link, name)?;
        Ok(s.process.insert(process))
    }

    /// The process in `slot`, mutably.
    pub(crate) fn process_mut(&mut self, slot: usize) -> Option<&mut WorkerProcess> {
        self.slots.get_mut(slot)?.process.as_mut()
    }

    /// The process IDs of the running processes.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.process.as_ref()?.pid())
            .collect()
    }

    /// The link of `slot`.
    pub(crate) fn link(&self, slot: usize) -> Option<&Link> {
        self.slots.get(slot).map(|s| &s.link)
    }

    /// The slot whose process has `instance`.
    pub(crate) fn slot_of_instance(&mut self, instance: &str) -> Option<usize> {
        self.slots.iter_mut().position(|s| {
            s.process
                .as_mut()
                .is_some_and(|p| p.instance() == Some(instance))
        })
    }

    /// Every slot whose process has applied an assignment and still runs.
    pub(crate) fn all_applied(&mut self) -> bool {
        self.slots.iter_mut().all(|s| {
            s.process
                .as_mut()
                .is_some_and(|p| p.is_running() && p.has_applied())
        })
    }

    /// Restarts the processes that exited on their own; returns their names.
    pub(crate) fn restart_exited(&mut self) -> anyhow::Result<Vec<String>> {
        let mut exited = Vec::new();
        for slot in 0..self.slots.len() {
            let gone = match self.slots[slot].process.as_mut() {
                Some(process) => (!process.is_running()).then(|| process.name.clone()),
                None => Some(format!("slot {slot}")),
            };
            if let Some(name) = gone {
                exited.push(name);
                self.spawn(slot)?;
            }
        }
        Ok(exited)
    }

    /// Stops every process gracefully at once (each killed after `within`); returns the names
    /// of those that had to be killed.
    pub(crate) async fn stop_all(&mut self, within: Duration) -> Vec<String> {
        let stops = self
            .slots
            .iter_mut()
            .filter_map(|s| s.process.as_mut())
            .map(|p| async move {
                let graceful = p.stop(within).await.unwrap_or(false);
                (!graceful).then(|| p.name.clone())
            });
        futures::future::join_all(stops)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}
