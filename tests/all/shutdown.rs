//! Graceful shutdown of the real `opbox` binary: on SIGTERM running calls
//! finish, subscriptions end with `UNAVAILABLE`, and the process exits 0.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use opbox::envelope::client::{Client, ClientError};
use serde_json::json;

#[tokio::test]
async fn sigterm_lets_calls_finish_and_ends_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_dir = {:?}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [[plugins]]\npath = {:?}\n",
        crate::util::data_dir(),
        crate::util::cache_dir(),
        opbox::bundled::built_plugin("fixture-slow"),
    );
    // Killed when dropped, should the test fail half-way.
    let server = crate::util::Server::start_in(dir.path(), &config);
    let tcp = server.tcp.clone().unwrap();
    let http = server.url.trim_start_matches("http://").to_owned();

    let client = Client::connect(&format!("tcp://{tcp}"), None)
        .await
        .unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call("fixture-slow/sleep", json!({"ms": 1500})).await }
    });
    let mut ticks = client
        .subscribe("ticker/count", json!({"to": 1_000_000, "every_ms": 20}))
        .await
        .unwrap();
    // The sleep was sent first on this connection, so it is running by now.
    ticks.next().await.unwrap().unwrap();
    // The same over a WebSocket.
    let ws = Client::connect(&format!("ws://{http}/call"), None)
        .await
        .unwrap();
    let ws_slow = tokio::spawn({
        let ws = ws.clone();
        async move { ws.call("fixture-slow/sleep", json!({"ms": 1500})).await }
    });
    let mut ws_ticks = ws
        .subscribe("ticker/count", json!({"to": 1_000_000, "every_ms": 20}))
        .await
        .unwrap();
    ws_ticks.next().await.unwrap().unwrap();
    // Both sleeps are running (calls on one connection start in no set
    // order, so the ticks alone do not tell).
    let probe = reqwest::Client::new();
    let both_running = async {
        loop {
            let info = server
                .call(&probe, "services/plugin", json!({"name": "fixture-slow"}))
                .await;
            if info["output"]["live_instances"] == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), both_running)
        .await
        .expect("both sleeps run at once within their 1.5 s");

    let signalled = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());

    for ticks in [&mut ticks, &mut ws_ticks] {
        let end = loop {
            match ticks.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        };
        match end {
            Some(Err(ClientError::Call(error))) => assert_eq!(error.code.as_str(), "UNAVAILABLE"),
            other => panic!("the subscription ended with {other:?}"),
        }
    }
    for slow in [slow, ws_slow] {
        assert_eq!(
            slow.await.unwrap().unwrap(),
            json!(1500),
            "the running call finished"
        );
    }
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || server.wait().0),
    )
    .await
    .expect("the host exits")
    .unwrap();
    assert!(status.success(), "{status:?}");
}
