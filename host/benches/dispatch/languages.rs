//! `languages`: the same plugin in Rust, Python and JavaScript, side by
//! side: `opbox new`'s template in each (a `hello` query and a `count`
//! subscription), built from source with each toolchain.
//!
//! Per language: the build (Rust from a clean target directory, and again
//! after a one-line edit), the component's size, its cold compile (no
//! cache) with Cranelift and with Winch (as `opbox dev` compiles), the
//! first call and the steady per-call latency of `hello`
//! through the dispatcher (a fresh instance per call, then with the
//! instances reused as `[plugins.reuse]` allows), and the per-item cost of
//! a 10,000-item `count`. Python and JavaScript need their toolchains
//! where `cargo build` found them (see `docs/plugins.md`); a language whose
//! toolchain is missing is reported as skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use opbox::plugins::Authority;
use opbox::runtime::{LoadOptions, Runtime, RuntimeConfig};
use opbox::{CallRequest, Host};
use serde_json::json;

use super::common::*;

/// Items of the `count` subscription.
const ITEMS: u32 = 10_000;

/// Steady-state calls of `hello`.
const HELLO_CALLS: usize = 300;

struct Lang {
    /// `opbox new --lang`.
    lang: &'static str,
    /// The toolchain's command, as `cargo build` found it (empty: absent).
    tool: &'static str,
}

const LANGS: [Lang; 3] = [
    Lang {
        lang: "rust",
        tool: "cargo",
    },
    Lang {
        lang: "python",
        tool: env!("OPBOX_PYTHON_EXAMPLE_TOOL"),
    },
    Lang {
        lang: "js",
        tool: env!("OPBOX_JS_EXAMPLE_TOOL"),
    },
];

pub(crate) async fn bench_languages(host: &Host) {
    println!("## One plugin in three languages\n");
    println!(
        "`opbox new`'s template (`hello`, `count`) built and run per language; \
         calls through the dispatcher, a fresh instance per call; memory reset: {}, \
         keep resident: {} bytes.\n",
        std::env::var("OPBOX_BENCH_MEMORY_RESET").unwrap_or("dirty".into()),
        std::env::var("OPBOX_BENCH_KEEP_RESIDENT").unwrap_or("default".into()),
    );
    println!(
        "| language | build | rebuild after an edit | size | cold compile | with Winch (`opbox dev`) | first call | \
         `hello` median | `hello` p99 | `hello` reused, median | reused, p99 | `count` per item |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let dir = tempfile::tempdir().expect("a temporary directory");
    for lang in &LANGS {
        if lang.tool.is_empty() {
            println!(
                "| {} | skipped: toolchain not installed | | | | | | | | | | |",
                lang.lang
            );
            continue;
        }
        let name = format!("bench-{}", lang.lang);
        let plugin_dir = new_plugin(dir.path(), &name, lang.lang);
        let (wasm, build, rebuild) = build_twice(&plugin_dir, lang);
        let cold = cold_compile(&wasm, false).await;
        let quick = cold_compile(&wasm, true).await;
        // The bench host's store outlives a run: a plugin from the last
        // one goes first (not there: nothing to do).
        let _ = host.plugins().remove(None, &name).await;
        host.plugins()
            .install(Authority::Operator, None, None, &wasm, json!({}))
            .await
            .expect("the plugin installs");
        let hello = || CallRequest::new(format!("{name}/hello"), json!({"name": "Ada"}));
        let dispatcher = host.dispatcher();
        let start = Instant::now();
        dispatcher.call(hello()).await.expect("hello answers");
        let first = start.elapsed();
        let calls = async || {
            let mut samples = Vec::with_capacity(HELLO_CALLS);
            for _ in 0..HELLO_CALLS {
                let start = Instant::now();
                dispatcher.call(hello()).await.expect("hello answers");
                samples.push(start.elapsed());
            }
            Stats::of(samples)
        };
        let fresh = calls().await;
        let per_item = count(host, &name).await;
        // The same plugin, its instances reused across calls, as an
        // operator may allow (`[plugins.reuse]`).
        let reuse = json!({ "reuse": { "max_calls": 100_000 } });
        host.plugins()
            .replace(Authority::Operator, None, &name, &wasm, reuse, true)
            .await
            .expect("the plugin is replaced");
        dispatcher.call(hello()).await.expect("hello answers");
        let reused = calls().await;
        println!(
            "| {} | {} | {} | {:.2} MB | {} | {} | {} | {} | {} | {} | {} | {} |",
            lang.lang,
            secs(build),
            secs(rebuild),
            wasm.len() as f64 / 1e6,
            ms(cold),
            ms(quick),
            ms(first),
            us(fresh.median),
            us(fresh.p99),
            us(reused.median),
            us(reused.p99),
            us(per_item),
        );
    }
    println!();
}

/// `opbox new name --lang lang` in `parent`; the plugin's directory.
fn new_plugin(parent: &Path, name: &str, lang: &str) -> PathBuf {
    let status = Command::new(env!("CARGO_BIN_EXE_opbox"))
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(parent)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("opbox runs");
    assert!(status.success(), "opbox new failed");
    parent.join(name)
}

/// Builds the plugin, edits its source and builds it again: the first
/// build's component and both build times.
fn build_twice(dir: &Path, lang: &Lang) -> (Vec<u8>, Duration, Duration) {
    let source = match lang.lang {
        "rust" => "src/lib.rs",
        "python" => "app.py",
        _ => "app.js",
    };
    let (wasm, first) = build(dir, lang);
    let path = dir.join(source);
    let text = std::fs::read_to_string(&path).expect("the template's source");
    std::fs::write(&path, text.replace("Hello, ", "Hi, ")).expect("an edit");
    let (_, second) = build(dir, lang);
    (wasm, first, second)
}

/// One build with the language's toolchain: the component and its time.
fn build(dir: &Path, lang: &Lang) -> (Vec<u8>, Duration) {
    let out = dir.join("plugin.wasm");
    let mut cmd = match lang.lang {
        "rust" => {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
                // A target directory of its own: the first build is clean.
                .env("CARGO_TARGET_DIR", dir.join("target"));
            cmd
        }
        "python" => {
            let mut cmd = Command::new(lang.tool);
            cmd.args([
                "-d",
                "wit",
                "-w",
                "opbox:plugin/plugin",
                "componentize",
                "app",
            ])
            .arg("-o")
            .arg(&out)
            .env("PYTHONDONTWRITEBYTECODE", "1");
            cmd
        }
        _ => {
            let mut cmd = Command::new(lang.tool);
            cmd.args(["componentize", "app.js", "--wit", "wit"])
                .args(["--world-name", "plugin-core", "--backend", "quickjs"])
                .arg("--out")
                .arg(&out);
            cmd
        }
    };
    let start = Instant::now();
    let output = cmd.current_dir(dir).output().expect("the toolchain runs");
    let took = start.elapsed();
    assert!(
        output.status.success(),
        "building the {} template failed:\n{}",
        lang.lang,
        String::from_utf8_lossy(&output.stderr)
    );
    let built = if lang.lang == "rust" {
        dir.join("target/wasm32-wasip2/release/bench_rust.wasm")
    } else {
        out
    };
    (std::fs::read(&built).expect("the component"), took)
}

/// Compiling the component with nothing cached.
async fn cold_compile(wasm: &[u8], quick: bool) -> Duration {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        cache_dir: None,
        quick_compile: quick,
        ..RuntimeConfig::default()
    })
    .expect("a runtime");
    let start = Instant::now();
    runtime
        .load(wasm, LoadOptions::default())
        .await
        .expect("the plugin loads");
    start.elapsed()
}

/// Per-item time of `count` streaming [`ITEMS`] items (median of 3).
async fn count(host: &Host, name: &str) -> Duration {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let request = CallRequest::new(format!("{name}/count"), json!({ "to": ITEMS }));
        let start = Instant::now();
        let mut items = host
            .dispatcher()
            .subscribe(request)
            .await
            .expect("count starts");
        let mut n = 0;
        while let Some(item) = items.next().await {
            item.expect("an item");
            n += 1;
        }
        assert_eq!(n, ITEMS);
        runs.push(start.elapsed() / ITEMS);
    }
    runs.sort();
    runs[1]
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
