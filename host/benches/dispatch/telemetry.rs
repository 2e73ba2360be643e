//! `telemetry`: what metrics and trace export cost a call. First in
//! process, with spans going nowhere, exported, or made and not sampled;
//! then `POST /call` `echo/echo` under `wrk` against four `opbox serve`
//! processes built from this checkout: metrics off, metrics on (the
//! default), and metrics on with spans exported over OTLP to a collector
//! in this process (every trace, and one in ten). Rounds alternate between them so all see the
//! same machine, and each host's own CPU time per request is read from
//! `/proc`, steadier than throughput when `wrk` shares the cores.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use opbox::telemetry::trace::{TelemetryConfig, TraceExport};
use opbox::{CallRequest, Host, HostConfig};

use super::common::{ServeProcess, Stats, cpu_time, data_dir, median, serve_process};
use super::http::{WRK_SECONDS, echo_script, wrk};

const ROUNDS: usize = 5;

/// An OTLP/HTTP collector that takes every export and counts its bytes.
async fn collector() -> (SocketAddr, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::body::Bytes| async move {
                received.fetch_add(body.len() as u64, Ordering::Relaxed);
                Vec::<u8>::new()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// `echo/echo` in process, `CALLS_PER_ROUND` sequential calls per round,
/// on three hosts: spans going nowhere, every span exported, and none
/// sampled: what a span costs a call without HTTP, `wrk` or a second
/// process sharing the cores.
async fn in_process(otlp: SocketAddr) {
    const CALLS_PER_ROUND: usize = 5_000;
    println!(
        "### In process: `echo/echo`, {ROUNDS} rounds of {CALLS_PER_ROUND} sequential calls\n"
    );
    let exports: Vec<Option<TraceExport>> = [None, Some(1.0), Some(0.0)]
        .into_iter()
        .map(|ratio| {
            let config = ratio.map(|sample_ratio| TelemetryConfig {
                otlp_endpoint: Some(format!("http://{otlp}")),
                sample_ratio,
                ..TelemetryConfig::default()
            });
            // The exporter's blocking HTTP client must be made (and later
            // dropped) off the async runtime.
            std::thread::spawn(move || config.and_then(|c| TraceExport::start(&c).expect("starts")))
                .join()
                .expect("the exporter starts")
        })
        .collect();
    let mut hosts = Vec::new();
    for export in &exports {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = HostConfig {
            data_dir: dir.path().to_owned(),
            cache_dir: Some(data_dir().join("cache")),
            tracer: export.as_ref().map(TraceExport::tracer).unwrap_or_default(),
            ..HostConfig::demo()
        };
        hosts.push((Host::start(config).await.expect("the host starts"), dir));
    }
    let names = [
        "spans go nowhere",
        "every span exported",
        "spans made, none sampled",
    ];
    let input = serde_json::json!({"x": 1});
    let mut medians = vec![Vec::new(); names.len()];
    for round in 0..=ROUNDS {
        for (i, (host, _)) in hosts.iter().enumerate() {
            let mut samples = Vec::with_capacity(CALLS_PER_ROUND);
            for _ in 0..CALLS_PER_ROUND {
                let request = CallRequest::new("echo/echo", input.clone());
                let start = Instant::now();
                host.dispatcher().call(request).await.expect("echo answers");
                samples.push(start.elapsed());
            }
            // Round 0 warms up.
            if round > 0 {
                medians[i].push(Stats::of(samples).median.as_secs_f64() * 1e6);
            }
        }
    }
    println!("| host | median of round medians | each round (µs) |\n|---|---|---|");
    for (name, rounds) in names.iter().zip(&medians) {
        let each: Vec<String> = rounds.iter().map(|m| format!("{m:.1}")).collect();
        println!(
            "| {name} | {:.1} µs | {} |",
            median(&mut rounds.clone()),
            each.join(", ")
        );
    }
    println!();
    drop(hosts);
    std::thread::spawn(move || {
        exports
            .into_iter()
            .flatten()
            .for_each(TraceExport::shutdown)
    })
    .join()
    .expect("the exporters stop");
}

pub(crate) async fn bench_telemetry() {
    println!("## Telemetry: what metrics and trace export cost a call\n");
    let (otlp, exported) = collector().await;
    in_process(otlp).await;
    println!(
        "### Over HTTP: `POST /call` `echo/echo` under `wrk -t2 -c32 -d{WRK_SECONDS}s`, {ROUNDS} rounds\n"
    );
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("skipped: `wrk` is not on PATH (Debian: `apt-get install wrk`)\n");
        return;
    }
    let cache = tempfile::tempdir().expect("a temporary directory");
    let setups = [
        ("metrics off", "metrics = false\n".to_owned()),
        ("metrics on (default)", String::new()),
        (
            "metrics on, every trace exported",
            format!("otlp_endpoint = \"http://{otlp}\"\n"),
        ),
        (
            "metrics on, 1 trace in 10 exported",
            format!("otlp_endpoint = \"http://{otlp}\"\nsample_ratio = 0.1\n"),
        ),
    ];
    let servers: Vec<ServeProcess> = setups
        .iter()
        .map(|(_, telemetry)| serve_process("", &format!("[telemetry]\n{telemetry}"), cache.path()))
        .collect();
    let script = echo_script("opbox-bench-telemetry.lua");
    let mut rps = vec![Vec::new(); servers.len()];
    let mut p99 = vec![Vec::new(); servers.len()];
    let mut cpu = vec![Vec::new(); servers.len()];
    for round in 0..ROUNDS {
        // Each round starts with a different host, so none always runs
        // right after the same neighbour.
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            let pid = servers[i].child.id();
            let before = cpu_time(pid);
            let result = tokio::task::block_in_place(|| wrk(servers[i].addr, &script));
            let spent = cpu_time(pid) - before;
            cpu[i].push(spent.as_secs_f64() * 1e6 / result.requests.max(1) as f64);
            rps[i].push(result.rps);
            p99[i].push(result.p99);
        }
    }
    println!(
        "| host | requests/s (median) | each round | host CPU per request (median) | each round (µs) | p99 each round |\n\
         |---|---|---|---|---|---|"
    );
    let medians: Vec<f64> = rps.iter().map(|r| median(&mut r.clone())).collect();
    let cpu_medians: Vec<f64> = cpu.iter().map(|c| median(&mut c.clone())).collect();
    for (i, (name, _)) in setups.iter().enumerate() {
        let rounds: Vec<String> = rps[i].iter().map(|r| format!("{r:.0}")).collect();
        let cpu_rounds: Vec<String> = cpu[i].iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "| {name} | {:.0} | {} | {:.1} µs | {} | {} |",
            medians[i],
            rounds.join(", "),
            cpu_medians[i],
            cpu_rounds.join(", "),
            p99[i].join(", ")
        );
    }
    let cost = |of: usize, against: usize| 100.0 * (1.0 - medians[of] / medians[against]);
    let cpu_cost =
        |of: usize, against: usize| 100.0 * (cpu_medians[of] / cpu_medians[against] - 1.0);
    println!(
        "\nThroughput: metrics cost {:.1}% (goal: at most 3%); exporting every trace costs \
         {:.1}% more, one in ten {:.1}% (goal: at most 10%).\n\
         Host CPU per request: metrics cost {:.1}%; exporting every trace {:.1}% more, \
         one in ten {:.1}%. {} KiB of spans exported.\n",
        cost(1, 0),
        cost(2, 1),
        cost(3, 1),
        cpu_cost(1, 0),
        cpu_cost(2, 1),
        cpu_cost(3, 1),
        exported.load(Ordering::Relaxed) / 1024
    );
}
