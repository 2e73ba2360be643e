//! A plugin's last log lines: its operator reads them all, a tenant only
//! those of its own calls.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::admin::{OPERATOR, fixture, install, replace, with_operator};
use crate::util::TestHost;

const ACME: &str = "acme-dev-token";

async fn tail(host: &TestHost, token: Option<&str>, query: &str) -> (StatusCode, Value) {
    tail_of(host, "hostile-noise", token, query).await
}

async fn tail_of(
    host: &TestHost,
    name: &str,
    token: Option<&str>,
    query: &str,
) -> (StatusCode, Value) {
    let mut request = host
        .client
        .get(host.url(&format!("/admin/v1/plugins/{name}/logs{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

fn messages(body: &Value) -> Vec<(String, String)> {
    body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["request_id"].as_str().unwrap().to_owned(),
                l["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_log_tail_shows_each_reader_what_it_may_see() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| {
        with_operator(c, data.path());
        c.tenants.push(opbox::tenants::TenantConfig {
            id: "acme".into(),
            anonymous: false,
            tokens: vec![opbox::tenants::TokenConfig {
                id: "acme-dev".into(),
                sha256: opbox::tenants::hash_token_hex(ACME),
                scopes: vec!["plugins:write".into()],
            }],
            quotas: Default::default(),
            plugins: Default::default(),
        });
    })
    .await;
    let (_, theirs) = host.call("hostile-noise/log-flood", json!(2)).await;
    let (_, mine) = host
        .call_as(ACME, "hostile-noise/log-flood", json!(1))
        .await;
    let (theirs, mine) = (
        theirs["request_id"].as_str().unwrap().to_owned(),
        mine["request_id"].as_str().unwrap().to_owned(),
    );

    let (status, body) = tail(&host, Some(OPERATOR), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        messages(&body),
        [
            (theirs.clone(), "flood line 0".into()),
            (theirs.clone(), "flood line 1".into()),
            (mine.clone(), "flood line 0".into()),
        ]
    );
    assert_eq!(body["lines"][2]["tenant"], "acme");
    // After the last line read, nothing more yet.
    let (_, later) = tail(&host, Some(OPERATOR), &format!("?after={}", body["next"])).await;
    assert_eq!(later["lines"], json!([]));

    // acme sees the lines of its own call only, and no tenant names.
    let (status, body) = tail(&host, Some(ACME), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(messages(&body), [(mine, "flood line 0".into())]);
    assert!(!body.to_string().contains("default"), "{body}");
    assert_eq!(tail(&host, None, "").await.0, StatusCode::UNAUTHORIZED);
}

/// What `opbox plugins logs NAME --follow` does: ask for the lines after
/// the last one it read. A replace must not send it back to the start of a
/// new count, past which it would wait for ever.
#[tokio::test]
async fn a_follower_of_the_log_keeps_reading_across_a_replace() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| with_operator(c, data.path())).await;
    let named = Some(json!({ "name": "noisy" }));
    let (status, body) = install(&host, Some(OPERATOR), named, fixture("hostile-noise")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    host.call("noisy/log-flood", json!(3)).await;
    let (_, read) = tail_of(&host, "noisy", Some(OPERATOR), "").await;
    assert_eq!(messages(&read).len(), 3, "{read}");
    let next = read["next"].clone();

    let (status, body) = replace(&host, "noisy", fixture("hostile-noise")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, new) = host.call("noisy/log-flood", json!(1)).await;
    let (_, after) = tail_of(&host, "noisy", Some(OPERATOR), &format!("?after={next}")).await;
    assert_eq!(
        messages(&after),
        [(
            new["request_id"].as_str().unwrap().to_owned(),
            "flood line 0".into()
        )],
        "{after}"
    );
    // A reader from the start sees the old version's lines, then the new.
    let (_, all) = tail_of(&host, "noisy", Some(OPERATOR), "").await;
    assert_eq!(messages(&all).len(), 4, "{all}");
}

/// What a plugin prints on stdout or stderr is in its tail like what it
/// logs, attributed to its call and its stream, and counts against the
/// same `log_lines`: a `wasi:http` component, which has no log interface,
/// is read the same way.
#[tokio::test]
async fn what_a_plugin_prints_is_in_its_tail_within_its_log_lines() {
    let data = tempfile::tempdir().unwrap();
    let host = TestHost::with_config(|c| with_operator(c, data.path())).await;
    let named = Some(json!({ "name": "echo-http" }));
    let (status, body) = install(&host, Some(OPERATOR), named, fixture("wasi-http-echo")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let response = host
        .client
        .get(host.url("/http/echo-http/log"))
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["opbox-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.text().await.unwrap(), "logged");
    let (_, read) = tail_of(&host, "echo-http", Some(OPERATOR), "").await;
    let line = &read["lines"][0];
    assert_eq!(line["message"], "a line from the component", "{read}");
    assert_eq!(line["stream"], "stderr", "{read}");
    assert_eq!(line["request_id"], request_id.as_str(), "{read}");

    // A plugin that may write two lines a call prints three before it
    // traps: the first two are kept. Printed lines reach the tail when the
    // call ends.
    let settings = Some(json!({ "name": "terse", "limits": { "log_lines": 2 } }));
    let (status, body) = install(&host, Some(OPERATOR), settings, fixture("fixture-panic")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, failed) = host.call("terse/abort", json!("one\ntwo\nthree")).await;
    assert_eq!(failed["result"], "error", "{failed}");
    let (_, read) = tail_of(&host, "terse", Some(OPERATOR), "").await;
    let printed: Vec<_> = read["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["stream"].as_str(), l["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        printed,
        [(Some("stderr"), "one"), (Some("stderr"), "two")],
        "{read}"
    );
}
