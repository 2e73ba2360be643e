//! HTTP/2 beside HTTP/1.1 on the gateway's port: many calls on one
//! connection, subscriptions, callers who hang up, and the connection's
//! own bounds (streams at once, idle connections).

use std::time::Duration;

use reqwest::{StatusCode, Version};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{SseReader, TestHost};

/// A client speaking HTTP/2 with prior knowledge (`h2c`), one connection
/// per host.
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// A host that takes one connection at a time from a peer, so calls that
/// all succeed at once must share one connection.
async fn one_connection_host(configure: impl FnOnce(&mut opbox::HostConfig)) -> TestHost {
    TestHost::with_config(|config| {
        config.connections.max_connections_per_ip = 1;
        configure(config);
    })
    .await
}

async fn call(client: &reqwest::Client, host: &TestHost, operation: &str, input: Value) -> Value {
    let response = client
        .post(host.url("/call"))
        .json(&json!({"operation": operation, "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// `fixture-slow/sleep` for `ms` on a task of its own.
fn sleep(
    client: &reqwest::Client,
    host: &TestHost,
    ms: u64,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let (client, url) = (client.clone(), host.url("/call"));
    tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"operation": "fixture-slow/sleep", "input": {"ms": ms}}))
            .send()
            .await
            .unwrap()
    })
}

#[tokio::test]
async fn one_http2_connection_carries_many_calls_at_once() {
    let host = one_connection_host(|_| {}).await;
    let client = h2c();
    assert_eq!(
        call(&client, &host, "echo/echo", json!(1)).await["output"],
        1
    );
    // Eight guests sleeping at once, all on the one connection the host
    // lets this peer have.
    let calls: Vec<_> = (0..8).map(|_| sleep(&client, &host, 1500)).collect();
    assert_eq!(host.wait_for_live(8, Duration::from_secs(10)).await, 8);
    for call in calls {
        let response = call.await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["output"], 1500);
    }
}

#[tokio::test]
async fn a_subscription_streams_over_http2() {
    let host = TestHost::start().await;
    let response = h2c()
        .post(host.url("/subscribe"))
        .json(&json!({"operation": "ticker/count", "input": {"to": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let events = SseReader::of(response).collect().await;
    let data: Vec<Value> = events.iter().map(|e| e.json()).collect();
    assert_eq!(
        data[..3],
        [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
    );
    assert_eq!(events[3].event, "completed");
    // HTTP/1.1 is still spoken on the same port.
    let (status, body) = host.call("echo/echo", json!(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_http2_caller_who_cancels_stops_its_guest_and_keeps_its_connection() {
    let host = one_connection_host(|_| {}).await;
    let client = h2c();
    assert_eq!(
        call(&client, &host, "echo/echo", json!(1)).await["output"],
        1
    );
    let spin = tokio::spawn({
        let (client, url) = (client.clone(), host.url("/call"));
        async move {
            client
                .post(url)
                .json(&json!({"operation": "hostile-loop/spin", "deadline_ms": 60_000}))
                .send()
                .await
        }
    });
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    // Dropping the request resets its stream, not the connection.
    spin.abort();
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
    assert_eq!(
        call(&client, &host, "echo/echo", json!(2)).await["output"],
        2
    );
}

#[tokio::test]
async fn an_http2_connection_carries_at_most_max_http2_streams_calls() {
    let host = one_connection_host(|config| config.connections.max_http2_streams = 2).await;
    let client = h2c();
    // The client learns the host's settings on the first exchange.
    assert_eq!(
        call(&client, &host, "echo/echo", json!(1)).await["output"],
        1
    );
    let calls: Vec<_> = (0..4).map(|_| sleep(&client, &host, 400)).collect();
    // Two run while two wait their turn on the client, however long the
    // four take together.
    let mut most = 0;
    while calls.iter().any(|call| !call.is_finished()) {
        most = most.max(host.host.runtime().live_instances());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(most, 2);
    for call in calls {
        assert_eq!(call.await.unwrap().status(), StatusCode::OK);
    }
}

/// Reads from `socket` until the host closes it; what it sent meanwhile.
async fn until_closed(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut received));
    read.await.expect("the host closes the connection").ok();
    received
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[tokio::test]
async fn idle_and_silent_connections_are_closed_after_the_header_timeout() {
    let host = TestHost::with_config(|config| config.connections.header_timeout_ms = 300).await;
    // An HTTP/2 connection that opens no stream: a GOAWAY (frame type 7),
    // then the end.
    let mut idle = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    let received = until_closed(&mut idle).await;
    assert!(goaway(&received), "{received:?}");
    // A peer that stops halfway through the preface, before its protocol is
    // known, and one that says nothing at all.
    let mut partial = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    partial.write_all(&PREFACE[..10]).await.unwrap();
    until_closed(&mut partial).await;
    let mut silent = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    until_closed(&mut silent).await;
}

/// Whether the HTTP/2 frames in `bytes` include a GOAWAY.
fn goaway(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes[3] == 7 {
            return true;
        }
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    false
}

#[tokio::test]
async fn a_websocket_outlives_the_idle_timeout_of_http_connections() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let host = TestHost::with_config(|config| config.connections.header_timeout_ms = 300).await;
    let url = host.url("/call").replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // An upgraded connection is the WebSocket's, with its own idle timeout
    // (60 s): the HTTP connection's, at most twice 300 ms, must not end it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let call = json!({"type": "call.requested", "id": "1",
        "payload": {"operationId": "echo/echo", "input": 5}});
    socket.send(Message::text(call.to_string())).await.unwrap();
    let reply = loop {
        match socket.next().await.expect("a reply").unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(reply["type"], "call.responded", "{reply}");
    assert_eq!(reply["payload"]["output"], 5);
}

#[tokio::test]
async fn an_http2_subscriber_that_stops_reading_is_cut_off() {
    let host = TestHost::with_config(|config| config.connections.write_timeout_ms = 1_000).await;
    // A small window that is never released: the host can send about 64 KiB
    // of events, then the stream's window stays shut while the connection
    // (and its pings) lives on.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(1 << 20)
        .build()
        .unwrap();
    let response = client
        .post(host.url("/subscribe"))
        .json(&json!({
            "operation": "fixture-hog/big-stream",
            "input": {"bytes": 100, "count": 1_000_000}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    // Not a byte read: after `write_timeout` the subscription ends and its
    // instance goes, although the stream is still open.
    assert_eq!(host.wait_for_live(0, Duration::from_secs(20)).await, 0);
    drop(response);
}

/// Full duplex from a client nobody here wrote: `curl --http2` streaming
/// its stdin as typed (`-T .`) into `calc/repl`, each line answered on
/// curl's stdout before the next is written.
#[tokio::test]
async fn curl_over_http2_talks_to_an_interactive_operation_line_by_line() {
    let host = TestHost::start().await;
    let mut curl = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--http2-prior-knowledge",
            "-T",
            ".",
            "-X",
            "POST",
        ])
        .arg(host.url("/raw/calc/repl"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut stdin = curl.stdin.take().expect("curl's stdin");
    let mut stdout = curl.stdout.take().expect("curl's stdout");
    for (line, answer) in [
        ("1 + 2", "3\n"),
        ("6 * 7", "42\n"),
        ("(7 - 10) * 4", "-12\n"),
    ] {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("the line is written");
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(30), stdout.read(&mut buf));
            let n = read
                .await
                .unwrap_or_else(|_| panic!("no answer to `{line}` while curl waits"))
                .expect("curl's stdout reads");
            assert!(n > 0, "curl ended before answering `{line}`");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            answer,
            "the answer to `{line}`"
        );
    }
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), curl.wait_with_output())
        .await
        .expect("curl ends once its stdin has")
        .expect("its status");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
