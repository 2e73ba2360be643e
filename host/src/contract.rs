//! The contracts of the host's own operations, as types: the `admin/*`
//! operations' inputs and the settings an install or replace carries.
//! Their JSON Schemas are derived from these types (schemars), and are
//! what the dispatcher checks an input against on every route before the
//! operation reads it; the `opbox-plugin` header of an upload is an
//! [`UploadSettings`], for the gateway and the OpenAPI document alike.
//! A component travels beside the input (an upload, read by the operation
//! itself) or, where only JSON can travel, as `wasm_base64`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::call::{CallError, OpType};
use crate::capabilities::{GrantSummary, Grants};
use crate::runtime::{PluginLimits, PluginLimitsConfig, ReuseConfig};

/// A plugin's or a tenant's name: `[a-z0-9_-]+`, at most
/// [`MAX_SEGMENT_BYTES`](crate::call::MAX_SEGMENT_BYTES) bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Name(
    #[schemars(regex(pattern = "^[a-z0-9_-]+$"), length(min = 1, max = crate::call::MAX_SEGMENT_BYTES))]
    pub String,
);

/// A plugin's settings, as an install or replace gives them: the `limits`,
/// `grants` and `reuse` of a `[[plugins]]` entry, and where in a cluster
/// it runs.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// As in a `[[plugins]]` entry; a tenant's are held to its allowance.
    pub limits: PluginLimitsConfig,
    /// As in a `[[plugins]]` entry; a tenant's are held to its allowance.
    pub grants: Grants,
    /// Instance reuse, as in a `[[plugins]]` entry: the operator's only
    /// (idle instances hold pool slots and memory beyond the calls that
    /// made them).
    pub reuse: Option<ReuseConfig>,
    /// In a cluster, the labels a host must have (each with this value) to
    /// hold the plugin (`[cluster] labels`). Empty: every host.
    pub placement: BTreeMap<String, String>,
}

/// The `opbox-plugin` header of an upload: the plugin's settings and, on
/// an install, its name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadSettings {
    /// The namespace to install under (install only; a replace keeps the
    /// plugin's name); the plugin's own when absent.
    pub name: Option<Name>,
    /// The settings.
    #[serde(flatten)]
    pub settings: PluginSettings,
}

/// `admin/install`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// The namespace to install under; the plugin's own when absent.
    pub name: Option<Name>,
    /// The owning tenant (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
    /// The component, where it is not uploaded.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub wasm_base64: Option<String>,
    /// The settings.
    #[serde(flatten)]
    pub settings: PluginSettings,
}

/// `admin/replace`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    /// The plugin.
    pub name: Name,
    /// Whose plugin (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
    /// The new component, where it is not uploaded.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub wasm_base64: Option<String>,
    /// Skip the compatibility gate.
    #[serde(default)]
    pub force: bool,
    /// The settings.
    #[serde(flatten)]
    pub settings: PluginSettings,
}

/// The input of `admin/show` and `admin/remove`: one plugin.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Named {
    /// The plugin.
    pub name: Name,
    /// Whose plugin (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
}

/// `admin/list`'s input; `null` too.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("type" = ["object", "null"]))]
pub struct Listing {
    /// Whose plugins (the operator's choice); for the operator naming none,
    /// every plugin.
    pub tenant: Option<Name>,
}

/// `admin/logs`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// The plugin.
    pub name: Name,
    /// Whose plugin (the operator's choice); shared when absent.
    pub tenant: Option<Name>,
    /// The last line the reader has.
    #[serde(default)]
    pub after: u64,
    /// Lines to answer at most.
    #[schemars(range(min = 1))]
    pub limit: Option<u64>,
}

/// A plugin, as the `admin/*` operations answer it: never a secret value
/// or a host path.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PluginDetail {
    /// `retired` once replaced or removed, while calls still hold it.
    pub state: PluginState,
    /// Its namespace.
    pub name: String,
    /// Its tenant; `null`: shared.
    pub tenant: Option<String>,
    /// Declared by the configuration (`config`) or installed (`api`).
    pub source: PluginSource,
    /// The version it declares.
    pub version: String,
    /// The SHA-256 of its component, in hex.
    pub digest: String,
    /// Its operations.
    pub operations: Vec<OperationBrief>,
    /// Its limits, as in force.
    pub limits: PluginLimits,
    /// What it is granted, without values or paths.
    pub grants: GrantSummary,
    /// Instance reuse, when on.
    pub reuse: Option<ReuseConfig>,
    /// Instances alive now.
    pub live_instances: u32,
    /// Subscriptions open now.
    pub open_subscriptions: u32,
    /// Calls this version took.
    pub calls: u64,
    /// How many of them failed.
    pub failures: u64,
}

/// Whether a plugin version serves new calls.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// It serves.
    Active,
    /// Replaced or removed; its running calls finish.
    Retired,
}

/// Where a plugin comes from.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginSource {
    /// The configuration file (or the bundled examples): fixed for the API.
    Config,
    /// The admin API.
    Api,
}

/// One operation of a plugin, in brief.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OperationBrief {
    /// `namespace/op`.
    pub name: String,
    /// Query, mutation or subscription.
    pub op_type: OpType,
}

/// `admin/list`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PluginList {
    /// The plugins the caller sees.
    pub plugins: Vec<PluginDetail>,
}

/// `admin/remove`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    /// The plugin removed.
    pub removed: String,
}

/// `admin/logs`' answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogLines {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// The `after` to read the next lines with.
    pub next: u64,
}

/// One line a plugin's guest logged.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogLine {
    /// Its place in the plugin's tail.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The call that logged it.
    pub request_id: String,
    /// Its level.
    pub level: String,
    /// What it says.
    pub message: String,
    /// The calling tenant: for the operator only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

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
