//! The examples in other languages: `plugins/greeter-py` (componentize-py)
//! and `plugins/greeter-js` (jco with QuickJS), built by `host/build.rs`
//! when their toolchains are at hand. `.ci/run` installs both and sets
//! `OPBOX_REQUIRE_TOOLCHAINS`, so CI never skips these.

use std::path::PathBuf;

use opbox::capabilities::Grants;
use opbox::config::PluginConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::raw::{FRAMED, Frame, parse_frames};
use crate::util::TestHost;

/// Byte-stream `operation` run over HTTP with `stdin`, in the framed form.
async fn raw_frames(host: &TestHost, operation: &str, stdin: &str) -> Vec<Frame> {
    let response = host
        .client
        .post(host.url(&format!("/raw/{operation}")))
        .header("accept", FRAMED)
        .body(stdin.to_owned())
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    parse_frames(&response.bytes().await.expect("the body arrives"))
}

/// Stdout and stderr of `frames`, as text.
fn split_outputs(frames: &[Frame]) -> (String, String) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for frame in frames {
        match frame {
            Frame::Stdout(bytes) => stdout.extend_from_slice(bytes),
            Frame::Stderr(bytes) => stderr.extend_from_slice(bytes),
            _ => {}
        }
    }
    let text = |bytes| String::from_utf8(bytes).expect("text");
    (text(stdout), text(stderr))
}

/// The example built at `path`, or `None` (and a note) where its toolchain
/// was not installed when the host was built.
pub fn example(path: &str, toolchain: &str, variable: &str) -> Option<PathBuf> {
    if path.is_empty() {
        assert!(
            std::env::var_os("OPBOX_REQUIRE_TOOLCHAINS").is_none(),
            "{toolchain} was not found when the host was built: set {variable} \
             or put it on the PATH (.ci/run installs it)"
        );
        eprintln!("skipped: {toolchain} is not installed");
        return None;
    }
    Some(path.into())
}

/// A host serving the plugin at `path` with `grants` (and the bundled
/// examples).
async fn host_with(path: PathBuf, grants: Grants) -> TestHost {
    TestHost::with_config(|config| {
        config.plugins = vec![PluginConfig {
            path,
            reuse: None,
            name: None,
            tenant: None,
            grants,
            limits: Default::default(),
        }];
    })
    .await
}

/// An upstream answering `GET /hello`; its address.
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { "hello from upstream" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `plugin/hello` greets, refuses an input its schema does not allow, and
/// answers an empty name with the domain error `EMPTY_NAME` and its details.
async fn greets_and_refuses(host: &TestHost, plugin: &str) {
    let hello = format!("{plugin}/hello");
    let (status, body) = host.call(&hello, json!({"name": "Ada"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!({"message": "Hello, Ada!"}));
    let (status, body) = host.call(&hello, json!({"nam": "Ada"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    let (status, body) = host.call(&hello, json!({"name": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "EMPTY_NAME");
    assert_eq!(body["error"]["details"], json!({"field": "name"}));
}

/// `plugin/count` streams from an async generator over SSE, and
/// `plugin/version`, an operation without input, takes `null` or `{}` and
/// nothing else.
async fn counts_and_takes_no_input(host: &TestHost, plugin: &str) {
    let events = host
        .subscribe(&format!("{plugin}/count"), json!({"to": 3}))
        .await
        .collect()
        .await;
    let items: Vec<_> = events.iter().take(3).map(|e| e.json()).collect();
    assert_eq!(items, [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
    assert_eq!(events[3].event, "completed");
    let version = format!("{plugin}/version");
    for input in [json!(null), json!({})] {
        let (status, body) = host.call(&version, input).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["output"], "0.1.0");
    }
    let (status, body) = host.call(&version, json!({"x": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn the_python_example_answers_streams_fails_and_calls_others() {
    let python = env!("OPBOX_PYTHON_EXAMPLE");
    let Some(path) = example(python, "componentize-py", "OPBOX_COMPONENTIZE_PY") else {
        return;
    };
    let addr = upstream().await;
    let grants = Grants {
        allowed_outbound_hosts: vec![format!("http://127.0.0.1:{}", addr.port())],
        ..Grants::default()
    };
    let host = host_with(path, grants).await;

    // Its input schema comes from a dataclass.
    greets_and_refuses(&host, "greeter-py").await;

    // A nested call to a Rust example.
    let (status, body) = host
        .call("greeter-py/words", json!({"text": "the cat the hat"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!({"words": 4, "top": "the"}));

    counts_and_takes_no_input(&host, "greeter-py").await;

    // An outbound request, awaited: to the granted host only.
    let url = format!("http://127.0.0.1:{}/hello", addr.port());
    let (status, body) = host.call("greeter-py/get", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["output"],
        json!({"status": 200, "body": "hello from upstream"})
    );
    let url = format!("http://localhost:{}/hello", addr.port());
    let (_, body) = host.call("greeter-py/get", json!({"url": url})).await;
    assert_eq!(body["error"]["code"], "HTTP_DENIED", "{body}");

    // A byte-stream operation: each name read is greeted on stdout, an
    // empty line is said on stderr and makes the exit code 1.
    let frames = raw_frames(&host, "greeter-py/greet-lines", "Ada\n\nBob\n").await;
    let (stdout, stderr) = split_outputs(&frames);
    assert_eq!(stdout, "Hello, Ada!\nHello, Bob!\n", "{frames:?}");
    assert_eq!(stderr, "say who to greet\n", "{frames:?}");
    assert_eq!(frames.last(), Some(&Frame::Exit(1)), "{frames:?}");
    // And one run from inside a query, with stdin written while stdout is
    // read.
    let text = "the cat sat on the mat; ".repeat(200);
    let (status, body) = host.call("greeter-py/gzipped", json!({"text": text})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["text"], text.len(), "{body}");
    let gzipped = body["output"]["gzipped"].as_u64().expect("a size");
    assert!(gzipped > 20 && gzipped < 200, "{body}");

    // An exception: its message and the traceback's tail reach the caller.
    let (status, body) = host.call("greeter-py/broken", json!({"text": "x"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let details = &body["error"]["details"];
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ValueError: cannot handle 'x'"),
        "{message}"
    );
    assert_eq!(
        details["message"], "ValueError: cannot handle 'x'",
        "{details}"
    );
    let stderr = details["stderr"].as_str().unwrap();
    assert!(stderr.contains("in broken"), "{stderr}");
    assert!(stderr.contains("ValueError: cannot handle 'x'"), "{stderr}");
}

#[tokio::test]
async fn the_javascript_example_answers_streams_fails_and_calls_others() {
    let js = env!("OPBOX_JS_EXAMPLE");
    let Some(path) = example(js, "jco", "OPBOX_JCO") else {
        return;
    };
    let addr = upstream().await;
    let grants = Grants {
        allowed_outbound_hosts: vec![format!("http://127.0.0.1:{}", addr.port())],
        ..Grants::default()
    };
    let host = host_with(path, grants).await;

    // Its input schema is a JSON Schema object.
    greets_and_refuses(&host, "greeter-js").await;
    counts_and_takes_no_input(&host, "greeter-js").await;

    // A call to another plugin's operation, through `invoke` (QuickJS
    // imports no async function: the host's blocking twin serves it).
    let input = json!({"from": "js", "n": [1, 2]});
    let (status, body) = host.call("greeter-js/echoed", input.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!({ "echoed": input }));

    // An outbound request through `fetch`: to the granted host only, and a
    // refusal arrives as the host's error.
    let url = format!("http://127.0.0.1:{}/hello", addr.port());
    let (status, body) = host.call("greeter-js/fetched", json!({"url": url})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["output"],
        json!({"status": 200, "text": "hello from upstream"})
    );
    let url = format!("http://localhost:{}/hello", addr.port());
    let (_, body) = host.call("greeter-js/fetched", json!({"url": url})).await;
    assert_eq!(body["error"]["code"], "HTTP_DENIED", "{body}");

    // An exception: its message and its stack reach the caller.
    let (status, body) = host.call("greeter-js/broken", json!({"text": "x"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let details = &body["error"]["details"];
    assert_eq!(
        details["message"], "TypeError: cannot handle \"x\"",
        "{details}"
    );
    let stderr = details["stderr"].as_str().unwrap();
    assert!(stderr.contains("app.js"), "{stderr}");

    // The host keeps serving it.
    let (status, _) = host.call("greeter-js/hello", json!({"name": "Bo"})).await;
    assert_eq!(status, StatusCode::OK);
}
