//! No leaks: thousands of hostile calls leave the host as they found it.
//!
//! Runs the real `opbox` binary in a process of its own, so that its resident
//! memory is its own, and reads it from `/proc`.

use serde_json::{Value, json};

use crate::util::Server;

/// Calls per `/batch` request: below the default per-plugin `max_instances`,
/// so every call really runs.
const BATCH: usize = 50;

/// Linear memory a pooled slot keeps resident between calls, in KiB
/// (`KEEP_RESIDENT_MEMORY` in the runtime).
const KEEP_RESIDENT_KIB: u64 = 4 << 10;

/// The hostile plugins the test attacks with.
const HOSTILE: [&str; 3] = ["fixture-panic", "hostile-loop", "hostile-memory"];

/// The `n`th hostile call: panics, memory bombs and oversized outputs in
/// turn, and every tenth an infinite loop (the slowest to stop: a CPU tick
/// or two each).
fn hostile_call(n: usize) -> Value {
    match (n % 10, n % 3) {
        (9, _) => json!({"operation": "hostile-loop/spin"}),
        (_, 0) => json!({"operation": "fixture-panic/boom", "input": format!("attack {n}")}),
        (_, 1) => json!({"operation": "hostile-memory/bomb"}),
        _ => json!({"operation": "hostile-memory/big-output", "input": 2}),
    }
}

/// Makes `calls` hostile calls, `BATCH` at a time; every one must fail the
/// way its attack should.
async fn attack(client: &reqwest::Client, server: &Server, calls: usize) {
    for start in (0..calls).step_by(BATCH) {
        let batch: Vec<Value> = (start..(start + BATCH).min(calls))
            .map(hostile_call)
            .collect();
        let response = client
            .post(format!("{}/batch", server.url))
            .json(&batch)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), batch.len());
        for result in results {
            let code = result["error"]["code"].as_str().unwrap_or("ok");
            assert!(
                ["PLUGIN_FAILED", "RESOURCE_EXHAUSTED", "TIMEOUT"].contains(&code),
                "{result}"
            );
        }
    }
}

#[tokio::test]
async fn ten_thousand_hostile_calls_leave_no_trace() {
    let mut config = String::from(
        "listen = \"127.0.0.1:0\"\n\
         [plugin_limits]\nmemory_bytes = 8388608\ncpu_ms = 20\noutput_bytes = 1048576\n\
         [admin]\nmax_events = 1000\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n",
    );
    for name in HOSTILE {
        config += &format!(
            "[[plugins]]\npath = {:?}\n",
            opbox::bundled::built_plugin(name)
        );
    }
    // Two malloc arenas, whatever the threads do: with one per contended
    // thread (glibc's default), how busy the machine is decides how many
    // arenas the host touches, and so steps its resident set up by tens of
    // MiB once and for all. A leak grows the same either way.
    let dir = tempfile::tempdir().unwrap();
    // Every hostile call is an event the feed keeps, up to `max_events`:
    // a store that grows until its bound, which 1,000 reaches during the
    // warm-up. glibc's dynamic mmap threshold would put the oversized
    // outputs (2 MiB strings) on the heap after the first is freed, and
    // the heap's high-water mark is not a leak: a fixed threshold keeps
    // them mmapped, as the first one is.
    let server = Server::start_with(
        dir.path(),
        &config,
        &[
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ],
    );
    let client = reqwest::Client::new();
    // Warm up to a steady state (pool slots, allocator arenas, caches):
    // until a round of 1,000 calls grows the resident set by under 1%. A
    // leak never gets there; warming up does, in one to three rounds.
    attack(&client, &server, 2_000).await;
    let mut before = server.rss_kib();
    for _ in 0..10 {
        attack(&client, &server, 1_000).await;
        let now = server.rss_kib();
        eprintln!("warming up: {now} KiB");
        let steady = now <= before + before / 100;
        before = now;
        if steady {
            break;
        }
    }
    eprintln!("resident after warming up: {before} KiB");
    // A leak grows the host with every call, so in every round. A busy
    // machine can still raise the high-water mark once or twice: more calls
    // overlapping than ever before touch more pooled slots, each of which
    // keeps up to 4 MiB of linear memory resident for the next call. That
    // step is bounded by how many calls can overlap (`BATCH`) and shows in
    // a round or two, never in most. So the typical (median) round must
    // not grow, and the whole run must stay within the pool's bound.
    let mut growth = Vec::new();
    let mut last = before;
    for thousand in 1..=10 {
        attack(&client, &server, 1_000).await;
        let now = server.rss_kib();
        eprintln!("after {thousand},000 calls: {now} KiB");
        growth.push(now.saturating_sub(last));
        last = now;
    }
    growth.sort_unstable();
    let median = growth[growth.len() / 2];
    assert!(
        median < 512,
        "resident memory grew by {median} KiB in a typical round of 1,000 hostile calls: \
         a leak of over half a KiB a call (rounds: {growth:?})"
    );
    let overlap_bound = (BATCH as u64) * KEEP_RESIDENT_KIB;
    assert!(
        last <= before + overlap_bound,
        "resident memory grew from {before} KiB to {last} KiB, more than {BATCH} overlapping \
         calls can keep resident"
    );
    for plugin in HOSTILE {
        let body = server
            .call(&client, "services/plugin", json!({"name": plugin}))
            .await;
        let output = &body["output"];
        assert_eq!(output["live_instances"], 0, "{body}");
        assert_eq!(output["open_subscriptions"], 0, "{body}");
    }
}
