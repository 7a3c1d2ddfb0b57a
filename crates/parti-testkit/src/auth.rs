//! Authentication and TLS for a test [`NatsServer`](crate::NatsServer): user/password, token or
//! NKey clients, and a certificate authority generated per server for TLS and mutual TLS.

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::TestkitError;

/// How clients must authenticate to a [`NatsServer`](crate::NatsServer); set it with
/// [`NatsServerBuilder::auth`](crate::NatsServerBuilder::auth).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), parti_testkit::TestkitError> {
/// use parti_testkit::{NatsServer, ServerAuth};
///
/// let server = NatsServer::builder()
///     .auth(ServerAuth::user_password("app", "s3cret"))
///     .start()
///     .await?;
/// // `client()` connects with the right credentials.
/// let client = server.client().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerAuth {
    /// Anyone may connect (the default).
    #[default]
    None,
    /// One user with a password.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// A shared token.
    Token(String),
    /// One user identified by an NKey (the client signs the server's nonce with the seed).
    Nkey {
        /// The user's public key (`U…`), configured on the server.
        public: String,
        /// The user's seed (`SU…`), given to clients.
        seed: String,
    },
}

impl ServerAuth {
    /// One user with a password.
    ///
    /// ```
    /// let auth = parti_testkit::ServerAuth::user_password("app", "s3cret");
    /// ```
    pub fn user_password(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self::UserPassword {
            user: user.into(),
            password: password.into(),
        }
    }

    /// A shared token.
    ///
    /// ```
    /// let auth = parti_testkit::ServerAuth::token("t0ken");
    /// ```
    pub fn token(token: impl Into<String>) -> Self {
        Self::Token(token.into())
    }

    /// One user with a freshly generated NKey pair.
    ///
    /// ```
    /// let auth = parti_testkit::ServerAuth::nkey();
    /// assert!(matches!(auth, parti_testkit::ServerAuth::Nkey { .. }));
    /// ```
    pub fn nkey() -> Self {
        let pair = nkeys::KeyPair::new_user();
        Self::Nkey {
            public: pair.public_key(),
            // A freshly generated pair always has its seed.
            seed: pair.seed().unwrap_or_default(),
        }
    }

    /// Adds these credentials to client options (nothing for [`ServerAuth::None`]).
    ///
    /// ```
    /// use parti_testkit::{ServerAuth, connect_options};
    ///
    /// let options = ServerAuth::token("t0ken").apply(connect_options());
    /// ```
    pub fn apply(&self, options: ConnectOptions) -> ConnectOptions {
        match self {
            Self::None => options,
            Self::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Self::Token(token) => options.token(token.clone()),
            Self::Nkey { seed, .. } => options.nkey(seed.clone()),
        }
    }

    /// The `authorization` block of the server configuration, if any.
    pub(crate) fn config(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::UserPassword { user, password } => Some(format!(
                "authorization {{\n  user: {}\n  password: {}\n}}\n",
                quote(user),
                quote(password)
            )),
            Self::Token(token) => {
                Some(format!("authorization {{\n  token: {}\n}}\n", quote(token)))
            }
            Self::Nkey { public, .. } => Some(format!(
                "authorization {{\n  users: [ {{ nkey: {} }} ]\n}}\n",
                quote(public)
            )),
        }
    }
}

/// Whether a [`NatsServer`](crate::NatsServer) speaks TLS; set it with
/// [`NatsServerBuilder::tls`](crate::NatsServerBuilder::tls).
///
/// With TLS on, the kit generates a CA and a server certificate for `127.0.0.1` and `localhost`
/// (and, for mutual TLS, a client certificate) in the server's temporary directory; see
/// [`NatsServer::tls_files`](crate::NatsServer::tls_files).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), parti_testkit::TestkitError> {
/// use parti_testkit::{NatsServer, ServerTls};
///
/// let server = NatsServer::builder().tls(ServerTls::Mutual).start().await?;
/// let files = server.tls_files().expect("TLS is on");
/// println!("CA at {}", files.ca.display());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTls {
    /// Plain TCP (the default).
    #[default]
    Off,
    /// TLS required; clients verify the server against the generated CA.
    On,
    /// TLS required and clients must present a certificate signed by the generated CA.
    Mutual,
}

/// The PEM files generated for a TLS [`NatsServer`](crate::NatsServer), all in its temporary
/// directory.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use parti_testkit::{NatsServer, ServerTls};
///
/// let server = NatsServer::builder().tls(ServerTls::Mutual).start().await?;
/// let files = server.tls_files().expect("TLS is on");
/// let client = parti_testkit::connect_options()
///     .add_root_certificates(files.ca.clone())
///     .add_client_certificate(files.client_cert.clone(), files.client_key.clone())
///     .require_tls(true)
///     .connect(server.url())
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// The CA certificate that signed the server and client certificates.
    pub ca: PathBuf,
    /// The server certificate (for `127.0.0.1` and `localhost`).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA, for mutual TLS.
    pub client_cert: PathBuf,
    /// The client certificate's private key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates a CA, a server certificate and a client certificate into `dir`.
    pub(crate) fn generate(dir: &Path) -> Result<Self, TestkitError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| TestkitError::io("cannot create the TLS directory", e))?;
        let files = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server-cert.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client-cert.pem"),
            client_key: dir.join("client-key.pem"),
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "parti-testkit CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(cert_error)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error)?;
        let issuer = Issuer::new(ca_params, ca_key);
        write(&files.ca, &ca_cert.pem())?;

        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .map_err(cert_error)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().map_err(cert_error)?;
            let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
            Ok::<_, TestkitError>((cert.pem(), key.serialize_pem()))
        };
        let (cert, key) = leaf("parti-testkit server", ExtendedKeyUsagePurpose::ServerAuth)?;
        write(&files.server_cert, &cert)?;
        write(&files.server_key, &key)?;
        let (cert, key) = leaf("parti-testkit client", ExtendedKeyUsagePurpose::ClientAuth)?;
        write(&files.client_cert, &cert)?;
        write(&files.client_key, &key)?;
        Ok(files)
    }

    /// The `tls` block of the server configuration.
    pub(crate) fn config(&self, mutual: bool) -> String {
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {mutual}\n  timeout: 5\n}}\n",
            quote(&self.server_cert.to_string_lossy()),
            quote(&self.server_key.to_string_lossy()),
            quote(&self.ca.to_string_lossy()),
        )
    }

    /// Adds the CA (and for mutual TLS the client certificate) to client options, requiring TLS.
    pub(crate) fn apply(&self, options: ConnectOptions, mutual: bool) -> ConnectOptions {
        let options = options
            .add_root_certificates(self.ca.clone())
            .require_tls(true);
        if mutual {
            options.add_client_certificate(self.client_cert.clone(), self.client_key.clone())
        } else {
            options
        }
    }
}

/// A double-quoted string for the server configuration (JSON escaping is valid there).
fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text)
        .map_err(|e| TestkitError::io(format!("cannot write {}", path.display()), e))
}

fn cert_error(e: rcgen::Error) -> TestkitError {
    TestkitError::io(
        "cannot generate a test certificate",
        std::io::Error::other(e.to_string()),
    )
}
