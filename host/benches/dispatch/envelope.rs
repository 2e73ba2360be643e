//! `envelope`: 64 calls in flight over TCP, WebSocket and HTTP.

use std::time::{Duration, Instant};

use futures::StreamExt;
use opbox::Host;
use serde_json::json;

use super::common::*;

pub(crate) const IN_FLIGHT: usize = 64;

pub(crate) const ENVELOPE_SECONDS: u64 = 5;

pub(crate) async fn bench_envelopes(host: &Host) {
    println!(
        "## Envelopes: `echo/echo` with {IN_FLIGHT} calls in flight for {ENVELOPE_SECONDS} s\n"
    );
    let http = serve(router(host)).await;
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
        echo_row(name, target, None).await;
    }
    let items = tokio::task::spawn_blocking(move || {
        client_runtime().block_on(async {
            let client =
                opbox::envelope::client::Client::connect(&format!("tcp://{tcp_addr}"), None)
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

/// One row of an `echo/echo` table: calls per second, p50 and p99 against
/// `target`, on a client thread of its own.
pub(crate) async fn echo_row(
    name: &str,
    target: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) {
    let (rate, stats) = tokio::task::spawn_blocking(move || echo_in_flight(&target, tls))
        .await
        .expect("the client thread");
    println!(
        "| {name} | {rate:.0} | {} | {} |",
        us(stats.median),
        us(stats.p99)
    );
}

/// Keeps `IN_FLIGHT` `echo/echo` calls going against `target` for
/// `ENVELOPE_SECONDS`, trusting `tls` for `quic://`: calls per second and
/// latency.
pub(crate) fn echo_in_flight(
    target: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> (f64, Stats) {
    client_runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(ENVELOPE_SECONDS);
        let input = json!({"x": 1});
        let envelope = if target.starts_with("http://") {
            None
        } else {
            Some(
                opbox::envelope::client::Client::connect_with(target, None, tls)
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
