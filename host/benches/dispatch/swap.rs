//! `swap`: a plugin replaced while it serves, and a host restarted with
//! 100 installed plugins.
//!
//! - Latency of sequential `POST /call` `versioned/which` from 4 clients,
//!   each on a connection of its own, at steady state and then while the
//!   plugin is replaced (v1 and v2 in turn, over HTTP) every 500 ms; every
//!   error is counted.
//! - Time from a `PUT` being sent to the first call that the new version
//!   answers.
//! - `Host::start` with 100 installed plugins (100 distinct components: the
//!   same plugin with a custom section of its own each), with the compiled
//!   cache warm and cold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opbox::plugins::Authority;
use opbox::tenants::{Quotas, TenantConfig, TokenConfig, hash_token_hex};
use opbox::{Host, HostConfig, Identity};
use serde_json::{Value, json};

use crate::common::{Stats, client_runtime, latency_table, router, serve};

const OPERATOR: &str = "bench-operator";
const CLIENTS: usize = 4;
const PHASE: Duration = Duration::from_secs(10);
const SWAP_EVERY: Duration = Duration::from_millis(500);

fn config(data: &std::path::Path) -> HostConfig {
    let mut config = HostConfig {
        data_dir: data.to_owned(),
        examples: false,
        ..HostConfig::default()
    };
    config.tenants = vec![TenantConfig {
        id: Identity::DEFAULT_TENANT.into(),
        anonymous: true,
        tokens: vec![TokenConfig {
            id: "operator".into(),
            sha256: hash_token_hex(OPERATOR),
            scopes: vec!["admin".into()],
        }],
        quotas: Quotas {
            max_concurrent: 1024,
            ..Quotas::default()
        },
        plugins: Default::default(),
    }];
    config
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(opbox::bundled::built_plugin(name)).expect("the fixtures are built")
}

/// `wasm` with a custom section naming `n`: a distinct component, which
/// compiles and caches on its own.
fn distinct(wasm: &[u8], n: usize) -> Vec<u8> {
    let name = b"opbox-bench";
    let payload = format!("copy {n}");
    let size = 1 + name.len() + payload.len();
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    out.push(u8::try_from(size).expect("a short section"));
    out.push(u8::try_from(name.len()).expect("a short name"));
    out.extend_from_slice(name);
    out.extend_from_slice(payload.as_bytes());
    out
}

async fn upload(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    name: Option<&str>,
    wasm: Vec<u8>,
) {
    let mut request = client
        .request(method, url)
        .bearer_auth(OPERATOR)
        .header("content-type", "application/wasm")
        .body(wasm);
    if let Some(name) = name {
        request = request.header("opbox-plugin", json!({ "name": name }).to_string());
    }
    let response = request.send().await.expect("a response");
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap_or_default()
    );
}

/// Sequential calls from `CLIENTS` threads until `stop`: their latencies,
/// and how many failed.
fn load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<Duration>, u64)> {
    std::thread::spawn(move || {
        let callers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    client_runtime().block_on(async {
                        let client = reqwest::Client::new();
                        let url = format!("http://{addr}/call");
                        let body = json!({"operation": "versioned/which", "input": null});
                        let (mut samples, mut errors) = (Vec::new(), 0);
                        while !stop.load(Ordering::Relaxed) {
                            let start = Instant::now();
                            let response = client.post(&url).json(&body).send().await;
                            match response {
                                Ok(r) if r.status().is_success() => {
                                    r.bytes().await.expect("a body");
                                    samples.push(start.elapsed());
                                }
                                _ => errors += 1,
                            }
                        }
                        (samples, errors)
                    })
                })
            })
            .collect();
        let mut all = (Vec::new(), 0);
        for caller in callers {
            let (samples, errors) = caller.join().expect("a caller");
            all.0.extend(samples);
            all.1 += errors;
        }
        all
    })
}

pub(crate) async fn bench_swap() {
    println!("## swap: a plugin replaced while it serves\n");
    let data = tempfile::tempdir().expect("a data directory");
    let host = Host::start(config(data.path()))
        .await
        .expect("the host starts");
    let addr = serve(router(&host)).await;
    let client = reqwest::Client::new();
    let plugins = format!("http://{addr}/admin/v1/plugins");
    let (v1, v2) = (fixture("fixture-v1"), fixture("fixture-v2"));
    upload(
        &client,
        reqwest::Method::POST,
        &plugins,
        Some("versioned"),
        v1.clone(),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let steady = load(addr, stop.clone());
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    let (steady, steady_errors) = steady.join().expect("the load");

    let stop = Arc::new(AtomicBool::new(false));
    let swapping = load(addr, stop.clone());
    let url = format!("{plugins}/versioned?force=true");
    let swaps = AtomicU64::new(0);
    let mut to_serving = Vec::new();
    let until = Instant::now() + PHASE;
    let mut next = 2u64;
    while Instant::now() < until {
        let wasm = if next == 2 { v2.clone() } else { v1.clone() };
        let sent = Instant::now();
        upload(&client, reqwest::Method::PUT, &url, None, wasm).await;
        // The first call the new version answers.
        loop {
            let answer: Value = client
                .post(format!("http://{addr}/call"))
                .json(&json!({"operation": "versioned/which", "input": null}))
                .send()
                .await
                .expect("a response")
                .json()
                .await
                .expect("JSON");
            if answer["output"]["version"] == next {
                break;
            }
        }
        to_serving.push(sent.elapsed());
        swaps.fetch_add(1, Ordering::Relaxed);
        next = 3 - next;
        tokio::time::sleep(SWAP_EVERY.saturating_sub(sent.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (swapping, swapping_errors) = swapping.join().expect("the load");
    let (steady_n, swapping_n) = (steady.len(), swapping.len());
    let (steady, swapping) = (Stats::of(steady), Stats::of(swapping));
    latency_table(
        &format!(
            "`versioned/which`, {CLIENTS} clients, {} s each",
            PHASE.as_secs()
        ),
        &[("steady", &steady), ("replaced every 500 ms", &swapping)],
    );
    println!(
        "\ncalls: {steady_n} steady ({steady_errors} errors), {swapping_n} while swapping ({swapping_errors} errors); {} replaces; p99 while swapping / steady: {:.2}\n",
        swaps.load(Ordering::Relaxed),
        swapping.p99.as_secs_f64() / steady.p99.as_secs_f64()
    );
    latency_table(
        "`PUT` sent → the new version answers",
        &[("replace", &Stats::of(to_serving))],
    );
    drop(host);

    println!("\n## restart with 100 installed plugins\n");
    let data = tempfile::tempdir().expect("a data directory");
    {
        let host = Host::start(config(data.path()))
            .await
            .expect("the host starts");
        for n in 0..100 {
            let name = format!("p{n:03}");
            host.plugins()
                .install(
                    Authority::Operator,
                    None,
                    Some(&name),
                    &distinct(&v1, n),
                    json!({}),
                )
                .await
                .expect("installed");
        }
    }
    let mut rows = Vec::new();
    for (what, clear) in [
        ("cold cache", true),
        ("warm cache", false),
        ("warm cache, again", false),
    ] {
        if clear {
            let _ = std::fs::remove_dir_all(data.path().join("cache"));
        }
        let started = Instant::now();
        let host = Host::start(config(data.path()))
            .await
            .expect("the host starts");
        let ready = started.elapsed();
        assert_eq!(
            host.plugins().list(None).len(),
            100,
            "every plugin restored"
        );
        drop(host);
        rows.push((what, ready));
    }
    println!("| start to ready | time |\n|---|---|");
    for (what, ready) in rows {
        println!("| {what} | {:.1} ms |", ready.as_secs_f64() * 1e3);
    }
    println!();
}
