//! Byte-stream operations (the raw carriage) over HTTP: `POST /raw/{ns}/{op}`
//! with the `gzip` example.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use opbox::config::PluginConfig;
use serde_json::{Value, json};

use crate::util::TestHost;

const FRAMED: &str = "application/vnd.opbox.raw";

/// The gzip example, its output budget (`output_bytes`: stdout and stderr
/// together, per call) at `output_bytes`.
async fn host_with_budget(output_bytes: usize) -> TestHost {
    host_with(|limits| limits.output_bytes = Some(output_bytes)).await
}

/// The gzip example with `configure` applied to its limits.
async fn host_with(configure: impl FnOnce(&mut opbox::runtime::PluginLimitsConfig)) -> TestHost {
    TestHost::with_config(|config| {
        let mut limits = opbox::runtime::PluginLimitsConfig::default();
        configure(&mut limits);
        config.plugins.push(PluginConfig {
            path: opbox::bundled::built_plugin("gzip"),
            reuse: None,
            name: None,
            tenant: None,
            grants: Default::default(),
            limits,
        });
    })
    .await
}

async fn host() -> TestHost {
    host_with_budget(1 << 30).await
}

#[tokio::test]
async fn a_call_in_which_nothing_moves_for_idle_ms_ends() {
    let host = host_with(|limits| limits.idle_ms = Some(300)).await;
    // One chunk, then a caller that keeps its side open and sends nothing.
    let body = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"abc")) })
        .chain(futures::stream::pending());
    let response = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .header("accept", FRAMED)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("the operation starts");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("the body ends");
    let frames = parse_frames(&body);
    let Some(Frame::Error(error)) = frames.last() else {
        panic!("the call did not end with an error: {frames:?}");
    };
    assert_eq!(error["code"], "TIMEOUT", "{error}");
    assert_eq!(error["details"]["limit"], "idle_ms", "{error}");
}

/// Bytes that compress, but not to nothing: numbered lines.
fn text(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 64);
    let mut n = 0u64;
    while out.len() < bytes {
        out.extend_from_slice(format!("line {n} of a stream, {}\n", n * 7919 % 10007).as_bytes());
        n += 1;
    }
    out.truncate(bytes);
    out
}

/// One parsed frame of the framed form.
#[derive(Debug, PartialEq)]
enum Frame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(u8),
    Error(Value),
}

fn parse_frames(mut body: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a frame's head is cut: {body:?}");
        let kind = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = body[5..5 + len].to_vec();
        body = &body[5 + len..];
        frames.push(match kind {
            1 => Frame::Stdout(payload),
            2 => Frame::Stderr(payload),
            3 => Frame::Exit(payload[0]),
            4 => Frame::Error(serde_json::from_slice(&payload).expect("the error is JSON")),
            other => panic!("unknown frame type {other}"),
        });
    }
    frames
}

/// Runs `operation` with `stdin` in the framed form; its frames.
async fn run_framed(host: &TestHost, operation: &str, stdin: Vec<u8>) -> Vec<Frame> {
    let response = host
        .client
        .post(host.url(&format!("/raw/{operation}")))
        .header("accept", FRAMED)
        .body(stdin)
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], FRAMED);
    parse_frames(&response.bytes().await.expect("the body arrives"))
}

fn stdout_of(frames: &[Frame]) -> Vec<u8> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Stdout(bytes) => Some(bytes.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

#[tokio::test]
async fn gzip_round_trips_a_stream_byte_exact() {
    let host = host().await;
    let original = text(8 << 20);
    // Sent as a stream of 64 KiB chunks, read as a stream.
    let chunks: Vec<Result<Bytes, std::io::Error>> = original
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let response = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let compressed = response.bytes().await.expect("the body arrives");
    assert!(
        compressed.len() < original.len() / 3,
        "{} bytes compressed to {}",
        original.len(),
        compressed.len()
    );
    assert_eq!(&compressed[..2], &[0x1f, 0x8b], "gzip's magic number");

    let frames = run_framed(&host, "gzip/decompress", compressed.to_vec()).await;
    assert_eq!(frames.last(), Some(&Frame::Exit(0)));
    assert!(!frames.iter().any(|f| matches!(f, Frame::Stderr(_))));
    // Output chunks are at most 64 KiB each.
    assert!(frames.iter().all(|f| match f {
        Frame::Stdout(bytes) => bytes.len() <= 64 << 10,
        _ => true,
    }));
    assert!(
        stdout_of(&frames) == original,
        "the round trip changed the bytes"
    );
}

#[tokio::test]
async fn an_operation_s_diagnostics_come_on_stderr_with_its_exit_code() {
    let host = host().await;
    let frames = run_framed(&host, "gzip/decompress", b"this is not gzip".to_vec()).await;
    let stderr: Vec<u8> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Stderr(bytes) => Some(bytes.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    let stderr = String::from_utf8(stderr).expect("stderr is text");
    assert!(stderr.starts_with("gzip: "), "{stderr:?}");
    assert!(stdout_of(&frames).is_empty());
    // The drained sentinel (an empty stdout frame), then the exit code.
    let end = &frames[frames.len() - 2..];
    assert_eq!(end, &[Frame::Stdout(Vec::new()), Frame::Exit(1)]);
}

#[tokio::test]
async fn arguments_are_checked_against_the_schema_before_the_bytes() {
    let host = host().await;
    let response = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .header("opbox-input", r#"{"level": 12}"#)
        .body("x")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["code"], "INVALID_INPUT", "{error}");

    let response = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .header("opbox-input", "{not json")
        .body("x")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 422);

    let frames = run_framed(&host, "gzip/compress", Vec::new()).await;
    assert_eq!(frames.last(), Some(&Frame::Exit(0)));
}

#[tokio::test]
async fn a_byte_stream_operation_is_not_a_query_and_a_query_is_not_a_byte_stream() {
    let host = host().await;
    let (status, body) = host.call("gzip/compress", json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_OPERATION_TYPE");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("byte-stream"), "{message}");

    let response = host
        .client
        .post(host.url("/raw/echo/echo"))
        .body("x")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["code"], "INVALID_OPERATION_TYPE");

    let response = host
        .client
        .post(host.url("/raw/gzip/nothing"))
        .body("x")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 404);
}

/// A caller that sends without reading: once the few chunks in between are
/// full, the operation waits on its stdout and stops reading stdin, so the
/// caller's upload stops too. Nothing grows with what the caller offers.
#[tokio::test]
async fn a_caller_that_stops_reading_holds_the_operation_back() {
    let host = host().await;
    let offered = Arc::new(AtomicUsize::new(0));
    let taken = offered.clone();
    // Level 0 stores: every byte in comes out, about as large.
    let chunk = Bytes::from(vec![b'x'; 64 << 10]);
    let body = futures::stream::repeat(chunk)
        .take(16 << 10) // 1 GiB, if it were all taken
        .inspect(move |c| {
            taken.fetch_add(c.len(), Ordering::Relaxed);
        })
        .map(Ok::<_, std::io::Error>);
    let response = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .header("opbox-input", r#"{"level": 0}"#)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("the operation starts");
    assert_eq!(response.status(), 200);
    // Wait until the upload has stopped moving, for as long as it moves.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = offered.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(
        last < 64 << 20,
        "{} MiB taken from a caller that reads nothing",
        last >> 20
    );
    // Reading again lets it go on.
    let mut body = response.bytes_stream();
    let mut read = 0;
    while read < 4 * last.max(1 << 20) {
        match body.next().await {
            Some(Ok(bytes)) => read += bytes.len(),
            other => panic!("the output ended early: {other:?}"),
        }
    }
    assert!(offered.load(Ordering::Relaxed) > last);
}

#[tokio::test]
async fn a_caller_that_goes_away_stops_the_operation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = host().await;
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    // HTTP/1.1 by hand, so that going away is closing the socket.
    let mut socket = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connects");
    socket
        .write_all(
            b"POST /raw/gzip/compress HTTP/1.1\r\nhost: opbox\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )
        .await
        .expect("head sent");
    let chunk = vec![b'y'; 32 << 10];
    let mut head = Vec::new();
    socket
        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .expect("sent");
    socket.write_all(&chunk).await.expect("sent");
    socket.write_all(b"\r\n").await.expect("sent");
    // The operation has started once its response head arrives.
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await.expect("reads");
        assert!(n > 0, "the host closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(host.host.runtime().live_instances(), 1);
    drop(socket);
    assert_eq!(
        host.wait_for_live(0, Duration::from_secs(10)).await,
        0,
        "the guest still runs after its caller left"
    );
}

#[tokio::test]
async fn output_bytes_is_a_byte_budget_for_the_whole_call() {
    let host = host_with_budget(1 << 20).await;
    // Zeros: a few KiB of stdin, all read, that decompress to 4 MiB.
    let frames = run_framed(&host, "gzip/decompress", gzip_of(&vec![0; 4 << 20]).await).await;
    let Some(Frame::Error(error)) = frames.last() else {
        panic!("the call did not end with an error: {:?}", frames.last());
    };
    assert_eq!(error["code"], "RESOURCE_EXHAUSTED", "{error}");
    assert_eq!(error["details"]["limit"], "output_bytes", "{error}");
    let out = stdout_of(&frames).len();
    assert!(out <= 1 << 20, "{out} bytes out past a budget of 1 MiB");
}

/// `bytes`, compressed by the gzip example.
async fn gzip_of(bytes: &[u8]) -> Vec<u8> {
    let host = host().await;
    let frames = run_framed(&host, "gzip/compress", bytes.to_vec()).await;
    assert_eq!(frames.last(), Some(&Frame::Exit(0)));
    stdout_of(&frames)
}
