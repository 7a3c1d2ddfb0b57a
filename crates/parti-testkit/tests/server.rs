//! `NatsServer`: start, stop, kill, restart (data survives), drop, start-up failures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use parti_testkit::{NatsServer, TestkitError, find_nats_server, wait_until};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

async fn refuses(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

#[test]
fn the_binary_is_found() {
    let binary = find_nats_server().unwrap();
    assert!(binary.is_file(), "{}", binary.display());
}

#[tokio::test]
async fn starts_with_jetstream_on_loopback() {
    let server = NatsServer::start().await.unwrap();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    let js = jetstream::new(server.client().await.unwrap());
    let account = js.query_account().await.unwrap();
    assert_eq!(account.streams, 0);
    assert!(server.store_dir().is_dir());
    assert!(
        server.logs().contains("Server is ready"),
        "{}",
        server.logs()
    );
}

#[tokio::test]
async fn restart_keeps_kv_data_and_port() {
    let mut server = NatsServer::start().await.unwrap();
    let port = server.port();
    let js = jetstream::new(server.client().await.unwrap());
    let bucket = kv::Config {
        bucket: "kept".into(),
        ..Default::default()
    };
    let store = js.create_key_value(bucket).await.unwrap();
    store.put("greeting", "hello".into()).await.unwrap();

    server.restart().await.unwrap();

    assert_eq!(server.port(), port);
    let js = jetstream::new(server.client().await.unwrap());
    let store = js.get_key_value("kept").await.unwrap();
    assert_eq!(
        store.get("greeting").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
}

#[tokio::test]
async fn stop_is_graceful_and_the_port_refuses() {
    let mut server = NatsServer::start().await.unwrap();
    server.stop().await.unwrap();
    assert!(!server.is_running());
    assert!(refuses(server.addr()).await);
    assert!(
        server.logs().contains("Initiating Shutdown"),
        "{}",
        server.logs()
    );
    server.stop().await.unwrap(); // stopping a stopped server is a no-op
}

#[tokio::test]
async fn kill_is_abrupt_and_the_port_refuses() {
    let mut server = NatsServer::start().await.unwrap();
    server.kill().await.unwrap();
    assert!(!server.is_running());
    assert!(refuses(server.addr()).await);
    assert!(
        !server.logs().contains("Initiating Shutdown"),
        "{}",
        server.logs()
    );

    server.restart().await.unwrap();
    assert!(server.is_running());
    server.client().await.unwrap();
}

#[tokio::test]
async fn a_client_reconnects_across_a_restart() {
    let mut server = NatsServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    server.kill().await.unwrap();
    server.restart().await.unwrap();
    wait_until(DEADLINE, "the client to reconnect", || {
        let state = client.connection_state();
        async move { state == async_nats::connection::State::Connected }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn drop_kills_the_server_and_removes_its_files() {
    let server = NatsServer::start().await.unwrap();
    let (addr, dir) = (server.addr(), server.store_dir());
    drop(server);
    wait_until(DEADLINE, "the dropped server's port to refuse", || {
        refuses(addr)
    })
    .await
    .unwrap();
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[tokio::test]
async fn a_server_that_exits_at_start_is_an_error_with_its_log() {
    let err = NatsServer::builder()
        .arg("--no-such-flag")
        .start()
        .await
        .unwrap_err();
    match err {
        TestkitError::ServerExited { log_tail, .. } => {
            assert!(log_tail.contains("no-such-flag"), "{log_tail}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn a_missing_binary_is_an_error() {
    let err = NatsServer::builder()
        .binary("/nonexistent/nats-server")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, TestkitError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/nats-server"),
        "{err}"
    );
}
