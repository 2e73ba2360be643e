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
    for example in ["echo", "ticker", "textkit"] {
        let wasm = built.join(format!("{example}.wasm"));
        assert!(
            wasm.is_file(),
            "the plugins build did not produce {}",
            wasm.display()
        );
    }
}

/// Builds the Python example (`plugins/greeter-py`) with componentize-py
/// when it is at hand: `OPBOX_COMPONENTIZE_PY` names it, or else
/// `componentize-py` on the PATH. Without it the example is skipped, and
/// `OPBOX_PYTHON_EXAMPLE` is empty for the tests to see.
fn build_python_example(root: &Path, plugins: &Path, built: &Path) {
    println!("cargo:rerun-if-env-changed=OPBOX_COMPONENTIZE_PY");
    let source = plugins.join("greeter-py");
    for file in ["app.py", "opbox_plugin.py"] {
        println!("cargo:rerun-if-changed={}", source.join(file).display());
    }
    let named = env::var_os("OPBOX_COMPONENTIZE_PY");
    let tool = named.clone().unwrap_or_else(|| "componentize-py".into());
    let wasm = built.join("greeter_py.wasm");
    let output = Command::new(&tool)
        .arg("--wit-path")
        .arg(root.join("wit"))
        .args(["--world", "opbox:plugin/plugin", "componentize"])
        .arg("--python-path")
        .arg(&source)
        .arg("app")
        .arg("--output")
        .arg(&wasm)
        // No `__pycache__` in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output();
    match output {
        Ok(output) if output.status.success() => {
            println!("cargo:rustc-env=OPBOX_PYTHON_EXAMPLE={}", wasm.display());
        }
        Ok(output) => panic!(
            "building the Python example with {} failed:\n{}",
            tool.to_string_lossy(),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) if named.is_some() => panic!(
            "cannot run OPBOX_COMPONENTIZE_PY={}: {e}",
            tool.to_string_lossy()
        ),
        Err(_) => println!("cargo:rustc-env=OPBOX_PYTHON_EXAMPLE="),
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
