//! What a forwarded call costs NATS: its request and its answer, no more.

use serde_json::{Value, json};

use super::{Nats, pair};

/// Messages the NATS server has taken in so far (its `/varz` `in_msgs`).
async fn messages_in(monitoring: &str) -> u64 {
    let varz: Value = reqwest::get(format!("{monitoring}/varz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    varz["in_msgs"].as_u64().unwrap()
}

#[tokio::test]
async fn a_forwarded_call_is_two_messages() {
    let (nats, monitoring) = Nats::monitored();
    let (_holder, caller) = pair(&nats).await;
    let dispatcher = caller.host.dispatcher();
    let call = || dispatcher.call(opbox::CallRequest::new("echo/echo", json!({"x": 1})));
    // The first call opens this host's reply inbox.
    assert_eq!(call().await.unwrap(), json!({"x": 1}));
    const CALLS: u64 = 300;
    let before = messages_in(&monitoring).await;
    for _ in 0..CALLS {
        assert_eq!(call().await.unwrap(), json!({"x": 1}));
    }
    let sent = messages_in(&monitoring).await - before;
    // The request and the answer of each (the hosts' catalogs and
    // JetStream may add a few of their own meanwhile); with an
    // `accepted` message as well, it was three.
    assert!(
        (2 * CALLS..2 * CALLS + CALLS / 10).contains(&sent),
        "{sent} messages for {CALLS} forwarded calls"
    );
}
