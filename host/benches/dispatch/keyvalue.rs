//! `keyvalue`: the `kv` example's `get` and `set` through the dispatcher.

use std::time::Instant;

use opbox::config::PluginConfig;
use opbox::{CallRequest, Host, HostConfig};
use serde_json::json;

use super::common::*;

/// Calls per keyvalue measurement.
pub(crate) const KV_CALLS: usize = 2_000;

pub(crate) async fn bench_keyvalue() {
    let db = tempfile::tempdir().expect("a temporary directory");
    let config = HostConfig {
        data_dir: data_dir().join("keyvalue"),
        keyvalue_path: Some(db.path().join("kv.redb")),
        plugins: vec![PluginConfig {
            path: opbox::bundled::built_plugin("kv"),
            reuse: None,
            name: None,
            tenant: None,
            grants: opbox::capabilities::Grants {
                keyvalue: Some(opbox::capabilities::keyvalue::KeyvalueGrant {
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
