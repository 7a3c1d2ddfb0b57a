//! A TCP proxy whose link can be passed, blackholed, reset or delayed at run time.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::TestkitError;

const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction; bounds memory while delaying.
const IN_FLIGHT: usize = 256;

/// What the proxy does with its connections.
///
/// ```
/// use std::time::Duration;
/// use parti_testkit::LinkMode;
///
/// assert_ne!(LinkMode::Pass, LinkMode::Delay(Duration::from_millis(100)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkMode {
    /// Forward bytes both ways.
    Pass,
    /// Keep connections open but forward nothing in either direction (a stall). New
    /// connections are accepted and stalled too.
    Blackhole,
    /// Reset every connection (TCP RST) and reset new ones as soon as they are accepted.
    Reset,
    /// Forward bytes, each chunk this much later than it arrived.
    Delay(Duration),
}

/// A TCP proxy on a free loopback port in front of `upstream`, for fault injection.
///
/// Modes switch at run time and apply to existing connections at once. The proxy stops (and
/// drops every connection) when the value is dropped.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = parti_testkit::NatsServer::start().await?;
/// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
/// let client = parti_testkit::connect_options()
///     .ignore_discovered_servers()
///     .connect(proxy.url())
///     .await?;
/// proxy.blackhole(); // the client's link stalls
/// proxy.pass(); // and recovers
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<LinkMode>,
    connections: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, starting in [`LinkMode::Pass`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// assert_ne!(proxy.addr(), server.addr());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(upstream: SocketAddr) -> Result<Self, TestkitError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| TestkitError::io("cannot bind the proxy port", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::io("cannot read the proxy port", e))?;
        let (mode, mode_rx) = watch::channel(LinkMode::Pass);
        let connections = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream,
            mode_rx,
            connections.clone(),
        ));
        Ok(Self {
            addr,
            upstream,
            mode,
            connections,
            accept_task,
        })
    }

    /// The address clients connect to.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// let stream = tokio::net::TcpStream::connect(proxy.addr()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// assert_eq!(proxy.upstream(), server.addr());
    /// # Ok(())
    /// # }
    /// ```
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The NATS URL of the proxy, `nats://127.0.0.1:<port>`.
    ///
    /// Clients connecting here should use `ignore_discovered_servers()` so they cannot bypass
    /// the proxy through server-advertised URLs.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// let client = async_nats::connect(proxy.url()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The current mode.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// assert_eq!(proxy.mode(), parti_testkit::LinkMode::Pass);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    /// Switches to `mode`; existing connections follow at once.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// use parti_testkit::LinkMode;
    ///
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// proxy.set_mode(LinkMode::Blackhole);
    /// assert_eq!(proxy.mode(), LinkMode::Blackhole);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_mode(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    /// Forwards normally: [`LinkMode::Pass`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// proxy.blackhole();
    /// proxy.pass();
    /// # Ok(())
    /// # }
    /// ```
    pub fn pass(&self) {
        self.set_mode(LinkMode::Pass);
    }

    /// Stalls every connection: [`LinkMode::Blackhole`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// proxy.blackhole();
    /// # Ok(())
    /// # }
    /// ```
    pub fn blackhole(&self) {
        self.set_mode(LinkMode::Blackhole);
    }

    /// Resets every connection, current and new: [`LinkMode::Reset`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// proxy.reset();
    /// # Ok(())
    /// # }
    /// ```
    pub fn reset(&self) {
        self.set_mode(LinkMode::Reset);
    }

    /// Delays every forwarded chunk by `latency`: [`LinkMode::Delay`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// proxy.delay(std::time::Duration::from_millis(200));
    /// # Ok(())
    /// # }
    /// ```
    pub fn delay(&self, latency: Duration) {
        self.set_mode(LinkMode::Delay(latency));
    }

    /// How many client connections are open through the proxy right now.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// # let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// assert_eq!(proxy.connections(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<LinkMode>,
    connections: Arc<AtomicUsize>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let guard = ConnectionGuard::new(connections.clone());
                    tasks.spawn(serve(client, upstream, mode.clone(), guard));
                }
                // Transient (e.g. too many open files): keep accepting.
                Err(e) => tracing::warn!(error = %e, "fault proxy accept failed"),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Counts a connection as open until dropped.
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<LinkMode>,
    _guard: ConnectionGuard,
) {
    if *mode.borrow_and_update() == LinkMode::Reset {
        abort_connection(&client);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        abort_connection(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (up_mode, down_mode) = (mode.clone(), mode.clone());
    let reset = tokio::select! {
        _ = async {
            tokio::join!(
                pipe(&mut client_read, &mut server_write, up_mode),
                pipe(&mut server_read, &mut client_write, down_mode),
            )
        } => false,
        () = until_reset(&mut mode) => true,
    };
    if reset {
        abort_connection(client_read.as_ref());
        abort_connection(server_read.as_ref());
    }
}

/// Makes the coming close send a TCP RST instead of a FIN.
fn abort_connection(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Resolves once the mode is [`LinkMode::Reset`] (or the proxy is gone).
async fn until_reset(mode: &mut watch::Receiver<LinkMode>) {
    let _ = mode.wait_for(|m| *m == LinkMode::Reset).await;
}

/// Waits while blackholed; returns the latency to apply, or `None` once the link must close.
async fn open_link(mode: &mut watch::Receiver<LinkMode>) -> Option<Duration> {
    let current = *mode.wait_for(|m| *m != LinkMode::Blackhole).await.ok()?;
    match current {
        LinkMode::Pass => Some(Duration::ZERO),
        LinkMode::Delay(latency) => Some(latency),
        LinkMode::Blackhole | LinkMode::Reset => None,
    }
}

/// Copies one direction, stamping each chunk with its delivery time.
async fn pipe(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, mode: watch::Receiver<LinkMode>) {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::join!(read_side(from, tx, mode.clone()), write_side(to, rx, mode));
}

async fn read_side(
    from: &mut OwnedReadHalf,
    tx: mpsc::Sender<(Instant, Bytes)>,
    mut mode: watch::Receiver<LinkMode>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Not reading while blackholed lets the sender's data pile up in kernel buffers.
        let Some(latency) = open_link(&mut mode).await else {
            return;
        };
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                if tx.send((Instant::now() + latency, chunk)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn write_side(
    to: &mut OwnedWriteHalf,
    mut rx: mpsc::Receiver<(Instant, Bytes)>,
    mut mode: watch::Receiver<LinkMode>,
) {
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        // Chunks read just before a blackhole are held back too.
        if open_link(&mut mode).await.is_none() || to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    // The other side finished sending: pass the end of stream on.
    let _ = to.shutdown().await;
}
