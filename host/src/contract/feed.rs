//! The event feed's contracts: `admin/events` (a page) and `admin/feed`
//! (a subscription), and the items they answer with.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Name, PluginDetail};
use crate::call::StoredEvent;

/// Events one page holds at most.
pub const MAX_PAGE: u64 = 1000;

/// `admin/events`' input; `null` too.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("type" = ["object", "null"]))]
pub struct EventsQuery {
    /// The cursor the reader has: events after it. All kept when absent.
    pub cursor: Option<u64>,
    /// Events to answer at most (100 when absent).
    #[schemars(range(min = 1, max = MAX_PAGE))]
    pub limit: Option<u64>,
    /// The operator's filter: one tenant's events.
    pub tenant: Option<Name>,
}

/// `admin/events`' answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventPage {
    /// The events, in cursor order (as stored, so a peer's too).
    #[schemars(with = "Vec<StoredEvent>")]
    pub events: Vec<Value>,
    /// The cursor to ask from next.
    pub next_cursor: u64,
    /// The oldest cursor kept.
    pub oldest: u64,
    /// The newest cursor.
    pub last: u64,
}

/// `admin/feed`'s input; `null` too.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("type" = ["object", "null"]))]
pub struct FeedQuery {
    /// The cursor the reader has: events after it. All kept when absent.
    pub cursor: Option<u64>,
    /// The operator's filter: one tenant's events.
    pub tenant: Option<Name>,
}

/// One item of `admin/feed`, by its `type`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeedItem {
    /// First: the plugins the reader sees now.
    Snapshot {
        /// The plugins.
        plugins: Vec<PluginDetail>,
    },
    /// An event.
    Event(StoredEvent),
    /// The last item, when the feed cannot go on.
    Diagnostic(Diagnostic),
}

/// Why a feed ends.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Diagnostic {
    /// What went wrong.
    pub code: DiagnosticCode,
    /// For humans.
    pub message: String,
    /// The oldest cursor kept (`cursor_expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<u64>,
    /// The last cursor the reader got, to resume from (`cursor_overrun`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
}

/// The ways a feed ends.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosticCode {
    /// The events after the reader's cursor are no longer kept.
    CursorExpired,
    /// The reader fell too far behind the live feed.
    CursorOverrun,
    /// The reader's cursor is not a number (the WebSocket's query).
    CursorMalformed,
}

impl FeedItem {
    /// This item as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
