//! What a tenant's own callers may install: the checks of a tenant's
//! [`PluginAllowance`] against an install or a replace.
//!
//! The host operator (scope `admin`) is not held to an allowance; a caller
//! holding `plugins:write` is, for its own tenant's plugins. A refusal
//! names the rule it broke, as the config spells it.

use crate::capabilities::{Grants, OutboundDefaults};
use crate::runtime::{PluginLimits, PluginLimitsConfig};
use crate::tenants::PluginAllowance;

/// A rule of an allowance that a change breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The rule, as the config names it (`max_plugins`, `limits.cpu_ms`,
    /// `grants.keyvalue`, …).
    pub rule: String,
    /// What is wrong, for a person.
    pub message: String,
}

fn refuse(rule: &str, message: String) -> Refusal {
    Refusal {
        rule: rule.to_owned(),
        message,
    }
}

/// What the tenant holds now, besides the plugin being changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holding {
    /// Plugins installed through the API.
    pub plugins: usize,
    /// Bytes of their components and compiled code.
    pub bytes: u64,
}

/// Checks a new component of `bytes` bytes, with `limits` and `grants` as
/// given, against `allowance`, given what the tenant already `holds`
/// (without the version a replace retires). `install` counts it as one
/// more plugin. A limit the allowance sets no ceiling for has the host's
/// `defaults` as its ceiling.
pub fn check(
    allowance: &PluginAllowance,
    defaults: &PluginLimits,
    holds: Holding,
    install: bool,
    bytes: u64,
    limits: &PluginLimitsConfig,
    grants: &Grants,
) -> Result<(), Refusal> {
    if install && holds.plugins >= allowance.max_plugins {
        return Err(refuse(
            "max_plugins",
            format!(
                "this tenant may have {} plugin(s) installed at once",
                allowance.max_plugins
            ),
        ));
    }
    if holds.bytes.saturating_add(bytes) > allowance.max_bytes {
        return Err(refuse(
            "max_bytes",
            format!(
                "this tenant's components and their compiled code may take {} bytes in all; this one would make {}",
                allowance.max_bytes,
                holds.bytes.saturating_add(bytes)
            ),
        ));
    }
    let ceilings = or_defaults(&allowance.limits, defaults);
    for (name, asked, ceiling) in limit_pairs(limits, &ceilings) {
        if let (Some(asked), Some(ceiling)) = (asked, ceiling)
            && asked > ceiling
        {
            return Err(refuse(
                &format!("limits.{name}"),
                format!("`{name}` may be at most {ceiling} for this tenant's plugins"),
            ));
        }
    }
    check_grants(allowance, grants)
}

fn check_grants(allowance: &PluginAllowance, grants: &Grants) -> Result<(), Refusal> {
    if grants.directory.is_some() {
        return Err(refuse(
            "grants.directory",
            "a tenant's plugins are never granted a host directory".into(),
        ));
    }
    if grants.outbound_allow_internal {
        return Err(refuse(
            "grants.outbound_allow_internal",
            "a tenant's plugins never reach the host's internal addresses".into(),
        ));
    }
    if let Some(asked) = grants.keyvalue {
        let Some(ceiling) = allowance.keyvalue.ceiling() else {
            return Err(refuse(
                "grants.keyvalue",
                "this tenant's plugins may not be granted `keyvalue`".into(),
            ));
        };
        for (name, asked, ceiling) in [
            ("max_bytes", asked.max_bytes, ceiling.max_bytes),
            ("max_keys", asked.max_keys, ceiling.max_keys),
        ] {
            if asked > ceiling {
                return Err(refuse(
                    &format!("grants.keyvalue.{name}"),
                    format!("`keyvalue.{name}` may be at most {ceiling} for this tenant's plugins"),
                ));
            }
        }
    }
    let outbound = [
        (
            "outbound_timeout_ms",
            grants.outbound_timeout_ms,
            OutboundDefaults::TIMEOUT_MS,
        ),
        (
            "outbound_max_response_bytes",
            grants.outbound_max_response_bytes,
            OutboundDefaults::MAX_RESPONSE_BYTES,
        ),
        (
            "outbound_max_requests",
            grants.outbound_max_requests.map(u64::from),
            u64::from(OutboundDefaults::MAX_REQUESTS),
        ),
        (
            "outbound_max_requests_per_call",
            grants.outbound_max_requests_per_call.map(u64::from),
            u64::from(OutboundDefaults::MAX_REQUESTS_PER_CALL),
        ),
    ];
    for (name, asked, ceiling) in outbound {
        if asked.is_some_and(|asked| asked > ceiling) {
            return Err(refuse(
                &format!("grants.{name}"),
                format!("`{name}` may be at most {ceiling} for this tenant's plugins"),
            ));
        }
    }
    if let Some(host) = grants
        .allowed_outbound_hosts
        .iter()
        .find(|host| !allowance.outbound_hosts.contains(host))
    {
        return Err(refuse(
            "grants.allowed_outbound_hosts",
            format!("this tenant's plugins may not be granted `{host}`"),
        ));
    }
    Ok(())
}

/// `limits` with every limit the ceiling sets held to it: what a tenant's
/// plugin gets for the limits it does not set itself.
pub fn hold_to(limits: PluginLimits, ceiling: &PluginLimitsConfig) -> PluginLimits {
    let min = |value: u64, cap: Option<u64>| cap.map_or(value, |cap| value.min(cap));
    let min_usize = |value: usize, cap: Option<usize>| cap.map_or(value, |cap| value.min(cap));
    let min_u32 = |value: u32, cap: Option<u32>| cap.map_or(value, |cap| value.min(cap));
    PluginLimits {
        memory_bytes: min_usize(limits.memory_bytes, ceiling.memory_bytes),
        table_elements: min_u32(limits.table_elements, ceiling.table_elements),
        cpu_ms: min(limits.cpu_ms, ceiling.cpu_ms),
        fuel: match (limits.fuel, ceiling.fuel) {
            (Some(fuel), Some(cap)) => Some(fuel.min(cap)),
            (fuel, cap) => fuel.or(cap),
        },
        output_bytes: min_usize(limits.output_bytes, ceiling.output_bytes),
        max_instances: min_u32(limits.max_instances, ceiling.max_instances),
        max_subscriptions: min_u32(limits.max_subscriptions, ceiling.max_subscriptions),
        item_cpu_ms: min(limits.item_cpu_ms, ceiling.item_cpu_ms),
        idle_ms: min(limits.idle_ms, ceiling.idle_ms),
        log_lines: min_u32(limits.log_lines, ceiling.log_lines),
        ..limits
    }
}

/// The ceilings of `allowance`, each it leaves out the host's default.
/// `fuel` only ever holds a plugin back, so it has no default ceiling.
fn or_defaults(allowance: &PluginLimitsConfig, defaults: &PluginLimits) -> PluginLimitsConfig {
    PluginLimitsConfig {
        memory_bytes: allowance.memory_bytes.or(Some(defaults.memory_bytes)),
        table_elements: allowance.table_elements.or(Some(defaults.table_elements)),
        cpu_ms: allowance.cpu_ms.or(Some(defaults.cpu_ms)),
        fuel: allowance.fuel,
        output_bytes: allowance.output_bytes.or(Some(defaults.output_bytes)),
        max_instances: allowance.max_instances.or(Some(defaults.max_instances)),
        max_subscriptions: allowance
            .max_subscriptions
            .or(Some(defaults.max_subscriptions)),
        item_cpu_ms: allowance.item_cpu_ms.or(Some(defaults.item_cpu_ms)),
        idle_ms: allowance.idle_ms.or(Some(defaults.idle_ms)),
        log_lines: allowance.log_lines.or(Some(defaults.log_lines)),
    }
}

/// Each limit's name, the value asked and the ceiling, as `u64`s.
fn limit_pairs(
    asked: &PluginLimitsConfig,
    ceiling: &PluginLimitsConfig,
) -> [(&'static str, Option<u64>, Option<u64>); 10] {
    let wide = |v: Option<usize>| v.map(|v| u64::try_from(v).unwrap_or(u64::MAX));
    let from32 = |v: Option<u32>| v.map(u64::from);
    [
        (
            "memory_bytes",
            wide(asked.memory_bytes),
            wide(ceiling.memory_bytes),
        ),
        (
            "table_elements",
            from32(asked.table_elements),
            from32(ceiling.table_elements),
        ),
        ("cpu_ms", asked.cpu_ms, ceiling.cpu_ms),
        ("fuel", asked.fuel, ceiling.fuel),
        (
            "output_bytes",
            wide(asked.output_bytes),
            wide(ceiling.output_bytes),
        ),
        (
            "max_instances",
            from32(asked.max_instances),
            from32(ceiling.max_instances),
        ),
        (
            "max_subscriptions",
            from32(asked.max_subscriptions),
            from32(ceiling.max_subscriptions),
        ),
        ("item_cpu_ms", asked.item_cpu_ms, ceiling.item_cpu_ms),
        ("idle_ms", asked.idle_ms, ceiling.idle_ms),
        (
            "log_lines",
            from32(asked.log_lines),
            from32(ceiling.log_lines),
        ),
    ]
}
