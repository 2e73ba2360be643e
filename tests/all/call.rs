//! `POST /call`: outputs, domain errors, and every error code reachable.

use reqwest::StatusCode;
use serde_json::json;

use crate::util::TestHost;

#[tokio::test]
async fn echo_returns_its_input_with_a_request_id() {
    let host = TestHost::start().await;
    let (status, body) = host
        .call("echo/echo", json!({"x": 1, "nested": [true, null]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], "ok");
    assert_eq!(body["output"], json!({"x": 1, "nested": [true, null]}));
    assert!(
        body["request_id"].as_str().is_some_and(|id| id.len() >= 16),
        "{body}"
    );
}

#[tokio::test]
async fn a_leading_slash_and_a_missing_input_are_accepted() {
    let host = TestHost::start().await;
    let (status, body) = host
        .post("/call", &json!({"operation": "/echo/echo"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!(null));
}

#[tokio::test]
async fn textkit_counts_lines_words_and_top_words() {
    let host = TestHost::start().await;
    let text = "The cat and the hat.\nThe end, the END!";
    let (status, body) = host.call("textkit/stats", json!({ "text": text })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let output = &body["output"];
    assert_eq!(output["lines"], 2);
    assert_eq!(output["words"], 9);
    assert_eq!(output["characters"], text.chars().count());
    assert_eq!(output["top_words"][0], json!({"word": "the", "count": 4}));
    assert_eq!(output["top_words"][1], json!({"word": "end", "count": 2}));
    assert_eq!(output["top_words"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn a_domain_error_passes_through_with_status_400() {
    let host = TestHost::start().await;
    let (status, body) = host.call("echo/fail", json!({"why": "asked"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["result"], "error");
    assert_eq!(body["error"]["code"], "DEMO_FAILURE");
    assert_eq!(body["error"]["retryable"], false);
    assert_eq!(body["error"]["details"]["input"], json!({"why": "asked"}));
}

#[tokio::test]
async fn an_unknown_operation_is_not_found() {
    let host = TestHost::start().await;
    for name in ["nope/nothing", "echo/nothing", "not-a-name", ""] {
        let (status, body) = host.call(name, json!(null)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}: {body}");
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_invalid_input_400() {
    let host = TestHost::start().await;
    for body in ["not json", "{\"operation\": ", "[]", "{\"input\": 1}"] {
        let (status, answer) = host.post_raw("/call", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "INVALID_INPUT");
        assert_eq!(answer["result"], "error");
    }
}

#[tokio::test]
async fn a_schema_violation_is_invalid_input_422_with_the_path() {
    let host = TestHost::start().await;
    let (status, body) = host.call("textkit/stats", json!({"text": 42})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    assert_eq!(body["error"]["details"]["violations"][0]["path"], "/text");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("/text"),
        "{body}"
    );

    let (status, body) = host.call("textkit/stats", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("text"),
        "{body}"
    );
}

#[tokio::test]
async fn calling_a_subscription_is_invalid_operation_type() {
    let host = TestHost::start().await;
    let (status, body) = host.call("ticker/count", json!({"to": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "INVALID_OPERATION_TYPE");
}

#[tokio::test]
async fn a_panic_is_plugin_failed_with_the_panic_message() {
    let host = TestHost::start().await;
    let (status, body) = host.call("fixture-panic/boom", json!("the sky fell")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "PLUGIN_FAILED");
    assert_eq!(error["retryable"], false);
    assert!(
        error["message"].as_str().unwrap().contains("the sky fell"),
        "{error}"
    );
    let details = &error["details"];
    assert_eq!(details["plugin"], "fixture-panic");
    assert_eq!(details["op"], "boom");
    assert_eq!(details["trap"], "unreachable");
    assert_eq!(details["version"], "0.1.0");
    assert_eq!(details["digest"].as_str().unwrap().len(), 64);
    assert!(
        details["message"]
            .as_str()
            .unwrap()
            .starts_with("the sky fell"),
        "{details}"
    );
}

#[tokio::test]
async fn what_a_failing_guest_wrote_to_stderr_reaches_the_caller() {
    let host = TestHost::start().await;
    // As a Python guest fails: the traceback on stderr, then a panic whose
    // message says nothing of it.
    let (status, body) = host
        .call("fixture-panic/raise", json!("no such user: ada"))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let details = &body["error"]["details"];
    let message = details["message"].as_str().unwrap();
    assert!(
        message.starts_with("Python function threw an unexpected exception"),
        "{message}"
    );
    let stderr = details["stderr"].as_str().unwrap();
    assert!(
        stderr.starts_with("Traceback (most recent call last):"),
        "{stderr}"
    );
    assert!(stderr.contains("ValueError: no such user: ada"), "{stderr}");

    // A trap with no message at all: stderr is all the caller has, its tail
    // held to 4 KiB.
    let long = "x".repeat(300);
    let lines: Vec<String> = (0..100).map(|n| format!("{n} {long}")).collect();
    let (_, body) = host
        .call("fixture-panic/abort", json!(lines.join("\n")))
        .await;
    let details = &body["error"]["details"];
    assert_eq!(details["trap"], "unreachable", "{details}");
    assert_eq!(details["message"], json!(null));
    let stderr = details["stderr"].as_str().unwrap();
    assert!(stderr.len() <= 4096, "{}", stderr.len());
    assert!(stderr.ends_with(&format!("99 {long}")), "{stderr}");
    assert!(
        stderr.lines().all(|l| l.ends_with(&long)),
        "whole lines only"
    );

    // A guest that wrote nothing to stderr has no `stderr` detail.
    let (_, body) = host.call("fixture-panic/boom", json!("quiet")).await;
    assert!(body["error"]["details"].get("stderr").is_none(), "{body}");
}

#[tokio::test]
async fn a_spinning_guest_times_out_and_is_interrupted() {
    let host = TestHost::start().await;
    let (status, body) = host
        .post(
            "/call",
            &json!({"operation": "hostile-loop/spin", "deadline_ms": 200}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "TIMEOUT");
    assert_eq!(body["error"]["retryable"], true);
    assert_eq!(body["error"]["details"]["value"], 200);
    // The guest would spin forever: it must have been stopped, not left behind.
    assert_eq!(
        host.wait_for_live(0, std::time::Duration::from_secs(5))
            .await,
        0
    );
}

#[tokio::test]
async fn the_default_deadline_applies_without_one_in_the_request() {
    let host = TestHost::with_config(|config| config.limits.deadline_ms = 300).await;
    let (status, body) = host.call("fixture-slow/sleep", json!({"ms": 60_000})).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["details"]["value"], 300);
    // A caller may only shorten the host's deadline, never extend it.
    let (status, body) = host
        .post(
            "/call",
            &json!({"operation": "hostile-loop/spin", "deadline_ms": 60_000}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["details"]["value"], 300);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_the_error_shape() {
    let host = TestHost::with_config(|config| config.gateway.max_body_bytes = 64 * 1024).await;
    let text = "a".repeat(100 * 1024);
    let (status, body) = host.call("textkit/stats", json!({ "text": text })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["result"], "error");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    // A body under the limit still goes through.
    let (status, _) = host
        .call("textkit/stats", json!({ "text": "a".repeat(1000) }))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_default_body_limit_is_one_mebibyte() {
    let host = TestHost::start().await;
    let (status, body) = host.call("echo/echo", json!("a".repeat(1_100_000))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, _) = host.call("echo/echo", json!("a".repeat(900_000))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn whole_numbers_written_as_floats_are_integers_on_both_sides() {
    let host = TestHost::start().await;
    // The plugin's own decoding: `to` is a u64.
    let events = host
        .subscribe("ticker/count", json!({"to": 3.0}))
        .await
        .collect()
        .await;
    let outputs: Vec<_> = events.iter().filter(|e| e.event == "message").collect();
    assert_eq!(outputs.len(), 3, "{events:?}");
    // The host's own fields.
    let (status, body) = host
        .post(
            "/call",
            &json!({"operation": "echo/echo", "input": 1, "deadline_ms": 1000.0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A fraction is refused; so is no time at all, rather than run into an
    // immediate timeout.
    for (deadline, why) in [
        (json!(1.5), "whole, non-negative number of milliseconds"),
        (json!(0), "0 ms leaves the call no time"),
        (json!(4_294_967_296_u64), "out of range"),
        (json!(1e30), "out of range"),
    ] {
        let (status, body) = host
            .post(
                "/call",
                &json!({"operation": "echo/echo", "input": 1, "deadline_ms": deadline}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{body}");
    }
    let mut tcp = crate::util::Frames::connect(&host).await;
    let payload = json!({"operationId": "echo/echo", "input": 2, "deadline_ms": 500.0});
    tcp.send("call.requested", "d", payload).await;
    let reply = tcp.next().await.unwrap();
    assert_eq!(reply["type"], "call.responded", "{reply}");
}

#[tokio::test]
async fn a_caller_who_hangs_up_stops_the_guest() {
    use tokio::io::AsyncWriteExt;
    let host = TestHost::start().await;
    let body = json!({"operation": "hostile-loop/spin", "deadline_ms": 60_000}).to_string();
    let mut socket = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let request = format!(
        "POST /call HTTP/1.1\r\nhost: opbox\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // The guest is running when the caller leaves.
    while host.host.runtime().live_instances() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(socket);
    // Left running, it would spin for the whole minute of its deadline.
    assert_eq!(
        host.wait_for_live(0, std::time::Duration::from_secs(5))
            .await,
        0
    );
    let (status, _) = host.call("echo/echo", json!(1)).await;
    assert_eq!(status, StatusCode::OK);
}
