//! A plugin reaching for a capability it was not granted: an event for the
//! operator (and the calling tenant), reported once per capability per call
//! however often the guest tries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::call::{Event, Happening, SharedObserver};

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

    /// Reports a denial of what was `asked` for, unless this call
    /// reported one for the capability already.
    pub(crate) fn report(&self, asked: Asked) {
        if self.reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let (bucket, target) = match asked {
            Asked::Nothing => (None, None),
            Asked::Bucket(bucket) => (Some(bucket), None),
            Asked::Target(target) => (None, Some(target)),
        };
        self.observer.observe(Event {
            what: Happening::CapabilityDenied {
                capability: self.capability.to_owned(),
                bucket,
                target,
            },
            tenant: Some(self.tenant.to_string()),
            plugin: Some(self.plugin.to_string()),
        });
    }
}

/// What a denied plugin asked for, as its event says.
#[derive(Debug)]
pub(crate) enum Asked {
    /// The capability itself.
    Nothing,
    /// A key-value bucket, by name.
    Bucket(String),
    /// An outbound address.
    Target(String),
}
