//! `relay`: a 100 MiB upstream body streamed through `relay/sse`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use opbox::config::PluginConfig;
use opbox::{Host, HostConfig};
use serde_json::json;

use super::common::*;

/// The upstream body `relay` streams, in 64 KiB chunks.
pub(crate) const RELAY_MIB: usize = 100;

pub(crate) async fn bench_relay() {
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
        data_dir: data_dir().join("relay"),
        plugins: vec![PluginConfig {
            path: opbox::bundled::built_plugin("relay"),
            reuse: None,
            name: None,
            tenant: None,
            grants: opbox::capabilities::Grants {
                allowed_outbound_hosts: vec!["http://127.0.0.1:*".into()],
                outbound_max_response_bytes: Some(u64::MAX),
                ..Default::default()
            },
            limits: Default::default(),
        }],
        ..HostConfig::demo()
    };
    let host = Host::start(config).await.expect("the host starts");
    let gateway = serve(router(&host)).await;
    println!("## Relay: a {RELAY_MIB} MiB chunked upstream body, streamed\n");
    println!("| path | MiB/s | resident before | peak while streaming |\n|---|---|---|---|");
    let url = format!("http://{upstream}/stream");
    for through_opbox in [false, true] {
        let url = url.clone();
        let ((bytes, elapsed), before, peak) = sampling_rss(move || {
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
        .await;
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
            peak / 1024
        );
    }
    println!();
}

/// Runs `client` on a thread of its own while this process's resident
/// memory is sampled every 20 ms: its output, and the resident KiB before
/// it and at the peak.
pub(crate) async fn sampling_rss<T: Send + 'static>(
    client: impl FnOnce() -> T + Send + 'static,
) -> (T, u64, u64) {
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
    let output = tokio::task::spawn_blocking(client)
        .await
        .expect("the client thread");
    sampler.abort();
    (
        output,
        before,
        peak.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// This process's resident memory.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
