//! What an operation is, as callers and plugins describe it, and the rules
//! for its name.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of operation this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// No side effects; one input, one output.
    Query,
    /// May change state; one input, one output.
    Mutation,
    /// One input, a stream of outputs.
    Subscription,
    /// One input, then bytes both ways: the raw carriage (`docs/raw.md`).
    Raw,
    /// An HTTP request in, an HTTP response out: a standard `wasi:http`
    /// component, mounted at `/http/{name}/` (`docs/wasi-http.md`).
    Http,
}

impl OpType {
    /// Whether the operation answers once (query, mutation) rather than with
    /// a stream of outputs or of bytes.
    pub fn is_once(self) -> bool {
        matches!(self, Self::Query | Self::Mutation)
    }
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Callable from the wire.
    External,
    /// Callable only from other operations.
    Internal,
}

/// The scopes a caller needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessControl {
    /// The caller must hold all of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// The caller must hold at least one of these, when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes_any: Vec<String>,
}

/// An operation's public description (PROTOCOL.md, "Operations").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OperationSpec {
    /// `namespace/op`.
    pub name: String,
    /// Query, mutation, subscription or raw.
    pub op_type: OpType,
    /// External or internal.
    pub visibility: Visibility,
    /// One line for humans.
    pub description: String,
    /// JSON Schema of the input.
    pub input_schema: Value,
    /// JSON Schema of the output (of each item, for subscriptions).
    pub output_schema: Value,
    /// Required scopes.
    pub access_control: AccessControl,
}

/// The longest name segment (a namespace, an operation, a tenant), in
/// bytes: names travel in paths, headers, events and log lines.
pub const MAX_SEGMENT_BYTES: usize = 256;

/// Whether `segment` is a valid name segment: `[a-z0-9_-]+`, at most
/// [`MAX_SEGMENT_BYTES`] long.
pub fn is_valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_SEGMENT_BYTES
        && segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `name` is `namespace/op` with valid segments.
pub fn is_valid_name(name: &str) -> bool {
    matches!(name.split_once('/'), Some((ns, op)) if is_valid_segment(ns) && is_valid_segment(op))
}
