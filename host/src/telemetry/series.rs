//! The series one ended call updates, found once per label set and kept.
//!
//! A family lookup in `prometheus-client` owns its label set: for every call
//! that meant five to ten `String`s built, hashed with SipHash and dropped,
//! a quarter of the dispatcher's own time for a call that does nothing
//! else. Here a call's labels are looked up borrowed, with a fast hash,
//! and what comes back are handles on the same series the families hold
//! (a `Counter` or `Histogram` clone shares its value), so a scrape reads
//! exactly what was counted.
//!
//! The table is as bounded as the families are: its keys are label sets,
//! whose values come from bounded sets (see the module above).

use std::sync::{Arc, OnceLock, RwLock};

use hashbrown::{Equivalent, HashMap};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{BytesLabels, CallLabels, Metrics, OperationLabels, UNKNOWN};
use crate::call::Finished;

/// The label values of one ended call. Its `Hash` writes the same values in
/// the same order as [`Key`]'s, so either finds the entry.
#[derive(Hash)]
struct Borrowed<'a> {
    operation: &'a str,
    plugin: &'a str,
    tenant: &'a str,
    transport: &'a str,
    code: &'a str,
}

impl<'a> Borrowed<'a> {
    fn of(call: &Finished<'a>) -> Self {
        Self {
            operation: call.operation.unwrap_or(UNKNOWN),
            plugin: call.plugin.unwrap_or(UNKNOWN),
            tenant: call.tenant,
            transport: call.transport,
            code: call.code,
        }
    }
}

#[derive(Hash, PartialEq, Eq)]
struct Key {
    operation: String,
    plugin: String,
    tenant: String,
    transport: String,
    code: String,
}

impl Equivalent<Key> for Borrowed<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.operation == key.operation
            && self.plugin == key.plugin
            && self.tenant == key.tenant
            && self.transport == key.transport
            && self.code == key.code
    }
}

/// Handles on the series a call with one label set updates. Those a call
/// may leave alone (guest time, items, bytes) are fetched on first use, so
/// that a series appears in a scrape only once something was counted in it.
pub(super) struct Series {
    calls: Counter,
    duration: Histogram,
    labels: OperationLabels,
    guest_cpu: OnceLock<Histogram>,
    items: OnceLock<Counter>,
    bytes_in: OnceLock<Counter>,
    bytes_out: OnceLock<Counter>,
}

/// Every label set's [`Series`] met so far.
#[derive(Default)]
pub(super) struct SeriesTable(RwLock<HashMap<Key, Arc<Series>>>);

impl SeriesTable {
    /// The series of `call`'s label set, made (and registered in `metrics`'
    /// families) the first time it is met.
    pub(super) fn of(&self, metrics: &Metrics, call: &Finished<'_>) -> Arc<Series> {
        let borrowed = Borrowed::of(call);
        if let Some(series) = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&borrowed)
        {
            return series.clone();
        }
        let key = Key {
            operation: borrowed.operation.to_owned(),
            plugin: borrowed.plugin.to_owned(),
            tenant: borrowed.tenant.to_owned(),
            transport: borrowed.transport.to_owned(),
            code: borrowed.code.to_owned(),
        };
        let labels = OperationLabels {
            operation: key.operation.clone(),
            plugin: key.plugin.clone(),
            tenant: key.tenant.clone(),
        };
        let calls = metrics.calls.get_or_create_owned(&CallLabels {
            operation: key.operation.clone(),
            plugin: key.plugin.clone(),
            tenant: key.tenant.clone(),
            transport: key.transport.clone(),
            code: key.code.clone(),
        });
        let duration = metrics.durations.get_or_create_owned(&labels);
        let series = Arc::new(Series {
            calls,
            duration,
            labels,
            guest_cpu: OnceLock::new(),
            items: OnceLock::new(),
            bytes_in: OnceLock::new(),
            bytes_out: OnceLock::new(),
        });
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_insert(series)
            .clone()
    }
}

impl Series {
    /// Counts `call` in every series it touches.
    pub(super) fn record(&self, metrics: &Metrics, call: &Finished<'_>) {
        self.calls.inc();
        self.duration.observe(call.duration.as_secs_f64());
        if let Some(cpu) = call.guest_cpu {
            self.guest_cpu
                .get_or_init(|| metrics.guest_cpu.get_or_create_owned(&self.labels))
                .observe(cpu.as_secs_f64());
        }
        if call.items > 0 {
            self.items
                .get_or_init(|| metrics.items.get_or_create_owned(&self.labels))
                .inc_by(call.items);
        }
        let (bytes_in, bytes_out) = call.bytes;
        for (direction, series, bytes) in [
            ("in", &self.bytes_in, bytes_in),
            ("out", &self.bytes_out, bytes_out),
        ] {
            if bytes > 0 {
                series
                    .get_or_init(|| {
                        let labels = BytesLabels {
                            operation: self.labels.operation.clone(),
                            plugin: self.labels.plugin.clone(),
                            tenant: self.labels.tenant.clone(),
                            direction,
                        };
                        metrics.bytes.get_or_create_owned(&labels)
                    })
                    .inc_by(bytes);
            }
        }
    }
}
