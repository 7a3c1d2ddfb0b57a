//! NATS connection options (`--nats`, auth and TLS) and connecting with a clear error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::ConnectOptions;
use clap::Args;

/// How to reach NATS. Every option can also come from a `PARTI_NATS_…` environment variable.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        global = true,
        env = "PARTI_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_name = "URL"
    )]
    pub(crate) nats: String,
    /// User name (with --password).
    #[arg(long, global = true, env = "PARTI_NATS_USER", requires = "password")]
    pub(crate) user: Option<String>,
    /// Password (with --user).
    #[arg(
        long,
        global = true,
        env = "PARTI_NATS_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub(crate) password: Option<String>,
    /// Authentication token.
    #[arg(
        long,
        global = true,
        env = "PARTI_NATS_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["user", "creds"]
    )]
    pub(crate) token: Option<String>,
    /// Credentials file (JWT and NKey seed).
    #[arg(
        long,
        global = true,
        env = "PARTI_NATS_CREDS",
        value_name = "FILE",
        conflicts_with = "user"
    )]
    pub(crate) creds: Option<PathBuf>,
    /// CA certificate(s) to verify the server with (PEM).
    #[arg(long, global = true, env = "PARTI_NATS_TLS_CA", value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM, with --tls-key).
    #[arg(
        long,
        global = true,
        env = "PARTI_NATS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Client private key for mutual TLS (PEM, with --tls-cert).
    #[arg(
        long,
        global = true,
        env = "PARTI_NATS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long, global = true, env = "PARTI_NATS_TLS_REQUIRED")]
    pub(crate) tls_required: bool,
    /// How long to try to reach the server before giving up.
    #[arg(
        long,
        global = true,
        default_value = "5s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub(crate) connect_timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 500ms or 5s: {e}"))
}

impl ConnectArgs {
    /// The server URLs, trimmed, empty entries dropped.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nats
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The client options for these arguments (named `name` on the server).
    pub(crate) async fn options(&self, name: &str) -> anyhow::Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .name(name)
            .connection_timeout(self.connect_timeout);
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("cannot read the credentials file {}", creds.display()))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required || self.tls_ca.is_some() || self.tls_cert.is_some() {
            options = options.require_tls(true);
        }
        Ok(options)
    }

    /// Connects, or fails with "cannot connect to NATS at URL: reason".
    pub(crate) async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        let urls = self.urls();
        if urls.is_empty() {
            anyhow::bail!("--nats is empty: give at least one server URL");
        }
        let options = self.options(name).await?;
        match options.connect(urls).await {
            Ok(client) => Ok(client),
            Err(e) => {
                let hint = connect_hint(&e);
                let e = anyhow::Error::new(e);
                let e = match hint {
                    Some(hint) => e.context(hint),
                    None => e,
                };
                Err(e.context(format!("cannot connect to NATS at {}", self.nats)))
            }
        }
    }
}

/// What to check for a connection error about credentials or TLS, if it is one.
fn connect_hint(error: &async_nats::ConnectError) -> Option<&'static str> {
    use std::fmt::Write as _;

    use async_nats::ConnectErrorKind;
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation => {
            return Some("authorization failed: check --user/--password, --token or --creds");
        }
        ConnectErrorKind::Authentication => {
            return Some("authentication failed: check the --creds file");
        }
        _ => {}
    }
    // rustls verdicts come wrapped in I/O errors; their text names them.
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        let _ = write!(text, "{e} {e:?} ");
        cause = e.source();
    }
    if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        Some("the server's TLS certificate is not trusted: give its CA with --tls-ca")
    } else if text.contains("CertificateRequired") {
        Some("the server requires a client certificate: give --tls-cert and --tls-key")
    } else if error.kind() == ConnectErrorKind::Tls {
        Some("TLS failed: check --tls-ca, --tls-cert/--tls-key and whether the server speaks TLS")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_on_commas() {
        let args = ConnectArgs {
            nats: " nats://a:1, nats://b:2,,".into(),
            user: None,
            password: None,
            token: None,
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_timeout: Duration::from_secs(1),
        };
        assert_eq!(args.urls(), ["nats://a:1", "nats://b:2"]);
        assert!(parse_duration("1.5s").is_ok());
        assert!(parse_duration("five").is_err());
    }
}
