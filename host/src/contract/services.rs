//! The `services/*` operations' contracts: what each takes and answers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::capabilities::GrantSummary;
use crate::dispatch::OperationSummary;
use crate::runtime::PluginLimits;

/// The input of an operation that takes none: `null` or `{}`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("type" = ["object", "null"]))]
pub struct NoInput {}

/// `services/list`'s input; `null` too.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("type" = ["object", "null"]))]
pub struct Search {
    /// Part of the name or description, in any case.
    pub q: Option<String>,
}

/// `services/list`'s answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OperationList {
    /// The operations the caller can see, by name.
    pub operations: Vec<OperationSummary>,
}

/// `services/schema`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationName {
    /// `namespace/op`.
    pub name: String,
}

/// `services/plugin`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginName {
    /// The plugin's namespace.
    pub name: String,
}

/// `services/plugin`'s answer: one plugin as its caller sees it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PluginUsage {
    /// Its namespace.
    pub name: String,
    /// The version it declares.
    pub version: String,
    /// The SHA-256 of its component, in hex.
    pub digest: String,
    /// Its limits, as in force.
    pub limits: PluginLimits,
    /// What it is granted, without values or paths.
    pub grants: GrantSummary,
    /// Its instances alive now for the caller's tenant (a shared
    /// plugin's other callers are other tenants' business).
    pub live_instances: u32,
    /// Its subscriptions open now for the caller's tenant.
    pub open_subscriptions: u32,
    /// Log lines its calls wrote past their `log_lines` limit.
    pub dropped_log_lines: u64,
    /// Bytes of stdout and stderr its calls wrote past the capture cap.
    pub dropped_output_bytes: u64,
    /// Its operations, by name.
    pub operations: Vec<String>,
}

/// `services/openapi`'s answer: an OpenAPI 3.1 document.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct OpenApiDocument(pub Value);

impl JsonSchema for OpenApiDocument {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpenApiDocument".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let schema = json!({
            "type": "object",
            "description": "An OpenAPI 3.1 document.",
            "properties": {
                "openapi": { "type": "string" },
                "paths": { "type": "object" },
            },
            "required": ["openapi", "paths"],
        });
        schemars::Schema::try_from(schema).unwrap_or_default()
    }
}
