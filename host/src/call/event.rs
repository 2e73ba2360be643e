//! What happened in the host that an operator (or a tenant, of its own)
//! wants to know of: a plugin installed, replaced, refused or removed; a
//! call that trapped or hit a limit; a capability denied; a quota refusal.
//!
//! Layers report events to an [`Observer`]; the host's is the persistent
//! event feed (`store::EventLog`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Transport;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What kind of thing: `plugin.installed`, `plugin.replaced`,
    /// `plugin.removed`, `plugin.refused`, `call.trapped`, `limit.hit`,
    /// `capability.denied`, `quota.refused`.
    pub kind: &'static str,
    /// The tenant it belongs to: the plugin's for a change, the caller's
    /// for a call. `None`: the host's (a shared plugin's change), seen by
    /// the operator only.
    pub tenant: Option<String>,
    /// The plugin it concerns, if one.
    pub plugin: Option<String>,
    /// The rest, by kind. Never a secret, a host path or another tenant's
    /// name.
    pub detail: Value,
}

impl Event {
    /// The longest text an event keeps of a name (tenant, plugin).
    pub const MAX_NAME_BYTES: usize = 256;
    /// The longest text an event keeps of any string in its detail.
    pub const MAX_TEXT_BYTES: usize = 1024;
    /// The most items an event keeps of any list in its detail.
    pub const MAX_ITEMS: usize = 32;

    /// This event, with every string cut and every list shortened to the
    /// bounds above: what the feed keeps, whatever a caller named.
    pub fn bounded(mut self) -> Self {
        let cut_name = |name: &mut String| {
            let kept = super::cut(name, Self::MAX_NAME_BYTES).len();
            name.truncate(kept);
        };
        if let Some(tenant) = &mut self.tenant {
            cut_name(tenant);
        }
        if let Some(plugin) = &mut self.plugin {
            cut_name(plugin);
        }
        bound(&mut self.detail, 0);
        self
    }
}

/// `value` cut to [`Event`]'s bounds, nested no deeper than 8 levels.
fn bound(value: &mut Value, depth: usize) {
    match value {
        Value::String(text) => {
            let kept = super::cut(text, Event::MAX_TEXT_BYTES).len();
            text.truncate(kept);
        }
        Value::Array(items) => {
            items.truncate(if depth < 8 { Event::MAX_ITEMS } else { 0 });
            items.iter_mut().for_each(|item| bound(item, depth + 1));
        }
        Value::Object(fields) => {
            let mut kept = 0;
            fields.retain(|key, _| {
                let keep =
                    depth < 8 && kept < Event::MAX_ITEMS && key.len() <= Event::MAX_NAME_BYTES;
                kept += usize::from(keep);
                keep
            });
            fields
                .values_mut()
                .for_each(|field| bound(field, depth + 1));
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A call that ended, as metrics count it. Every field is from a bounded
/// set: a name nobody offers is `None`.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The operation, when it exists for the caller's tenant.
    pub operation: Option<&'a str>,
    /// The plugin serving it (the namespace of a host operation).
    pub plugin: Option<&'a str>,
    /// The caller's tenant.
    pub tenant: &'a str,
    /// How it arrived: [`crate::call::Origin::label`].
    pub transport: &'static str,
    /// `ok`, a host error code, or `DOMAIN` for a plugin's own error.
    pub code: &'a str,
    /// Items a subscription sent.
    pub items: u64,
    /// From admission to the answer; a subscription's, to its end.
    pub duration: Duration,
    /// Time the plugin's guest ran for the call (nested calls are their
    /// own); `None` when no guest ran.
    pub guest_cpu: Option<Duration>,
    /// Bytes of JSON the call took in and gave out (a subscription's items
    /// all together), its nested calls' excluded.
    pub bytes: (u64, u64),
}

/// Takes events as they happen. It must not block: it is called on the
/// path of calls.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Records `event`.
    fn observe(&self, event: Event);

    /// Records a call that ended.
    fn finished(&self, _call: &Finished<'_>) {}

    /// Records an envelope connection on `transport` opening (`true`) or
    /// closing.
    fn connection(&self, _transport: Transport, _open: bool) {}
}

/// Counts an envelope connection as open until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    observer: SharedObserver,
    transport: Transport,
}

impl OpenConnection {
    /// Tells `observer` a connection on `transport` opened.
    pub fn new(observer: SharedObserver, transport: Transport) -> Self {
        observer.connection(transport, true);
        Self {
            observer,
            transport,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.observer.connection(self.transport, false);
    }
}

/// Several observers, each told of everything.
#[derive(Debug, Default)]
pub struct Fanout(pub Vec<SharedObserver>);

impl Observer for Fanout {
    fn observe(&self, event: Event) {
        if let Some((last, rest)) = self.0.split_last() {
            for observer in rest {
                observer.observe(event.clone());
            }
            last.observe(event);
        }
    }

    fn finished(&self, call: &Finished<'_>) {
        for observer in &self.0 {
            observer.finished(call);
        }
    }

    fn connection(&self, transport: Transport, open: bool) {
        for observer in &self.0 {
            observer.connection(transport, open);
        }
    }
}

/// An observer that drops every event: for hosts and tests without a feed.
#[derive(Debug, Default)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn observe(&self, _event: Event) {}
}

/// A shared observer.
pub type SharedObserver = Arc<dyn Observer>;
