//! Graceful shutdown of the real `opbox` binary: on SIGTERM running calls
//! finish, subscriptions end with `UNAVAILABLE`, and the process exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use opbox::client::{Client, ClientError};
use serde_json::json;

#[tokio::test]
async fn sigterm_lets_calls_finish_and_ends_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("opbox.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             [[tenants]]\nid = \"default\"\nanonymous = true\n\
             [[plugins]]\npath = {:?}\n",
            crate::util::data_dir(),
            opbox::bundled::built_plugin("fixture-slow"),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_opbox"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Should the test fail half-way, the host does not outlive it.
    let _reaper = Reaper(child.id());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut tcp, mut http) = (None, None);
    while tcp.is_none() || http.is_none() {
        let line = lines.next().expect("the server starts").unwrap();
        if let Some((_, addr)) = line.split_once("envelopes on tcp://") {
            tcp = Some(addr.trim().to_owned());
        }
        if let Some((_, addr)) = line.split_once("serving on http://") {
            http = Some(addr.trim().to_owned());
        }
    }
    let (tcp, http) = (tcp.unwrap(), http.unwrap());
    std::thread::spawn(move || lines.for_each(drop));

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

    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
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
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("the host exits")
    .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Kills the process with this id when dropped (a no-op once it exited).
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}
