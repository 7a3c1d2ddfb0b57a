//! Authentication and TLS against a real nats-server: a Manager over a client that connected
//! with a user and password, a token, an NKey, TLS and mutual TLS reaches Stable and gets every
//! partition; wrong credentials fail fast with an authorization error, not a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use async_nats::ConnectErrorKind;
use common::{init_tracing, partitions};
use parti::{Config, Manager, State};
use parti_testkit::{NatsServer, ServerAuth, ServerTls, connect_options};

const PARTITIONS: usize = 12;

/// Starts a server with `auth` and `tls`, then one worker over `server.client()` (the kit's
/// options carry the credentials and the CA); asserts it is Stable and owns every partition.
async fn worker_gets_all_partitions(auth: ServerAuth, tls: ServerTls) -> NatsServer {
    init_tracing();
    let server = NatsServer::builder()
        .auth(auth)
        .tls(tls)
        .start()
        .await
        .expect("nats-server");
    let client = server.client().await.expect("connect with credentials");
    let manager = Manager::builder(async_nats::jetstream::new(client))
        .config(Config::fast_for_tests())
        .source(parti::source::Static::new(partitions(PARTITIONS)))
        .start()
        .await
        .expect("worker start");
    manager
        .wait_for_state(State::Stable, Duration::from_secs(20))
        .await
        .expect("Stable");
    let assignment = manager.assignment();
    assert_eq!(assignment.partitions.len(), PARTITIONS, "{assignment:?}");
    assert!(manager.is_leader());
    manager.stop().await.expect("stop");
    server
}

/// Connecting with `options` fails at once with an authorization violation.
async fn assert_rejected(server: &NatsServer, options: async_nats::ConnectOptions) {
    let started = std::time::Instant::now();
    let err = options
        .connect(server.url())
        .await
        .expect_err("the server must refuse these credentials");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "expected an authorization error, got {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "rejection took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_worker_is_stable_and_wrong_password_is_refused() {
    let server =
        worker_gets_all_partitions(ServerAuth::user_password("app", "s3cret"), ServerTls::Off)
            .await;
    assert_rejected(
        &server,
        connect_options().user_and_password("app".into(), "wrong".into()),
    )
    .await;
    assert_rejected(&server, connect_options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_worker_is_stable_and_wrong_token_is_refused() {
    let server = worker_gets_all_partitions(ServerAuth::token("t0ken"), ServerTls::Off).await;
    assert_rejected(&server, connect_options().token("nope".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_worker_is_stable_and_another_nkey_is_refused() {
    let server = worker_gets_all_partitions(ServerAuth::nkey(), ServerTls::Off).await;
    let ServerAuth::Nkey { seed: other, .. } = ServerAuth::nkey() else {
        unreachable!()
    };
    assert_rejected(&server, connect_options().nkey(other)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_worker_is_stable_and_an_untrusting_client_fails() {
    let server =
        worker_gets_all_partitions(ServerAuth::user_password("app", "s3cret"), ServerTls::On).await;
    let files = server.tls_files().expect("TLS files");
    // The CA alone, with the kit's options spelled out: what an application would do.
    let client = connect_options()
        .user_and_password("app".into(), "s3cret".into())
        .add_root_certificates(files.ca.clone())
        .require_tls(true)
        .connect(server.url())
        .await
        .expect("TLS connect");
    client.flush().await.expect("flush");
    // Without the CA the server certificate is not trusted.
    let err = connect_options()
        .user_and_password("app".into(), "s3cret".into())
        .require_tls(true)
        .connect(server.url())
        .await
        .expect_err("an unknown CA must be refused");
    // async-nats reports the rustls verdict as an I/O error.
    assert!(
        format!("{err:?}").contains("UnknownIssuer"),
        "expected an untrusted certificate, got {err:?}"
    );
    // Trusted TLS but a wrong password is still an authorization error.
    assert_rejected(
        &server,
        connect_options()
            .user_and_password("app".into(), "wrong".into())
            .add_root_certificates(files.ca.clone())
            .require_tls(true),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_worker_is_stable_and_a_client_without_certificate_fails() {
    let server = worker_gets_all_partitions(ServerAuth::None, ServerTls::Mutual).await;
    let files = server.tls_files().expect("TLS files");
    let result = connect_options()
        .add_root_certificates(files.ca.clone())
        .require_tls(true)
        .connect(server.url())
        .await;
    assert!(
        result.is_err(),
        "a client without a certificate must be refused"
    );
}
