//! The hostile-plugin suite: each attack is contained, costs only its own
//! call, and a well-behaved plugin keeps answering while it runs.

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::TestHost;

/// Runs `attack` while `echo/echo` is called over and over; every echo must
/// succeed. Returns what the attack returned.
async fn while_others_answer<T>(host: &TestHost, attack: impl Future<Output = T>) -> T {
    let others = async {
        for i in 0..25 {
            let (status, body) = host.call("echo/echo", json!(i)).await;
            assert_eq!(
                (status, &body["output"]),
                (StatusCode::OK, &json!(i)),
                "{body}"
            );
        }
    };
    let (result, ()) = tokio::join!(attack, others);
    result
}

fn details(body: &Value) -> &Value {
    &body["error"]["details"]
}

#[tokio::test]
async fn an_infinite_loop_in_call_is_interrupted() {
    let host = TestHost::with_config(|config| config.plugin_limits.cpu_ms = Some(500)).await;
    let (status, body) =
        while_others_answer(&host, host.call("hostile-loop/spin", json!(null))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(details(&body), &json!({"limit": "cpu_ms", "value": 500}));
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn an_infinite_loop_inside_a_subscription_is_interrupted() {
    let host = TestHost::with_config(|config| config.plugin_limits.item_cpu_ms = Some(300)).await;
    let events = while_others_answer(&host, async {
        host.subscribe("hostile-loop/spin-stream", json!(null))
            .await
            .collect()
            .await
    })
    .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[1].json()["details"],
        json!({"limit": "item_cpu_ms", "value": 300})
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn a_subscription_that_never_yields_nor_ends_is_stopped() {
    let host = TestHost::with_config(|config| config.plugin_limits.idle_ms = Some(300)).await;
    let events = while_others_answer(&host, async {
        host.subscribe("hostile-loop/silent", json!(null))
            .await
            .collect()
            .await
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].json()["code"], "TIMEOUT", "{events:?}");
    assert_eq!(
        events[0].json()["details"],
        json!({"limit": "idle_ms", "value": 300})
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn a_guest_stuck_in_a_host_call_is_stopped_at_its_deadline() {
    let host = TestHost::start().await;
    let call = json!({"operation": "hostile-loop/stuck", "deadline_ms": 300});
    let (status, body) = while_others_answer(&host, host.post("/call", &call)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(
        details(&body),
        &json!({"limit": "deadline_ms", "value": 300})
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn a_memory_bomb_hits_its_limit() {
    let host =
        TestHost::with_config(|config| config.plugin_limits.memory_bytes = Some(32 << 20)).await;
    let (status, body) =
        while_others_answer(&host, host.call("hostile-memory/bomb", json!(null))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        details(&body),
        &json!({"limit": "memory_bytes", "value": 32 << 20})
    );
}

#[tokio::test]
async fn unbounded_recursion_traps_cleanly() {
    let host = TestHost::start().await;
    let (status, body) =
        while_others_answer(&host, host.call("hostile-memory/recurse", json!(null))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "PLUGIN_FAILED");
    // A Rust guest's stack lives in its linear memory: running off its end is
    // an out-of-bounds access, which is how wasm sees this stack overflow.
    assert_eq!(details(&body)["trap"], "memory_out_of_bounds", "{body}");
    assert_eq!(details(&body)["plugin"], "hostile-memory");
}

#[tokio::test]
async fn an_oversized_output_is_refused() {
    let host = TestHost::start().await;
    let (status, body) =
        while_others_answer(&host, host.call("hostile-memory/big-output", json!(8))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        details(&body),
        &json!({"limit": "output_bytes", "value": 4 << 20})
    );
}

#[tokio::test]
async fn a_log_flood_is_capped_and_counted() {
    let host = TestHost::start().await;
    let (status, body) =
        while_others_answer(&host, host.call("hostile-noise/log-flood", json!(100_000))).await;
    assert_eq!(
        (status, &body["output"]),
        (StatusCode::OK, &json!(100_000)),
        "{body}"
    );
    let (_, body) = host
        .call("services/plugin", json!({"name": "hostile-noise"}))
        .await;
    assert_eq!(body["output"]["dropped_log_lines"], 100_000 - 1_000);
}

#[tokio::test]
async fn a_stdout_flood_is_capped_and_counted() {
    let host = TestHost::start().await;
    let (status, body) =
        while_others_answer(&host, host.call("hostile-noise/stdout-flood", json!(4))).await;
    assert_eq!(
        (status, &body["output"]),
        (StatusCode::OK, &json!(4)),
        "{body}"
    );
    let (_, body) = host
        .call("services/plugin", json!({"name": "hostile-noise"}))
        .await;
    // 4 MiB to each of stdout and stderr; 64 KiB of each is kept.
    assert_eq!(
        body["output"]["dropped_output_bytes"],
        2 * ((4 << 20) - (64 << 10))
    );
}

#[tokio::test]
async fn a_thousand_concurrent_calls_are_refused_past_the_limit_not_queued() {
    // The tenant may have them all in flight: the plugin's limit decides.
    let host = TestHost::with_config(|config| config.tenants[0].quotas.max_concurrent = 2000).await;
    let dispatcher = host.host.dispatcher().clone();
    let calls = (0..1000).map(|_| {
        let dispatcher = dispatcher.clone();
        async move {
            let request = opbox::CallRequest::new("fixture-slow/sleep", json!({"ms": 1000}));
            dispatcher.call(request).await
        }
    });
    let results = while_others_answer(&host, futures::future::join_all(calls)).await;
    let served = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(served, 64, "the default max_instances");
    assert_eq!(refused.len(), 936);
    assert!(
        refused
            .iter()
            .all(|e| e.code == opbox::ErrorCode::ResourceExhausted
                && e.details == Some(json!({"limit": "max_instances", "value": 64})))
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn a_plugin_has_no_ambient_authority() {
    let host = TestHost::start().await;
    // A port something listens on: if the guest could reach the network, its
    // connection would be waiting in this listener's queue by the time the
    // call returned.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (status, body) = host
        .call("hostile-ambient/probe", json!({"tcp_port": port}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report = &body["output"];
    assert_eq!(report["env"], json!([]), "no environment variables");
    assert_eq!(report["args"], json!([]), "no arguments");
    assert_eq!(report["stdin"], "ok: 0", "stdin is empty");
    for section in ["files", "network"] {
        let attempts = report[section].as_array().unwrap();
        assert!(attempts.len() >= 3, "{report}");
        for attempt in attempts {
            let outcome = attempt[1].as_str().unwrap();
            assert!(outcome.starts_with("error: "), "{attempt} was allowed");
        }
    }
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the guest reached a host socket"
    );
    assert!(!std::path::Path::new("/tmp/opbox-escape").exists());
}

/// `opbox dev` compiles with Winch, wasmtime's baseline compiler: the
/// limits a plugin runs under hold in its code too.
#[tokio::test]
async fn code_from_the_quick_compiler_keeps_every_limit() {
    let host = TestHost::with_config(|config| {
        config.quick_compile = true;
        config.plugin_limits.cpu_ms = Some(500);
        config.plugin_limits.memory_bytes = Some(32 << 20);
    })
    .await;
    let (status, body) = host.call("echo/echo", json!({"x": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        while_others_answer(&host, host.call("hostile-loop/spin", json!(null))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(details(&body), &json!({"limit": "cpu_ms", "value": 500}));
    let (status, body) =
        while_others_answer(&host, host.call("hostile-memory/bomb", json!(null))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(details(&body)["limit"], "memory_bytes", "{body}");

    let host = TestHost::with_config(|config| {
        config.quick_compile = true;
        config.plugin_limits.fuel = Some(50_000_000);
    })
    .await;
    let (status, body) = host.call("hostile-loop/spin", json!(null)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        details(&body),
        &json!({"limit": "fuel", "value": 50_000_000})
    );
}
