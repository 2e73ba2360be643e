//! Shared by every scenario: the host under test, clients, latency statistics and the report's tables.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use opbox::call::{AccessControl, OpType, OperationSpec, Visibility};
use opbox::config::PluginConfig;
use opbox::dispatch::{Handler, Operation};
use opbox::registry::Owner;
use opbox::runtime::ReuseConfig;
use opbox::{Host, HostConfig};
use serde_json::{Value, json};

pub(crate) const CALLS: usize = 20_000;

pub(crate) const ITEMS: u64 = 100_000;

pub(crate) const LATENCY_CALLS: usize = 3_000;

/// The benchmark host's data directory; a bench starting a host of its own
/// gives it a directory below this one (one host per directory).
pub(crate) fn data_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("opbox-bench")
}

pub(crate) async fn start_host() -> Host {
    let mut config = HostConfig {
        data_dir: data_dir(),
        // `hostile-loop` for the noisy neighbour, `fixture-hog` for an
        // iterator subscription, `echo` again with its instances reused,
        // and the components `wasmtime serve` runs in the HTTP ladder,
        // mounted at `/http/hello-http` and (WASIp3, fresh and reused)
        // `/http/hello-p3` and `/http/hello-p3-reused`.
        plugins: [
            ("hostile-loop", None, None),
            ("fixture-hog", None, None),
            ("echo", Some("echo-reused"), Some(ReuseConfig::default())),
            ("wasi-http-hello", Some("hello-http"), None),
            ("wasi-http-hello-p3", Some("hello-p3"), None),
            (
                "wasi-http-hello-p3",
                Some("hello-p3-reused"),
                Some(ReuseConfig::default()),
            ),
        ]
        .into_iter()
        .map(|(file, name, reuse)| PluginConfig {
            path: opbox::bundled::built_plugin(file),
            reuse,
            name: name.map(Into::into),
            tenant: None,
            grants: Default::default(),
            limits: Default::default(),
        })
        .collect(),
        ..HostConfig::demo()
    };
    // To see what reserving a worker for short calls buys, rerun `noisy`
    // with `OPBOX_BENCH_CPU_LANES=2` (every worker may run a spinning guest).
    config.limits.cpu_lanes = std::env::var("OPBOX_BENCH_CPU_LANES")
        .ok()
        .map(|lanes| lanes.parse().expect("OPBOX_BENCH_CPU_LANES is a number"));
    // To compare how pooled memories are reset (`languages`), rerun with
    // `OPBOX_BENCH_MEMORY_RESET=copy` and `OPBOX_BENCH_KEEP_RESIDENT=BYTES`.
    if let Ok(reset) = std::env::var("OPBOX_BENCH_MEMORY_RESET") {
        config.limits.memory_reset = serde_json::from_value(json!(reset))
            .expect("OPBOX_BENCH_MEMORY_RESET is dirty or copy");
    }
    if let Ok(bytes) = std::env::var("OPBOX_BENCH_KEEP_RESIDENT") {
        config.limits.keep_resident_bytes = bytes
            .parse()
            .expect("OPBOX_BENCH_KEEP_RESIDENT is a number of bytes");
    }
    let host = Host::start(config).await.expect("the host starts");
    let echo = native_echo();
    host.dispatcher()
        .registry()
        .insert_namespace(&Owner::Shared, "bench", vec![echo])
        .expect("the bench namespace is free");
    host
}

/// `bench/echo`: a native echo, the dispatcher's floor.
pub(crate) fn native_echo() -> Operation {
    Operation::compile(
        OperationSpec {
            name: "bench/echo".into(),
            op_type: OpType::Query,
            visibility: Visibility::External,
            description: "Native echo: the dispatcher's floor.".into(),
            input_schema: json!(true),
            output_schema: json!(true),
            access_control: AccessControl::default(),
        },
        Handler::NativeOnce(Arc::new(|_, input: Value| async move { Ok(input) }.boxed())),
    )
    .expect("a valid native op")
}

/// A single-threaded runtime for a client thread.
pub(crate) fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime")
}

/// Sequential `echo/echo` calls over one keep-alive connection, from a
/// thread and runtime of their own so the client never waits on the host's
/// workers.
pub(crate) fn echo_latencies(addr: SocketAddr) -> Stats {
    echo_latencies_as(addr, None, LATENCY_CALLS)
}

/// [`echo_latencies`] with a bearer token.
pub(crate) fn echo_latencies_as(addr: SocketAddr, token: Option<&str>, calls: usize) -> Stats {
    client_runtime().block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/call");
        let body = json!({"operation": "echo/echo", "input": {"x": 1}});
        let mut samples = Vec::with_capacity(calls);
        for n in 0..calls + 300 {
            let start = Instant::now();
            let mut request = client.post(&url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("a response");
            assert!(response.status().is_success(), "echo failed");
            response.bytes().await.expect("a body");
            if n >= 300 {
                samples.push(start.elapsed());
            }
        }
        Stats::of(samples)
    })
}

pub(crate) async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Serves `host` on its own listener (`Host::serve`: admission, timeouts,
/// the guarded socket), as `opbox serve` does, on a loopback port.
pub(crate) async fn serve_host(host: &Host) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let host = host.clone();
    tokio::spawn(async move { host.serve(listener, std::future::pending()).await });
    addr
}

/// The middle of `values` (the upper one of an even count), sorting them.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) struct Stats {
    pub(crate) median: Duration,
    pub(crate) p99: Duration,
    pub(crate) mean: Duration,
    pub(crate) max: Duration,
}

impl Stats {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let n = samples.len();
        Self {
            median: samples[n / 2],
            p99: samples[(n * 99 / 100).min(n - 1)],
            mean: samples.iter().sum::<Duration>() / u32::try_from(n).expect("fits"),
            max: samples[n - 1],
        }
    }
}

/// A table of p50, p99 and max, one row per named measurement.
pub(crate) fn latency_table(what: &str, rows: &[(&str, &Stats)]) {
    println!("| {what} | p50 | p99 | max |\n|---|---|---|---|");
    for (name, stats) in rows {
        println!(
            "| {name} | {} | {} | {} |",
            us(stats.median),
            us(stats.p99),
            us(stats.max)
        );
    }
}

pub(crate) fn ns(d: Duration) -> String {
    format!("{} ns", d.as_nanos())
}

pub(crate) fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

pub(crate) fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The gateway's routes for `host`, to serve with axum as the bare handler
/// is served.
pub(crate) fn router(host: &Host) -> axum::Router {
    opbox::gateway::router(
        host.dispatcher().clone(),
        host.config().gateway(),
        tokio_util::task::TaskTracker::new(),
    )
}

/// One `opbox serve`, stopped when dropped.
pub(crate) struct ServeProcess {
    pub(crate) child: std::process::Child,
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `opbox serve` on a free loopback port, anonymous callers taken,
/// with `top` among the top-level settings and `tables` after the rest,
/// and waits until it answers.
pub(crate) fn serve_process(top: &str, tables: &str, cache: &std::path::Path) -> ServeProcess {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = format!(
        "listen = \"{addr}\"\ncache_dir = {cache:?}\n{top}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n{tables}"
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
    ServeProcess {
        child,
        addr,
        _dir: dir,
    }
}

/// The CPU time `pid` has used so far, all its threads, user and system.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command's closing parenthesis; utime and stime are
    // the 12th and 13th of them, in clock ticks.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_micros(ticks * 1_000_000 / clock_ticks())
}

/// Clock ticks per second, as `getconf` tells them.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("CLK_TCK is a number")
    })
}
