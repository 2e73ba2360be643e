//! What a caller or a plugin can make the host spend around the guest:
//! errors as large as outputs, nested calls, log lines, key-value bytes,
//! manifests and schemas, shared plugins, the host's own error codes.

use std::time::Duration;

use opbox::capabilities::Grants;
use opbox::capabilities::keyvalue::KeyvalueGrant;
use opbox::config::PluginConfig;
use opbox::{Host, HostConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::TestHost;

/// An error of `bytes` bytes from `hostile-edge/error`.
fn huge_error(message_bytes: usize, details_bytes: usize) -> Value {
    json!({"code": "HUGE", "message_bytes": message_bytes, "details_bytes": details_bytes})
}

#[tokio::test]
async fn errors_are_held_to_output_bytes_like_outputs() {
    let host =
        TestHost::with_config(|config| config.plugin_limits.output_bytes = Some(1 << 20)).await;
    for failure in [huge_error(2 << 20, 0), huge_error(10, 2 << 20)] {
        let (status, body) = host.call("hostile-edge/error", failure).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            body["error"]["code"]
        );
        assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(
            body["error"]["details"],
            json!({"limit": "output_bytes", "value": 1 << 20})
        );
    }
    // Within the limit, the plugin's error goes out as it made it.
    let (status, body) = host
        .call("hostile-edge/error", huge_error(1000, 1000))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "HUGE");
    assert_eq!(body["error"]["message"].as_str().unwrap().len(), 1000);

    // The same for the error that ends a subscription.
    let input = json!({"ok": 1, "failure": huge_error(2 << 20, 0)});
    let events = host
        .subscribe("hostile-edge/error-stream", input)
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].json(), json!(0));
    assert_eq!(events[1].event, "error");
    assert_eq!(events[1].json()["details"]["limit"], "output_bytes");
}

#[tokio::test]
async fn a_plugin_cannot_speak_with_the_hosts_codes() {
    let host = TestHost::start().await;
    for code in ["UNAUTHORIZED", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"] {
        let (status, body) = host.call("hostile-edge/error", json!({"code": code})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{code}: {body}");
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["retryable"], false, "{code}");
    }
    // A plugin's "retry after" is the plugin's business: no Retry-After.
    let response = host
        .client
        .post(host.url("/call"))
        .json(&json!({"operation": "hostile-edge/error",
            "input": {"code": "RESOURCE_EXHAUSTED", "retry_after_ms": 1_000_000_000_000u64}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn fatal_reports_count_against_log_lines() {
    let host = TestHost::start().await;
    let (status, body) = host.call("hostile-edge/fatal-flood", json!(5000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, info) = host
        .call("services/plugin", json!({"name": "hostile-edge"}))
        .await;
    assert_eq!(info["output"]["dropped_log_lines"], 4000);
}

#[tokio::test]
async fn nested_calls_are_capped_per_call_and_held_to_the_wire_size() {
    let host = TestHost::with_config(|config| config.limits.max_nested_calls = 4).await;
    let fan_out = json!({"operation": "fixture-slow/sleep", "input": {"ms": 500}, "count": 10});
    let (status, body) = host.call("hostile-edge/fan-out", fan_out).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = &body["output"];
    assert_eq!(out["ok"], 4, "{out}");
    assert_eq!(out["errors"], json!(vec!["RESOURCE_EXHAUSTED"; 6]));
    assert_eq!(out["limit"], "max_nested_calls");

    // Once they are done, the call's places come back.
    let fan_out = json!({"operation": "echo/echo", "input": 1, "count": 4});
    let (_, body) = host.call("hostile-edge/fan-out", fan_out).await;
    assert_eq!(body["output"]["ok"], 4, "{body}");

    // An input over the wire's body limit is refused before it is parsed.
    let (status, body) = host.call("hostile-edge/big-input", json!(2 << 20)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    assert_eq!(body["error"]["details"]["limit"], "max_input_bytes");
    let (status, body) = host.call("hostile-edge/big-input", json!(1000)).await;
    assert_eq!((status, &body["output"]), (StatusCode::OK, &json!(1000)));
}

#[tokio::test]
async fn bucket_names_count_toward_the_keyvalue_quota() {
    let db = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|config| {
        config.keyvalue_path = Some(db.path().join("kv.redb"));
        let edge = config
            .plugins
            .iter_mut()
            .find(|p| p.path.ends_with("hostile_edge.wasm"))
            .unwrap();
        edge.grants = Grants {
            keyvalue: Some(KeyvalueGrant {
                max_bytes: 64 << 10,
                max_keys: 100_000,
            }),
            ..Grants::default()
        };
    })
    .await;
    // Empty keys in a bucket with a 200-byte name: each costs its bucket's
    // name, so 1,000 of them do not fit in 64 KiB (their keys alone would).
    let (status, body) = host
        .call(
            "hostile-edge/bucket",
            json!({"name_bytes": 200, "keys": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "KEYVALUE_QUOTA");
    // A name over the limit is refused outright.
    let (_, body) = host
        .call(
            "hostile-edge/bucket",
            json!({"name_bytes": 1 << 20, "keys": 1}),
        )
        .await;
    assert_eq!(body["error"]["code"], "KEYVALUE_FAILED", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bucket name"),
        "{body}"
    );
}

/// Starting a host with the plugin `name` besides the examples: the error.
async fn refused_at_load(name: &str) -> String {
    let config = HostConfig {
        data_dir: crate::util::data_dir(),
        cache_dir: Some(crate::util::cache_dir()),
        plugins: vec![PluginConfig {
            path: opbox::bundled::built_plugin(name),
            reuse: None,
            name: None,
            tenant: None,
            grants: Default::default(),
            limits: Default::default(),
        }],
        ..HostConfig::demo()
    };
    let started = tokio::time::timeout(Duration::from_secs(60), Host::start(config));
    match started
        .await
        .expect("refused in time, not after validating")
    {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn schemas_that_make_validation_explode_are_refused_at_load() {
    let error = refused_at_load("hostile-schema").await;
    assert!(error.contains("max_schema_expansion"), "{error}");
    assert!(error.contains("`check`"), "{error}");
}

#[tokio::test]
async fn a_plugin_declaring_thousands_of_operations_is_refused() {
    let error = refused_at_load("hostile-manifest").await;
    assert!(error.contains("10000 operations"), "{error}");
    assert!(error.contains("max_operations = 256"), "{error}");
}

#[tokio::test]
async fn each_tenant_has_its_own_share_of_a_shared_plugin() {
    let host = TestHost::with_config(|config| {
        crate::util::two_tenants(config);
        let slow = config
            .plugins
            .iter_mut()
            .find(|p| p.path.ends_with("fixture_slow.wasm"))
            .unwrap();
        slow.limits.max_instances = Some(2);
    })
    .await;
    let slow = |token: &'static str| {
        let (client, url) = (host.client.clone(), host.url("/call"));
        tokio::spawn(async move {
            crate::util::call_as(
                &client,
                &url,
                token,
                "fixture-slow/sleep",
                json!({"ms": 2000}),
            )
            .await
        })
    };
    let held = [slow("acme"), slow("acme")];
    let host = &host;
    let usage = |token: &'static str| async move {
        let (_, body) = host
            .call_as(token, "services/plugin", json!({"name": "fixture-slow"}))
            .await;
        body["output"]["live_instances"].as_u64().unwrap()
    };
    while usage("acme").await < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // acme's share is full; globex's is untouched, and globex sees only
    // its own usage.
    let (status, body) = host
        .call_as("acme", "fixture-slow/sleep", json!({"ms": 1}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["details"]["limit"], "max_instances");
    assert_eq!(usage("globex").await, 0);
    let (status, body) = host
        .call_as("globex", "fixture-slow/sleep", json!({"ms": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for call in held {
        assert_eq!(call.await.unwrap().0, StatusCode::OK);
    }
}

#[tokio::test]
async fn the_openapi_document_follows_the_plugins_loaded() {
    let host = TestHost::start().await;
    let (_, before) = host.get("/openapi.json").await;
    let (_, again) = host.get("/openapi.json").await;
    assert_eq!(before, again);
    assert!(!before.to_string().contains("mirror/echo"));
    let wasm = std::fs::read(opbox::bundled::built_plugin("echo")).unwrap();
    let options = opbox::runtime::LoadOptions {
        name: Some("mirror".into()),
        ..Default::default()
    };
    host.host
        .install(&wasm, options, &opbox::registry::Owner::Shared, "test")
        .await
        .unwrap();
    let (_, after) = host.get("/openapi.json").await;
    assert!(after.to_string().contains("mirror/echo"));
}

/// `burn/spin`: a native operation that keeps its worker busy for `ms`
/// milliseconds, in one poll, as host work for a call would.
fn burn() -> opbox::dispatch::Operation {
    use futures::FutureExt;
    use opbox::call::{AccessControl, OpType, OperationSpec, Visibility};
    use opbox::dispatch::{Handler, Operation};
    Operation::compile(
        OperationSpec {
            name: "burn/spin".into(),
            op_type: OpType::Query,
            visibility: Visibility::External,
            description: "Spins for `ms` milliseconds.".into(),
            input_schema: json!({"type": "integer"}),
            output_schema: json!(true),
            access_control: AccessControl::default(),
        },
        Handler::NativeOnce(std::sync::Arc::new(|_, input: Value| {
            async move {
                let until =
                    std::time::Instant::now() + Duration::from_millis(input.as_u64().unwrap_or(0));
                while std::time::Instant::now() < until {}
                Ok(json!(null))
            }
            .boxed()
        })),
    )
    .unwrap()
}

#[tokio::test]
async fn nested_native_work_is_charged_to_the_calling_plugins_cpu_ms() {
    let host = TestHost::with_config(|config| config.plugin_limits.cpu_ms = Some(100)).await;
    host.host
        .dispatcher()
        .registry()
        .insert_namespace(&opbox::registry::Owner::Shared, "burn", vec![burn()])
        .unwrap();
    // Sixteen nested calls of 50 ms of host work each: 800 ms, eight times
    // the calling plugin's `cpu_ms`.
    let fan_out = json!({"operation": "burn/spin", "input": 50, "count": 16});
    let response = host
        .client
        .post(host.url("/call"))
        .json(&json!({"operation": "hostile-edge/fan-out", "input": fan_out}))
        .send()
        .await
        .unwrap();
    let cost: Value = serde_json::from_slice(response.headers()["opbox-cost"].as_bytes()).unwrap();
    let body: Value = response.json().await.unwrap();
    // The call meets its budget: nested calls past it are refused with the
    // `cpu_ms` limit, and the guest itself is stopped at its next epoch
    // check (which a starved epoch thread may leave until after it has
    // answered). Either way the host ran no more than the budget and the
    // calls under way when it ran out (one per worker).
    let limit = match body["result"].as_str() {
        Some("ok") => &body["output"]["limit"],
        _ => &body["error"]["details"]["limit"],
    };
    assert_eq!(limit, "cpu_ms", "{body}");
    let host_cpu_ms = cost["host_cpu_us"].as_u64().unwrap() / 1000;
    assert!(
        (100..400).contains(&host_cpu_ms),
        "{host_cpu_ms} ms of host work for a call of 100 ms: {cost}"
    );
    // A plugin within its budget is not held back.
    let fan_out = json!({"operation": "burn/spin", "input": 1, "count": 4});
    let (status, body) = host.call("hostile-edge/fan-out", fan_out).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["ok"], 4, "{body}");
}
