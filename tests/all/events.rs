//! The event feed: what happened, numbered, kept across restarts, paged
//! over HTTP and followed over a WebSocket without a gap or a repeat.

use std::time::Duration;

use futures::StreamExt;
use opbox::call::{Event, Happening, Observer};
use opbox::tenants::{PluginAllowance, Quotas, TenantConfig, TokenConfig, hash_token_hex};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::admin::{OPERATOR, fixture, install, with_operator};
use crate::util::TestHost;

const ACME: &str = "acme-token";
const SLOW: &str = "slow-token";

/// The operator and tenant `acme`, whose caller may read its own events
/// and install one plugin.
async fn start(configure: impl FnOnce(&mut opbox::HostConfig)) -> (TestHost, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| {
        with_operator(c, data.path());
        c.tenants.push(TenantConfig {
            id: "acme".into(),
            anonymous: false,
            tokens: vec![TokenConfig {
                id: "acme-dev".into(),
                sha256: hash_token_hex(ACME),
                scopes: vec!["plugins:write".into()],
            }],
            quotas: Quotas::default(),
            plugins: PluginAllowance {
                max_plugins: 1,
                ..PluginAllowance::default()
            },
        });
        // A tenant allowed one call every 100 s.
        c.tenants.push(TenantConfig {
            id: "slow".into(),
            anonymous: false,
            tokens: vec![TokenConfig {
                id: "slow-ci".into(),
                sha256: hash_token_hex(SLOW),
                scopes: Vec::new(),
            }],
            quotas: Quotas {
                calls_per_second: Some(0.01),
                burst: Some(1),
                ..Quotas::default()
            },
            plugins: PluginAllowance::default(),
        });
        configure(c);
    })
    .await;
    (host, data)
}

/// `GET /admin/v1/events{query}` as `token`.
async fn page(host: &TestHost, token: &str, query: &str) -> (StatusCode, Value) {
    let response = host
        .client
        .get(host.url(&format!("/admin/v1/events{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Every event `token` may read, once the feed holds at least `at_least`
/// of them (events are committed a moment after they happen).
pub(crate) async fn read_all(host: &TestHost, token: &str, at_least: usize) -> Vec<Value> {
    let log = host.host.plugins().events();
    loop {
        let (status, body) = page(host, token, "?limit=1000").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let events = body["events"].as_array().unwrap().clone();
        if events.len() >= at_least {
            return events;
        }
        // Wait for the writer to commit more.
        let mut live = log.follow();
        let _ = tokio::time::timeout(Duration::from_secs(1), live.recv()).await;
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn changes_and_failures_are_events_each_tenant_seeing_its_own() {
    let (host, _data) = start(|_| {}).await;
    // The operator installs a shared plugin; acme one of its own.
    let named = Some(json!({ "name": "versioned" }));
    assert_eq!(
        install(&host, Some(OPERATOR), named, fixture("fixture-v1"))
            .await
            .0,
        StatusCode::CREATED
    );
    let mine = Some(json!({ "name": "mine" }));
    let (status, body) = install(&host, Some(ACME), mine, fixture("fixture-v1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // acme's second is refused; its calls trap, hit a limit, reach for
    // capabilities it was not given.
    let second = Some(json!({ "name": "second" }));
    assert_eq!(
        install(&host, Some(ACME), second, fixture("fixture-v2"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = host
        .call_as(ACME, "fixture-panic/boom", json!("on purpose"))
        .await;
    assert_eq!(body["error"]["code"], "PLUGIN_FAILED", "{status} {body}");
    // Twice: a denial is one event per capability per call.
    for _ in 0..2 {
        host.call_as(ACME, "hostile-ambient/config", json!({ "key": "k" }))
            .await;
    }
    // Other tenants' events: acme must not see them. The default tenant
    // traps and runs out of memory; `slow` runs out of its quota.
    host.call("fixture-panic/boom", json!("by default")).await;
    let (_, body) = host.call("hostile-memory/bomb", json!(null)).await;
    assert_eq!(body["error"]["details"]["limit"], "memory_bytes", "{body}");
    for _ in 0..2 {
        host.call_as(SLOW, "echo/echo", json!(1)).await;
    }

    let all = read_all(&host, OPERATOR, 9).await;
    let of = |kind: &str| {
        all.iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}: {all:?}"))
    };
    assert_eq!(
        (
            &of("limit.hit")["tenant"],
            &of("limit.hit")["detail"]["limit"]
        ),
        (&json!("default"), &json!("memory_bytes"))
    );
    assert_eq!(
        (
            &of("quota.refused")["tenant"],
            &of("quota.refused")["detail"]["quota"]
        ),
        (&json!("slow"), &json!("calls_per_second"))
    );
    let cursors: Vec<u64> = all.iter().map(|e| e["cursor"].as_u64().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let mine = read_all(&host, ACME, 5).await;
    assert_eq!(
        kinds(&mine),
        [
            "plugin.installed",
            "plugin.refused",
            "call.trapped",
            "capability.denied",
            "capability.denied"
        ],
        "{mine:?}"
    );
    assert!(mine.iter().all(|e| e["tenant"] == "acme"), "{mine:?}");
    assert!(
        !serde_json::to_string(&mine).unwrap().contains("default"),
        "{mine:?}"
    );
    assert_eq!(mine[1]["detail"]["action"], "install");
    assert_eq!(mine[2]["plugin"], "fixture-panic");
    assert_eq!(mine[3]["detail"]["capability"], "config");
    // The operator sees the shared plugin's install, for the host.
    assert!(
        all.iter()
            .any(|e| e["kind"] == "plugin.installed" && e["tenant"].is_null()),
        "{all:?}"
    );

    // A page starts after its cursor and says where to go on.
    let after = cursors[1];
    let (status, body) = page(&host, OPERATOR, &format!("?cursor={after}&limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(got, cursors[2..4]);
    assert_eq!(body["next_cursor"], cursors[3]);
    let (status, body) = page(&host, OPERATOR, "?cursor=banana").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"]["diagnostic"], "cursor_malformed");
    // Anonymous callers read no events.
    let response = host
        .client
        .get(host.url("/admin/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// Opens the feed's WebSocket as `token` with `query`.
async fn follow(
    host: &TestHost,
    token: &str,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = host
        .url(&format!("/admin/v1/events{query}"))
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    let value = format!("Bearer {token}").parse().unwrap();
    request.headers_mut().insert("authorization", value);
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The next item on a feed, or `None` once it closes.
async fn next_item<S>(socket: &mut S) -> Option<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn the_feed_sends_a_snapshot_then_stored_then_live_events_each_once() {
    let (host, _data) = start(|_| {}).await;
    let log = host.host.plugins().events();
    let named = Some(json!({ "name": "versioned" }));
    install(&host, Some(OPERATOR), named, fixture("fixture-v1")).await;
    host.call("fixture-panic/boom", json!("one")).await;
    host.call("fixture-panic/boom", json!("two")).await;
    let stored = read_all(&host, OPERATOR, 3).await;
    let first = stored[0]["cursor"].as_u64().unwrap();

    let mut socket = follow(&host, OPERATOR, &format!("?cursor={first}")).await;
    // Each item is what `admin/feed` publishes it sends.
    let schema = crate::contracts::output_schema(&host, "admin/feed").await;
    let snapshot = next_item(&mut socket).await.unwrap();
    crate::contracts::assert_meets(&schema, &snapshot, "the snapshot");
    assert_eq!(snapshot["type"], "snapshot");
    assert!(
        snapshot["plugins"].to_string().contains("\"versioned\""),
        "{snapshot}"
    );
    // What is stored after the cursor, then what happens from now on.
    for expected in &stored[1..] {
        let item = next_item(&mut socket).await.unwrap();
        crate::contracts::assert_meets(&schema, &item, "an event");
        assert_eq!(
            (&item["type"], &item["cursor"]),
            (&json!("event"), &expected["cursor"])
        );
    }
    host.call("fixture-panic/boom", json!("three")).await;
    log.observe(Event {
        what: marker("last"),
        tenant: None,
        plugin: None,
    });
    let mut live = Vec::new();
    while live
        .last()
        .is_none_or(|e: &Value| e["detail"]["action"] != "test.marker")
    {
        live.push(next_item(&mut socket).await.unwrap());
    }
    let last_stored = stored.last().unwrap()["cursor"].as_u64().unwrap();
    let cursors: Vec<u64> = live.iter().map(|e| e["cursor"].as_u64().unwrap()).collect();
    assert_eq!(
        cursors,
        (last_stored + 1..=last_stored + 2).collect::<Vec<_>>(),
        "{live:?}"
    );

    // A cursor that is not a number: one diagnostic, then the close.
    let mut socket = follow(&host, OPERATOR, "?cursor=x1").await;
    let item = next_item(&mut socket).await.unwrap();
    crate::contracts::assert_meets(&schema, &item, "a diagnostic");
    assert_eq!(
        (&item["type"], &item["code"]),
        (&json!("diagnostic"), &json!("cursor_malformed"))
    );
    assert_eq!(next_item(&mut socket).await, None);
}

#[tokio::test]
async fn an_expired_cursor_and_a_reader_left_behind_each_get_a_diagnostic() {
    let (host, _data) = start(|c| c.admin.max_events = 50).await;
    let log = host.host.plugins().events();
    // Each event large enough that the socket's buffers fill long before
    // the feed is done.
    let pad = "x".repeat(1000);
    let marker = |n: u64| Event {
        what: marker(&format!("{n} {pad}")),
        tenant: None,
        plugin: None,
    };
    let mut committed = log.follow();
    for n in 0..60 {
        log.observe(marker(n));
    }
    while committed.recv().await.unwrap().cursor < 60 {}
    let mut socket = follow(&host, OPERATOR, "?cursor=2").await;
    assert_eq!(next_item(&mut socket).await.unwrap()["type"], "snapshot");
    let item = next_item(&mut socket).await.unwrap();
    assert_eq!(item["code"], "cursor_expired", "{item}");
    assert_eq!(item["oldest"], 11);
    assert_eq!(next_item(&mut socket).await, None);

    // A reader that takes nothing while the feed runs far ahead.
    let mut socket = follow(&host, OPERATOR, "?cursor=60").await;
    assert_eq!(next_item(&mut socket).await.unwrap()["type"], "snapshot");
    let total = (opbox::store::FOLLOW_BUFFER * 20) as u64;
    for n in 0..total {
        log.observe(marker(n));
        if n % 1000 == 999 {
            // The writer's queue is bounded: let it keep up.
            while committed.recv().await.map_or(0, |e| e.cursor) < 60 + n + 1 {}
        }
    }
    let mut last = 60;
    let diagnostic = loop {
        let item = next_item(&mut socket)
            .await
            .expect("a diagnostic before the close");
        if item["type"] == "diagnostic" {
            break item;
        }
        let cursor = item["cursor"].as_u64().unwrap();
        assert_eq!(cursor, last + 1, "no event missed or repeated");
        last = cursor;
    };
    assert_eq!(diagnostic["code"], "cursor_overrun", "{diagnostic}");
    assert_eq!(diagnostic["cursor"], last);
    assert!(last < 60 + total, "the reader fell behind");
}

#[tokio::test]
async fn a_feed_socket_holds_its_connections_place_until_it_closes() {
    let (host, _data) = start(|c| c.connections.max_connections_per_ip = 1).await;
    let mut socket = follow(&host, OPERATOR, "").await;
    assert_eq!(next_item(&mut socket).await.unwrap()["type"], "snapshot");
    // The one place this address has is the feed's.
    // (The refusal is written as soon as the connection is accepted.)
    let mut other = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut other, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host.host.open_connections() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(host.get("/healthz").await.0, StatusCode::OK);
}

/// An event the tests record themselves, saying `reason`.
fn marker(reason: &str) -> Happening {
    Happening::PluginRefused {
        action: "test.marker".into(),
        reason: reason.into(),
    }
}
