//! The contracts of the host's own operations, as types: what each of the
//! `admin/*` and `services/*` operations takes and answers, the settings
//! an install or replace carries, and the event feed's items.
//! Their JSON Schemas are derived from these types (schemars), and are
//! what the dispatcher checks an input against on every route before the
//! operation reads it; the `opbox-plugin` header of an upload is an
//! [`UploadSettings`], for the gateway and the OpenAPI document alike.
//! A component travels beside the input (an upload, read by the operation
//! itself) or, where only JSON can travel, as `wasm_base64`.

mod admin;
mod feed;
mod services;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use admin::*;
pub use feed::*;
pub use services::*;

use crate::call::CallError;

/// A plugin's or a tenant's name: `[a-z0-9_-]+`, at most
/// [`MAX_SEGMENT_BYTES`](crate::call::MAX_SEGMENT_BYTES) bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Name(
    #[schemars(regex(pattern = "^[a-z0-9_-]+$"), length(min = 1, max = crate::call::MAX_SEGMENT_BYTES))]
    pub String,
);

/// The JSON Schema of `T`, as an operation's input or output schema.
pub fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Bool(true))
}

/// `input`, which the operation's schema has checked, as a `T`; `null` is
/// an empty object.
pub fn read<T: DeserializeOwned>(input: Value) -> Result<T, CallError> {
    let input = match input {
        Value::Null => Value::Object(serde_json::Map::new()),
        input => input,
    };
    serde_json::from_value(input).map_err(|e| {
        CallError::invalid_input(format!(
            "the input is not valid: {}",
            without_values(&e.to_string())
        ))
    })
}

/// `message` (serde's words for settings it could not read) without the
/// text values it quotes: a secret given where a table belongs would
/// otherwise be repeated in the refusal, its event and its log line.
pub(crate) fn without_values(message: &str) -> String {
    let mut words = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        words.push_str(&rest[..at]);
        words.push_str("a string");
        // serde quotes the text escaped, so its end is the first quote
        // that is not escaped.
        let quoted = &rest[at + "string \"".len()..];
        let mut escaped = false;
        let end = quoted
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(quoted.len(), |(at, _)| at + 1);
        rest = &quoted[end..];
    }
    words.push_str(rest);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of the settings, the host's own config types' included,
    /// is in the derived schema: what the OpenAPI document and the
    /// operations say is what the host reads.
    #[test]
    fn the_settings_schema_names_every_setting() {
        let settings = schema::<UploadSettings>().to_string();
        for field in [
            "\"name\"",
            "\"limits\"",
            "\"grants\"",
            "\"reuse\"",
            "\"placement\"",
            "\"cpu_ms\"",
            "\"keyvalue\"",
            "\"max_calls\"",
        ] {
            assert!(settings.contains(field), "{field} missing from {settings}");
        }
        let install = schema::<Install>();
        let validator = jsonschema::validator_for(&install).unwrap();
        assert!(validator.is_valid(&serde_json::json!({"name": "ok", "limits": {"cpu_ms": 5}})));
        assert!(!validator.is_valid(&serde_json::json!({"name": "ok", "force": true})));
        assert!(!validator.is_valid(&serde_json::json!({"name": "Not OK"})));
        assert!(!validator.is_valid(&serde_json::json!({"limits": {"cpu_msec": 5}})));
        // Read, the types agree with their schemas.
        let header =
            serde_json::json!({"name": "x", "limits": {"cpu_ms": 5}, "placement": {"zone": "eu"}});
        let read_back = read::<UploadSettings>(header).unwrap();
        assert_eq!(read_back.name, Some(Name("x".into())));
        assert_eq!(read_back.settings.limits.cpu_ms, Some(5));
        assert!(read::<UploadSettings>(serde_json::json!({"bogus": 1})).is_err());
        assert!(read::<Listing>(Value::Null).is_ok());
    }

    #[test]
    fn a_refusal_of_settings_quotes_no_text_value() {
        let refused = read::<UploadSettings>(
            serde_json::json!({"grants": {"secrets": "hunter2 \"quoted\""}}),
        )
        .unwrap_err();
        assert!(!refused.message.contains("hunter2"), "{}", refused.message);
        assert!(refused.message.contains("a string"), "{}", refused.message);
    }
}
