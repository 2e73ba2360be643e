//! What a peer on the network can make the host hold: connections,
//! half-sent requests and frames, replies it never reads, pings.
//!
//! Every test here is an attack that used to hold memory or a connection
//! without bound. Memory is measured on the real `opbox` binary, whose
//! resident set is its own.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use opbox::tenants::{TokenConfig, hash_token_hex};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::util::{Frames, Server, TestHost};

const TOKEN: &str = "opbox_test_connections";

/// The demo tenant, with one token besides anonymous callers.
fn with_token(config: &mut opbox::HostConfig) {
    config.tenants[0].tokens.push(TokenConfig {
        id: "tester".into(),
        sha256: hash_token_hex(TOKEN),
        scopes: Vec::new(),
    });
}

fn is(envelope: &Value, kind: &str, id: &str) -> bool {
    envelope["type"] == kind && envelope["id"] == id
}

/// Reads a WebSocket to its end: the last envelope the host sent, and the
/// code of its close frame.
async fn last_words<S>(socket: &mut S) -> (Option<Value>, Option<u16>)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let (mut envelope, mut close_code) = (None, None);
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Text(text) => envelope = Some(serde_json::from_str::<Value>(&text).unwrap()),
            Message::Close(frame) => close_code = frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    }
    (envelope, close_code)
}

/// Reads until the host closes the connection; fails after 10 s.
async fn closed_by_host(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = stream.read_to_end(&mut seen);
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(_) => seen,
        Err(_) => panic!("the host kept the connection open"),
    }
}

#[tokio::test]
async fn a_peer_must_authenticate_before_sending_large_frames() {
    let host = TestHost::with_config(with_token).await;
    // Announcing a long frame before authenticating is refused at once,
    // before any of it is sent (or held).
    let mut anonymous = Frames::connect(&host).await;
    anonymous
        .stream()
        .write_all(&(16u32 << 20).to_be_bytes())
        .await
        .unwrap();
    let error = anonymous.next().await.unwrap();
    assert_eq!(error["payload"]["code"], "INVALID_FRAME", "{error}");
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("65536 bytes"),
        "{error}"
    );
    assert_eq!(anonymous.next().await, None);

    // Once an envelope authenticates the connection, frames up to
    // max_frame_bytes are taken.
    let mut tcp = Frames::connect(&host).await;
    let payload = json!({"operationId": "echo/echo", "input": 1, "auth_token": TOKEN});
    tcp.send("call.requested", "auth", payload).await;
    assert!(is(&tcp.next().await.unwrap(), "call.responded", "auth"));
    let big = "x".repeat(200 << 10);
    tcp.call("big", "echo/echo", json!(big)).await;
    let reply = tcp.next().await.unwrap();
    assert_eq!(reply["payload"]["output"], json!(big));
}

#[tokio::test]
async fn websockets_answer_in_text_take_small_messages_until_authenticated_and_replies_of_any_size()
{
    let host = TestHost::with_config(with_token).await;
    let url = host.url("/call").replace("http://", "ws://");
    let big = "y".repeat(200 << 10);
    let call = |id: &str| {
        let envelope = json!({"type": "call.requested", "id": id,
            "payload": {"operationId": "echo/echo", "input": big}});
        Message::text(envelope.to_string())
    };

    let (mut anonymous, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    anonymous.send(call("a")).await.unwrap();
    // Refused as too long, and the socket is closed with 1009 (message too
    // big).
    let (refused, close_code) = last_words(&mut anonymous).await;
    let refused = refused.expect("an INVALID_FRAME envelope, as text");
    assert_eq!(refused["payload"]["code"], "INVALID_FRAME", "{refused}");
    assert_eq!(close_code, Some(1009));

    // With a token on the upgrade, the same message goes through, and the
    // reply of 200 KiB (sent in fragments) arrives whole, as text, so a
    // browser can `JSON.parse` it.
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(call("b")).await.unwrap();
    let reply = loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            Message::Binary(_) => panic!("replies are text"),
            _ => continue,
        }
    };
    assert!(is(&reply, "call.responded", "b"), "{}", reply["type"]);
    assert_eq!(reply["payload"]["output"], json!(big));
}

#[tokio::test]
async fn half_sent_frames_and_idle_connections_are_closed() {
    let host = TestHost::with_config(|config| {
        config.envelope.frame_timeout_ms = 300;
        config.envelope.idle_timeout_ms = 500;
    })
    .await;
    // A frame begun and not finished.
    let mut stalled = Frames::connect(&host).await;
    stalled
        .stream()
        .write_all(&[0, 0, 0, 100, b'{'])
        .await
        .unwrap();
    let error = stalled.next().await.unwrap();
    assert_eq!(error["payload"]["code"], "INVALID_FRAME", "{error}");
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("not finished within 300 ms")
    );
    assert_eq!(stalled.next().await, None);

    // A connection that says nothing.
    let mut idle = Frames::connect(&host).await;
    let error = idle.next().await.unwrap();
    assert_eq!(error["payload"]["code"], "TIMEOUT", "{error}");
    assert_eq!(error["payload"]["details"]["limit"], "idle_timeout_ms");
    assert_eq!(idle.next().await, None);

    // A connection waiting on an open subscription is not idle.
    let mut busy = Frames::connect(&host).await;
    busy.call("t", "ticker/count", json!({"to": 2, "every_ms": 1500}))
        .await;
    for n in 1..=2 {
        let item = busy.next().await.unwrap();
        assert_eq!(item["payload"]["output"]["n"], n, "{item}");
    }
    assert!(is(&busy.next().await.unwrap(), "call.completed", "t"));
}

#[tokio::test]
async fn a_websocket_message_begun_must_be_finished_in_time() {
    let host = TestHost::with_config(|config| config.envelope.frame_timeout_ms = 300).await;
    let url = host.url("/call").replace("http://", "ws://");
    let stream = TcpStream::connect(host.addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(&url, stream).await.unwrap();
    // A call open on the connection, so it is not idle …
    let call = json!({"type": "call.requested", "id": "t",
        "payload": {"operationId": "ticker/count", "input": {"to": 2, "every_ms": 5000}}});
    socket.send(Message::text(call.to_string())).await.unwrap();
    // … and a binary message of 100 bytes of which 10 are sent (masked with
    // a zero key).
    let mut partial = vec![0x82, 0x80 | 100, 0, 0, 0, 0];
    partial.extend_from_slice(&[b' '; 10]);
    socket.get_mut().write_all(&partial).await.unwrap();
    let error = loop {
        if let Message::Text(text) = socket.next().await.unwrap().unwrap() {
            let envelope: Value = serde_json::from_str(&text).unwrap();
            if envelope["id"] == "" {
                break envelope;
            }
        }
    };
    assert!(is(&error, "call.error", ""), "{error}");
    assert_eq!(error["payload"]["code"], "INVALID_FRAME");
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("not finished within 300 ms"),
        "{error}"
    );
}

#[tokio::test]
async fn a_websocket_sending_pings_by_the_hundred_is_closed() {
    let host = TestHost::start().await;
    let url = host.url("/call").replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    for _ in 0..40 {
        socket.send(Message::Ping(vec![1].into())).await.unwrap();
    }
    let (refused, close_code) = last_words(&mut socket).await;
    let refused = refused.expect("an INVALID_FRAME envelope");
    assert_eq!(refused["payload"]["code"], "INVALID_FRAME", "{refused}");
    assert!(
        refused["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("pings")
    );
    assert_eq!(close_code, Some(1008));
}

#[tokio::test]
async fn connections_are_capped_per_address_and_in_all() {
    let host = TestHost::with_config(|config| {
        config.connections.max_connections = 4;
        config.connections.max_connections_per_ip = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = Frames::connect(&host).await;
        tcp.call("e", "echo/echo", json!(1)).await;
        assert!(is(&tcp.next().await.unwrap(), "call.responded", "e"));
        held.push(tcp);
    }
    // A fourth from the same address, on either listener.
    let mut fourth = Frames::connect(&host).await;
    let refusal = fourth.next().await.unwrap();
    assert_eq!(
        refusal["payload"]["code"], "RESOURCE_EXHAUSTED",
        "{refusal}"
    );
    assert_eq!(
        refusal["payload"]["details"]["limit"],
        "max_connections_per_ip"
    );
    let mut http = TcpStream::connect(host.addr).await.unwrap();
    let answer = String::from_utf8(closed_by_host(&mut http).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(answer.contains("max_connections_per_ip"), "{answer}");

    // From another loopback address, the total cap still holds.
    let other = "127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(other).unwrap();
    let mut from_other = Frames::new(socket.connect(host.tcp_addr).await.unwrap());
    from_other.call("e", "echo/echo", json!(1)).await;
    assert!(is(&from_other.next().await.unwrap(), "call.responded", "e"));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(other).unwrap();
    let mut beyond = socket.connect(host.addr).await.unwrap();
    let answer = String::from_utf8(closed_by_host(&mut beyond).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("max_connections"), "{answer}");

    // Places come back when connections close.
    drop(held);
    drop(from_other);
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.host.open_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = host.call("echo/echo", json!(1)).await;
    assert_eq!(status, 200);
}

/// `GET /healthz` on a connection of its own from `from`, closed after the
/// answer; the answer's status line.
async fn health_from(host: &TestHost, from: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut http = socket.connect(host.addr).await.unwrap();
    // A refused peer may be gone before it reads the request.
    let _ = http
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let answer = String::from_utf8(closed_by_host(&mut http).await).unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
        + if answer.contains("new_connections_per_ip_per_second") {
            " (rate)"
        } else {
            ""
        }
}

#[tokio::test]
async fn an_address_that_churns_connections_is_held_to_its_rate_and_others_are_not() {
    let host = TestHost::with_config(|config| {
        config.connections.new_connections_per_ip_per_second = 5;
    })
    .await;
    // One connection after another, each closed at once: a second's worth
    // is answered, then the address is refused while its rate is spent.
    let mut answered = 0;
    let refused = loop {
        let status = health_from(&host, "127.0.0.1").await;
        if status.starts_with("HTTP/1.1 200 ") {
            answered += 1;
            assert!(answered < 100, "never refused");
        } else {
            break status;
        }
    };
    assert!(answered >= 5, "{answered}");
    assert_eq!(refused, "HTTP/1.1 429 Too Many Requests (rate)");
    // Another address has a rate of its own.
    assert!(
        health_from(&host, "127.0.0.2")
            .await
            .starts_with("HTTP/1.1 200 ")
    );
}

#[tokio::test]
async fn slow_request_headers_and_bodies_are_cut_off() {
    let host = TestHost::with_config(|config| {
        config.connections.header_timeout_ms = 300;
        config.connections.body_timeout_ms = 300;
    })
    .await;
    // Headers begun and never finished: the connection is closed.
    let mut headers = TcpStream::connect(host.addr).await.unwrap();
    headers
        .write_all(b"POST /call HTTP/1.1\r\nhost: opbox\r\n")
        .await
        .unwrap();
    closed_by_host(&mut headers).await;

    // A body announced and never sent: 408, in the protocol's shape.
    let mut body = TcpStream::connect(host.addr).await.unwrap();
    body.write_all(b"POST /call HTTP/1.1\r\nhost: opbox\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let answer = String::from_utf8(closed_by_host(&mut body).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("body_timeout_ms"), "{answer}");

    // A keep-alive connection left idle is closed too.
    let answer = left_idle(&host).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

/// Asks for `/healthz` over HTTP/1.1 and leaves the connection open: what
/// the host sent on it before it closed it.
async fn left_idle(host: &TestHost) -> String {
    let mut idle = TcpStream::connect(host.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: opbox\r\n\r\n")
        .await
        .unwrap();
    String::from_utf8(closed_by_host(&mut idle).await).unwrap()
}

#[tokio::test]
async fn http1_answers_say_how_long_an_idle_connection_stays_open() {
    let host = TestHost::with_config(|config| config.connections.header_timeout_ms = 2_000).await;
    // A client that reads `Keep-Alive` retires its pooled connection before
    // the host closes it, instead of sending a request into the closing one.
    let answer = left_idle(&host).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("keep-alive: timeout=2\r\n"), "{answer}");

    // HTTP/2 has no connection headers: its idle close is a GOAWAY.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(format!("http://{}/healthz", host.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert!(response.headers().get("keep-alive").is_none());
}

#[tokio::test]
async fn a_reply_longer_than_a_frame_fails_its_call_not_the_connection() {
    let host = TestHost::with_config(|config| {
        config.plugin_limits.output_bytes = Some(32 << 20);
        config.envelope.max_frame_bytes = 1 << 20;
    })
    .await;
    let mut tcp = Frames::connect(&host).await;
    tcp.call("sub", "ticker/count", json!({"to": 3, "every_ms": 300}))
        .await;
    assert!(is(&tcp.next().await.unwrap(), "call.responded", "sub"));
    tcp.call("big", "hostile-memory/big-output", json!(2)).await;
    let error = tcp.next().await.unwrap();
    assert!(is(&error, "call.error", "big"), "{error}");
    assert_eq!(error["payload"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(error["payload"]["details"]["limit"], "max_frame_bytes");
    // The subscription on the same connection goes on to its end.
    let mut rest = Vec::new();
    while rest.len() < 3 {
        rest.push(tcp.next().await.unwrap());
    }
    assert!(rest[..2].iter().all(|e| is(e, "call.responded", "sub")));
    assert!(is(&rest[2], "call.completed", "sub"), "{}", rest[2]);
}

/// A config for the real binary: anonymous callers, TCP on, and `extra`.
fn server_config(extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n{extra}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [[plugins]]\npath = {:?}\n",
        opbox::bundled::built_plugin("fixture-hog")
    )
}

/// How much `server` grows while `attack` runs, in MiB.
async fn growth_mib(server: &Server, attack: impl std::future::Future<Output = ()>) -> f64 {
    let before = server.rss_kib();
    attack.await;
    (server.rss_kib().saturating_sub(before)) as f64 / 1024.0
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_holds_little_and_is_cut_off() {
    let server = Server::start(&server_config(
        "[connections]\nwrite_timeout_ms = 8000\n[plugin_limits]\noutput_bytes = 4194304",
    ));
    let tcp_addr = server.tcp.clone().unwrap();
    let mut tcp = Frames::at(&tcp_addr).await;
    let grown = growth_mib(&server, async {
        // 3 MiB items, as fast as the guest can make them; never read.
        tcp.call(
            "s",
            "fixture-hog/big-stream",
            json!({"bytes": 3 << 20, "count": 1000}),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(6)).await;
    })
    .await;
    // Before: up to 256 queued frames of 3 MiB (768 MiB; about 95 MiB in
    // these 6 s on a debug build). Now: the outbox, an item or two in hand,
    // and the guest's own memory: 25-30 MiB.
    assert!(grown < 48.0, "the host grew by {grown:.0} MiB");
    // Not reading for the write timeout ends the connection.
    let closed = async {
        let mut sink = vec![0u8; 1 << 20];
        tokio::time::sleep(Duration::from_secs(4)).await;
        while tcp.stream().read(&mut sink).await.unwrap_or(0) > 0 {}
    };
    tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("the host closes a connection whose peer stops reading");
}

#[tokio::test]
async fn a_websocket_flooding_pings_without_reading_holds_little() {
    let server = Server::start(&server_config(""));
    let url = format!("{}/call", server.url.replace("http://", "ws://"));
    let addr = server.url.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(&url, stream).await.unwrap();
    // Masked ping frames of 125 bytes (a zero mask leaves the payload as
    // is), written as fast as the socket takes them; nothing is ever read.
    let mut pings = Vec::new();
    while pings.len() < 64 << 10 {
        pings.extend_from_slice(&[0x89, 0x80 | 125, 0, 0, 0, 0]);
        pings.extend_from_slice(&[7; 125]);
    }
    let mut raw = socket.into_inner();
    let grown = growth_mib(&server, async {
        let flood_until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < flood_until {
            let sent = tokio::time::timeout(Duration::from_millis(500), raw.write_all(&pings));
            if !matches!(sent.await, Ok(Ok(()))) {
                // The host stopped reading or hung up: the flood is over.
                break;
            }
        }
    })
    .await;
    // Before: pongs queued for a peer that reads none, without end (1.2 GB
    // in 5 s on a release build, about 65 MiB in these 4 s on a debug
    // one). Now: a write buffer of about 200 KiB.
    assert!(grown < 16.0, "the host grew by {grown:.0} MiB");
}
