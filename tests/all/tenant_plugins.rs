//! A tenant managing its own plugins: within the allowance its operator
//! sets, never seeing another tenant's.

use opbox::HostConfig;
use opbox::capabilities::keyvalue::KeyvalueGrant;
use opbox::tenants::{
    KeyvalueAllowance, PluginAllowance, Quotas, TenantConfig, TokenConfig, hash_token_hex,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::admin::{OPERATOR, fixture, upload, with_operator};
use crate::util::TestHost;

const ACME: &str = "acme-dev-token";
const GLOBEX: &str = "globex-dev-token";

fn tenant(id: &str, token: &str, plugins: PluginAllowance) -> TenantConfig {
    TenantConfig {
        id: id.into(),
        anonymous: false,
        tokens: vec![TokenConfig {
            id: format!("{id}-dev"),
            sha256: hash_token_hex(token),
            scopes: vec!["plugins:write".into()],
        }],
        quotas: Quotas::default(),
        plugins,
    }
}

/// The operator, and two tenants whose developers may install: acme one
/// plugin, its CPU at most 500 ms a call, one outbound host; globex two.
fn configure(config: &mut HostConfig, data: &std::path::Path) {
    with_operator(config, data);
    let mut acme = PluginAllowance {
        max_plugins: 1,
        outbound_hosts: vec!["https://api.example.com".into()],
        ..PluginAllowance::default()
    };
    acme.limits.cpu_ms = Some(500);
    let globex = PluginAllowance {
        max_plugins: 2,
        ..PluginAllowance::default()
    };
    config.tenants.push(tenant("acme", ACME, acme));
    config.tenants.push(tenant("globex", GLOBEX, globex));
}

async fn send(
    host: &TestHost,
    method: Method,
    path: &str,
    token: &str,
    settings: Option<Value>,
    wasm: Option<&str>,
) -> (StatusCode, Value) {
    match wasm {
        Some(name) => {
            let url = host.url(path);
            upload(
                &host.client,
                method,
                url,
                Some(token),
                settings,
                fixture(name),
            )
            .await
        }
        None => {
            let response = host
                .client
                .request(method, host.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (response.status(), response.json().await.unwrap())
        }
    }
}

/// The rule a `FORBIDDEN` names.
fn rule(answer: &(StatusCode, Value)) -> (StatusCode, &str) {
    (
        answer.0,
        answer.1["error"]["details"]["rule"]
            .as_str()
            .unwrap_or("(none)"),
    )
}

#[tokio::test]
async fn a_tenant_installs_its_own_plugins_within_its_allowance() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| configure(c, data.path())).await;
    let named = Some(json!({ "name": "versioned" }));
    let plugins = "/admin/v1/plugins";

    let (status, body) = send(
        &host,
        Method::POST,
        plugins,
        ACME,
        named.clone(),
        Some("fixture-v1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["tenant"], "acme");
    // A limit it does not set is held to the tenant's ceiling.
    assert_eq!(body["limits"]["cpu_ms"], 500, "{body}");
    // Its own callers reach it; other tenants' do not know it exists.
    let (status, body) = host.call_as(ACME, "versioned/which", json!(null)).await;
    assert_eq!(
        (status, &body["output"]["version"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    assert_eq!(
        host.call_as(GLOBEX, "versioned/which", json!(null)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        host.call("versioned/which", json!(null)).await.0,
        StatusCode::NOT_FOUND
    );

    // Beyond the allowance: refused, the rule named, nothing changed.
    let second = Some(json!({ "name": "second" }));
    let answer = send(
        &host,
        Method::POST,
        plugins,
        ACME,
        second,
        Some("fixture-v2"),
    )
    .await;
    assert_eq!(
        rule(&answer),
        (StatusCode::FORBIDDEN, "max_plugins"),
        "{}",
        answer.1
    );
    let mine = "/admin/v1/plugins/versioned";
    for (settings, broken) in [
        (json!({ "limits": { "cpu_ms": 1000 } }), "limits.cpu_ms"),
        (json!({ "grants": { "keyvalue": {} } }), "grants.keyvalue"),
        (json!({ "reuse": {} }), "reuse"),
        (
            json!({ "grants": { "directory": { "path": "/" } } }),
            "grants.directory",
        ),
        (
            json!({ "grants": { "allowed_outbound_hosts": ["https://evil.example.com"] } }),
            "grants.allowed_outbound_hosts",
        ),
        (
            json!({ "grants": { "allowed_outbound_hosts": ["https://api.example.com"], "outbound_allow_internal": true } }),
            "grants.outbound_allow_internal",
        ),
    ] {
        let answer = send(
            &host,
            Method::PUT,
            mine,
            ACME,
            Some(settings),
            Some("fixture-v2"),
        )
        .await;
        assert_eq!(
            rule(&answer),
            (StatusCode::FORBIDDEN, broken),
            "{}",
            answer.1
        );
    }
    assert_eq!(
        host.call_as(ACME, "versioned/which", json!(null)).await.1["output"]["version"],
        1
    );
    // Within it: a new version, with a grant it may give.
    let settings = json!({ "grants": { "allowed_outbound_hosts": ["https://api.example.com"] } });
    let (status, body) = send(
        &host,
        Method::PUT,
        mine,
        ACME,
        Some(settings),
        Some("fixture-v2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        host.call_as(ACME, "versioned/which", json!(null)).await.1["output"]["version"],
        2
    );

    // What the configuration declares is not a tenant's to change: to it,
    // a shared plugin's name is no plugin of its own.
    let (status, _) = send(
        &host,
        Method::DELETE,
        "/admin/v1/plugins/echo",
        ACME,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        host.call_as(ACME, "echo/echo", json!(1)).await.0,
        StatusCode::OK
    );

    // The operator is held to no allowance, sees every tenant's plugins,
    // and manages any of them.
    let (_, listed) = send(
        &host,
        Method::GET,
        "/admin/v1/plugins",
        OPERATOR,
        None,
        None,
    )
    .await;
    assert!(
        listed["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["tenant"] == "acme"),
        "{listed}"
    );
    let (status, body) = send(
        &host,
        Method::GET,
        "/admin/v1/plugins/versioned?tenant=acme",
        OPERATOR,
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, &body["tenant"]),
        (StatusCode::OK, &json!("acme")),
        "{body}"
    );
    let (status, body) = send(
        &host,
        Method::DELETE,
        "/admin/v1/plugins/versioned?tenant=acme",
        OPERATOR,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        host.call_as(ACME, "versioned/which", json!(null)).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn another_tenants_plugins_read_as_missing_on_every_route() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| configure(c, data.path())).await;
    let named = Some(json!({ "name": "versioned" }));
    let (status, body) = send(
        &host,
        Method::POST,
        "/admin/v1/plugins",
        ACME,
        named,
        Some("fixture-v1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // What globex's developer gets for acme's plugin, and for a name no one
    // uses, is the same but for the name.
    let missing = |body: &Value, name: &str| {
        let message = body["error"]["message"]
            .as_str()
            .unwrap()
            .replace(name, "NAME");
        (body["error"]["code"].clone(), message)
    };
    for (method, wasm) in [
        (Method::GET, None),
        (Method::PUT, Some("fixture-v2")),
        (Method::DELETE, None),
    ] {
        for path in ["/admin/v1/plugins/{}", "/admin/v1/plugins/{}?tenant=acme"] {
            let theirs = send(
                &host,
                method.clone(),
                &path.replace("{}", "versioned"),
                GLOBEX,
                None,
                wasm,
            )
            .await;
            let nobodys = send(
                &host,
                method.clone(),
                &path.replace("{}", "nosuch"),
                GLOBEX,
                None,
                wasm,
            )
            .await;
            assert_eq!(
                theirs.0,
                StatusCode::NOT_FOUND,
                "{method} {path}: {}",
                theirs.1
            );
            assert_eq!(
                nobodys.0,
                StatusCode::NOT_FOUND,
                "{method} {path}: {}",
                nobodys.1
            );
            assert_eq!(
                missing(&theirs.1, "versioned"),
                missing(&nobodys.1, "nosuch"),
                "{method} {path}"
            );
        }
    }
    // Its list has its own and the shared plugins; nothing of acme's.
    let (status, body) = send(&host, Method::GET, "/admin/v1/plugins", GLOBEX, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains("acme"), "{body}");
    assert!(body.to_string().contains("\"echo\""), "{body}");
    // An install for another tenant reads like one for a tenant that does
    // not exist.
    let settings = Some(json!({ "name": "sneaky" }));
    let url = |t: &str| host.url(&format!("/admin/v1/plugins?tenant={t}"));
    let (theirs, nobodys) = (
        upload(
            &host.client,
            Method::POST,
            url("acme"),
            Some(GLOBEX),
            settings.clone(),
            fixture("fixture-v1"),
        )
        .await,
        upload(
            &host.client,
            Method::POST,
            url("nosuch"),
            Some(GLOBEX),
            settings,
            fixture("fixture-v1"),
        )
        .await,
    );
    assert_eq!(theirs.0, nobodys.0);
    assert_eq!(
        theirs.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("acme", "T"),
        nobodys.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("nosuch", "T")
    );
    assert_eq!(
        host.call_as(ACME, "versioned/which", json!(null)).await.1["output"]["version"],
        1
    );
}

/// A tenant whose developers may install four plugins, `keyvalue` up to
/// 1 MiB and 1,000 keys, and no limit ceiling of its own: the host's
/// defaults are its ceilings.
fn open_tenant(config: &mut HostConfig, data: &std::path::Path) {
    with_operator(config, data);
    let allowance = PluginAllowance {
        max_plugins: 4,
        keyvalue: KeyvalueAllowance::UpTo(KeyvalueGrant {
            max_bytes: 1 << 20,
            max_keys: 1000,
        }),
        ..PluginAllowance::default()
    };
    config.tenants.push(tenant("acme", ACME, allowance));
}

#[tokio::test]
async fn every_grant_and_limit_a_tenant_asks_for_is_bounded_by_the_operator() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| open_tenant(c, data.path())).await;
    let plugins = "/admin/v1/plugins";
    let huge = u64::MAX;
    for (settings, broken) in [
        (
            json!({ "grants": { "keyvalue": { "max_bytes": huge, "max_keys": 10 } } }),
            "grants.keyvalue.max_bytes",
        ),
        (
            json!({ "grants": { "keyvalue": { "max_bytes": 1024, "max_keys": huge } } }),
            "grants.keyvalue.max_keys",
        ),
        // No ceiling in the allowance: the host's default is one.
        (
            json!({ "limits": { "cpu_ms": 1_000_000_000_u64 } }),
            "limits.cpu_ms",
        ),
        (
            json!({ "limits": { "memory_bytes": 1_u64 << 40 } }),
            "limits.memory_bytes",
        ),
        (
            json!({ "grants": { "outbound_max_response_bytes": 1_u64 << 60 } }),
            "grants.outbound_max_response_bytes",
        ),
        (
            json!({ "grants": { "outbound_max_requests": 100_000 } }),
            "grants.outbound_max_requests",
        ),
    ] {
        let answer = send(
            &host,
            Method::POST,
            plugins,
            ACME,
            Some(settings),
            Some("kv"),
        )
        .await;
        assert_eq!(
            rule(&answer),
            (StatusCode::FORBIDDEN, broken),
            "{}",
            answer.1
        );
    }
    // Within every ceiling, and lower than the defaults: installed.
    let settings = json!({
        "grants": { "keyvalue": { "max_bytes": 1024, "max_keys": 10 } },
        "limits": { "cpu_ms": 100 },
    });
    let (status, body) = send(
        &host,
        Method::POST,
        plugins,
        ACME,
        Some(settings),
        Some("kv"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["grants"]["keyvalue"]["max_bytes"], 1024, "{body}");
}

#[tokio::test]
async fn names_are_bounded_on_every_route_and_so_is_what_the_feed_keeps() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| open_tenant(c, data.path())).await;
    let long = "n".repeat(100_000);
    // As the upload's setting …
    let (status, body) = send(
        &host,
        Method::POST,
        "/admin/v1/plugins",
        ACME,
        Some(json!({ "name": "n".repeat(20_000) })),
        Some("echo"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.to_string().len() < 2048,
        "{} bytes",
        body.to_string().len()
    );
    // … as a call's input …
    let wasm = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, fixture("echo"));
    for input in [
        json!({ "name": long, "wasm_base64": wasm }),
        json!({ "name": "fine", "tenant": long, "wasm_base64": wasm }),
    ] {
        let response = host
            .client
            .post(host.url("/call"))
            .bearer_auth(ACME)
            .json(&json!({ "operation": "admin/install", "input": input }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = response.json().await.unwrap();
        assert!(
            body.to_string().len() < 2048,
            "{} bytes",
            body.to_string().len()
        );
    }
    // … and in a path: a name nobody can install is one nobody can ask for.
    let path = format!("/admin/v1/plugins/{}", "n".repeat(300));
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = send(&host, method, &path, ACME, None, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    // The longest name there may be installs, and everything said of it
    // stays small.
    let longest = "n".repeat(opbox::call::MAX_SEGMENT_BYTES);
    let (status, body) = send(
        &host,
        Method::POST,
        "/admin/v1/plugins",
        ACME,
        Some(json!({ "name": longest })),
        Some("echo"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &host,
        Method::DELETE,
        &format!("/admin/v1/plugins/{longest}"),
        ACME,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = crate::events::read_all(&host, OPERATOR, 2).await;
    for event in &events {
        assert!(event.to_string().len() < 4096, "{event}");
    }
}

#[tokio::test]
async fn a_refusal_never_quotes_a_secret() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| open_tenant(c, data.path())).await;
    let secret = "hunter2-do-not-repeat";
    // A secret where a table of them belongs, and where a value belongs.
    for grants in [
        json!({ "secrets": secret }),
        json!({ "secrets": { "token": { "value": secret } } }),
        json!({ "config": secret }),
    ] {
        let (status, body) = send(
            &host,
            Method::POST,
            "/admin/v1/plugins",
            OPERATOR,
            Some(json!({ "grants": grants })),
            Some("echo"),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(!body.to_string().contains(secret), "{body}");
    }
    // The same through `/call`, where the operation's schema refuses it.
    let wasm = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, fixture("echo"));
    let (status, body) = host
        .call_as(
            OPERATOR,
            "admin/install",
            json!({ "wasm_base64": wasm, "grants": { "config": secret } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!body.to_string().contains(secret), "{body}");
    // Whatever the feed recorded of it all, up to an install that works.
    let (status, body) = send(
        &host,
        Method::POST,
        "/admin/v1/plugins",
        OPERATOR,
        Some(json!({ "name": "mine" })),
        Some("echo"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let events = crate::events::read_all(&host, OPERATOR, 1).await;
    assert!(
        events.iter().all(|e| !e.to_string().contains(secret)),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_tenants_compiled_code_counts_against_its_bytes() {
    let data = tempfile::tempdir().unwrap();
    let echo = fixture("echo").len() as u64;
    let host = TestHost::with_config(|c| {
        with_operator(c, data.path());
        // Room for the component, not for its compiled code too.
        let allowance = PluginAllowance {
            max_plugins: 2,
            max_bytes: echo + 1024,
            ..PluginAllowance::default()
        };
        c.tenants.push(tenant("acme", ACME, allowance));
    })
    .await;
    let answer = send(
        &host,
        Method::POST,
        "/admin/v1/plugins",
        ACME,
        Some(json!({ "name": "mine" })),
        Some("echo"),
    )
    .await;
    assert_eq!(
        rule(&answer),
        (StatusCode::FORBIDDEN, "max_bytes"),
        "{}",
        answer.1
    );
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("compiled code"),
        "{}",
        answer.1
    );
}
