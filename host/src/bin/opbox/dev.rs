//! `opbox dev [DIR]`: build a plugin, serve it, and rebuild and replace it
//! on every save.
//!
//! The plugin runs in a host of its own (the bundled examples beside it,
//! its store in `DIR/.opbox`), installed and then replaced through the same
//! lifecycle as the admin API's, forced past the compatibility gate: calls
//! running on the old build finish on it, new ones reach the new build, and
//! a build that fails leaves the last good one serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use notify::{EventKind, RecursiveMode, Watcher};
use opbox::plugins::Authority;
use opbox::runtime::Plugin;
use opbox::{Host, HostConfig};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::new::Lang;

/// How long after a change the build waits for more: an editor's save is
/// often several writes.
const SETTLE: Duration = Duration::from_millis(200);

/// Directories that hold builds and tools, never sources.
const NOT_SOURCES: [&str; 5] = ["target", ".opbox", "node_modules", "__pycache__", ".git"];

/// Runs the dev loop for the plugin in `dir` until Ctrl-C.
pub async fn dev(dir: PathBuf, listen: SocketAddr) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let lang = Lang::of(&dir)?;
    let signals = crate::serve::Signals::new()?;
    let mut config = HostConfig::demo();
    config.data_dir = dir.join(".opbox");
    config.listen = listen;
    config.tcp_listen = None;
    // A save waits for the compile: Winch takes about a quarter of
    // Cranelift's time (a Python plugin: 1 s instead of 4). Its x86-64
    // backend is the complete one; elsewhere, Cranelift.
    config.quick_compile = cfg!(target_arch = "x86_64");
    let host = Host::start(config).await?;
    let (listener, local) = crate::serve::bind(listen).await?;
    tokio::spawn({
        let host = host.clone();
        async move { host.serve(listener, std::future::pending()).await }
    });
    println!("serving on http://{local}");

    let (changed, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let edits = matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        );
        if edits && event.paths.iter().any(|path| is_source(path, lang)) {
            let _ = changed.send(());
        }
    })
    .context("cannot watch for changes")?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;

    // A plugin a previous session installed is the one to replace.
    let mut serving = host
        .plugins()
        .all()
        .into_iter()
        .find(|listed| !listed.fixed)
        .map(|listed| listed.plugin.name().to_owned());
    let stop = signals.stop(|| {});
    tokio::pin!(stop);
    loop {
        if let Some(name) = rebuild(&host, &dir, lang, serving.as_deref()).await {
            serving = Some(name);
        }
        println!("watching {} for changes", dir.display());
        tokio::select! {
            _ = &mut stop => break,
            _ = changes.recv() => {}
        }
        while let Ok(Some(())) = tokio::time::timeout(SETTLE, changes.recv()).await {}
    }
    host.dispatcher().drain();
    Ok(())
}

/// Whether a change at `path` is to the sources of a plugin in `lang`:
/// the files its build reads, by their extension, outside the build's own
/// directories. Anything else (a log the author redirects into the
/// directory, an editor's swap file, notes) starts no build.
fn is_source(path: &Path, lang: Lang) -> bool {
    let in_build_dir = path.components().any(|part| {
        NOT_SOURCES
            .iter()
            .any(|dir| part.as_os_str() == std::ffi::OsStr::new(dir))
    });
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let read = match lang {
        Lang::Rust => matches!(extension, "rs" | "wit") || name == "Cargo.toml",
        Lang::Python => matches!(extension, "py" | "wit"),
        Lang::Js => matches!(extension, "js" | "mjs" | "wit") || name == "package.json",
    };
    read && !in_build_dir
}

/// Builds the plugin and installs (or replaces) it; says how it went.
/// The name it serves under, when it does.
async fn rebuild(host: &Host, dir: &Path, lang: Lang, serving: Option<&str>) -> Option<String> {
    let started = Instant::now();
    println!("building with {}…", lang.toolchain());
    let wasm = match build(dir, lang).await {
        Ok(wasm) => wasm,
        Err(e) => {
            println!("build failed: {}", crate::one_line(&e));
            if serving.is_some() {
                println!("the last good build goes on serving");
            }
            return None;
        }
    };
    let built = started.elapsed();
    let plugins = host.plugins();
    let loaded = match serving {
        Some(name) => {
            plugins
                .replace(Authority::Operator, None, name, &wasm, json!({}), true)
                .await
        }
        None => {
            plugins
                .install(Authority::Operator, None, None, &wasm, json!({}))
                .await
        }
    };
    match loaded {
        Ok(plugin) => {
            report(&plugin, wasm.len(), built, started.elapsed() - built);
            Some(plugin.name().to_owned())
        }
        Err(e) => {
            println!("load failed: {e}");
            None
        }
    }
}

/// The build's result and the operations it serves.
fn report(plugin: &Plugin, bytes: usize, built: Duration, loaded: Duration) {
    println!(
        "built {} {} ({:.1} MB) in {:.1} s, loaded in {:.1} s",
        plugin.name(),
        plugin.version(),
        bytes as f64 / 1e6,
        built.as_secs_f64(),
        loaded.as_secs_f64()
    );
    for op in plugin.operations() {
        let kind = serde_json::to_value(op.spec.op_type).unwrap_or_default();
        println!(
            "  {:<12} {:<24} {}",
            kind.as_str().unwrap_or_default(),
            op.spec.name,
            op.spec.description
        );
    }
}

/// The world a Python plugin in `dir` targets: `plugin-raw` when its
/// `app.py` exports `Raw` (it has byte-stream operations), else `plugin`.
fn python_world(dir: &Path) -> &'static str {
    let app = std::fs::read_to_string(dir.join("app.py")).unwrap_or_default();
    let exports_raw = app
        .lines()
        .any(|line| line.starts_with("Raw =") || line.starts_with("Raw="));
    if exports_raw {
        "opbox:plugin/plugin-raw"
    } else {
        "opbox:plugin/plugin"
    }
}

/// Builds the plugin in `dir` with its language's toolchain; the
/// component's bytes. The toolchain's own messages go to stderr.
async fn build(dir: &Path, lang: Lang) -> Result<Vec<u8>> {
    let out = dir.join(".opbox").join("build");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let wasm = out.join("plugin.wasm");
    let path = match lang {
        Lang::Rust => build_rust(dir).await?,
        Lang::Python => {
            let mut cmd = Command::new(tool(dir, "OPBOX_COMPONENTIZE_PY", "componentize-py"));
            cmd.args(["-d", "wit", "-w", python_world(dir), "componentize", "app"])
                .arg("-o")
                .arg(&wasm)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                // componentize-py is Rust: with a backtrace asked for, a
                // Python error would arrive inside 60 lines of it.
                .env_remove("RUST_BACKTRACE");
            run(cmd, dir, "componentize-py").await?;
            wasm
        }
        Lang::Js => {
            let mut cmd = Command::new(tool(dir, "OPBOX_JCO", "jco"));
            cmd.args(["componentize", "app.js", "--wit", "wit"])
                .args(["--world-name", "plugin-core", "--backend", "quickjs"])
                .arg("--out")
                .arg(&wasm);
            run(cmd, dir, "jco").await?;
            wasm
        }
    };
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// The command of a toolchain: named by `var`, or installed in `dir` by
/// npm, or on the PATH.
fn tool(dir: &Path, var: &str, name: &str) -> PathBuf {
    if let Some(named) = std::env::var_os(var) {
        return named.into();
    }
    let local = dir.join("node_modules").join(".bin").join(name);
    if local.is_file() { local } else { name.into() }
}

/// Runs a build command in `dir`, its output going to the terminal.
async fn run(mut cmd: Command, dir: &Path, what: &str) -> Result<()> {
    let status = cmd
        .current_dir(dir)
        .stdout(std::process::Stdio::inherit())
        .status()
        .await
        .with_context(|| format!("cannot run {what}: is it installed?"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// `cargo build` for wasm32-wasip2; the component it wrote, as its JSON
/// messages name it.
async fn build_rust(dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Spawned rather than run with `output()`, which would capture stderr:
    // cargo's progress and the compiler's errors go to the terminal.
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("cannot run cargo")?
        .wait_with_output()
        .await
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!("cargo build failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .flat_map(|message| {
            let files = message["filenames"].as_array().cloned().unwrap_or_default();
            files
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .rfind(|file| file.extension().is_some_and(|ext| ext == "wasm"))
        .context("cargo built no .wasm: is the crate a `cdylib`?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_plugin_exporting_raw_is_built_for_plugin_raw() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app.py");
        std::fs::write(&app, "Handler = plugin.handler()\n").unwrap();
        assert_eq!(python_world(dir.path()), "opbox:plugin/plugin");
        std::fs::write(
            &app,
            "Handler = plugin.handler()\nRaw = plugin.raw_handler()\n",
        )
        .unwrap();
        assert_eq!(python_world(dir.path()), "opbox:plugin/plugin-raw");
        // A mention in a comment or a string is not an export.
        std::fs::write(&app, "# Raw = plugin.raw_handler()\n").unwrap();
        assert_eq!(python_world(dir.path()), "opbox:plugin/plugin");
    }

    #[test]
    fn only_sources_start_a_build() {
        let cases = [
            (Lang::Rust, "/p/src/lib.rs", true),
            (Lang::Rust, "/p/wit/plugin.wit", true),
            (Lang::Rust, "/p/Cargo.toml", true),
            (Lang::Rust, "/p/build.rs", true),
            (Lang::Python, "/p/app.py", true),
            (Lang::Js, "/p/app.js", true),
            (Lang::Js, "/p/package.json", true),
            (Lang::Rust, "/p/target/release/x.rlib", false),
            (Lang::Rust, "/p/target/release/build/x/out/y.rs", false),
            (Lang::Rust, "/p/Cargo.lock", false),
            (Lang::Rust, "/p/greeter.wasm", false),
            (Lang::Rust, "/p/dev.log", false),
            (Lang::Rust, "/p/notes.txt", false),
            (Lang::Rust, "/p/src/.lib.rs.swp", false),
            (Lang::Rust, "/p/.opbox/build/plugin.wasm", false),
            (Lang::Python, "/p/__pycache__/app.py", false),
            (Lang::Python, "/p/out.txt", false),
            (Lang::Js, "/p/node_modules/jco/x.js", false),
            (Lang::Js, "/p/package-lock.json", false),
        ];
        for (lang, path, source) in cases {
            assert_eq!(is_source(Path::new(path), lang), source, "{path}");
        }
    }
}
