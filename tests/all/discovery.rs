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
    assert_eq!(
        names,
        ["echo/cat", "echo/echo", "echo/fail", "textkit/summary"]
    );
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
    // A known route with a method it does not take: 405, with `Allow`.
    let response = host.client.get(host.url("/batch")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["result"], "error");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    let response = host.client.post(host.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
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

#[tokio::test]
async fn openapi_describes_the_routes_and_the_callers_operations() {
    let host = TestHost::start().await;
    let (status, doc) = host.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/call",
        "/batch",
        "/subscribe",
        "/search",
        "/schema",
        "/openapi.json",
        "/healthz",
        "/admin/v1/plugins",
        "/admin/v1/plugins/{name}",
        "/admin/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["paths"]["/admin/v1/plugins/{name}"]["put"].is_object());
    let operations = |path: &str| -> Vec<String> {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|op| {
                op["properties"]["operation"]["const"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let (calls, subscriptions) = (operations("/call"), operations("/subscribe"));
    assert!(calls.contains(&"echo/echo".to_owned()), "{calls:?}");
    assert!(!calls.contains(&"ticker/count".to_owned()), "{calls:?}");
    assert!(
        subscriptions.contains(&"ticker/count".to_owned()),
        "{subscriptions:?}"
    );
    // Internal operations are not part of anyone's API.
    assert!(!calls.contains(&"fixture-slow/secret".to_owned()));
    // An operation's schemas are components, as /schema gives them, their
    // definitions components of their own.
    let (_, spec) = host.get("/schema?name=textkit/stats").await;
    let schemas = &doc["components"]["schemas"];
    let mut expected = spec["input_schema"].clone();
    expected.as_object_mut().unwrap().remove("$schema");
    // textkit/summary takes the same type, so the two share a title; each
    // gets its component's name instead, for client generators that name
    // types after titles.
    assert_eq!(expected["title"], "StatsInput");
    expected["title"] = json!("textkit.stats.input");
    assert_eq!(schemas["textkit.stats.input"], expected);
    assert_eq!(
        schemas["textkit.summary.input"]["title"],
        "textkit.summary.input"
    );
    let output = &spec["output_schema"];
    assert!(output["$defs"]["WordCount"].is_object(), "{output}");
    assert!(schemas["textkit.stats.output"].get("$defs").is_none());
    assert_eq!(
        schemas["textkit.stats.output.WordCount"],
        output["$defs"]["WordCount"]
    );
    assert!(
        !doc.to_string().contains("\"$id\""),
        "no schema sets its own base"
    );
    // Every reference to a component resolves.
    fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} leaves the document"));
        assert!(doc.pointer(pointer).is_some(), "{r} dangles");
    }
}
