//! Operation names as callers write them, forwarded: a leading `/` is the
//! same name, and a name no subject could carry is `NOT_FOUND` without
//! costing the host its connection to the cluster.

use opbox::{CallRequest, ErrorCode};
use serde_json::json;

use super::{Nats, pair};

#[tokio::test]
async fn any_name_a_caller_sends_is_answered_and_the_host_stays_in_the_cluster() {
    let nats = Nats::start();
    let (_holder, entry) = pair(&nats).await;
    let dispatcher = entry.host.dispatcher();
    let call = |name: String| dispatcher.call(CallRequest::new(name, json!({"n": 1})));

    // The wire takes a leading `/`; so does the cluster.
    assert_eq!(call("/echo/echo".into()).await.unwrap(), json!({"n": 1}));

    // Names far longer than NATS takes in a subject (4 KiB by default,
    // past which the server drops the connection), valid or not.
    for name in [
        format!("{}/echo", "a".repeat(20_000)),
        format!("echo/{}", "é".repeat(5_000)),
    ] {
        let error = call(name).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::NotFound, "{error:?}");
        // The host is still in the cluster: forwarding works at once.
        assert_eq!(call("echo/echo".into()).await.unwrap(), json!({"n": 1}));
    }
}
