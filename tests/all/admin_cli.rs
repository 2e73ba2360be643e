//! `opbox plugins …` and `opbox events` against a running host.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use crate::admin::{OPERATOR, serve_in};
use crate::cli::{assert_one_line_failure, opbox};

/// Runs `opbox ARGS --url URL`, with the operator's token in the
/// environment.
fn run(url: &str, args: &[&str]) -> Output {
    opbox()
        .args(args)
        .args(["--url", url])
        .env("OPBOX_TOKEN", OPERATOR)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn fixture(name: &str) -> String {
    opbox::bundled::built_plugin(name).display().to_string()
}

#[test]
fn the_cli_installs_lists_shows_replaces_and_removes_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_in(dir.path());
    let url = server.url.as_str();
    let (v1, v2, broken) = (
        fixture("fixture-v1"),
        fixture("fixture-v2"),
        fixture("fixture-break"),
    );

    let shown = stdout(&run(
        url,
        &[
            "plugins",
            "install",
            &v1,
            "--name",
            "versioned",
            "--limit",
            "cpu_ms=800",
        ],
    ));
    assert!(shown.contains("name        versioned"), "{shown}");
    assert!(shown.contains("\"cpu_ms\":800"), "{shown}");
    // A setting the host does not know is named before anything is sent:
    // no host needs to be there.
    let misspelt = run(
        "http://127.0.0.1:9",
        &[
            "plugins",
            "install",
            &v2,
            "--name",
            "other",
            "--limit",
            "cpu_msec=800",
        ],
    );
    assert!(!misspelt.status.success());
    let said = String::from_utf8_lossy(&misspelt.stderr);
    assert!(said.contains("cpu_msec"), "{said}");
    let listed = stdout(&run(url, &["plugins", "list"]));
    let line = listed
        .lines()
        .find(|l| l.starts_with("versioned"))
        .expect(&listed);
    assert!(line.contains("api") && line.contains("active"), "{listed}");

    // A breaking version: refused, the summary on the error line and each
    // break on a line of its own.
    let refused = run(url, &["plugins", "replace", "versioned", &broken]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].starts_with("error: CONFLICT (409): "), "{stderr}");
    assert!(
        lines.iter().any(|l| l
            .trim_start()
            .starts_with("versioned/which (op_type): it was a query")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("versioned/count (removed)")),
        "{stderr}"
    );
    // A compatible one goes in, its instances reused as the operator says;
    // a breaking one with --force too.
    let shown = stdout(&run(
        url,
        &[
            "plugins",
            "replace",
            "versioned",
            &v2,
            "--reuse",
            "max_calls=5",
        ],
    ));
    assert!(
        shown.contains("reuse       {\"max_age_ms\":60000,\"max_calls\":5,"),
        "{shown}"
    );
    let shown = stdout(&run(
        url,
        &["plugins", "replace", "versioned", &broken, "--force"],
    ));
    assert!(shown.contains("versioned/which"), "{shown}");
    let shown = stdout(&run(url, &["plugins", "show", "versioned"]));
    assert!(shown.contains("calls       0 (0 failed)"), "{shown}");

    let events = stdout(&run(url, &["events"]));
    let kinds: Vec<&str> = events
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        kinds,
        [
            "plugin.installed",
            "plugin.refused",
            "plugin.replaced",
            "plugin.replaced"
        ],
        "{events}"
    );

    assert_eq!(
        stdout(&run(url, &["plugins", "remove", "versioned"])).trim(),
        "removed versioned"
    );
    assert_one_line_failure(
        &run(url, &["plugins", "show", "versioned"]),
        "NOT_FOUND (404)",
    );
    // What is missing is a plugin, and the error says so.
    assert_one_line_failure(
        &run(url, &["plugins", "remove", "nosuch"]),
        "no plugin named `nosuch`",
    );
    let anonymous = opbox()
        .args(["plugins", "install", &v1, "--url", url])
        .env_remove("OPBOX_TOKEN")
        .output()
        .unwrap();
    assert_one_line_failure(&anonymous, "UNAUTHORIZED (401)");
    // Every setting of an upload reaches the host, `placement` among them:
    // a host without the label does not hold the plugin.
    assert_one_line_failure(
        &run(url, &["plugins", "install", &v1, "--placement", "zone=eu"]),
        "CONFLICT (409)",
    );
}

#[test]
fn events_follow_prints_what_happens_as_it_happens() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_in(dir.path());
    let url = server.url.as_str();
    let mut follower = opbox()
        .args(["events", "--follow", "--url", url])
        .env("OPBOX_TOKEN", OPERATOR)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The snapshot comes first, on stderr: the feed is open.
    let mut snapshot = String::new();
    BufReader::new(follower.stderr.take().unwrap())
        .read_line(&mut snapshot)
        .unwrap();
    assert!(snapshot.starts_with("plugins now:"), "{snapshot}");
    stdout(&run(
        url,
        &[
            "plugins",
            "install",
            &fixture("fixture-v1"),
            "--name",
            "live",
        ],
    ));
    let mut line = String::new();
    BufReader::new(follower.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("plugin.installed") && line.contains("plugin=live"),
        "{line}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
}
