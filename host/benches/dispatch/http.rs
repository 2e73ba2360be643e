//! `http`: `POST /call` under `wrk`, opbox against a bare axum handler.

use std::net::SocketAddr;
use std::process::Command;

use opbox::Host;
use serde_json::{Value, json};

use super::common::*;

pub(crate) const WRK_SECONDS: u32 = 10;

pub(crate) async fn bench_http(host: &Host, bare: bool, opbox: bool) {
    println!("## HTTP: `POST /call` `echo/echo` under `wrk -t2 -c32 -d{WRK_SECONDS}s`\n");
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("skipped: `wrk` is not on PATH (Debian: `apt-get install wrk`)\n");
        return;
    }
    let opbox_addr = serve(router(host)).await;
    let bare_addr = serve(bare_router()).await;
    let script = echo_script("opbox-bench-post.lua");
    println!("| server | requests/s | latency p50 | latency p99 |\n|---|---|---|---|");
    let bare = bare.then(|| wrk(bare_addr, &script));
    let opbox = opbox.then(|| wrk(opbox_addr, &script));
    for (name, result) in [
        ("bare axum handler", &bare),
        ("opbox `/call` echo/echo", &opbox),
    ] {
        if let Some(result) = result {
            println!(
                "| {name} | {:.0} | {} | {} |",
                result.rps, result.p50, result.p99
            );
        }
    }
    if let (Some(bare), Some(opbox)) = (bare, opbox) {
        println!("\nopbox / bare: {:.0}%\n", 100.0 * opbox.rps / bare.rps);
    }
}

/// A wrk script, written to a temporary file named `name`, that posts
/// `echo/echo` with `{"x":1}` to `/call`.
pub(crate) fn echo_script(name: &str) -> std::path::PathBuf {
    let script = std::env::temp_dir().join(name);
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = '{\"operation\":\"echo/echo\",\"input\":{\"x\":1}}'\n",
    )
    .expect("write the wrk script");
    script
}

/// A bare axum handler answering what `/call` answers, without dispatching.
pub(crate) fn bare_router() -> axum::Router {
    axum::Router::new().route(
        "/call",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            axum::Json(json!({
                "request_id": uuid::Uuid::new_v4().simple().to_string(),
                "result": "ok",
                "output": body["input"],
            }))
        }),
    )
}

pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    /// Requests completed in the whole run.
    pub(crate) requests: u64,
    pub(crate) p50: String,
    pub(crate) p99: String,
}

pub(crate) fn wrk(addr: SocketAddr, script: &std::path::Path) -> WrkResult {
    let output = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{WRK_SECONDS}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/call"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)
                    .map(|rest| rest.trim().to_owned())
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    WrkResult {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        // "187234 requests in 10.00s, 45.21MB read"
        requests: text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or(0),
        p50: field("50%"),
        p99: field("99%"),
    }
}
