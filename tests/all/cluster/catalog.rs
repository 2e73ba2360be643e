//! One catalog: what any host of the cluster holds is listed on every
//! host, and callable there by the name it is listed under; once its hosts
//! are gone, its calls are `UNAVAILABLE`, not `NOT_FOUND`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{CATALOG_REFRESH_MS, Nats, call, eventually, host, plugins};
use crate::admin::{OPERATOR, fixture, upload};
use crate::mcp::Client;
use crate::util::Server;

/// `[[tenants.tokens]]` for the operator, who may install plugins, and the
/// host's `zone` label.
fn operator_in(zone: &str) -> String {
    format!(
        "[[tenants.tokens]]\nid = \"operator\"\nsha256 = {:?}\nscopes = [\"admin\"]\n\
         [cluster.labels]\nzone = {zone:?}\n",
        opbox::tenants::hash_token_hex(OPERATOR)
    )
}

/// `GET path` on `server`: the status and the JSON body.
async fn get(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// The operation names `/search` on `server` lists.
async fn searched(server: &Server) -> Vec<String> {
    let (status, body) = get(server, "/search").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["operations"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|op| op["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The official MCP Python SDK on `server`'s `/mcp`, waiting for `tool`
/// to be listed, then calling it (`tests/all/scripts/mcp_tool_call.py`).
fn mcp_waiting_for(server: &Server, tool: &str) -> Client {
    let python = crate::tools::python_with("mcp", "2.3.0");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/all/scripts/mcp_tool_call.py"
    );
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .args([format!("{}/mcp", server.url), tool.to_owned()]);
    Client::spawn(command)
}

#[tokio::test]
async fn what_one_host_holds_is_listed_and_called_through_another_until_it_is_gone() {
    let nats = Nats::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host(&nats, dir_a.path(), "examples = false", &operator_in("eu"));
    let b = host(&nats, dir_b.path(), "examples = false", &operator_in("us"));

    // An MCP client of B, in session before the plugin exists.
    let mut mcp = mcp_waiting_for(&b, "fixture-v1.which");
    let listening = mcp.next("listening").await;
    assert!(
        !listening["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("fixture-v1.which")),
        "{listening}"
    );

    // Installed through A, placed where only A is: B does not hold it.
    let (status, installed) = upload(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        format!("{}/admin/v1/plugins", a.url),
        Some(OPERATOR),
        Some(json!({ "placement": { "zone": "eu" } })),
        fixture("fixture-v1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{installed}");
    let operation = "fixture-v1/which";

    // B lists it with its own operations, once.
    let within = Duration::from_secs(10);
    assert!(
        eventually(within, || async {
            searched(&b).await.iter().any(|name| name == operation)
        })
        .await,
        "B does not list A's operation: {:?}",
        searched(&b).await
    );
    let (status, held, _) = call(&b, None, "services/plugin", json!({"name": "fixture-v1"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "B holds it itself: {held}");
    let listed = searched(&b).await;
    assert_eq!(listed.iter().filter(|name| *name == operation).count(), 1);
    assert!(
        listed.iter().any(|name| name == "services/list"),
        "{listed:?}"
    );
    let (status, schema) = get(&b, &format!("/schema?name={operation}")).await;
    assert_eq!(status, StatusCode::OK, "{schema}");
    assert_eq!(schema["name"], operation, "{schema}");
    let (_, openapi) = get(&b, "/openapi.json").await;
    assert!(
        openapi["paths"][format!("/ops/{operation}")]["post"].is_object(),
        "{}",
        openapi["paths"]
    );
    // Its route on B reaches A.
    let routed = reqwest::Client::new()
        .post(format!("{}/ops/{operation}", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), StatusCode::OK);
    assert_eq!(routed.json::<Value>().await.unwrap(), json!({"version": 1}));

    // B's MCP client was told its tools changed, sees it as a tool, and
    // calls it by that name.
    let called = mcp.next("called").await;
    mcp.ends_well().await;
    let mcp = called;
    assert_eq!(mcp["is_error"], false, "{mcp}");
    // Its output schema is not an object's: opbox wraps it, as for a
    // tool of its own.
    assert_eq!(
        mcp["structured"],
        json!({"output": {"version": 1}}),
        "{mcp}"
    );

    // A is killed: its operation is unavailable (retryable), a name
    // nobody held is still not found, and within three missed refreshes
    // B no longer lists it.
    let (status, junk, _) = call(&b, None, "nosuch/thing", json!(null)).await;
    assert_eq!(
        (status, &junk["code"]),
        (StatusCode::NOT_FOUND, &json!("NOT_FOUND"))
    );
    a.kill();
    let (status, error, _) = call(&b, None, operation, json!(null)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["code"], "UNAVAILABLE", "{error}");
    assert_eq!(error["retryable"], true, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("unreachable"),
        "{error}"
    );
    let (status, junk, _) = call(&b, None, "nosuch/thing", json!(null)).await;
    assert_eq!(
        (status, &junk["code"]),
        (StatusCode::NOT_FOUND, &json!("NOT_FOUND"))
    );
    let gone = Duration::from_millis(CATALOG_REFRESH_MS * 3) + Duration::from_secs(2);
    assert!(
        eventually(gone, || async {
            !searched(&b).await.iter().any(|name| name == operation)
        })
        .await,
        "B still lists the operation of a host killed {gone:?} ago"
    );
    // Still unavailable rather than unknown once it is no longer listed.
    let (status, error, _) = call(&b, None, operation, json!(null)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");

    // A host that stops (drains) leaves the listings at once, and its
    // operations are unavailable too.
    let dir_c = tempfile::tempdir().unwrap();
    let c = host(
        &nats,
        dir_c.path(),
        "examples = false",
        &plugins(&["fixture-slow"]),
    );
    let sleep = "fixture-slow/sleep";
    assert!(
        eventually(within, || async {
            searched(&b).await.iter().any(|n| n == sleep)
        })
        .await,
        "B does not list C's operation"
    );
    c.stop();
    // Its last share says so: sooner than three missed refreshes would.
    let told = Duration::from_millis(CATALOG_REFRESH_MS * 2);
    assert!(
        eventually(told, || async {
            !searched(&b).await.iter().any(|n| n == sleep)
        })
        .await,
        "B still lists the operation of a host that left {told:?} ago"
    );
    let (status, error, _) = call(&b, None, sleep, json!({"ms": 1})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
}
