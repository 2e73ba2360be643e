//! The client library over WebSocket and TCP, and the `opbox call` and
//! `opbox subscribe` commands against a running host.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use opbox::envelope::client::{Client, ClientError};
use serde_json::json;

use crate::util::TestHost;

#[tokio::test]
async fn calls_and_subscriptions_over_both_transports() {
    let host = TestHost::start().await;
    for url in [
        format!("ws://{}/call", host.addr),
        format!("tcp://{}", host.tcp_addr),
    ] {
        let client = Client::connect(&url, None).await.unwrap();
        let (a, b) = tokio::join!(
            client.call("echo/echo", json!({"x": 1})),
            client.call("textkit/stats", json!({"text": "two words"})),
        );
        assert_eq!(a.unwrap(), json!({"x": 1}), "{url}");
        assert_eq!(b.unwrap()["words"], 2, "{url}");
        let ticks: Vec<_> = client
            .subscribe("ticker/count", json!({"to": 3}))
            .await
            .unwrap()
            .map(|tick| tick.unwrap()["n"].as_u64().unwrap())
            .collect()
            .await;
        assert_eq!(ticks, [1, 2, 3], "{url}");
        match client.call("nope/nothing", json!(null)).await {
            Err(ClientError::Call(error)) => assert_eq!(error.code.as_str(), "NOT_FOUND"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn dropping_a_subscription_aborts_it_on_the_host() {
    let host = TestHost::start().await;
    let client = Client::connect(&format!("ws://{}/call", host.addr), None)
        .await
        .unwrap();
    let mut spinning = client
        .subscribe("hostile-loop/spin-stream", json!(null))
        .await
        .unwrap();
    assert_eq!(spinning.next().await.unwrap().unwrap(), json!(0));
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    drop(spinning);
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    // A call given up on is aborted too.
    let given_up = tokio::time::timeout(
        Duration::from_millis(200),
        client.call("hostile-loop/spin", json!(null)),
    );
    assert!(given_up.await.is_err(), "the spin never answers");
    // Well before the spin's own 5 s CPU limit would end it.
    assert_eq!(host.wait_for_live(0, Duration::from_secs(2)).await, 0);
    // The connection goes on serving.
    assert_eq!(client.call("echo/echo", json!(7)).await.unwrap(), json!(7));
}

fn opbox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opbox"))
}

#[tokio::test]
async fn opbox_call_and_subscribe_print_outputs() {
    let host = TestHost::start().await;
    let url = format!("tcp://{}", host.tcp_addr);
    let run = |args: &[&str]| {
        let mut command = opbox();
        command.args(args).args(["--url", &url]);
        async move {
            tokio::task::spawn_blocking(move || command.output().unwrap())
                .await
                .unwrap()
        }
    };
    let output = run(&["call", "echo/echo", r#"{"x": [1, 2]}"#]).await;
    assert!(output.status.success(), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({"x": [1, 2]}));
    assert!(
        String::from_utf8_lossy(&output.stdout).lines().count() > 1,
        "pretty by default"
    );

    let output = run(&["subscribe", "ticker/count", r#"{"to": 3}"#, "--raw"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"
    );

    let output = run(&["call", "nope/nothing"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: NOT_FOUND"), "{stderr}");
}

#[tokio::test]
async fn ctrl_c_on_opbox_subscribe_aborts_the_subscription() {
    let host = TestHost::start().await;
    let mut child = opbox()
        .args(["subscribe", "hostile-loop/spin-stream", "--raw", "--url"])
        .arg(format!("tcp://{}", host.tcp_addr))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().unwrap().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(first, "0");
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn the_wrong_kind_is_an_error_in_the_client_and_the_cli() {
    let host = TestHost::start().await;
    let url = format!("tcp://{}", host.tcp_addr);
    let client = Client::connect(&url, None).await.unwrap();
    let code = |result: Result<serde_json::Value, ClientError>| match result {
        Err(ClientError::Call(error)) => error.code.as_str().to_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code(client.call("ticker/count", json!({"to": 5})).await),
        "INVALID_OPERATION_TYPE"
    );
    let mut outputs = client.subscribe("echo/echo", json!(1)).await.unwrap();
    assert_eq!(
        code(outputs.next().await.unwrap()),
        "INVALID_OPERATION_TYPE"
    );
    assert!(outputs.next().await.is_none(), "the error ends it");
    // The CLI says so in one line and exits 1, rather than printing a
    // first tick or waiting for an end that never comes.
    for args in [
        ["call", "ticker/count", r#"{"to": 5}"#],
        ["subscribe", "echo/echo", "1"],
    ] {
        let mut command = opbox();
        command.args(args).args(["--url", &url]);
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || command.output().unwrap()),
        )
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not end"))
        .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        assert!(output.stdout.is_empty(), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: INVALID_OPERATION_TYPE"),
            "{stderr}"
        );
    }
}
