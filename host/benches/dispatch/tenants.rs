//! `tenants`: one tenant's latency under another's flood, and the cost of authentication and admission.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opbox::registry::Owner;
use opbox::{CallRequest, Host, HostConfig};
use serde_json::{Value, json};

use super::common::*;

pub(crate) const TENANT_A: &str = "opbox_bench_tenant_a";

pub(crate) const TENANT_B: &str = "opbox_bench_tenant_b";

pub(crate) const TENANT_C: &str = "opbox_bench_tenant_c";

/// Tenant A's quota, in calls per second; it sends ten times as many.
pub(crate) const A_RATE: u32 = 200;

/// Rounds and calls per round of the in-process cost measurement.
pub(crate) const COST_ROUNDS: usize = 21;

pub(crate) const COST_CALLS: u32 = 10_000;

/// B's sequential calls in each half of the tenants bench.
pub(crate) const TENANT_CALLS: usize = 15_000;

pub(crate) async fn bench_tenants() {
    use opbox::tenants::{Quotas, TenantConfig, TokenConfig, hash_token_hex};
    let tenant = |id: &str, token: &str, calls_per_second: Option<f64>| TenantConfig {
        id: id.into(),
        anonymous: false,
        tokens: vec![TokenConfig {
            id: format!("{id}-token"),
            sha256: hash_token_hex(token),
            scopes: vec!["read".into()],
        }],
        quotas: Quotas {
            calls_per_second,
            ..Quotas::default()
        },
        plugins: Default::default(),
    };
    let config = HostConfig {
        data_dir: data_dir().join("tenants"),
        tenants: vec![
            tenant("a", TENANT_A, Some(f64::from(A_RATE))),
            tenant("b", TENANT_B, None),
            // A bucket that never runs dry: its check, not its refusals.
            tenant("c", TENANT_C, Some(1e9)),
        ],
        ..HostConfig::default()
    };
    let host = Host::start(config).await.expect("the host starts");
    println!(
        "## Tenants: B's `POST /call` `echo/echo`, {TENANT_CALLS} sequential calls, alone and while A floods\n"
    );
    let addr = serve(router(&host)).await;
    let alone =
        tokio::task::spawn_blocking(move || echo_latencies_as(addr, Some(TENANT_B), TENANT_CALLS))
            .await
            .expect("the client thread");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = std::thread::spawn({
        let (stop, sent) = (stop.clone(), sent.clone());
        move || flood(addr, TENANT_A, 10 * A_RATE, &stop, &sent)
    });
    while sent.load(std::sync::atomic::Ordering::Relaxed) < u64::from(A_RATE) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flood_started = Instant::now();
    let flooded =
        tokio::task::spawn_blocking(move || echo_latencies_as(addr, Some(TENANT_B), TENANT_CALLS))
            .await
            .expect("the client thread");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, refused) = flood.join().expect("the flood thread");
    let seconds = flood_started.elapsed().as_secs_f64();
    latency_table(
        "B's echo calls",
        &[("alone", &alone), ("while A floods", &flooded)],
    );
    println!(
        "\nA's quota: {A_RATE} calls/s; A sent {:.0}/s ({served} served, {refused} refused with 429 over about {seconds:.1} s)\n",
        f64::from(u32::try_from(served + refused).unwrap_or(u32::MAX)) / seconds
    );
    println!(
        "B's p99 while A floods / alone: {:.2}× (goal: ≤ 2×)\n",
        flooded.p99.as_secs_f64() / alone.p99.as_secs_f64()
    );

    // The cost of authentication and admission, in process: a native echo
    // (no guest) through the dispatcher, alternating variants in rounds.
    let echo = native_echo();
    host.dispatcher()
        .registry()
        .insert_namespace(&Owner::Shared, "bench", vec![echo])
        .expect("the bench namespace is free");
    let dispatcher = host.dispatcher().clone();
    let b = dispatcher.authenticate(Some(TENANT_B)).expect("B's token");
    let c = dispatcher.authenticate(Some(TENANT_C)).expect("C's token");
    let variants: [(&str, &opbox::Identity, bool); 3] = [
        ("identity resolved once, no rate limit", &b, false),
        ("identity resolved once, rate limit", &c, false),
        ("token resolved per call, rate limit", &c, true),
    ];
    let mut means = vec![Vec::new(); variants.len()];
    for _ in 0..COST_ROUNDS {
        for (i, (_, identity, authenticate)) in variants.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..COST_CALLS {
                let identity = if *authenticate {
                    dispatcher.authenticate(Some(TENANT_C)).expect("C's token")
                } else {
                    (*identity).clone()
                };
                let request = CallRequest {
                    identity,
                    ..CallRequest::new("bench/echo", Value::Null)
                };
                dispatcher.call(request).await.expect("echo answers");
            }
            means[i].push(start.elapsed() / COST_CALLS);
        }
    }
    let start = Instant::now();
    for _ in 0..COST_CALLS * 10 {
        std::hint::black_box(dispatcher.authenticate(Some(std::hint::black_box(TENANT_C))))
            .expect("C's token");
    }
    let authenticate = start.elapsed() / (COST_CALLS * 10);
    let start = Instant::now();
    for _ in 0..COST_CALLS * 10 {
        let admitted = dispatcher.tenants().admit_call(std::hint::black_box("c"));
        drop(std::hint::black_box(admitted).expect("C is admitted"));
    }
    let admit = start.elapsed() / (COST_CALLS * 10);
    println!(
        "| native `bench/echo` through the dispatcher | mean per call, median of {COST_ROUNDS} rounds |\n|---|---|"
    );
    let medians: Vec<Duration> = means
        .into_iter()
        .map(|mut m| {
            m.sort();
            m[m.len() / 2]
        })
        .collect();
    for ((name, ..), median) in variants.iter().zip(&medians) {
        println!("| {name} | {} |", ns(*median));
    }
    println!(
        "| `authenticate` alone (SHA-256 of the token, lookup, identity clone) | {} |",
        ns(authenticate)
    );
    println!(
        "| `admit_call` alone (tenant lookup, concurrency slot, rate bucket) | {} |",
        ns(admit)
    );
    println!(
        "\nauthentication + admission per call: {} (goal: ≤ 2 µs)\n",
        ns(authenticate + admit)
    );
}

/// Sends `rate` `echo/echo` calls per second as `token`, open loop, until
/// `stop`; returns how many were served and refused.
pub(crate) fn flood(
    addr: SocketAddr,
    token: &'static str,
    rate: u32,
    stop: &std::sync::atomic::AtomicBool,
    sent: &std::sync::atomic::AtomicU64,
) -> (u64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    client_runtime().block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/call");
        let (served, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut calls = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            sent.fetch_add(1, Ordering::Relaxed);
            let (client, url) = (client.clone(), url.clone());
            let (served, refused) = (served.clone(), refused.clone());
            calls.spawn(async move {
                let response = client
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({"operation": "echo/echo", "input": {"x": 1}}))
                    .send()
                    .await
                    .expect("a response");
                let counter = match response.status().as_u16() {
                    200 => &served,
                    429 => &refused,
                    other => panic!("the flood got {other}"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
            while calls.try_join_next().is_some() {}
        }
        calls.join_all().await;
        (
            served.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        )
    })
}
