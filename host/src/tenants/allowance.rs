//! What a tenant's own callers may install for it: the operator's policy
//! for callers holding the scope `plugins:write`.

use serde::Deserialize;

use crate::runtime::PluginLimitsConfig;

/// `[tenants.plugins]`: what callers of the tenant holding `plugins:write`
/// may install for it through the admin API. The default allows nothing
/// (`max_plugins = 0`).
///
/// ```toml
/// [tenants.plugins]
/// max_plugins = 4                # installed at once
/// max_bytes = 67108864           # their components, all together
/// keyvalue = true                # may grant `keyvalue`
/// outbound_hosts = ["https://api.example.com"]  # grants may name these
/// [tenants.plugins.limits]       # the ceiling of each plugin limit
/// memory_bytes = 33554432
/// ```
///
/// A limit a tenant's plugin does not set is the lower of the host's
/// default and the ceiling; one it sets above the ceiling is refused.
/// A tenant's plugins are never granted a host directory nor internal
/// outbound addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginAllowance {
    /// Plugins the tenant may have installed through the API at once.
    pub max_plugins: usize,
    /// Bytes of their components, all together.
    pub max_bytes: u64,
    /// The ceiling of each limit.
    pub limits: PluginLimitsConfig,
    /// Whether they may be granted `keyvalue`.
    pub keyvalue: bool,
    /// The outbound host patterns they may be granted, each as written here.
    pub outbound_hosts: Vec<String>,
}

impl Default for PluginAllowance {
    fn default() -> Self {
        Self {
            max_plugins: 0,
            max_bytes: 64 << 20,
            limits: PluginLimitsConfig::default(),
            keyvalue: false,
            outbound_hosts: Vec::new(),
        }
    }
}
