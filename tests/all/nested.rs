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
    // A nested call's errors come back to the plugin as they were; the
    // plugin returning one makes it the plugin's own error (status 400:
    // only the host answers with the host's statuses).
    let (status, body) = host
        .call("fixture-slow/nest", json!({"operation": "nope/nothing"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn a_plugin_calling_itself_forever_stops_at_the_depth_limit() {
    let host = TestHost::start().await;
    let (status, body) = host.call("fixture-slow/recurse", json!(0)).await;
    // The host refuses the deepest call; each plugin above returns that
    // error as its own (400).
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
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

#[tokio::test]
async fn an_operation_subscribes_to_another() {
    let host = TestHost::start().await;
    let relay = |input| json!({"operation": "ticker/count", "input": input});
    let events = host
        .subscribe("fixture-slow/nest-stream", relay(json!({"to": 3})))
        .await
        .collect()
        .await;
    let mut data: Vec<_> = events
        .iter()
        .map(|e| (e.event.as_str(), e.json()))
        .collect();
    let cost = data[3].1["cost"].take();
    assert_eq!(
        data,
        [
            ("message", json!({"n": 1})),
            ("message", json!({"n": 2})),
            ("message", json!({"n": 3})),
            ("completed", json!({"cost": null})),
        ]
    );
    // The nested subscription's costs are the relay's too: its three items
    // of seven bytes, and the relay's own three.
    assert_eq!(cost["host_calls"]["nested"], 1, "{cost}");
    assert_eq!(cost["bytes_out"], 42, "{cost}");
    // A once-operation can read a subscription through to its end.
    let (status, body) = host
        .call("fixture-slow/tally", relay(json!({"to": 5})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!({"count": 5, "last": {"n": 5}}));
}

#[tokio::test]
async fn a_nested_subscriptions_errors_reach_its_subscriber() {
    let host = TestHost::start().await;
    // A terminal error mid-stream, after the items before it.
    let input = json!({"operation": "fixture-slow/fail-stream", "input": {"ok": 2}});
    let (_, body) = host.call("fixture-slow/tally", input.clone()).await;
    assert_eq!(body["error"]["code"], "STREAM_BROKE", "{body}");
    let events = host
        .subscribe("fixture-slow/nest-stream", input)
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2].event, "error");
    assert_eq!(events[2].json()["code"], "STREAM_BROKE");
    // Errors before it starts: unknown operation, wrong kind, bad input.
    for (operation, input, code) in [
        ("nope/nothing", json!(null), "NOT_FOUND"),
        ("echo/echo", json!(1), "INVALID_OPERATION_TYPE"),
        ("ticker/count", json!({"to": "three"}), "INVALID_INPUT"),
    ] {
        let (_, body) = host
            .call(
                "fixture-slow/tally",
                json!({"operation": operation, "input": input}),
            )
            .await;
        assert_eq!(body["error"]["code"], code, "{operation}: {body}");
    }
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn dropping_a_subscription_aborts_the_one_it_made() {
    let host = TestHost::start().await;
    let input = json!({
        "operation": "ticker/count",
        "input": {"to": 1_000_000, "every_ms": 10},
    });
    let mut events = host.subscribe("fixture-slow/nest-stream", input).await;
    assert_eq!(events.next().await.unwrap().json(), json!({"n": 1}));
    // Two instances: the relaying subscription and the ticker beneath it.
    assert_eq!(host.wait_for_live(2, Duration::from_secs(10)).await, 2);
    drop(events);
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}
