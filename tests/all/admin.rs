//! Plugins coming and going in a running host, through the admin API:
//! install, replace and remove over HTTP, no call dropped across a change,
//! and installed plugins back after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opbox::HostConfig;
use opbox::tenants::{Quotas, TenantConfig, TokenConfig, hash_token_hex};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{Server, TestHost};

/// The operator's token: scope `admin` in the default tenant.
pub const OPERATOR: &str = "operator-token";

/// The default tenant, open to anonymous callers, with an operator token.
pub fn with_operator(config: &mut HostConfig, data: &std::path::Path) {
    config.data_dir = data.to_owned();
    config.tenants = vec![TenantConfig {
        id: opbox::Identity::DEFAULT_TENANT.into(),
        anonymous: true,
        tokens: vec![TokenConfig {
            id: "operator".into(),
            sha256: hash_token_hex(OPERATOR),
            scopes: vec!["admin".into()],
        }],
        quotas: Quotas::default(),
        plugins: Default::default(),
    }];
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(opbox::bundled::built_plugin(name)).unwrap()
}

/// Sends `wasm` to `/admin/v1/plugins…` with `method`, as `token`, with
/// `settings` in the `opbox-plugin` header.
pub async fn upload(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    settings: Option<Value>,
    wasm: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = client
        .request(method, url)
        .header("content-type", "application/wasm")
        .body(wasm);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(settings) = settings {
        request = request.header("opbox-plugin", settings.to_string());
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// `POST /admin/v1/plugins` on `host` as `token`.
pub async fn install(
    host: &TestHost,
    token: Option<&str>,
    settings: Option<Value>,
    wasm: Vec<u8>,
) -> (StatusCode, Value) {
    let url = host.url("/admin/v1/plugins");
    upload(
        &host.client,
        reqwest::Method::POST,
        url,
        token,
        settings,
        wasm,
    )
    .await
}

/// `PUT /admin/v1/plugins/{name}` on `host` as the operator.
pub async fn replace(host: &TestHost, name: &str, wasm: Vec<u8>) -> (StatusCode, Value) {
    replace_at(host, &format!("/admin/v1/plugins/{name}"), wasm).await
}

/// `PUT` of `wasm` to `path` (with its query) as the operator.
async fn replace_at(host: &TestHost, path: &str, wasm: Vec<u8>) -> (StatusCode, Value) {
    let url = host.url(path);
    upload(
        &host.client,
        reqwest::Method::PUT,
        url,
        Some(OPERATOR),
        None,
        wasm,
    )
    .await
}

async fn admin(host: &TestHost, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
    let response = host
        .client
        .request(method, host.url(path))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// The version of `versioned` that answers a call now.
async fn which(host: &TestHost) -> (StatusCode, Value) {
    host.call("versioned/which", json!(null)).await
}

#[tokio::test]
async fn plugins_are_installed_replaced_and_removed_over_http() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| with_operator(c, data.path())).await;
    let named = Some(json!({ "name": "versioned" }));
    // Only an operator may install; an anonymous caller is refused.
    let (status, body) = install(&host, None, named.clone(), fixture("fixture-v1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(which(&host).await.0, StatusCode::NOT_FOUND);

    let (status, body) = install(&host, Some(OPERATOR), named.clone(), fixture("fixture-v1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "versioned");
    assert_eq!(body["source"], "api");
    let (status, body) = which(&host).await;
    assert_eq!(
        (status, &body["output"]),
        (StatusCode::OK, &json!({"version": 1})),
        "{body}"
    );

    // The name is taken; bytes that are not a component name their cause.
    let (status, body) = install(&host, Some(OPERATOR), named.clone(), fixture("fixture-v2")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = install(&host, Some(OPERATOR), None, b"not wasm".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"]["cause"], "compile", "{body}");
    // Settings the host does not know are refused before anything loads.
    let (status, body) = install(
        &host,
        Some(OPERATOR),
        Some(json!({"nme": "x"})),
        fixture("fixture-v2"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = admin(&host, reqwest::Method::GET, "/admin/v1/plugins").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sources: Vec<(String, String)> = body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("versioned".into(), "api".into())),
        "{sources:?}"
    );
    assert!(
        sources.contains(&("echo".into(), "config".into())),
        "{sources:?}"
    );

    // A new version in place: new calls go to it, with its new operation.
    let (status, body) = replace(&host, "versioned", fixture("fixture-v2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(which(&host).await.1["output"], json!({"version": 2}));
    assert_eq!(
        host.call("versioned/added", json!(null)).await.1["output"],
        "added"
    );
    let (status, body) = admin(&host, reqwest::Method::GET, "/admin/v1/plugins/versioned").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["operations"].to_string().contains("versioned/added"),
        "{body}"
    );
    // Calls are counted from the version's install: two since the replace.
    assert_eq!(
        (&body["calls"], &body["failures"]),
        (&json!(2), &json!(0)),
        "{body}"
    );
    assert_eq!(body["state"], "active");

    // A version that breaks callers is refused, each break named, and
    // nothing changes; forced, it goes in.
    let (status, body) = replace(&host, "versioned", fixture("fixture-break")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "CONFLICT", "{body}");
    let listed = body["error"]["details"]["breaks"]
        .as_array()
        .expect("the breaks are listed");
    let mut breaks: Vec<(String, String)> = listed
        .iter()
        .map(|b| {
            (
                b["operation"].as_str().unwrap().into(),
                b["change"].as_str().unwrap().into(),
            )
        })
        .collect();
    breaks.dedup();
    // `added` now needs `who`: that break is named where it is.
    assert!(
        listed
            .iter()
            .any(|b| b["operation"] == "versioned/added" && b["path"] == "/required"),
        "{body}"
    );
    assert_eq!(
        breaks,
        [
            ("versioned/which".into(), "op_type".into()),
            ("versioned/count".into(), "removed".into()),
            ("versioned/added".into(), "input".into()),
        ],
        "{body}"
    );
    assert_eq!(which(&host).await.1["output"], json!({"version": 2}));
    let (status, body) = replace_at(
        &host,
        "/admin/v1/plugins/versioned?force=true",
        fixture("fixture-break"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = which(&host).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!({"version": 3}));

    // What the configuration declares is not the API's to change.
    let (status, body) = replace(&host, "echo", fixture("fixture-v2")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = admin(&host, reqwest::Method::DELETE, "/admin/v1/plugins/echo").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = admin(
        &host,
        reqwest::Method::DELETE,
        "/admin/v1/plugins/versioned",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(which(&host).await.0, StatusCode::NOT_FOUND);
    let (status, _) = admin(&host, reqwest::Method::GET, "/admin/v1/plugins/versioned").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin(
        &host,
        reqwest::Method::DELETE,
        "/admin/v1/plugins/versioned",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_plugin_replaced_twenty_times_under_load_drops_no_call() {
    let data = tempfile::tempdir().unwrap();
    let host = Arc::new(TestHost::with_config(|c| with_operator(c, data.path())).await);
    let named = || Some(json!({ "name": "versioned" }));
    let (status, body) = install(&host, Some(OPERATOR), named(), fixture("fixture-v1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (host, stop, seen) = (host.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                // A client of its own: its own connections.
                let client = reqwest::Client::new();
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let response = client
                        .post(host.url("/call"))
                        .json(&json!({ "operation": "versioned/which" }))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(
                        status,
                        StatusCode::OK,
                        "a call failed across a change: {body}"
                    );
                    let version = body["output"]["version"].as_u64().unwrap();
                    seen[usize::try_from(version - 1).unwrap()].fetch_add(1, Ordering::Relaxed);
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for round in 0..20 {
        let next = if round % 2 == 0 {
            "fixture-v2"
        } else {
            "fixture-v1"
        };
        // Back to version 1 removes `added`: forced past the gate.
        let path = "/admin/v1/plugins/versioned?force=true";
        let (status, body) = replace_at(&host, path, fixture(next)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        total += caller.await.expect("no caller saw a failed call");
    }
    let (v1, v2) = (
        seen[0].load(Ordering::Relaxed),
        seen[1].load(Ordering::Relaxed),
    );
    assert_eq!(v1 + v2, total);
    assert!(v1 > 0 && v2 > 0, "both versions served: {v1} and {v2}");
    // Removed: new calls get NOT_FOUND; installed again: served again.
    let (status, _) = admin(
        &host,
        reqwest::Method::DELETE,
        "/admin/v1/plugins/versioned",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(which(&host).await.0, StatusCode::NOT_FOUND);
    let (status, body) = install(&host, Some(OPERATOR), named(), fixture("fixture-v1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(which(&host).await.1["output"], json!({"version": 1}));
    // Every retired version has been released: what is loaded is what
    // serves (the bundled examples, the fixtures, and `versioned`).
    let runtime = host.host.runtime();
    let serving = host.host.plugins().list(None).len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.loaded_plugins() > serving && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        runtime.loaded_plugins(),
        serving,
        "retired versions still loaded"
    );
    assert_eq!(runtime.live_instances(), 0);
}

#[tokio::test]
async fn a_subscription_on_a_replaced_version_runs_out_its_grace_then_ends_unavailable() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| {
        with_operator(c, data.path());
        c.admin.grace_ms = 600;
    })
    .await;
    let named = Some(json!({ "name": "versioned" }));
    install(&host, Some(OPERATOR), named, fixture("fixture-v1")).await;
    let mut old = host
        .subscribe("versioned/count", json!({ "every_ms": 20 }))
        .await;
    let first = old.next().await.unwrap();
    assert_eq!(first.json()["version"], 1);
    let replaced_at = Instant::now();
    let (status, body) = replace(&host, "versioned", fixture("fixture-v2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The old subscription goes on, on the old version, for the grace
    // period; then it ends with a retryable UNAVAILABLE.
    let mut after = 0;
    let end = loop {
        let event = old
            .next()
            .await
            .expect("the subscription ends with an event");
        if event.event != "message" {
            break event;
        }
        assert_eq!(
            event.json()["version"],
            1,
            "the old version serves its subscriber"
        );
        after += 1;
    };
    assert!(after > 0, "items kept coming after the replace");
    assert!(replaced_at.elapsed() >= Duration::from_millis(600));
    assert_eq!(end.event, "error", "{end:?}");
    assert_eq!(end.json()["code"], "UNAVAILABLE");
    assert_eq!(end.json()["retryable"], true);
    let mut new = host
        .subscribe("versioned/count", json!({ "every_ms": 20 }))
        .await;
    assert_eq!(new.next().await.unwrap().json()["version"], 2);
}

/// `opbox serve` in `dir` with no examples, anonymous callers and the
/// operator's token.
pub fn serve_in(dir: &std::path::Path) -> Server {
    let config = format!(
        "listen = \"127.0.0.1:0\"\nexamples = false\ncache_dir = {:?}\n\n[[tenants]]\nid = \"default\"\nanonymous = true\n\n[[tenants.tokens]]\nid = \"operator\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
        crate::util::cache_dir(),
        hash_token_hex(OPERATOR)
    );
    Server::start_in(dir, &config)
}

#[tokio::test]
async fn installed_plugins_come_back_after_a_restart_even_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = serve_in(dir.path());
    let (status, body) = upload(
        &client,
        reqwest::Method::POST,
        format!("{}/admin/v1/plugins", server.url),
        Some(OPERATOR),
        Some(json!({ "name": "versioned" })),
        fixture("fixture-v1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Once the install is in the event feed, it stays there.
    let installed = loop {
        let events = events_of(&client, &server.url).await;
        if let Some(event) = events.iter().find(|e| e["kind"] == "plugin.installed") {
            break event.clone();
        }
        tokio::task::yield_now().await;
    };
    server.kill();
    let server = serve_in(dir.path());
    let answer = server.call(&client, "versioned/which", json!(null)).await;
    assert_eq!(answer["output"], json!({"version": 1}), "{answer}");
    let events = events_of(&client, &server.url).await;
    assert_eq!(events.first(), Some(&installed), "{events:?}");
}

/// The event feed of the host at `url`, as the operator reads it.
pub async fn events_of(client: &reqwest::Client, url: &str) -> Vec<Value> {
    events_after(client, url, None).await
}

/// [`events_of`], after `cursor` (all kept for `None`), up to 1,000.
pub async fn events_after(client: &reqwest::Client, url: &str, cursor: Option<u64>) -> Vec<Value> {
    let after = cursor.map_or(String::new(), |cursor| format!("&cursor={cursor}"));
    let page: Value = client
        .get(format!("{url}/admin/v1/events?limit=1000{after}"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .clone()
}

#[tokio::test]
async fn killed_during_an_install_or_a_replace_the_host_comes_back_with_the_old_version_or_the_new()
{
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let digests = [
        opbox::runtime::digest(&fixture("fixture-v1")),
        opbox::runtime::digest(&fixture("fixture-v2")),
    ];
    let server = serve_in(dir.path());
    let url = format!("{}/admin/v1/plugins", server.url);
    let named = Some(json!({ "name": "versioned" }));
    let (status, _) = upload(
        &client,
        reqwest::Method::POST,
        url,
        Some(OPERATOR),
        named,
        fixture("fixture-v1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut server = Some(server);
    // Kill the host at moments spread over a replace and an install: before
    // the upload is read, while the new version compiles, around the
    // commit, after.
    for round in 0..8u64 {
        let running = server.take().unwrap();
        // Forced: going back to version 1 removes an operation.
        let url = format!("{}/admin/v1/plugins/versioned?force=true", running.url);
        let next = if round % 2 == 0 {
            "fixture-v2"
        } else {
            "fixture-v1"
        };
        // Its answer may never come: the host dies under it.
        let replace = tokio::spawn(
            reqwest::Client::new()
                .put(url)
                .bearer_auth(OPERATOR)
                .body(fixture(next))
                .send(),
        );
        // And an install of a plugin of its own, in the same moments.
        let fresh = format!("fresh{round}");
        let install = tokio::spawn(
            reqwest::Client::new()
                .post(format!("{}/admin/v1/plugins", running.url))
                .bearer_auth(OPERATOR)
                .header("opbox-plugin", json!({ "name": fresh }).to_string())
                .body(fixture("fixture-v1"))
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(round * 40)).await;
        running.kill();
        let _ = replace.await;
        let _ = install.await;
        let restarted = serve_in(dir.path());
        // The install happened whole or not at all.
        let answer = restarted
            .call(&client, &format!("{fresh}/which"), json!(null))
            .await;
        assert!(
            answer["output"]["version"] == 1 || answer["error"]["code"] == "NOT_FOUND",
            "round {round}: {answer}"
        );
        let answer = restarted
            .call(&client, "versioned/which", json!(null))
            .await;
        let version = answer["output"]["version"].as_u64();
        assert!(matches!(version, Some(1 | 2)), "round {round}: {answer}");
        let shown: Value = client
            .get(format!("{}/admin/v1/plugins/versioned", restarted.url))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let version = usize::try_from(version.unwrap() - 1).unwrap();
        assert_eq!(
            shown["digest"], digests[version],
            "round {round}: the record and the code agree"
        );
        server = Some(restarted);
    }
}
