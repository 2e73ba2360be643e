//! `opbox new` then `opbox dev`, as an author uses them: a plugin from each
//! language's template answers over HTTP, and a saved edit is served
//! without restarting anything.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::languages::example;

/// How long a build may take: the first Rust one compiles the SDK's
/// dependencies for wasm32-wasip2.
pub(crate) const BUILD: Duration = Duration::from_secs(600);

/// A running `opbox dev`, killed when dropped, and what it printed.
pub(crate) struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// What it (and the toolchains it ran) wrote to stderr so far.
    errors: std::sync::Arc<std::sync::Mutex<String>>,
    pub(crate) url: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    /// Runs `opbox dev dir` on any free port, with `env` set.
    pub(crate) fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_opbox"))
            .arg("dev")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            // What many authors have set: a toolchain's errors must still
            // arrive without a backtrace around them.
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let errors = errors.clone();
            move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut chunk) {
                    errors
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }
        });
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut dev = Self {
            child,
            lines,
            seen: Vec::new(),
            errors,
            url: String::new(),
        };
        let serving = dev.wait_for("serving on http://", Duration::from_secs(60));
        dev.url = serving.replace("serving on ", "");
        dev
    }

    /// The next line starting with `prefix`; fails on a failed build.
    pub(crate) fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        loop {
            let line = match self.lines.recv_timeout(within) {
                Ok(line) => line,
                Err(e) => panic!(
                    "no `{prefix}` line ({e}); it printed:\n{}",
                    self.seen.join("\n")
                ),
            };
            self.seen.push(line.clone());
            assert!(
                !line.contains("build failed: ") && !line.contains("load failed: "),
                "{}",
                self.seen.join("\n")
            );
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Waits for a failed build, then for its stderr to name `file`;
    /// what the build wrote to stderr.
    fn wait_for_failure(&mut self, file: &str, within: Duration) -> String {
        let from = self.errors.lock().unwrap().len();
        loop {
            let line = self.lines.recv_timeout(within).unwrap_or_else(|e| {
                panic!(
                    "no failed build ({e}); it printed:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            // A toolchain may leave its last line unfinished on stdout.
            if line.contains("build failed: ") {
                break;
            }
        }
        // The toolchain wrote its errors before it exited, so they are in
        // the pipe already; the reader may lag behind by a moment.
        let started = std::time::Instant::now();
        loop {
            let errors = self.errors.lock().unwrap()[from..].to_owned();
            if errors.contains(file) || started.elapsed() > Duration::from_secs(10) {
                return errors;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The output of `op` for `input`.
    async fn call(&self, op: &str, input: Value) -> Value {
        let body: Value = reqwest::Client::new()
            .post(format!("{}/call", self.url))
            .json(&json!({"operation": op, "input": input}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(body.get("error").is_none(), "{body}");
        body["output"].clone()
    }
}

/// Runs `opbox new name --lang lang` in `parent`.
fn new_plugin(parent: &Path, name: &str, lang: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_opbox"))
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(parent)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("opbox dev"), "{said}");
}

/// Creates `name` in `lang`, serves it with `opbox dev`, calls its `hello`,
/// edits `source` and sees the edit served.
async fn new_then_dev(name: &str, lang: &str, source: &str, env: &[(&str, &str)]) {
    let parent = tempfile::tempdir().unwrap();
    new_plugin(parent.path(), name, lang);
    let dir = parent.path().join(name);
    let mut dev = Dev::start(&dir, env);
    dev.wait_for(&format!("built {name} 0.1.0"), BUILD);
    let hello = format!("{name}/hello");
    let output = dev.call(&hello, json!({"name": "Ada"})).await;
    assert_eq!(output, json!({"message": "Hello, Ada!"}));

    // A save that does not build shows the toolchain's errors, naming
    // the file, without a backtrace around them; the last good build
    // goes on serving.
    let path = dir.join(source);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n)(\n")).unwrap();
    let errors = dev.wait_for_failure(source, BUILD);
    assert!(errors.contains(source), "{errors}");
    assert!(!errors.contains("stack backtrace"), "{errors}");
    let output = dev.call(&hello, json!({"name": "Ada"})).await;
    assert_eq!(output, json!({"message": "Hello, Ada!"}));

    // A save rebuilds and replaces it; the host never stops serving.
    assert!(text.contains("Hello, "), "{text}");
    std::fs::write(&path, text.replace("Hello, ", "Welcome, ")).unwrap();
    loop {
        dev.wait_for(&format!("built {name} 0.1.0"), BUILD);
        let output = dev.call(&hello, json!({"name": "Ada"})).await;
        if output == json!({"message": "Welcome, Ada!"}) {
            break;
        }
    }
    // The bundled examples went on serving beside it.
    let echoed = dev.call("echo/echo", json!({"still": "here"})).await;
    assert_eq!(echoed, json!({"still": "here"}));
}

#[tokio::test]
async fn a_new_rust_plugin_is_served_and_rebuilt_on_save() {
    // Builds of this test share a target directory, so a second run does
    // not compile the SDK's dependencies again.
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dev-plugins");
    new_then_dev(
        "hello-rs",
        "rust",
        "src/lib.rs",
        &[("CARGO_TARGET_DIR", target)],
    )
    .await;
}

#[tokio::test]
async fn a_new_python_plugin_is_served_and_rebuilt_on_save() {
    let built = env!("OPBOX_PYTHON_EXAMPLE");
    if example(built, "componentize-py", "OPBOX_COMPONENTIZE_PY").is_none() {
        return;
    }
    let tool = env!("OPBOX_PYTHON_EXAMPLE_TOOL");
    new_then_dev(
        "hello-py",
        "python",
        "app.py",
        &[("OPBOX_COMPONENTIZE_PY", tool)],
    )
    .await;
}

#[tokio::test]
async fn a_new_javascript_plugin_is_served_and_rebuilt_on_save() {
    let built = env!("OPBOX_JS_EXAMPLE");
    if example(built, "jco", "OPBOX_JCO").is_none() {
        return;
    }
    let tool = env!("OPBOX_JS_EXAMPLE_TOOL");
    new_then_dev("hello-js", "js", "app.js", &[("OPBOX_JCO", tool)]).await;
}
