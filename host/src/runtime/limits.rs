//! What one plugin may use, per call and at once.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits applied to one plugin. Every field has a default; operators
/// override them for all plugins (`[plugin_limits]`) or one (`[plugins.limits]`).
///
/// | field | default | when hit |
/// |---|---|---|
/// | `memory_bytes` | 64 MiB of linear memory per instance | `RESOURCE_EXHAUSTED` |
/// | `table_elements` | 10,000 elements per table (function references) | `RESOURCE_EXHAUSTED` |
/// | `cpu_ms` | 5,000 ms of guest execution per query or mutation | `TIMEOUT` |
/// | `fuel` | none: no instruction budget (turning it on costs every call some speed) | `RESOURCE_EXHAUSTED` |
/// | `output_bytes` | 4 MiB per call output and per subscription item | `RESOURCE_EXHAUSTED` |
/// | `max_instances` | 64 instances of this plugin alive at once, for each calling tenant | `RESOURCE_EXHAUSTED` |
/// | `max_subscriptions` | 64 open subscriptions of this plugin, for each calling tenant | `RESOURCE_EXHAUSTED` |
/// | `item_cpu_ms` | 1,000 ms of guest execution per subscription item | `TIMEOUT` |
/// | `idle_ms` | 60,000 ms without an item ends a subscription | `TIMEOUT` |
/// | `output_capture_bytes` | 64 KiB of stdout and of stderr kept per call | (the rest is dropped) |
/// | `log_lines` | 1,000 log lines per call | (the rest is counted and dropped) |
///
/// CPU limits count time spent running guest code, in epoch ticks; time the
/// guest spends waiting in a host call counts against deadlines only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PluginLimits {
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Elements of any one table of an instance.
    pub table_elements: u32,
    /// Guest execution per query or mutation, in milliseconds.
    pub cpu_ms: u64,
    /// Wasm instructions (fuel units) per call, if bounded.
    pub fuel: Option<u64>,
    /// Largest output of a call, and largest item of a subscription, in bytes.
    pub output_bytes: usize,
    /// Instances of this plugin alive at once, for each calling tenant.
    pub max_instances: u32,
    /// Open subscriptions of this plugin, for each calling tenant.
    pub max_subscriptions: u32,
    /// Guest execution allowed to produce one subscription item, in milliseconds.
    pub item_cpu_ms: u64,
    /// Longest wait for the next subscription item, in milliseconds.
    pub idle_ms: u64,
    /// Guest stdout and stderr kept per call (each); the rest is counted and
    /// dropped.
    pub output_capture_bytes: usize,
    /// Log lines kept per call; the rest are counted and dropped.
    pub log_lines: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            table_elements: 10_000,
            cpu_ms: 5_000,
            fuel: None,
            output_bytes: 4 << 20,
            max_instances: 64,
            max_subscriptions: 64,
            item_cpu_ms: 1_000,
            idle_ms: 60_000,
            output_capture_bytes: 64 << 10,
            log_lines: 1_000,
        }
    }
}

/// A limit that ended a call, with its configured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    /// The limit's name, as in the configuration (`cpu_ms`, `memory_bytes`, …).
    pub limit: &'static str,
    /// Its value, in the unit of its name.
    pub value: u64,
    time: bool,
}

impl LimitHit {
    /// A resource limit (memory, fuel, sizes, counts).
    pub(crate) fn new(limit: &'static str, value: impl TryInto<u64>) -> Self {
        Self {
            limit,
            value: value.try_into().unwrap_or(u64::MAX),
            time: false,
        }
    }

    /// A time limit, given in milliseconds.
    pub(crate) fn time(limit: &'static str, value: Duration) -> Self {
        Self {
            time: true,
            ..Self::new(limit, value.as_millis())
        }
    }

    /// Whether this is a time limit (answered `TIMEOUT`) rather than a
    /// resource limit (answered `RESOURCE_EXHAUSTED`).
    pub fn is_time(&self) -> bool {
        self.time
    }
}

/// What a plugin's calls lost to caps, summed over its life.
#[derive(Debug, Default)]
pub(crate) struct Dropped {
    pub(crate) log_lines: AtomicU64,
    pub(crate) output_bytes: AtomicU64,
}

/// What one plugin has open right now, counted per calling tenant: each
/// tenant has the plugin's whole `max_instances` and `max_subscriptions` to
/// itself, so a tenant filling its share never refuses another. (A tenant's
/// own plugins are called by that tenant alone; for a shared plugin this is
/// what keeps tenants apart. The host-wide and per-tenant instance caps
/// bound the sum.)
#[derive(Debug)]
pub(crate) struct Occupancy {
    limits: (u32, u32),
    shares: Mutex<HashMap<String, Arc<Share>>>,
}

/// One tenant's share of a plugin.
#[derive(Debug)]
struct Share {
    instances: Arc<Semaphore>,
    subscriptions: Arc<Semaphore>,
}

impl Occupancy {
    pub(crate) fn new(limits: &PluginLimits) -> Self {
        Self {
            limits: (limits.max_instances, limits.max_subscriptions),
            shares: Mutex::default(),
        }
    }

    /// `tenant`'s share, made on its first call. Tenants are the host's
    /// configured ones, so the map stays small.
    fn share(&self, tenant: &str) -> Arc<Share> {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(share) = shares.get(tenant) {
            return share.clone();
        }
        let share = Arc::new(Share {
            instances: Arc::new(Semaphore::new(self.limits.0 as usize)),
            subscriptions: Arc::new(Semaphore::new(self.limits.1 as usize)),
        });
        shares.insert(tenant.to_owned(), share.clone());
        share
    }

    /// A slot for one more instance for `tenant`, or the limit that is
    /// full. Never waits: a full plugin answers at once instead of queueing
    /// without bound.
    pub(crate) fn instance(&self, tenant: &str) -> Result<OwnedSemaphorePermit, LimitHit> {
        self.share(tenant)
            .instances
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitHit::new("max_instances", self.limits.0))
    }

    /// A slot for one more open subscription for `tenant`, or the limit
    /// that is full.
    pub(crate) fn subscription(&self, tenant: &str) -> Result<OwnedSemaphorePermit, LimitHit> {
        self.share(tenant)
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitHit::new("max_subscriptions", self.limits.1))
    }

    /// Instances alive for `tenant`, or for every tenant.
    pub(crate) fn instances_in_use(&self, tenant: Option<&str>) -> u32 {
        self.sum(tenant, |share| in_use(&share.instances, self.limits.0))
    }

    /// Subscriptions open for `tenant`, or for every tenant.
    pub(crate) fn subscriptions_open(&self, tenant: Option<&str>) -> u32 {
        self.sum(tenant, |share| in_use(&share.subscriptions, self.limits.1))
    }

    fn sum(&self, tenant: Option<&str>, count: impl Fn(&Share) -> u32) -> u32 {
        let shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        shares
            .iter()
            .filter(|(owner, _)| tenant.is_none_or(|tenant| tenant == owner.as_str()))
            .map(|(_, share)| count(share))
            .sum()
    }
}

fn in_use(slots: &Semaphore, total: u32) -> u32 {
    total.saturating_sub(u32::try_from(slots.available_permits()).unwrap_or(u32::MAX))
}

/// Plugin limits as written in the configuration: each one optional, falling
/// back to `[plugin_limits]` and then to [`PluginLimits::default`].
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimitsConfig {
    /// See [`PluginLimits::memory_bytes`].
    pub memory_bytes: Option<usize>,
    /// See [`PluginLimits::table_elements`].
    pub table_elements: Option<u32>,
    /// See [`PluginLimits::cpu_ms`].
    pub cpu_ms: Option<u64>,
    /// See [`PluginLimits::fuel`].
    pub fuel: Option<u64>,
    /// See [`PluginLimits::output_bytes`].
    pub output_bytes: Option<usize>,
    /// See [`PluginLimits::max_instances`].
    pub max_instances: Option<u32>,
    /// See [`PluginLimits::max_subscriptions`].
    pub max_subscriptions: Option<u32>,
    /// See [`PluginLimits::item_cpu_ms`].
    pub item_cpu_ms: Option<u64>,
    /// See [`PluginLimits::idle_ms`].
    pub idle_ms: Option<u64>,
    /// See [`PluginLimits::log_lines`].
    pub log_lines: Option<u32>,
}

impl PluginLimitsConfig {
    /// `base` with every limit this section sets replaced.
    pub fn apply(&self, base: PluginLimits) -> PluginLimits {
        PluginLimits {
            memory_bytes: self.memory_bytes.unwrap_or(base.memory_bytes),
            table_elements: self.table_elements.unwrap_or(base.table_elements),
            cpu_ms: self.cpu_ms.unwrap_or(base.cpu_ms),
            fuel: self.fuel.or(base.fuel),
            output_bytes: self.output_bytes.unwrap_or(base.output_bytes),
            max_instances: self.max_instances.unwrap_or(base.max_instances),
            max_subscriptions: self.max_subscriptions.unwrap_or(base.max_subscriptions),
            item_cpu_ms: self.item_cpu_ms.unwrap_or(base.item_cpu_ms),
            idle_ms: self.idle_ms.unwrap_or(base.idle_ms),
            output_capture_bytes: base.output_capture_bytes,
            log_lines: self.log_lines.unwrap_or(base.log_lines),
        }
    }
}
