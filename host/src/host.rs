//! A running host: runtime, registry, dispatcher and gateway, assembled from
//! a [`HostConfig`].

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::bundled;
use crate::config::{HostConfig, PluginConfig};
use crate::dispatch::Dispatcher;
use crate::envelope;
use crate::gateway;
use crate::net::Connections;
use crate::registry::{Operation, Owner, Registry, RegistryError};
use crate::runtime::{Grants, LoadError, LoadOptions, Plugin, Runtime};
use crate::services;
use crate::tenants::{Tenants, TenantsError};

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
    /// A plugin directory could not be read.
    #[error("cannot read the plugin directory {path}: {source}")]
    ReadPluginDir {
        /// The directory.
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
    /// The tenants of the config cannot be used.
    #[error(transparent)]
    Tenants(#[from] TenantsError),
    /// A plugin names a tenant the config does not have.
    #[error("plugin {origin} belongs to tenant `{tenant}`, which is not configured")]
    UnknownTenant {
        /// The file.
        origin: String,
        /// The tenant it names.
        tenant: String,
    },
    /// `[access]` names an operation no plugin offers.
    #[error("[access] names `{0}`, which no plugin offers")]
    UnknownAccessOverride(String),
}

/// A host with its plugins loaded, ready to serve.
#[derive(Debug, Clone)]
pub struct Host {
    runtime: Runtime,
    dispatcher: Dispatcher,
    config: Arc<HostConfig>,
    /// The gateway's WebSocket connections.
    websockets: TaskTracker,
    /// Every connection open on any listener of this host.
    connections: Connections,
}

impl Host {
    /// Builds the engine, registers the native services and loads every
    /// plugin the configuration names. Fails on the first plugin that does
    /// not load: a host never starts with part of its configuration missing.
    pub async fn start(config: HostConfig) -> Result<Self, HostError> {
        let tenants = Tenants::new(&config.tenants, config.limits.max_instances)?;
        if config.tenants.is_empty() {
            tracing::warn!("no [[tenants]] configured: every call will be refused as UNAUTHORIZED");
        }
        let runtime = Runtime::new(config.runtime()).map_err(HostError::Runtime)?;
        let registry = Arc::new(Registry::new());
        let dispatcher = Dispatcher::new(registry, config.dispatch(), tenants);
        let connections = Connections::new(
            config.connections.max_connections,
            config.connections.max_connections_per_ip,
        );
        let host = Self {
            runtime,
            dispatcher,
            config: Arc::new(config),
            websockets: TaskTracker::new(),
            connections,
        };
        let register = |source| HostError::Register {
            origin: services::NAMESPACE.to_owned(),
            source,
        };
        host.register(
            &Owner::Shared,
            services::NAMESPACE,
            services::operations().map_err(register)?,
        )
        .map_err(register)?;
        if host.config.examples {
            for (name, wasm) in bundled::EXAMPLES {
                host.install(
                    wasm,
                    LoadOptions {
                        name: None,
                        limits: host.config.plugin_limits(None),
                        grants: Grants::default(),
                    },
                    &Owner::Shared,
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
        let offered: HashSet<String> = host
            .dispatcher
            .registry()
            .all_owners()
            .iter()
            .map(|op| op.spec.name.clone())
            .collect();
        if let Some(name) = host.config.access.keys().find(|n| !offered.contains(*n)) {
            return Err(HostError::UnknownAccessOverride(name.clone()));
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
        let origin = path.display().to_string();
        let owner = match settings.and_then(|p| p.tenant.clone()) {
            None => Owner::Shared,
            Some(tenant) if self.dispatcher.tenants().contains(&tenant) => Owner::Tenant(tenant),
            Some(tenant) => return Err(HostError::UnknownTenant { origin, tenant }),
        };
        let options = LoadOptions {
            name: settings.and_then(|p| p.name.clone()),
            limits: self.config.plugin_limits(settings),
            grants: settings.map(|p| p.grants.clone()).unwrap_or_default(),
        };
        self.install(&wasm, options, &owner, &origin).await
    }

    /// Loads a plugin for `owner` and registers its operations, all or none.
    pub async fn install(
        &self,
        wasm: &[u8],
        options: LoadOptions,
        owner: &Owner,
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
        self.register(owner, plugin.name(), operations)
            .map_err(register)?;
        tracing::info!(
            plugin = plugin.name(),
            tenant = match owner {
                Owner::Shared => "(shared)",
                Owner::Tenant(tenant) => tenant,
            },
            version = plugin.version(),
            digest = plugin.digest(),
            "plugin loaded"
        );
        Ok(plugin)
    }

    /// Registers a namespace, with the scopes `[access]` requires replacing
    /// those its operations declare.
    fn register(
        &self,
        owner: &Owner,
        namespace: &str,
        mut operations: Vec<Operation>,
    ) -> Result<(), RegistryError> {
        for op in &mut operations {
            if let Some(access) = self.config.access.get(&op.spec.name) {
                op.spec.access_control = access.clone();
            }
        }
        self.dispatcher
            .registry()
            .insert_namespace(owner, namespace, operations)
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
        gateway::router(
            self.dispatcher.clone(),
            self.config.gateway(),
            self.websockets.clone(),
        )
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
            self.connections.clone(),
            self.config.connection().write_timeout,
            shutdown,
        )
        .await;
    }

    /// Serves the gateway on `listener` until `shutdown` resolves, then stops
    /// accepting and lets open requests and WebSocket connections finish:
    /// drain the dispatcher first ([`Dispatcher::drain`]) so that they do.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        gateway::serve(
            listener,
            self.router(),
            self.connections.clone(),
            &self.config.connection(),
            shutdown,
        )
        .await;
        self.websockets.close();
        self.websockets.wait().await;
    }

    /// Connections open now, on every listener of this host.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }
}

/// The `*.wasm` files directly in `dir`, sorted.
fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>, HostError> {
    let read_error = |source| HostError::ReadPluginDir {
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
