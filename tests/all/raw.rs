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

pub(crate) const FRAMED: &str = "application/vnd.opbox.raw";

/// The gzip example, its output budget (`output_bytes`: stdout and stderr
/// together, per call) at `output_bytes`.
async fn host_with_budget(output_bytes: usize) -> TestHost {
    host_with(|limits| limits.output_bytes = Some(output_bytes)).await
}

/// The examples (`echo`, `gzip`, `calc` among them) and the fixtures,
/// `configure` applied to the gzip example's limits.
async fn host_with(configure: impl FnOnce(&mut opbox::runtime::PluginLimitsConfig)) -> TestHost {
    TestHost::with_config(|config| {
        let mut limits = opbox::runtime::PluginLimitsConfig::default();
        configure(&mut limits);
        // The bundled examples, each from its own `[[plugins]]`, so that
        // gzip's limits can be set.
        config.examples = false;
        for (name, _) in opbox::bundled::EXAMPLES {
            config.plugins.push(PluginConfig {
                path: format!("{}{name}", opbox::bundled::SCHEME).into(),
                reuse: None,
                name: None,
                tenant: None,
                grants: Default::default(),
                limits: if *name == "gzip" {
                    limits.clone()
                } else {
                    Default::default()
                },
            });
        }
    })
    .await
}

async fn host() -> TestHost {
    host_with_budget(1 << 30).await
}

/// Sends lines to `calc/repl` one at a time over `client`, each only once
/// the answer to the one before has arrived.
async fn each_line_is_answered_before_the_next_is_sent(client: reqwest::Client) {
    let host = host().await;
    let (lines, stdin) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let mut lines = lines;
    let response = client
        .post(host.url("/raw/calc/repl"))
        .header("accept", FRAMED)
        .body(reqwest::Body::wrap_stream(stdin))
        .send()
        .await
        .expect("the operation starts before any line is sent");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let mut frames = Vec::new();
    for (line, answer) in [
        ("1 + 2", Frame::Stdout(b"3\n".to_vec())),
        ("(7 - 10) * 4", Frame::Stdout(b"-12\n".to_vec())),
        (
            "1 / 0",
            Frame::Stderr(b"error: division by zero: 1 / 0\n".to_vec()),
        ),
        ("6 * 7", Frame::Stdout(b"42\n".to_vec())),
    ] {
        futures::SinkExt::send(&mut lines, Ok(Bytes::from(format!("{line}\n"))))
            .await
            .expect("the line is sent");
        // Nothing more is sent until this line's answer is read.
        while frames.is_empty() {
            // A host that held answers back until stdin ended would never
            // answer here.
            let next = tokio::time::timeout(Duration::from_secs(30), body.next());
            let bytes = next
                .await
                .unwrap_or_else(|_| panic!("no answer to `{line}` while the caller waits"))
                .expect("an answer comes")
                .expect("the body goes on");
            received.extend_from_slice(&bytes);
            let whole = complete_frames(&received);
            frames.extend(parse_frames(&received[..whole]));
            received.drain(..whole);
        }
        assert_eq!(frames.remove(0), answer, "the answer to `{line}`");
    }
    drop(lines);
    while let Some(bytes) = body.next().await {
        received.extend_from_slice(&bytes.expect("the body goes on"));
    }
    frames.extend(parse_frames(&received));
    assert_eq!(frames, [Frame::Stdout(Vec::new()), Frame::Exit(1)]);
}

/// How many leading bytes of `bytes` are whole frames.
fn complete_frames(bytes: &[u8]) -> usize {
    let mut at = 0;
    while bytes.len() >= at + 5 {
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        let end = at + 5 + len as usize;
        if end > bytes.len() {
            break;
        }
        at = end;
    }
    at
}

#[tokio::test]
async fn an_interactive_operation_answers_each_line_as_it_comes_over_http2() {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("a client");
    each_line_is_answered_before_the_next_is_sent(client).await;
}

#[tokio::test]
async fn an_interactive_operation_answers_each_line_as_it_comes_over_http1() {
    let client = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("a client");
    each_line_is_answered_before_the_next_is_sent(client).await;
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
pub(crate) fn text(bytes: usize) -> Vec<u8> {
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
pub(crate) enum Frame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(u8),
    Error(Value),
}

pub(crate) fn parse_frames(mut body: &[u8]) -> Vec<Frame> {
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

pub(crate) fn stdout_of(frames: &[Frame]) -> Vec<u8> {
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
/// A gzip bomb: 256 MiB of zeros packed into about 256 KiB. Decompressing
/// it stays within the plugin's 64 MiB of memory (each piece of input is
/// written out before the next goes in), and every byte comes out.
#[tokio::test]
async fn gzip_decompresses_a_bomb_in_constant_memory() {
    let host = host().await;
    let unpacked = 256 << 20;
    let packed = gzip_of(&vec![0u8; unpacked]).await;
    assert!(packed.len() < unpacked / 500, "{}", packed.len());
    let frames = run_framed(&host, "gzip/decompress", packed).await;
    assert_eq!(frames.last(), Some(&Frame::Exit(0)), "{:?}", frames.last());
    let out = stdout_of(&frames);
    assert_eq!(out.len(), unpacked);
    assert!(out.iter().all(|&b| b == 0));
}

async fn gzip_of(bytes: &[u8]) -> Vec<u8> {
    let host = host().await;
    let frames = run_framed(&host, "gzip/compress", bytes.to_vec()).await;
    assert_eq!(frames.last(), Some(&Frame::Exit(0)));
    stdout_of(&frames)
}

/// What a host sends on an envelope connection: a raw chunk or a JSON
/// envelope.
#[derive(Debug)]
enum Envelope {
    Chunk {
        stream_type: u8,
        id: String,
        data: Vec<u8>,
    },
    Json(Value),
}

fn envelope(bytes: &[u8]) -> Envelope {
    if bytes[0] <= 2 {
        let id_len = usize::from(bytes[1]);
        Envelope::Chunk {
            stream_type: bytes[0],
            id: String::from_utf8(bytes[2..2 + id_len].to_vec()).expect("a UTF-8 id"),
            data: bytes[2 + id_len..].to_vec(),
        }
    } else {
        Envelope::Json(serde_json::from_slice(bytes).expect("the host sends JSON"))
    }
}

/// A raw chunk of stdin from a caller.
pub(crate) fn stdin_chunk(id: &str, data: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, u8::try_from(id.len()).expect("a short id")];
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(data);
    frame
}

/// One TCP connection carries a byte stream, sent within the host's
/// credit, and JSON calls made while it runs; each JSON call is answered
/// while the stream is still going, and the stream round-trips.
#[tokio::test]
async fn a_raw_call_and_json_calls_share_one_tcp_connection() {
    let host = host().await;
    let mut conn = crate::util::Frames::connect(&host).await;
    let payload = json!({"operationId": "gzip/compress", "input": {}, "carriage": "raw"});
    conn.send("call.requested", "z", payload).await;
    let original = text(4 << 20);
    let mut credit: usize = 256 << 10;
    let (mut sent, mut eof_sent) = (0, false);
    let mut compressed = Vec::new();
    let (mut asked, mut answered) = (0, 0);
    let exit = loop {
        while !eof_sent && credit > 0 {
            if sent == original.len() {
                conn.send_raw(&stdin_chunk("z", &[])).await;
                eof_sent = true;
                break;
            }
            let end = (sent + (32 << 10)).min(original.len()).min(sent + credit);
            conn.send_raw(&stdin_chunk("z", &original[sent..end])).await;
            credit -= end - sent;
            sent = end;
            // A JSON call every 512 KiB of stdin, on the same connection.
            if sent % (512 << 10) == 0 {
                asked += 1;
                conn.call(&format!("e{asked}"), "echo/echo", json!({"n": asked}))
                    .await;
            }
        }
        let frame = conn.next_frame().await.expect("the host answers");
        match envelope(&frame) {
            Envelope::Chunk {
                stream_type,
                id,
                data,
            } => {
                assert_eq!((stream_type, id.as_str()), (1, "z"), "stdout of `z`");
                compressed.extend_from_slice(&data);
            }
            Envelope::Json(value) => match value["type"].as_str() {
                Some("call.credit") => {
                    assert_eq!(value["id"], "z");
                    credit += value["payload"]["bytes"].as_u64().expect("a count") as usize;
                }
                Some("call.responded") => {
                    answered += 1;
                    let n = value["id"].as_str().expect("an id")[1..]
                        .parse::<u64>()
                        .ok();
                    assert_eq!(Some(value["payload"]["output"]["n"].as_u64()), Some(n));
                }
                Some("call.completed") => {
                    assert_eq!(value["id"], "z");
                    break value["payload"]["exit_code"].clone();
                }
                _ => panic!("unexpected {value}"),
            },
        }
    };
    assert_eq!(exit, 0);
    assert!(eof_sent);
    assert!(asked >= 7, "{asked}");
    // JSON calls were answered while the stream ran, not after it.
    assert!(answered >= 1, "no JSON call was answered during the stream");
    while answered < asked {
        let frame = conn.next().await.expect("the other calls are answered");
        assert_eq!(frame["type"], "call.responded", "{frame}");
        answered += 1;
    }
    // Counted as answered: the call ended at its exit, not when its
    // stream was dropped.
    assert_eq!(calls_of(&host, "gzip/compress", "tcp", "ok").await, 1.0);
    let frames = run_framed(&host, "gzip/decompress", compressed).await;
    assert!(
        stdout_of(&frames) == original,
        "the round trip changed the bytes"
    );
}

/// How many calls of `operation` over `transport` the host counts as ended
/// with `code`.
async fn calls_of(host: &TestHost, operation: &str, transport: &str, code: &str) -> f64 {
    let (_, samples) = crate::metrics::scrape(host, None).await;
    let labels = [
        ("operation", operation),
        ("transport", transport),
        ("code", code),
    ];
    crate::metrics::value(&samples, "opbox_calls_total", &labels)
}

#[tokio::test]
async fn a_byte_stream_call_over_http_that_exits_is_counted_as_answered() {
    let host = host().await;
    // The plain form ends with a trailer, the framed one with its exit
    // frame and a trailer: either way hyper stops at the trailers.
    let plain = host
        .client
        .post(host.url("/raw/gzip/compress"))
        .body("hello, hello, hello")
        .send()
        .await
        .expect("request sent");
    assert_eq!(plain.status(), 200);
    let compressed = plain.bytes().await.expect("the body arrives");
    let frames = run_framed(&host, "gzip/decompress", compressed.to_vec()).await;
    assert_eq!(frames.last(), Some(&Frame::Exit(0)));
    for operation in ["gzip/compress", "gzip/decompress"] {
        assert_eq!(
            calls_of(&host, operation, "http", "ok").await,
            1.0,
            "{operation}"
        );
        assert_eq!(
            calls_of(&host, operation, "http", "aborted").await,
            0.0,
            "{operation}"
        );
    }
}

#[tokio::test]
async fn stdin_past_the_host_s_credit_ends_that_call_only() {
    let host = host().await;
    let mut conn = crate::util::Frames::connect(&host).await;
    // An operation that reads nothing: every byte sent stays ahead.
    let payload = json!({"operationId": "fixture-slow/deaf", "carriage": "raw"});
    conn.send("call.requested", "d", payload).await;
    // Frames of an unauthenticated connection are at most 64 KiB.
    let chunk = vec![b'j'; 32 << 10];
    for _ in 0..8 {
        conn.send_raw(&stdin_chunk("d", &chunk)).await;
    }
    // 256 KiB are within the credit; one byte more is not.
    conn.call("e1", "echo/echo", json!(1)).await;
    let first = conn.next().await.expect("an answer");
    assert_eq!(
        (first["id"].as_str(), first["type"].as_str()),
        (Some("e1"), Some("call.responded")),
        "{first}"
    );
    conn.send_raw(&stdin_chunk("d", b"x")).await;
    let refused = conn.next().await.expect("an answer");
    assert_eq!(refused["id"], "d", "{refused}");
    assert_eq!(refused["type"], "call.error");
    assert_eq!(refused["payload"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(refused["payload"]["details"]["limit"], "raw_window_bytes");
    // The connection and its other calls go on; the guest is gone.
    conn.call("e2", "echo/echo", json!(2)).await;
    let second = conn.next().await.expect("an answer");
    assert_eq!(second["id"], "e2", "{second}");
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
}

/// The interactive example over a WebSocket: stdin chunks as binary
/// messages, each line answered on stdout or stderr before the next is
/// sent, then the drained chunk and `call.completed` with the exit code.
#[tokio::test]
async fn an_interactive_operation_answers_each_line_over_a_websocket() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let host = host().await;
    let url = host.url("/call").replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("the WebSocket opens");
    let requested = json!({"type": "call.requested", "id": "c",
        "payload": {"operationId": "calc/repl", "carriage": "raw"}});
    socket
        .send(Message::text(requested.to_string()))
        .await
        .expect("sent");
    for (line, stream_type, answer) in [
        ("2 * (3 + 4)", 1, "14\n"),
        ("2 *", 2, "error: the line ends too soon: 2 *\n"),
        ("100 / 7", 1, "14\n"),
    ] {
        let chunk = stdin_chunk("c", format!("{line}\n").as_bytes());
        socket
            .send(Message::binary(chunk))
            .await
            .expect("the line is sent");
        let got = next_envelope(&mut socket).await;
        let Envelope::Chunk {
            stream_type: got_type,
            id,
            data,
        } = got
        else {
            panic!("not a chunk: {got:?}");
        };
        assert_eq!((got_type, id.as_str()), (stream_type, "c"), "for `{line}`");
        assert_eq!(String::from_utf8_lossy(&data), answer, "for `{line}`");
    }
    socket
        .send(Message::binary(stdin_chunk("c", &[])))
        .await
        .expect("stdin closed");
    let drained = next_envelope(&mut socket).await;
    assert!(
        matches!(&drained, Envelope::Chunk { stream_type: 1, data, .. } if data.is_empty()),
        "{drained:?}"
    );
    let Envelope::Json(done) = next_envelope(&mut socket).await else {
        panic!("no call.completed");
    };
    assert_eq!(done["type"], "call.completed", "{done}");
    assert_eq!(done["payload"]["exit_code"], 1, "one line was not answered");
    assert!(done["payload"]["cost"].is_object(), "{done}");
}

async fn next_envelope<S>(socket: &mut S) -> Envelope
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("an answer while the caller waits")
            .expect("the socket stays open")
            .expect("a message");
        let got = match message {
            Message::Binary(bytes) => envelope(&bytes),
            Message::Text(text) => envelope(text.as_bytes()),
            _ => continue,
        };
        match got {
            Envelope::Json(value) if value["type"] == "call.credit" => continue,
            got => return got,
        }
    }
}

/// Runs `opbox call OPERATION --url URL [ARGS]` with `stdin`; its exit
/// code, stdout and stderr.
pub(crate) async fn opbox_call(
    url: &str,
    operation: &str,
    args: &[&str],
    stdin: Vec<u8>,
) -> (i32, Vec<u8>, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opbox"))
        .args(["call", operation])
        .args(args)
        .args(["--url", url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("opbox starts");
    let mut input = child.stdin.take().expect("a stdin");
    let feeding = tokio::spawn(async move {
        input.write_all(&stdin).await.expect("stdin is taken");
    });
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("opbox call ends")
        .expect("its output");
    feeding.await.expect("fed");
    (
        output.status.code().unwrap_or(-1),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `opbox call` pipes its standard streams through a byte-stream
/// operation, over TCP and over a WebSocket, and ends with its exit code.
#[tokio::test]
async fn opbox_call_pipes_stdin_and_stdout_through_a_byte_stream_operation() {
    let host = host().await;
    let tcp = format!("tcp://{}", host.tcp_addr);
    let ws = host.url("/call").replace("http://", "ws://");
    let original = text(1 << 20);
    let (code, compressed, stderr) = opbox_call(
        &tcp,
        "gzip/compress",
        &[r#"{"level": 9}"#],
        original.clone(),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(&compressed[..2], &[0x1f, 0x8b]);
    let (code, restored, stderr) = opbox_call(&ws, "gzip/decompress", &[], compressed).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(restored == original, "the round trip changed the bytes");

    let (code, stdout, stderr) =
        opbox_call(&tcp, "calc/repl", &[], b"1 + 2\n2 *\n6 * 7\n".to_vec()).await;
    assert_eq!(String::from_utf8_lossy(&stdout), "3\n42\n");
    assert_eq!(stderr, "error: the line ends too soon: 2 *\n");
    assert_eq!(code, 1, "the operation's exit code");
}
