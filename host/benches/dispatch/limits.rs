//! `limits`: `echo/echo` straight on the runtime, with and without the engine enforcing limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opbox::runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};

use super::common::*;

pub(crate) async fn bench_limits() {
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
        meter: Arc::default(),
        span: Default::default(),
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
