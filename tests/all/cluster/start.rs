//! A host joining the cluster over a slow link to NATS: once it has
//! started, the other hosts reach its operations.

use std::time::Duration;

use opbox::CallRequest;
use opbox::cluster::ClusterConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{Nats, entry};
use crate::util::TestHost;

/// A TCP relay on a loopback port to the NATS server on `port`, holding
/// every byte its clients send for `delay` before passing it on, in order;
/// what the server sends passes at once.
async fn slow_relay(port: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let (held, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            tokio::spawn(async move {
                while let Some((read_at, bytes)) = due.recv().await {
                    tokio::time::sleep_until(read_at + delay).await;
                    if to_server.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                    if held.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    relay
}

#[tokio::test]
async fn a_host_behind_a_slow_link_is_reached_by_the_others_once_it_has_started() {
    let nats = Nats::start();
    let entry = entry(&nats, |_| {}).await;
    // What the holder sends NATS, its subscriptions too, arrives 300 ms
    // after it is written.
    let relay = slow_relay(nats.port, Duration::from_millis(300)).await;
    let holder = TestHost::with_config(|config| {
        config.cluster =
            Some(ClusterConfig::new(format!("nats://127.0.0.1:{relay}")).with_key(super::KEY));
    })
    .await;

    // At once, the entry host's call finds the holder.
    let output = entry
        .host
        .dispatcher()
        .call(CallRequest::new("echo/echo", json!({"x": 1})))
        .await
        .unwrap();
    assert_eq!(output, json!({"x": 1}));
    drop(holder);
}
