//! `[limits] memory_reset`: how a pooled memory is made clean between
//! calls, seen in the page faults a Python plugin's fresh instances cost
//! the host process.

use serde_json::json;

use crate::languages::example;
use crate::util::Server;

/// Minor page faults of process `pid` so far (`/proc/PID/stat`, field 10).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name, in parentheses, may hold spaces: count after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Page faults per call of `greeter-py/hello`, each on a fresh instance,
/// on a host whose `[limits]` are `limits`.
async fn faults_per_call(python: &std::path::Path, limits: &str) -> u64 {
    const CALLS: u64 = 20;
    let server = Server::start(&format!(
        "examples = false\nlisten = \"127.0.0.1:0\"\n[limits]\n{limits}\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n\
         [[plugins]]\npath = {python:?}\nname = \"greeter-py\"\n"
    ));
    let client = reqwest::Client::new();
    // The first calls map the image and warm the host's own paths.
    for _ in 0..3 {
        hello(&client, &server).await;
    }
    let before = minor_faults(server.pid());
    for _ in 0..CALLS {
        hello(&client, &server).await;
    }
    (minor_faults(server.pid()) - before) / CALLS
}

/// Calls `greeter-py/hello` on `server`.
async fn hello(client: &reqwest::Client, server: &Server) {
    let input = json!({"name": "Ada"});
    let body = server.call(client, "greeter-py/hello", input).await;
    assert_eq!(body["output"], json!({"message": "Hello, Ada!"}), "{body}");
}

#[tokio::test]
async fn copying_memory_back_whole_spares_a_python_plugin_its_page_faults() {
    let python = env!("OPBOX_PYTHON_EXAMPLE");
    let Some(python) = example(python, "componentize-py", "OPBOX_COMPONENTIZE_PY") else {
        return;
    };
    let dirty = faults_per_call(&python, "").await;
    let copy = faults_per_call(
        &python,
        "memory_reset = \"copy\"\nkeep_resident_bytes = 33554432",
    )
    .await;
    // CPython writes pages all over its heap: past the runs of written
    // pages wasmtime copies back, the rest are unmapped and fault in again
    // on the next call (about 380 a call). Copied back whole, none do.
    assert!(dirty > 100, "dirty: {dirty} faults a call");
    assert!(
        copy * 10 < dirty,
        "copy: {copy}, dirty: {dirty} faults a call"
    );
}
