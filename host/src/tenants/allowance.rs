//! What a tenant's own callers may install for it: the operator's policy
//! for callers holding the scope `plugins:write`.

use serde::Deserialize;

use crate::capabilities::keyvalue::KeyvalueGrant;
use crate::runtime::PluginLimitsConfig;

/// `[tenants.plugins]`: what callers of the tenant holding `plugins:write`
/// may install for it through the admin API. The default allows nothing
/// (`max_plugins = 0`).
///
/// ```toml
/// [tenants.plugins]
/// max_plugins = 4                # installed at once
/// max_bytes = 67108864           # their components, all together
/// keyvalue = true                # may grant `keyvalue`, up to its default quota
/// # keyvalue = { max_bytes = 1048576, max_keys = 1000 }  # or up to this one
/// outbound_hosts = ["https://api.example.com"]  # grants may name these
/// [tenants.plugins.limits]       # the ceiling of each plugin limit
/// memory_bytes = 33554432
/// ```
///
/// A limit a tenant's plugin does not set is the lower of the host's
/// default and the ceiling; one it sets above the ceiling is refused. A
/// limit the allowance gives no ceiling has the host's default
/// (`[plugin_limits]`) as its ceiling, and the outbound grant's settings
/// theirs ([`OutboundDefaults`](crate::capabilities::OutboundDefaults)):
/// a tenant may lower what the operator set, never raise it.
/// A tenant's plugins are never granted a host directory nor internal
/// outbound addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginAllowance {
    /// Plugins the tenant may have installed through the API at once.
    pub max_plugins: usize,
    /// Bytes of their components and their compiled code, all together.
    pub max_bytes: u64,
    /// The ceiling of each limit.
    pub limits: PluginLimitsConfig,
    /// Whether they may be granted `keyvalue`, and its largest quota.
    pub keyvalue: KeyvalueAllowance,
    /// The outbound host patterns they may be granted, each as written here.
    pub outbound_hosts: Vec<String>,
}

impl Default for PluginAllowance {
    fn default() -> Self {
        Self {
            max_plugins: 0,
            max_bytes: 64 << 20,
            limits: PluginLimitsConfig::default(),
            keyvalue: KeyvalueAllowance::Allowed(false),
            outbound_hosts: Vec::new(),
        }
    }
}

/// `keyvalue` in `[tenants.plugins]`: `false` (the default) refuses the
/// grant; `true` allows it up to the grant's default quota; a table
/// (`{ max_bytes, max_keys }`) up to that quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum KeyvalueAllowance {
    /// Allowed up to the default quota, or not at all.
    Allowed(bool),
    /// Allowed up to this quota.
    UpTo(KeyvalueGrant),
}

impl KeyvalueAllowance {
    /// The largest quota a grant may ask for; `None`: no grant at all.
    pub fn ceiling(self) -> Option<KeyvalueGrant> {
        match self {
            Self::Allowed(false) => None,
            Self::Allowed(true) => Some(KeyvalueGrant::default()),
            Self::UpTo(quota) => Some(quota),
        }
    }
}
