//! `FaultProxy`: pass, blackhole, reset and delay, seen by async-nats clients and raw TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, Event};
use futures::StreamExt;
use parti_testkit::{FaultProxy, LinkMode, NatsServer, connect_options, wait_until};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const DEADLINE: Duration = Duration::from_secs(10);

/// A client through the proxy that pings every 100 ms (so a stall shows within ~300 ms) and
/// reports its connection events.
async fn client_via(proxy: &FaultProxy) -> (Client, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = connect_options()
        .ping_interval(Duration::from_millis(100))
        .ignore_discovered_servers()
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .connect(proxy.url())
        .await
        .unwrap();
    (client, rx)
}

async fn wait_for_state(client: &Client, want: State, what: &str) {
    wait_until(DEADLINE, what, || {
        let reached = client.connection_state() == want;
        async move { reached }
    })
    .await
    .unwrap();
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>, want: &Event) {
    timeout(DEADLINE, async {
        while let Some(event) = events.recv().await {
            if event.to_string() == want.to_string() {
                return;
            }
        }
        panic!("event stream ended before {want}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {want} event"));
}

/// Reads the first bytes a fresh NATS connection gets: the server's INFO line.
async fn read_greeting(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// True once the peer has closed or reset the connection.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn pass_forwards_both_ways() {
    let server = NatsServer::start().await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    assert_eq!(proxy.mode(), LinkMode::Pass);
    let (client, _events) = client_via(&proxy).await;
    let mut sub = client.subscribe("echo").await.unwrap();
    client.publish("echo", "ping".into()).await.unwrap();
    let msg = timeout(DEADLINE, sub.next()).await.unwrap().unwrap();
    assert_eq!(&msg.payload[..], b"ping");
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn blackhole_disconnects_a_client_and_pass_lets_it_reconnect() {
    let server = NatsServer::start().await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let (client, mut events) = client_via(&proxy).await;
    assert_eq!(client.connection_state(), State::Connected);

    proxy.blackhole();
    wait_for_state(
        &client,
        State::Disconnected,
        "the client to notice the stall",
    )
    .await;
    next_event(&mut events, &Event::Disconnected).await;

    proxy.pass();
    wait_for_state(&client, State::Connected, "the client to reconnect").await;
    next_event(&mut events, &Event::Connected).await;
    let mut sub = client.subscribe("after").await.unwrap();
    client.publish("after", "ok".into()).await.unwrap();
    let msg = timeout(DEADLINE, sub.next()).await.unwrap().unwrap();
    assert_eq!(&msg.payload[..], b"ok");
}

#[tokio::test]
async fn blackhole_holds_bytes_back_until_pass() {
    let server = NatsServer::start().await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    proxy.blackhole();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    // Nothing arrives while stalled (bounded check), and nothing is lost either.
    let stalled = timeout(Duration::from_millis(300), read_greeting(&mut stream)).await;
    assert!(stalled.is_err(), "bytes crossed a blackholed link");
    proxy.pass();
    let greeting = timeout(DEADLINE, read_greeting(&mut stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, "INFO ");
}

#[tokio::test]
async fn reset_drops_current_connections_and_refuses_new_ones() {
    let server = NatsServer::start().await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut raw = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_greeting(&mut raw).await.unwrap(), "INFO ");
    // The default ping interval is a minute: noticing the reset must not rely on pings.
    let client = connect_options()
        .ignore_discovered_servers()
        .connect(proxy.url())
        .await
        .unwrap();
    wait_until(DEADLINE, "two proxied connections", || {
        let n = proxy.connections();
        async move { n == 2 }
    })
    .await
    .unwrap();

    proxy.reset();
    assert!(timeout(DEADLINE, closed(&mut raw)).await.unwrap());
    wait_for_state(&client, State::Disconnected, "the client to see the reset").await;
    let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(timeout(DEADLINE, closed(&mut late)).await.unwrap());

    proxy.pass();
    wait_for_state(&client, State::Connected, "the client to reconnect").await;
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_greeting(&mut fresh).await.unwrap(), "INFO ");
}

#[tokio::test]
async fn delay_adds_latency_to_each_direction() {
    let server = NatsServer::start().await.unwrap();
    let responder = server.client().await.unwrap();
    let mut requests = responder.subscribe("rtt").await.unwrap();
    responder.flush().await.unwrap();
    let replier = responder.clone();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                let _ = replier.publish(reply, msg.payload).await;
            }
        }
    });
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    // Default pings: 100 ms pings would time out against a 300 ms round trip.
    let client = connect_options()
        .ignore_discovered_servers()
        .connect(proxy.url())
        .await
        .unwrap();
    client.request("rtt", "warm-up".into()).await.unwrap();

    let latency = Duration::from_millis(150);
    proxy.delay(latency);
    assert_eq!(proxy.mode(), LinkMode::Delay(latency));
    let start = Instant::now();
    let reply = client.request("rtt", "slow".into()).await.unwrap();
    let round_trip = start.elapsed();
    assert_eq!(&reply.payload[..], b"slow");
    // The request and its reply each cross the proxy once.
    assert!(
        round_trip >= 2 * latency,
        "round trip {round_trip:?} under {latency:?} delay"
    );

    proxy.pass();
    client.request("rtt", "fast again".into()).await.unwrap();
}
