//! A tenant managing its own plugins: within the allowance its operator
//! sets, never seeing another tenant's.

use opbox::HostConfig;
use opbox::tenants::{PluginAllowance, Quotas, TenantConfig, TokenConfig, hash_token_hex};
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
