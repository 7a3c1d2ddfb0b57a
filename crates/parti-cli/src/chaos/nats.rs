//! The NATS side of a chaos run: a single server or a 3-node cluster (the server faults), and
//! one fault proxy per worker and node (the link faults).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::ServerAddr;
use parti_testkit::{FaultProxy, NatsCluster, NatsServer};

use crate::rng::SplitMix;

/// The servers of a run.
#[derive(Debug)]
pub(crate) enum Backend {
    /// One nats-server with JetStream.
    Single(Box<NatsServer>),
    /// Three clustered nodes; buckets and the stream have three replicas.
    Cluster(NatsCluster),
}

impl Backend {
    /// Starts a server, or a 3-node cluster.
    pub(crate) async fn start(cluster: bool) -> anyhow::Result<Self> {
        Ok(if cluster {
            Self::Cluster(
                NatsCluster::start(3)
                    .await
                    .context("cannot start a 3-node NATS cluster")?,
            )
        } else {
            Self::Single(Box::new(
                NatsServer::start()
                    .await
                    .context("cannot start nats-server")?,
            ))
        })
    }

    /// The client addresses of every node.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Self::Single(server) => vec![server.addr()],
            Self::Cluster(cluster) => (0..cluster.size())
                .map(|i| cluster.node(i).addr())
                .collect(),
        }
    }

    /// The process IDs of the servers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        match self {
            Self::Single(server) => server.pid().into_iter().collect(),
            Self::Cluster(cluster) => (0..cluster.size())
                .filter_map(|i| cluster.node(i).pid())
                .collect(),
        }
    }

    /// Replicas for the stream (and the buckets).
    pub(crate) fn replicas(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(cluster) => cluster.size(),
        }
    }

    /// One line on what runs.
    pub(crate) fn describe(&self) -> String {
        let urls: Vec<String> = self.addrs().iter().map(|a| format!("nats://{a}")).collect();
        match self {
            Self::Single(_) => format!("nats-server at {}", urls.join(", ")),
            Self::Cluster(_) => format!("3-node NATS cluster at {}", urls.join(", ")),
        }
    }

    /// A direct client of the runner (producer, observer, garbage): never through a proxy.
    pub(crate) async fn client(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        let addrs: Vec<ServerAddr> = self
            .addrs()
            .iter()
            .map(|a| format!("nats://{a}").parse())
            .collect::<Result<_, _>>()
            .context("invalid server address")?;
        parti_testkit::connect_options()
            .name(name)
            .connect(addrs)
            .await
            .context("the runner cannot connect to NATS")
    }

    /// The server fault: the single server killed, down for `downtime`, restarted on its port
    /// and store; or one cluster node (chosen by `rng`) the same way. Returns what was done.
    pub(crate) async fn outage(
        &mut self,
        rng: &mut SplitMix,
        downtime: Duration,
    ) -> anyhow::Result<String> {
        match self {
            Self::Single(server) => {
                server.kill().await.context("cannot kill nats-server")?;
                tokio::time::sleep(downtime).await;
                server
                    .restart()
                    .await
                    .context("cannot restart nats-server")?;
                Ok("nats-server".into())
            }
            Self::Cluster(cluster) => {
                let nodes: Vec<usize> = (0..cluster.size()).collect();
                let node = rng.choose(&nodes).unwrap_or(0);
                cluster
                    .kill(node)
                    .await
                    .with_context(|| format!("cannot kill node n{node}"))?;
                tokio::time::sleep(downtime).await;
                cluster
                    .restart(node)
                    .await
                    .with_context(|| format!("cannot restart node n{node}"))?;
                Ok(format!("node n{node}"))
            }
        }
    }
}

/// A worker's own way to NATS: one [`FaultProxy`] per node, so that its link can be cut
/// without touching anyone else's. It outlives the worker's processes (a restarted worker uses
/// the same link).
#[derive(Debug)]
pub(crate) struct Link {
    proxies: Vec<FaultProxy>,
}

impl Link {
    /// Proxies in front of every node.
    pub(crate) async fn new(nodes: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut proxies = Vec::with_capacity(nodes.len());
        for node in nodes {
            proxies.push(
                FaultProxy::start(*node)
                    .await
                    .context("cannot start a fault proxy")?,
            );
        }
        Ok(Self { proxies })
    }

    /// The `--nats` value for a worker behind this link.
    pub(crate) fn urls(&self) -> String {
        let urls: Vec<String> = self.proxies.iter().map(FaultProxy::url).collect();
        urls.join(",")
    }

    /// Stalls every connection (a network partition: nothing passes, nothing is closed).
    pub(crate) fn cut(&self) {
        self.proxies.iter().for_each(FaultProxy::blackhole);
    }

    /// Lets traffic pass again.
    pub(crate) fn heal(&self) {
        self.proxies.iter().for_each(FaultProxy::pass);
    }
}
