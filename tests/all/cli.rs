//! The `opbox` binary: serving, inspecting, and failing with one clear line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn opbox() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opbox"));
    cmd.env("RUST_LOG", "info").env_remove("RUST_BACKTRACE");
    cmd
}

/// Kills the child when dropped, so a failed test leaves no server behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts the command failed with one line on stderr mentioning `needle`.
pub fn assert_one_line_failure(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, stderr: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert!(errors[0].contains(needle), "`{needle}` not in: {stderr}");
    // Nothing after the error line (no dump), and no cause said twice.
    let after = stderr.split(errors[0]).nth(1).unwrap_or_default();
    assert!(
        after.trim().is_empty(),
        "more after the error line: {stderr}"
    );
    let parts: Vec<&str> = errors[0].split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "`{part}` said twice: {stderr}"
        );
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn serve_with_no_config_serves_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let child = opbox()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tcp-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let stderr = running.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let started = Instant::now();
    let mut log = Vec::new();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        log.push(line.clone());
        if let Some((_, addr)) = line.split_once("serving on http://") {
            break addr.trim().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no address logged"
        );
    };
    let output = Command::new("curl")
        .args([
            "-s",
            &format!("http://{addr}/call"),
            "-d",
            r#"{"operation":"echo/echo","input":{"x":1}}"#,
        ])
        .output();
    // curl is a convenience; fall back to a raw HTTP/1.1 request without it.
    let body = match output {
        Ok(output) if output.status.success() => String::from_utf8(output.stdout).unwrap(),
        _ => raw_post(
            &addr,
            "/call",
            r#"{"operation":"echo/echo","input":{"x":1}}"#,
        ),
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["result"], "ok");
    assert_eq!(body["output"], serde_json::json!({"x": 1}));
    // The compiled plugins were cached in the default data directory.
    assert!(dir.path().join(".opbox/cache").read_dir().unwrap().count() >= 3);

    // The demo can be administered from this machine: its log says where
    // the operator's token is, a file only its owner reads.
    let said = log
        .iter()
        .find(|line| line.contains("export OPBOX_TOKEN="))
        .expect("the token is named before the host serves");
    let file = dir.path().join(".opbox/admin-token");
    assert!(said.contains(".opbox/admin-token"), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let token = std::fs::read_to_string(&file).unwrap();
    let list = |token: Option<&str>| {
        let mut command = opbox();
        command
            .args(["plugins", "list", "--url", &format!("http://{addr}")])
            .env_remove("OPBOX_TOKEN");
        if let Some(token) = token {
            command.env("OPBOX_TOKEN", token.trim());
        }
        command.output().unwrap()
    };
    let listed = list(Some(&token));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(stdout.contains("textkit"), "{stdout}");
    // Without it, no.
    assert!(!list(None).status.success());
}

fn raw_post(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = opbox()
        .args(["serve", "--listen", &addr, "--tcp-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_one_line_failure(&output, &format!("cannot listen on {addr}"));
}

#[test]
fn an_invalid_plugin_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm not really").unwrap();
    std::fs::write(dir.path().join("text.wasm"), b"not wasm at all").unwrap();
    let serve = || {
        opbox()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tcp-listen",
                "127.0.0.1:0",
            ])
            .arg("--plugins")
            .arg(dir.path())
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    assert_one_line_failure(&serve(), "broken.wasm");
    // Bytes that are not WebAssembly at all are called that, with no dump.
    std::fs::remove_file(dir.path().join("broken.wasm")).unwrap();
    let output = serve();
    assert_one_line_failure(&output, "text.wasm");
    assert_one_line_failure(&output, "is not WebAssembly");
}

#[test]
fn a_missing_plugin_directory_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = opbox()
        .args([
            "serve",
            "--tcp-listen",
            "127.0.0.1:0",
            "--plugins",
            "no-such-dir",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_one_line_failure(&output, "cannot read the plugin directory no-such-dir");
}

/// TLS for a TCP listener that is off would do nothing: said, not
/// ignored; with the listener on (here from the command line), it serves.
#[test]
fn envelope_tls_without_a_tcp_listener_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("opbox.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[envelope]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
    )
    .unwrap();
    let output = opbox()
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_one_line_failure(
        &output,
        "`[envelope] tls` is set but neither `tcp_listen` nor `quic_listen` is",
    );
    // Given a listener, the same config gets as far as reading the
    // certificate (which this test did not make).
    let output = opbox()
        .args(["serve", "--tcp-listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_one_line_failure(&output, "cert.pem");
    // QUIC is always encrypted: a QUIC listener without a certificate is
    // refused as clearly.
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nquic_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let output = opbox()
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_one_line_failure(&output, "`quic_listen` needs a certificate");
}

#[test]
fn a_bad_config_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("opbox.toml");
    std::fs::write(&config, "listen = 8080\nmystery = true\n").unwrap();
    let output = opbox()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_one_line_failure(&output, "invalid config file");
    // A value of the wrong type names its key and line.
    std::fs::write(&config, "[limits]\ndeadline_ms = \"30s\"\n").unwrap();
    let output = opbox()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_one_line_failure(&output, "`limits.deadline_ms` (line 2)");

    let output = opbox()
        .args(["serve", "--config", "/no/such/opbox.toml"])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "cannot read config file");
}

#[test]
fn a_config_file_names_plugins_relative_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        opbox::bundled::built_plugin("fixture-slow"),
        dir.path().join("slow.wasm"),
    )
    .unwrap();
    let config = dir.path().join("opbox.toml");
    std::fs::write(
        &config,
        "examples = false\nlisten = \"127.0.0.1:0\"\n[[plugins]]\npath = \"slow.wasm\"\nname = \"tortoise\"\n",
    )
    .unwrap();
    let mut running = Running(
        opbox()
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = running.0.stderr.take().unwrap();
    let mut loaded = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.contains("plugin loaded") {
            loaded.push(line.clone());
        }
        if line.contains("serving on") {
            break;
        }
    }
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert!(loaded[0].contains("tortoise"), "{loaded:?}");
}

#[test]
fn inspect_prints_operations_and_schemas_and_compiles_once() {
    let cache = tempfile::tempdir().unwrap();
    let inspect = || {
        opbox()
            .arg("inspect")
            .arg(opbox::bundled::built_plugin("ticker"))
            .arg("--cache-dir")
            .arg(cache.path())
            .output()
            .unwrap()
    };
    let cached = || std::fs::read_dir(cache.path()).map_or(0, |d| d.count());
    assert_eq!(cached(), 0);
    let output = inspect();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The compiled plugin is kept, and the next inspect reads it back.
    assert_eq!(cached(), 1);
    let again = inspect();
    assert_eq!(again.stdout, output.stdout);
    assert_eq!(cached(), 1);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("plugin   ticker"), "{stdout}");
    assert!(stdout.contains("digest   sha256:"), "{stdout}");
    assert!(
        stdout.contains("ticker/count  (Subscription, External)"),
        "{stdout}"
    );
    assert!(stdout.contains(r#""maximum":1000000"#), "{stdout}");
    // What the plugin imports: the opbox world and the WASI its std uses.
    assert!(stdout.contains("opbox:plugin/log@0.1.0"), "{stdout}");
    assert!(stdout.contains("wasi:cli/stderr@"), "{stdout}");
}

#[test]
fn inspect_of_a_missing_or_invalid_file_is_one_clear_line() {
    let cache = tempfile::tempdir().unwrap();
    let inspect = |file: &Path| {
        opbox()
            .arg("inspect")
            .arg(file)
            .arg("--cache-dir")
            .arg(cache.path())
            .output()
            .unwrap()
    };
    let output = inspect(Path::new("/no/such/plugin.wasm"));
    assert_one_line_failure(&output, "cannot read /no/such/plugin.wasm");

    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"hello").unwrap();
    let output = inspect(&bogus);
    assert_one_line_failure(&output, "not a valid opbox plugin component");
    assert!(Path::new(&bogus).exists());
}

#[test]
fn token_new_help_is_the_same_every_time() {
    let help = || opbox().args(["token", "new", "--help"]).output().unwrap();
    let (first, second) = (help(), help());
    assert!(first.status.success());
    assert_eq!(first.stdout, second.stdout);
    assert!(String::from_utf8_lossy(&first.stdout).contains("`token-` and 8 random hex digits"));
}

#[tokio::test]
async fn every_call_refused_or_failed_has_a_log_line_with_its_cause() {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n\
         [[tenants]]\nid = \"acme\"\n[[tenants.tokens]]\nid = \"ci\"\nsha256 = \"{}\"\n\
         [[plugins]]\npath = {:?}\n",
        opbox::tenants::hash_token_hex("opbox_test_logs"),
        opbox::bundled::built_plugin("fixture-panic"),
    );
    let server = crate::util::Server::start(&config);
    let client = reqwest::Client::new();
    // Refused at the gateway: no token.
    let refused = server
        .call(&client, "echo/echo", serde_json::json!(1))
        .await;
    assert_eq!(refused["error"]["code"], "UNAUTHORIZED");
    // Refused on an envelope connection.
    let mut tcp = crate::util::Frames::at(server.tcp.as_deref().unwrap()).await;
    tcp.call("1", "echo/echo", serde_json::json!(1)).await;
    assert_eq!(tcp.next().await.unwrap()["payload"]["code"], "UNAUTHORIZED");
    // A panic.
    let failed = client
        .post(format!("{}/call", server.url))
        .bearer_auth("opbox_test_logs")
        .json(&serde_json::json!({"operation": "fixture-panic/boom", "input": "kaboom"}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    // Stopped, not killed: SIGKILL would lose the log lines the writer
    // had queued and not written yet.
    let log = server.stop();
    let refusals: Vec<_> = log
        .iter()
        .filter(|l| l.contains("call refused") && l.contains("UNAUTHORIZED"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log:#?}");
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("transport=\"http\"") || l.contains("transport=http"))
    );
    let failure = log
        .iter()
        .find(|l| l.contains("PLUGIN_FAILED"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(failure.contains("kaboom"), "{failure}");
    assert!(failure.contains("trap="), "{failure}");
}

#[tokio::test]
async fn sighup_keeps_serving_and_reloads_tls_certificates() {
    let hup = |server: &crate::util::Server| {
        let status = Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let server = crate::util::Server::start(
        "listen = \"127.0.0.1:0\"\n[[tenants]]\nid = \"default\"\nanonymous = true\n",
    );
    hup(&server);
    let client = reqwest::Client::new();
    // Still serving, and it said what it did.
    let started = Instant::now();
    loop {
        let answer = server
            .call(&client, "echo/echo", serde_json::json!(1))
            .await;
        assert_eq!(answer["output"], 1);
        if server.logged("SIGHUP: reloading TLS certificates") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With TLS: the certificate is read again.
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    let server = crate::util::Server::start_in(
        dir.path(),
        "listen = \"127.0.0.1:0\"\n[gateway]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n\
         [[tenants]]\nid = \"default\"\nanonymous = true\n",
    );
    assert!(server.logged("serving on https://"));
    hup(&server);
    let started = Instant::now();
    while !server.logged("TLS certificate reloaded (asked to)") {
        assert!(started.elapsed() < Duration::from_secs(10), "no reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn two_plugins_on_one_namespace_is_one_line_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let echo = opbox::bundled::built_plugin("echo");
    let config = dir.path().join("opbox.toml");
    std::fs::write(
        &config,
        format!("examples = false\n[[plugins]]\npath = {echo:?}\n[[plugins]]\npath = {echo:?}\n"),
    )
    .unwrap();
    let output = opbox()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_one_line_failure(&output, "namespace `echo` is already in use");
}

#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("opbox.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\n").unwrap();
    // Started with a soft limit of 256, below whatever the hard limit is.
    let child = Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_opbox"))
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let mut lines = BufReader::new(running.0.stderr.take().unwrap()).lines();
    while !lines.next().unwrap().unwrap().contains("serving on") {}
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", running.0.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_ne!(numbers[0], "256", "{line}");
    assert_eq!(numbers[0], numbers[1], "soft and hard: {line}");
}

#[tokio::test]
async fn calls_go_on_while_nothing_reads_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ncache_dir = {:?}\n\n[[tenants]]\nid = \"default\"\nanonymous = true\n",
        crate::util::cache_dir()
    );
    let server = crate::util::Server::start_unread(dir.path(), &config);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Each call logs a line of about 350 bytes: 2,000 of them are ten times
    // what a pipe holds (64 KiB). The lines the pipe cannot take are
    // dropped; the calls are answered.
    for n in 0..2_000 {
        let answer = server
            .call(&client, "echo/echo", serde_json::json!(n))
            .await;
        assert_eq!(answer["output"], n, "call {n}: {answer}");
    }
}
