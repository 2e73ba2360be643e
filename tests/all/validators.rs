//! `/openapi.json` read by tools nobody here wrote: an OpenAPI validator
//! (`openapi-spec-validator`), a linter (`@redocly/cli lint`) and a
//! schema-driven fuzzer (schemathesis) against the live examples' host.
//! Each is pinned and installed on first use, from PyPI or npm.

use serde_json::Value;

use crate::openapi::{document_file, examples};
use crate::tools::{node_with, python_with};

/// What a tool said, both streams, and whether it exited well.
async fn run(command: &mut tokio::process::Command) -> (bool, String, String) {
    let output = command.output().await.expect("the tool runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_document_passes_an_openapi_validator() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, file) = document_file(dir.path()).await;
    let python = python_with("openapi-spec-validator", "0.9.0");
    let (ok, out, err) = run(tokio::process::Command::new(python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file))
    .await;
    assert!(ok && out.contains("OK"), "{out}{err}");
}

#[tokio::test]
async fn redocly_finds_no_error_and_no_schema_left_unused() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, file) = document_file(dir.path()).await;
    let redocly = node_with("@redocly/cli", "2.77.0")
        .join("node_modules")
        .join(".bin")
        .join("redocly");
    let (_, out, err) = run(tokio::process::Command::new(redocly)
        .args(["lint", "--format=json"])
        .arg(&file)
        .env("REDOCLY_TELEMETRY", "off")
        .env("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true"))
    .await;
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let problems: Vec<String> = report["problems"]
        .as_array()
        .expect("a list of problems")
        .iter()
        .map(|p| format!("{} {}: {}", p["severity"], p["ruleId"], p["message"]))
        .collect();
    // Errors break tools; an unused component is a schema no route refers
    // to (a subscription's items were one), which generated clients never
    // see. The warnings left: no licence in `info` (the operations are the
    // plugins', whose licence is not the host's to state), no 2xx on the
    // WebSocket route (it answers 101) and no 4xx on `/healthz` (it has
    // none).
    let wrong: Vec<&String> = problems
        .iter()
        .filter(|p| p.starts_with("\"error\"") || p.contains("no-unused-components"))
        .collect();
    assert!(wrong.is_empty(), "{problems:#?}");
}

/// schemathesis generates requests from the document, valid and invalid,
/// and checks every answer against it: no server error, no schema-valid
/// request refused, no invalid one taken, every status, header, body and
/// event as declared. `tests/all/scripts/schemathesis.toml` says what in
/// opbox's contract a schema cannot (a domain error, a deadline passing,
/// errors answered in band). Seeded, so that a run repeats.
#[tokio::test]
async fn schemathesis_finds_no_fault_in_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let host = examples(dir.path()).await;
    let python = python_with("schemathesis", "4.32.5");
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/all/scripts/schemathesis.toml"
    );
    let (ok, out, err) = run(tokio::process::Command::new(python)
        .current_dir(dir.path())
        .args([
            "-m",
            "schemathesis.cli",
            "--config-file",
            config,
            "--no-color",
            "run",
        ])
        .arg(host.url("/openapi.json"))
        .args(["--max-examples", "30", "--seed", "1"])
        // Uploads and the admin feed need an operator; the WebSocket is
        // not HTTP the fuzzer speaks.
        .args(["--exclude-path-regex", "^/admin/"])
        .args(["--exclude-operation-id", "callWebSocket"]))
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains(" passed"), "{out}");
}
