//! Outside tools the tests check opbox against, installed on first use
//! from their public registries, at pinned versions, under Cargo's test
//! tmpdir: `cargo test` needs nothing but `python3` with `venv`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// One install at a time within this test binary.
static INSTALLING: Mutex<()> = Mutex::new(());

/// The Python of a virtual environment holding `package==version` from
/// PyPI; run its tools as `python -m module`. The environment is built
/// beside its final place and renamed into it, so a run that is cut off
/// leaves no half-installed tool behind.
pub fn python_with(package: &str, version: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tools");
    let home = root.join(format!("{package}-{version}"));
    let python = home.join("bin").join("python");
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if python.exists() {
        return python;
    }
    std::fs::create_dir_all(&root).unwrap();
    let partial = root.join(format!(
        "{package}-{version}.partial-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("python3").arg("-m").arg("venv").arg(&partial));
    run(Command::new(partial.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("{package}=={version}")));
    if std::fs::rename(&partial, &home).is_err() {
        // Another test run installed it meanwhile.
        let _ = std::fs::remove_dir_all(&partial);
    }
    python
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (is python3 installed?): {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
