//! Instance reuse where the operator allows it (`[plugins.reuse]`): one
//! instance serves a tenant's calls one after another, never another
//! tenant's, and is dropped after a trap, a deadline, its share of calls or
//! its memory high-water mark.

use std::time::Duration;

use opbox::config::PluginConfig;
use opbox::runtime::ReuseConfig;
use opbox::tenants::{Quotas, TenantConfig, TokenConfig, hash_token_hex};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::TestHost;

const ACME: &str = "opbox_test_reuse_acme";
const GLOBEX: &str = "opbox_test_reuse_globex";

/// `file` mounted as `name`, its instances reused as `reuse` says.
fn reused(file: &str, name: &str, reuse: ReuseConfig) -> PluginConfig {
    PluginConfig {
        path: opbox::bundled::built_plugin(file),
        reuse: Some(reuse),
        name: Some(name.into()),
        tenant: None,
        grants: Default::default(),
        limits: Default::default(),
    }
}

/// The fixtures, and `fixture-panic` again as `reused` with `reuse`.
async fn host(reuse: ReuseConfig) -> TestHost {
    TestHost::with_config(|config| {
        config
            .plugins
            .push(reused("fixture-panic", "reused", reuse));
    })
    .await
}

/// What `operation` answered with `input`; the call must succeed.
async fn output(host: &TestHost, operation: &str, input: Value) -> Value {
    let (status, body) = host.call(operation, input).await;
    assert_eq!(status, StatusCode::OK, "{operation}: {body}");
    body["output"].clone()
}

/// The answers of `n` calls of `operation`, one after another.
async fn tallies(host: &TestHost, operation: &str, n: usize) -> Vec<Value> {
    let mut answers = Vec::new();
    for _ in 0..n {
        answers.push(output(host, operation, json!(null)).await);
    }
    answers
}

#[tokio::test]
async fn a_reused_instance_serves_calls_one_after_another() {
    let host = host(ReuseConfig::default()).await;
    assert_eq!(tallies(&host, "reused/tally", 3).await, [1, 2, 3]);
    // The same plugin without reuse: a fresh instance every call.
    assert_eq!(tallies(&host, "fixture-panic/tally", 3).await, [1, 1, 1]);
    // An idle instance stays alive between calls.
    assert_eq!(host.host.runtime().live_instances(), 1);
}

#[tokio::test]
async fn an_instance_is_retired_after_its_calls_and_at_its_age() {
    let reuse = ReuseConfig {
        max_calls: 2,
        ..ReuseConfig::default()
    };
    let host = host(reuse).await;
    assert_eq!(tallies(&host, "reused/tally", 5).await, [1, 2, 1, 2, 1]);
    let young = ReuseConfig {
        max_age_ms: 0,
        ..ReuseConfig::default()
    };
    let host = self::host(young).await;
    assert_eq!(tallies(&host, "reused/tally", 2).await, [1, 1]);
}

#[tokio::test]
async fn a_trap_drops_the_instance_and_the_next_call_gets_a_fresh_one() {
    let host = host(ReuseConfig::default()).await;
    assert_eq!(tallies(&host, "reused/tally", 2).await, [1, 2]);
    let (status, body) = host.call("reused/boom", json!("down it goes")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "PLUGIN_FAILED");
    assert_eq!(tallies(&host, "reused/tally", 2).await, [1, 2]);
}

#[tokio::test]
async fn an_instance_past_its_memory_high_water_mark_is_dropped_after_its_call() {
    let reuse = ReuseConfig {
        max_memory_bytes: 8 << 20,
        ..ReuseConfig::default()
    };
    let host = host(reuse).await;
    assert_eq!(output(&host, "reused/hold", json!({"mib": 1})).await, 1);
    assert_eq!(output(&host, "reused/hold", json!({"mib": 1})).await, 2);
    // Past the mark: the call still answers, then its instance goes.
    assert_eq!(output(&host, "reused/hold", json!({"mib": 8})).await, 3);
    assert_eq!(output(&host, "reused/tally", json!(null)).await, 1);
    // `memory_bytes` (64 MiB) bounds what a reused instance holds in all:
    // memory kept across calls counts against every later call.
    let roomy = ReuseConfig {
        max_memory_bytes: 1 << 30,
        ..ReuseConfig::default()
    };
    let host = self::host(roomy).await;
    assert_eq!(output(&host, "reused/hold", json!({"mib": 15})).await, 1);
    let (status, body) = host.call("reused/hold", json!({"mib": 50})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["details"]["limit"], "memory_bytes");
}

#[tokio::test]
async fn a_call_cut_off_by_its_deadline_takes_its_instance_with_it() {
    let host = TestHost::with_config(|config| {
        config
            .plugins
            .push(reused("fixture-slow", "slow", ReuseConfig::default()));
    })
    .await;
    assert_eq!(output(&host, "slow/sleep", json!({"ms": 1})).await, 1);
    assert_eq!(host.host.runtime().live_instances(), 1);
    let (status, body) = host
        .post(
            "/call",
            &json!({"operation": "slow/sleep", "input": {"ms": 10_000}, "deadline_ms": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    // The idle instance served the call that timed out, and went with it.
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
    assert_eq!(output(&host, "slow/sleep", json!({"ms": 1})).await, 1);
}

fn tenant(id: &str, secret: &str) -> TenantConfig {
    TenantConfig {
        id: id.into(),
        anonymous: false,
        tokens: vec![TokenConfig {
            id: id.into(),
            sha256: hash_token_hex(secret),
            scopes: Vec::new(),
        }],
        quotas: Quotas::default(),
        plugins: Default::default(),
    }
}

#[tokio::test]
async fn tenants_never_share_an_instance() {
    let host = TestHost::with_config(|config| {
        config.tenants = vec![tenant("acme", ACME), tenant("globex", GLOBEX)];
        config.plugins = vec![reused("fixture-panic", "reused", ReuseConfig::default())];
    })
    .await;
    let tally = async |token: &str| {
        let (status, body) = host.call_as(token, "reused/tally", json!(null)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["output"].clone()
    };
    assert_eq!(tally(ACME).await, 1);
    assert_eq!(tally(ACME).await, 2);
    assert_eq!(tally(GLOBEX).await, 1);
    assert_eq!(tally(ACME).await, 3);
    assert_eq!(tally(GLOBEX).await, 2);
}

#[test]
fn plugins_reuse_is_read_from_the_configuration_with_defaults_for_what_it_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opbox.toml");
    let write = |reuse: &str| {
        let text = format!("[[plugins]]\npath = \"echo.wasm\"\n[plugins.reuse]\n{reuse}");
        std::fs::write(&path, text).unwrap();
    };
    write("max_calls = 50\n");
    let config = opbox::HostConfig::load(&path).unwrap();
    let reuse = config.plugins[0].reuse.clone().unwrap();
    assert_eq!(
        reuse,
        ReuseConfig {
            max_calls: 50,
            ..ReuseConfig::default()
        }
    );
    write("max_cals = 50\n");
    let error = opbox::HostConfig::load(&path).unwrap_err().to_string();
    assert!(error.contains("max_cals"), "{error}");
    // Without the section, every call gets a fresh instance.
    std::fs::write(&path, "[[plugins]]\npath = \"echo.wasm\"\n").unwrap();
    assert_eq!(
        opbox::HostConfig::load(&path).unwrap().plugins[0].reuse,
        None
    );
}

/// `fixture-panic` installed over HTTP by the operator, with `settings`.
async fn install_as_operator(host: &TestHost, settings: Value) -> (StatusCode, Value) {
    use crate::admin::{OPERATOR, fixture, install};
    install(
        host,
        Some(OPERATOR),
        Some(settings),
        fixture("fixture-panic"),
    )
    .await
}

#[tokio::test]
async fn the_operator_allows_reuse_for_a_plugin_installed_over_http() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| crate::admin::with_operator(c, data.path())).await;
    let settings = json!({ "name": "uploaded", "reuse": { "max_calls": 2 } });
    let (status, body) = install_as_operator(&host, settings).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["reuse"]["max_calls"], 2, "{body}");
    assert_eq!(tallies(&host, "uploaded/tally", 3).await, [1, 2, 1]);

    // An unknown field is refused, as in the config file.
    let settings = json!({ "name": "typo", "reuse": { "max_cals": 2 } });
    let (status, body) = install_as_operator(&host, settings).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("INVALID_INPUT")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_cals"), "{body}");
}
