//! The soak: the release `opbox` binary under every attack of "Safe to
//! expose" at once, from a second process, while another tenant calls
//! `echo/echo` at a steady rate.
//!
//! ```text
//! cargo bench -p opbox --bench soak                 # 60 s of attack
//! OPBOX_SOAK_SECS=20 cargo bench -p opbox --bench soak
//! OPBOX_SOAK_ATTACKER_CPUS=1 cargo bench -p opbox --bench soak  # the attacker pinned (taskset)
//! OPBOX_SOAK_ATTACKER_RATE=1000 cargo bench -p opbox --bench soak  # the attacker's tenant held to 1,000 calls/s
//! OPBOX_SOAK_SECS=0 cargo bench -p opbox --bench soak    # the compile bombs only
//! ```
//!
//! First, compile bombs: components made to be costly to compile, each
//! uploaded by the operator to a fresh host, with the time to the answer
//! and the host's resident memory before, at its peak and after.
//!
//! Reports the victim's p50/p99 and failures alone and under attack, and the
//! host's resident memory: idle, at its peak (`VmHWM`), and after. The
//! configuration is `CONFIG` below; `docs/security.md` derives the memory
//! ceiling from it.
//!
//! The attacks, each in a loop for the whole run, reconnecting when the
//! host closes a connection:
//! - 4 WebSockets flooding pings and reading nothing;
//! - 32 TCP connections announcing 16 MiB frames before authenticating;
//! - 16 TCP connections that authenticate, then send all but one byte of a
//!   4 MiB frame and stop;
//! - 64 HTTP connections sending request headers a byte a second;
//! - 8 TCP subscribers to 900 KiB items that never read;
//! - 4 callers of a plugin returning 12 MiB errors;
//! - 2 callers of a plugin making 500 nested `services/openapi` calls;
//! - a caller of a plugin reporting 20,000 fatal lines per call;
//! - a caller filling a key-value store with 256-byte bucket names;
//! - 80 calls at once to a shared plugin whose per-tenant share is 64.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a benchmark reports failure by panicking"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "support/bomb.rs"]
mod bomb;

const VICTIM: &str = "opbox_soak_victim";
const ATTACKER: &str = "opbox_soak_attacker";
/// The victim's calls per second.
const RATE: u64 = 200;
/// How long the victim is measured alone.
const BASELINE: Duration = Duration::from_secs(10);

/// The host's configuration; `{plugins}` and `{data}` are filled in.
const CONFIG: &str = r#"
listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
data_dir = "{data}"

[limits]
max_instances = 256

[plugin_limits]
memory_bytes = 16777216
output_bytes = 1048576

[envelope]
max_frame_bytes = 4194304

[[tenants]]
id = "victim"
[[tenants.tokens]]
id = "victim"
sha256 = "{victim}"

[[tenants]]
id = "attacker"
anonymous = true
[[tenants.tokens]]
id = "attacker"
sha256 = "{attacker}"
{attacker_quotas}

[[plugins]]
path = "{plugins}/hostile_edge.wasm"
[plugins.grants.keyvalue]
max_bytes = 1048576

[[plugins]]
path = "{plugins}/fixture_hog.wasm"

[[plugins]]
path = "{plugins}/fixture_slow.wasm"
"#;

/// The attacker's tenant quotas beyond the defaults: a rate, when
/// `OPBOX_SOAK_ATTACKER_RATE` asks for one (calls per second), as an
/// operator would set it for a tenant that needs no more.
fn attacker_quotas() -> String {
    match std::env::var("OPBOX_SOAK_ATTACKER_RATE") {
        Ok(rate) => {
            let rate: f64 = rate
                .parse()
                .expect("OPBOX_SOAK_ATTACKER_RATE: calls per second");
            format!("[tenants.quotas]\ncalls_per_second = {rate:?}\n")
        }
        Err(_) => String::new(),
    }
}

fn main() {
    if let Ok(target) = std::env::var("OPBOX_SOAK_ATTACK") {
        return attack(&target);
    }
    let secs: u64 = std::env::var("OPBOX_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A run of chosen attacks (`OPBOX_SOAK_ATTACKS`) is about those only.
    if std::env::var_os("OPBOX_SOAK_ATTACKS").is_none() {
        runtime.block_on(compile_bombs());
    }
    if secs == 0 {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let config = CONFIG
        .replace("{data}", &data.path().display().to_string())
        .replace("{plugins}", env!("OPBOX_PLUGINS_DIR"))
        .replace("{victim}", &opbox::tenants::hash_token_hex(VICTIM))
        .replace("{attacker}", &opbox::tenants::hash_token_hex(ATTACKER))
        .replace("{attacker_quotas}", &attacker_quotas());
    let path = data.path().join("opbox.toml");
    std::fs::write(&path, config).unwrap();
    let (mut host, http, tcp) = start_host(&path);
    println!("# opbox soak: {secs} s of every attack at once, victim at {RATE} calls/s");
    if let Ok(rate) = std::env::var("OPBOX_SOAK_ATTACKER_RATE") {
        println!("\nThe attacker's tenant is held to {rate} calls/s.");
    }
    println!();
    // Warm the caches and the pool first.
    runtime.block_on(victim(&http, Duration::from_secs(3)));
    let idle = rss_kib(host.id());
    let cpu_before = cpu_secs(host.id());
    let alone = runtime.block_on(victim(&http, BASELINE));
    let cpu_alone = cpu_secs(host.id()) - cpu_before;
    // On a small machine the attacking client competes with the host for
    // the same cores; pinned, it shows what the host itself lets through.
    let mut attacker = match std::env::var("OPBOX_SOAK_ATTACKER_CPUS") {
        Ok(cpus) => {
            println!("attacker pinned to CPU(s) {cpus} (taskset)");
            let mut taskset = Command::new("taskset");
            taskset
                .args(["-c", &cpus])
                .arg(std::env::current_exe().unwrap());
            taskset
        }
        Err(_) => Command::new(std::env::current_exe().unwrap()),
    };
    let attacker = attacker
        .env("OPBOX_SOAK_ATTACK", format!("{http} {tcp} {secs}"))
        .env_remove("OPBOX_SOAK_BASELINE")
        .stdout(Stdio::inherit())
        .spawn()
        .unwrap();
    let cpu_before = cpu_secs(host.id());
    let attacked = runtime.block_on(victim(&http, Duration::from_secs(secs)));
    let cpu_attacked = cpu_secs(host.id()) - cpu_before;
    let attacker_exit = wait_child(attacker);
    std::thread::sleep(Duration::from_secs(2));
    let peak = hwm_kib(host.id());
    let after = rss_kib(host.id());
    let _ = host.kill();
    let _ = host.wait();

    println!("victim `echo/echo` over HTTP, {RATE} calls/s:");
    println!("| | calls | failures | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, run) in [("alone", &alone), ("under attack", &attacked)] {
        println!(
            "| {name} | {} | {} | {:.2} ms | {:.2} ms |",
            run.latencies.len() + run.failures,
            run.failures,
            run.percentile(0.50),
            run.percentile(0.99)
        );
    }
    println!(
        "p99 under attack / alone: {:.2}× (goal ≤ 5×)",
        attacked.percentile(0.99) / alone.percentile(0.99)
    );
    println!();
    println!(
        "host CPU: {cpu_alone:.1} s in {} s alone, {cpu_attacked:.1} s in {secs} s under attack",
        BASELINE.as_secs()
    );
    println!(
        "host resident memory: idle {} MiB, peak {} MiB, after {} MiB",
        idle / 1024,
        peak / 1024,
        after / 1024
    );
    println!("attacker exit: {attacker_exit}");
}

/// The operator's token on the compile bombs' hosts.
const OPERATOR: &str = "opbox_soak_operator";

/// Uploads each compile bomb to a host of its own and reports what it cost.
async fn compile_bombs() {
    println!("# compile bombs, each uploaded to a fresh `opbox serve`");
    println!();
    println!("| upload | answer | time to answer | host RSS before | peak | after |");
    println!("|---|---|---|---|---|---|");
    let cases = [
        ("240,000 empty functions (0.92 MiB)", "", 240_000),
        ("90,000 empty functions, default limits", "", 90_000),
        (
            "90,000 empty functions, `compile_memory_bytes` 64 MiB",
            "compile_memory_bytes = 67108864",
            90_000,
        ),
        (
            "90,000 empty functions, `compile_timeout_ms` 1000",
            "compile_timeout_ms = 1000",
            90_000,
        ),
    ];
    for (name, admin, functions) in cases {
        let data = tempfile::tempdir().unwrap();
        let path = data.path().join("opbox.toml");
        let config = format!(
            "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\nexamples = false\n\
             data_dir = {:?}\n[admin]\n{admin}\n\
             [[tenants]]\nid = \"ops\"\n[[tenants.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
            data.path().display().to_string(),
            opbox::tenants::hash_token_hex(OPERATOR)
        );
        std::fs::write(&path, config).unwrap();
        let (mut host, http, _) = start_host(&path);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(host.id());
        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(format!("http://{http}/admin/v1/plugins"))
            .bearer_auth(OPERATOR)
            .body(bomb::many_functions(functions))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (peak, after) = (hwm_kib(host.id()), rss_kib(host.id()));
        let _ = host.kill();
        let _ = host.wait();
        println!(
            "| {name} | {status}: {} | {:.2} s | {} MiB | {} MiB | {} MiB |",
            answer["error"]["message"].as_str().unwrap_or("(none)"),
            took.as_secs_f64(),
            before / 1024,
            peak / 1024,
            after / 1024
        );
    }
    println!();
}

fn wait_child(mut child: Child) -> String {
    match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Starts `opbox serve` with `config`; its HTTP and TCP addresses.
fn start_host(config: &std::path::Path) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opbox"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,opbox=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut http, mut tcp) = (None, None);
    while http.is_none() || tcp.is_none() {
        let line = lines.next().expect("the host starts").unwrap();
        if let Some((_, addr)) = line.split_once("serving on http://") {
            http = Some(addr.trim().to_owned());
        }
        if let Some((_, addr)) = line.split_once("envelopes on tcp://") {
            tcp = Some(addr.trim().to_owned());
        }
    }
    // Keep draining the log so the host never blocks on it.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, http.unwrap(), tcp.unwrap())
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU time the process has used, user and system, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// The victim's calls: latencies in ms of those that succeeded, and how many
/// did not.
struct Run {
    latencies: Vec<f64>,
    failures: usize,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }
}

/// Calls `echo/echo` as the victim, `RATE` times a second for `duration`,
/// each call on its own task (an open loop: a slow answer does not slow the
/// next call down).
async fn victim(http: &str, duration: Duration) -> Run {
    // From an address of its own, as a real victim would be: the attacker's
    // connections count against the attacker's address.
    // Its pool retires an idle connection before the host closes it (after
    // `header_timeout_ms`, 10 s, which the host's answers announce in
    // `Keep-Alive`, a header reqwest does not read): otherwise a call sent
    // into a connection the host is closing fails.
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://{http}/call");
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let end = Instant::now() + duration;
    let mut calls = Vec::new();
    while Instant::now() < end {
        ticks.tick().await;
        let (client, url) = (client.clone(), url.clone());
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let sent = client
                .post(&url)
                .bearer_auth(VICTIM)
                .json(&json!({"operation": "echo/echo", "input": {"n": 1}}))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    let _ = response.bytes().await;
                    Ok(started.elapsed().as_secs_f64() * 1000.0)
                }
                Ok(response) => Err(response.status().to_string()),
                Err(e) => Err(chain(&e)),
            }
        }));
    }
    let mut run = Run {
        latencies: Vec::new(),
        failures: 0,
    };
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for call in calls {
        match call.await {
            Ok(Ok(ms)) => run.latencies.push(ms),
            Ok(Err(reason)) => {
                run.failures += 1;
                *reasons.entry(reason).or_default() += 1;
            }
            Err(_) => run.failures += 1,
        }
    }
    for (reason, count) in reasons {
        println!("victim failure ×{count}: {reason}");
    }
    run
}

/// `error` and its causes, one after the other.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The attacker's process: every attack in a loop until the time is up.
fn attack(target: &str) {
    let mut parts = target.split_whitespace();
    let http = parts.next().unwrap().to_owned();
    let tcp = parts.next().unwrap().to_owned();
    let secs: u64 = parts.next().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let stats = Arc::new(Stats::default());
    runtime.block_on(async {
        let mut tasks = Vec::new();
        // `OPBOX_SOAK_ATTACKS=pings,share` runs only those (to see what each
        // costs); all of them by default.
        let only = std::env::var("OPBOX_SOAK_ATTACKS").ok();
        let mut spawn =
            |name: &str,
             n: usize,
             attack: fn(Target) -> futures::future::BoxFuture<'static, ()>| {
                if only
                    .as_ref()
                    .is_some_and(|only| !only.split(',').any(|o| o == name))
                {
                    return;
                }
                for _ in 0..n {
                    let target = Target {
                        http: http.clone(),
                        tcp: tcp.clone(),
                        end,
                        stats: stats.clone(),
                    };
                    tasks.push(tokio::spawn(until(end, attack(target))));
                }
            };
        spawn("pings", 4, |t| Box::pin(ping_flood(t)));
        spawn("big-frames", 32, |t| {
            Box::pin(unauthenticated_big_frames(t))
        });
        spawn("half-frames", 16, |t| Box::pin(half_sent_frames(t)));
        spawn("slow-headers", 64, |t| Box::pin(slow_headers(t)));
        spawn("stalled", 8, |t| Box::pin(stalled_subscriber(t)));
        spawn("errors", 4, |t| {
            Box::pin(calls(
                t,
                "hostile-edge/error",
                json!({"code": "HUGE", "message_bytes": 12 << 20}),
            ))
        });
        spawn("fan-out", 2, |t| {
            Box::pin(calls(
                t,
                "hostile-edge/fan-out",
                json!({"operation": "services/openapi", "count": 500}),
            ))
        });
        spawn("fatal", 1, |t| {
            Box::pin(calls(t, "hostile-edge/fatal-flood", json!(20_000)))
        });
        spawn("bucket", 1, |t| {
            Box::pin(calls(
                t,
                "hostile-edge/bucket",
                json!({"name_bytes": 256, "keys": 100_000}),
            ))
        });
        spawn("share", 80, |t| {
            Box::pin(calls(t, "fixture-slow/sleep", json!({"ms": 2000})))
        });
        for task in tasks {
            let _ = task.await;
        }
    });
    println!(
        "attacker: {} connections opened, {} refused or closed by the host, {} calls answered, {:.1} s of CPU",
        stats.connections.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
        stats.calls.load(Ordering::Relaxed),
        cpu_secs(std::process::id()),
    );
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    closed: AtomicU64,
    calls: AtomicU64,
}

struct Target {
    http: String,
    tcp: String,
    end: Instant,
    stats: Arc<Stats>,
}

impl Target {
    fn live(&self) -> bool {
        Instant::now() < self.end
    }

    async fn connect(&self, addr: &str) -> Option<TcpStream> {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        match TcpStream::connect(addr).await {
            Ok(stream) => Some(stream),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
        }
    }

    fn closed(&self) {
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
    }
}

async fn until(end: Instant, attack: futures::future::BoxFuture<'static, ()>) {
    let _ = tokio::time::timeout_at(end.into(), attack).await;
}

/// Reads until the host closes the connection.
async fn drain_until_closed(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
}

fn frame(envelope: &Value) -> Vec<u8> {
    let body = envelope.to_string();
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

async fn ping_flood(t: Target) {
    let mut pings = Vec::new();
    while pings.len() < 64 << 10 {
        pings.extend_from_slice(&[0x89, 0x80 | 125, 0, 0, 0, 0]);
        pings.extend_from_slice(&[7; 125]);
    }
    while t.live() {
        let Some(stream) = t.connect(&t.http).await else {
            continue;
        };
        let url = format!("ws://{}/call", t.http);
        let Ok((socket, _)) = tokio_tungstenite::client_async(&url, stream).await else {
            t.closed();
            continue;
        };
        let mut raw = socket.into_inner();
        while raw.write_all(&pings).await.is_ok() {}
        t.closed();
    }
}

async fn unauthenticated_big_frames(t: Target) {
    while t.live() {
        let Some(mut stream) = t.connect(&t.tcp).await else {
            continue;
        };
        let _ = stream.write_all(&(16u32 << 20).to_be_bytes()).await;
        let _ = stream.write_all(&[b' '; 64 << 10]).await;
        drain_until_closed(&mut stream).await;
        t.closed();
    }
}

async fn half_sent_frames(t: Target) {
    let body = vec![b' '; (4 << 20) - 1];
    while t.live() {
        let Some(mut stream) = t.connect(&t.tcp).await else {
            continue;
        };
        let auth = json!({"type": "call.requested", "id": "a",
            "payload": {"operationId": "echo/echo", "auth_token": ATTACKER}});
        let _ = stream.write_all(&frame(&auth)).await;
        let _ = stream.write_all(&(4u32 << 20).to_be_bytes()).await;
        let _ = stream.write_all(&body).await;
        drain_until_closed(&mut stream).await;
        t.closed();
    }
}

async fn slow_headers(t: Target) {
    let request = b"POST /call HTTP/1.1\r\nhost: opbox\r\nx-slow: ";
    while t.live() {
        let Some(mut stream) = t.connect(&t.http).await else {
            continue;
        };
        let _ = stream.write_all(request).await;
        while t.live() && stream.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // A closed connection shows on the next read, not the write.
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
            {
                break;
            }
        }
        t.closed();
    }
}

async fn stalled_subscriber(t: Target) {
    while t.live() {
        let Some(mut stream) = t.connect(&t.tcp).await else {
            continue;
        };
        let subscribe = json!({"type": "call.requested", "id": "s",
            "payload": {"operationId": "fixture-hog/big-stream",
                        "input": {"bytes": 900 << 10, "count": 1_000_000}}});
        let _ = stream.write_all(&frame(&subscribe)).await;
        // Never read; the host gives up on the connection after its write
        // timeout (30 s), then this one starts over.
        tokio::time::sleep(Duration::from_secs(35)).await;
        t.closed();
    }
}

async fn calls(t: Target, operation: &'static str, input: Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/call", t.http);
    while t.live() {
        let sent = client
            .post(&url)
            .bearer_auth(ATTACKER)
            .json(&json!({"operation": operation, "input": input}))
            .send()
            .await;
        match sent {
            Ok(response) => {
                let _ = response.bytes().await;
                t.stats.calls.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
