//! A running host: runtime, registry, dispatcher and gateway, assembled from
//! a [`HostConfig`].

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::bundled;
use crate::call::{Fanout, SharedObserver};
use crate::capabilities::Grants;
use crate::cluster::{Cluster, ClusterError};
use crate::config::{HostConfig, PluginConfig};
use crate::dispatch::{DispatchConfig, Dispatcher, Operation, Registry};
use crate::envelope;
use crate::gateway;
use crate::net::{Connections, Tls, TlsConfig, TlsError};
use crate::plugins::{self, PluginError, Plugins};
use crate::registry::{Owner, RegistryError};
use crate::runtime::{LoadError, LoadOptions, Plugin, Runtime, RuntimeConfig};
use crate::services;
use crate::store::{EventLog, StoreError};
use crate::telemetry::{Metrics, Sample};
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
    /// Installed plugins could not be restored, or a fixed one not loaded.
    #[error(transparent)]
    Plugins(PluginError),
    /// The event feed cannot be opened (another host using the data
    /// directory, say).
    #[error("cannot open the event feed: {0}")]
    Events(StoreError),
    /// `[access]` names an operation no plugin offers.
    #[error("[access] names `{0}`, which no plugin offers")]
    UnknownAccessOverride(String),
    /// A listener's TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The cluster's settings cannot be used.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A listener's TLS from `files`, reloaded when they change.
fn load_tls(files: Option<&TlsConfig>, alpn: &[&[u8]]) -> Result<Option<Arc<Tls>>, TlsError> {
    let Some(files) = files else { return Ok(None) };
    let tls = Arc::new(Tls::load(files, alpn)?);
    tls.watch()?;
    Ok(Some(tls))
}

/// A host with its plugins loaded, ready to serve.
#[derive(Debug, Clone)]
pub struct Host {
    runtime: Runtime,
    dispatcher: Dispatcher,
    plugins: Plugins,
    config: Arc<HostConfig>,
    /// The gateway's WebSocket connections.
    websockets: TaskTracker,
    /// Every connection open on any listener of this host.
    connections: Connections,
    /// What `/metrics` serves.
    metrics: Arc<Metrics>,
    /// The gateway's TLS, when configured.
    gateway_tls: Option<Arc<Tls>>,
    /// The TCP listener's TLS, when configured.
    tcp_tls: Option<Arc<Tls>>,
    /// The QUIC listener's TLS: the same certificate, its own ALPN.
    quic_tls: Option<Arc<Tls>>,
    /// This host's membership of a cluster, when `[cluster]` is set.
    cluster: Option<Cluster>,
}

impl Host {
    /// Builds the engine, registers the native services and loads every
    /// plugin the configuration names. Fails on the first plugin that does
    /// not load: a host never starts with part of its configuration missing.
    pub async fn start(config: HostConfig) -> Result<Self, HostError> {
        let tenants = Tenants::new(&config.tenants, config.limits.max_instances)?;
        let gateway_tls = load_tls(config.gateway.tls.as_ref(), &[b"h2", b"http/1.1"])?;
        let tcp_tls = load_tls(config.envelope.tls.as_ref(), &[])?;
        let quic_tls = load_tls(config.envelope.tls.as_ref(), &[envelope::quic::ALPN])?;
        if config.tenants.is_empty() {
            tracing::warn!("no [[tenants]] configured: every call will be refused as UNAUTHORIZED");
        }
        let events = Arc::new(
            EventLog::open(&config.data_dir, config.admin.max_events).map_err(HostError::Events)?,
        );
        let metrics = Arc::new(Metrics::new());
        let mut observers: Vec<SharedObserver> = vec![events.clone()];
        if config.telemetry.metrics {
            observers.push(metrics.clone());
        }
        let observer: SharedObserver = Arc::new(Fanout(observers));
        // Joined after the plugins load, but reached first: with a cluster,
        // `wasi:keyvalue` keeps its keys in the cluster's.
        let connection = match &config.cluster {
            Some(cluster) => Some(Cluster::connect(cluster, &config.data_dir).await?),
            None => None,
        };
        let runtime = Runtime::new(RuntimeConfig {
            observer: observer.clone(),
            keyspace: connection.as_ref().map(|c| c.keyspace()),
            ..config.runtime()
        })
        .map_err(HostError::Runtime)?;
        let registry = Arc::new(Registry::new());
        let dispatch = DispatchConfig {
            observer,
            ..config.dispatch()
        };
        let dispatcher = Dispatcher::new(registry, dispatch, tenants);
        let plugins = Plugins::new(
            runtime.clone(),
            dispatcher.clone(),
            config.plugin_policy(),
            events,
        );
        let connections = Connections::new(
            config.connections.max_connections,
            config.connections.max_connections_per_ip,
            config.connections.new_connections_per_ip_per_second,
        );
        let host = Self {
            runtime,
            dispatcher,
            plugins,
            config: Arc::new(config),
            websockets: TaskTracker::new(),
            connections,
            metrics,
            gateway_tls,
            tcp_tls,
            quic_tls,
            cluster: None,
        };
        // Gauges are read at each scrape. The sampler holds the plugins
        // weakly: the metrics are held by what the plugins hold.
        let weak = host.plugins.downgrade();
        host.metrics.sample_with(move || {
            let Ok(plugins) = weak.upgrade() else {
                return Sample::default();
            };
            let instances = plugins.live_instances();
            let plugins = plugins.all();
            Sample {
                plugins: plugins
                    .iter()
                    .map(|l| {
                        let p = &l.plugin;
                        let owner = l.tenant.clone().unwrap_or_else(|| "shared".into());
                        let (live, open) = (p.live_instances(), p.open_subscriptions());
                        (p.name().to_owned(), owner, live.into(), open.into())
                    })
                    .collect(),
                instances,
            }
        });
        let register = |source| HostError::Register {
            origin: services::NAMESPACE.to_owned(),
            source,
        };
        host.register_native(
            services::NAMESPACE,
            services::operations().map_err(register)?,
        )
        .map_err(register)?;
        let admin = plugins::operations(&host.plugins).map_err(register)?;
        host.register_native(plugins::NAMESPACE, admin)
            .map_err(register)?;
        if host.config.examples {
            for (name, wasm) in bundled::EXAMPLES {
                host.install(
                    wasm,
                    LoadOptions {
                        name: None,
                        limits: host.config.plugin_limits(None),
                        grants: Grants::default(),
                        reuse: None,
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
        let restored = host.plugins.restore().await.map_err(HostError::Plugins)?;
        if restored > 0 {
            tracing::info!(restored, "installed plugins restored");
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
        let mut host = host;
        if let Some(connection) = connection {
            let max_plugin_bytes = host.config.admin.max_plugin_bytes as u64;
            host.cluster = Some(
                connection
                    .join(
                        &host.dispatcher,
                        &host.plugins,
                        max_plugin_bytes,
                        host.config.admin.max_events,
                    )
                    .await,
            );
        }
        Ok(host)
    }

    async fn load_file(
        &self,
        path: &Path,
        settings: Option<&PluginConfig>,
    ) -> Result<Arc<Plugin>, HostError> {
        let wasm = match crate::bundled::named(path) {
            Some(Ok(wasm)) => wasm.to_vec(),
            Some(Err(message)) => {
                return Err(HostError::ReadPlugin {
                    path: path.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, message),
                });
            }
            None => std::fs::read(path).map_err(|source| HostError::ReadPlugin {
                path: path.to_owned(),
                source,
            })?,
        };
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
            reuse: settings.and_then(|p| p.reuse.clone()),
        };
        self.install(&wasm, options, &owner, &origin).await
    }

    /// Loads a plugin for `owner` and registers its operations, all or none.
    /// A plugin loaded this way is fixed: the admin API may not change it.
    pub async fn install(
        &self,
        wasm: &[u8],
        options: LoadOptions,
        owner: &Owner,
        origin: &str,
    ) -> Result<Arc<Plugin>, HostError> {
        let plugin =
            self.plugins
                .declare(wasm, options, owner)
                .await
                .map_err(|error| match error {
                    PluginError::Load(source) => HostError::Load {
                        origin: origin.to_owned(),
                        source,
                    },
                    PluginError::Register(source) => HostError::Register {
                        origin: origin.to_owned(),
                        source,
                    },
                    other => HostError::Plugins(other),
                })?;
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

    /// Registers the host's own operations under `namespace`, shared, with
    /// the scopes `[access]` sets replacing those they declare.
    fn register_native(
        &self,
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
            .insert_namespace(&Owner::Shared, namespace, operations)
    }

    /// The plugins, and the door through which they change while serving.
    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// This host's membership of a cluster, when `[cluster]` is set.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
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
            self.tcp_tls.clone(),
            self.dispatcher.clone(),
            self.config.envelope(),
            self.connections.clone(),
            self.config.connection().write_timeout,
            shutdown,
        )
        .await;
    }

    /// Serves the envelope protocol over QUIC on `socket` until `shutdown`
    /// resolves, with the certificate of `[envelope] tls` (QUIC has no
    /// plaintext form): an error without one.
    pub async fn serve_quic(
        &self,
        socket: std::net::UdpSocket,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), envelope::quic::QuicError> {
        let tls = self.quic_tls.as_ref().ok_or_else(|| {
            envelope::quic::QuicError::new("needs a certificate: set `[envelope] tls`")
        })?;
        let config = self.config.envelope();
        socket
            .set_nonblocking(true)
            .map_err(|e| envelope::quic::QuicError::new(&e.to_string()))?;
        let endpoint = envelope::quic::endpoint(socket, tls, &config)?;
        envelope::quic::serve(
            endpoint,
            self.dispatcher.clone(),
            config,
            self.connections.clone(),
            self.config.connection().write_timeout,
            shutdown,
        )
        .await;
        Ok(())
    }

    /// Reads the listeners' TLS certificates and keys again (what SIGHUP
    /// does to `opbox serve`); new connections get them, open ones keep
    /// theirs. A pair that does not load is logged and the old one kept.
    pub fn reload_tls(&self) {
        for tls in [&self.gateway_tls, &self.tcp_tls, &self.quic_tls]
            .into_iter()
            .flatten()
        {
            tls.log_reload("asked to");
        }
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
            self.gateway_tls.clone(),
            gateway::router(
                self.dispatcher.clone(),
                gateway::GatewayConfig {
                    metrics: self.metrics_served(),
                    ..self.config.gateway()
                },
                self.websockets.clone(),
            ),
            self.connections.clone(),
            &self.config.connection(),
            shutdown,
        )
        .await;
        self.websockets.close();
        self.websockets.wait().await;
    }

    /// Serves `/metrics` alone, to anyone, on `listener` (the
    /// `metrics_listen` address) until `shutdown` resolves.
    pub async fn serve_metrics(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        gateway::serve(
            listener,
            None,
            gateway::metrics_router(self.metrics_served()),
            self.connections.clone(),
            &self.config.connection(),
            shutdown,
        )
        .await;
    }

    /// The metrics `/metrics` serves: none when `[telemetry] metrics` is
    /// off, and the route answers `NOT_FOUND`.
    fn metrics_served(&self) -> Option<Arc<Metrics>> {
        self.config.telemetry.metrics.then(|| self.metrics.clone())
    }

    /// The host's metrics (all zero when `[telemetry] metrics` is off).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
