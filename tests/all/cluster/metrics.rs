//! What a host that forwards calls counts: each under its operation's name
//! once another host answered it, junk names under `unknown`.

use opbox::CallRequest;
use serde_json::json;

use super::{Nats, metric, pair};

#[tokio::test]
async fn a_forwarding_host_counts_answered_calls_by_name_and_junk_as_unknown() {
    let nats = Nats::start();
    let (_holder, entry) = pair(&nats).await;
    let dispatcher = entry.host.dispatcher();
    let call = |name: &str, input| dispatcher.call(CallRequest::new(name, input));
    call("echo/echo", json!({"n": 1})).await.unwrap();
    call("echo/echo", json!({"n": 2})).await.unwrap();
    // Refused by the holder: still a call of an operation that exists.
    let refused = call("fixture-slow/sleep", json!({"ms": "soon"})).await;
    assert_eq!(refused.unwrap_err().code, opbox::ErrorCode::InvalidInput);
    // No host holds it: NATS says so, and the name is not kept.
    let junk = call("made-up/name", json!(null)).await;
    assert_eq!(junk.unwrap_err().code, opbox::ErrorCode::NotFound);

    let url = entry.url("");
    let calls = "opbox_calls_total";
    let named = |labels: &'static str| metric(&url, calls, Some(labels));
    assert_eq!(named("operation=\"echo/echo\"").await, 2);
    assert_eq!(named("plugin=\"echo\"").await, 2);
    assert_eq!(named("code=\"INVALID_INPUT\"").await, 1);
    assert_eq!(named("operation=\"fixture-slow/sleep\"").await, 1);
    assert_eq!(named("operation=\"unknown\"").await, 1);
    assert_eq!(named("made-up").await, 0);
}
