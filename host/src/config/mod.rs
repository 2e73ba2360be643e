//! The host configuration, `opbox.toml`.
//!
//! Every field has a default, so an empty file (or none) is a valid
//! configuration: the bundled examples on 127.0.0.1:8080. `host/opbox.example.toml`
//! lists every setting with its default (a test keeps it true).
//!
//! ```toml
//! listen = "127.0.0.1:8080"    # where the HTTP gateway listens
//! # tcp_listen = "127.0.0.1:8081"  # envelopes over TCP (off unless set)
//! # quic_listen = "127.0.0.1:8443" # envelopes over QUIC (off unless set; needs [envelope] tls)
//! # metrics_listen = "127.0.0.1:9090"  # /metrics for anyone (off unless set)
//! data_dir = ".opbox"          # installed plugins, events, key-value database
//! # cache_dir = ".opbox/cache" # compiled plugins (default: data_dir/cache)
//! # keyvalue_path = ".opbox/keyvalue.redb"  # the key-value database
//! examples = true              # serve the bundled example plugins
//! plugin_dirs = ["plugins"]    # load every *.wasm in these directories
//!
//! [limits]                     # host-wide
//! deadline_ms = 30000          # queries and mutations
//! max_instances = 256          # instances alive at once, all plugins together
//! # cpu_lanes = 1              # CPU-bound guests running at once (default: cores - 1)
//! # call_workers = 2           # threads calls run on (default: cores)
//! # tenant_workers = 1         # one tenant's calls running at once (default: call_workers - 1)
//! max_call_depth = 16          # operations calling operations, this deep at most
//! max_nested_calls = 16        # calls one call may have open at once
//! max_operations = 256         # operations one plugin may declare
//! max_schema_bytes = 65536     # per input or output schema
//! max_manifest_bytes = 1048576 # a plugin's whole manifest
//! max_schema_depth = 32        # nesting of a schema
//! max_schema_expansion = 10000 # schema objects with every $ref followed
//! memory_reset = "dirty"       # between calls: copy back the pages written ("copy": all kept)
//! keep_resident_bytes = 4194304 # of each pooled memory, kept mapped between calls
//!
//! [plugin_limits]              # every plugin's limits, unless it has its own
//! memory_bytes = 67108864      # linear memory per instance (64 MiB)
//! table_elements = 10000       # elements per table (function references)
//! cpu_ms = 5000                # guest execution per query or mutation
//! # fuel = 1000000000          # instructions per call (off by default)
//! output_bytes = 4194304       # per call output and per subscription item
//! max_instances = 64           # instances of one plugin alive at once
//! max_subscriptions = 64       # open subscriptions of one plugin
//! item_cpu_ms = 1000           # guest execution per subscription item
//! idle_ms = 60000              # longest wait for the next item
//! log_lines = 1000             # guest log lines kept per call
//!
//! [gateway]
//! max_body_bytes = 1048576     # larger request bodies get 413
//! max_batch = 100              # calls per /batch
//! public_metrics = false       # /metrics for anyone (else: scope `metrics`)
//! # tls = { cert = "cert.pem", key = "key.pem" }  # HTTPS (and wss); reloaded on SIGHUP or change
//!
//! [admin]                      # plugins changed while serving
//! grace_ms = 30000             # subscriptions on a retired version end after this
//! max_plugin_bytes = 67108864  # the largest upload
//! max_uploads = 2              # uploads read at once
//! max_events = 100000          # events the feed keeps
//! max_component_functions = 100000  # more in an upload: refused before compiling
//! compile_memory_bytes = 2147483648 # compiling one upload, in a child process
//! compile_cpu_ms = 60000       # the compiler's CPU time
//! compile_timeout_ms = 60000   # and its wall time
//!
//! [envelope]                   # TCP and WebSocket connections
//! max_frame_bytes = 16777216   # larger frames: INVALID_FRAME, connection closed
//! max_unauthenticated_frame_bytes = 65536  # until a caller is authenticated
//! max_open_calls = 256         # calls open at once on one connection
//! max_queued_bytes = 1048576   # replies waiting for a slow reader
//! idle_timeout_ms = 60000      # no frame and no open call: closed
//! frame_timeout_ms = 10000     # to finish a frame once begun (TCP)
//! # tls = { cert = "cert.pem", key = "key.pem" }  # TLS on tcp_listen, and quic_listen's certificate
//!
//! [connections]                # every listener
//! max_connections = 1024       # open at once, in all
//! max_connections_per_ip = 128 # open at once from one address
//! new_connections_per_ip_per_second = 200  # opened, from one address
//! header_timeout_ms = 10000    # to send request headers; idle connections
//! body_timeout_ms = 30000      # to send a request body
//! write_timeout_ms = 30000     # a peer taking nothing of what is sent
//! max_http2_streams = 128      # requests open at once on one HTTP/2 connection
//!
//! [telemetry]
//! metrics = true               # count calls for /metrics
//! # otlp_endpoint = "http://127.0.0.1:4318"  # export traces (off unless set)
//! service_name = "opbox"       # the traces' service.name
//! sample_ratio = 1.0           # the share of new traces kept
//!
//! [mcp]                        # the MCP server at /mcp
//! enabled = true
//! meta_tools = true            # search, schema, call, subscribe besides one tool per operation
//! max_sessions = 1024          # sessions open at once, all callers together
//! session_idle_ms = 300000     # a session idle this long is closed
//! allowed_hosts = []           # Host headers taken; empty takes any
//!
//! [[tenants]]                  # none by default: every call is UNAUTHORIZED
//! id = "acme"
//! anonymous = false            # callers without a valid token belong here
//! [tenants.quotas]             # see `Quotas`
//! max_concurrent = 64
//! calls_per_second = 100
//! [tenants.plugins]            # what its `plugins:write` callers may install
//! max_plugins = 4              # see `PluginAllowance`
//! [[tenants.tokens]]           # `opbox token new --tenant acme` prints one
//! id = "acme-ci"
//! sha256 = "…"
//! scopes = ["text:read"]
//!
//! [cluster]                    # join other hosts over NATS (off unless set)
//! nats_url = "nats://127.0.0.1:4222"
//! name = "opbox"               # hosts of one name form one cluster
//! # user = "opbox"             # credentials: user and password,
//! # password = "…"
//! # token = "…"                # or a token,
//! # creds_file = "opbox.creds" # or a .creds file (relative to this file)
//! key_file = "cluster.key"     # the secret every host shares (32+ bytes); or `key = "…"`
//! heartbeat_ms = 250           # a running forwarded call says it still is
//! max_forwarded = 1024         # calls other hosts forwarded, running here at once
//!
//! [access."textkit/stats"]     # overrides the scopes an operation requires
//! required_scopes = ["text:read"]
//!
//! [[plugins]]                  # one plugin, with its own settings
//! path = "my-plugin.wasm"      # relative to this file
//! name = "mine"                # mount under another namespace (optional)
//! tenant = "acme"              # only this tenant sees it (default: shared)
//! [plugins.limits]             # overrides [plugin_limits] for this plugin
//! memory_bytes = 16777216
//! [plugins.reuse]              # instances serve many calls (off unless present)
//! max_calls = 1000
//! [plugins.grants]             # nothing is granted unless listed here
//! directory = { path = "notes", read_only = false }  # the plugin's `/`
//! ```
//!
//! The meaning and default of each plugin limit: [`PluginLimits`]; of
//! instance reuse: [`ReuseConfig`](crate::runtime::ReuseConfig); of each
//! tenant quota: [`Quotas`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::call::AccessControl;
use crate::cluster::ClusterConfig;
use crate::dispatch::DispatchConfig;
use crate::envelope::EnvelopeConfig;
use crate::gateway::{GatewayConfig, McpConfig};
use crate::net::ConnectionConfig;
use crate::runtime::{CompileLimits, ManifestLimits, PluginLimits, RuntimeConfig};
use crate::telemetry::trace::{TelemetryConfig, Tracer};
use crate::tenants::{Quotas, TenantConfig};

mod sections;

pub use sections::{
    AdminSection, ConnectionsSection, EnvelopeSection, GatewaySection, LimitsConfig, PluginConfig,
    PluginLimitsConfig,
};

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// The whole host configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Where the HTTP gateway listens.
    pub listen: SocketAddr,
    /// Where the envelope protocol listens over TCP; off when absent.
    pub tcp_listen: Option<SocketAddr>,
    /// Where the envelope protocol listens over QUIC (UDP), with the
    /// certificate of `[envelope] tls`; off when absent.
    pub quic_listen: Option<SocketAddr>,
    /// Where `/metrics` is served to anyone (and nothing else); off when
    /// absent.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the host keeps its data: installed plugins, the event feed,
    /// the key-value database and (unless `cache_dir` says otherwise) the
    /// compiled-plugin cache. One host at a time may use it.
    pub data_dir: PathBuf,
    /// Where compiled plugins are cached; `data_dir/cache` when absent.
    /// Hosts may share it.
    pub cache_dir: Option<PathBuf>,
    /// The key-value database; `data_dir/keyvalue.redb` when absent. Opened
    /// when the first plugin granted `keyvalue` loads.
    pub keyvalue_path: Option<PathBuf>,
    /// Whether to serve the bundled example plugins.
    pub examples: bool,
    /// Directories whose `*.wasm` files are loaded as plugins.
    pub plugin_dirs: Vec<PathBuf>,
    /// Plugins with settings of their own.
    pub plugins: Vec<PluginConfig>,
    /// Host-wide limits.
    pub limits: LimitsConfig,
    /// Every plugin's limits, unless it has its own.
    pub plugin_limits: PluginLimitsConfig,
    /// Gateway settings.
    pub gateway: GatewaySection,
    /// `[admin]`: plugins coming and going while the host runs.
    pub admin: AdminSection,
    /// Limits of envelope connections (TCP and WebSocket).
    pub envelope: EnvelopeSection,
    /// Caps and timeouts of every connection.
    pub connections: ConnectionsSection,
    /// `[telemetry]`: where traces are exported.
    pub telemetry: TelemetryConfig,
    /// `[mcp]`: the MCP server at `/mcp`.
    pub mcp: McpConfig,
    /// The tenants, their tokens and quotas. None by default: every call is
    /// refused until a tenant takes callers.
    pub tenants: Vec<TenantConfig>,
    /// The scopes operations require, by full name, replacing what the
    /// plugin declares.
    pub access: BTreeMap<String, AccessControl>,
    /// `[cluster]`: the NATS this host joins to call and serve other hosts;
    /// a host on its own unless set.
    pub cluster: Option<ClusterConfig>,
    /// Where calls' spans go: nowhere unless set, as `opbox serve` does with
    /// a [`TraceExport`](crate::telemetry::trace::TraceExport) when
    /// `[telemetry] otlp_endpoint` is; not read from the file.
    #[serde(skip)]
    pub tracer: Tracer,
    /// The `opbox` binary, which compiles the components callers bring in
    /// a child process of its own (`opbox compile-component`), bounded by
    /// `[admin]`'s compile limits; `opbox serve` sets it to itself. Without
    /// it they are compiled in the host's process, bounded by their shape
    /// only. Not read from the file.
    #[serde(skip)]
    pub compiler: Option<PathBuf>,
    /// Compile plugins with Winch, wasmtime's baseline compiler, instead
    /// of Cranelift: about a quarter of the compile time, slower code.
    /// `opbox dev` sets it; not read from the file.
    #[serde(skip)]
    pub quick_compile: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tcp_listen: None,
            quic_listen: None,
            metrics_listen: None,
            data_dir: PathBuf::from(".opbox"),
            cache_dir: None,
            keyvalue_path: None,
            examples: true,
            plugin_dirs: Vec::new(),
            plugins: Vec::new(),
            limits: LimitsConfig::default(),
            plugin_limits: PluginLimitsConfig::default(),
            telemetry: TelemetryConfig::default(),
            mcp: McpConfig::default(),
            gateway: GatewaySection::default(),
            admin: AdminSection::default(),
            envelope: EnvelopeSection::default(),
            connections: ConnectionsSection::default(),
            tenants: Vec::new(),
            access: BTreeMap::new(),
            cluster: None,
            tracer: Tracer::default(),
            compiler: None,
            quick_compile: false,
        }
    }
}

/// The line (from 1) of byte `offset` of `text`, and the dotted name of the
/// key set on that line (`limits.deadline_ms`), when the line sets one.
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let before = &text[..offset.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|header| header.trim_matches(['[', ']']).trim().to_owned());
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"').to_owned())
        .filter(|key| !key.is_empty() && !key.starts_with('['));
    let key = match (table, key) {
        (Some(table), Some(key)) => Some(format!("{table}.{key}")),
        (None, key) => key,
        (Some(table), None) => Some(table),
    };
    (line_no, key)
}

impl HostConfig {
    /// Reads a config file; relative paths in it become relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: match e.span() {
                Some(span) => {
                    let (line, key) = locate(&text, span.start);
                    let key = key.map(|key| format!("`{key}` ")).unwrap_or_default();
                    format!("{key}(line {line}): {}", e.message().trim())
                }
                None => e.message().trim().to_owned(),
            },
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        if let Some(path) = &mut config.cache_dir {
            *path = base.join(&*path);
        }
        if let Some(path) = &mut config.keyvalue_path {
            *path = base.join(&*path);
        }
        for dir in &mut config.plugin_dirs {
            *dir = base.join(&*dir);
        }
        for plugin in &mut config.plugins {
            if crate::bundled::named(&plugin.path).is_none() {
                plugin.path = base.join(&plugin.path);
            }
            if let Some(dir) = &mut plugin.grants.directory {
                dir.path = base.join(&dir.path);
            }
        }
        for tls in [&mut config.gateway.tls, &mut config.envelope.tls]
            .into_iter()
            .flatten()
        {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
        }
        if let Some(cluster) = config.cluster.as_mut() {
            for file in [&mut cluster.creds_file, &mut cluster.key_file]
                .into_iter()
                .flatten()
            {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// The runtime settings this configuration asks for.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            max_instances: self.limits.max_instances,
            memory_reset: self.limits.memory_reset,
            keep_resident_bytes: self.limits.keep_resident_bytes,
            quick_compile: self.quick_compile,
            cpu_lanes: self
                .limits
                .cpu_lanes
                .unwrap_or(RuntimeConfig::default().cpu_lanes),
            cache_dir: Some(
                self.cache_dir
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("cache")),
            ),
            keyvalue_path: Some(
                self.keyvalue_path
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("keyvalue.redb")),
            ),
            fuel: self.plugin_limits.fuel.is_some()
                || self.plugins.iter().any(|p| p.limits.fuel.is_some())
                || self.tenants.iter().any(|t| t.plugins.limits.fuel.is_some()),
            manifest: ManifestLimits {
                max_operations: self.limits.max_operations,
                max_schema_bytes: self.limits.max_schema_bytes,
                max_manifest_bytes: self.limits.max_manifest_bytes,
                max_schema_depth: self.limits.max_schema_depth,
                max_schema_expansion: self.limits.max_schema_expansion,
            },
            compile: CompileLimits {
                program: self.compiler.clone(),
                max_functions: self.admin.max_component_functions,
                memory_bytes: self.admin.compile_memory_bytes,
                cpu: Duration::from_millis(self.admin.compile_cpu_ms),
                wall: Duration::from_millis(self.admin.compile_timeout_ms),
                ..CompileLimits::default()
            },
            ..RuntimeConfig::default()
        }
    }

    /// The dispatcher settings this configuration asks for.
    pub fn dispatch(&self) -> DispatchConfig {
        let call_workers = self
            .limits
            .call_workers
            .unwrap_or(DispatchConfig::default().call_workers);
        DispatchConfig {
            default_deadline: Duration::from_millis(self.limits.deadline_ms),
            max_call_depth: self.limits.max_call_depth,
            max_nested_calls: self.limits.max_nested_calls,
            max_input_bytes: self.gateway.max_body_bytes,
            tracer: self.tracer.clone(),
            call_workers,
            tenant_workers: self
                .limits
                .tenant_workers
                .unwrap_or(call_workers.saturating_sub(1).max(1)),
            ..DispatchConfig::default()
        }
    }

    /// The gateway settings this configuration asks for.
    pub fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            max_body_bytes: self.gateway.max_body_bytes,
            max_batch: self.gateway.max_batch,
            public_metrics: self.gateway.public_metrics,
            envelope: self.envelope(),
            connection: self.connection(),
            mcp: self.mcp.clone(),
            ..GatewayConfig::default()
        }
    }

    /// How plugins installed through the admin API are set up.
    pub fn plugin_policy(&self) -> crate::plugins::Policy {
        crate::plugins::Policy {
            defaults: self.plugin_limits(None),
            memory_caps: self
                .tenants
                .iter()
                .filter_map(|t| Some((t.id.clone(), t.quotas.memory_bytes?)))
                .collect(),
            access: self.access.clone(),
            grace: Duration::from_millis(self.admin.grace_ms),
            store_dir: self.data_dir.join("plugins"),
            labels: self
                .cluster
                .as_ref()
                .map(|c| c.labels.clone())
                .unwrap_or_default(),
            max_plugin_bytes: self.admin.max_plugin_bytes,
            max_uploads: self.admin.max_uploads,
        }
    }

    /// The caps and timeouts of every connection this configuration asks for.
    pub fn connection(&self) -> ConnectionConfig {
        let section = &self.connections;
        ConnectionConfig {
            max_connections: section.max_connections,
            max_connections_per_ip: section.max_connections_per_ip,
            new_connections_per_ip_per_second: section.new_connections_per_ip_per_second,
            header_timeout: Duration::from_millis(section.header_timeout_ms),
            body_timeout: Duration::from_millis(section.body_timeout_ms),
            write_timeout: Duration::from_millis(section.write_timeout_ms),
            max_http2_streams: section.max_http2_streams,
        }
    }

    /// The envelope-connection limits this configuration asks for.
    pub fn envelope(&self) -> EnvelopeConfig {
        let section = &self.envelope;
        EnvelopeConfig {
            max_frame_bytes: section.max_frame_bytes,
            max_unauthenticated_frame_bytes: section.max_unauthenticated_frame_bytes,
            max_open_calls: section.max_open_calls,
            max_queued_bytes: section.max_queued_bytes,
            idle_timeout: Duration::from_millis(section.idle_timeout_ms),
            frame_timeout: Duration::from_millis(section.frame_timeout_ms),
        }
    }

    /// What `opbox serve` runs without `--config`: the defaults, plus the
    /// envelope protocol over TCP on 127.0.0.1:8081 and one tenant,
    /// `default`, that takes anonymous callers.
    pub fn demo() -> Self {
        Self {
            tcp_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            tenants: vec![TenantConfig {
                id: crate::call::Identity::DEFAULT_TENANT.to_owned(),
                anonymous: true,
                tokens: Vec::new(),
                quotas: Quotas::default(),
                plugins: crate::tenants::PluginAllowance::default(),
            }],
            gateway: GatewaySection {
                public_metrics: true,
                ..GatewaySection::default()
            },
            ..Self::default()
        }
    }

    /// The limits of a plugin, from its own settings and the defaults,
    /// with its memory capped by its tenant's quota.
    pub fn plugin_limits(&self, plugin: Option<&PluginConfig>) -> PluginLimits {
        let mut limits = self.plugin_limits.apply(PluginLimits::default());
        let Some(plugin) = plugin else {
            return limits;
        };
        limits = plugin.limits.apply(limits);
        let cap = self
            .tenants
            .iter()
            .find(|t| Some(&t.id) == plugin.tenant.as_ref())
            .and_then(|t| t.quotas.memory_bytes);
        if let Some(cap) = cap {
            limits.memory_bytes = limits.memory_bytes.min(cap);
        }
        limits
    }
}
