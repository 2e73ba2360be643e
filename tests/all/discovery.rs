//! `GET /search`, `GET /schema`, `GET /healthz`, and the native services.

use reqwest::StatusCode;
use serde_json::json;

use crate::util::TestHost;

#[tokio::test]
async fn healthz_answers_ok() {
    let host = TestHost::start().await;
    let (status, body) = host.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn search_lists_every_visible_operation() {
    let host = TestHost::start().await;
    let (status, body) = host.get("/search").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["name"].as_str().unwrap())
        .collect();
    for expected in [
        "echo/echo",
        "echo/fail",
        "ticker/count",
        "textkit/stats",
        "services/list",
        "services/schema",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let ticker = body["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["name"] == "ticker/count")
        .unwrap();
    assert_eq!(ticker["op_type"], "subscription");
    assert!(ticker["description"].as_str().unwrap().contains("Counts"));
}

#[tokio::test]
async fn search_filters_by_name_or_description() {
    let host = TestHost::start().await;
    let (_, body) = host.get("/search?q=ECHO").await;
    let names: Vec<&str> = body["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["name"].as_str().unwrap())
        .collect();
    // textkit/summary matches by its description, which names echo/echo.
    assert_eq!(names, ["echo/echo", "echo/fail", "textkit/summary"]);
    let (_, body) = host.get("/search?q=frequent").await;
    assert_eq!(body["operations"][0]["name"], "textkit/stats");
    let (_, body) = host.get("/search?q=zzz-nothing").await;
    assert_eq!(body["operations"], json!([]));
}

#[tokio::test]
async fn schema_returns_the_full_spec() {
    let host = TestHost::start().await;
    let (status, spec) = host.get("/schema?name=textkit/stats").await;
    assert_eq!(status, StatusCode::OK, "{spec}");
    assert_eq!(spec["name"], "textkit/stats");
    assert_eq!(spec["op_type"], "query");
    assert_eq!(spec["visibility"], "external");
    assert_eq!(spec["input_schema"]["properties"]["text"]["type"], "string");
    assert_eq!(spec["input_schema"]["required"], json!(["text"]));
    assert_eq!(
        spec["output_schema"]["properties"]["words"]["type"],
        "integer"
    );
}

#[tokio::test]
async fn schema_of_an_unknown_operation_is_not_found() {
    let host = TestHost::start().await;
    let (status, body) = host.get("/schema?name=nope/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let (status, body) = host.get("/schema").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let host = TestHost::start().await;
    let (status, body) = host.get("/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    // GET /call is for WebSocket upgrades only.
    let (status, body) = host.get("/call").await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    let (status, body) = host.get("/batch").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["result"], "error");
}

#[tokio::test]
async fn the_services_are_operations_too() {
    let host = TestHost::start().await;
    let (status, body) = host.call("services/list", json!({"q": "ticker"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["operations"][0]["name"], "ticker/count");
    let (status, body) = host
        .call("services/schema", json!({"name": "echo/echo"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["op_type"], "query");
    let (status, body) = host
        .call("services/schema", json!({"name": "nope/x"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
