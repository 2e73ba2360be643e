//! opbox's benchmark: a bench binary that prints a written report.
//!
//! Run it in release on an otherwise idle machine:
//!
//! ```text
//! cargo bench -p opbox --bench dispatch              # everything
//! cargo bench -p opbox --bench dispatch -- dispatch  # in-process calls only
//! cargo bench -p opbox --bench dispatch -- stream    # subscription items: async stream, iterator, batched iterator
//! cargo bench -p opbox --bench dispatch -- http      # wrk and h2load, needs `wrk` and `h2load` on PATH (and `wasmtime` for its row)
//! cargo bench -p opbox --bench dispatch -- http-opbox  # wrk against opbox alone
//! cargo bench -p opbox --bench dispatch -- limits    # echo with and without limits
//! cargo bench -p opbox --bench dispatch -- noisy     # echo latency under a spinning neighbour
//! cargo bench -p opbox --bench dispatch -- envelope  # TCP, WebSocket and HTTP, 64 calls in flight
//! cargo bench -p opbox --bench dispatch -- tenants   # a tenant's latency under another's flood
//! cargo bench -p opbox --bench dispatch -- keyvalue  # kv/get and kv/set from a plugin
//! cargo bench -p opbox --bench dispatch -- relay     # 100 MiB upstream body through relay/sse
//! cargo bench -p opbox --bench dispatch -- swap      # replaced every 500 ms; restart with 100 plugins
//! cargo bench -p opbox --bench dispatch -- callers   # /call vs an MCP tool call, plain vs TLS
//! cargo bench -p opbox --bench dispatch -- telemetry # a span's cost in process; metrics off / on / traces exported over HTTP (needs `wrk`)
//! cargo bench -p opbox --bench dispatch -- sse       # 100,000 items as SSE: opbox and bare axum
//! cargo bench -p opbox --bench dispatch -- languages # one plugin in Rust, Python and JavaScript
//! cargo bench -p opbox --bench dispatch -- cluster   # local vs forwarded over NATS, needs `nats-server`
//! ```
//!
//! - `dispatch`: one `echo/echo` call through the dispatcher, a fresh
//!   instance per call, against the same plugin with its instances reused
//!   (`echo-reused`) and a native echo through the same dispatcher (the
//!   floor); median, p99 and mean over many sequential calls.
//!   `OPBOX_BENCH_OPERATION=echo/echo` runs one of the three alone and
//!   `OPBOX_BENCH_CALLS` sets how many calls are measured: for `perf record`.
//! - `stream`: per-item time of 100,000 items from an async stream
//!   (`ticker/count`), from an iterator (`fixture-hog/big-stream`) and from
//!   the same iterator marked `batched` (`fixture-hog/big-batches`).
//! - `http`: requests per second and latency of `POST /call`, fresh and
//!   reused, under `wrk -t2 -c32` (HTTP/1.1) and `h2load -c2 -m16` (HTTP/2),
//!   against a bare axum handler answering the same JSON, all served from
//!   this process in the same run, and (HTTP/1.1) against `wasmtime serve
//!   -Scli` running `plugins/wasi-http-hello`.
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
//! - `swap`: `versioned/which` latency from 4 clients at steady state and
//!   while the plugin is replaced every 500 ms; the time from a `PUT` to
//!   the new version answering; start-to-ready with 100 installed plugins,
//!   cold and warm compiled cache.
//! - `callers`: `echo/echo` through `/call` and as an MCP tool call,
//!   plain and over TLS, sequential and with 32 connections in flight.
//! - `telemetry`: `echo/echo` in process, spans going nowhere, exported, or
//!   made and not sampled; then `POST /call` `echo/echo` under `wrk`
//!   against four `opbox serve` processes: metrics off, metrics on (the
//!   default), and traces exported over OTLP to a collector in the bench
//!   (all, and one in ten); rounds alternate between them, and each host's
//!   CPU per request is read from `/proc`.
//! - `languages`: `opbox new`'s template in Rust, Python and JavaScript,
//!   built from source: build and rebuild time, size, cold compile, first
//!   and steady `hello` latency, per-item cost of a 10,000-item `count`.
//! - `cluster`: `echo/echo` called locally and forwarded over NATS to
//!   another host in this process (p50, p99, calls/s with 32 in flight),
//!   a 100,000-item subscription both ways, and each process's CPU per
//!   `POST /call` with two `opbox serve` processes and the `nats-server`.
//! - `noisy`: latency of sequential `POST /call` `echo/echo` from one client,
//!   alone, then while another client keeps 8 `hostile-loop/spin` calls (an
//!   infinite loop each) in flight. Runs last: the spinning calls outlive it.

#![allow(
    clippy::expect_used,
    reason = "a benchmark reports failure by panicking"
)]

mod callers;
mod cluster;
mod common;
mod dispatch;
mod envelope;
mod http;
mod keyvalue;
mod languages;
mod limits;
mod noisy;
mod raw;
mod relay;
mod stream;
mod swap;
mod telemetry;
mod tenants;

use common::{num_cpus, profile, start_host};

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
            dispatch::bench_dispatch(&dispatcher).await;
        }
        if wants("stream") {
            stream::bench_stream(&dispatcher).await;
        }
        if wants("sse") {
            stream::bench_sse(&host).await;
        }
        if wants("http-bare") || wants("http-opbox") {
            http::bench_http(&host, wants("http-bare"), wants("http-opbox")).await;
        }
        if wants("limits") {
            limits::bench_limits().await;
        }
        if wants("envelope") {
            envelope::bench_envelopes(&host).await;
        }
        if wants("keyvalue") {
            keyvalue::bench_keyvalue().await;
        }
        if wants("relay") {
            relay::bench_relay().await;
        }
        if wants("raw") {
            raw::bench_raw().await;
        }
        if wants("tenants") {
            tenants::bench_tenants().await;
        }
        if wants("languages") {
            languages::bench_languages(&host).await;
        }
        if wants("callers") {
            callers::bench_callers(&host).await;
        }
        if wants("telemetry") {
            telemetry::bench_telemetry().await;
        }
        if wants("cluster") {
            cluster::bench_cluster().await;
        }
        if wants("swap") {
            swap::bench_swap().await;
        }
        if wants("noisy") {
            noisy::bench_noisy(&host).await;
        }
    });
}
