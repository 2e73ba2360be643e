//! Metrics: what every plugin, operation and tenant does, in the Prometheus
//! text format (`GET /metrics`), kept with `prometheus-client`.
//!
//! [`Metrics`] is an [`Observer`]: the dispatcher tells it of every call
//! that ends, and the event feed's events (traps, limit hits, quota
//! refusals, denied capabilities, plugin changes) count here too. Gauges
//! (live instances, open subscriptions) are read when scraped.
//!
//! Every label value comes from a bounded set: operations and plugins that
//! exist (a name a caller invents is counted as `unknown`), configured
//! tenants, the host's own codes, trap kinds, limits and capabilities. A
//! plugin's domain error codes are its own choice, so they count as
//! `DOMAIN`.

mod series;
pub mod trace;

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::call::{Event, Finished, Happening, Observer, Transport};

/// Call durations' bucket bounds, in seconds: 10 µs to 30 s.
const DURATION_BUCKETS: [f64; 20] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label value of a name nobody offers.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    plugin: String,
    tenant: String,
    transport: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
    plugin: String,
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    /// The tenant that owns it, or `shared`.
    owner: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrapLabels {
    plugin: String,
    trap: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    plugin: String,
    limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    tenant: String,
    quota: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    plugin: String,
    capability: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    operation: String,
    plugin: String,
    tenant: String,
    /// `in` (the input) or `out` (the output, a subscription's items).
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: String,
}

/// What gauges read at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Each plugin serving now: its name, its owner (a tenant, or
    /// `shared`), its live instances and open subscriptions.
    pub plugins: Vec<(String, String, u64, u64)>,
    /// Instances alive across the host.
    pub instances: u64,
}

type Sampler = Box<dyn Fn() -> Sample + Send + Sync>;

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    durations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    guest_cpu: Family<OperationLabels, Histogram, fn() -> Histogram>,
    items: Family<OperationLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    connections: Family<TransportLabels, Gauge>,
    traps: Family<TrapLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    quota_refusals: Family<QuotaLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    changes: Family<ChangeLabels, Counter>,
    events_dropped: Counter,
    live_instances: Family<PluginLabels, Gauge>,
    open_subscriptions: Family<PluginLabels, Gauge>,
    instances: Gauge,
    sampler: OnceLock<Sampler>,
    /// Each ended call's series by label set, to count it without
    /// building its labels.
    series: series::SeriesTable,
    /// Each family's name, as its `# TYPE` line gives it.
    families: Vec<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut families = Vec::new();
        let calls = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_calls",
            "Calls ended, by operation, plugin, tenant, transport and result code",
            calls.clone(),
        );
        let durations: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        families.push("opbox_call_duration_seconds".to_owned());
        registry.register_with_unit(
            "opbox_call_duration",
            "Calls' wall time, from admission to the answer (a subscription: to its end)",
            Unit::Seconds,
            durations.clone(),
        );
        let guest_cpu: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        families.push("opbox_guest_cpu_seconds".to_owned());
        registry.register_with_unit(
            "opbox_guest_cpu",
            "Time a plugin's guest ran for a call (its nested calls counted as their own)",
            Unit::Seconds,
            guest_cpu.clone(),
        );
        let items = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_subscription_items",
            "Items subscriptions sent, by operation",
            items.clone(),
        );
        let bytes = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_call_bytes",
            "Bytes of JSON calls took in and gave out (a subscription's items), by operation",
            bytes.clone(),
        );
        let connections = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_envelope_connections",
            "Envelope connections open now, by transport",
            connections.clone(),
        );
        let traps = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_traps",
            "Calls that trapped, by plugin and trap kind",
            traps.clone(),
        );
        let limit_hits = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_limit_hits",
            "Calls stopped by a limit, by plugin and limit",
            limit_hits.clone(),
        );
        let quota_refusals = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_quota_refusals",
            "Calls refused by a tenant's quota, by tenant and quota",
            quota_refusals.clone(),
        );
        let denials = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_capability_denials",
            "Uses of capabilities a plugin was not granted (once per capability per call)",
            denials.clone(),
        );
        let changes = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_plugin_changes",
            "Plugins installed, replaced, removed, and changes refused",
            changes.clone(),
        );
        let events_dropped = Counter::default();
        register(
            &mut registry,
            &mut families,
            "opbox_events_dropped",
            "Events the feed could not keep up with",
            events_dropped.clone(),
        );
        let live_instances = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_live_instances",
            "Instances of each plugin alive now",
            live_instances.clone(),
        );
        let open_subscriptions = Family::default();
        register(
            &mut registry,
            &mut families,
            "opbox_open_subscriptions",
            "Subscriptions of each plugin open now",
            open_subscriptions.clone(),
        );
        let instances = Gauge::default();
        register(
            &mut registry,
            &mut families,
            "opbox_instance_pool_in_use",
            "Instances alive now across the host (the pool is [limits] max_instances)",
            instances.clone(),
        );
        Self {
            registry,
            calls,
            durations,
            guest_cpu,
            items,
            bytes,
            connections,
            traps,
            limit_hits,
            quota_refusals,
            denials,
            changes,
            events_dropped,
            live_instances,
            open_subscriptions,
            instances,
            sampler: OnceLock::new(),
            series: series::SeriesTable::default(),
            families,
        }
    }

    /// The name of every family, as `# TYPE` lines give them (a counter's
    /// samples add `_total`, a histogram's `_bucket`, `_count` and `_sum`).
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// Sets what gauges read at each scrape (once).
    pub fn sample_with(&self, sampler: impl Fn() -> Sample + Send + Sync + 'static) {
        let _ = self.sampler.set(Box::new(sampler));
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        if let Some(sampler) = self.sampler.get() {
            let sample = sampler();
            self.live_instances.clear();
            self.open_subscriptions.clear();
            for (plugin, owner, live, open) in sample.plugins {
                let labels = PluginLabels { plugin, owner };
                self.live_instances
                    .get_or_create(&labels)
                    .set(i64::try_from(live).unwrap_or(i64::MAX));
                self.open_subscriptions
                    .get_or_create(&labels)
                    .set(i64::try_from(open).unwrap_or(i64::MAX));
            }
            self.instances
                .set(i64::try_from(sample.instances).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Registers `metric` as `name`, and keeps the name.
fn register(
    registry: &mut Registry,
    families: &mut Vec<String>,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    families.push(name.to_owned());
    registry.register(name, help, metric);
}

fn label(value: Option<&str>) -> String {
    value.unwrap_or(UNKNOWN).to_owned()
}

impl Observer for Metrics {
    fn observe(&self, event: Event) {
        let plugin = || label(event.plugin.as_deref());
        match &event.what {
            Happening::CallTrapped { trap, .. } => {
                let labels = TrapLabels {
                    plugin: plugin(),
                    trap: trap.clone(),
                };
                self.traps.get_or_create(&labels).inc();
            }
            Happening::LimitHit { limit, .. } => {
                let labels = LimitLabels {
                    plugin: plugin(),
                    limit: limit.clone(),
                };
                self.limit_hits.get_or_create(&labels).inc();
            }
            Happening::QuotaRefused { quota, .. } => {
                let labels = QuotaLabels {
                    tenant: label(event.tenant.as_deref()),
                    quota: quota.clone(),
                };
                self.quota_refusals.get_or_create(&labels).inc();
            }
            Happening::CapabilityDenied { capability, .. } => {
                let labels = DenialLabels {
                    plugin: plugin(),
                    capability: capability.clone(),
                };
                self.denials.get_or_create(&labels).inc();
            }
            Happening::EventsDropped { count } => {
                self.events_dropped.inc_by(*count);
            }
            Happening::PluginInstalled(_)
            | Happening::PluginReplaced { .. }
            | Happening::PluginRemoved(_)
            | Happening::PluginRefused { .. } => {
                let change = event.what.kind().trim_start_matches("plugin.");
                let labels = ChangeLabels {
                    change: change.to_owned(),
                };
                self.changes.get_or_create(&labels).inc();
            }
        }
    }

    fn finished(&self, call: &Finished<'_>) {
        self.series.of(self, call).record(self, call);
    }

    fn connection(&self, transport: Transport, open: bool) {
        let gauge = self.connections.get_or_create(&TransportLabels {
            transport: transport.as_str(),
        });
        if open {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }
}

/// A shared [`Metrics`].
pub type SharedMetrics = Arc<Metrics>;
