//! What happened in the host that an operator (or a tenant, of its own)
//! wants to know of: a plugin installed, replaced, refused or removed; a
//! call that trapped or hit a limit; a capability denied; a quota refusal.
//!
//! Layers report events to an [`Observer`]; the host's is the persistent
//! event feed (`store::EventLog`).

use std::sync::Arc;

use serde_json::Value;

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

/// Takes events as they happen. It must not block: it is called on the
/// path of calls.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Records `event`.
    fn observe(&self, event: Event);
}

/// An observer that drops every event: for hosts and tests without a feed.
#[derive(Debug, Default)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn observe(&self, _event: Event) {}
}

/// A shared observer.
pub type SharedObserver = Arc<dyn Observer>;
