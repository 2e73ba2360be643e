//! The `opbox` command line.
//!
//! - `opbox serve [--config FILE] [--listen ADDR] [--tcp-listen ADDR] [--plugins DIR]`:
//!   run the host; with no arguments, the bundled examples on
//!   127.0.0.1:8080 (HTTP, WebSocket) and 127.0.0.1:8081 (TCP envelopes).
//! - `opbox inspect FILE.wasm`: print a plugin's operations and schemas.
//! - `opbox call OP [JSON]` and `opbox subscribe OP [JSON]`: call a running
//!   host over the envelope protocol (`--url tcp://…` or `ws://…/call`, or
//!   `tls://…` and `wss://…/call` with `--cacert FILE` to trust).
//! - `opbox token new --tenant T [--scopes a,b] [--id NAME]`: make a bearer
//!   token and print it once, with the config lines that grant it.
//! - `opbox plugins install|list|show|replace|remove …` and `opbox events
//!   [--cursor N] [--follow]`: the admin API of a running host over HTTP
//!   (`--url http://…`, `--token`).
//! - `opbox new NAME --lang rust|python|js`: a plugin from a template.
//! - `opbox dev [DIR]`: build, serve, and rebuild and replace on each save.
//!
//! Failures print one line on stderr and exit non-zero.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use opbox::HostConfig;
use opbox::envelope::client::Client;
use opbox::runtime::{LoadOptions, Runtime, RuntimeConfig};
use opbox::telemetry::trace::TraceExport;
use tracing_log::AsLog;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

mod admin;
mod demo;
mod dev;
mod new;
mod raw;
mod serve;

/// Log lines waiting for stderr at most (about 4 MiB of call lines); more
/// are dropped while stderr is stalled.
const LOG_LINES_QUEUED: usize = 16_384;

/// A host for operations written as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "opbox", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host and its HTTP gateway.
    Serve {
        /// The configuration file (opbox.toml); defaults apply without one.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where to listen, overriding the configuration.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Where to serve envelopes over TCP, overriding the configuration.
        #[arg(long, value_name = "ADDR")]
        tcp_listen: Option<SocketAddr>,
        /// Also load every *.wasm file in this directory.
        #[arg(long, value_name = "DIR")]
        plugins: Vec<PathBuf>,
        /// Join the cluster on this NATS server (`nats://host:4222`),
        /// overriding `[cluster] nats_url`.
        #[arg(long, value_name = "URL")]
        nats: Option<String>,
        /// The file holding the secret every host of the cluster shares
        /// (32 bytes or more), overriding `[cluster] key_file`.
        #[arg(long, value_name = "FILE", env = "OPBOX_CLUSTER_KEY_FILE")]
        cluster_key_file: Option<PathBuf>,
        /// Keep installed plugins, events and key-value data here,
        /// overriding `data_dir` (one host at a time may use a directory).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Do not serve the bundled example plugins.
        #[arg(long)]
        no_examples: bool,
    },
    /// Print a plugin's name, version, digest, operations and schemas.
    Inspect {
        /// The plugin component.
        file: PathBuf,
        /// Where compiled plugins are cached: `opbox serve`'s default, so
        /// a plugin served or inspected once loads at once the next time.
        #[arg(long, default_value = ".opbox/cache")]
        cache_dir: PathBuf,
    },
    /// Call a query or mutation on a running host and print its output; a
    /// byte-stream operation reads standard input and writes standard
    /// output and error, and its exit code is the command's.
    Call(Remote),
    /// Subscribe to a subscription on a running host and print each output
    /// as it arrives; Ctrl-C aborts it.
    Subscribe(Remote),
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Install, list, show, replace and remove plugins of a running host.
    Plugins {
        #[command(flatten)]
        host: admin::Host,
        #[command(subcommand)]
        command: admin::PluginsCommand,
    },
    /// Read a running host's event feed.
    Events {
        #[command(flatten)]
        host: admin::Host,
        #[command(flatten)]
        events: admin::Reading,
    },
    /// Create a plugin from a template: a query, a subscription, the WIT
    /// and the authoring layer of its language.
    New {
        /// The plugin's name: its directory, and its operations' namespace.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value = "rust")]
        lang: new::Lang,
        /// Where to create its directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// The opbox guest SDK a Rust plugin depends on [default: the one
        /// this binary was built beside].
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Compile a component read on standard input and write the compiled
    /// artifact on standard output, within the memory and CPU time given:
    /// how `opbox serve` compiles the components callers upload, in a
    /// process of their own.
    #[command(hide = true)]
    CompileComponent {
        /// Memory the compiler may take (its data segment and heap), in
        /// bytes.
        #[arg(long)]
        memory_bytes: u64,
        /// CPU time the compiler may take, in seconds.
        #[arg(long)]
        cpu_secs: u64,
        /// Count instructions (the host's engine does).
        #[arg(long)]
        fuel: bool,
        /// Compile without epoch interruption (the host's engine does not
        /// enforce CPU-time limits).
        #[arg(long)]
        no_epochs: bool,
        /// Compile with Winch (the host's engine does: `opbox dev`).
        #[arg(long)]
        quick: bool,
    },
    /// Build the plugin in DIR, serve it, and rebuild and replace it on
    /// every save.
    Dev {
        /// The plugin's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to serve it.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a fresh random token and print it, once, with the lines to add
    /// to the tenant in opbox.toml. The host keeps only its SHA-256.
    New {
        /// The tenant the token belongs to.
        #[arg(long)]
        tenant: String,
        /// The scopes it grants, comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Who holds it: the caller id logs and plugins see [default:
        /// `token-` and 8 random hex digits].
        #[arg(long)]
        id: Option<String>,
    },
}

/// An operation to reach on a running host.
#[derive(Debug, clap::Args)]
struct Remote {
    /// The operation, `namespace/op`.
    operation: String,
    /// Its input as JSON; `null` when absent.
    input: Option<String>,
    /// The host: `tcp://HOST:PORT` or `ws://HOST:PORT/call`, or
    /// `tls://HOST:PORT` or `wss://HOST:PORT/call` for the same over TLS.
    #[arg(long, default_value = "tcp://127.0.0.1:8081")]
    url: String,
    /// PEM certificates to trust for `tls://` and `wss://`, beside the
    /// web's roots: a private CA's, or a self-signed host's own.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// A bearer token to call with.
    #[arg(long, env = "OPBOX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print each output as compact JSON on one line.
    #[arg(long)]
    raw: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A compiler child: no logging, no async runtime, nothing but its work.
    if let Command::CompileComponent {
        memory_bytes,
        cpu_secs,
        fuel,
        no_epochs,
        quick,
    } = cli.command
    {
        return opbox::runtime::compile_child_main(memory_bytes, cpu_secs, fuel, !no_epochs, quick);
    }
    // `serve` reads its configuration first: it says where traces go.
    let host_config = match &cli.command {
        Command::Serve { config, .. } => match config {
            Some(path) => match HostConfig::load(path) {
                Ok(config) => Some(config),
                Err(e) => {
                    eprintln!("error: {}", one_line(&e.into()));
                    return ExitCode::FAILURE;
                }
            },
            None => Some(HostConfig::demo()),
        },
        _ => None,
    };
    let traces = match host_config
        .as_ref()
        .map(|c| TraceExport::start(&c.telemetry))
    {
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Some(Ok(traces)) => traces,
        None => None,
    };
    let default_level = if host_config.is_some() {
        "info"
    } else {
        "warn"
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Records of the `log` crate (wasmtime's, among others) are forwarded
    // only as far as the log output shows them: a `log::trace!` it would
    // drop costs one level check, not a record to filter.
    let log_level = filter
        .max_level_hint()
        .map_or(tracing_log::log::LevelFilter::Trace, |level| level.as_log());
    // Log lines (one per call) are written by a thread of their own, as many
    // at a time as are waiting: a call's worker formats its line and moves
    // on, and a stalled stderr drops lines (past `LOG_LINES_QUEUED`) rather
    // than stalling calls.
    let (log_writer, log_flushed) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .thread_name("opbox-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(log_writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let subscriber = tracing_subscriber::registry().with(log);
    if tracing::subscriber::set_global_default(subscriber).is_err()
        || tracing_log::LogTracer::builder()
            .with_max_level(log_level)
            .init()
            .is_err()
    {
        eprintln!("error: cannot set up logging");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config: file,
                listen,
                tcp_listen,
                plugins,
                nats,
                cluster_key_file,
                data_dir,
                no_examples,
            } => {
                let mut config = host_config.unwrap_or_else(HostConfig::demo);
                // Components callers upload are compiled by this binary, in
                // a child process bounded by `[admin]`'s compile limits.
                config.compiler = std::env::current_exe().ok();
                if let Some(traces) = &traces {
                    config.tracer = traces.tracer();
                }
                if let Some(dir) = data_dir {
                    config.data_dir = dir;
                }
                if no_examples {
                    config.examples = false;
                }
                if let Some(url) = nats {
                    match &mut config.cluster {
                        Some(cluster) => cluster.nats_url = url,
                        None => config.cluster = Some(opbox::cluster::ClusterConfig::new(url)),
                    }
                }
                if let (Some(cluster), Some(file)) = (&mut config.cluster, cluster_key_file) {
                    cluster.key = None;
                    cluster.key_file = Some(file);
                }
                if file.is_none() {
                    let token = demo::admin_token(&mut config)?;
                    tracing::info!(
                        "the operator's token is in {0}: export OPBOX_TOKEN=$(cat {0})",
                        token.display()
                    );
                }
                serve::serve(config, listen, tcp_listen, plugins).await
            }
            Command::Inspect { file, cache_dir } => inspect(file, cache_dir).await,
            Command::Call(remote) => call(remote, false).await,
            Command::Subscribe(remote) => call(remote, true).await,
            Command::Token(TokenCommand::New { tenant, scopes, id }) => {
                new_token(&tenant, &scopes, &id.unwrap_or_else(default_token_id))
            }
            Command::Plugins { host, command } => admin::plugins(host, command).await,
            Command::Events { host, events } => admin::events(host, events).await,
            Command::New {
                name,
                lang,
                dir,
                sdk,
            } => new::new_plugin(&name, lang, &dir, sdk),
            Command::Dev { dir, listen } => dev::dev(dir, listen).await,
            // Run before the async runtime starts, above.
            Command::CompileComponent { .. } => Ok(()),
        }
    });
    // Do not wait for lingering requests (e.g. open subscriptions).
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Some(traces) = traces {
        traces.shutdown();
    }
    drop(log_flushed);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<admin::Reported>() => ExitCode::FAILURE,
        Err(ref e) if let Some(raw::Exited(code)) = e.downcast_ref() => ExitCode::from(*code),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `error` and its causes on one line: each cause is added only when the
/// message so far does not already say it, and line breaks are folded.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A token id unlikely to collide: `token-` and 8 hex digits.
fn default_token_id() -> String {
    format!("token-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn new_token(tenant: &str, scopes: &[String], id: &str) -> Result<()> {
    let token = opbox::tenants::new_token().context("cannot read random bytes")?;
    let hash = opbox::tenants::hash_token_hex(&token);
    let scopes = serde_json::to_string(scopes)?;
    let id = serde_json::to_string(id)?;
    let tenant_line = serde_json::to_string(tenant)?;
    println!("# The token; this is the only time it is shown:");
    println!("{token}");
    println!();
    println!(
        "# Add to opbox.toml, below the [[tenants]] entry with id = {tenant_line} (before the next [[tenants]]):"
    );
    println!("[[tenants.tokens]]");
    println!("id = {id}");
    println!("sha256 = \"{hash}\"");
    println!("scopes = {scopes}");
    Ok(())
}

async fn call(remote: Remote, subscribe: bool) -> Result<()> {
    use futures::StreamExt;

    let input = match &remote.input {
        Some(text) => serde_json::from_str(text).context("the input is not valid JSON")?,
        None => serde_json::Value::Null,
    };
    let print = |output: &serde_json::Value| {
        if remote.raw {
            println!("{output}");
        } else {
            println!("{output:#}");
        }
    };
    let tls = match &remote.cacert {
        Some(file) => Some(opbox::envelope::client::tls_config(Some(file))?),
        None => None,
    };
    let client = Client::connect_with(&remote.url, remote.token.clone(), tls).await?;
    if !subscribe {
        let spec = client
            .call(
                "services/schema",
                serde_json::json!({"name": remote.operation}),
            )
            .await?;
        if spec["op_type"] == "raw" {
            let input = match &remote.input {
                Some(_) => input,
                None => serde_json::json!({}),
            };
            return raw::pipe(&client, &remote.operation, input).await;
        }
        print(&client.call(&remote.operation, input).await?);
        return Ok(());
    }
    // Watch for Ctrl-C from before the first output, so none is missed.
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch for Ctrl-C")?;
    #[cfg(unix)]
    let interrupted = async move {
        interrupt.recv().await;
    };
    #[cfg(not(unix))]
    let interrupted = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(interrupted);
    let mut outputs = client.subscribe(&remote.operation, input).await?;
    loop {
        tokio::select! {
            output = outputs.next() => match output {
                Some(output) => print(&output?),
                None => return Ok(()),
            },
            () = &mut interrupted => {
                outputs.abort().await;
                return Ok(());
            }
        }
    }
}

async fn inspect(file: PathBuf, cache_dir: PathBuf) -> Result<()> {
    let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        cache_dir: Some(cache_dir),
        ..RuntimeConfig::default()
    })?;
    let plugin = runtime
        .load(&wasm, LoadOptions::default())
        .await
        .with_context(|| format!("cannot load {}", file.display()))?;
    println!("plugin   {}", plugin.name());
    println!("version  {}", plugin.version());
    println!("digest   sha256:{}", plugin.digest());
    println!("imports ({})", plugin.imports().len());
    for import in plugin.imports() {
        println!("  {import}");
    }
    let operations = plugin.operations();
    println!("operations ({})", operations.len());
    for op in &operations {
        let spec = &op.spec;
        println!();
        println!(
            "  {}  ({:?}, {:?})",
            spec.name, spec.op_type, spec.visibility
        );
        println!("    {}", spec.description);
        if !spec.access_control.required_scopes.is_empty() {
            println!(
                "    scopes: {}",
                spec.access_control.required_scopes.join(", ")
            );
        }
        println!("    input schema:  {}", spec.input_schema);
        println!("    output schema: {}", spec.output_schema);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
