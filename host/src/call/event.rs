//! What happened in the host that an operator (or a tenant, of its own)
//! wants to know of: a plugin installed, replaced, refused or removed; a
//! call that trapped or hit a limit; a capability denied; a quota refusal.
//!
//! Layers report events to an [`Observer`]; the host's is the persistent
//! event feed (`store::EventLog`).

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Transport;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened, with what the event says of it.
    pub what: Happening,
    /// The tenant it belongs to: the plugin's for a change, the caller's
    /// for a call. `None`: the host's (a shared plugin's change), seen by
    /// the operator only.
    pub tenant: Option<String>,
    /// The plugin it concerns, if one.
    pub plugin: Option<String>,
}

/// What happened, by kind (`kind` in the feed), with its `detail`. Never a
/// secret, a host path or another tenant's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "detail")]
pub enum Happening {
    /// A plugin was installed.
    #[serde(rename = "plugin.installed")]
    PluginInstalled(Version),
    /// A plugin was replaced by a new version.
    #[serde(rename = "plugin.replaced")]
    PluginReplaced {
        /// The version now serving.
        #[serde(flatten)]
        now: Version,
        /// The version it replaced.
        from: Version,
        /// Whether the compatibility gate was skipped.
        forced: bool,
    },
    /// A plugin was removed.
    #[serde(rename = "plugin.removed")]
    PluginRemoved(Version),
    /// A change was refused.
    #[serde(rename = "plugin.refused")]
    PluginRefused {
        /// `install`, `replace` or `remove`.
        action: String,
        /// Why, in the words its caller got.
        reason: String,
    },
    /// A call's guest trapped.
    #[serde(rename = "call.trapped")]
    CallTrapped {
        /// The operation called.
        operation: String,
        /// The kind of trap.
        trap: String,
        /// The plugin's version.
        version: Option<String>,
    },
    /// A call hit one of its plugin's limits.
    #[serde(rename = "limit.hit")]
    LimitHit {
        /// The operation called.
        operation: String,
        /// The limit's name.
        limit: String,
        /// The limit's value.
        value: Option<u64>,
    },
    /// A call was refused by one of its tenant's quotas.
    #[serde(rename = "quota.refused")]
    QuotaRefused {
        /// The operation called.
        operation: String,
        /// The quota's name.
        quota: String,
        /// The quota's value.
        value: Option<u64>,
    },
    /// A plugin used a capability it was not granted.
    #[serde(rename = "capability.denied")]
    CapabilityDenied {
        /// `keyvalue`, `outbound-http`, `config`, ...
        capability: String,
        /// The key-value bucket it asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bucket: Option<String>,
        /// The address it tried to reach.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// Events were dropped because the feed's writer fell behind.
    #[serde(rename = "events.dropped")]
    EventsDropped {
        /// How many.
        count: u64,
    },
}

/// A plugin version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Version {
    /// The version it declares.
    pub version: String,
    /// The SHA-256 of its component, in hex.
    pub digest: String,
}

/// An event as the feed keeps and sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StoredEvent {
    /// Its place in the feed, from 1.
    pub cursor: u64,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Its tenant; `null`: the host's.
    pub tenant: Option<String>,
    /// The plugin it concerns.
    pub plugin: Option<String>,
    /// In a cluster, the host it happened on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub what: Happening,
}

impl Event {
    /// The longest text an event keeps of a name (tenant, plugin).
    pub const MAX_NAME_BYTES: usize = 256;
    /// The longest text an event keeps of any other string.
    pub const MAX_TEXT_BYTES: usize = 1024;

    /// This event, with every string cut to the bounds above: what the
    /// feed keeps, whatever a caller named.
    pub fn bounded(mut self) -> Self {
        let name = |text: &mut String| cut_to(text, Self::MAX_NAME_BYTES);
        let text = |text: &mut String| cut_to(text, Self::MAX_TEXT_BYTES);
        self.tenant.iter_mut().for_each(name);
        self.plugin.iter_mut().for_each(name);
        match &mut self.what {
            Happening::PluginInstalled(now) | Happening::PluginRemoved(now) => now.bounded(),
            Happening::PluginReplaced { now, from, .. } => {
                now.bounded();
                from.bounded();
            }
            Happening::PluginRefused { action, reason } => {
                name(action);
                text(reason);
            }
            Happening::CallTrapped {
                operation,
                trap,
                version,
            } => {
                text(operation);
                name(trap);
                version.iter_mut().for_each(name);
            }
            Happening::LimitHit {
                operation, limit, ..
            }
            | Happening::QuotaRefused {
                operation,
                quota: limit,
                ..
            } => {
                text(operation);
                name(limit);
            }
            Happening::CapabilityDenied {
                capability,
                bucket,
                target,
            } => {
                name(capability);
                bucket.iter_mut().chain(target.iter_mut()).for_each(text);
            }
            Happening::EventsDropped { .. } => {}
        }
        self
    }
}

impl Happening {
    /// Its kind, as the feed names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PluginInstalled(_) => "plugin.installed",
            Self::PluginReplaced { .. } => "plugin.replaced",
            Self::PluginRemoved(_) => "plugin.removed",
            Self::PluginRefused { .. } => "plugin.refused",
            Self::CallTrapped { .. } => "call.trapped",
            Self::LimitHit { .. } => "limit.hit",
            Self::QuotaRefused { .. } => "quota.refused",
            Self::CapabilityDenied { .. } => "capability.denied",
            Self::EventsDropped { .. } => "events.dropped",
        }
    }
}

impl Version {
    fn bounded(&mut self) {
        cut_to(&mut self.version, Event::MAX_NAME_BYTES);
        cut_to(&mut self.digest, Event::MAX_NAME_BYTES);
    }
}

/// Cuts `text` to at most `bytes`, on a character boundary.
fn cut_to(text: &mut String, bytes: usize) {
    let kept = super::cut(text, bytes).len();
    text.truncate(kept);
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
