//! The `opbox` command line.
//!
//! - `opbox serve [--config FILE] [--listen ADDR] [--plugins DIR]`: run the
//!   host; with no arguments, the bundled examples on 127.0.0.1:8080.
//! - `opbox inspect FILE.wasm`: print a plugin's operations and schemas.
//!
//! Failures print one line on stderr and exit non-zero.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use opbox::runtime::{LoadOptions, Runtime, RuntimeConfig};
use opbox::{Host, HostConfig};
use tracing_subscriber::EnvFilter;

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
        /// Also load every *.wasm file in this directory.
        #[arg(long, value_name = "DIR")]
        plugins: Vec<PathBuf>,
    },
    /// Print a plugin's name, version, digest, operations and schemas.
    Inspect {
        /// The plugin component.
        file: PathBuf,
    },
}

/// How long open requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        Command::Inspect { .. } => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
                config,
                listen,
                plugins,
            } => serve(config, listen, plugins).await,
            Command::Inspect { file } => inspect(file).await,
        }
    });
    // Do not wait for lingering requests (e.g. open subscriptions).
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    plugins: Vec<PathBuf>,
) -> Result<()> {
    let mut config = match config {
        Some(path) => HostConfig::load(&path)?,
        None => HostConfig::default(),
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    config.plugin_dirs.extend(plugins);
    let addr = config.listen;
    let host = Host::start(config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    tracing::info!("opbox serving on http://{local}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let host = host.clone();
        async move {
            host.serve(listener, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    shutdown_signal().await;
    tracing::info!(
        "shutting down; open requests have {} s to finish",
        SHUTDOWN_GRACE.as_secs()
    );
    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(joined) => joined
            .context("the server task failed")?
            .context("the server failed")?,
        Err(_) => tracing::warn!("open requests did not finish in time; exiting"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

async fn inspect(file: PathBuf) -> Result<()> {
    let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
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
    let operations = plugin.operations()?;
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
