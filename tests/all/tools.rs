//! Outside tools the tests check opbox against, installed on first use
//! from their public registries, at pinned versions, under Cargo's test
//! tmpdir: `cargo test` needs nothing but `python3` with `venv`, and `npm`
//! (which `.ci/run` installs) for the JavaScript ones.

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
        scripts_point_at(&home);
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
    scripts_point_at(&home);
    python
}

/// Makes the scripts of the virtual environment at `home` (`pip`, a
/// package's commands) name its interpreter where it is now: pip wrote
/// the place it was built in into their first line, before the rename.
fn scripts_point_at(home: &std::path::Path) {
    let python = home.join("bin").join("python");
    let Ok(entries) = std::fs::read_dir(home.join("bin")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // a binary, or the interpreter's link
        };
        let Some((first, rest)) = text.split_once('\n') else {
            continue;
        };
        if first.starts_with("#!") && first.contains(".partial-") {
            std::fs::write(&path, format!("#!{}\n{rest}", python.display())).unwrap();
        }
    }
}

/// A directory where `npm` installed `package@version` from npm's
/// registry: a script copied into it imports the package. Built beside its
/// final place and renamed into it, as [`python_with`] is.
pub fn node_with(package: &str, version: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tools");
    let name = format!("npm-{}-{version}", package.replace(['@', '/'], "_"));
    let home = root.join(&name);
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if home.join("node_modules").join(package).exists() {
        return home;
    }
    std::fs::create_dir_all(&root).unwrap();
    let partial = root.join(format!("{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    // An ES module package, so that scripts copied in may `import`.
    std::fs::write(
        partial.join("package.json"),
        r#"{"private": true, "type": "module"}"#,
    )
    .unwrap();
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--save-exact",
            "--prefix",
        ])
        .arg(&partial)
        .arg(format!("{package}@{version}")));
    if std::fs::rename(&partial, &home).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    home
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (are python3 and npm installed?): {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
