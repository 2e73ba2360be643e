//! Checking an input against its operation's schema.

use serde_json::{Value, json};

use super::Operation;
use crate::call::CallError;

/// Inputs with more JSON values than this are validated off the async
/// workers.
const LARGE_INPUT: usize = 4096;

/// Whether `input` has more than [`LARGE_INPUT`] values; looks at no more
/// than that many.
pub(super) fn is_large(input: &Value) -> bool {
    let mut left = LARGE_INPUT;
    let mut pending = vec![input];
    while let Some(value) = pending.pop() {
        if left == 0 {
            return true;
        }
        left -= 1;
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => pending.extend(map.values()),
            Value::String(text) if text.len() > LARGE_INPUT * 16 => return true,
            _ => {}
        }
    }
    false
}

/// The most schema violations reported for one input.
const MAX_REPORTED_VIOLATIONS: usize = 10;

pub(super) fn validate_input(op: &Operation, input: &Value) -> Result<(), CallError> {
    // Valid inputs (the common case) are checked without collecting errors.
    if op.input.is_valid(input) {
        return Ok(());
    }
    let violations: Vec<Value> = op
        .input
        .iter_errors(input)
        .take(MAX_REPORTED_VIOLATIONS)
        .map(|e| {
            let path = e.instance_path().to_string();
            json!({ "path": if path.is_empty() { "/".to_owned() } else { path }, "message": e.masked().to_string() })
        })
        .collect();
    let Some(first) = violations.first() else {
        return Ok(());
    };
    let message = format!(
        "input does not match the schema of `{}` at {}: {}",
        op.spec.name,
        first["path"].as_str().unwrap_or("/"),
        first["message"].as_str().unwrap_or_default()
    );
    Err(CallError::invalid_input(message).with_details(json!({ "violations": violations })))
}
