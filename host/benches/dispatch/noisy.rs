//! `noisy`: echo latency while another client keeps infinite loops in flight.

use std::net::SocketAddr;
use std::time::Duration;

use opbox::Host;
use serde_json::json;

use super::common::*;

pub(crate) const ATTACKERS: usize = 8;

pub(crate) async fn bench_noisy(host: &Host) {
    println!(
        "## Noisy neighbour: `POST /call` `echo/echo`, {LATENCY_CALLS} sequential calls from one client\n"
    );
    println!("CPU lanes: {}\n", host.runtime().config().cpu_lanes);
    let addr = serve(router(host)).await;
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

/// Keeps `ATTACKERS` infinite-loop calls in flight, forever.
pub(crate) fn attack(addr: SocketAddr) {
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
