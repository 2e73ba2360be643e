//! Operations calling operations: composition, internal visibility, the
//! depth limit, inherited deadlines and aborts that reach every level.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::util::{Frames, TestHost};

#[tokio::test]
async fn an_operation_composes_others() {
    let host = TestHost::start().await;
    let (status, body) = host
        .call("textkit/summary", json!({"text": "the cat\nthe hat"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let output = &body["output"];
    assert_eq!(output["summary"], "4 words on 2 lines; mostly \"the\"");
    assert_eq!(output["stats"]["words"], 4);
    let (_, body) = host.call("textkit/summary", json!({"text": "one"})).await;
    assert_eq!(
        body["output"]["summary"],
        "1 word on 1 line; mostly \"one\""
    );
}

#[tokio::test]
async fn internal_operations_answer_operations_but_not_the_wire() {
    let host = TestHost::start().await;
    let (status, body) = host.call("fixture-slow/secret", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = host
        .call(
            "fixture-slow/nest",
            json!({"operation": "fixture-slow/secret"}),
        )
        .await;
    assert_eq!(
        (status, &body["output"]),
        (StatusCode::OK, &json!("only for operations")),
        "{body}"
    );
    // A nested call's errors come back to the caller as they were.
    let (status, body) = host
        .call("fixture-slow/nest", json!({"operation": "nope/nothing"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_plugin_calling_itself_forever_stops_at_the_depth_limit() {
    let host = TestHost::start().await;
    let (status, body) = host.call("fixture-slow/recurse", json!(0)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        body["error"]["details"],
        json!({"limit": "max_call_depth", "value": 16})
    );
    let host = TestHost::with_config(|config| config.limits.max_call_depth = 3).await;
    let (_, body) = host.call("fixture-slow/recurse", json!(0)).await;
    assert_eq!(
        body["error"]["details"],
        json!({"limit": "max_call_depth", "value": 3})
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn a_nested_call_inherits_the_deadline() {
    let host = TestHost::start().await;
    let call = json!({
        "operation": "fixture-slow/nest",
        "input": {"operation": "fixture-slow/sleep", "input": {"ms": 10_000}},
        "deadline_ms": 300,
    });
    let (status, body) = host.post("/call", &call).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn an_abort_reaches_every_nested_call() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    let input = json!({
        "operation": "fixture-slow/nest",
        "input": {"operation": "hostile-loop/spin"},
    });
    tcp.call("chain", "fixture-slow/nest", input).await;
    // Three instances: nest, nest, spin.
    assert_eq!(host.wait_for_live(3, Duration::from_secs(10)).await, 3);
    tcp.send("call.aborted", "chain", json!({})).await;
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}
