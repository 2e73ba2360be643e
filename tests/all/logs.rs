//! A plugin's last log lines: its operator reads them all, a tenant only
//! those of its own calls.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::admin::{OPERATOR, with_operator};
use crate::util::TestHost;

const ACME: &str = "acme-dev-token";

async fn tail(host: &TestHost, token: Option<&str>, query: &str) -> (StatusCode, Value) {
    let mut request = host
        .client
        .get(host.url(&format!("/admin/v1/plugins/hostile-noise/logs{query}")));
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
