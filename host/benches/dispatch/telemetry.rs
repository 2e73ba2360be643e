//! `telemetry`: what metrics and trace export cost a call. `POST /call`
//! `echo/echo` under `wrk` against four `opbox serve` processes built from
//! this checkout: metrics off, metrics on (the default), and metrics on
//! with spans exported over OTLP to a collector in this process (every
//! trace, and one in ten). Rounds alternate between them so all see the
//! same machine.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::http::{WRK_SECONDS, echo_script, wrk};

const ROUNDS: usize = 5;

/// One `opbox serve`, stopped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on loopback.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// Starts `opbox serve` with `telemetry` as its `[telemetry]` section and
/// waits until it answers.
fn start(telemetry: &str, cache: &std::path::Path) -> Server {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = free_addr();
    let config = format!(
        "listen = \"{addr}\"\ncache_dir = {cache:?}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [telemetry]\n{telemetry}"
    );
    let path = dir.path().join("opbox.toml");
    std::fs::write(&path, config).expect("write the config");
    let child = Command::new(env!("CARGO_BIN_EXE_opbox"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        // Only warnings: a log line per call would be what is measured.
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("opbox serve starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "opbox serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        addr,
        _dir: dir,
    }
}

/// An OTLP/HTTP collector that takes every export and counts its bytes.
async fn collector() -> (SocketAddr, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::body::Bytes| async move {
                received.fetch_add(body.len() as u64, Ordering::Relaxed);
                Vec::<u8>::new()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) async fn bench_telemetry() {
    println!(
        "## Telemetry: `POST /call` `echo/echo` under `wrk -t2 -c32 -d{WRK_SECONDS}s`, {ROUNDS} rounds\n"
    );
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("skipped: `wrk` is not on PATH (Debian: `apt-get install wrk`)\n");
        return;
    }
    let (otlp, exported) = collector().await;
    let cache = tempfile::tempdir().expect("a temporary directory");
    let setups = [
        ("metrics off", "metrics = false\n".to_owned()),
        ("metrics on (default)", String::new()),
        (
            "metrics on, every trace exported",
            format!("otlp_endpoint = \"http://{otlp}\"\n"),
        ),
        (
            "metrics on, 1 trace in 10 exported",
            format!("otlp_endpoint = \"http://{otlp}\"\nsample_ratio = 0.1\n"),
        ),
    ];
    let servers: Vec<Server> = setups
        .iter()
        .map(|(_, telemetry)| start(telemetry, cache.path()))
        .collect();
    let script = echo_script("opbox-bench-telemetry.lua");
    let mut rps = vec![Vec::new(); servers.len()];
    let mut p99 = vec![Vec::new(); servers.len()];
    for round in 0..ROUNDS {
        // Each round starts with a different host, so none always runs
        // right after the same neighbour.
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            let result = tokio::task::block_in_place(|| wrk(servers[i].addr, &script));
            rps[i].push(result.rps);
            p99[i].push(result.p99);
        }
    }
    println!("| host | requests/s (median) | each round | p99 each round |\n|---|---|---|---|");
    let medians: Vec<f64> = rps.iter().map(|r| median(&mut r.clone())).collect();
    for (i, (name, _)) in setups.iter().enumerate() {
        let rounds: Vec<String> = rps[i].iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {name} | {:.0} | {} | {} |",
            medians[i],
            rounds.join(", "),
            p99[i].join(", ")
        );
    }
    let cost = |of: usize, against: usize| 100.0 * (1.0 - medians[of] / medians[against]);
    println!(
        "\nmetrics cost {:.1}% of throughput (goal: at most 3%); exporting every trace costs \
         {:.1}% more, one in ten {:.1}% (goal: at most 10%); {} KiB of spans exported\n",
        cost(1, 0),
        cost(2, 1),
        cost(3, 1),
        exported.load(Ordering::Relaxed) / 1024
    );
}
