//! `POST /subscribe`: SSE sequence, completion, terminal errors, disconnect.

use std::time::Duration;

use serde_json::json;

use crate::util::TestHost;

#[tokio::test]
async fn ticker_streams_n_numbered_events_then_completed() {
    let host = TestHost::start().await;
    let events = host
        .subscribe("ticker/count", json!({"to": 5}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 6, "{events:?}");
    for (i, event) in events[..5].iter().enumerate() {
        assert_eq!(event.event, "message");
        assert_eq!(event.id.as_deref(), Some((i + 1).to_string().as_str()));
        assert_eq!(event.json(), json!({ "n": i + 1 }));
    }
    assert_eq!(events[5].event, "completed");
}

#[tokio::test]
async fn many_items_arrive_in_order() {
    let host = TestHost::start().await;
    let events = host
        .subscribe("ticker/count", json!({"to": 20_000}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 20_001);
    assert!(
        events[..20_000]
            .iter()
            .enumerate()
            .all(|(i, e)| e.json()["n"] == i + 1)
    );
    assert_eq!(events[20_000].event, "completed");
}

#[tokio::test]
async fn every_ms_spaces_the_ticks() {
    let host = TestHost::start().await;
    let started = std::time::Instant::now();
    let events = host
        .subscribe("ticker/count", json!({"to": 3, "every_ms": 100}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 4);
    // Two pauses of 100 ms between three ticks: a lower bound, never flaky.
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn zero_items_is_just_completed() {
    let host = TestHost::start().await;
    let events = host
        .subscribe("ticker/count", json!({"to": 0}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "completed");
}

#[tokio::test]
async fn a_domain_error_mid_stream_is_terminal() {
    let host = TestHost::start().await;
    let events = host
        .subscribe("fixture-slow/fail-stream", json!({"ok": 3}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events[..3].iter().all(|e| e.event == "message"));
    assert_eq!(events[3].event, "error");
    assert_eq!(events[3].json()["code"], "STREAM_BROKE");
}

#[tokio::test]
async fn a_panic_mid_stream_is_a_terminal_plugin_failed() {
    let host = TestHost::start().await;
    let events = host
        .subscribe("fixture-panic/stream", json!({"after": 3}))
        .await
        .collect()
        .await;
    // An iterator's items go out as they are made: none is lost to the panic.
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events[..3].iter().enumerate().all(|(i, e)| e.json() == i));
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.json()["code"], "PLUGIN_FAILED");
    assert!(
        last.json()["message"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 items")
    );
    assert!(events.iter().all(|e| e.event != "completed"));
}

#[tokio::test]
async fn a_batched_iterator_streams_every_item_then_completes() {
    let host = TestHost::start().await;
    // 1,000 items: 15 full batches of 64 and a last one of 40.
    let events = host
        .subscribe(
            "fixture-hog/big-batches",
            json!({"bytes": 3, "count": 1000}),
        )
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 1001, "{:?}", events.last());
    assert!(events[..1000].iter().all(|e| e.json() == "xxx"));
    assert_eq!(events[1000].event, "completed");
}

#[tokio::test]
async fn errors_before_the_handler_starts_are_one_error_event() {
    let host = TestHost::start().await;
    for (operation, input, code) in [
        ("nope/x", json!(null), "NOT_FOUND"),
        ("echo/echo", json!(1), "INVALID_OPERATION_TYPE"),
        ("ticker/count", json!({"to": 2_000_000}), "INVALID_INPUT"),
        ("ticker/count", json!({"to": "three"}), "INVALID_INPUT"),
    ] {
        let events = host.subscribe(operation, input).await.collect().await;
        assert_eq!(events.len(), 1, "{operation}: {events:?}");
        assert_eq!(events[0].event, "error");
        assert_eq!(events[0].json()["code"], code, "{operation}");
    }
}

#[tokio::test]
async fn a_client_that_disconnects_stops_the_guest() {
    let host = TestHost::start().await;
    let mut events = host
        .subscribe("ticker/count", json!({"to": 1_000_000, "every_ms": 20}))
        .await;
    for n in 1..=3 {
        assert_eq!(events.next().await.unwrap().json()["n"], n);
    }
    assert_eq!(host.host.runtime().live_instances(), 1);
    drop(events);
    // Left running, the guest would tick for another 5.5 hours.
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    // And the host goes on serving.
    let (status, _) = host.call("echo/echo", json!(1)).await;
    assert_eq!(status, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn a_slow_reader_holds_the_guest_back() {
    let host = TestHost::start().await;
    let mut events = host
        .subscribe("ticker/count", json!({"to": 1_000_000}))
        .await;
    assert_eq!(events.next().await.unwrap().json()["n"], 1);
    // The reader stops reading; the guest must stop too (backpressure), not
    // run to a million. It is alive and blocked, and it is stopped when the
    // reader leaves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host.host.runtime().live_instances(), 1);
    drop(events);
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}
