//! The error a caller sees, on every transport.
//!
//! [`CallError`] is the `{code, message, retryable, details}` object of the
//! protocol. It is built only from what a caller may know: host paths, other
//! tenants and internal causes are logged, never put into a `CallError`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol's error codes, plus the domain codes plugins return.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Unknown operation, or an internal one called from the wire.
    NotFound,
    /// No valid credentials where the operation requires some.
    Unauthorized,
    /// Authenticated, but not allowed.
    Forbidden,
    /// The input fails the operation's schema, or is not JSON.
    InvalidInput,
    /// `/call` on a subscription, or `/subscribe` on a query or mutation.
    InvalidOperationType,
    /// The deadline passed; the guest was interrupted.
    Timeout,
    /// A limit of the plugin or tenant was hit.
    ResourceExhausted,
    /// The host is overloaded, draining, or the plugin is being replaced.
    Unavailable,
    /// The guest trapped or panicked.
    PluginFailed,
    /// A host bug.
    Internal,
    /// A framing violation on a stream transport.
    InvalidFrame,
    /// The change asked for conflicts with what is there: a plugin name in
    /// use, or a new version incompatible with the one it would replace.
    Conflict,
    /// A plugin's own code (upper snake case).
    Domain(String),
}

impl ErrorCode {
    /// The code as it goes on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::InvalidInput => "INVALID_INPUT",
            Self::InvalidOperationType => "INVALID_OPERATION_TYPE",
            Self::Timeout => "TIMEOUT",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Unavailable => "UNAVAILABLE",
            Self::PluginFailed => "PLUGIN_FAILED",
            Self::Internal => "INTERNAL",
            Self::InvalidFrame => "INVALID_FRAME",
            Self::Conflict => "CONFLICT",
            Self::Domain(code) => code,
        }
    }

    /// Parses a code; anything that is not a protocol code is a domain code.
    pub fn parse(code: &str) -> Self {
        match code {
            "NOT_FOUND" => Self::NotFound,
            "UNAUTHORIZED" => Self::Unauthorized,
            "FORBIDDEN" => Self::Forbidden,
            "INVALID_INPUT" => Self::InvalidInput,
            "INVALID_OPERATION_TYPE" => Self::InvalidOperationType,
            "TIMEOUT" => Self::Timeout,
            "RESOURCE_EXHAUSTED" => Self::ResourceExhausted,
            "UNAVAILABLE" => Self::Unavailable,
            "PLUGIN_FAILED" => Self::PluginFailed,
            "INTERNAL" => Self::Internal,
            "INVALID_FRAME" => Self::InvalidFrame,
            "CONFLICT" => Self::Conflict,
            other => Self::Domain(other.to_owned()),
        }
    }

    /// Whether a caller may retry the same call later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::ResourceExhausted | Self::Unavailable
        )
    }

    /// The HTTP status of this code (PROTOCOL.md). Domain codes are 400.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::InvalidInput => 422,
            Self::InvalidOperationType | Self::InvalidFrame | Self::Domain(_) => 400,
            Self::Timeout => 504,
            Self::ResourceExhausted => 429,
            Self::Unavailable => 503,
            Self::Conflict => 409,
            Self::PluginFailed | Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// A failed call, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CallError {
    /// What went wrong, as a code.
    pub code: ErrorCode,
    /// What went wrong, for humans.
    pub message: String,
    /// Whether the same call may succeed later.
    pub retryable: bool,
    /// Machine-readable detail, when there is any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl CallError {
    /// An error with `code`'s usual retryability and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            retryable: code.retryable(),
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Attaches details.
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `NOT_FOUND` for an operation name. The message is the same whether the
    /// operation does not exist or the caller may not see it.
    pub fn not_found(operation: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("no operation named `{operation}`"),
        )
    }

    /// `INVALID_INPUT`.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// `INTERNAL`, with a message that gives nothing away. Log the cause.
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "internal error; the host logged the cause",
        )
    }
}

/// The result of a call.
pub type Result<T, E = CallError> = std::result::Result<T, E>;

/// `text`, cut to at most `max` bytes on a character boundary: for log lines
/// whose length a guest or caller chooses.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
