//! Traces: a real `opbox serve` exports its spans over OTLP/HTTP to a
//! receiver in the test, which decodes them with `opentelemetry-proto`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::util::{Frames, Server};

pub(crate) type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver on a port of its own: every span posted to
/// `/v1/traces` lands in the list it returns.
pub(crate) async fn receiver() -> (String, Received) {
    async fn traces(State(received): State<Received>, body: Bytes) -> Vec<u8> {
        let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
        let spans = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        received.lock().unwrap().extend(spans);
        // An empty `ExportTraceServiceResponse`.
        Vec::new()
    }
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// The spans of trace `trace_id`, once there are `count` of them.
pub(crate) async fn spans_of(received: &Received, trace_id: &[u8], count: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans: Vec<Span> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        if spans.len() >= count {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} spans arrived",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bytes of a trace or span id written in hex.
pub(crate) fn id_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span `{name}` in {spans:?}"))
}

#[tokio::test]
async fn a_nested_call_chain_arrives_as_parent_and_child_spans_of_the_callers_trace() {
    let (endpoint, received) = receiver().await;
    let noise = opbox::bundled::built_plugin("hostile-noise");
    let config = format!(
        "listen = \"127.0.0.1:0\"\n\
         [[plugins]]\npath = {noise:?}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"opbox-test\"\n"
    );
    let server = Server::start(&config);
    let client = reqwest::Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = client
        .post(format!("{}/call", server.url))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"operation": "textkit/summary", "input": {"text": "the cat the hat"}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["output"]["summary"],
        "4 words on 1 line; mostly \"the\""
    );

    let spans = spans_of(&received, &id_bytes(trace_id), 3).await;
    let summary = named(&spans, "textkit/summary");
    // The call joined the caller's trace, under the caller's span, and
    // the response names the call's own span.
    assert_eq!(hex(&summary.parent_span_id), caller_span);
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", hex(&summary.span_id))
    );
    // `summary` calls `stats` and `echo`: its children.
    for child in ["textkit/stats", "echo/echo"] {
        assert_eq!(
            named(&spans, child).parent_span_id,
            summary.span_id,
            "{child} is a child of textkit/summary"
        );
    }

    // A call without a trace context starts a trace of its own; the guest's
    // log lines are its span's events.
    let response = client
        .post(format!("{}/call", server.url))
        .json(&json!({"operation": "hostile-noise/log-flood", "input": 2}))
        .send()
        .await
        .unwrap();
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let own_trace = id_bytes(&traceparent[3..35]);
    assert_ne!(hex(&own_trace), trace_id);
    let spans = spans_of(&received, &own_trace, 1).await;
    let flood = named(&spans, "hostile-noise/log-flood");
    assert!(flood.parent_span_id.is_empty(), "a root span");
    let events: Vec<&str> = flood.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["flood line 0", "flood line 1"], "{flood:?}");
    // The call's log line carries its cost.
    let within = std::time::Duration::from_secs(5);
    assert!(server.logs_within("hostile-noise/log-flood", within) && server.logged("cost="));
}

#[tokio::test]
async fn envelopes_join_the_callers_trace_and_a_subscriptions_span_lasts_until_it_ends() {
    let (endpoint, received) = receiver().await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [telemetry]\notlp_endpoint = \"{endpoint}\"\n"
    );
    let server = Server::start(&config);
    let mut frames = Frames::at(server.tcp.as_deref().unwrap()).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let payload = json!({
        "operationId": "ticker/count",
        "input": {"to": 3, "every_ms": 100},
        "traceparent": format!("00-{trace_id}-{caller_span}-01"),
        "tracestate": "vendor=1",
    });
    frames.send("call.requested", "s", payload).await;
    loop {
        let frame = frames.next().await.unwrap();
        if frame["type"] == "call.completed" {
            break;
        }
        assert_eq!(frame["type"], "call.responded", "{frame}");
    }
    let spans = spans_of(&received, &id_bytes(trace_id), 1).await;
    let ticker = named(&spans, "ticker/count");
    assert_eq!(hex(&ticker.parent_span_id), caller_span);
    assert_eq!(ticker.trace_state, "vendor=1");
    // Three items 100 ms apart: the span covers the whole stream.
    let lasted = Duration::from_nanos(ticker.end_time_unix_nano - ticker.start_time_unix_nano);
    assert!(lasted >= Duration::from_millis(200), "{lasted:?}");
}
