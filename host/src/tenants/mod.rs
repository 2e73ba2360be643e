//! Tenants: who a caller is, what it may see, and how much it may use.
//!
//! Every caller is an [`Identity`] of one tenant. A bearer token resolves to
//! the identity the config gives it; the host keeps only the tokens' SHA-256
//! hashes. A caller without a valid token is anonymous, and anonymous
//! callers are refused (`UNAUTHORIZED`) unless one tenant takes them
//! (`anonymous = true`). Each tenant sees its own plugins and the shared
//! ones, and is admitted against its own [`Quotas`].
//!
//! ```toml
//! [[tenants]]
//! id = "acme"
//! anonymous = false            # callers without a valid token belong here
//! [tenants.quotas]
//! max_concurrent = 64
//! calls_per_second = 100
//! [[tenants.tokens]]
//! id = "acme-ci"               # the caller id plugins and logs see
//! sha256 = "9f86d081…"         # `opbox token new` prints it
//! scopes = ["text:read"]
//! ```

mod allowance;
mod quota;
mod token;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

pub use allowance::{KeyvalueAllowance, PluginAllowance};
pub use quota::Admission;
pub use quota::Quotas;
pub(crate) use quota::Usage;
pub use token::{TOKEN_PREFIX, TokenHash, hash_token, hash_token_hex, new_token, parse_hash};

use crate::call::Identity;
use crate::call::is_valid_segment;
use crate::call::{CallError, ErrorCode};

/// One tenant in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's id: `[a-z0-9_-]+`.
    pub id: String,
    /// Whether callers without a valid token belong to this tenant. At most
    /// one tenant may say so.
    #[serde(default)]
    pub anonymous: bool,
    /// The tenant's tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// The tenant's quotas.
    #[serde(default)]
    pub quotas: Quotas,
    /// What its callers holding `plugins:write` may install.
    #[serde(default)]
    pub plugins: PluginAllowance,
}

/// One bearer token of a tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token: the caller id that logs and plugins see.
    pub id: String,
    /// The SHA-256 of the token, in hex.
    pub sha256: String,
    /// What the holder may do.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Why the tenants of a config cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantsError {
    /// A tenant id is not `[a-z0-9_-]+`.
    #[error("`{0}` is not a valid tenant id ([a-z0-9_-]+)")]
    InvalidId(String),
    /// Two tenants have one id.
    #[error("tenant `{0}` is configured twice")]
    Duplicate(String),
    /// More than one tenant takes anonymous callers.
    #[error("tenants `{0}` and `{1}` both take anonymous callers; at most one may")]
    TwoAnonymous(String, String),
    /// A tenant's `calls_per_second` is not a positive number.
    #[error("tenant `{0}`: calls_per_second must be a positive number")]
    InvalidRate(String),
    /// A token's hash is not 64 hex digits.
    #[error("token `{token}` of tenant `{tenant}`: sha256 must be 64 hex digits")]
    InvalidHash {
        /// The tenant.
        tenant: String,
        /// The token's id.
        token: String,
    },
    /// Two tokens have one hash.
    #[error("token `{token}` of tenant `{tenant}` has the same hash as another token")]
    DuplicateToken {
        /// The tenant.
        tenant: String,
        /// The token's id.
        token: String,
    },
}

/// A tenant as the host runs it.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub(crate) quotas: Quotas,
    pub(crate) allowance: PluginAllowance,
    pub(crate) usage: Usage,
}

/// Every tenant of a host, and the tokens that name them.
#[derive(Debug)]
pub struct Tenants {
    tenants: HashMap<String, Arc<Tenant>>,
    tokens: HashMap<TokenHash, Identity>,
    anonymous: Option<Identity>,
}

impl Tenants {
    /// The tenants of a config. `max_instances` is the host's instance pool,
    /// shared evenly among tenants whose quotas do not say otherwise.
    pub fn new(configs: &[TenantConfig], max_instances: u32) -> Result<Self, TenantsError> {
        let fair_share = max_instances / u32::try_from(configs.len().max(1)).unwrap_or(u32::MAX);
        let mut tenants = HashMap::new();
        let mut tokens = HashMap::new();
        let mut anonymous: Option<Identity> = None;
        for config in configs {
            if !is_valid_segment(&config.id) {
                return Err(TenantsError::InvalidId(config.id.clone()));
            }
            let rate = config.quotas.calls_per_second;
            if rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
                return Err(TenantsError::InvalidRate(config.id.clone()));
            }
            let tenant = Tenant {
                quotas: config.quotas.clone(),
                allowance: config.plugins.clone(),
                usage: Usage::new(&config.quotas, fair_share),
            };
            if tenants
                .insert(config.id.clone(), Arc::new(tenant))
                .is_some()
            {
                return Err(TenantsError::Duplicate(config.id.clone()));
            }
            if config.anonymous {
                if let Some(other) = &anonymous {
                    return Err(TenantsError::TwoAnonymous(
                        other.tenant.clone(),
                        config.id.clone(),
                    ));
                }
                anonymous = Some(Identity::anonymous_of(&config.id));
            }
            for token in &config.tokens {
                let hash = parse_hash(&token.sha256).ok_or_else(|| TenantsError::InvalidHash {
                    tenant: config.id.clone(),
                    token: token.id.clone(),
                })?;
                let identity = Identity {
                    id: Some(token.id.clone()),
                    tenant: config.id.clone(),
                    scopes: token.scopes.clone(),
                };
                if tokens.insert(hash, identity).is_some() {
                    return Err(TenantsError::DuplicateToken {
                        tenant: config.id.clone(),
                        token: token.id.clone(),
                    });
                }
            }
        }
        Ok(Self {
            tenants,
            tokens,
            anonymous,
        })
    }

    /// Who presents `token` (a bearer token, or none). Unknown tokens are
    /// anonymous; anonymous callers are `UNAUTHORIZED` unless a tenant takes
    /// them.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, CallError> {
        if let Some(identity) = token.and_then(|token| self.tokens.get(&hash_token(token))) {
            return Ok(identity.clone());
        }
        self.anonymous.clone().ok_or_else(|| {
            CallError::new(
                ErrorCode::Unauthorized,
                "this host requires a valid bearer token",
            )
        })
    }

    /// The configured tenants' ids.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// Whether `tenant` is configured.
    pub fn contains(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// What `tenant`'s own callers may install for it.
    pub fn allowance(&self, tenant: &str) -> Option<&PluginAllowance> {
        self.tenants.get(tenant).map(|t| &t.allowance)
    }

    /// A tenant's quotas.
    pub fn quotas(&self, tenant: &str) -> Option<&Quotas> {
        self.tenants.get(tenant).map(|t| &t.quotas)
    }

    /// Admits a query or mutation from a caller of `tenant`, as the
    /// dispatcher does for every call from the wire: a concurrency slot and
    /// a token from the rate bucket, held until the returned value is
    /// dropped.
    pub fn admit_call(&self, tenant: &str) -> Result<Admission, CallError> {
        let tenant = self.get(tenant).ok_or_else(|| {
            CallError::new(ErrorCode::Unauthorized, "the caller's tenant is unknown")
        })?;
        tenant.usage.admit_call()
    }

    pub(crate) fn get(&self, tenant: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, anonymous: bool, tokens: Vec<TokenConfig>) -> TenantConfig {
        TenantConfig {
            id: id.into(),
            anonymous,
            tokens,
            quotas: Quotas::default(),
            plugins: PluginAllowance::default(),
        }
    }

    fn token(id: &str, secret: &str, scopes: &[&str]) -> TokenConfig {
        TokenConfig {
            id: id.into(),
            sha256: hash_token_hex(secret),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn tokens_resolve_to_their_identity_and_others_are_anonymous() {
        let tenants = Tenants::new(
            &[
                tenant("acme", false, vec![token("ci", "s3cret", &["read"])]),
                tenant("public", true, vec![]),
            ],
            256,
        )
        .unwrap();
        let ci = tenants.authenticate(Some("s3cret")).unwrap();
        assert_eq!(
            (ci.id.as_deref(), &*ci.tenant, &ci.scopes[..]),
            (Some("ci"), "acme", &["read".to_owned()][..])
        );
        for other in [None, Some("wrong"), Some("")] {
            let anonymous = tenants.authenticate(other).unwrap();
            assert_eq!((anonymous.id, &*anonymous.tenant), (None, "public"));
        }
    }

    #[test]
    fn without_an_anonymous_tenant_no_token_is_unauthorized() {
        let tenants = Tenants::new(&[tenant("acme", false, vec![])], 256).unwrap();
        let error = tenants.authenticate(None).unwrap_err();
        assert_eq!(error.code, ErrorCode::Unauthorized);
        assert!(!error.message.contains("acme"));
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = [
            vec![tenant("Acme", false, vec![])],
            vec![tenant("a", false, vec![]), tenant("a", false, vec![])],
            vec![tenant("a", true, vec![]), tenant("b", true, vec![])],
            vec![TenantConfig {
                quotas: Quotas {
                    calls_per_second: Some(0.0),
                    ..Quotas::default()
                },
                plugins: PluginAllowance::default(),
                ..tenant("a", false, vec![])
            }],
            vec![tenant(
                "a",
                false,
                vec![TokenConfig {
                    id: "t".into(),
                    sha256: "nothex".into(),
                    scopes: vec![],
                }],
            )],
            vec![tenant(
                "a",
                false,
                vec![token("t", "same", &[]), token("u", "same", &[])],
            )],
        ];
        for configs in bad {
            assert!(Tenants::new(&configs, 256).is_err(), "{configs:?}");
        }
    }
}
