//! `NatsServer` with authentication and TLS: the kit's client connects, others are refused,
//! and a restart keeps the configuration, the certificates and the data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream::{self, kv};
use parti_testkit::{NatsServer, ServerAuth, ServerTls, connect_options};

#[tokio::test]
async fn a_tls_server_with_a_password_survives_a_restart() {
    let mut server = NatsServer::builder()
        .auth(ServerAuth::user_password("app", "s3cret"))
        .tls(ServerTls::Mutual)
        .start()
        .await
        .unwrap();
    assert_eq!(server.auth(), &ServerAuth::user_password("app", "s3cret"));
    let files = server.tls_files().unwrap().clone();
    for path in [
        &files.ca,
        &files.server_cert,
        &files.server_key,
        &files.client_cert,
        &files.client_key,
    ] {
        assert!(path.is_file(), "{}", path.display());
    }
    let js = jetstream::new(server.client().await.unwrap());
    let store = js
        .create_key_value(kv::Config {
            bucket: "auth".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    store.put("k", "v".into()).await.unwrap();

    // Plain text is refused by a server that requires TLS.
    assert!(connect_options().connect(server.url()).await.is_err());

    server.restart().await.unwrap();
    assert_eq!(server.tls_files(), Some(&files));
    let js = jetstream::new(server.client().await.unwrap());
    let store = js.get_key_value("auth").await.unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap(), "v");
}

#[tokio::test]
async fn default_servers_need_no_credentials() {
    let server = NatsServer::start().await.unwrap();
    assert_eq!(server.auth(), &ServerAuth::None);
    assert!(server.tls_files().is_none());
    connect_options().connect(server.url()).await.unwrap();
}
