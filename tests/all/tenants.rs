//! Tenants, tokens, scopes and quotas, on every route: `/call`, `/batch`,
//! `/subscribe`, `/search`, `/schema`, envelopes over WebSocket and TCP.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use opbox::HostConfig;
use opbox::call::AccessControl;
use opbox::config::PluginConfig;
use opbox::tenants::{Quotas, TenantConfig, TokenConfig, hash_token_hex};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::util::{Frames, TestHost};

const ACME_ADMIN: &str = "opbox_test_acme_admin";
const ACME_READER: &str = "opbox_test_acme_reader";
const GLOBEX: &str = "opbox_test_globex";
const TINY: &str = "opbox_test_tiny";

fn tenant(id: &str, tokens: &[(&str, &str, &[&str])], quotas: Quotas) -> TenantConfig {
    TenantConfig {
        id: id.into(),
        anonymous: false,
        tokens: tokens
            .iter()
            .map(|(id, secret, scopes)| TokenConfig {
                id: (*id).into(),
                sha256: hash_token_hex(secret),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect(),
        quotas,
        plugins: Default::default(),
    }
}

fn plugin(file: &str, name: &str, tenant: &str) -> PluginConfig {
    PluginConfig {
        path: opbox::bundled::built_plugin(file),
        reuse: None,
        name: Some(name.into()),
        tenant: Some(tenant.into()),
        grants: Default::default(),
        limits: Default::default(),
    }
}

fn requires(scopes: &[&str]) -> AccessControl {
    AccessControl {
        required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        required_scopes_any: Vec::new(),
    }
}

/// Three tenants and no anonymous access. `acme` has two plugins of its own,
/// `vault` (echo) and `feed` (ticker), which need the scope `ops`;
/// discovery needs `discover`. `tiny` may make one call per 100 s.
fn three_tenants(config: &mut HostConfig) {
    config.tenants = vec![
        tenant(
            "acme",
            &[
                ("acme-admin", ACME_ADMIN, &["ops", "discover"]),
                ("acme-reader", ACME_READER, &[]),
            ],
            Quotas::default(),
        ),
        tenant(
            "globex",
            &[("globex-admin", GLOBEX, &["ops", "discover"])],
            Quotas::default(),
        ),
        tenant(
            "tiny",
            &[("tiny", TINY, &["ops", "discover"])],
            Quotas {
                calls_per_second: Some(0.01),
                burst: Some(1),
                ..Quotas::default()
            },
        ),
    ];
    config.plugins.push(plugin("echo", "vault", "acme"));
    config.plugins.push(plugin("ticker", "feed", "acme"));
    for op in ["vault/echo", "feed/count"] {
        config.access.insert(op.into(), requires(&["ops"]));
    }
    for op in ["services/list", "services/schema"] {
        config.access.insert(op.into(), requires(&["discover"]));
    }
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Call,
    Batch,
    Subscribe,
    Search,
    Schema,
    WebSocket,
    Tcp,
    /// `POST /ops/{ns}/{op}` of a query.
    Op,
    /// `POST /ops/{ns}/{op}` of a subscription.
    OpStream,
}

const ROUTES: [Route; 9] = [
    Route::Call,
    Route::Batch,
    Route::Subscribe,
    Route::Search,
    Route::Schema,
    Route::WebSocket,
    Route::Tcp,
    Route::Op,
    Route::OpStream,
];

/// What a route answered.
#[derive(Debug)]
struct Outcome {
    /// The HTTP status, on HTTP routes.
    status: Option<StatusCode>,
    /// The `Retry-After` header, if any.
    retry_after: Option<String>,
    /// The error object, or `null` when the call succeeded.
    error: Value,
    /// The whole answer, for messages.
    body: Value,
}

impl Outcome {
    fn code(&self) -> &str {
        self.error["code"].as_str().unwrap_or("OK")
    }
}

/// Attempts `op` (a query for most routes, a subscription for `/subscribe`,
/// the name looked up for `/schema`; `/search` looks for nothing) on
/// `route` with `token`.
async fn attempt(host: &TestHost, route: Route, token: Option<&str>, op: &str) -> Outcome {
    let with_token = |request: reqwest::RequestBuilder| match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let http = |request: reqwest::RequestBuilder| async move {
        let response = with_token(request).send().await.unwrap();
        let status = response.status();
        let retry_after = retry_after(&response);
        let body: Value = response.json().await.unwrap();
        (status, retry_after, body)
    };
    let call = json!({"operation": op, "input": {"n": 1}});
    match route {
        Route::Call | Route::Search | Route::Schema => {
            let request = match route {
                Route::Call => host.client.post(host.url("/call")).json(&call),
                Route::Search => host.client.get(host.url("/search")),
                _ => host.client.get(host.url(&format!("/schema?name={op}"))),
            };
            let (status, retry_after, body) = http(request).await;
            Outcome {
                status: Some(status),
                retry_after,
                error: body["error"].clone(),
                body,
            }
        }
        Route::Batch => {
            let (status, retry_after, body) =
                http(host.client.post(host.url("/batch")).json(&json!([call]))).await;
            let error = if status == StatusCode::OK {
                body["results"][0]["error"].clone()
            } else {
                body["error"].clone()
            };
            Outcome {
                status: Some(status),
                retry_after,
                error,
                body,
            }
        }
        Route::Op | Route::OpStream => {
            let input = match route {
                Route::Op => json!({"n": 1}),
                _ => json!({"to": 1}),
            };
            let request = host
                .client
                .post(host.url(&format!("/ops/{op}")))
                .json(&input);
            let response = with_token(request).send().await.unwrap();
            let status = response.status();
            let retry_after = retry_after(&response);
            let text = response.text().await.unwrap();
            // A failure is a JSON error body; a subscription's success is
            // an event stream.
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let error = if status.is_success() {
                Value::Null
            } else {
                body["error"].clone()
            };
            Outcome {
                status: Some(status),
                retry_after,
                error,
                body,
            }
        }
        Route::Subscribe => {
            let request = host
                .client
                .post(host.url("/subscribe"))
                .json(&json!({"operation": op, "input": {"to": 1}}));
            let response = with_token(request).send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            let error = text
                .split("\n\n")
                .find_map(|event| {
                    let data = event.strip_prefix("event: error\ndata: ")?;
                    serde_json::from_str(data).ok()
                })
                .unwrap_or(Value::Null);
            Outcome {
                status: Some(status),
                retry_after: None,
                error,
                body: Value::String(text),
            }
        }
        Route::WebSocket => {
            let mut request = host
                .url("/call")
                .replace("http://", "ws://")
                .into_client_request()
                .unwrap();
            if let Some(token) = token {
                let value = format!("Bearer {token}").parse().unwrap();
                request.headers_mut().insert("authorization", value);
            }
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let envelope = json!({"type": "call.requested", "id": "1",
                "payload": {"operationId": op, "input": {"n": 1}}});
            socket
                .send(Message::text(envelope.to_string()))
                .await
                .unwrap();
            let reply = loop {
                match socket.next().await.unwrap().unwrap() {
                    Message::Binary(bytes) => {
                        break serde_json::from_slice::<Value>(&bytes).unwrap();
                    }
                    Message::Text(text) => break serde_json::from_str(&text).unwrap(),
                    _ => {}
                }
            };
            envelope_outcome(reply)
        }
        Route::Tcp => {
            let mut frames = Frames::connect(host).await;
            let mut payload = json!({"operationId": op, "input": {"n": 1}});
            if let Some(token) = token {
                payload["auth_token"] = json!(token);
            }
            frames.send("call.requested", "1", payload).await;
            envelope_outcome(frames.next().await.unwrap())
        }
    }
}

/// The `Retry-After` header of `response`, if any.
fn retry_after(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
}

fn envelope_outcome(reply: Value) -> Outcome {
    let error = if reply["type"] == "call.error" {
        reply["payload"].clone()
    } else {
        Value::Null
    };
    Outcome {
        status: None,
        retry_after: None,
        error,
        body: reply,
    }
}

/// The op each route is tried with: a subscription for `/subscribe`.
fn op_for(route: Route, query: &str, subscription: &str) -> String {
    match route {
        Route::Subscribe | Route::OpStream => subscription.to_owned(),
        _ => query.to_owned(),
    }
}

#[tokio::test]
async fn every_route_refuses_callers_without_a_valid_token() {
    let host = TestHost::with_config(three_tenants).await;
    for token in [None, Some("opbox_not_a_token"), Some("")] {
        for route in ROUTES {
            let op = op_for(route, "echo/echo", "ticker/count");
            let outcome = attempt(&host, route, token, &op).await;
            assert_eq!(
                outcome.code(),
                "UNAUTHORIZED",
                "{route:?} {token:?}: {outcome:?}"
            );
            assert_eq!(outcome.error["retryable"], false);
            let expected = match route {
                Route::Subscribe => Some(StatusCode::OK),
                Route::WebSocket | Route::Tcp => None,
                _ => Some(StatusCode::UNAUTHORIZED),
            };
            assert_eq!(outcome.status, expected, "{route:?}");
        }
    }
    // A valid token gets through on every route.
    for route in ROUTES {
        let op = op_for(route, "echo/echo", "ticker/count");
        let outcome = attempt(&host, route, Some(GLOBEX), &op).await;
        assert_eq!(outcome.code(), "OK", "{route:?}: {outcome:?}");
    }
}

#[tokio::test]
async fn anonymous_callers_reach_only_operations_without_scopes() {
    let host = TestHost::with_config(|config| {
        three_tenants(config);
        config.tenants[1].anonymous = true;
    })
    .await;
    for route in [Route::Call, Route::Batch, Route::WebSocket, Route::Tcp] {
        let outcome = attempt(&host, route, None, "echo/echo").await;
        assert_eq!(outcome.code(), "OK", "{route:?}: {outcome:?}");
    }
    // Discovery needs `discover` here: an anonymous caller is asked for a
    // token, not told it is forbidden.
    for route in [Route::Search, Route::Schema] {
        let outcome = attempt(&host, route, None, "echo/echo").await;
        assert_eq!(outcome.code(), "UNAUTHORIZED", "{route:?}: {outcome:?}");
        assert_eq!(
            outcome.error["details"]["required_scopes"],
            json!(["discover"])
        );
    }
}

#[tokio::test]
async fn every_route_refuses_scopes_that_fall_short() {
    let host = TestHost::with_config(three_tenants).await;
    for route in ROUTES {
        let op = op_for(route, "vault/echo", "feed/count");
        let outcome = attempt(&host, route, Some(ACME_READER), &op).await;
        assert_eq!(outcome.code(), "FORBIDDEN", "{route:?}: {outcome:?}");
        let expected = match route {
            Route::Subscribe | Route::Batch => Some(StatusCode::OK),
            Route::WebSocket | Route::Tcp => None,
            _ => Some(StatusCode::FORBIDDEN),
        };
        assert_eq!(outcome.status, expected, "{route:?}");
        // The same caller with the scope gets through.
        let outcome = attempt(&host, route, Some(ACME_ADMIN), &op).await;
        assert_eq!(outcome.code(), "OK", "{route:?}: {outcome:?}");
    }
}

#[tokio::test]
async fn another_tenants_operations_do_not_exist_on_any_route() {
    let host = TestHost::with_config(three_tenants).await;
    for route in ROUTES {
        let theirs = op_for(route, "vault/echo", "feed/count");
        let missing = op_for(route, "nosuch/echo", "nosuch/count");
        let outcome = attempt(&host, route, Some(GLOBEX), &theirs).await;
        if let Route::Search = route {
            let names: Vec<_> = outcome.body["operations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|op| op["name"].as_str().unwrap().to_owned())
                .collect();
            assert!(names.contains(&"echo/echo".to_owned()), "{names:?}");
            assert!(
                !names
                    .iter()
                    .any(|n| n.starts_with("vault/") || n.starts_with("feed/")),
                "{names:?}"
            );
            continue;
        }
        let nothing = attempt(&host, route, Some(GLOBEX), &missing).await;
        assert_eq!(outcome.code(), "NOT_FOUND", "{route:?}: {outcome:?}");
        // Indistinguishable from an operation that does not exist.
        assert_eq!(outcome.status, nothing.status, "{route:?}");
        assert_eq!(
            outcome.error.to_string().replace(&theirs, "X"),
            nothing.error.to_string().replace(&missing, "X"),
            "{route:?}"
        );
        assert!(!outcome.body.to_string().contains("acme"), "{route:?}");
        // Its owner sees it.
        let outcome = attempt(&host, route, Some(ACME_ADMIN), &theirs).await;
        assert_eq!(outcome.code(), "OK", "{route:?}: {outcome:?}");
    }
    // Nor in the OpenAPI document, which its owner's has.
    let openapi = |token: &'static str| {
        let request = host
            .client
            .get(host.url("/openapi.json"))
            .bearer_auth(token);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let (theirs, mine) = (openapi(GLOBEX).await, openapi(ACME_ADMIN).await);
    assert!(
        theirs.contains("echo/echo") && !theirs.contains("vault/"),
        "{theirs}"
    );
    assert!(mine.contains("vault/echo"));
}

#[tokio::test]
async fn every_route_answers_429_once_the_rate_is_used_up() {
    let host = TestHost::with_config(three_tenants).await;
    // `tiny` may make one call per 100 s; this is it.
    let outcome = attempt(&host, Route::Call, Some(TINY), "echo/echo").await;
    assert_eq!(outcome.code(), "OK", "{outcome:?}");
    for route in ROUTES {
        let op = op_for(route, "echo/echo", "ticker/count");
        let outcome = attempt(&host, route, Some(TINY), &op).await;
        assert_eq!(
            outcome.code(),
            "RESOURCE_EXHAUSTED",
            "{route:?}: {outcome:?}"
        );
        let details = &outcome.error["details"];
        assert_eq!(details["limit"], "tenant.calls_per_second");
        let retry_ms = details["retry_after_ms"].as_u64().unwrap();
        assert!((1..=100_000).contains(&retry_ms), "{retry_ms}");
        assert_eq!(outcome.error["retryable"], true);
        match route {
            Route::Call | Route::Search | Route::Schema | Route::Op | Route::OpStream => {
                assert_eq!(outcome.status, Some(StatusCode::TOO_MANY_REQUESTS));
                let header: u64 = outcome.retry_after.unwrap().parse().unwrap();
                assert_eq!(header, retry_ms.div_ceil(1000), "{route:?}");
            }
            Route::Batch | Route::Subscribe => assert_eq!(outcome.status, Some(StatusCode::OK)),
            Route::WebSocket | Route::Tcp => assert_eq!(outcome.status, None),
        }
    }
    // The other tenants' buckets are their own.
    let outcome = attempt(&host, Route::Call, Some(GLOBEX), "echo/echo").await;
    assert_eq!(outcome.code(), "OK", "{outcome:?}");
}

/// `POST /call` of `fixture-slow/sleep` for `ms` as `token`.
async fn sleep_call(
    client: reqwest::Client,
    url: String,
    token: &str,
    ms: u64,
) -> (StatusCode, Value) {
    crate::util::call_as(
        &client,
        &url,
        token,
        "fixture-slow/sleep",
        json!({"ms": ms}),
    )
    .await
}

#[tokio::test]
async fn one_tenant_flooding_does_not_starve_another() {
    let host = TestHost::with_config(|config| {
        three_tenants(config);
        // `acme` may have 4 calls in flight; it keeps 100 going.
        config.tenants[0].quotas.max_concurrent = 4;
    })
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let (stop, client, url) = (stop.clone(), host.client.clone(), host.url("/call"));
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.is_cancelled() {
                    let (status, body) =
                        sleep_call(client.clone(), url.clone(), ACME_ADMIN, 300).await;
                    answers.push((status, body["error"]["details"]["limit"].clone()));
                }
                answers
            })
        })
        .collect();
    // The flood holds its 4 instances of the shared plugin...
    let started = Instant::now();
    while host.host.runtime().live_instances() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flood never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and `globex`, calling the same plugin meanwhile, is always served.
    // Without per-tenant admission the flood would take all 64 of the
    // plugin's instance slots and these would be refused.
    let mut answers = Vec::new();
    for _ in 0..5 {
        let batch = (0..8).map(|_| sleep_call(host.client.clone(), host.url("/call"), GLOBEX, 50));
        answers.extend(futures::future::join_all(batch).await);
    }
    stop.cancel();
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    // The flood was served up to its quota and refused past it, at once.
    let (mut served, mut refused) = (0, 0);
    for task in flood {
        for (status, limit) in task.await.unwrap() {
            match status {
                StatusCode::OK => served += 1,
                StatusCode::TOO_MANY_REQUESTS if limit == "tenant.max_concurrent" => refused += 1,
                other => panic!("the flood got {other} ({limit})"),
            }
        }
    }
    assert!(
        served > 0 && refused > served,
        "served {served}, refused {refused}"
    );
}

#[tokio::test]
async fn the_same_plugin_for_two_tenants_shares_nothing() {
    let host = TestHost::with_config(|config| {
        three_tenants(config);
        for tenant in ["acme", "globex"] {
            let mut worker = plugin("fixture-slow", "worker", tenant);
            worker.limits.max_instances = Some(1);
            config.plugins.push(worker);
        }
        config.plugins.last_mut().unwrap().limits.memory_bytes = Some(16 << 20);
    })
    .await;
    let sleep = |token: &'static str, ms: u64| {
        let (client, url) = (host.client.clone(), host.url("/call"));
        async move {
            crate::util::call_as(&client, &url, token, "worker/sleep", json!({"ms": ms})).await
        }
    };
    let host = &host;
    let describe = |token: &'static str| async move {
        let (_, body) = host
            .call_as(token, "services/plugin", json!({"name": "worker"}))
            .await;
        body["output"].clone()
    };
    // acme fills its copy's only instance slot...
    let held = tokio::spawn(sleep(ACME_ADMIN, 2000));
    let started = Instant::now();
    while describe(ACME_ADMIN).await["live_instances"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = sleep(ACME_ADMIN, 1).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // ...which globex's copy does not share, nor its counts, nor its limits.
    let (status, body) = sleep(GLOBEX, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (acme, globex) = (describe(ACME_ADMIN).await, describe(GLOBEX).await);
    assert_eq!(acme["live_instances"], 1);
    assert_eq!(globex["live_instances"], 0);
    assert_eq!(acme["limits"]["memory_bytes"], 64 << 20);
    assert_eq!(globex["limits"]["memory_bytes"], 16 << 20);
    // A third tenant has no `worker` at all.
    let outcome = attempt(host, Route::Call, Some(TINY), "worker/sleep").await;
    assert_eq!(outcome.code(), "NOT_FOUND");
    assert_eq!(held.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn a_tenants_memory_cap_bounds_its_plugins() {
    let host = TestHost::with_config(|config| {
        three_tenants(config);
        config.tenants[0].quotas.memory_bytes = Some(8 << 20);
        config.plugins.push(plugin("fixture-hog", "hog", "acme"));
    })
    .await;
    let (status, body) = host
        .call_as(ACME_ADMIN, "services/plugin", json!({"name": "hog"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["limits"]["memory_bytes"], 8 << 20);
    let (status, body) = host
        .call_as(ACME_ADMIN, "hog/hog", json!({"mib": 16}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["details"]["limit"], "memory_bytes");
}

#[tokio::test]
async fn a_connection_takes_its_callers_token_and_envelopes_override_it() {
    let host = TestHost::with_config(three_tenants).await;
    let mut frames = Frames::connect(&host).await;
    let whoami = |token: Option<&str>| {
        let mut payload = json!({"operationId": "vault/echo", "input": 1});
        if let Some(token) = token {
            payload["auth_token"] = json!(token);
        }
        payload
    };
    // No caller yet: refused.
    frames.send("call.requested", "a", whoami(None)).await;
    assert_eq!(
        frames.next().await.unwrap()["payload"]["code"],
        "UNAUTHORIZED"
    );
    // The first token names the connection's caller...
    frames
        .send("call.requested", "b", whoami(Some(ACME_ADMIN)))
        .await;
    assert_eq!(frames.next().await.unwrap()["type"], "call.responded");
    frames.send("call.requested", "c", whoami(None)).await;
    assert_eq!(frames.next().await.unwrap()["type"], "call.responded");
    // ...an envelope's own token decides for that call only...
    frames
        .send("call.requested", "d", whoami(Some(GLOBEX)))
        .await;
    assert_eq!(frames.next().await.unwrap()["payload"]["code"], "NOT_FOUND");
    frames
        .send("call.requested", "e", whoami(Some(ACME_READER)))
        .await;
    assert_eq!(frames.next().await.unwrap()["payload"]["code"], "FORBIDDEN");
    // ...and the connection keeps its caller.
    frames.send("call.requested", "f", whoami(None)).await;
    assert_eq!(frames.next().await.unwrap()["type"], "call.responded");

    // Over WebSocket, the upgrade's bearer token names the caller.
    let client = opbox::envelope::client::Client::connect(
        &host.url("/call").replace("http://", "ws://"),
        Some(ACME_ADMIN.into()),
    )
    .await
    .unwrap();
    assert_eq!(client.call("vault/echo", json!(2)).await.unwrap(), json!(2));
    let client =
        opbox::envelope::client::Client::connect(&format!("tcp://{}", host.tcp_addr), None)
            .await
            .unwrap();
    let error = client.call("vault/echo", json!(2)).await.unwrap_err();
    assert!(error.to_string().contains("UNAUTHORIZED"), "{error}");
}

#[tokio::test]
async fn opbox_token_new_prints_a_token_once_and_the_lines_that_grant_it() {
    let run = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_opbox"))
            .args([
                "token",
                "new",
                "--tenant",
                "acme",
                "--scopes",
                "ops,discover",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let (printed, again) = (run(), run());
    let token = printed
        .lines()
        .find(|line| line.starts_with("opbox_"))
        .unwrap()
        .to_owned();
    assert!(!again.contains(&token), "every token is fresh");
    // The lines to add hold the hash, never the token.
    let snippet = &printed[printed.find("[[tenants.tokens]]").unwrap()..];
    assert!(!snippet.contains(&token));
    assert!(snippet.contains(&hash_token_hex(&token)), "{snippet}");

    // Pasted below the tenant, they let the token in with its scopes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opbox.toml");
    std::fs::write(&path, format!("[[tenants]]\nid = \"acme\"\n{snippet}")).unwrap();
    let tenants = HostConfig::load(&path).unwrap().tenants;
    let host = TestHost::with_config(|config| {
        three_tenants(config);
        config.tenants[0].tokens = tenants[0].tokens.clone();
    })
    .await;
    for route in ROUTES {
        let op = op_for(route, "vault/echo", "feed/count");
        let outcome = attempt(&host, route, Some(&token), &op).await;
        assert_eq!(outcome.code(), "OK", "{route:?}: {outcome:?}");
    }
    let outcome = attempt(
        &host,
        Route::Call,
        Some(&token[..token.len() - 1]),
        "echo/echo",
    )
    .await;
    assert_eq!(outcome.code(), "UNAUTHORIZED");
}

#[tokio::test]
async fn tokens_never_reach_the_logs_or_the_answers() {
    const SECRET: &str = "opbox_never_log_me_0123456789";
    const WRONG: &str = "opbox_never_log_me_either_0123";
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_dir = {:?}\n\
         [[tenants]]\nid = \"acme\"\n[[tenants.tokens]]\nid = \"ci\"\nsha256 = \"{}\"\n",
        crate::util::data_dir(),
        crate::util::cache_dir(),
        hash_token_hex(SECRET),
    );
    let server = crate::util::Server::start_logging(dir.path(), &config, "debug");
    let http = server.url.clone();
    let tcp = server.tcp.clone().unwrap();

    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for token in [SECRET, WRONG] {
        for path in ["/call", "/batch", "/subscribe"] {
            let call = json!({"operation": "echo/echo", "input": 1});
            let body = if path == "/batch" {
                json!([call])
            } else {
                call
            };
            let response = client
                .post(format!("{http}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            answers.push(response.text().await.unwrap());
        }
        let tcp =
            opbox::envelope::client::Client::connect(&format!("tcp://{tcp}"), Some(token.into()))
                .await
                .unwrap();
        answers.push(format!("{:?}", tcp.call("echo/echo", json!(1)).await));
    }
    assert!(answers[0].contains(r#""result":"ok""#), "{answers:?}");
    assert!(answers[4].contains("UNAUTHORIZED"), "{answers:?}");
    // Stopped, not killed, so every queued log line is written.
    let log = server.stop();
    assert!(
        log.iter().any(|line| line.contains(r#"caller="ci""#)),
        "{log:?}"
    );
    for secret in [SECRET, WRONG] {
        assert!(!answers.iter().any(|a| a.contains(secret)), "{answers:?}");
        assert!(
            !log.iter().any(|line| line.contains(secret)),
            "{secret} logged"
        );
    }
}
