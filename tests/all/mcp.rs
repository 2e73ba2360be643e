//! `/mcp` as an AI agent's MCP client sees it: the official Python SDK
//! (`mcp` from PyPI) and the official TypeScript one (from npm) list tools
//! per caller, call queries with structured output, get typed errors, run
//! a subscription with progress notifications, cancel one (and the guest
//! stops); the Python one hears when the tool list changes.

use std::process::Stdio;
use std::time::Duration;

use opbox::HostConfig;
use opbox::config::PluginConfig;
use opbox::tenants::{Quotas, TenantConfig, TokenConfig, hash_token_hex};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::admin::{OPERATOR, fixture, install, with_operator};
use crate::tools::{node_with, python_with};
use crate::util::TestHost;

/// A token of tenant `acme`, which alone has the plugin `vault`.
const ACME: &str = "acme-token";

fn config(config: &mut HostConfig, data: &std::path::Path) {
    with_operator(config, data);
    config.tenants.push(TenantConfig {
        id: "acme".into(),
        anonymous: false,
        tokens: vec![TokenConfig {
            id: "acme-user".into(),
            sha256: hash_token_hex(ACME),
            scopes: vec![],
        }],
        quotas: Quotas::default(),
        plugins: Default::default(),
    });
    config.plugins.push(PluginConfig {
        path: opbox::bundled::built_plugin("echo"),
        reuse: None,
        name: Some("vault".into()),
        tenant: Some("acme".into()),
        grants: Default::default(),
        limits: Default::default(),
    });
}

/// An MCP client script run as a child: its reports, one JSON line each,
/// and what it wrote to stderr, for the failure message.
pub(crate) struct Client {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    errors: tokio::task::JoinHandle<String>,
}

impl Client {
    pub(crate) fn spawn(mut command: tokio::process::Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = child.stderr.take().unwrap();
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Self {
            child,
            stdin,
            lines,
            errors,
        }
    }

    /// Waits for the script to end, which it must without an error.
    pub(crate) async fn ends_well(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        let errors = self.errors.await.unwrap();
        assert!(status.success(), "{errors}");
    }

    /// The script's next report, which must be `step`.
    pub(crate) async fn next(&mut self, step: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{step}` from the MCP client in 2 minutes"))
            .unwrap();
        let Some(line) = line else {
            let errors = (&mut self.errors).await.unwrap_or_default();
            panic!("the MCP client ended before `{step}`:\n{errors}");
        };
        let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(report["step"], step, "{report}");
        report
    }
}

/// The `bad` (input) and `domain` calls of a script's `calls` report
/// failed as tool errors whose text is opbox's error, with no structured
/// content (which clients hold to the output schema).
fn tool_errors_are_opboxs(calls: &Value) {
    for (name, code) in [
        ("bad", "INVALID_INPUT"),
        ("domain", "DEMO_FAILURE"),
        ("extra", "INVALID_INPUT"),
    ] {
        let failed = &calls[name];
        assert_eq!(failed["is_error"], true, "{name}: {calls}");
        assert!(failed["structured"].is_null(), "{name}: {calls}");
        let text: Value = serde_json::from_str(failed["text"][0].as_str().unwrap()).unwrap();
        assert_eq!(text["error"]["code"], code, "{name}: {calls}");
        assert!(text["error"]["message"].is_string(), "{name}: {calls}");
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_python_mcp_sdk_lists_calls_streams_and_cancels_tools() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| config(c, data.path())).await;
    let python = python_with("mcp", "2.3.0");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/all/scripts/mcp_client.py"
    );
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .args([host.url("/mcp"), OPERATOR.into(), ACME.into()]);
    let mut client = Client::spawn(command);

    // Each caller is offered exactly what it may call.
    let lists = client.next("lists").await;
    let (anonymous, operator, acme) = (
        names(&lists["anonymous"]),
        names(&lists["operator"]),
        names(&lists["acme"]),
    );
    for list in [&anonymous, &operator, &acme] {
        assert!(
            list.contains(&"echo.echo") && list.contains(&"ticker.count"),
            "{lists}"
        );
        for meta in ["search", "schema", "call", "subscribe"] {
            assert!(list.contains(&meta), "{lists}");
        }
    }
    assert!(acme.contains(&"vault.echo"), "{lists}");
    assert!(!anonymous.contains(&"vault.echo") && !operator.contains(&"vault.echo"));
    // The lifecycle operations need the scope `admin`.
    assert!(operator.contains(&"admin.install"), "{lists}");
    assert!(
        !anonymous.iter().any(|n| n.starts_with("admin.")),
        "{lists}"
    );
    assert!(!acme.iter().any(|n| n.starts_with("admin.")), "{lists}");

    // Schemas: an object input as is; any other wrapped as `input`.
    let schemas = client.next("schemas").await;
    assert_eq!(schemas["stats_input"]["type"], "object", "{schemas}");
    assert!(schemas["stats_input"]["properties"]["text"].is_object());
    assert_eq!(schemas["stats_output"]["type"], "object");
    // echo/echo takes any value, null included: `input` is not required.
    let echo = &schemas["echo_input"];
    assert_eq!(echo["type"], "object", "{schemas}");
    assert_eq!(
        echo["properties"]["input"]["title"], "AnyValue",
        "{schemas}"
    );
    assert!(echo.get("required").is_none(), "{schemas}");
    assert_eq!(schemas["read_only"], true);

    let calls = client.next("calls").await;
    let ok = &calls["ok"];
    assert_eq!(ok["is_error"], false, "{calls}");
    assert_eq!(ok["structured"]["words"], 6, "{calls}");
    let text: Value = serde_json::from_str(ok["text"][0].as_str().unwrap()).unwrap();
    assert_eq!(text, ok["structured"], "the text copy is the same JSON");
    assert_eq!(ok["meta"]["opbox/request_id"].as_str().unwrap().len(), 32);
    assert!(
        ok["meta"]["opbox/cost"]["wall_us"].as_u64().unwrap() > 0,
        "{calls}"
    );
    assert_eq!(
        calls["wrapped"]["structured"],
        json!({"output": [1, "two"]})
    );
    tool_errors_are_opboxs(&calls);
    assert_eq!(calls["meta"]["structured"]["words"], 2, "{calls}");

    let subscription = client.next("subscription").await;
    let progress = subscription["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 3, "{subscription}");
    for (i, step) in progress.iter().enumerate() {
        assert_eq!(step["progress"], (i + 1) as f64);
        let item: Value = serde_json::from_str(step["message"].as_str().unwrap()).unwrap();
        assert_eq!(item, json!({ "n": i + 1 }));
    }
    let result = &subscription["result"]["structured"];
    assert_eq!(result["items"], 3, "{subscription}");
    assert_eq!(result["last"], json!({"n": 3}));

    // Cancelled while it runs: the guest stops, the session goes on.
    client.next("running").await;
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    client.stdin.write_all(b"cancel\n").await.unwrap();
    client.next("cancelled").await;
    assert_eq!(
        host.wait_for_live(0, Duration::from_secs(10)).await,
        0,
        "the guest still runs"
    );
    client.stdin.write_all(b"go\n").await.unwrap();
    let after = client.next("after").await;
    assert_eq!(after["result"]["structured"]["words"], 2, "{after}");

    // A plugin installed while a session is open: it is told, and lists it.
    let listening = client.next("listening").await;
    assert!(!names(&listening["tools"]).contains(&"versioned.which"));
    let named = Some(json!({ "name": "versioned" }));
    let (status, body) = install(&host, Some(OPERATOR), named, fixture("fixture-v1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let changed = client.next("changed").await;
    assert!(
        names(&changed["tools"]).contains(&"versioned.which"),
        "{changed}"
    );

    client.ends_well().await;
}

/// The official TypeScript SDK holds a result's structured content to the
/// tool's output schema, failures included: opbox's error code and message
/// must reach it, not a schema mismatch of the SDK's own.
#[tokio::test]
async fn the_typescript_mcp_sdk_gets_opbox_errors_progress_and_cancels() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| config(c, data.path())).await;
    let sdk = node_with("@modelcontextprotocol/sdk", "1.32.2");
    let script = sdk.join("mcp_client.mjs");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/all/scripts/mcp_client.mjs"
        ),
        &script,
    )
    .unwrap();
    let mut command = tokio::process::Command::new("node");
    command.arg(&script).args([host.url("/mcp"), ACME.into()]);
    let mut client = Client::spawn(command);

    let lists = client.next("lists").await;
    let tools = names(&lists["tools"]);
    assert!(tools.contains(&"vault.echo") && tools.contains(&"textkit.stats"));

    let calls = client.next("calls").await;
    assert_eq!(calls["ok"]["is_error"], false, "{calls}");
    assert_eq!(calls["ok"]["structured"]["words"], 6, "{calls}");
    tool_errors_are_opboxs(&calls);

    let subscription = client.next("subscription").await;
    let progress = subscription["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 3, "{subscription}");
    let item: Value = serde_json::from_str(progress[2]["message"].as_str().unwrap()).unwrap();
    assert_eq!(item, json!({ "n": 3 }));
    assert_eq!(subscription["result"]["structured"]["items"], 3);

    client.next("running").await;
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    client.stdin.write_all(b"cancel\n").await.unwrap();
    let cancelled = client.next("cancelled").await;
    assert_eq!(cancelled["ended"], "aborted", "{cancelled}");
    assert_eq!(
        host.wait_for_live(0, Duration::from_secs(10)).await,
        0,
        "the guest still runs after the SDK cancelled it"
    );
    client.stdin.write_all(b"go\n").await.unwrap();
    let after = client.next("after").await;
    assert_eq!(after["result"]["structured"]["words"], 2, "{after}");
    // Schemas hold only what the SDK's validator knows: no "unknown
    // format" lines on the user's console.
    assert_eq!(after["warnings"], json!([]), "{after}");

    client.ends_well().await;
}

#[tokio::test]
async fn mcp_callers_are_authenticated_and_sessions_are_capped() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| {
        config(c, data.path());
        // Only callers with a token.
        c.tenants[0].anonymous = false;
        c.mcp.max_sessions = 2;
    })
    .await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let post = |token: Option<&str>| {
        let request = host
            .client
            .post(host.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    let refused = post(None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
    // A body over the gateway's limit is refused before rmcp reads it.
    let huge = host
        .client
        .post(host.url("/mcp"))
        .bearer_auth(ACME)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Two sessions are held; the third is refused until one closes.
    let mut held = Vec::new();
    for _ in 0..2 {
        let response = post(Some(ACME)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push(
            response.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let refused = post(Some(ACME)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"]["details"]["limit"], "mcp.max_sessions",
        "{body}"
    );
    let closed = host
        .client
        .delete(host.url("/mcp"))
        .bearer_auth(ACME)
        .header("mcp-session-id", &held[0])
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = post(Some(ACME)).await.unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed session's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tools/list` over raw HTTP, as `token`: the tool names.
async fn raw_tool_names(host: &TestHost, token: &str) -> Vec<String> {
    let post = |session: Option<String>, body: Value| {
        let mut request = host
            .client
            .post(host.url("/mcp"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let answer = post(None, initialize).await.unwrap();
    let session = answer.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(Some(session.clone()), initialized).await.unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let text = post(Some(session), list)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The answer is an event stream; its one JSON-RPC response holds the list.
    let response: Value = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .find_map(|data| {
            serde_json::from_str::<Value>(data)
                .ok()
                .filter(|v| v["id"] == 2)
        })
        .unwrap_or_else(|| panic!("{text}"));
    response["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_meta_tools_and_mcp_itself_can_be_turned_off() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| config(c, data.path())).await;
    let with = raw_tool_names(&host, ACME).await;
    assert!(with.iter().any(|n| n == "search") && with.iter().any(|n| n == "echo.echo"));

    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| {
        config(c, data.path());
        c.mcp.meta_tools = false;
    })
    .await;
    let without = raw_tool_names(&host, ACME).await;
    assert!(without.iter().any(|n| n == "echo.echo"), "{without:?}");
    for meta in ["search", "schema", "call", "subscribe"] {
        assert!(!without.iter().any(|n| n == meta), "{without:?}");
    }

    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| {
        config(c, data.path());
        c.mcp.enabled = false;
    })
    .await;
    let answer = host
        .client
        .post(host.url("/mcp"))
        .bearer_auth(ACME)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND", "{body}");
}
