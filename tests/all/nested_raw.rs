//! Byte-stream operations called from inside operations (`invoke.run`,
//! `Context::run` in the SDK): a query that runs one on a string, and a
//! byte-stream operation (`fixture-slow/nest-raw`) that passes its own
//! stdin through another and that one's outputs back as they come.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::raw::{FRAMED, Frame, parse_frames, stdout_of, text};
use crate::util::{Frames, TestHost};

/// `fixture-slow/nest-raw` running `operation` with `input`, over HTTP in
/// the framed form, with `stdin`: its frames.
async fn through(host: &TestHost, operation: &str, input: Value, stdin: Vec<u8>) -> Vec<Frame> {
    let arguments = json!({"operation": operation, "input": input});
    let response = host
        .client
        .post(host.url("/raw/fixture-slow/nest-raw"))
        .header("accept", FRAMED)
        .header("opbox-input", arguments.to_string())
        .body(stdin)
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    parse_frames(&response.bytes().await.expect("the body arrives"))
}

/// A query runs `calc/repl` on its lines: stdout and stderr come back
/// apart, with the exit code, and what the nested call cost is on the
/// query's receipt.
#[tokio::test]
async fn an_operation_runs_a_byte_stream_operation_and_reads_its_outputs() {
    let host = TestHost::start().await;
    let input = json!({
        "operation": "calc/repl",
        "stdin": "1 + 2\nsix\n6 * 7\n",
    });
    let input_len = input.to_string().len();
    let response = host
        .client
        .post(host.url("/call"))
        .json(&json!({"operation": "fixture-slow/run", "input": input}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    let cost: Value = serde_json::from_slice(response.headers()["opbox-cost"].as_bytes())
        .expect("the cost is JSON");
    let body: Value = response.json().await.expect("a JSON answer");
    let output = &body["output"];
    assert_eq!(output["stdout"], "3\n42\n", "{body}");
    let stderr = output["stderr"].as_str().expect("stderr is text");
    assert!(
        stderr.starts_with("error: ") && stderr.ends_with(": six\n"),
        "{stderr:?}"
    );
    // A line it could not answer: calc's exit code 1, as it came.
    assert_eq!(output["code"], 1, "{body}");
    assert_eq!(cost["host_calls"]["nested"], 1, "{cost}");
    // The nested call's bytes are the query's too: its output and its 18
    // bytes of stdin, beside the query's own JSON.
    let own_out = output.to_string().len();
    let nested_out = "3\n42\n".len() + stderr.len();
    assert_eq!(cost["bytes_out"], own_out + nested_out, "{cost}");
    let bytes_in = cost["bytes_in"].as_u64().expect("a count") as usize;
    assert!(bytes_in >= input_len + 18, "{cost}");
}

/// The caller's bytes go through `gzip/compress` and back out by way of
/// another operation, and through `gzip/decompress` again: byte-exact;
/// what the inner operation writes on stderr, and its exit code, come out
/// of the outer one.
#[tokio::test]
async fn a_byte_stream_operation_passes_its_bytes_through_another() {
    let host = TestHost::start().await;
    let original = text(300 << 10);
    let compressed = through(&host, "gzip/compress", json!({}), original.clone()).await;
    assert_eq!(
        compressed.last(),
        Some(&Frame::Exit(0)),
        "{:?}",
        compressed.last()
    );
    let compressed = stdout_of(&compressed);
    assert!(compressed.len() < original.len() / 2);
    let restored = through(&host, "gzip/decompress", json!({}), compressed).await;
    assert_eq!(restored.last(), Some(&Frame::Exit(0)));
    assert!(
        stdout_of(&restored) == original,
        "the round trip changed the bytes"
    );

    let refused = through(&host, "gzip/decompress", json!({}), b"not gzip".to_vec()).await;
    assert_eq!(refused.last(), Some(&Frame::Exit(1)), "{refused:?}");
    let stderr: Vec<u8> = refused
        .iter()
        .filter_map(|f| match f {
            Frame::Stderr(bytes) => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(stderr.starts_with(b"gzip: "), "{refused:?}");
}

/// What the nested call refuses before it starts comes back as the outer
/// operation's error: a name nobody uses, and an operation that is not a
/// byte stream.
#[tokio::test]
async fn a_nested_byte_stream_call_is_refused_as_the_wire_refuses_it() {
    let host = TestHost::start().await;
    for (operation, code) in [
        ("nobody/here", "NOT_FOUND"),
        ("echo/echo", "INVALID_OPERATION_TYPE"),
    ] {
        let input = json!({"operation": operation, "stdin": ""});
        let (status, body) = host.call("fixture-slow/run", input).await;
        assert_ne!(status, StatusCode::OK, "{body}");
        assert_eq!(body["error"]["code"], code, "{operation}: {body}");
    }
}

/// Aborting the outer call over an envelope connection stops the byte-stream
/// operation it started, which would otherwise never end.
#[tokio::test]
async fn an_abort_stops_a_nested_byte_stream_operation() {
    let host = TestHost::start().await;
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    let mut tcp = Frames::connect(&host).await;
    let payload = json!({
        "operationId": "fixture-slow/nest-raw",
        "input": {"operation": "fixture-slow/deaf"},
        "carriage": "raw",
    });
    tcp.send("call.requested", "deep", payload).await;
    // Two instances: nest-raw and deaf.
    assert_eq!(host.wait_for_live(2, Duration::from_secs(10)).await, 2);
    tcp.send("call.aborted", "deep", json!({})).await;
    assert_eq!(
        host.wait_for_live(0, Duration::from_secs(10)).await,
        0,
        "an instance still runs after the abort"
    );
}
