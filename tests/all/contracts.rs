//! Every host operation answers what its published schema says: the
//! schema an MCP client checks a tool's result against, and the OpenAPI
//! document's. Each is derived from the operation's types, so a field
//! added to an answer and not to its type cannot ship.

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::admin::{OPERATOR, fixture, with_operator};
use crate::util::TestHost;

/// The output schema `services/schema` publishes for `operation`.
pub(crate) async fn output_schema(host: &TestHost, operation: &str) -> Value {
    let (status, spec) = host
        .call_as(OPERATOR, "services/schema", json!({ "name": operation }))
        .await;
    assert_eq!(status, StatusCode::OK, "{spec}");
    spec["output"]["output_schema"].clone()
}

/// Panics, naming every violation, unless `output` meets `schema`.
pub(crate) fn assert_meets(schema: &Value, output: &Value, what: &str) {
    let validator = jsonschema::validator_for(schema)
        .unwrap_or_else(|e| panic!("{what}: the published schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(output)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} answered outside its schema: {errors:?}\nanswer: {output}\nschema: {schema}"
    );
}

/// Calls `operation` as the operator and checks its answer against the
/// schema the host publishes for it; returns the answer.
async fn call_checked(host: &TestHost, operation: &str, input: Value) -> Value {
    let (status, body) = host.call_as(OPERATOR, operation, input).await;
    assert_eq!(status, StatusCode::OK, "{operation}: {body}");
    let output = body["output"].clone();
    assert_meets(&output_schema(host, operation).await, &output, operation);
    output
}

#[tokio::test]
async fn every_host_operation_answers_within_its_published_schema() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| with_operator(c, data.path())).await;
    let wasm = |name: &str| base64::engine::general_purpose::STANDARD.encode(fixture(name));

    let installed = call_checked(
        &host,
        "admin/install",
        json!({ "name": "versioned", "wasm_base64": wasm("fixture-v1"),
                "limits": { "cpu_ms": 500 } }),
    )
    .await;
    assert_eq!(installed["name"], "versioned");
    call_checked(
        &host,
        "admin/replace",
        json!({ "name": "versioned", "wasm_base64": wasm("fixture-v2"), "force": true }),
    )
    .await;
    // A call, so the plugin has a log line or none, and usage to show.
    host.call("echo/echo", json!({ "hi": 1 })).await;
    let listed = call_checked(&host, "admin/list", Value::Null).await;
    assert!(listed["plugins"].as_array().unwrap().len() > 1, "{listed}");
    call_checked(&host, "admin/show", json!({ "name": "versioned" })).await;
    call_checked(&host, "admin/logs", json!({ "name": "echo" })).await;
    let operations = call_checked(&host, "services/list", json!({ "q": "echo" })).await;
    assert!(!operations["operations"].as_array().unwrap().is_empty());
    let spec = call_checked(&host, "services/schema", json!({ "name": "echo/echo" })).await;
    assert_eq!(spec["name"], "echo/echo");
    let usage = call_checked(&host, "services/plugin", json!({ "name": "echo" })).await;
    assert_eq!(usage["name"], "echo");
    call_checked(&host, "services/openapi", Value::Null).await;
    // Every kind of event this host recorded: installed, replaced, removed.
    call_checked(&host, "admin/remove", json!({ "name": "versioned" })).await;
    let page = loop {
        let page = call_checked(&host, "admin/events", json!({ "limit": 1000 })).await;
        if page["events"].as_array().unwrap().len() >= 3 {
            break page;
        }
        // The feed commits a moment after the change.
        let mut live = host.host.plugins().events().follow();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), live.recv()).await;
    };
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["plugin.installed", "plugin.replaced", "plugin.removed"],
        "{page}"
    );
    let replaced = &page["events"][1]["detail"];
    assert_eq!(
        replaced["from"]["digest"], installed["digest"],
        "{replaced}"
    );
    assert_eq!(replaced["forced"], true, "{replaced}");

    // An input outside the schema is refused before the operation runs,
    // in the same words on every operation.
    for (operation, input) in [
        (
            "services/schema",
            json!({ "name": "echo/echo", "extra": 1 }),
        ),
        ("services/plugin", json!({})),
        ("services/openapi", json!({ "x": 1 })),
        ("admin/events", json!({ "limit": 0 })),
    ] {
        let (status, body) = host.call_as(OPERATOR, operation, input).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{operation}: {body}"
        );
        assert_eq!(
            body["error"]["code"], "INVALID_INPUT",
            "{operation}: {body}"
        );
    }
}
