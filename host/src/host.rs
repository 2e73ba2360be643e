//! A running host: runtime, registry, dispatcher and gateway, assembled from
//! a [`HostConfig`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::bundled;
use crate::config::{HostConfig, PluginConfig};
use crate::dispatch::Dispatcher;
use crate::envelope;
use crate::gateway;
use crate::registry::{Registry, RegistryError};
use crate::runtime::{LoadError, LoadOptions, Plugin, Runtime};
use crate::services;

/// Why the host could not start or load a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The engine could not be built.
    #[error(transparent)]
    Runtime(LoadError),
    /// A plugin file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    ReadPlugin {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A plugin could not be loaded.
    #[error("cannot load plugin {origin}: {source}")]
    Load {
        /// The file, or the bundled example's name.
        origin: String,
        /// Why.
        source: LoadError,
    },
    /// A plugin's operations could not be registered.
    #[error("cannot register plugin {origin}: {source}")]
    Register {
        /// The file, or the bundled example's name.
        origin: String,
        /// Why.
        source: RegistryError,
    },
}

/// A host with its plugins loaded, ready to serve.
#[derive(Debug, Clone)]
pub struct Host {
    runtime: Runtime,
    dispatcher: Dispatcher,
    config: Arc<HostConfig>,
}

impl Host {
    /// Builds the engine, registers the native services and loads every
    /// plugin the configuration names. Fails on the first plugin that does
    /// not load: a host never starts with part of its configuration missing.
    pub async fn start(config: HostConfig) -> Result<Self, HostError> {
        let runtime = Runtime::new(config.runtime()).map_err(HostError::Runtime)?;
        let registry = Arc::new(Registry::new());
        services::register(&registry).map_err(|source| HostError::Register {
            origin: services::NAMESPACE.to_owned(),
            source,
        })?;
        let dispatcher = Dispatcher::new(registry, config.dispatch());
        let host = Self {
            runtime,
            dispatcher,
            config: Arc::new(config),
        };
        if host.config.examples {
            for (name, wasm) in bundled::EXAMPLES {
                host.install(
                    wasm,
                    LoadOptions {
                        name: None,
                        limits: host.config.plugin_limits(None),
                    },
                    &format!("bundled example `{name}`"),
                )
                .await?;
            }
        }
        for dir in &host.config.plugin_dirs {
            for path in wasm_files(dir)? {
                host.load_file(&path, None).await?;
            }
        }
        for plugin in &host.config.plugins {
            host.load_file(&plugin.path, Some(plugin)).await?;
        }
        Ok(host)
    }

    async fn load_file(
        &self,
        path: &Path,
        settings: Option<&PluginConfig>,
    ) -> Result<Arc<Plugin>, HostError> {
        let wasm = std::fs::read(path).map_err(|source| HostError::ReadPlugin {
            path: path.to_owned(),
            source,
        })?;
        let options = LoadOptions {
            name: settings.and_then(|p| p.name.clone()),
            limits: self.config.plugin_limits(settings),
        };
        self.install(&wasm, options, &path.display().to_string())
            .await
    }

    /// Loads a plugin and registers its operations, all or none.
    pub async fn install(
        &self,
        wasm: &[u8],
        options: LoadOptions,
        origin: &str,
    ) -> Result<Arc<Plugin>, HostError> {
        let plugin = self
            .runtime
            .load(wasm, options)
            .await
            .map_err(|source| HostError::Load {
                origin: origin.to_owned(),
                source,
            })?;
        let register = |source| HostError::Register {
            origin: origin.to_owned(),
            source,
        };
        let operations = plugin.operations().map_err(register)?;
        self.dispatcher
            .registry()
            .insert_namespace(plugin.name(), operations)
            .map_err(register)?;
        tracing::info!(
            plugin = plugin.name(),
            version = plugin.version(),
            digest = plugin.digest(),
            "plugin loaded"
        );
        Ok(plugin)
    }

    /// The dispatcher every transport calls through.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The runtime the plugins run in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The configuration the host was started with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The HTTP gateway's routes.
    pub fn router(&self) -> axum::Router {
        gateway::router(self.dispatcher.clone(), self.config.gateway())
    }

    /// Serves the envelope protocol over TCP on `listener` until `shutdown`
    /// resolves, then waits for open connections to close: drain the
    /// dispatcher first ([`Dispatcher::drain`]) so that they do.
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        envelope::tcp::serve(
            listener,
            self.dispatcher.clone(),
            self.config.envelope(),
            shutdown,
        )
        .await;
    }

    /// Serves the gateway on `listener` until `shutdown` resolves, then stops
    /// accepting and lets open requests finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The `*.wasm` files directly in `dir`, sorted.
fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>, HostError> {
    let read_error = |source| HostError::ReadPlugin {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
