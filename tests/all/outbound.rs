//! Outbound HTTP through the `relay` example, against a real upstream
//! server the test runs: only granted hosts, streamed bodies, caps and
//! timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use futures::StreamExt;
use opbox::capabilities::Grants;
use opbox::config::PluginConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::util::TestHost;

/// The upstream: `/hello`, `/events` (two SSE events, the second only once
/// `gate` is notified), `/chunks`, `/redirect` (to `localhost`), `/big`
/// (2 MiB), `/stall` (headers, then nothing), `POST /echo` (the body it
/// was sent), `/pair` (answers two requests once both have arrived).
async fn upstream(gate: Arc<Notify>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pair = Arc::new(tokio::sync::Barrier::new(2));
    let app = Router::new()
        .route(
            "/pair",
            get(move || {
                let pair = pair.clone();
                async move {
                    pair.wait().await;
                    "paired"
                }
            }),
        )
        .route("/hello", get(|| async { "hello from upstream" }))
        .route(
            "/events",
            get(move || {
                let gate = gate.clone();
                async move {
                    let events = futures::stream::unfold(0, move |n| {
                        let gate = gate.clone();
                        async move {
                            match n {
                                0 => {}
                                1 => gate.notified().await,
                                _ => return None,
                            }
                            let event = Event::default()
                                .event("tick")
                                .id((n + 1).to_string())
                                .data(format!("{{\"n\":{}}}", n + 1));
                            Some((Ok::<_, std::convert::Infallible>(event), n + 1))
                        }
                    });
                    Sse::new(events)
                }
            }),
        )
        .route(
            "/chunks",
            get(|| async {
                let chunks =
                    futures::stream::iter(["one ", "two ", "three"]).then(|chunk| async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, std::convert::Infallible>(chunk)
                    });
                Body::from_stream(chunks)
            }),
        )
        .route(
            "/redirect",
            get(move || async move {
                Redirect::temporary(&format!("http://localhost:{}/hello", addr.port()))
            }),
        )
        .route("/big", get(|| async { "x".repeat(2 << 20) }))
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/stall",
            get(|| async {
                let never =
                    futures::stream::pending::<Result<&'static str, std::convert::Infallible>>();
                Body::from_stream(never).into_response()
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn relay(name: &str, grants: Grants) -> PluginConfig {
    PluginConfig {
        path: opbox::bundled::built_plugin("relay"),
        reuse: None,
        name: Some(name.into()),
        tenant: None,
        grants,
        limits: Default::default(),
    }
}

/// A host with `relay` allowed to reach `upstream` (by IP, not by the name
/// `localhost`), with a 1 MiB response cap and 500 ms timeouts, and
/// `relay-denied` allowed nothing.
async fn host_for(upstream: SocketAddr) -> TestHost {
    TestHost::with_config(|config| {
        config.plugins.push(relay(
            "relay",
            Grants {
                allowed_outbound_hosts: vec![format!("http://127.0.0.1:{}", upstream.port())],
                outbound_timeout_ms: Some(500),
                outbound_max_response_bytes: Some(1 << 20),
                ..Grants::default()
            },
        ));
        config
            .plugins
            .push(relay("relay-denied", Grants::default()));
    })
    .await
}

#[tokio::test]
async fn only_granted_hosts_are_reachable_and_redirects_are_checked_again() {
    let addr = upstream(Arc::new(Notify::new())).await;
    let host = host_for(addr).await;
    let (status, body) = host
        .call(
            "relay/fetch",
            json!({"url": format!("http://127.0.0.1:{}/hello", addr.port())}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["body"], "hello from upstream");
    assert_eq!(body["output"]["status"], 200);
    // The same server by another name, another port, no grant at all: each
    // is the interface's denial, passed on by the plugin.
    for (plugin, url) in [
        ("relay", format!("http://localhost:{}/hello", addr.port())),
        (
            "relay",
            format!("http://127.0.0.1:{}/hello", addr.port() + 1),
        ),
        ("relay", format!("https://127.0.0.1:{}/hello", addr.port())),
        (
            "relay-denied",
            format!("http://127.0.0.1:{}/hello", addr.port()),
        ),
    ] {
        let (status, body) = host
            .call(&format!("{plugin}/fetch"), json!({"url": url}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["error"]["code"], "HTTP_DENIED", "{url}: {body}");
    }
    // A redirect to a host that is not granted: followed, and denied.
    let (_, body) = host
        .call(
            "relay/fetch",
            json!({"url": format!("http://127.0.0.1:{}/redirect", addr.port())}),
        )
        .await;
    assert_eq!(body["error"]["code"], "HTTP_DENIED", "{body}");
    let (_, body) = host.call("services/plugin", json!({"name": "relay"})).await;
    assert_eq!(
        body["output"]["grants"]["allowed_outbound_hosts"],
        json!([format!("http://127.0.0.1:{}", addr.port())])
    );
}

#[tokio::test]
async fn a_request_body_sent_in_chunks_arrives_whole_and_only_where_granted() {
    let addr = upstream(Arc::new(Notify::new())).await;
    let host = host_for(addr).await;
    let url = format!("http://127.0.0.1:{}/echo", addr.port());
    let text: String = (0..2_000).map(|n| format!("{n:>4},")).collect();
    let (status, body) = host
        .call(
            "relay/post",
            json!({"url": url, "body": text, "chunk": 999}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["status"], 200);
    assert_eq!(body["output"]["body"], text);
    let (_, body) = host
        .call(
            "relay-denied/post",
            json!({"url": url, "body": "x", "chunk": 1}),
        )
        .await;
    assert_eq!(body["error"]["code"], "HTTP_DENIED", "{body}");
}

#[tokio::test]
async fn a_plugin_waits_on_two_requests_at_once() {
    // `/pair` answers only once a second request has arrived: a plugin
    // that could wait on one request at a time would stall on the first
    // until the grant's timeout.
    let addr = upstream(Arc::new(Notify::new())).await;
    let host = host_for(addr).await;
    let url = format!("http://127.0.0.1:{}/pair", addr.port());
    let (status, body) = host
        .call("relay/fetch-all", json!({"urls": [url, url]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bodies: Vec<&Value> = body["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|answer| &answer["body"])
        .collect();
    assert_eq!(bodies, [&json!("paired"), &json!("paired")], "{body}");
}

#[tokio::test]
async fn upstream_events_reach_the_caller_one_by_one() {
    let gate = Arc::new(Notify::new());
    let addr = upstream(gate.clone()).await;
    let host = host_for(addr).await;
    let url = format!("http://127.0.0.1:{}/events", addr.port());
    let mut events = host.subscribe("relay/sse", json!({"url": url})).await;
    // The first event arrives while the upstream holds the second back: it
    // was passed on as it came, not after the body ended.
    let first = events.next().await.unwrap();
    assert_eq!(
        first.json(),
        json!({"event": "tick", "data": "{\"n\":1}", "id": "1"})
    );
    gate.notify_one();
    let second = events.next().await.unwrap();
    assert_eq!(
        second.json(),
        json!({"event": "tick", "data": "{\"n\":2}", "id": "2"})
    );
    assert_eq!(events.next().await.unwrap().event, "completed");

    let url = format!("http://127.0.0.1:{}/chunks", addr.port());
    let outputs = host
        .subscribe("relay/sse", json!({"url": url}))
        .await
        .collect()
        .await;
    let text: String = outputs
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(outputs.last().unwrap().event, "completed");
}

#[tokio::test]
async fn responses_are_capped_and_stalled_upstreams_time_out() {
    let addr = upstream(Arc::new(Notify::new())).await;
    let host = host_for(addr).await;
    let url = format!("http://127.0.0.1:{}/big", addr.port());
    let events = host
        .subscribe("relay/sse", json!({"url": url}))
        .await
        .collect()
        .await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.json()["code"], "HTTP_TOO_LARGE", "{last:?}");
    let relayed: usize = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["delta"].as_str().unwrap().len())
        .sum();
    assert!(relayed <= 1 << 20, "{relayed}");

    // A stalled upstream ends with the grant's timeout (500 ms), an error
    // the plugin sees, rather than the call's own deadline (`TIMEOUT`).
    let url = format!("http://127.0.0.1:{}/stall", addr.port());
    let (status, body) = host.call("relay/fetch", json!({"url": url})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "HTTP_FAILED", "{body}");
    let message: &Value = &body["error"]["message"];
    assert!(
        message.as_str().unwrap().to_lowercase().contains("timeout"),
        "{body}"
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn a_granted_name_reaches_the_hosts_own_network_only_when_the_grant_says_so() {
    let addr = upstream(Arc::new(Notify::new())).await;
    let by_name = |allow_internal| Grants {
        allowed_outbound_hosts: vec![format!("http://localhost:{}", addr.port())],
        outbound_timeout_ms: Some(2000),
        outbound_allow_internal: allow_internal,
        ..Grants::default()
    };
    let host = TestHost::with_config(|config| {
        config.plugins.push(relay("outside", by_name(false)));
        config.plugins.push(relay("inside", by_name(true)));
    })
    .await;
    let url = json!({"url": format!("http://localhost:{}/hello", addr.port())});
    // `localhost` is granted, but it resolves to a loopback address: the
    // grant names a host, not the host's own network.
    let (status, body) = host.call("outside/fetch", url.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "HTTP_FAILED", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Prohibited"),
        "{body}"
    );
    let (status, body) = host.call("inside/fetch", url).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["body"], "hello from upstream");
}

#[tokio::test]
async fn a_plugins_requests_in_flight_are_capped() {
    let addr = upstream(Arc::new(Notify::new())).await;
    let host = TestHost::with_config(|config| {
        config.plugins.push(relay(
            "relay",
            Grants {
                allowed_outbound_hosts: vec![format!("http://127.0.0.1:{}", addr.port())],
                outbound_timeout_ms: Some(1500),
                outbound_max_requests: Some(1),
                ..Grants::default()
            },
        ));
    })
    .await;
    let url = |path: &str| json!({"url": format!("http://127.0.0.1:{}{path}", addr.port())});
    // One exchange held open by a stalled upstream …
    let stalled = {
        let (client, call) = (host.client.clone(), host.url("/call"));
        let input = url("/stall");
        tokio::spawn(async move {
            let body = json!({"operation": "relay/fetch", "input": input});
            client.post(call).json(&body).send().await.unwrap().status()
        })
    };
    // … leaves no room for a second, until it ends.
    let refused = loop {
        let (_, body) = host.call("relay/fetch", url("/hello")).await;
        if body["error"]["code"] == "HTTP_FAILED" {
            break body;
        }
        assert!(!stalled.is_finished(), "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ConnectionLimitReached"),
        "{refused}"
    );
    stalled.await.unwrap();
    // Its place is free once its connection has closed, a moment after
    // its call ended (the connection is a task of its own).
    let started = std::time::Instant::now();
    loop {
        let (status, body) = host.call("relay/fetch", url("/hello")).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(body["error"]["code"], "HTTP_FAILED", "{body}");
        assert!(started.elapsed() < Duration::from_secs(5), "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream that answers every request with `head` (a status line and
/// headers declaring `Content-Length: 0`) and then closes the connection,
/// as many servers do after an empty redirect or a `204`.
async fn empty_upstream(head: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_empty_response_of_known_length_arrives_whatever_its_status() {
    for (status, head) in [
        (
            204,
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        (302, "HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n"),
        (
            200,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let addr = empty_upstream(head).await;
        let host = host_for(addr).await;
        // Many times: whichever the host notices first, the response or
        // the closed connection, the caller gets the response.
        for _ in 0..20 {
            let (code, body) = host
                .call(
                    "relay/fetch",
                    json!({"url": format!("http://127.0.0.1:{}/", addr.port())}),
                )
                .await;
            assert_eq!(code, StatusCode::OK, "{status}: {body}");
            assert_eq!(body["output"]["status"], status, "{body}");
            assert_eq!(body["output"]["body"], "", "{body}");
        }
    }
}

/// `relay/pipe`: an upstream body passed through as bytes, each chunk as
/// it arrives; past the grant's response cap the call ends with
/// `HTTP_TOO_LARGE`, and a status that is not 2xx is told on stderr with
/// exit code 1.
#[tokio::test]
async fn an_upstream_body_passes_through_a_byte_stream_operation_as_bytes() {
    let addr = upstream(Arc::new(Notify::new())).await;
    let host = host_for(addr).await;
    // `[type][length u32][payload]` frames: stdout (1) joined, and the last
    // other frame.
    let pipe = async |path: &str| {
        let input = json!({"url": format!("http://127.0.0.1:{}{path}", addr.port())});
        let response = host
            .client
            .post(host.url("/raw/relay/pipe"))
            .header("opbox-input", input.to_string())
            .header("accept", "application/vnd.opbox.raw")
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.expect("the body");
        let (mut at, mut stdout, mut last) = (0, Vec::new(), None);
        while at < body.len() {
            let len = u32::from_be_bytes([body[at + 1], body[at + 2], body[at + 3], body[at + 4]]);
            let payload = body[at + 5..at + 5 + len as usize].to_vec();
            match body[at] {
                1 => stdout.extend_from_slice(&payload),
                kind => last = Some((kind, payload)),
            }
            at += 5 + len as usize;
        }
        (stdout, last.expect("an end"))
    };
    let (stdout, end) = pipe("/chunks").await;
    assert_eq!(String::from_utf8_lossy(&stdout), "one two three");
    assert_eq!(end, (3, vec![0]), "exit code 0");

    let (stdout, (kind, error)) = pipe("/big").await;
    assert_eq!(kind, 4, "an error ends it");
    let error: serde_json::Value = serde_json::from_slice(&error).expect("JSON");
    assert_eq!(error["code"], "HTTP_TOO_LARGE", "{error}");
    assert!(
        stdout.len() <= 1 << 20,
        "{} bytes past a 1 MiB cap",
        stdout.len()
    );

    let (_, end) = pipe("/missing").await;
    assert_eq!(end, (3, vec![1]), "exit code 1");
}
