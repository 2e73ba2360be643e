//! A failing call costs only itself.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::util::TestHost;

#[tokio::test]
async fn after_a_trap_the_same_plugin_and_the_others_keep_answering() {
    let host = TestHost::start().await;
    for round in 0..3 {
        let (status, body) = host
            .call("fixture-panic/boom", json!(format!("round {round}")))
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("round {round}"))
        );
        let (status, body) = host
            .call("fixture-panic/calm", json!({"round": round}))
            .await;
        assert_eq!(
            (status, &body["output"]),
            (StatusCode::OK, &json!({"round": round}))
        );
        let (status, body) = host.call("echo/echo", json!(round)).await;
        assert_eq!((status, &body["output"]), (StatusCode::OK, &json!(round)));
    }
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn a_spinning_call_does_not_hold_up_the_others() {
    let host = TestHost::start().await;
    let slow = tokio::spawn({
        let (client, url) = (host.client.clone(), host.url("/call"));
        async move {
            let response = client
                .post(url)
                .json(&json!({"operation": "fixture-slow/spin", "deadline_ms": 3000}))
                .send()
                .await
                .unwrap();
            (
                response.status(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    });
    assert_eq!(host.wait_for_live(1, Duration::from_secs(5)).await, 1);
    // While a guest spins on a worker, calls keep being answered.
    for i in 0..20 {
        let (status, body) = host.call("echo/echo", json!(i)).await;
        assert_eq!((status, &body["output"]), (StatusCode::OK, &json!(i)));
    }
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn every_call_gets_a_fresh_instance() {
    let host = TestHost::start().await;
    for _ in 0..50 {
        let (status, _) = host.call("echo/echo", json!("x")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(host.host.runtime().live_instances(), 0);
}
