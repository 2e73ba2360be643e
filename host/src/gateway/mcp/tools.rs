//! Operations as MCP tools, and back.
//!
//! - **Names.** The tool of `ns/op` is `ns.op`. Names are `[a-z0-9_-]`
//!   segments, so the mapping is reversible and two operations never share
//!   a tool; the meta-tools (`search`, `schema`, `call`, `subscribe`) have
//!   no dot, so they never collide with an operation's.
//! - **Arguments.** MCP arguments are always an object. An operation whose
//!   input schema is an object schema takes the arguments as its input;
//!   any other takes `{"input": …}`, and its tool's input schema says so.
//! - **Results.** The output is the `structuredContent` when it is an
//!   object and the output schema is an object schema; otherwise it is
//!   wrapped the same way, as `{"output": …}`. A text copy goes along, for
//!   clients that read only text.
//! - **Errors.** A domain or host error is a tool error (`isError`) whose
//!   text is `{"error": {code, message, retryable, details?}}` as JSON,
//!   with no `structuredContent` (clients hold that to the output schema).

use std::sync::Arc;

use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Map, Value, json};

use crate::call::{CallError, OpType};
use crate::dispatch::Operation;

/// The meta-tools, for clients that prefer a fixed set of tools.
pub(super) const META_TOOLS: [&str; 4] = ["search", "schema", "call", "subscribe"];

/// The tool name of operation `name`.
pub(super) fn tool_name(name: &str) -> String {
    name.replace('/', ".")
}

/// The operation a tool name stands for; `None` for a name no operation
/// could have (a meta-tool's, or junk).
pub(super) fn operation_name(tool: &str) -> Option<String> {
    let (namespace, op) = tool.split_once('.')?;
    crate::call::is_valid_name(&format!("{namespace}/{op}")).then(|| format!("{namespace}/{op}"))
}

/// Whether `schema` describes objects only, so that MCP's argument object
/// (or structured result) can be the value itself.
fn is_object_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// `schema` as the property `field` of an object schema, with its
/// definitions moved to the top so that `#/$defs/…` references still
/// resolve.
fn wrapped(field: &str, schema: &Value, required: bool) -> JsonObject {
    let mut inner = schema.clone();
    let mut outer = Map::new();
    outer.insert("type".into(), "object".into());
    if let Value::Object(object) = &mut inner {
        object.remove("$schema");
        for keyword in ["$defs", "definitions"] {
            if let Some(defs) = object.remove(keyword) {
                outer.insert(keyword.into(), defs);
            }
        }
    }
    outer.insert("properties".into(), json!({ field: inner }));
    if required {
        outer.insert("required".into(), json!([field]));
    }
    outer.insert("additionalProperties".into(), false.into());
    outer
}

fn object_of(schema: &Value) -> JsonObject {
    match schema {
        Value::Object(object) => object.clone(),
        _ => Map::new(),
    }
}

/// `schema` with its properties' boolean schemas written as objects: `true`
/// as `{}`, `false` as `{"not": {}}`. The same in JSON Schema, but MCP's
/// TypeScript SDK refuses a whole tool list in which a property's schema
/// is not an object.
fn with_object_properties(mut schema: JsonObject) -> JsonObject {
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for property in properties.values_mut() {
            if let Value::Bool(accepts) = property {
                *property = if *accepts {
                    json!({})
                } else {
                    json!({ "not": {} })
                };
            }
        }
    }
    schema
}

/// The `format`s JSON Schema 2020-12 defines. Others (schemars writes
/// `uint`, `uint64`, `int32`, `double`, …) only annotate, and MCP's
/// TypeScript SDK prints an "unknown format ignored" warning for each one
/// on every listing; tools leave them out. The numeric ones come with
/// `minimum`/`maximum` where they constrain anything.
const FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Keywords whose values are instances, not schemas: left as they are.
const INSTANCES: &[&str] = &["const", "enum", "default", "examples"];

/// `schema` without the `format`s JSON Schema does not define, at every
/// depth. (A property named `format` has a schema, not a string, so it
/// stays.)
fn without_unknown_formats(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let unknown = object
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|format| !FORMATS.contains(&format));
            if unknown {
                object.remove("format");
            }
            for (keyword, value) in object.iter_mut() {
                if !INSTANCES.contains(&keyword.as_str()) {
                    without_unknown_formats(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(without_unknown_formats),
        _ => {}
    }
}

/// `schema` as a tool's schema: an object whose properties' schemas are
/// objects and whose formats are all standard.
fn tool_schema(schema: JsonObject) -> Arc<JsonObject> {
    let mut schema = Value::Object(with_object_properties(schema));
    without_unknown_formats(&mut schema);
    match schema {
        Value::Object(object) => Arc::new(object),
        _ => unreachable!("an object stays an object"),
    }
}

/// The tool of `op`.
pub(super) fn tool(op: &Operation) -> Tool {
    let spec = &op.spec;
    let input = if is_object_schema(&spec.input_schema) {
        object_of(&spec.input_schema)
    } else {
        wrapped(
            "input",
            &spec.input_schema,
            !op.input.is_valid(&Value::Null),
        )
    };
    let subscription = spec.op_type == OpType::Subscription;
    let mut description = spec.description.clone();
    if subscription {
        description.push_str(
            " (a subscription: each output arrives as a progress notification, as JSON in its message; the result counts them and holds the last)",
        );
    }
    let mut tool = Tool::new(tool_name(&spec.name), description, tool_schema(input));
    if !subscription {
        let output = if is_object_schema(&spec.output_schema) {
            object_of(&spec.output_schema)
        } else {
            wrapped("output", &spec.output_schema, true)
        };
        tool = tool.with_raw_output_schema(tool_schema(output));
    }
    let mut annotations = ToolAnnotations::default();
    annotations.title = Some(spec.name.clone());
    annotations.read_only_hint = Some(spec.op_type == OpType::Query);
    tool.with_annotations(annotations)
}

/// The input of `op` in a tool call's `arguments`. A wrapped input's tool
/// takes `input` and nothing else, as its input schema says: any other
/// argument is refused rather than dropped.
pub(super) fn input_of(op: &Operation, arguments: Option<JsonObject>) -> Result<Value, CallError> {
    if is_object_schema(&op.spec.input_schema) {
        return Ok(Value::Object(arguments.unwrap_or_default()));
    }
    let mut arguments = arguments.unwrap_or_default();
    let input = arguments.remove("input").unwrap_or(Value::Null);
    match arguments.keys().next() {
        Some(unknown) => {
            let unknown: String = unknown.chars().take(64).collect();
            Err(CallError::invalid_input(format!(
                "unknown argument `{unknown}`: this tool takes only `input`"
            )))
        }
        None => Ok(input),
    }
}

/// A successful call's result.
pub(super) fn success(op: &Operation, output: Value) -> CallToolResult {
    let structured = if is_object_schema(&op.spec.output_schema) && output.is_object() {
        output
    } else {
        json!({ "output": output })
    };
    structured_result(structured, false)
}

/// A failed call's result: a tool error whose text is the typed error as
/// JSON (`{"error": {"code", "message", ...}}`). It carries no structured
/// content: that is held to the tool's output schema, which describes
/// what the operation answers, and clients (the TypeScript SDK, the
/// Inspector) check it even on errors, turning opbox's error into a schema
/// mismatch of their own.
pub(super) fn failure(error: &CallError) -> CallToolResult {
    error_result(&json!({ "error": error }))
}

/// A tool error whose text is `body` as JSON.
pub(super) fn error_result(body: &Value) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(body.to_string())])
}

/// A result whose text is its structured content as JSON.
pub(super) fn structured_result(structured: Value, is_error: bool) -> CallToolResult {
    let text = ContentBlock::text(structured.to_string());
    let mut result = if is_error {
        CallToolResult::error(vec![text])
    } else {
        CallToolResult::success(vec![text])
    };
    result.structured_content = Some(structured);
    result
}

/// The meta-tools' definitions.
pub(super) fn meta_tools() -> Vec<Tool> {
    let call_input = || {
        json!({
            "type": "object",
            "properties": {
                "operation": { "type": "string", "description": "`namespace/op`" },
                "input": { "description": "The operation's input" },
            },
            "required": ["operation"],
            "additionalProperties": false,
        })
    };
    let tools = [
        (
            "search",
            "The operations you can call, filtered by `q` (in names and descriptions)",
            json!({
                "type": "object",
                "properties": { "q": { "type": "string" } },
                "additionalProperties": false,
            }),
        ),
        (
            "schema",
            "One operation's full spec: kind, description, input and output JSON Schemas",
            json!({
                "type": "object",
                "properties": { "name": { "type": "string", "description": "`namespace/op`" } },
                "required": ["name"],
                "additionalProperties": false,
            }),
        ),
        ("call", "Runs one query or mutation by name", call_input()),
        (
            "subscribe",
            "Runs a subscription by name: each output arrives as a progress notification",
            call_input(),
        ),
    ];
    tools
        .into_iter()
        .map(|(name, description, input)| Tool::new(name, description, Arc::new(object_of(&input))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_map_back_to_the_operation_and_never_to_a_meta_tool() {
        for name in ["echo/echo", "a-b/c_d", "x1/y-2"] {
            assert_eq!(operation_name(&tool_name(name)).as_deref(), Some(name));
        }
        for meta in META_TOOLS {
            assert_eq!(operation_name(meta), None);
        }
        for junk in ["a.b.c", ".b", "a.", "A.b", "a b.c"] {
            assert_eq!(operation_name(junk), None, "{junk}");
        }
    }

    #[test]
    fn tool_schemas_keep_only_standard_formats() {
        let schema = json!({
            "type": "object",
            "properties": {
                "n": { "type": "integer", "format": "uint64", "minimum": 0 },
                "at": { "type": "string", "format": "date-time" },
                "format": { "type": "string", "default": { "format": "uint" } },
            },
            "$defs": { "X": { "type": "number", "format": "double" } },
        });
        let schema = Value::Object((*tool_schema(object_of(&schema))).clone());
        assert_eq!(
            schema["properties"]["n"],
            json!({ "type": "integer", "minimum": 0 })
        );
        assert_eq!(schema["properties"]["at"]["format"], "date-time");
        assert_eq!(schema["properties"]["format"]["default"]["format"], "uint");
        assert_eq!(schema["$defs"]["X"], json!({ "type": "number" }));
    }

    #[test]
    fn wrapping_a_schema_keeps_its_references_resolving() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "array",
            "items": { "$ref": "#/$defs/Word" },
            "$defs": { "Word": { "type": "string" } },
        });
        let outer = Value::Object(wrapped("output", &schema, true));
        assert_eq!(outer["$defs"]["Word"]["type"], "string");
        assert_eq!(
            outer["properties"]["output"]["items"]["$ref"],
            "#/$defs/Word"
        );
        assert!(outer["properties"]["output"].get("$defs").is_none());
        let validator = jsonschema::validator_for(&outer).unwrap();
        assert!(validator.is_valid(&json!({ "output": ["a", "b"] })));
        assert!(!validator.is_valid(&json!({ "output": [1] })));
    }
}
