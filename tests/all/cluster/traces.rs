//! Traces across hosts: a call forwarded to another host, and a nested
//! call it makes there that comes back, stay in the caller's trace, each
//! span the child of the one that started it.

use serde_json::json;

use super::{Nats, host, plugins};
use crate::traces::{hex, id_bytes, receiver, spans_of};

#[tokio::test]
async fn a_call_crossing_hosts_and_back_is_one_chain_of_spans_in_the_callers_trace() {
    let nats = Nats::start();
    let (endpoint, received) = receiver().await;
    let telemetry = format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A holds `fixture-slow`, B the examples.
    let _a = host(
        &nats,
        dir_a.path(),
        "examples = false",
        &format!("{}{telemetry}", plugins(&["fixture-slow"])),
    );
    let b = host(&nats, dir_b.path(), "examples = true", &telemetry);

    let trace_id = "5af7651916cd43dd8448eb211c80319d";
    let caller_span = "c7ad6b7169203332";
    // B → A's fixture-slow/nest → (nested, on A) echo/echo → forwarded to B.
    let response = reqwest::Client::new()
        .post(format!("{}/call", b.url))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({
            "operation": "fixture-slow/nest",
            "input": {"operation": "echo/echo", "input": {"deep": true}},
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");

    // Four spans: each host's span of the call it received or forwarded.
    let spans = spans_of(&received, &id_bytes(trace_id), 4).await;
    let by_parent = |name: &str, parent: &[u8]| {
        spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id == parent)
            .unwrap_or_else(|| panic!("no `{name}` under {} in {spans:?}", hex(parent)))
    };
    let nest_on_b = by_parent("fixture-slow/nest", &id_bytes(caller_span));
    let nest_on_a = by_parent("fixture-slow/nest", &nest_on_b.span_id);
    let echo_on_a = by_parent("echo/echo", &nest_on_a.span_id);
    let echo_on_b = by_parent("echo/echo", &echo_on_a.span_id);
    // Each ended well on its host (OTLP's `STATUS_CODE_OK` is 1).
    for span in [nest_on_b, nest_on_a, echo_on_a, echo_on_b] {
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(1), "{span:?}");
    }
}
