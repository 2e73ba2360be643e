//! The host configuration, `opbox.toml`.
//!
//! Every field has a default, so an empty file (or none) is a valid
//! configuration: the bundled examples on 127.0.0.1:8080.
//!
//! ```toml
//! listen = "127.0.0.1:8080"    # where the HTTP gateway listens
//! data_dir = ".opbox"          # compiled-plugin cache (and, later, state)
//! examples = true              # serve the bundled example plugins
//! plugin_dirs = ["plugins"]    # load every *.wasm in these directories
//!
//! [limits]                     # defaults for every plugin and call
//! memory_bytes = 67108864      # linear memory per instance (64 MiB)
//! deadline_ms = 30000          # queries and mutations
//! max_instances = 256          # instances alive at once, host-wide
//!
//! [gateway]
//! max_body_bytes = 1048576     # larger request bodies get 413
//! max_batch = 100              # calls per /batch
//!
//! [[plugins]]                  # one plugin, with its own settings
//! path = "my-plugin.wasm"      # relative to this file
//! name = "mine"                # mount under another namespace (optional)
//! memory_bytes = 16777216      # overrides [limits] (optional)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dispatch::DispatchConfig;
use crate::gateway::GatewayConfig;
use crate::runtime::{PluginLimits, RuntimeConfig};

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
    /// Where the host keeps its data (the compiled-plugin cache).
    pub data_dir: PathBuf,
    /// Whether to serve the bundled example plugins.
    pub examples: bool,
    /// Directories whose `*.wasm` files are loaded as plugins.
    pub plugin_dirs: Vec<PathBuf>,
    /// Plugins with settings of their own.
    pub plugins: Vec<PluginConfig>,
    /// Default limits.
    pub limits: LimitsConfig,
    /// Gateway settings.
    pub gateway: GatewaySection,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(".opbox"),
            examples: true,
            plugin_dirs: Vec::new(),
            plugins: Vec::new(),
            limits: LimitsConfig::default(),
            gateway: GatewaySection::default(),
        }
    }
}

/// One plugin and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` file; relative paths are relative to the config file.
    pub path: PathBuf,
    /// The namespace to mount it under, if not its own name.
    #[serde(default)]
    pub name: Option<String>,
    /// Linear memory per instance, overriding `[limits]`.
    #[serde(default)]
    pub memory_bytes: Option<usize>,
}

/// Default limits for every plugin and call.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// The deadline of queries and mutations, in milliseconds.
    pub deadline_ms: u64,
    /// Instances alive at once, across all plugins.
    pub max_instances: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory_bytes: PluginLimits::default().memory_bytes,
            deadline_ms: 30_000,
            max_instances: RuntimeConfig::default().max_instances,
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
}

impl Default for GatewaySection {
    fn default() -> Self {
        let defaults = GatewayConfig::default();
        Self {
            max_body_bytes: defaults.max_body_bytes,
            max_batch: defaults.max_batch,
        }
    }
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
            message: e.message().to_owned()
                + &e.span()
                    .map(|span| format!(" (at byte {})", span.start))
                    .unwrap_or_default(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        for dir in &mut config.plugin_dirs {
            *dir = base.join(&*dir);
        }
        for plugin in &mut config.plugins {
            plugin.path = base.join(&plugin.path);
        }
        Ok(config)
    }

    /// The runtime settings this configuration asks for.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            max_instances: self.limits.max_instances,
            cache_dir: Some(self.data_dir.join("cache")),
            ..RuntimeConfig::default()
        }
    }

    /// The dispatcher settings this configuration asks for.
    pub fn dispatch(&self) -> DispatchConfig {
        DispatchConfig {
            default_deadline: Duration::from_millis(self.limits.deadline_ms),
            ..DispatchConfig::default()
        }
    }

    /// The gateway settings this configuration asks for.
    pub fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            max_body_bytes: self.gateway.max_body_bytes,
            max_batch: self.gateway.max_batch,
            ..GatewayConfig::default()
        }
    }

    /// The limits of a plugin, from its own settings and the defaults.
    pub fn plugin_limits(&self, plugin: Option<&PluginConfig>) -> PluginLimits {
        PluginLimits {
            memory_bytes: plugin
                .and_then(|p| p.memory_bytes)
                .unwrap_or(self.limits.memory_bytes),
            ..PluginLimits::default()
        }
    }
}
