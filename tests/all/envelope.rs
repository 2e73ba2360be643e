//! The envelope protocol over TCP: calls, subscriptions, multiplexing,
//! aborts, deadlines, the open-call limit and bad input.

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Frames, TestHost};

fn is(envelope: &Value, kind: &str, id: &str) -> bool {
    envelope["type"] == kind && envelope["id"] == id
}

#[tokio::test]
async fn a_call_and_a_subscription_over_one_connection() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    tcp.call("a", "echo/echo", json!({"x": 1})).await;
    let reply = tcp.next().await.unwrap();
    assert!(is(&reply, "call.responded", "a"), "{reply}");
    assert_eq!(reply["payload"]["output"], json!({"x": 1}));
    // The receipt rides along: a field alknet-shaped clients ignore.
    assert_eq!(reply["payload"]["cost"]["bytes_in"], 7, "{reply}");

    tcp.call("b", "ticker/count", json!({"to": 3})).await;
    for n in 1..=3 {
        let item = tcp.next().await.unwrap();
        assert!(is(&item, "call.responded", "b"), "{item}");
        assert_eq!(item["payload"]["output"]["n"], n, "{item}");
    }
    let end = tcp.next().await.unwrap();
    assert!(is(&end, "call.completed", "b"), "{end}");
    assert_eq!(end["payload"]["cost"]["bytes_out"], 21, "{end}");

    tcp.call("c", "nope/nothing", json!(null)).await;
    let error = tcp.next().await.unwrap();
    assert!(is(&error, "call.error", "c"), "{error}");
    assert_eq!(error["payload"]["code"], "NOT_FOUND");
    assert_eq!(error["payload"]["retryable"], false);
}

#[tokio::test]
async fn a_slow_call_does_not_delay_a_fast_one() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    tcp.call("slow", "fixture-slow/sleep", json!({"ms": 1000}))
        .await;
    tcp.call("fast", "echo/echo", json!("quick")).await;
    let first = tcp.next().await.unwrap();
    assert!(is(&first, "call.responded", "fast"), "{first}");
    let second = tcp.next().await.unwrap();
    assert!(is(&second, "call.responded", "slow"), "{second}");
}

#[tokio::test]
async fn an_abort_stops_the_guest_and_nothing_follows_for_its_id() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    // Without the abort this call would end in TIMEOUT after 1 s.
    let payload = json!({"operationId": "hostile-loop/spin", "deadline_ms": 1000});
    tcp.send("call.requested", "spin", payload).await;
    tcp.call("sub", "hostile-loop/spin-stream", json!(null))
        .await;
    let first = tcp.next().await.unwrap();
    assert!(is(&first, "call.responded", "sub"), "{first}");
    assert_eq!(host.wait_for_live(2, Duration::from_secs(10)).await, 2);
    tcp.send("call.aborted", "spin", json!({})).await;
    tcp.send("call.aborted", "sub", json!({})).await;
    // Both guests were interrupted and their instances dropped.
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    // Past the spin's deadline, the next frame is for a new call, not a
    // TIMEOUT for the aborted one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tcp.call("after", "echo/echo", json!(1)).await;
    let next = tcp.next().await.unwrap();
    assert!(is(&next, "call.responded", "after"), "{next}");
    // An abort for an id that is not open is ignored.
    tcp.send("call.aborted", "never-opened", json!({})).await;
    tcp.call("still", "echo/echo", json!(2)).await;
    let next = tcp.next().await.unwrap();
    assert!(is(&next, "call.responded", "still"), "{next}");
}

#[tokio::test]
async fn closing_the_connection_aborts_what_it_had_open() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    tcp.call("a", "hostile-loop/spin", json!(null)).await;
    tcp.call("b", "hostile-loop/silent", json!(null)).await;
    assert_eq!(host.wait_for_live(2, Duration::from_secs(10)).await, 2);
    drop(tcp);
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn deadline_ms_shortens_a_call() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    let payload =
        json!({"operationId": "fixture-slow/sleep", "input": {"ms": 5000}, "deadline_ms": 200});
    tcp.send("call.requested", "late", payload).await;
    let error = tcp.next().await.unwrap();
    assert!(is(&error, "call.error", "late"), "{error}");
    assert_eq!(error["payload"]["code"], "TIMEOUT");
}

#[tokio::test]
async fn the_open_call_limit_answers_resource_exhausted() {
    let host = TestHost::with_config(|config| config.envelope.max_open_calls = 2).await;
    let mut tcp = Frames::connect(&host).await;
    tcp.call("1", "hostile-loop/silent", json!(null)).await;
    tcp.call("2", "hostile-loop/silent", json!(null)).await;
    tcp.call("3", "echo/echo", json!(null)).await;
    let error = tcp.next().await.unwrap();
    assert!(is(&error, "call.error", "3"), "{error}");
    assert_eq!(error["payload"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        error["payload"]["details"],
        json!({"limit": "max_open_calls", "value": 2})
    );
    // Room again once one ends.
    tcp.send("call.aborted", "1", json!({})).await;
    tcp.call("4", "echo/echo", json!(4)).await;
    let reply = tcp.next().await.unwrap();
    assert!(is(&reply, "call.responded", "4"), "{reply}");
}

#[tokio::test]
async fn bad_envelopes_are_answered_for_their_id_and_the_connection_stays() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    let cases: [(&[u8], &str); 4] = [
        (br#"{"id":"x1"}"#, "x1"),
        (br#"{"id":"x2","type":"call.responded","payload":{}}"#, "x2"),
        (
            br#"{"id":"x3","type":"call.requested","payload":{"input":1}}"#,
            "x3",
        ),
        (
            br#"{"id":"x4","type":"call.requested","payload":"echo/echo"}"#,
            "x4",
        ),
    ];
    for (bytes, id) in cases {
        tcp.send_raw(bytes).await;
        let error = tcp.next().await.unwrap();
        assert!(is(&error, "call.error", id), "{error}");
        assert_eq!(error["payload"]["code"], "INVALID_INPUT", "{error}");
    }
    // A duplicate id in flight cancels both calls with one error.
    tcp.call("dup", "hostile-loop/silent", json!(null)).await;
    tcp.call("dup", "echo/echo", json!(null)).await;
    let error = tcp.next().await.unwrap();
    assert!(is(&error, "call.error", "dup"), "{error}");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    tcp.call("ok", "echo/echo", json!("fine")).await;
    let reply = tcp.next().await.unwrap();
    assert!(is(&reply, "call.responded", "ok"), "{reply}");
}

#[tokio::test]
async fn framing_violations_close_only_their_connection() {
    let host = TestHost::with_config(|config| config.envelope.max_frame_bytes = 1024).await;
    let mut bystander = Frames::connect(&host).await;
    let violations: [&[u8]; 4] = [b"", b"\xff\xfe not utf-8", b"{not json", &[b' '; 2048]];
    for bytes in violations {
        let mut tcp = Frames::connect(&host).await;
        tcp.send_raw(bytes).await;
        let error = tcp.next().await.unwrap();
        assert!(is(&error, "call.error", ""), "{error}");
        assert_eq!(error["payload"]["code"], "INVALID_FRAME", "{error}");
        assert_eq!(tcp.next().await, None, "the host closes the connection");
    }
    bystander.call("b", "echo/echo", json!("unharmed")).await;
    let reply = bystander.next().await.unwrap();
    assert!(is(&reply, "call.responded", "b"), "{reply}");
}

#[tokio::test]
async fn a_caller_that_says_the_kind_it_expects_gets_that_sequence_or_an_error() {
    let host = TestHost::start().await;
    let mut tcp = Frames::connect(&host).await;
    // Sends one call with `expect` and returns the first reply for it.
    async fn ask(tcp: &mut Frames, id: &str, op: &str, input: Value, expect: &str) -> Value {
        let payload = json!({"operationId": op, "input": input, "expect": expect});
        tcp.send("call.requested", id, payload).await;
        let reply = tcp.next().await.unwrap();
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }
    let code = |reply: &Value| {
        assert_eq!(reply["type"], "call.error", "{reply}");
        reply["payload"]["code"].as_str().unwrap().to_owned()
    };
    // The wrong kind either way is INVALID_OPERATION_TYPE, and nothing
    // runs: no output before the error, nothing after it.
    let reply = ask(&mut tcp, "sub", "echo/echo", json!(1), "stream").await;
    assert_eq!(code(&reply), "INVALID_OPERATION_TYPE");
    let reply = ask(&mut tcp, "once", "ticker/count", json!({"to": 3}), "once").await;
    assert_eq!(code(&reply), "INVALID_OPERATION_TYPE");
    // The right kind gets its sequence.
    let first = ask(&mut tcp, "ok", "ticker/count", json!({"to": 2}), "stream").await;
    let kinds: Vec<Value> = [Some(first), tcp.next().await, tcp.next().await]
        .into_iter()
        .map(|frame| frame.unwrap()["type"].clone())
        .collect();
    assert_eq!(
        kinds,
        ["call.responded", "call.responded", "call.completed"],
        "after the errors, only this call's frames"
    );
    // A kind that is neither is bad input for that id.
    let reply = ask(&mut tcp, "odd", "echo/echo", json!(1), "twice").await;
    assert_eq!(code(&reply), "INVALID_INPUT");
}
