//! `POST /batch`: results in order, items run concurrently.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::util::TestHost;

#[tokio::test]
async fn results_keep_the_order_of_the_calls() {
    let host = TestHost::start().await;
    let (status, body) = host
        .post(
            "/batch",
            &json!([
                {"operation": "fixture-slow/sleep", "input": {"ms": 300}},
                {"operation": "echo/echo", "input": 2},
                {"operation": "nope/x"},
                {"operation": "echo/fail", "input": null},
                {"not": "a call"},
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["output"], 300);
    assert_eq!(results[1]["output"], 2);
    assert_eq!(results[2]["error"]["code"], "NOT_FOUND");
    assert_eq!(results[3]["error"]["code"], "DEMO_FAILURE");
    assert_eq!(results[4]["error"]["code"], "INVALID_INPUT");
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "every item has its own request id");
}

#[tokio::test]
async fn items_run_concurrently() {
    let host = TestHost::start().await;
    let batch = json!([
        {"operation": "fixture-slow/sleep", "input": {"ms": 3000}},
        {"operation": "fixture-slow/sleep", "input": {"ms": 3000}},
        {"operation": "fixture-slow/sleep", "input": {"ms": 3000}},
    ]);
    let request = tokio::spawn({
        let (client, url) = (host.client.clone(), host.url("/batch"));
        async move {
            client
                .post(url)
                .json(&batch)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
        }
    });
    // Run one after the other, no more than one instance would ever be alive.
    assert_eq!(host.wait_for_live(3, Duration::from_secs(10)).await, 3);
    let body = request.await.unwrap().unwrap();
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["output"] == 3000),
        "{body}"
    );
}

#[tokio::test]
async fn a_batch_over_the_limit_is_refused() {
    let host = TestHost::with_config(|config| config.gateway.max_batch = 2).await;
    let call = json!({"operation": "echo/echo", "input": 1});
    let (status, body) = host.post("/batch", &json!([call, call, call])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
}
