//! From what went wrong inside the host to what the caller is told.
//!
//! Causes that are the host's business (wasmtime errors, I/O) are logged with
//! the request id and replaced by a bare `INTERNAL`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::call::{CallError, ErrorCode};
use crate::runtime::{InvokeError, Plugin};

/// The caller's view of a failed plugin call.
///
/// A plugin's error is always the plugin's own: its code is a domain code
/// even when it spells one the host reserves (`UNAUTHORIZED`,
/// `RESOURCE_EXHAUSTED`, …), so it answers 400, is not retryable and never
/// sets `Retry-After`. Only the host speaks with the host's codes.
pub(super) fn from_invoke(error: InvokeError, plugin: &Plugin, op: &str) -> CallError {
    match error {
        InvokeError::Guest(e) => {
            let mut error = CallError::new(ErrorCode::Domain(e.code), e.message);
            error.details = e.details;
            error
        }
        InvokeError::Trap {
            kind,
            message,
            stderr,
        } => {
            let summary = message.as_deref().unwrap_or(&kind);
            let mut details = json!({
                "plugin": plugin.name(),
                "version": plugin.version(),
                "digest": plugin.digest(),
                "op": op,
                "trap": kind,
                "message": message,
            });
            if let Some(stderr) = stderr {
                details["stderr"] = stderr.into();
            }
            CallError::new(
                ErrorCode::PluginFailed,
                format!("plugin `{}` failed in `{op}`: {summary}", plugin.name()),
            )
            .with_details(details)
        }
        InvokeError::Limit(hit) if hit.is_time() => CallError::new(
            ErrorCode::Timeout,
            format!(
                "plugin `{}` ran past its {} of {} and was interrupted",
                plugin.name(),
                hit.limit,
                hit.value
            ),
        )
        .with_details(json!({ "limit": hit.limit, "value": hit.value })),
        InvokeError::Limit(hit) => CallError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "plugin `{}` reached its {} of {}",
                plugin.name(),
                hit.limit,
                hit.value
            ),
        )
        .with_details(json!({ "limit": hit.limit, "value": hit.value })),
        InvokeError::NoCapacity => CallError::new(
            ErrorCode::Unavailable,
            "no instance slot is free; retry shortly",
        ),
        e @ InvokeError::Host(_) => {
            tracing::error!(plugin = plugin.name(), op, "host failure: {e}");
            CallError::internal()
        }
    }
}

/// `TIMEOUT` for a deadline of `limit`.
pub(super) fn timeout(limit: Duration) -> CallError {
    CallError::new(
        ErrorCode::Timeout,
        format!("the call did not finish within {} ms and was interrupted", limit.as_millis()),
    )
    .with_details(json!({ "limit": "deadline_ms", "value": u64::try_from(limit.as_millis()).unwrap_or(u64::MAX) }))
}

/// Parses a guest's output; output that is not JSON is the plugin's fault.
pub(super) fn parse_output(text: &str, plugin: &Plugin, op: &str) -> Result<Value, CallError> {
    serde_json::from_str(text).map_err(|e| {
        CallError::new(
            ErrorCode::PluginFailed,
            format!(
                "plugin `{}` returned output that is not JSON from `{op}`",
                plugin.name()
            ),
        )
        .with_details(json!({
            "plugin": plugin.name(),
            "version": plugin.version(),
            "digest": plugin.digest(),
            "op": op,
            "reason": e.to_string(),
        }))
    })
}
