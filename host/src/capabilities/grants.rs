//! What an operator grants one plugin beyond computing (`[plugins.grants]`):
//! one field (or a few) per capability, each of the capability's own type.
//! Everything is denied unless granted: a plugin with no grants has clocks,
//! random numbers and its captured stdout and stderr, nothing else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::Secret;
use super::files::DirectoryGrant;
use super::http::{HostPattern, OutboundGrant};
use super::keyvalue::KeyvalueGrant;

/// What an outbound grant gets for the settings it leaves out; for a
/// tenant's own plugins, also the most it may ask for.
#[derive(Debug)]
pub struct OutboundDefaults;

impl OutboundDefaults {
    /// `outbound_timeout_ms`.
    pub const TIMEOUT_MS: u64 = 30_000;
    /// `outbound_max_response_bytes`.
    pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;
    /// `outbound_max_requests`.
    pub const MAX_REQUESTS: u32 = 64;
    /// `outbound_max_requests_per_call`.
    pub const MAX_REQUESTS_PER_CALL: u32 = 8;
}

/// The capabilities of one plugin (`[plugins.grants]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// A host directory the plugin sees as its filesystem root (`/`).
    pub directory: Option<DirectoryGrant>,
    /// Values the plugin reads through `wasi:config/store`.
    pub config: Option<BTreeMap<String, String>>,
    /// Values the plugin reads through `wasi:config/store` too, never shown
    /// in logs, errors or `services/plugin`.
    pub secrets: Option<BTreeMap<String, Secret>>,
    /// A persistent key-value store (`wasi:keyvalue`), one per tenant.
    pub keyvalue: Option<KeyvalueGrant>,
    /// Where the plugin may send HTTP requests (`wasi:http`):
    /// `https://api.example.com` (that host, the scheme's port),
    /// `http://127.0.0.1:*` (any port), `https://*.example.com` (any
    /// subdomain).
    pub allowed_outbound_hosts: Vec<String>,
    /// The longest wait, in milliseconds, to connect, for the first byte of
    /// a response and between its bytes; 30,000 when absent.
    pub outbound_timeout_ms: Option<u64>,
    /// The largest response body, in bytes; 64 MiB when absent.
    pub outbound_max_response_bytes: Option<u64>,
    /// Whether a granted host name may resolve to an address inside the
    /// host's own networks (loopback, link-local, private). Off: only
    /// patterns that name an address reach such addresses.
    pub outbound_allow_internal: bool,
    /// Exchanges the plugin may have open at once, all calls together; 64
    /// when absent.
    pub outbound_max_requests: Option<u32>,
    /// Exchanges one call may have open at once; 8 when absent.
    pub outbound_max_requests_per_call: Option<u32>,
}

/// What callers may learn of a plugin's grants (`services/plugin`): which
/// capabilities it has, never host paths or values.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct GrantSummary {
    /// `"read-only"` or `"read-write"` when a directory is granted.
    pub directory: Option<&'static str>,
    /// The configuration keys granted (values and secrets alike), when
    /// configuration is granted.
    pub config: Option<Vec<String>>,
    /// The key-value quota, when a store is granted.
    pub keyvalue: Option<KeyvalueSummary>,
    /// Where outbound HTTP requests may go.
    pub allowed_outbound_hosts: Vec<String>,
}

/// A key-value grant as callers may see it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct KeyvalueSummary {
    /// Bytes of keys and values together, per tenant.
    pub max_bytes: u64,
    /// Keys, per tenant.
    pub max_keys: u64,
}

impl Grants {
    /// The grants, as callers may see them.
    pub fn summary(&self) -> GrantSummary {
        GrantSummary {
            directory: self.directory.as_ref().map(|dir| {
                if dir.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            }),
            config: self.config_granted().then(|| {
                let keys = self.config.iter().flat_map(BTreeMap::keys);
                let secret_keys = self.secrets.iter().flat_map(BTreeMap::keys);
                keys.chain(secret_keys).cloned().collect()
            }),
            keyvalue: self.keyvalue.map(|kv| KeyvalueSummary {
                max_bytes: kv.max_bytes,
                max_keys: kv.max_keys,
            }),
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
        }
    }

    /// The outbound HTTP policy, or why an `allowed_outbound_hosts` entry is
    /// not valid.
    pub fn outbound(&self) -> Result<OutboundGrant, String> {
        let hosts = self
            .allowed_outbound_hosts
            .iter()
            .map(|pattern| pattern.parse())
            .collect::<Result<Vec<HostPattern>, String>>()?;
        Ok(OutboundGrant {
            hosts: hosts.into(),
            timeout: std::time::Duration::from_millis(
                self.outbound_timeout_ms
                    .unwrap_or(OutboundDefaults::TIMEOUT_MS),
            ),
            max_response_bytes: self
                .outbound_max_response_bytes
                .unwrap_or(OutboundDefaults::MAX_RESPONSE_BYTES),
            allow_internal: self.outbound_allow_internal,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(
                self.outbound_max_requests
                    .unwrap_or(OutboundDefaults::MAX_REQUESTS) as usize,
            )),
            max_requests_per_call: self
                .outbound_max_requests_per_call
                .unwrap_or(OutboundDefaults::MAX_REQUESTS_PER_CALL),
        })
    }

    /// Whether `wasi:config/store` answers this plugin.
    pub fn config_granted(&self) -> bool {
        self.config.is_some() || self.secrets.is_some()
    }

    /// The configuration value of `key`, whether a plain value or a secret.
    pub fn config_value(&self, key: &str) -> Option<&str> {
        let value = self.config.as_ref().and_then(|c| c.get(key));
        let secret = || self.secrets.as_ref().and_then(|s| s.get(key));
        value
            .map(String::as_str)
            .or_else(|| secret().map(Secret::expose))
    }

    /// Every configuration value, secrets included.
    pub fn config_values(&self) -> Vec<(String, String)> {
        let values = self
            .config
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()));
        let secrets = self
            .secrets
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()));
        values.chain(secrets).collect()
    }
}
