//! opbox's benchmark: a bench binary that prints a written report.
//!
//! Run it in release on an otherwise idle machine:
//!
//! ```text
//! cargo bench -p opbox --bench dispatch              # everything
//! cargo bench -p opbox --bench dispatch -- dispatch  # in-process calls only
//! cargo bench -p opbox --bench dispatch -- stream    # ticker items only
//! cargo bench -p opbox --bench dispatch -- http      # wrk, needs `wrk` on PATH
//! cargo bench -p opbox --bench dispatch -- http-opbox  # wrk against opbox alone
//! cargo bench -p opbox --bench dispatch -- limits    # echo with and without limits
//! cargo bench -p opbox --bench dispatch -- noisy     # echo latency under a spinning neighbour
//! cargo bench -p opbox --bench dispatch -- envelope  # TCP, WebSocket and HTTP, 64 calls in flight
//! cargo bench -p opbox --bench dispatch -- tenants   # a tenant's latency under another's flood
//! cargo bench -p opbox --bench dispatch -- keyvalue  # kv/get and kv/set from a plugin
//! cargo bench -p opbox --bench dispatch -- relay     # 100 MiB upstream body through relay/sse
//! ```
//!
//! - `dispatch`: one `echo/echo` call through the dispatcher, a fresh
//!   instance per call, against a native echo through the same dispatcher
//!   (the floor); median, p99 and mean over many sequential calls.
//! - `stream`: per-item time of `ticker/count` streaming 100,000 items.
//! - `http`: requests per second and latency of `POST /call` `echo/echo`
//!   under `wrk -t2 -c32`, against a bare axum handler answering the same
//!   JSON, both served from this process in the same run.
//! - `limits`: `echo/echo` straight on the runtime (no dispatcher), with
//!   the engine enforcing limits (epoch interruption, memory limiter) and
//!   without, alternating rounds so both see the same machine.
//! - `envelope`: `echo/echo` calls per second and latency with 64 calls in
//!   flight over one TCP connection, one WebSocket, and HTTP `/call` (a
//!   connection per call in flight); `ticker/count` items per second over TCP.
//! - `tenants`: tenant B's sequential `POST /call` `echo/echo` latency
//!   alone, then while tenant A sends 10× its `calls_per_second` quota; and
//!   the per-call cost of authentication and admission, in process.
//! - `keyvalue`: the `kv` example's `get` and `set` through the dispatcher,
//!   a fresh instance per call, one at a time and 16 at once; every set is a
//!   durable transaction of its own.
//! - `relay`: a 100 MiB chunked upstream body through `relay/sse` to an SSE
//!   client over HTTP, against the client reading the upstream directly;
//!   throughput and the process's resident memory while it streams.
//! - `noisy`: latency of sequential `POST /call` `echo/echo` from one client,
//!   alone, then while another client keeps 8 `hostile-loop/spin` calls (an
//!   infinite loop each) in flight. Runs last: the spinning calls outlive it.

#![allow(
    clippy::expect_used,
    reason = "a benchmark reports failure by panicking"
)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use opbox::config::PluginConfig;
use opbox::registry::{
    AccessControl, Handler, OpType, Operation, OperationSpec, Owner, Visibility,
};
use opbox::runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};
use opbox::{CallRequest, Dispatcher, Host, HostConfig};
use serde_json::{Value, json};

const CALLS: usize = 20_000;
const ITEMS: u64 = 100_000;
const WRK_SECONDS: u32 = 10;
const LATENCY_CALLS: usize = 3_000;
const ATTACKERS: usize = 8;
const IN_FLIGHT: usize = 64;
const ENVELOPE_SECONDS: u64 = 5;

fn data_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("opbox-bench")
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants =
        |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let host = start_host().await;
        let dispatcher = host.dispatcher().clone();
        println!("# opbox benchmark\n");
        println!("machine: {} cores; profile: {}\n", num_cpus(), profile());
        if wants("dispatch") {
            bench_dispatch(&dispatcher).await;
        }
        if wants("stream") {
            bench_stream(&dispatcher).await;
        }
        if wants("http-bare") || wants("http-opbox") {
            bench_http(&host, wants("http-bare"), wants("http-opbox")).await;
        }
        if wants("limits") {
            bench_limits().await;
        }
        if wants("envelope") {
            bench_envelopes(&host).await;
        }
        if wants("keyvalue") {
            bench_keyvalue().await;
        }
        if wants("relay") {
            bench_relay().await;
        }
        if wants("tenants") {
            bench_tenants().await;
        }
        if wants("noisy") {
            bench_noisy(&host).await;
        }
    });
}

async fn start_host() -> Host {
    let mut config = HostConfig {
        data_dir: data_dir(),
        plugins: vec![PluginConfig {
            path: opbox::bundled::built_plugin("hostile-loop"),
            name: None,
            tenant: None,
            grants: Default::default(),
            limits: Default::default(),
        }],
        ..HostConfig::demo()
    };
    // To see what reserving a worker for short calls buys, rerun `noisy`
    // with `OPBOX_BENCH_CPU_LANES=2` (every worker may run a spinning guest).
    config.limits.cpu_lanes = std::env::var("OPBOX_BENCH_CPU_LANES")
        .ok()
        .map(|lanes| lanes.parse().expect("OPBOX_BENCH_CPU_LANES is a number"));
    let host = Host::start(config).await.expect("the host starts");
    let echo = native_echo();
    host.dispatcher()
        .registry()
        .insert_namespace(&Owner::Shared, "bench", vec![echo])
        .expect("the bench namespace is free");
    host
}

/// `bench/echo`: a native echo, the dispatcher's floor.
fn native_echo() -> Operation {
    Operation::new(
        OperationSpec {
            name: "bench/echo".into(),
            op_type: OpType::Query,
            visibility: Visibility::External,
            description: "Native echo: the dispatcher's floor.".into(),
            input_schema: json!(true),
            output_schema: json!(true),
            access_control: AccessControl::default(),
        },
        Handler::NativeOnce(Arc::new(|_, input: Value| async move { Ok(input) }.boxed())),
    )
    .expect("a valid native op")
}

async fn bench_dispatch(dispatcher: &Dispatcher) {
    println!("## One call through the dispatcher, in process ({CALLS} sequential calls)\n");
    println!("| operation | median | p99 | mean |\n|---|---|---|---|");
    for operation in ["echo/echo", "bench/echo"] {
        let input = json!({"x": 1});
        // Warm up: caches, allocator, instance pool.
        for _ in 0..1000 {
            dispatcher
                .call(CallRequest::new(operation, input.clone()))
                .await
                .expect("echo answers");
        }
        let mut samples = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let request = CallRequest::new(operation, input.clone());
            let start = Instant::now();
            let output = dispatcher.call(request).await.expect("echo answers");
            samples.push(start.elapsed());
            assert_eq!(output, input);
        }
        let stats = Stats::of(samples);
        println!(
            "| `{operation}` | {} | {} | {} |",
            us(stats.median),
            us(stats.p99),
            us(stats.mean)
        );
    }
    println!();
}

async fn bench_stream(dispatcher: &Dispatcher) {
    println!("## `ticker/count` streaming {ITEMS} items, in process\n");
    println!("| run | total | per item |\n|---|---|---|");
    let mut per_item = Vec::new();
    for run in 1..=5 {
        let request = CallRequest::new("ticker/count", json!({ "to": ITEMS }));
        let start = Instant::now();
        let mut stream = dispatcher.subscribe(request).await.expect("ticker starts");
        let mut count = 0u64;
        while let Some(item) = stream.next().await {
            item.expect("a tick");
            count += 1;
        }
        let total = start.elapsed();
        assert_eq!(count, ITEMS);
        let item = total / u32::try_from(ITEMS).expect("fits");
        per_item.push(item);
        println!(
            "| {run} | {:.1} ms | {} |",
            total.as_secs_f64() * 1e3,
            us(item)
        );
    }
    per_item.sort();
    println!("\nmedian per item: {}\n", us(per_item[per_item.len() / 2]));
}

async fn bench_http(host: &Host, bare: bool, opbox: bool) {
    println!("## HTTP: `POST /call` `echo/echo` under `wrk -t2 -c32 -d{WRK_SECONDS}s`\n");
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("skipped: `wrk` is not on PATH (Debian: `apt-get install wrk`)\n");
        return;
    }
    let opbox_addr = serve(host.router()).await;
    let bare_addr = serve(bare_router()).await;
    let script = std::env::temp_dir().join("opbox-bench-post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = '{\"operation\":\"echo/echo\",\"input\":{\"x\":1}}'\n",
    )
    .expect("write the wrk script");
    println!("| server | requests/s | latency p50 | latency p99 |\n|---|---|---|---|");
    let bare = bare.then(|| wrk(bare_addr, &script));
    let opbox = opbox.then(|| wrk(opbox_addr, &script));
    for (name, result) in [
        ("bare axum handler", &bare),
        ("opbox `/call` echo/echo", &opbox),
    ] {
        if let Some(result) = result {
            println!(
                "| {name} | {:.0} | {} | {} |",
                result.rps, result.p50, result.p99
            );
        }
    }
    if let (Some(bare), Some(opbox)) = (bare, opbox) {
        println!("\nopbox / bare: {:.0}%\n", 100.0 * opbox.rps / bare.rps);
    }
}

async fn bench_limits() {
    println!("## The cost of the limits: `echo/echo` on the runtime, {CALLS} calls each\n");
    let echo = opbox::bundled::EXAMPLES
        .iter()
        .find_map(|(name, wasm)| (*name == "echo").then_some(*wasm))
        .expect("echo is bundled");
    let mut plugins = Vec::new();
    for enforce_limits in [true, false] {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(data_dir().join("cache")),
            enforce_limits,
            ..RuntimeConfig::default()
        })
        .expect("an engine");
        let plugin = runtime
            .load(echo, LoadOptions::default())
            .await
            .expect("echo loads");
        plugins.push(plugin);
    }
    let invocation = Invocation {
        request_id: Arc::from("bench"),
        tenant: "default".into(),
        caller_id: None,
        scopes: Vec::new(),
        deadline: Duration::from_secs(30),
        nested: None,
    };
    let input = r#"{"x":1}"#;
    let mut samples: [Vec<Duration>; 2] = Default::default();
    // Alternate rounds, so a change in the machine's speed hits both alike.
    for round in 0..=40 {
        for (i, plugin) in plugins.iter().enumerate() {
            for _ in 0..CALLS / 40 {
                let start = Instant::now();
                let output = plugin
                    .call(&invocation, "echo", input.to_owned())
                    .await
                    .expect("echo answers");
                if round > 0 {
                    samples[i].push(start.elapsed());
                }
                assert_eq!(output, input);
            }
        }
    }
    println!("| engine | median | p99 | mean |\n|---|---|---|---|");
    let [with, without] = samples.map(Stats::of);
    for (name, stats) in [
        ("epoch interruption + memory limiter (as served)", &with),
        ("neither", &without),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            us(stats.median),
            us(stats.p99),
            us(stats.mean)
        );
    }
    println!(
        "\nwith limits / without: {:+.1}% (median)\n",
        100.0 * (with.median.as_secs_f64() / without.median.as_secs_f64() - 1.0)
    );
}

async fn bench_noisy(host: &Host) {
    println!(
        "## Noisy neighbour: `POST /call` `echo/echo`, {LATENCY_CALLS} sequential calls from one client\n"
    );
    println!("CPU lanes: {}\n", host.runtime().config().cpu_lanes);
    let addr = serve(host.router()).await;
    let alone = tokio::task::spawn_blocking(move || echo_latencies(addr))
        .await
        .expect("the client thread");
    let live_before = host.runtime().live_instances();
    std::thread::spawn(move || attack(addr));
    // Measure only once every attacking call is running.
    while host.runtime().live_instances() < live_before + ATTACKERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attacked = tokio::task::spawn_blocking(move || echo_latencies(addr))
        .await
        .expect("the client thread");
    latency_table(
        "echo calls",
        &[
            ("alone", &alone),
            (
                "with 8 `hostile-loop/spin` calls in flight from another client",
                &attacked,
            ),
        ],
    );
    println!(
        "\np99 under attack / p99 alone: {:.2}× (goal: ≤ 3×)\n",
        attacked.p99.as_secs_f64() / alone.p99.as_secs_f64()
    );
}

async fn bench_envelopes(host: &Host) {
    println!(
        "## Envelopes: `echo/echo` with {IN_FLIGHT} calls in flight for {ENVELOPE_SECONDS} s\n"
    );
    let http = serve(host.router()).await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp_addr = tcp.local_addr().expect("local addr");
    tokio::spawn({
        let host = host.clone();
        async move { host.serve_tcp(tcp, std::future::pending()).await }
    });
    println!("| transport | calls/s | p50 | p99 |\n|---|---|---|---|");
    for (name, target) in [
        ("TCP, one connection", format!("tcp://{tcp_addr}")),
        ("WebSocket, one connection", format!("ws://{http}/call")),
        ("HTTP `POST /call`", format!("http://{http}/call")),
    ] {
        let (rate, stats) = tokio::task::spawn_blocking(move || echo_in_flight(&target))
            .await
            .expect("the client thread");
        println!(
            "| {name} | {rate:.0} | {} | {} |",
            us(stats.median),
            us(stats.p99)
        );
    }
    let items = tokio::task::spawn_blocking(move || {
        client_runtime().block_on(async {
            let client = opbox::client::Client::connect(&format!("tcp://{tcp_addr}"), None)
                .await
                .expect("connect");
            let start = Instant::now();
            let count = client
                .subscribe("ticker/count", json!({ "to": ITEMS }))
                .await
                .expect("ticker starts")
                .map(|item| item.expect("a tick"))
                .count()
                .await;
            assert_eq!(count as u64, ITEMS);
            ITEMS as f64 / start.elapsed().as_secs_f64()
        })
    })
    .await
    .expect("the client thread");
    println!("\n`ticker/count` over TCP: {items:.0} items/s ({ITEMS} items)\n");
}

/// Keeps `IN_FLIGHT` `echo/echo` calls going against `target` for
/// `ENVELOPE_SECONDS`: calls per second and latency.
fn echo_in_flight(target: &str) -> (f64, Stats) {
    client_runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(ENVELOPE_SECONDS);
        let input = json!({"x": 1});
        let envelope = if target.starts_with("http://") {
            None
        } else {
            Some(
                opbox::client::Client::connect(target, None)
                    .await
                    .expect("connect"),
            )
        };
        let http = reqwest::Client::new();
        let workers = (0..IN_FLIGHT).map(|_| {
            let (envelope, http, input) = (envelope.clone(), http.clone(), input.clone());
            async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let start = Instant::now();
                    match &envelope {
                        Some(client) => {
                            client.call("echo/echo", input.clone()).await.expect("echo");
                        }
                        None => {
                            let body = json!({"operation": "echo/echo", "input": input});
                            let response =
                                http.post(target).json(&body).send().await.expect("echo");
                            assert!(response.status().is_success());
                            response.bytes().await.expect("a body");
                        }
                    }
                    samples.push(start.elapsed());
                }
                samples
            }
        });
        let started = Instant::now();
        let samples: Vec<Duration> = futures::future::join_all(workers)
            .await
            .into_iter()
            .flatten()
            .collect();
        let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
        (rate, Stats::of(samples))
    })
}

/// A single-threaded runtime for a client thread.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime")
}

/// Sequential `echo/echo` calls over one keep-alive connection, from a
/// thread and runtime of their own so the client never waits on the host's
/// workers.
fn echo_latencies(addr: SocketAddr) -> Stats {
    echo_latencies_as(addr, None, LATENCY_CALLS)
}

/// [`echo_latencies`] with a bearer token.
fn echo_latencies_as(addr: SocketAddr, token: Option<&str>, calls: usize) -> Stats {
    client_runtime().block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/call");
        let body = json!({"operation": "echo/echo", "input": {"x": 1}});
        let mut samples = Vec::with_capacity(calls);
        for n in 0..calls + 300 {
            let start = Instant::now();
            let mut request = client.post(&url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("a response");
            assert!(response.status().is_success(), "echo failed");
            response.bytes().await.expect("a body");
            if n >= 300 {
                samples.push(start.elapsed());
            }
        }
        Stats::of(samples)
    })
}

const TENANT_A: &str = "opbox_bench_tenant_a";
const TENANT_B: &str = "opbox_bench_tenant_b";
const TENANT_C: &str = "opbox_bench_tenant_c";
/// Tenant A's quota, in calls per second; it sends ten times as many.
const A_RATE: u32 = 200;
/// Rounds and calls per round of the in-process cost measurement.
const COST_ROUNDS: usize = 21;
const COST_CALLS: u32 = 10_000;
/// B's sequential calls in each half of the tenants bench.
const TENANT_CALLS: usize = 15_000;

async fn bench_tenants() {
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
    };
    let config = HostConfig {
        data_dir: data_dir(),
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
    let addr = serve(host.router()).await;
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

/// The upstream body `relay` streams, in 64 KiB chunks.
const RELAY_MIB: usize = 100;

async fn bench_relay() {
    let upstream = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let app = axum::Router::new().route(
            "/stream",
            axum::routing::get(|| async {
                let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
                let chunks = futures::stream::iter(
                    (0..RELAY_MIB * 16)
                        .map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
                );
                axum::body::Body::from_stream(chunks)
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    };
    let config = HostConfig {
        data_dir: data_dir(),
        plugins: vec![PluginConfig {
            path: opbox::bundled::built_plugin("relay"),
            name: None,
            tenant: None,
            grants: opbox::runtime::Grants {
                allowed_outbound_hosts: vec!["http://127.0.0.1:*".into()],
                outbound_max_response_bytes: Some(u64::MAX),
                ..Default::default()
            },
            limits: Default::default(),
        }],
        ..HostConfig::demo()
    };
    let host = Host::start(config).await.expect("the host starts");
    let gateway = serve(host.router()).await;
    println!("## Relay: a {RELAY_MIB} MiB chunked upstream body, streamed\n");
    println!("| path | MiB/s | resident before | peak while streaming |\n|---|---|---|---|");
    let url = format!("http://{upstream}/stream");
    for through_opbox in [false, true] {
        let before = rss_kib();
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
        let sampler = tokio::spawn({
            let peak = peak.clone();
            async move {
                loop {
                    peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let url = url.clone();
        let (bytes, elapsed) = tokio::task::spawn_blocking(move || {
            client_runtime().block_on(async move {
                let client = reqwest::Client::new();
                let started = Instant::now();
                let response = if through_opbox {
                    client
                        .post(format!("http://{gateway}/subscribe"))
                        .json(&json!({"operation": "relay/sse", "input": {"url": url}}))
                        .send()
                        .await
                } else {
                    client.get(&url).send().await
                }
                .expect("a response");
                let mut body = response.bytes_stream();
                let mut bytes = 0usize;
                while let Some(chunk) = body.next().await {
                    bytes += chunk.expect("the body reads").len();
                }
                (bytes, started.elapsed())
            })
        })
        .await
        .expect("the client thread");
        sampler.abort();
        assert!(bytes >= RELAY_MIB << 20, "only {bytes} bytes arrived");
        let name = if through_opbox {
            "upstream → `relay/sse` → SSE client"
        } else {
            "upstream → client (no opbox)"
        };
        println!(
            "| {name} | {:.0} | {} MiB | {} MiB |",
            RELAY_MIB as f64 / elapsed.as_secs_f64(),
            before / 1024,
            peak.load(std::sync::atomic::Ordering::Relaxed) / 1024
        );
    }
    println!();
}

/// This process's resident memory.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Calls per keyvalue measurement.
const KV_CALLS: usize = 2_000;

async fn bench_keyvalue() {
    let db = tempfile::tempdir().expect("a temporary directory");
    let config = HostConfig {
        data_dir: data_dir(),
        keyvalue_path: Some(db.path().join("kv.redb")),
        plugins: vec![PluginConfig {
            path: opbox::bundled::built_plugin("kv"),
            name: None,
            tenant: None,
            grants: opbox::runtime::Grants {
                keyvalue: Some(opbox::runtime::KeyvalueGrant {
                    max_bytes: u64::MAX,
                    max_keys: u64::MAX,
                }),
                ..Default::default()
            },
            limits: Default::default(),
        }],
        ..HostConfig::demo()
    };
    let host = Host::start(config).await.expect("the host starts");
    let dispatcher = host.dispatcher().clone();
    println!("## Keyvalue: the `kv` example through the dispatcher, a fresh instance per call\n");
    println!("| operation | in flight | calls/s | p50 | p99 |\n|---|---|---|---|---|");
    for (op, in_flight) in [("set", 1), ("get", 1), ("set", 16), ("get", 16)] {
        let started = Instant::now();
        let per_task = KV_CALLS / in_flight;
        let tasks: Vec<_> = (0..in_flight)
            .map(|task| {
                let dispatcher = dispatcher.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_task);
                    for n in 0..per_task {
                        let key = format!("key-{task}-{n}");
                        let input = match op {
                            "set" => {
                                json!({"key": key, "value": {"n": n, "text": "a small JSON value"}})
                            }
                            _ => json!({"key": key}),
                        };
                        let start = Instant::now();
                        dispatcher
                            .call(CallRequest::new(format!("kv/{op}"), input))
                            .await
                            .expect("kv answers");
                        samples.push(start.elapsed());
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.expect("a bench task"));
        }
        let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
        let stats = Stats::of(samples);
        println!(
            "| `kv/{op}` | {in_flight} | {rate:.0} | {} | {} |",
            us(stats.median),
            us(stats.p99)
        );
    }
    println!();
}

/// Sends `rate` `echo/echo` calls per second as `token`, open loop, until
/// `stop`; returns how many were served and refused.
fn flood(
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

/// Keeps `ATTACKERS` infinite-loop calls in flight, forever.
fn attack(addr: SocketAddr) {
    client_runtime().block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/call");
        let attackers = (0..ATTACKERS).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                loop {
                    let _ = client
                        .post(&url)
                        .json(&json!({"operation": "hostile-loop/spin"}))
                        .send()
                        .await;
                }
            }
        });
        futures::future::join_all(attackers).await;
    });
}

/// A bare axum handler answering what `/call` answers, without dispatching.
fn bare_router() -> axum::Router {
    axum::Router::new().route(
        "/call",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            axum::Json(json!({
                "request_id": uuid::Uuid::new_v4().simple().to_string(),
                "result": "ok",
                "output": body["input"],
            }))
        }),
    )
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

struct WrkResult {
    rps: f64,
    p50: String,
    p99: String,
}

fn wrk(addr: SocketAddr, script: &std::path::Path) -> WrkResult {
    let output = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{WRK_SECONDS}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/call"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)
                    .map(|rest| rest.trim().to_owned())
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    WrkResult {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: field("50%"),
        p99: field("99%"),
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let n = samples.len();
        Self {
            median: samples[n / 2],
            p99: samples[(n * 99 / 100).min(n - 1)],
            mean: samples.iter().sum::<Duration>() / u32::try_from(n).expect("fits"),
            max: samples[n - 1],
        }
    }
}

/// A table of p50, p99 and max, one row per named measurement.
fn latency_table(what: &str, rows: &[(&str, &Stats)]) {
    println!("| {what} | p50 | p99 | max |\n|---|---|---|---|");
    for (name, stats) in rows {
        println!(
            "| {name} | {} | {} | {} |",
            us(stats.median),
            us(stats.p99),
            us(stats.max)
        );
    }
}

fn ns(d: Duration) -> String {
    format!("{} ns", d.as_nanos())
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}
