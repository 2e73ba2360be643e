//! Cost receipts: what a call spent comes back with its answer, on every
//! transport, and a nested call's spending is its caller's.

use opbox::call::Receipt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{Frames, TestHost};

/// Calls `operation` over `/call`: the status, the body and the receipt of
/// the `opbox-cost` header.
async fn costed(host: &TestHost, operation: &str, input: Value) -> (StatusCode, Value, Receipt) {
    let response = host
        .client
        .post(host.url("/call"))
        .json(&json!({ "operation": operation, "input": input }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let header = response
        .headers()
        .get("opbox-cost")
        .expect("every call answers with its cost")
        .to_str()
        .unwrap()
        .to_owned();
    let receipt = serde_json::from_str(&header).expect("the cost is a receipt");
    (status, response.json().await.unwrap(), receipt)
}

#[tokio::test]
async fn a_memory_hungry_call_shows_more_memory_than_echo_and_bytes_are_exact() {
    let host = TestHost::start().await;
    let (status, _, echo) = costed(&host, "echo/echo", json!("hello")).await;
    assert_eq!(status, StatusCode::OK);
    // `"hello"` in, `"hello"` out: seven bytes of JSON each way.
    assert_eq!((echo.bytes_in, echo.bytes_out), (7, 7), "{echo:?}");
    assert!(echo.memory_peak_bytes > 0, "{echo:?}");
    assert!(echo.wall_us >= echo.guest_cpu_us, "{echo:?}");
    assert_eq!(echo.fuel, None, "fuel is not counted unless it is on");

    let (status, _, hog) = costed(&host, "fixture-hog/hog", json!({"mib": 16})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        hog.memory_peak_bytes > echo.memory_peak_bytes + (15 << 20),
        "hog {hog:?} vs echo {echo:?}"
    );
}

#[tokio::test]
async fn a_spinning_call_shows_guest_cpu_near_its_limit() {
    let host = TestHost::with_config(|config| config.plugin_limits.cpu_ms = Some(300)).await;
    let (status, body, receipt) = costed(&host, "hostile-loop/spin", json!(null)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    // Counted in epoch ticks of 10 ms: the budget and at most a few ticks.
    assert!(
        (250_000..=600_000).contains(&receipt.guest_cpu_us),
        "{receipt:?}"
    );
    assert!(receipt.wall_us >= receipt.guest_cpu_us, "{receipt:?}");
}

#[tokio::test]
async fn fuel_is_on_the_receipt_when_the_host_counts_it() {
    let host = TestHost::with_config(|config| config.plugin_limits.fuel = Some(50_000_000)).await;
    let (_, _, small) = costed(&host, "echo/echo", json!("x")).await;
    let (_, _, big) = costed(&host, "fixture-hog/hog", json!({"mib": 1})).await;
    let (small, big) = (small.fuel.unwrap(), big.fuel.unwrap());
    // Summing a MiB byte by byte takes at least a million instructions.
    assert!(small > 0 && big > small + 1_000_000, "{small} vs {big}");
}

#[tokio::test]
async fn nested_calls_roll_up_into_the_callers_receipt() {
    let host = TestHost::start().await;
    let input = json!({"text": "the cat\nthe hat"});
    let (_, _, alone) = costed(&host, "textkit/stats", input.clone()).await;
    let (status, body, summary) = costed(&host, "textkit/summary", input.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // `summary` calls `textkit/stats` and then `echo/echo`.
    assert_eq!(summary.host_calls.nested, 2, "{summary:?}");
    let own_in = input.to_string().len() as u64;
    // Its own input, the same input again for `stats`, and `echo`'s.
    assert!(
        summary.bytes_in > own_in + alone.bytes_in,
        "{summary:?} vs {alone:?}"
    );
    // Three instances' peaks, each at least as large as one alone.
    assert!(
        summary.memory_peak_bytes >= 2 * alone.memory_peak_bytes,
        "{summary:?} vs {alone:?}"
    );
}

#[tokio::test]
async fn batch_items_subscriptions_and_envelopes_carry_their_cost() {
    let host = TestHost::start().await;
    let (status, body) = host
        .post(
            "/batch",
            &json!([
                {"operation": "echo/echo", "input": "ab"},
                {"operation": "fixture-hog/hog", "input": {"mib": 4}},
                {"operation": "nope/nothing"},
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let receipts: Vec<Receipt> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| serde_json::from_value(item["cost"].clone()).unwrap())
        .collect();
    assert_eq!((receipts[0].bytes_in, receipts[0].bytes_out), (4, 4));
    assert!(receipts[1].memory_peak_bytes > receipts[0].memory_peak_bytes + (3 << 20));
    // A name nobody offers ran nothing.
    assert_eq!(receipts[2].memory_peak_bytes, 0);

    let events = host
        .subscribe("ticker/count", json!({"to": 3}))
        .await
        .collect()
        .await;
    let completed = events.last().unwrap();
    assert_eq!(completed.event, "completed");
    let receipt: Receipt = serde_json::from_value(completed.json()["cost"].clone()).unwrap();
    // Three items of `{"n":1}`'s seven bytes.
    assert_eq!(receipt.bytes_out, 21, "{receipt:?}");

    let mut frames = Frames::connect(&host).await;
    frames.call("q", "echo/echo", json!("abc")).await;
    let responded = frames.next().await.unwrap();
    assert_eq!(responded["type"], "call.responded");
    assert_eq!(responded["payload"]["output"], "abc");
    assert_eq!(responded["payload"]["cost"]["bytes_in"], 5);
    frames.call("s", "ticker/count", json!({"to": 2})).await;
    let mut last = Value::Null;
    while let Some(frame) = frames.next().await {
        let done = frame["type"] == "call.completed";
        last = frame;
        if done {
            break;
        }
    }
    assert_eq!(last["type"], "call.completed");
    assert_eq!(last["payload"]["cost"]["bytes_out"], 14, "{last}");
}
