//! Who a plugin may send HTTP requests to: the parsed
//! `allowed_outbound_hosts`, and the policy built from a plugin's grants.

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
