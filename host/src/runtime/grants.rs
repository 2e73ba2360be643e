//! What an operator grants one plugin beyond computing. Everything is denied
//! unless granted: a plugin with no grants has clocks, random numbers and
//! its captured stdout and stderr, nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The capabilities of one plugin (`[plugins.grants]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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

/// One entry of `allowed_outbound_hosts`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: String,
    /// Lowercase; `*.example.com` for any subdomain of `example.com`.
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(pattern: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{pattern}` is not a valid outbound host: {why}");
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| bad("write it as scheme://host[:port]"))?;
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, "*")) => (host, None),
            Some((host, port)) => (host, Some(port.parse().map_err(|_| bad("bad port"))?)),
            None => (rest, Some(default_port)),
        };
        let name = host.strip_prefix("*.").unwrap_or(host);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            return Err(bad(
                "bad host name (no paths, no wildcards but a leading `*.`)",
            ));
        }
        Ok(Self {
            scheme: scheme.to_owned(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl HostPattern {
    /// Whether a request to `scheme://host:port` (host in lowercase) is
    /// allowed by this pattern.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host_ok = match self.host.strip_prefix('*') {
            Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
            None => host == self.host,
        };
        self.scheme == scheme && host_ok && self.port.is_none_or(|p| p == port)
    }

    /// Whether the pattern names an address (`http://127.0.0.1:*`) rather
    /// than a host name: such a grant means that address, wherever it is.
    pub fn names_address(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

/// The outbound HTTP policy of a plugin, ready to apply.
#[derive(Debug, Clone)]
pub struct OutboundGrant {
    /// Where requests may go; empty: nowhere.
    pub hosts: std::sync::Arc<[HostPattern]>,
    /// The longest wait to connect, for the first byte and between bytes.
    pub timeout: std::time::Duration,
    /// The largest response body.
    pub max_response_bytes: u64,
    /// Whether host names may resolve to addresses inside the host's own
    /// networks.
    pub allow_internal: bool,
    /// The plugin's exchanges open now, all calls together.
    pub in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    /// Exchanges one call may have open at once.
    pub max_requests_per_call: u32,
}

/// A key-value store granted to a plugin, with its quota per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyvalueGrant {
    /// Bytes of keys and values together.
    pub max_bytes: u64,
    /// Keys, all buckets together.
    pub max_keys: u64,
}

impl Default for KeyvalueGrant {
    fn default() -> Self {
        Self {
            max_bytes: 16 << 20,
            max_keys: 100_000,
        }
    }
}

/// A configuration value that is never displayed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// A host directory granted to a plugin, opened with cap-std: the plugin
/// cannot reach outside it, whether by `..`, an absolute path or a symlink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryGrant {
    /// The directory on the host; relative to the config file.
    pub path: PathBuf,
    /// Whether the plugin may only read.
    #[serde(default)]
    pub read_only: bool,
}

/// What callers may learn of a plugin's grants (`services/plugin`): which
/// capabilities it has, never host paths or values.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
            timeout: std::time::Duration::from_millis(self.outbound_timeout_ms.unwrap_or(30_000)),
            max_response_bytes: self.outbound_max_response_bytes.unwrap_or(64 << 20),
            allow_internal: self.outbound_allow_internal,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(
                self.outbound_max_requests.unwrap_or(64) as usize,
            )),
            max_requests_per_call: self.outbound_max_requests_per_call.unwrap_or(8),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, scheme: &str, host: &str, port: u16) -> bool {
        pattern
            .parse::<HostPattern>()
            .unwrap()
            .matches(scheme, host, port)
    }

    #[test]
    fn host_patterns_match_scheme_host_and_port() {
        assert!(allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            443
        ));
        assert!(!allows(
            "https://api.example.com",
            "http",
            "api.example.com",
            80
        ));
        assert!(!allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            8443
        ));
        assert!(!allows("https://api.example.com", "https", "evil.com", 443));
        assert!(!allows(
            "https://api.example.com",
            "https",
            "api.example.com.evil.com",
            443
        ));
        assert!(allows("http://127.0.0.1:*", "http", "127.0.0.1", 8080));
        assert!(!allows("http://127.0.0.1:*", "http", "localhost", 8080));
        assert!(allows("http://127.0.0.1:9000", "http", "127.0.0.1", 9000));
        assert!(!allows("http://127.0.0.1:9000", "http", "127.0.0.1", 9001));
        assert!(allows(
            "https://*.example.com",
            "https",
            "a.b.example.com",
            443
        ));
        assert!(!allows(
            "https://*.example.com",
            "https",
            "example.com",
            443
        ));
        assert!(!allows(
            "https://*.example.com",
            "https",
            "notexample.com",
            443
        ));
        assert!(allows(
            "HTTPS://API.Example.com".to_lowercase().as_str(),
            "https",
            "api.example.com",
            443
        ));
    }

    #[test]
    fn bad_host_patterns_are_refused() {
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://",
            "https://a*.com",
            "http://x.com:port",
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }
}
