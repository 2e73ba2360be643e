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
                .json(&json!({"operation": "hostile-loop/spin", "deadline_ms": 3000}))
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

#[tokio::test]
async fn the_memory_limit_holds_per_call() {
    let host =
        TestHost::with_config(|config| config.plugin_limits.memory_bytes = Some(32 << 20)).await;
    let (status, body) = host.call("fixture-hog/hog", json!({"mib": 8})).await;
    assert_eq!(
        (status, &body["output"]),
        (StatusCode::OK, &json!(8 << 20)),
        "{body}"
    );

    let (status, body) = host.call("fixture-hog/hog", json!({"mib": 64})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        body["error"]["details"],
        json!({"limit": "memory_bytes", "value": 32 << 20})
    );

    // The next call starts from a fresh instance, with all of its memory.
    let (status, _) = host.call("fixture-hog/hog", json!({"mib": 8})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_full_instance_pool_answers_unavailable_not_a_queue() {
    let host = TestHost::with_config(|config| {
        config.limits.max_instances = 2;
        // More than the pool: the pool, not the tenant's share, decides.
        config.tenants[0].quotas.max_instances = Some(10);
    })
    .await;
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (host.client.clone(), host.url("/call"));
            tokio::spawn(async move {
                let call = json!({"operation": "fixture-slow/sleep", "input": {"ms": 2000}});
                client.post(url).json(&call).send().await.unwrap().status()
            })
        })
        .collect();
    assert_eq!(host.wait_for_live(2, Duration::from_secs(10)).await, 2);
    let (status, body) = host.call("echo/echo", json!(1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert_eq!(body["error"]["retryable"], true);
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), StatusCode::OK);
    }
    let (status, _) = host.call("echo/echo", json!(1)).await;
    assert_eq!(status, StatusCode::OK);
}
