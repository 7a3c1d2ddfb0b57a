//! A JetStream cluster of real `nats-server` processes on loopback.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ServerAddr};

use crate::server::{connect_options, free_ports, probe};
use crate::{NatsServer, TestkitError, wait_until};

/// Time a cluster gets to elect a meta leader and accept replicated streams.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a restarted node gets to answer JetStream requests again.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(20);
const CLUSTER_NAME: &str = "parti-test";
const PROBE_STREAM: &str = "PARTI_TESTKIT_PROBE";

/// Several JetStream nodes clustered over loopback routes, named `n0`, `n1`, ….
///
/// Each node is a [`NatsServer`] with its own client port, cluster port and store. Any node can be
/// killed and restarted; the others keep serving replicated buckets while a quorum is up.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use async_nats::jetstream::{self, kv};
///
/// let mut cluster = parti_testkit::NatsCluster::start(3).await?;
/// let js = jetstream::new(cluster.node(1).client().await?);
/// let bucket = kv::Config { bucket: "r3".into(), num_replicas: 3, ..Default::default() };
/// let kv = js.create_key_value(bucket).await?;
/// cluster.kill(0).await?;
/// kv.put("k", "still writable".into()).await?;
/// cluster.restart(0).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until streams with `size` replicas (at most 5) can be created.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let cluster = parti_testkit::NatsCluster::start(3).await?;
    /// assert_eq!(cluster.size(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(size: usize) -> Result<Self, TestkitError> {
        let size = size.max(1);
        let ports = free_ports(2 * size)?;
        let (client_ports, route_ports) = ports.split_at(size);
        let route_url = |port: &u16| format!("nats://127.0.0.1:{port}");
        let mut nodes = Vec::with_capacity(size);
        for (i, (client_port, route_port)) in client_ports.iter().zip(route_ports).enumerate() {
            let routes: Vec<String> = route_ports
                .iter()
                .filter(|p| *p != route_port)
                .map(route_url)
                .collect();
            let mut builder = NatsServer::builder()
                .name(format!("n{i}"))
                .port(*client_port)
                .wait_for_jetstream(false)
                .args([
                    "--cluster_name",
                    CLUSTER_NAME,
                    "--cluster",
                    &route_url(route_port),
                ]);
            if !routes.is_empty() {
                builder = builder.args(["--routes".to_owned(), routes.join(",")]);
            }
            nodes.push(builder.start().await?);
        }
        let cluster = Self { nodes };
        cluster.wait_for_replicated_streams().await?;
        Ok(cluster)
    }

    /// How many nodes the cluster has (running or not).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let cluster = parti_testkit::NatsCluster::start(3).await?;
    /// assert_eq!(cluster.size(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`.
    ///
    /// # Panics
    ///
    /// If `i >= self.size()`, like slice indexing.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let cluster = parti_testkit::NatsCluster::start(3).await?;
    /// assert_eq!(cluster.node(2).name(), Some("n2"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to stop it, check `is_running`, …).
    ///
    /// # Panics
    ///
    /// If `i >= self.size()`, like slice indexing.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let mut cluster = parti_testkit::NatsCluster::start(3).await?;
    /// cluster.node_mut(1).stop().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The client URLs of all nodes, in node order.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = parti_testkit::NatsCluster::start(3).await?;
    /// let addrs: Vec<async_nats::ServerAddr> =
    ///     cluster.urls().iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
    /// let client = async_nats::connect(addrs).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Connects a client that knows every node, so it fails over when its node dies.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let cluster = parti_testkit::NatsCluster::start(3).await?;
    /// let client = cluster.client().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn client(&self) -> Result<Client, TestkitError> {
        let addrs = self
            .urls()
            .iter()
            .map(|url| url.parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TestkitError::io("invalid node URL", e))?;
        Ok(connect_options().connect(addrs).await?)
    }

    /// Kills node `i` with SIGKILL.
    ///
    /// # Panics
    ///
    /// If `i >= self.size()`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let mut cluster = parti_testkit::NatsCluster::start(3).await?;
    /// cluster.kill(0).await?;
    /// assert!(!cluster.node_mut(0).is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn kill(&mut self, i: usize) -> Result<(), TestkitError> {
        self.nodes[i].kill().await
    }

    /// Restarts node `i` (stopping it first if it runs) with its port and store, and waits until
    /// it answers JetStream requests again, i.e. has rejoined the cluster.
    ///
    /// # Panics
    ///
    /// If `i >= self.size()`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let mut cluster = parti_testkit::NatsCluster::start(3).await?;
    /// cluster.kill(2).await?;
    /// cluster.restart(2).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn restart(&mut self, i: usize) -> Result<(), TestkitError> {
        let node = &mut self.nodes[i];
        node.restart().await?;
        let url = node.url();
        let what = format!("restarted node n{i} to answer JetStream requests");
        wait_until(NODE_READY_TIMEOUT, &what, || {
            let url = url.clone();
            async move { probe(&url, true).await.is_ok() }
        })
        .await
        .map(drop)
    }

    /// Waits until a meta leader exists and every node can hold a replica, by creating (and
    /// deleting) a probe stream with one replica per node.
    async fn wait_for_replicated_streams(&self) -> Result<(), TestkitError> {
        let client = self.client().await?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(1));
        let replicas = self.size().min(5);
        let config = stream::Config {
            name: PROBE_STREAM.into(),
            subjects: vec![format!("{PROBE_STREAM}.>")],
            num_replicas: replicas,
            storage: stream::StorageType::Memory,
            ..Default::default()
        };
        let what = format!("a {replicas}-node JetStream cluster to accept R{replicas} streams");
        wait_until(CLUSTER_READY_TIMEOUT, &what, || {
            let (js, config) = (js.clone(), config.clone());
            async move {
                js.get_or_create_stream(config).await.is_ok()
                    && js.delete_stream(PROBE_STREAM).await.is_ok()
            }
        })
        .await
        .map(drop)
    }
}
