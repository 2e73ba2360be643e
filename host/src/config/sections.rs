//! The sections of `opbox.toml` and how each becomes the settings of the
//! layer it configures.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::capabilities::Grants;
use crate::dispatch::DispatchConfig;
use crate::envelope::EnvelopeConfig;
use crate::gateway::GatewayConfig;
use crate::net::{ConnectionConfig, TlsConfig};
pub use crate::runtime::PluginLimitsConfig;
use crate::runtime::{
    CompileLimits, KEEP_RESIDENT_BYTES, ManifestLimits, MemoryReset, ReuseConfig, RuntimeConfig,
};

/// Limits of envelope connections: see [`EnvelopeConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvelopeSection {
    /// The largest envelope accepted, in bytes.
    pub max_frame_bytes: usize,
    /// The largest envelope accepted before a caller is authenticated.
    pub max_unauthenticated_frame_bytes: usize,
    /// Calls open at once on one connection.
    pub max_open_calls: usize,
    /// Bytes of replies queued for a peer before the connection waits.
    pub max_queued_bytes: usize,
    /// How long a connection with no open call may send nothing.
    pub idle_timeout_ms: u64,
    /// How long a peer may take to finish a frame it has begun.
    pub frame_timeout_ms: u64,
    /// TLS on the TCP listener (`tcp_listen`); plain TCP without. Envelopes
    /// over WebSocket ride the gateway's TLS.
    pub tls: Option<TlsConfig>,
}

impl Default for EnvelopeSection {
    fn default() -> Self {
        let defaults = EnvelopeConfig::default();
        Self {
            max_frame_bytes: defaults.max_frame_bytes,
            max_unauthenticated_frame_bytes: defaults.max_unauthenticated_frame_bytes,
            max_open_calls: defaults.max_open_calls,
            max_queued_bytes: defaults.max_queued_bytes,
            idle_timeout_ms: millis(defaults.idle_timeout),
            frame_timeout_ms: millis(defaults.frame_timeout),
            tls: None,
        }
    }
}

/// Caps and timeouts of every connection: see [`ConnectionConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsSection {
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_ip: usize,
    /// New connections a second from one peer address (0: any).
    pub new_connections_per_ip_per_second: u32,
    /// The time a peer has to send a request's headers.
    pub header_timeout_ms: u64,
    /// The time a peer has to send a request's body.
    pub body_timeout_ms: u64,
    /// How long a peer may leave what the host sends it unread.
    pub write_timeout_ms: u64,
    /// Requests open at once on one HTTP/2 connection.
    pub max_http2_streams: u32,
}

impl Default for ConnectionsSection {
    fn default() -> Self {
        let defaults = ConnectionConfig::default();
        Self {
            max_connections: defaults.max_connections,
            max_connections_per_ip: defaults.max_connections_per_ip,
            new_connections_per_ip_per_second: defaults.new_connections_per_ip_per_second,
            header_timeout_ms: millis(defaults.header_timeout),
            body_timeout_ms: millis(defaults.body_timeout),
            write_timeout_ms: millis(defaults.write_timeout),
            max_http2_streams: defaults.max_http2_streams,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One plugin and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` file; relative paths are relative to the config file.
    /// `bundled:NAME` is one of the examples built into the binary
    /// (`bundled:echo`, `bundled:ticker`, `bundled:textkit`).
    pub path: PathBuf,
    /// The namespace to mount it under, if not its own name.
    #[serde(default)]
    pub name: Option<String>,
    /// The tenant that owns it and alone sees it; shared when absent.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Limits of this plugin, overriding `[plugin_limits]`.
    #[serde(default)]
    pub limits: PluginLimitsConfig,
    /// What this plugin may use beyond computing; nothing by default.
    #[serde(default)]
    pub grants: Grants,
    /// Whether an instance may serve more than one call (`[plugins.reuse]`):
    /// fresh instances when absent.
    #[serde(default)]
    pub reuse: Option<ReuseConfig>,
}

/// Host-wide limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The deadline of queries and mutations, in milliseconds.
    pub deadline_ms: u64,
    /// Instances alive at once, across all plugins.
    pub max_instances: u32,
    /// CPU-bound guests running at once; the other executor workers stay
    /// free for short calls. `None`: one fewer than the machine's cores.
    pub cpu_lanes: Option<usize>,
    /// Threads calls run on, apart from those serving connections.
    /// `None`: as many as the machine has cores.
    pub call_workers: Option<usize>,
    /// Calls of one tenant running on the call workers at once; the other
    /// workers stay free for other tenants. `None`: one fewer than
    /// `call_workers`, at least one.
    pub tenant_workers: Option<usize>,
    /// The deepest chain of calls operations may make to each other.
    pub max_call_depth: u32,
    /// Calls and subscriptions one call may have open at once.
    pub max_nested_calls: u32,
    /// Operations one plugin may declare.
    pub max_operations: usize,
    /// Bytes of one input or output schema.
    pub max_schema_bytes: usize,
    /// Bytes of a plugin's whole manifest.
    pub max_manifest_bytes: usize,
    /// Nesting of one schema.
    pub max_schema_depth: usize,
    /// Schema objects in a schema with its `$ref`s followed.
    pub max_schema_expansion: u64,
    /// How a pooled instance's memory is made clean between calls.
    pub memory_reset: MemoryReset,
    /// Bytes at the bottom of each pooled memory kept mapped and reset in
    /// place between calls.
    pub keep_resident_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let dispatch = DispatchConfig::default();
        let manifest = ManifestLimits::default();
        Self {
            deadline_ms: 30_000,
            max_instances: RuntimeConfig::default().max_instances,
            cpu_lanes: None,
            call_workers: None,
            tenant_workers: None,
            max_call_depth: dispatch.max_call_depth,
            max_nested_calls: dispatch.max_nested_calls,
            max_operations: manifest.max_operations,
            max_schema_bytes: manifest.max_schema_bytes,
            max_manifest_bytes: manifest.max_manifest_bytes,
            max_schema_depth: manifest.max_schema_depth,
            max_schema_expansion: manifest.max_schema_expansion,
            memory_reset: MemoryReset::default(),
            keep_resident_bytes: KEEP_RESIDENT_BYTES,
        }
    }
}

/// Gateway settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The most calls in one `/batch`.
    pub max_batch: usize,
    /// Whether anyone may read `/metrics`; otherwise callers need the
    /// scope `metrics`. The demo (no configuration file) says yes.
    pub public_metrics: bool,
    /// TLS on the gateway's listener; plain HTTP without.
    pub tls: Option<TlsConfig>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        let defaults = GatewayConfig::default();
        Self {
            max_body_bytes: defaults.max_body_bytes,
            max_batch: defaults.max_batch,
            public_metrics: false,
            tls: None,
        }
    }
}

/// Plugins installed, replaced and removed through the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// How long a subscription on a replaced or removed plugin version may
    /// run on before it ends with `UNAVAILABLE`, in milliseconds.
    pub grace_ms: u64,
    /// The largest component an install or replace may bring, by any
    /// route, in bytes.
    pub max_plugin_bytes: usize,
    /// Components brought in at once (read, decoded and compiled), all
    /// routes and callers together.
    pub max_uploads: usize,
    /// Events the feed keeps; older ones are deleted as new ones come.
    pub max_events: u64,
    /// Functions a component brought through the API may hold, across its
    /// core modules; more is refused before compiling.
    pub max_component_functions: u64,
    /// The memory compiling one such component may take, in bytes.
    pub compile_memory_bytes: u64,
    /// The CPU time compiling one may take, in milliseconds (counted in
    /// whole seconds, at least one).
    pub compile_cpu_ms: u64,
    /// How long compiling one may take, in milliseconds; never past the
    /// install's deadline.
    pub compile_timeout_ms: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        let compile = CompileLimits::default();
        Self {
            grace_ms: 30_000,
            max_plugin_bytes: 64 << 20,
            max_uploads: 2,
            max_component_functions: compile.max_functions,
            compile_memory_bytes: compile.memory_bytes,
            compile_cpu_ms: millis(compile.cpu),
            compile_timeout_ms: millis(compile.wall),
            max_events: 100_000,
        }
    }
}
