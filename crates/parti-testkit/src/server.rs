//! A real `nats-server` process with JetStream on a free loopback port and a temporary store.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::TestkitError;
use crate::auth::{ServerAuth, ServerTls, TlsFiles};

/// Environment variable naming the `nats-server` binary to use; checked first.
pub const NATS_SERVER_ENV: &str = "PARTI_NATS_SERVER";

const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a stopped server gets to shut down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Attempts when a freshly picked port is taken by someone else before the server binds it.
const PORT_ATTEMPTS: usize = 3;
/// Log lines printed when a test using the server fails.
const LOG_TAIL_LINES: usize = 40;
/// Log lines kept in a start-up failure: enough to span the usage text printed after a bad flag.
const EXIT_LOG_LINES: usize = 150;

/// Finds the `nats-server` binary: `$PARTI_NATS_SERVER`, then the workspace's
/// `.tools/bin/nats-server` (installed by `scripts/setup`), then `nats-server` on `PATH`.
///
/// ```no_run
/// let binary = parti_testkit::find_nats_server()?;
/// println!("using {}", binary.display());
/// # Ok::<(), parti_testkit::TestkitError>(())
/// ```
pub fn find_nats_server() -> Result<PathBuf, TestkitError> {
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
    Err(TestkitError::NatsServerNotFound { tried })
}

/// Client options suited to tests: quick connection timeout and a 50 ms reconnect delay.
///
/// Add your own settings (event callback, ping interval) before connecting.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = parti_testkit::NatsServer::start().await?;
/// let client = parti_testkit::connect_options()
///     .ping_interval(std::time::Duration::from_millis(100))
///     .connect(server.url())
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(|_| Duration::from_millis(50))
}

/// Picks `n` distinct free loopback ports (bound together, then released).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, TestkitError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TestkitError::io("cannot bind a free loopback port", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| TestkitError::io("cannot read a bound port", e))
}

/// Options for [`NatsServer`]; start with [`NatsServer::builder`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), parti_testkit::TestkitError> {
/// let server = parti_testkit::NatsServer::builder()
///     .name("n0")
///     .arg("--max_payload")
///     .arg("2MB")
///     .start()
///     .await?;
/// assert_eq!(server.name(), Some("n0"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NatsServerBuilder {
    binary: Option<PathBuf>,
    port: Option<u16>,
    name: Option<String>,
    args: Vec<OsString>,
    wait_for_jetstream: bool,
    ready_timeout: Duration,
    auth: ServerAuth,
    tls: ServerTls,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            binary: None,
            port: None,
            name: None,
            args: Vec::new(),
            wait_for_jetstream: true,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            auth: ServerAuth::None,
            tls: ServerTls::Off,
        }
    }
}

impl NatsServerBuilder {
    /// Uses this binary instead of [`find_nats_server`]'s choice.
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder().binary("/opt/nats/nats-server");
    /// ```
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Listens for clients on this port instead of a free one.
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder().port(14222);
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the server name (`--server_name`); clustered JetStream needs distinct names.
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder().name("n1");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Appends one command-line argument, after the kit's own (`-js -a -p -sd`).
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder().arg("-DV");
    /// ```
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several command-line arguments.
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder().args(["--cluster_name", "c"]);
    /// ```
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Whether start-up waits for JetStream to answer (default) or only for client connections.
    ///
    /// A lone node of a cluster has no JetStream until a quorum is up, so clusters turn this off.
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder().wait_for_jetstream(false);
    /// ```
    pub fn wait_for_jetstream(mut self, wait: bool) -> Self {
        self.wait_for_jetstream = wait;
        self
    }

    /// How long start-up may take before it fails (default 15 s).
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder()
    ///     .ready_timeout(std::time::Duration::from_secs(30));
    /// ```
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Requires clients to authenticate (default: [`ServerAuth::None`]).
    ///
    /// The kit writes a configuration file for it; [`NatsServer::client`] and
    /// [`NatsServer::connect_options`] use the credentials.
    ///
    /// ```
    /// use parti_testkit::{NatsServer, ServerAuth};
    ///
    /// let builder = NatsServer::builder().auth(ServerAuth::token("t0ken"));
    /// ```
    pub fn auth(mut self, auth: ServerAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Serves clients over TLS (default: [`ServerTls::Off`]) with certificates generated in the
    /// server's temporary directory; see [`NatsServer::tls_files`].
    ///
    /// ```
    /// use parti_testkit::{NatsServer, ServerTls};
    ///
    /// let builder = NatsServer::builder().tls(ServerTls::On);
    /// ```
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = tls;
        self
    }

    /// Spawns the server and waits until it is ready.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::builder().start().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(self) -> Result<NatsServer, TestkitError> {
        let binary = match self.binary.clone() {
            Some(path) => path,
            None => find_nats_server()?,
        };
        let attempts = if self.port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut last = None;
        for _ in 0..attempts {
            let port = match self.port {
                Some(port) => port,
                None => free_ports(1)?.into_iter().next().unwrap_or_default(),
            };
            let dir = tempfile::Builder::new()
                .prefix("parti-nats-")
                .tempdir()
                .map_err(|e| TestkitError::io("cannot create a temporary directory", e))?;
            let mut server = NatsServer {
                binary: binary.clone(),
                options: self.clone(),
                port,
                root: dir.path().to_path_buf(),
                dir: Some(dir),
                child: None,
                tls_files: None,
            };
            server.write_config()?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(TestkitError::ServerExited { log_tail, .. })
                    if log_tail.contains("address already in use") =>
                {
                    last = Some(log_tail);
                }
                Err(e) => return Err(e),
            }
        }
        Err(TestkitError::io(
            "no free port for nats-server",
            std::io::Error::new(std::io::ErrorKind::AddrInUse, last.unwrap_or_default()),
        ))
    }
}

/// A `nats-server` child process with JetStream, on `127.0.0.1` and a temporary store dir.
///
/// The process is killed when the value is dropped. The temporary directory (store and log) is
/// removed then too, unless the thread is panicking: a failing test keeps it and prints the log
/// tail.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut server = parti_testkit::NatsServer::start().await?;
/// let js = async_nats::jetstream::new(server.client().await?);
/// let kv = js
///     .create_key_value(async_nats::jetstream::kv::Config {
///         bucket: "demo".into(),
///         ..Default::default()
///     })
///     .await?;
/// kv.put("k", "v".into()).await?;
/// server.restart().await?; // same port, same store: the data survives
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    options: NatsServerBuilder,
    port: u16,
    root: PathBuf,
    /// `None` once the directory has been kept for a failing test.
    dir: Option<TempDir>,
    child: Option<Child>,
    /// The generated certificates when TLS is on.
    tls_files: Option<TlsFiles>,
}

impl NatsServer {
    /// Starts a server with default options on a free port; see [`NatsServer::builder`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// println!("NATS at {}", server.url());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start() -> Result<Self, TestkitError> {
        Self::builder().start().await
    }

    /// Options for a server: extra arguments, port, name, binary.
    ///
    /// ```
    /// let builder = parti_testkit::NatsServer::builder().name("solo");
    /// ```
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// let client = async_nats::connect(server.url()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; it stays the same across restarts.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// assert!(server.url().ends_with(&server.port().to_string()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client address, for example as the upstream of a [`FaultProxy`](crate::FaultProxy).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// let proxy = parti_testkit::FaultProxy::start(server.addr()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server name given with [`NatsServerBuilder::name`], if any.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::builder().name("n0").start().await?;
    /// assert_eq!(server.name(), Some("n0"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.options.name.as_deref()
    }

    /// Connects a client with [`connect_options`] (reconnects quickly after a restart).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// let client = server.client().await?;
    /// client.publish("greeting", "hello".into()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn client(&self) -> Result<Client, TestkitError> {
        Ok(self.connect_options().connect(self.url()).await?)
    }

    /// [`connect_options`] with this server's credentials and, with TLS on, its CA (and client
    /// certificate for mutual TLS) and TLS required.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use parti_testkit::{NatsServer, ServerAuth, ServerTls};
    ///
    /// let server = NatsServer::builder()
    ///     .auth(ServerAuth::user_password("app", "s3cret"))
    ///     .tls(ServerTls::On)
    ///     .start()
    ///     .await?;
    /// let client = server
    ///     .connect_options()
    ///     .name("my-test")
    ///     .connect(server.url())
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_options(&self) -> ConnectOptions {
        self.secure(connect_options())
    }

    /// The authentication the server requires, as given to [`NatsServerBuilder::auth`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// assert_eq!(server.auth(), &parti_testkit::ServerAuth::None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn auth(&self) -> &ServerAuth {
        &self.options.auth
    }

    /// The generated CA, server and client certificates, when TLS is on.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// use parti_testkit::{NatsServer, ServerTls};
    ///
    /// let server = NatsServer::builder().tls(ServerTls::On).start().await?;
    /// let ca = &server.tls_files().expect("TLS is on").ca;
    /// assert!(ca.exists());
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls_files.as_ref()
    }

    /// Adds this server's credentials and TLS settings to `options`.
    fn secure(&self, options: ConnectOptions) -> ConnectOptions {
        let options = self.options.auth.apply(options);
        match &self.tls_files {
            Some(files) => files.apply(options, self.options.tls == ServerTls::Mutual),
            None => options,
        }
    }

    /// The configuration file, when authentication or TLS needs one.
    fn config_path(&self) -> Option<PathBuf> {
        (self.options.auth != ServerAuth::None || self.options.tls != ServerTls::Off)
            .then(|| self.root.join("nats-server.conf"))
    }

    /// Generates the certificates and writes the configuration file, if any is needed.
    fn write_config(&mut self) -> Result<(), TestkitError> {
        let Some(path) = self.config_path() else {
            return Ok(());
        };
        let mut text = self.options.auth.config().unwrap_or_default();
        if self.options.tls != ServerTls::Off {
            let files = TlsFiles::generate(&self.root.join("tls"))?;
            text.push_str(&files.config(self.options.tls == ServerTls::Mutual));
            self.tls_files = Some(files);
        }
        std::fs::write(&path, text)
            .map_err(|e| TestkitError::io("cannot write the nats-server configuration", e))
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s) and waits for it to exit.
    ///
    /// Does nothing if it is not running. The store is kept for [`NatsServer::restart`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let mut server = parti_testkit::NatsServer::start().await?;
    /// server.stop().await?;
    /// assert!(!server.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stop(&mut self) -> Result<(), TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&child);
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(status) => status
                .map(drop)
                .map_err(|e| TestkitError::io("cannot wait for nats-server", e)),
            Err(_) => child
                .kill()
                .await
                .map_err(|e| TestkitError::io("cannot kill nats-server", e)),
        }
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for it to exit.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let mut server = parti_testkit::NatsServer::start().await?;
    /// server.kill().await?;
    /// assert!(!server.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        match self.child.take() {
            Some(mut child) => child
                .kill()
                .await
                .map_err(|e| TestkitError::io("cannot kill nats-server", e)),
            None => Ok(()),
        }
    }

    /// Stops the server if it runs, then starts it again on the same port with the same store.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let mut server = parti_testkit::NatsServer::start().await?;
    /// server.kill().await?;
    /// server.restart().await?;
    /// assert!(server.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop().await?;
        self.launch().await
    }

    /// Whether the process is alive.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let mut server = parti_testkit::NatsServer::start().await?;
    /// assert!(server.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The server process's ID while it runs (`None` once stopped or killed): for reading its
    /// resource use, as the scale benchmark does from `/proc/<pid>/stat`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The file that receives the server's stdout and stderr, across restarts.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// println!("log at {}", server.log_path().display());
    /// # Ok(())
    /// # }
    /// ```
    pub fn log_path(&self) -> PathBuf {
        self.root.join("nats-server.log")
    }

    /// The whole log so far (empty if it cannot be read).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// assert!(server.logs().contains("Server is ready"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn logs(&self) -> String {
        std::fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The JetStream store directory (`-sd`).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), parti_testkit::TestkitError> {
    /// let server = parti_testkit::NatsServer::start().await?;
    /// assert!(server.store_dir().exists());
    /// # Ok(())
    /// # }
    /// ```
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    fn log_tail(&self, max_lines: usize) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(max_lines)..].join("\n")
    }

    /// Spawns the process and waits until it is ready.
    async fn launch(&mut self) -> Result<(), TestkitError> {
        let store = self.store_dir();
        std::fs::create_dir_all(&store)
            .map_err(|e| TestkitError::io("cannot create the store directory", e))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| TestkitError::io("cannot open the nats-server log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| TestkitError::io("cannot open the nats-server log", e))?;
        let mut command = Command::new(&self.binary);
        if let Some(config) = self.config_path() {
            command.arg("-c").arg(config);
        }
        command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store);
        if let Some(name) = &self.options.name {
            command.args(["--server_name", name]);
        }
        command
            .args(&self.options.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| TestkitError::io(format!("cannot start {}", self.binary.display()), e))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let timeout = self.options.ready_timeout;
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(TestkitError::ServerExited {
                    status: status.to_string(),
                    log: self.log_path(),
                    log_tail: self.log_tail(EXIT_LOG_LINES),
                });
            }
            let options = self.secure(ConnectOptions::new());
            let last_error =
                match probe_with(options, &self.url(), self.options.wait_for_jetstream).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
            if start.elapsed() >= timeout {
                return Err(TestkitError::Timeout {
                    what: format!(
                        "nats-server on port {} to become ready (last error: {last_error}; log: {})",
                        self.port,
                        self.log_path().display()
                    ),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Connects once and, if asked, checks that JetStream answers for the account.
pub(crate) async fn probe(url: &str, jetstream: bool) -> Result<(), String> {
    probe_with(ConnectOptions::new(), url, jetstream).await
}

/// [`probe`] with client options (credentials, TLS).
async fn probe_with(options: ConnectOptions, url: &str, jetstream: bool) -> Result<(), String> {
    let client = options
        .connection_timeout(Duration::from_millis(500))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    if jetstream {
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(Duration::from_millis(500));
        js.query_account().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Asks the process to shut down cleanly.
#[cfg(unix)]
fn terminate(child: &Child) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
    {
        // An error means it is already gone, which is what we want.
        let _ = kill_process(pid, Signal::TERM);
    }
}

#[cfg(not(unix))]
fn terminate(child: &Child) {
    let _ = child;
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap briefly so the directory is not removed under a live process (SIGKILL is fast).
            for _ in 0..400 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "parti-testkit: test failed, nats-server files kept in {}\n--- last lines of {} ---\n{}\n---",
                kept.display(),
                self.log_path().display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}
