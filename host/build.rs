//! Builds the plugins workspace (`../plugins`) for `wasm32-wasip2`.
//!
//! The example plugins are embedded into the `opbox` binary, so `opbox serve`
//! has something to serve with nothing built by hand; the test fixtures are
//! left in `OPBOX_PLUGINS_DIR` for the integration tests. One `cargo build`
//! covers both, in a target directory of its own under `OUT_DIR` (sharing the
//! outer one can deadlock on its lock).

#![allow(
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ has a parent");
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("plugins-target");

    rerun_if_changed(&plugins, root);

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the guest build,
        // and clippy's wrapper must not lint the guests here.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET");
    let output = cmd
        .output()
        .expect("failed to run cargo for the plugins workspace");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("may not be installed") || stderr.contains("can't find crate for `core`")
        {
            panic!(
                "building the plugins needs the {TARGET} target; install it with\n\n    \
                 rustup target add {TARGET}\n\n{stderr}"
            );
        }
        panic!("building the plugins workspace failed:\n{stderr}");
    }

    let built = target_dir.join(TARGET).join("release");
    println!("cargo:rustc-env=OPBOX_PLUGINS_DIR={}", built.display());
    build_python_example(root, &plugins, &built);
    build_js_example(root, &plugins, &built);
    for example in ["echo", "ticker", "textkit", "gzip", "calc"] {
        let wasm = built.join(format!("{example}.wasm"));
        assert!(
            wasm.is_file(),
            "the plugins build did not produce {}",
            wasm.display()
        );
    }
}

/// An example plugin in another language, built by its own toolchain.
struct Foreign {
    /// Its directory under `plugins/`.
    dir: &'static str,
    /// Its sources, relative to `dir`: a change to one rebuilds it.
    sources: &'static [&'static str],
    /// What it is built with, for messages.
    toolchain: &'static str,
    /// The variable naming the toolchain's command, if set.
    tool_var: &'static str,
    /// The command otherwise: looked up in `dir` first (an `npm ci` there
    /// puts it in `node_modules/.bin`), then on the PATH.
    tool: &'static str,
    /// The variable telling the tests where the component is (empty when
    /// the toolchain is absent).
    out_var: &'static str,
}

/// Builds the Python example (`plugins/greeter-py`) with componentize-py.
fn build_python_example(root: &Path, plugins: &Path, built: &Path) {
    let example = Foreign {
        dir: "greeter-py",
        sources: &["app.py", "opbox_plugin.py"],
        toolchain: "componentize-py",
        tool_var: "OPBOX_COMPONENTIZE_PY",
        tool: "componentize-py",
        out_var: "OPBOX_PYTHON_EXAMPLE",
    };
    let source = plugins.join(example.dir);
    build_foreign(&example, plugins, built, |tool, wasm| {
        let mut cmd = Command::new(tool);
        cmd.arg("--wit-path")
            .arg(root.join("wit"))
            .args(["--world", "opbox:plugin/plugin-raw", "componentize"])
            .arg("--python-path")
            .arg(&source)
            .arg("app")
            .arg("--output")
            .arg(wasm)
            // No `__pycache__` in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    });
}

/// Builds the JavaScript example (`plugins/greeter-js`) with jco and its
/// QuickJS backend, against `plugin-core` (QuickJS cannot import an async
/// function yet).
fn build_js_example(root: &Path, plugins: &Path, built: &Path) {
    let example = Foreign {
        dir: "greeter-js",
        sources: &["app.js", "opbox.js"],
        toolchain: "jco",
        tool_var: "OPBOX_JCO",
        tool: "jco",
        out_var: "OPBOX_JS_EXAMPLE",
    };
    let source = plugins.join(example.dir);
    build_foreign(&example, plugins, built, |tool, wasm| {
        let mut cmd = Command::new(tool);
        cmd.arg("componentize")
            .arg(source.join("app.js"))
            .arg("--wit")
            .arg(root.join("wit"))
            .args(["--world-name", "plugin-core", "--backend", "quickjs"])
            .arg("--out")
            .arg(wasm)
            .current_dir(&source);
        cmd
    });
}

/// Builds one foreign example when its toolchain is at hand, and tells the
/// tests where it is; without the toolchain it is skipped (the variable is
/// empty), unless the toolchain was named explicitly.
fn build_foreign(
    example: &Foreign,
    plugins: &Path,
    built: &Path,
    command: impl FnOnce(&Path, &Path) -> Command,
) {
    println!("cargo:rerun-if-env-changed={}", example.tool_var);
    let source = plugins.join(example.dir);
    for file in example.sources {
        println!("cargo:rerun-if-changed={}", source.join(file).display());
    }
    let named = env::var_os(example.tool_var).map(PathBuf::from);
    let local = source.join("node_modules").join(".bin").join(example.tool);
    let tool = named.clone().unwrap_or_else(|| {
        if local.is_file() {
            local
        } else {
            PathBuf::from(example.tool)
        }
    });
    let wasm = built.join(format!("{}.wasm", example.dir.replace('-', "_")));
    match command(&tool, &wasm).output() {
        Ok(output) if output.status.success() => {
            println!("cargo:rustc-env={}={}", example.out_var, wasm.display());
            // The tests of `opbox dev` build with the same toolchain.
            println!(
                "cargo:rustc-env={}_TOOL={}",
                example.out_var,
                tool.display()
            );
        }
        Ok(output) => panic!(
            "building plugins/{} with {} failed:\n{}{}",
            example.dir,
            tool.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) if named.is_some() => panic!(
            "cannot run {}={} ({}): {e}",
            example.tool_var,
            tool.display(),
            example.toolchain
        ),
        Err(_) => {
            println!("cargo:rustc-env={}=", example.out_var);
            println!("cargo:rustc-env={}_TOOL=", example.out_var);
        }
    }
}

/// Reruns when a plugin, the SDK or the WIT changes, but not when a build
/// output under `plugins/target` does.
fn rerun_if_changed(plugins: &Path, root: &Path) {
    for path in [
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        root.join("guest-sdk"),
        root.join("wit"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let entries = std::fs::read_dir(plugins).expect("plugins/ is readable");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.join("Cargo.toml").is_file() {
            println!(
                "cargo:rerun-if-changed={}",
                path.join("Cargo.toml").display()
            );
            println!("cargo:rerun-if-changed={}", path.join("src").display());
        }
    }
}
