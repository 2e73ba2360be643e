//! The Python example (`plugins/greeter-py`, built with componentize-py by
//! `host/build.rs` when the tool is at hand; `.ci/run` installs it and sets
//! `OPBOX_REQUIRE_TOOLCHAINS`, so CI never skips this).

use opbox::config::PluginConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::util::TestHost;

/// The built example, or `None` (and a note) where componentize-py is not
/// installed.
fn python_example() -> Option<std::path::PathBuf> {
    let path = env!("OPBOX_PYTHON_EXAMPLE");
    if path.is_empty() {
        assert!(
            std::env::var_os("OPBOX_REQUIRE_TOOLCHAINS").is_none(),
            "componentize-py was not found when the host was built: set \
             OPBOX_COMPONENTIZE_PY or put it on the PATH (.ci/run installs it)"
        );
        eprintln!("skipped: componentize-py is not installed");
        return None;
    }
    Some(path.into())
}

#[tokio::test]
async fn the_python_example_answers_streams_fails_and_calls_others() {
    let Some(path) = python_example() else {
        return;
    };
    let host = TestHost::with_config(|config| {
        config.plugins = vec![PluginConfig {
            path,
            name: None,
            tenant: None,
            grants: Default::default(),
            limits: Default::default(),
        }];
    })
    .await;

    // A query whose input schema comes from a dataclass.
    let (status, body) = host.call("greeter-py/hello", json!({"name": "Ada"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!({"message": "Hello, Ada!"}));
    let (status, body) = host.call("greeter-py/hello", json!({"nam": "Ada"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");

    // A domain error, with its details.
    let (status, body) = host.call("greeter-py/hello", json!({"name": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "EMPTY_NAME");
    assert_eq!(body["error"]["details"], json!({"field": "name"}));

    // A nested call to a Rust example.
    let (status, body) = host
        .call("greeter-py/words", json!({"text": "the cat the hat"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], json!({"words": 4, "top": "the"}));

    // A subscription from an async generator, over SSE.
    let events = host
        .subscribe("greeter-py/count", json!({"to": 3}))
        .await
        .collect()
        .await;
    let items: Vec<_> = events.iter().take(3).map(|e| e.json()).collect();
    assert_eq!(items, [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
    assert_eq!(events[3].event, "completed");

    // An exception: its message and the traceback's tail reach the caller.
    let (status, body) = host.call("greeter-py/broken", json!({"text": "x"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let details = &body["error"]["details"];
    assert_eq!(
        details["message"], "Python function threw an unexpected exception",
        "{details}"
    );
    let stderr = details["stderr"].as_str().unwrap();
    assert!(stderr.contains("in broken"), "{stderr}");
    assert!(stderr.contains("ValueError: cannot handle 'x'"), "{stderr}");
}
