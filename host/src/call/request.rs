//! One call as every layer passes it on: who makes it, from where, to
//! what, with which input and deadline.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Attachment, TraceParent};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The caller's id; `None` for anonymous callers.
    pub id: Option<String>,
    /// The tenant the caller belongs to.
    pub tenant: String,
    /// The caller's scopes.
    pub scopes: Vec<String>,
}

impl Identity {
    /// The tenant anonymous callers belong to.
    pub const DEFAULT_TENANT: &'static str = "default";

    /// An anonymous caller of the default tenant.
    pub fn anonymous() -> Self {
        Self::anonymous_of(Self::DEFAULT_TENANT)
    }

    /// An anonymous caller of `tenant`.
    pub fn anonymous_of(tenant: &str) -> Self {
        Self {
            id: None,
            tenant: tenant.to_owned(),
            scopes: Vec::new(),
        }
    }

    /// Whether the caller presented no valid credentials.
    pub fn is_anonymous(&self) -> bool {
        self.id.is_none()
    }
}

/// Where a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A caller on a transport: internal operations are invisible to it.
    Wire(Transport),
    /// Another operation, `depth` calls down from the wire: internal
    /// operations are visible to it.
    Nested {
        /// 1 for a call made by an operation called from the wire.
        depth: u32,
    },
}

impl Origin {
    /// How many calls down from the wire this is: 0 for the wire.
    pub fn depth(self) -> u32 {
        match self {
            Self::Wire(_) => 0,
            Self::Nested { depth } => depth,
        }
    }

    /// Whether the call comes from a caller rather than an operation.
    pub fn is_wire(self) -> bool {
        matches!(self, Self::Wire(_))
    }

    /// How the call arrived, for metrics: the transport, or `nested`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Wire(transport) => transport.as_str(),
            Self::Nested { .. } => "nested",
        }
    }
}

/// The transport a caller used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// The HTTP gateway: `/call`, `/batch`, `/subscribe`, the admin routes.
    Http,
    /// Envelopes over a WebSocket.
    WebSocket,
    /// Envelopes over TCP.
    Tcp,
    /// Envelopes over QUIC.
    Quic,
    /// The MCP server at `/mcp`: tools, over Streamable HTTP.
    Mcp,
    /// A program embedding the host, calling its dispatcher directly.
    Embedded,
    /// Another host of the cluster, forwarding its caller's call over NATS.
    Cluster,
}

impl Transport {
    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::WebSocket => "websocket",
            Self::Tcp => "tcp",
            Self::Quic => "quic",
            Self::Mcp => "mcp",
            Self::Embedded => "embedded",
            Self::Cluster => "cluster",
        }
    }
}

/// One call, as the dispatcher takes it.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// Unique per call; see [`new_request_id`].
    pub request_id: Arc<str>,
    /// `namespace/op`; a leading `/` is accepted.
    pub operation: String,
    /// The input; `null` when the caller sent none.
    pub input: Value,
    /// A deadline the caller asked for; it may only shorten the host's.
    pub deadline: Option<Duration>,
    /// Who is calling.
    pub identity: Identity,
    /// Where the call comes from.
    pub origin: Origin,
    /// The caller's trace, which the call's span joins; a nested call
    /// joins its caller's span instead.
    pub trace: Option<TraceParent>,
    /// Bytes beside the input, for the operations that take them (an
    /// upload's component); others ignore them.
    pub attachment: Option<Attachment>,
}

impl CallRequest {
    /// A wire call of `operation` with `input`, by an anonymous caller.
    pub fn new(operation: impl Into<String>, input: Value) -> Self {
        Self {
            request_id: new_request_id(),
            operation: operation.into(),
            input,
            deadline: None,
            identity: Identity::anonymous(),
            origin: Origin::Wire(Transport::Embedded),
            trace: None,
            attachment: None,
        }
    }

    /// The operation's name, without the leading `/` a caller may write.
    pub fn op_name(&self) -> &str {
        self.operation.strip_prefix('/').unwrap_or(&self.operation)
    }
}

/// Reads an optional count of milliseconds, written as an integer or as a
/// whole-valued float (`1.0`): JSON has one kind of number. For the
/// `deadline_ms` of the wire's call bodies.
pub fn whole_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::Deserialize;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if number.as_u64() == Some(0) || number.as_f64() == Some(0.0) {
        return Err(serde::de::Error::custom(NO_TIME));
    }
    let ms = match number.as_u64() {
        Some(ms) => ms,
        None => match number.as_f64() {
            Some(ms) if ms.fract() == 0.0 && ms >= 0.0 => ms.min(u64::MAX as f64) as u64,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "{number} is not a whole, non-negative number of milliseconds"
                )));
            }
        },
    };
    if ms > MAX_DEADLINE_MS {
        return Err(serde::de::Error::custom(TOO_LONG));
    }
    Ok(Some(ms))
}

/// Why a deadline of 0 ms is refused: the call could not even start.
pub const NO_TIME: &str = "a deadline of 0 ms leaves the call no time: send 1 or more, or none";

/// The largest deadline a caller may send (`u32::MAX` ms, about 49 days),
/// as the published schemas declare; a larger one is refused. Any deadline
/// past the host's own is the host's.
pub const MAX_DEADLINE_MS: u64 = u32::MAX as u64;

/// Why a deadline over [`MAX_DEADLINE_MS`] is refused.
pub const TOO_LONG: &str =
    "a deadline over 4294967295 ms is out of range: send less, or none for the host's own";

/// A fresh request id.
pub fn new_request_id() -> Arc<str> {
    Arc::from(uuid::Uuid::new_v4().simple().to_string())
}
