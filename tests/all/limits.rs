//! Per-plugin limits: each one enforced, and named in the error with its value.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::util::TestHost;

#[tokio::test]
async fn cpu_ms_counts_guest_execution_not_waiting() {
    let host = TestHost::with_config(|config| config.plugin_limits.cpu_ms = Some(300)).await;
    let (status, body) = host.call("hostile-loop/spin", json!(null)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(
        body["error"]["details"],
        json!({"limit": "cpu_ms", "value": 300})
    );
    // Waiting in a host call is not guest execution: a long sleep passes.
    let (status, body) = host.call("fixture-slow/sleep", json!({"ms": 1000})).await;
    assert_eq!(
        (status, &body["output"]),
        (StatusCode::OK, &json!(1000)),
        "{body}"
    );
}

#[tokio::test]
async fn fuel_bounds_the_instructions_of_a_call() {
    let host = TestHost::with_config(|config| config.plugin_limits.fuel = Some(50_000_000)).await;
    let (status, body) = host.call("hostile-loop/spin", json!(null)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        body["error"]["details"],
        json!({"limit": "fuel", "value": 50_000_000})
    );
    let (status, _) = host.call("echo/echo", json!({"within": "budget"})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn output_bytes_bounds_outputs_and_items() {
    let host =
        TestHost::with_config(|config| config.plugin_limits.output_bytes = Some(64 << 10)).await;
    let (status, body) = host.call("echo/echo", json!("x".repeat(100 << 10))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["error"]["details"],
        json!({"limit": "output_bytes", "value": 64 << 10})
    );
    let (status, _) = host.call("echo/echo", json!("x".repeat(10 << 10))).await;
    assert_eq!(status, StatusCode::OK);

    let events = host
        .subscribe(
            "fixture-hog/big-stream",
            json!({"bytes": 100 << 10, "count": 3}),
        )
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, "error");
    assert_eq!(
        events[0].json()["details"],
        json!({"limit": "output_bytes", "value": 64 << 10}),
        "{events:?}"
    );
    let events = host
        .subscribe("fixture-hog/big-stream", json!({"bytes": 1000, "count": 3}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].event, "completed");
}

#[tokio::test]
async fn max_instances_refuses_at_once_and_spares_other_plugins() {
    let host = TestHost::with_config(|config| config.plugin_limits.max_instances = Some(2)).await;
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (host.client.clone(), host.url("/call"));
            tokio::spawn(async move {
                let call = json!({"operation": "fixture-slow/sleep", "input": {"ms": 1500}});
                client.post(url).json(&call).send().await.unwrap().status()
            })
        })
        .collect();
    assert_eq!(host.wait_for_live(2, Duration::from_secs(10)).await, 2);
    let (status, body) = host.call("fixture-slow/sleep", json!({"ms": 1})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["error"]["details"],
        json!({"limit": "max_instances", "value": 2})
    );
    assert_eq!(body["error"]["retryable"], true);
    // Another plugin has slots of its own.
    let (status, _) = host.call("echo/echo", json!(1)).await;
    assert_eq!(status, StatusCode::OK);
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), StatusCode::OK);
    }
    let (status, _) = host.call("fixture-slow/sleep", json!({"ms": 1})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn max_subscriptions_bounds_open_streams() {
    let host =
        TestHost::with_config(|config| config.plugin_limits.max_subscriptions = Some(1)).await;
    let mut first = host
        .subscribe("ticker/count", json!({"to": 1_000_000, "every_ms": 20}))
        .await;
    assert_eq!(first.next().await.unwrap().json()["n"], 1);
    let events = host
        .subscribe("ticker/count", json!({"to": 1}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].json()["details"],
        json!({"limit": "max_subscriptions", "value": 1})
    );
    drop(first);
    assert_eq!(host.wait_for_live(0, Duration::from_secs(10)).await, 0);
    let events = host
        .subscribe("ticker/count", json!({"to": 1}))
        .await
        .collect()
        .await;
    assert_eq!(events.last().unwrap().event, "completed", "{events:?}");
}

#[tokio::test]
async fn item_cpu_ms_stops_a_stream_that_spins_between_items() {
    let host = TestHost::with_config(|config| config.plugin_limits.item_cpu_ms = Some(300)).await;
    let events = host
        .subscribe("hostile-loop/spin-stream", json!(null))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].json(), 0);
    assert_eq!(events[1].event, "error");
    assert_eq!(events[1].json()["code"], "TIMEOUT");
    assert_eq!(
        events[1].json()["details"],
        json!({"limit": "item_cpu_ms", "value": 300})
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
    // A long stream that keeps producing is never cut: each item refills it.
    let events = host
        .subscribe("ticker/count", json!({"to": 20_000}))
        .await
        .collect()
        .await;
    assert_eq!(events.last().unwrap().event, "completed");
}

#[tokio::test]
async fn idle_ms_stops_a_stream_that_goes_quiet() {
    let host = TestHost::with_config(|config| config.plugin_limits.idle_ms = Some(300)).await;
    let events = host
        .subscribe("ticker/count", json!({"to": 5, "every_ms": 5000}))
        .await
        .collect()
        .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].json()["n"], 1);
    assert_eq!(
        events[1].json()["details"],
        json!({"limit": "idle_ms", "value": 300})
    );
    assert_eq!(host.wait_for_live(0, Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn per_plugin_limits_override_the_defaults() {
    let host = TestHost::with_config(|config| {
        config.plugin_limits.output_bytes = Some(1 << 10);
        config.plugins.push(opbox::config::PluginConfig {
            path: opbox::bundled::built_plugin("echo"),
            reuse: None,
            name: Some("roomy".into()),
            tenant: None,
            grants: Default::default(),
            limits: opbox::config::PluginLimitsConfig {
                output_bytes: Some(1 << 20),
                ..Default::default()
            },
        });
    })
    .await;
    let big = json!("x".repeat(10 << 10));
    let (status, _) = host.call("echo/echo", big.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = host.call("roomy/echo", big).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn table_elements_bounds_a_plugins_tables() {
    let plugin = |name: &str, table_elements| opbox::config::PluginConfig {
        path: opbox::bundled::built_plugin("echo"),
        reuse: None,
        name: Some(name.into()),
        tenant: None,
        grants: Default::default(),
        limits: opbox::config::PluginLimitsConfig {
            table_elements: Some(table_elements),
            ..Default::default()
        },
    };
    // A plugin whose function table does not fit is refused when it loads,
    // with the limit named, rather than failing every call later.
    let config = opbox::HostConfig {
        data_dir: crate::util::data_dir(),
        cache_dir: Some(crate::util::cache_dir()),
        examples: false,
        plugins: vec![plugin("cramped", 1)],
        ..Default::default()
    };
    let error = opbox::Host::start(config).await.unwrap_err().to_string();
    assert!(error.contains("table_elements = 1"), "{error}");
    // Enough room: it serves.
    let config = opbox::HostConfig {
        data_dir: crate::util::data_dir(),
        cache_dir: Some(crate::util::cache_dir()),
        examples: false,
        plugins: vec![plugin("roomy", 1_000)],
        ..opbox::HostConfig::demo()
    };
    let host = opbox::Host::start(config).await.unwrap();
    let request = opbox::CallRequest::new("roomy/echo", json!("fits"));
    assert_eq!(
        host.dispatcher().call(request).await.unwrap(),
        json!("fits")
    );
}

#[tokio::test]
async fn a_plugins_limits_and_occupancy_are_visible() {
    let host = TestHost::with_config(|config| config.plugin_limits.cpu_ms = Some(1234)).await;
    let (status, body) = host
        .call("services/plugin", json!({"name": "fixture-slow"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plugin = &body["output"];
    assert_eq!(plugin["version"], "0.1.0");
    assert_eq!(plugin["digest"].as_str().unwrap().len(), 64);
    assert_eq!(plugin["limits"]["cpu_ms"], 1234);
    assert_eq!(plugin["limits"]["memory_bytes"], 64 << 20);
    assert_eq!(plugin["limits"]["fuel"], json!(null));
    assert_eq!(plugin["live_instances"], 0);
    assert!(
        plugin["operations"]
            .as_array()
            .unwrap()
            .contains(&json!("fixture-slow/sleep"))
    );

    let sleeper = tokio::spawn({
        let (client, url) = (host.client.clone(), host.url("/call"));
        async move {
            let call = json!({"operation": "fixture-slow/sleep", "input": {"ms": 1500}});
            client.post(url).json(&call).send().await.unwrap().status()
        }
    });
    assert_eq!(host.wait_for_live(1, Duration::from_secs(10)).await, 1);
    let (_, body) = host
        .call("services/plugin", json!({"name": "fixture-slow"}))
        .await;
    assert_eq!(body["output"]["live_instances"], 1);
    assert_eq!(sleeper.await.unwrap(), StatusCode::OK);
    let (_, body) = host
        .call("services/plugin", json!({"name": "fixture-slow"}))
        .await;
    assert_eq!(body["output"]["live_instances"], 0);

    let (status, _) = host.call("services/plugin", json!({"name": "nope"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_slow_reader_is_not_mistaken_for_an_idle_guest() {
    use futures::StreamExt;
    let host = TestHost::with_config(|config| config.plugin_limits.idle_ms = Some(300)).await;
    // In process, so that nothing (like a socket buffer) reads on the
    // caller's behalf: the burst waits in the host while the caller dawdles.
    let request = opbox::CallRequest::new(
        "fixture-slow/burst",
        json!({"burst": 50, "then": 3, "every_ms": 20}),
    );
    let mut outputs = host.host.dispatcher().subscribe(request).await.unwrap();
    assert_eq!(outputs.next().await.unwrap().unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Reading resumes; the guest gets idle_ms from when the caller took its
    // last item, not from when the burst arrived.
    let rest: Vec<_> = outputs.collect().await;
    assert_eq!(rest.len(), 52, "{:?}", rest.last());
    assert!(rest.iter().all(Result::is_ok), "{:?}", rest.last());
}
