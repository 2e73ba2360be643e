//! `GET /metrics`: exact counts after known calls, read with a Prometheus
//! text parser, and label values that junk names cannot grow.

use opbox::tenants::{PluginAllowance, Quotas, TenantConfig, TokenConfig, hash_token_hex};
use reqwest::StatusCode;
use serde_json::json;

use crate::util::{Frames, TestHost};

const SLOW: &str = "slow-token";
const READER: &str = "metrics-reader-token";

/// One tenant allowed one call every 100 s, with a token that may also
/// read the metrics.
fn slow_tenant() -> TenantConfig {
    TenantConfig {
        id: "slow".into(),
        anonymous: false,
        tokens: vec![
            TokenConfig {
                id: "slow-ci".into(),
                sha256: hash_token_hex(SLOW),
                scopes: Vec::new(),
            },
            TokenConfig {
                id: "scraper".into(),
                sha256: hash_token_hex(READER),
                scopes: vec!["metrics".into()],
            },
        ],
        quotas: Quotas {
            calls_per_second: Some(0.01),
            burst: Some(1),
            ..Quotas::default()
        },
        plugins: PluginAllowance::default(),
    }
}

/// The scrape, parsed.
pub(crate) async fn scrape(
    host: &TestHost,
    token: Option<&str>,
) -> (StatusCode, Vec<prometheus_parse::Sample>) {
    let mut request = host.client.get(host.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    (
        status,
        prometheus_parse::Scrape::parse(lines).unwrap().samples,
    )
}

/// The value of `metric` with exactly these `labels` among theirs; 0 when
/// there is no such series.
pub(crate) fn value(
    samples: &[prometheus_parse::Sample],
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn known_calls_are_counted_exactly_and_junk_names_are_one_label() {
    let host = TestHost::with_config(|c| c.tenants.push(slow_tenant())).await;
    for n in 0..3 {
        assert_eq!(host.call("echo/echo", json!(n)).await.0, StatusCode::OK);
    }
    // A domain error, which is also a capability the plugin was not given.
    host.call("hostile-ambient/config", json!({ "key": "k" }))
        .await;
    let (_, trapped) = host.call("fixture-panic/boom", json!("on purpose")).await;
    let trap = trapped["error"]["details"]["trap"]
        .as_str()
        .unwrap()
        .to_owned();
    host.call("hostile-memory/bomb", json!(null)).await;
    for _ in 0..2 {
        host.call_as(SLOW, "echo/echo", json!(1)).await;
    }
    let mut sse = host.subscribe("ticker/count", json!({ "to": 3 })).await;
    while sse.next().await.is_some_and(|e| e.event == "message") {}
    for n in 0..50 {
        host.call(&format!("junk{n}/op"), json!(null)).await;
    }

    let (status, samples) = scrape(&host, None).await;
    assert_eq!(status, StatusCode::OK);
    let calls = "opbox_calls_total";
    let echo_ok = [
        ("operation", "echo/echo"),
        ("plugin", "echo"),
        ("tenant", "default"),
        ("transport", "http"),
        ("code", "ok"),
    ];
    assert_eq!(value(&samples, calls, &echo_ok), 3.0);
    assert_eq!(
        value(
            &samples,
            calls,
            &[("operation", "hostile-ambient/config"), ("code", "DOMAIN")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            calls,
            &[
                ("operation", "fixture-panic/boom"),
                ("code", "PLUGIN_FAILED")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, calls, &[("tenant", "slow"), ("code", "ok")]),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            calls,
            &[("tenant", "slow"), ("code", "RESOURCE_EXHAUSTED")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            calls,
            &[("operation", "ticker/count"), ("code", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            calls,
            &[("operation", "unknown"), ("code", "NOT_FOUND")]
        ),
        50.0
    );
    assert_eq!(
        value(
            &samples,
            "opbox_subscription_items_total",
            &[("operation", "ticker/count")]
        ),
        3.0
    );
    // `{"to":3}` in; three items of `{"n":1}` out.
    let bytes = |direction| {
        value(
            &samples,
            "opbox_call_bytes_total",
            &[("operation", "ticker/count"), ("direction", direction)],
        )
    };
    assert_eq!((bytes("in"), bytes("out")), (8.0, 21.0));
    assert_eq!(
        value(
            &samples,
            "opbox_call_duration_seconds_count",
            &[("operation", "echo/echo"), ("tenant", "default")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "opbox_traps_total",
            &[("plugin", "fixture-panic"), ("trap", &trap)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "opbox_limit_hits_total",
            &[("plugin", "hostile-memory"), ("limit", "memory_bytes")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "opbox_quota_refusals_total",
            &[("tenant", "slow"), ("quota", "calls_per_second")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "opbox_capability_denials_total",
            &[("plugin", "hostile-ambient"), ("capability", "config")]
        ),
        1.0
    );
    // Gauges, read at the scrape: nothing is running now.
    assert_eq!(value(&samples, "opbox_instance_pool_in_use", &[]), 0.0);
    assert!(
        samples
            .iter()
            .any(|s| s.metric == "opbox_live_instances" && s.labels.get("plugin") == Some("echo"))
    );
    // No invented name is a label value.
    let junk: Vec<_> = samples
        .iter()
        .flat_map(|s| s.labels.values())
        .filter(|v| v.contains("junk"))
        .collect();
    assert!(junk.is_empty(), "{junk:?}");
}

#[tokio::test]
async fn envelope_connections_are_counted_while_open() {
    let host = TestHost::start().await;
    let open = |samples: &[prometheus_parse::Sample]| {
        value(
            samples,
            "opbox_envelope_connections",
            &[("transport", "tcp")],
        )
    };
    let mut first = Frames::connect(&host).await;
    let mut second = Frames::connect(&host).await;
    // An answer on each: both sessions are running.
    for frames in [&mut first, &mut second] {
        frames.call("a", "echo/echo", json!(1)).await;
        assert_eq!(frames.next().await.unwrap()["type"], "call.responded");
    }
    assert_eq!(open(&scrape(&host, None).await.1), 2.0);
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = open(&scrape(&host, None).await.1);
        if now == 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now} open");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_need_the_scope_unless_the_host_says_they_are_public() {
    let host = TestHost::with_config(|c| {
        c.gateway.public_metrics = false;
        c.tenants.push(slow_tenant());
    })
    .await;
    host.call("echo/echo", json!(1)).await;
    assert_eq!(scrape(&host, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(scrape(&host, Some(SLOW)).await.0, StatusCode::FORBIDDEN);
    let (status, samples) = scrape(&host, Some(READER)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(samples.iter().any(|s| s.metric == "opbox_calls_total"));
}

#[tokio::test]
async fn the_grafana_dashboard_names_only_metrics_the_host_serves() {
    let host = TestHost::start().await;
    let families = host.host.metrics().families();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut named = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("opbox_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    families.iter().any(|f| f == family),
                    "the dashboard names `{name}`, which /metrics does not serve: {families:?}"
                );
                named += 1;
            }
        }
    }
    assert!(named >= 10, "the dashboard reads the metrics: {named}");
}

#[tokio::test]
async fn guest_cpu_time_is_what_the_guest_ran() {
    let host = TestHost::with_config(|c| {
        let looping = c
            .plugins
            .iter_mut()
            .find(|p| p.path.ends_with("hostile_loop.wasm"))
            .expect("the fixture is loaded");
        looping.limits.cpu_ms = Some(300);
    })
    .await;
    for n in 0..3 {
        host.call("echo/echo", json!(n)).await;
    }
    let (_, body) = host.call("hostile-loop/spin", json!(null)).await;
    assert_eq!(body["error"]["details"]["limit"], "cpu_ms", "{body}");
    let (_, samples) = scrape(&host, None).await;
    let cpu = |op: &str| {
        (
            value(
                &samples,
                "opbox_guest_cpu_seconds_sum",
                &[("operation", op)],
            ),
            value(
                &samples,
                "opbox_guest_cpu_seconds_count",
                &[("operation", op)],
            ),
        )
    };
    let (spun, spins) = cpu("hostile-loop/spin");
    assert_eq!(spins, 1.0);
    // Near its 300 ms limit: the guest ran until the limit stopped it.
    assert!((0.2..1.0).contains(&spun), "{spun}");
    let (echoed, echoes) = cpu("echo/echo");
    assert_eq!(echoes, 3.0);
    assert!(echoed < 0.1 && echoed > 0.0, "{echoed}");
}

#[tokio::test]
async fn a_metrics_address_of_its_own_serves_them_to_anyone_and_nothing_else() {
    let host = TestHost::with_config(|c| c.gateway.public_metrics = false).await;
    host.call("echo/echo", json!(1)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let host = host.host.clone();
        async move { host.serve_metrics(listener, std::future::pending()).await }
    });
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("opbox_calls_total"));
    let call = client
        .post(format!("http://{addr}/call"))
        .json(&json!({ "operation": "echo/echo", "input": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::NOT_FOUND);
    // The gateway still asks for the scope.
    assert_eq!(scrape(&host, None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metrics_turned_off_are_neither_counted_nor_served() {
    let host = TestHost::with_config(|c| c.telemetry.metrics = false).await;
    assert_eq!(host.call("echo/echo", json!(1)).await.0, StatusCode::OK);
    let response = host.client.get(host.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(!host.host.metrics().encode().contains("echo/echo"));
}
