//! The error type of the test kit.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting or driving test infrastructure.
///
/// Tests usually just `?` or `.unwrap()` these; the messages say what to do (for example run
/// `scripts/setup` when no `nats-server` is found).
///
/// ```
/// use std::time::Duration;
/// use parti_testkit::TestkitError;
///
/// let err = TestkitError::Timeout { what: "leader elected".into(), waited: Duration::from_secs(2) };
/// assert_eq!(err.to_string(), "timed out after 2s waiting for leader elected");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// No `nats-server` binary could be found.
    #[error(
        "no nats-server binary found (tried {}); run `bash scripts/setup` or set PARTI_NATS_SERVER",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NatsServerNotFound {
        /// Every location that was checked, in order.
        tried: Vec<PathBuf>,
    },
    /// An operating-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `nats-server` exited while it was expected to run.
    #[error("nats-server exited ({status}); log {log}:\n{log_tail}")]
    ServerExited {
        /// The exit status as reported by the operating system.
        status: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },
    /// A condition did not become true before its deadline.
    #[error("timed out after {} waiting for {what}", humanize(*waited))]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// A line of a JSON-lines log did not decode (a last line cut short is skipped instead).
    #[error("{}:{line}: {source}", path.display())]
    Jsonl {
        /// The file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What was wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// A NATS client could not connect.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// `2s`, `150ms`: short and exact enough for messages.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
