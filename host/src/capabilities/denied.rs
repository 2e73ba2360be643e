//! A plugin reaching for a capability it was not granted: an event for the
//! operator (and the calling tenant), reported once per capability per call
//! however often the guest tries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::call::{Event, SharedObserver};

/// Reports denials of one capability during one call.
#[derive(Debug)]
pub(crate) struct Denial {
    observer: SharedObserver,
    capability: &'static str,
    plugin: Arc<str>,
    tenant: Arc<str>,
    reported: AtomicBool,
}

impl Denial {
    pub(crate) fn new(
        observer: SharedObserver,
        capability: &'static str,
        plugin: Arc<str>,
        tenant: Arc<str>,
    ) -> Self {
        Self {
            observer,
            capability,
            plugin,
            tenant,
            reported: AtomicBool::new(false),
        }
    }

    /// Reports a denial with `detail` (what was asked for), unless this
    /// call reported one for the capability already.
    pub(crate) fn report(&self, detail: Value) {
        if self.reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut fields = json!({ "capability": self.capability });
        if let (Value::Object(fields), Value::Object(detail)) = (&mut fields, detail) {
            fields.extend(detail);
        }
        self.observer.observe(Event {
            kind: "capability.denied",
            tenant: Some(self.tenant.to_string()),
            plugin: Some(self.plugin.to_string()),
            detail: fields,
        });
    }
}
