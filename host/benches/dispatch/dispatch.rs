//! `dispatch`: one `echo/echo` call through the dispatcher, a fresh instance
//! per call, against the same plugin with instance reuse (`echo-reused`) and
//! a native echo through the same dispatcher.

use std::time::Instant;

use opbox::{CallRequest, Dispatcher};
use serde_json::json;

use super::common::*;

pub(crate) async fn bench_dispatch(dispatcher: &Dispatcher) {
    println!("## One call through the dispatcher, in process ({CALLS} sequential calls)\n");
    println!("| operation | median | p99 | mean |\n|---|---|---|---|");
    // `OPBOX_BENCH_OPERATION=echo/echo` runs one of them alone, e.g. under
    // `perf record`; `OPBOX_BENCH_CALLS` sets how many calls are measured.
    let only = std::env::var("OPBOX_BENCH_OPERATION").ok();
    let calls = std::env::var("OPBOX_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CALLS);
    let operations = ["echo/echo", "echo-reused/echo", "bench/echo"];
    for operation in operations
        .into_iter()
        .filter(|op| only.as_deref().is_none_or(|only| only == *op))
    {
        let input = json!({"x": 1});
        // Warm up: caches, allocator, instance pool.
        for _ in 0..1000 {
            dispatcher
                .call(CallRequest::new(operation, input.clone()))
                .await
                .expect("echo answers");
        }
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
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
