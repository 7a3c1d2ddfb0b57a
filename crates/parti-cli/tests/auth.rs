//! `parti status` and `parti validate --live` against servers that require a user and password,
//! a token, TLS and mutual TLS: the right options work (exit 3, no cluster yet, or 0 with a
//! worker), wrong ones fail with exit 1 and a message that says what to check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Output, run};
use parti::{Config, Manager, Partition, State};
use parti_testkit::{NatsServer, ServerAuth, ServerTls};

/// Runs `parti --nats URL OPTIONS… ARGS…`.
async fn run_with(server: &NatsServer, options: &[&str], args: &[&str]) -> Output {
    let mut all: Vec<&str> = options.to_vec();
    all.extend_from_slice(args);
    run(&server.url(), None, &all).await
}

async fn server(auth: ServerAuth, tls: ServerTls) -> NatsServer {
    NatsServer::builder()
        .auth(auth)
        .tls(tls)
        .start()
        .await
        .expect("nats-server")
}

/// A worker with the default bucket names (those `parti status` reads without `--config`).
async fn start_worker(server: &NatsServer) -> Manager {
    let partitions = (0..4)
        .map(|i| Partition::new([format!("p{i}")], 10).unwrap())
        .collect::<Vec<_>>();
    let manager = Manager::builder(async_nats::jetstream::new(server.client().await.unwrap()))
        .config(Config::fast_for_tests())
        .source(parti::source::Static::new(partitions))
        .start()
        .await
        .unwrap();
    manager
        .wait_for_state(State::Stable, Duration::from_secs(20))
        .await
        .unwrap();
    manager
}

/// `validate --live` with `options` reaches the server (no bucket yet: exit 0), `status --json`
/// sees no cluster (exit 3), then a worker's (exit 0).
async fn status_works(server: &NatsServer, options: &[&str]) {
    let out = run_with(server, options, &["validate", "--live", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["live"]["reachable"], true, "{out:?}");

    let out = run_with(server, options, &["status", "--json"]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.json()["found"], false, "{out:?}");

    let manager = start_worker(server).await;
    let out = run_with(server, options, &["status", "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let json = out.json();
    assert_eq!(json["found"], true, "{json:#}");
    assert_eq!(json["cluster"]["workers"], 1, "{json:#}");
    manager.stop().await.unwrap();
}

/// `status` with `options` fails with exit 1 and a message containing every one of `needles`.
async fn status_fails(server: &NatsServer, options: &[&str], needles: &[&str]) {
    let out = run_with(
        server,
        options,
        &["status", "--json", "--connect-timeout", "2s"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    for needle in needles {
        assert!(out.stderr.contains(needle), "{needle:?} missing: {out:?}");
    }
}

const AUTH_HINT: &str = "authorization failed: check --user/--password, --token or --creds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_user_and_password() {
    let server = server(ServerAuth::user_password("app", "s3cret"), ServerTls::Off).await;
    status_works(&server, &["--user", "app", "--password", "s3cret"]).await;
    status_fails(
        &server,
        &["--user", "app", "--password", "wrong"],
        &["cannot connect to NATS", AUTH_HINT],
    )
    .await;
    status_fails(&server, &[], &[AUTH_HINT]).await;

    // `validate --live` reports the refusal as unreachable NATS (exit 4), with the same hint.
    let out = run_with(
        &server,
        &["--user", "app", "--password", "wrong"],
        &["validate", "--live", "--json"],
    )
    .await;
    assert_eq!(out.code, Some(4), "{out:?}");
    let error = out.json()["live"]["error"].as_str().unwrap().to_owned();
    assert!(error.contains(AUTH_HINT), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_a_token() {
    let server = server(ServerAuth::token("t0ken"), ServerTls::Off).await;
    status_works(&server, &["--token", "t0ken"]).await;
    status_fails(&server, &["--token", "nope"], &[AUTH_HINT]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_over_tls() {
    let server = server(ServerAuth::token("t0ken"), ServerTls::On).await;
    let ca = server.tls_files().unwrap().ca.to_str().unwrap().to_owned();
    status_works(&server, &["--token", "t0ken", "--tls-ca", &ca]).await;
    // Without the CA the server's certificate is not trusted.
    status_fails(
        &server,
        &["--token", "t0ken", "--tls-required"],
        &["not trusted: give its CA with --tls-ca"],
    )
    .await;
    // Trusted TLS, wrong token: still an authorization error.
    status_fails(&server, &["--token", "nope", "--tls-ca", &ca], &[AUTH_HINT]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_over_mutual_tls() {
    let server = server(ServerAuth::None, ServerTls::Mutual).await;
    let files = server.tls_files().unwrap();
    let (ca, cert, key) = (
        files.ca.to_str().unwrap().to_owned(),
        files.client_cert.to_str().unwrap().to_owned(),
        files.client_key.to_str().unwrap().to_owned(),
    );
    status_works(
        &server,
        &["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key],
    )
    .await;
    // Without a client certificate the server refuses the handshake, and the message says so.
    let out = run_with(
        &server,
        &["--tls-ca", &ca],
        &["status", "--json", "--connect-timeout", "2s"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot connect to NATS"), "{out:?}");
    assert!(
        out.stderr
            .contains("requires a client certificate: give --tls-cert and --tls-key"),
        "{out:?}"
    );
    // A client certificate flag without its key is a usage error, not a connection attempt.
    let out = run_with(
        &server,
        &["--tls-ca", &ca, "--tls-cert", &cert],
        &["status"],
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
}
