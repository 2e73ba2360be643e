//! The OpenAPI 3.1 document of the gateway, as one caller sees it: the
//! routes, and every operation visible to that caller with its input and
//! output schemas (`GET /openapi.json`).
//!
//! Each operation's schemas are components named `ns.op.input` and
//! `ns.op.output`. Their `$defs` become components of their own
//! (`ns.op.input.Def`) and every local reference is rewritten to point at
//! them, so each `$ref` resolves inside this one document, as OpenAPI
//! validators and clients resolve it.
//!
//! Request bodies say what the gateway enforces: no fields besides
//! `operation`, `input` and `deadline_ms`, and `input` required when the
//! operation's input schema refuses `null` (what a missing input is).
//!
//! Each operation also has a path of its own, `/ops/{ns}/{op}` (`typed`),
//! whose bodies are its input and output.

mod admin;
mod typed;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value, json};

use crate::call::{Identity, OpType};
use crate::dispatch::{Dispatcher, Operation};

/// The prefix of every schema component reference.
const COMPONENTS: &str = "#/components/schemas/";

/// Each tenant's document, built once per tenant and registry change (one
/// per configured tenant at most) and shared by every request for it.
#[derive(Debug, Default)]
pub(super) struct Documents {
    /// By tenant: the registry generation it was built from, and the document.
    built: Mutex<HashMap<String, (u64, Arc<Value>)>>,
}

impl Documents {
    /// The document of what `identity` can see.
    pub(super) fn get(&self, dispatcher: &Dispatcher, identity: &Identity) -> Arc<Value> {
        let generation = dispatcher.registry().generation();
        let lock = || self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built, document)) = lock().get(&identity.tenant)
            && *built == generation
        {
            return document.clone();
        }
        let document = Arc::new(document(&dispatcher.visible_operations(identity)));
        lock().insert(identity.tenant.clone(), (generation, document.clone()));
        document
    }
}

/// The document for `ops`, the operations one caller can see.
pub fn document(ops: &[Arc<Operation>]) -> Value {
    let mut schemas = Map::new();
    schemas.insert("Error".into(), error_schema());
    schemas.insert("ErrorBody".into(), error_body_schema());
    let mut calls = Vec::new();
    let mut outputs = Vec::new();
    let mut subscriptions = Vec::new();
    let mut items = Vec::new();
    for op in ops {
        let spec = &op.spec;
        let component = spec.name.replace('/', ".");
        if spec.op_type == OpType::Http {
            // Reached at its mount only (`typed::path`), with HTTP of its own.
            continue;
        }
        let input = format!("{component}.input");
        let output = format!("{component}.output");
        hoist(&mut schemas, &input, &spec.input_schema);
        if spec.op_type == OpType::Raw {
            // Its output is bytes, and it is reached at its own route only
            // (`typed::path`), not through `/call` or `/subscribe`.
            continue;
        }
        hoist(&mut schemas, &output, &spec.output_schema);
        let mut required = vec!["operation"];
        if !op.input.is_valid(&Value::Null) {
            required.push("input");
        }
        let request = json!({
            "type": "object",
            "title": spec.name,
            "description": spec.description,
            "properties": {
                "operation": { "const": spec.name },
                "input": { "$ref": format!("{COMPONENTS}{input}") },
                "deadline_ms": deadline_schema(),
            },
            "required": required,
            "additionalProperties": false,
            "x-opbox-op-type": spec.op_type,
            "x-opbox-access-control": spec.access_control,
        });
        if spec.op_type == OpType::Subscription {
            subscriptions.push(request);
            items.push(json!({ "$ref": format!("{COMPONENTS}{output}") }));
        } else {
            calls.push(request);
            outputs.push(json!({ "$ref": format!("{COMPONENTS}{output}") }));
        }
    }
    // An output is one of the operations' outputs; several may accept
    // it (an echo accepts anything), so `anyOf`, not `oneOf`.
    let output = if outputs.is_empty() {
        json!({})
    } else {
        json!({ "anyOf": outputs })
    };
    schemas.insert(
        "CallOk".into(),
        json!({
            "type": "object",
            "properties": {
                "request_id": { "type": "string" },
                "result": { "const": "ok" },
                "output": output,
            },
            "required": ["request_id", "result", "output"],
        }),
    );
    schemas.insert(
        "CallResult".into(),
        json!({ "anyOf": [
            { "$ref": format!("{COMPONENTS}CallOk") },
            { "$ref": format!("{COMPONENTS}ErrorBody") },
        ] }),
    );
    let (calls, subscriptions) = (requests(calls), requests(subscriptions));
    let item = if items.is_empty() {
        json!({})
    } else {
        json!({ "anyOf": items })
    };
    let responses = |ok: Value, statuses: &[&str]| {
        let mut responses = typed::errors(statuses);
        responses.insert("200".into(), ok);
        Value::Object(responses)
    };
    for (name, schema) in admin::schemas() {
        hoist(&mut schemas, name, &schema);
    }
    distinct_titles(&mut schemas);
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "opbox",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Operations of sandboxed WebAssembly plugins, as this caller sees them.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [{ "url": "/", "description": "This host" }],
        "security": [{ "bearer": [] }, {}],
        "paths": {
            "/call": {
                "post": {
                    "operationId": "call",
                    "summary": "Runs one query or mutation",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": calls,
                    } } },
                    "responses": responses(json!({ "description": "The output", "content": { "application/json": {
                        "schema": { "$ref": format!("{COMPONENTS}CallOk") },
                    } } }), typed::CALL_ERRORS),
                },
                "get": {
                    "operationId": "callWebSocket",
                    "summary": "The envelope protocol over a WebSocket: send a WebSocket upgrade, then envelopes as text messages",
                    "responses": {
                        "101": { "description": "Upgraded to a WebSocket" },
                        "401": { "$ref": "#/components/responses/Error401" },
                        "426": { "$ref": "#/components/responses/Error426" },
                        "429": { "$ref": "#/components/responses/Error429" },
                    },
                },
            },
            "/batch": { "post": {
                "operationId": "batch",
                "summary": "Runs several queries and mutations concurrently; results keep their order. Each item is checked on its own: one that fails, or is not a valid call, is an error in its place, and the batch still answers 200",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "type": "array", "items": calls },
                } } },
                "responses": responses(json!({ "description": "One /call body per item", "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": { "results": {
                        "type": "array",
                        "items": { "$ref": format!("{COMPONENTS}CallResult") },
                    } },
                    "required": ["results"],
                } } } }), &["400", "401", "408", "413", "422", "429", "503"]),
            } },
            "/subscribe": { "post": {
                "operationId": "subscribe",
                "summary": "Runs a subscription as Server-Sent Events: one `data:` event per output, then `event: completed`, or `event: error`. A call that cannot start (an unknown operation, an input that does not fit) is a 200 with one `event: error` too",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": subscriptions,
                } } },
                "responses": responses(json!({ "description": "The outputs", "content": { "text/event-stream": {
                    "schema": typed::events(item),
                } } }), &["400", "401", "408", "413", "429", "503"]),
            } },
            "/search": { "get": {
                "operationId": "search",
                "summary": "The caller's operations, filtered by `q`",
                "parameters": [{ "name": "q", "in": "query", "schema": { "type": "string" } }],
                "responses": responses(json!({ "description": "Name, kind and description of each" }), typed::DISCOVERY_ERRORS),
            } },
            "/schema": { "get": {
                "operationId": "schema",
                "summary": "One operation's full spec",
                "parameters": [{ "name": "name", "in": "query", "required": true, "schema": { "type": "string" } }],
                "responses": responses(json!({ "description": "The spec" }), typed::DISCOVERY_ERRORS),
            } },
            "/openapi.json": { "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": responses(json!({ "description": "OpenAPI 3.1" }), typed::DISCOVERY_ERRORS),
            } },
            "/healthz": { "get": {
                "operationId": "healthz",
                "summary": "200 while serving",
                "security": [],
                "responses": { "200": { "description": "Serving" } },
            } },
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        },
    });
    if let Some(paths) = document["paths"].as_object_mut() {
        paths.extend(admin::paths());
        paths.extend(ops.iter().map(|op| typed::path(op)));
    }
    typed::components(&mut document);
    document
}

/// Gives every component whose `title` another component shares its own
/// name as title instead. Client generators name their types after titles,
/// and two operations of one plugin often share a type (and so a title):
/// without this, the second would collide with the first.
fn distinct_titles(schemas: &mut Map<String, Value>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for schema in schemas.values() {
        if let Some(title) = schema.get("title").and_then(Value::as_str) {
            *seen.entry(title.to_owned()).or_default() += 1;
        }
    }
    for (name, schema) in schemas.iter_mut() {
        let shared = schema
            .get("title")
            .and_then(Value::as_str)
            .is_some_and(|title| seen[title] > 1);
        if shared {
            schema["title"] = name.clone().into();
        }
    }
}

/// A request body that is one of `requests`; with none, any well-formed
/// call (which the gateway answers with `NOT_FOUND`).
fn requests(requests: Vec<Value>) -> Value {
    if !requests.is_empty() {
        return json!({ "oneOf": requests });
    }
    json!({
        "type": "object",
        "properties": {
            "operation": { "type": "string" },
            "input": {},
            "deadline_ms": deadline_schema(),
        },
        "required": ["operation"],
        "additionalProperties": false,
    })
}

fn deadline_schema() -> Value {
    json!({
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": crate::call::MAX_DEADLINE_MS,
        "description": "Milliseconds; may only shorten the host's deadline. `null`, like none, is the host's own",
    })
}

/// Adds `schema` to `schemas` as `name`, and its `$defs` (or draft-07
/// `definitions`) as components `name.Def`, with every local reference
/// rewritten to the component it now lives in.
fn hoist(schemas: &mut Map<String, Value>, name: &str, schema: &Value) {
    let mut root = schema.clone();
    let mut defs = Vec::new();
    if let Value::Object(object) = &mut root {
        object.remove("$schema");
        object.remove("$id");
        for keyword in ["$defs", "definitions"] {
            if let Some(Value::Object(found)) = object.remove(keyword) {
                defs.extend(found.into_iter().map(|(def, body)| (keyword, def, body)));
            }
        }
    }
    let mut places = Places {
        root: name.to_owned(),
        defs: Vec::new(),
    };
    for (keyword, def, _) in &defs {
        let component = unique(schemas, &places, &format!("{name}.{}", component_name(def)));
        places.defs.push((keyword, def.clone(), component));
    }
    places.rewrite(&mut root);
    schemas.insert(name.to_owned(), root);
    for ((_, _, mut body), (_, _, component)) in defs.into_iter().zip(places.defs.clone()) {
        places.rewrite(&mut body);
        schemas.insert(component, body);
    }
}

/// Where one schema's parts went: its root and each of its definitions.
struct Places {
    root: String,
    /// The keyword (`$defs` or `definitions`), the definition's name and
    /// its component.
    defs: Vec<(&'static str, String, String)>,
}

impl Places {
    /// Rewrites every local `$ref` in `schema`. Values that are data, not
    /// schemas (`const`, `enum`, `default`, `examples`), are left as they
    /// are.
    fn rewrite(&self, schema: &mut Value) {
        match schema {
            Value::Object(object) => {
                for (key, value) in object.iter_mut() {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(reference)) => {
                            if let Some(moved) = self.moved(reference) {
                                *reference = moved;
                            }
                        }
                        ("const" | "enum" | "default" | "examples" | "example", _) => {}
                        (_, value) => self.rewrite(value),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.rewrite(item)),
            _ => {}
        }
    }

    /// Where `reference` points now, if it is a local JSON Pointer (an
    /// anchor, `#name`, is left as it is).
    fn moved(&self, reference: &str) -> Option<String> {
        let pointer = reference.strip_prefix('#')?;
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return None;
        }
        for (keyword, def, component) in &self.defs {
            let Some(rest) = pointer
                .strip_prefix('/')
                .and_then(|p| p.strip_prefix(keyword))
                .and_then(|p| p.strip_prefix('/'))
            else {
                continue;
            };
            let (segment, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if unescape(segment) == *def {
                return Some(format!("{COMPONENTS}{component}{tail}"));
            }
        }
        Some(format!("{COMPONENTS}{}{pointer}", self.root))
    }
}

/// A definition's name as a component name (`[A-Za-z0-9._-]`).
fn component_name(def: &str) -> String {
    def.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `wanted`, or `wanted_2`, `wanted_3`… if another component has it.
fn unique(schemas: &Map<String, Value>, places: &Places, wanted: &str) -> String {
    let taken = |name: &str| {
        schemas.contains_key(name)
            || name == places.root
            || places.defs.iter().any(|(_, _, c)| c == name)
    };
    let mut name = wanted.to_owned();
    let mut n = 1;
    while taken(&name) {
        n += 1;
        name = format!("{wanted}_{n}");
    }
    name
}

/// One JSON Pointer segment of a URI fragment, decoded: percent-escapes,
/// then `~1` and `~0`.
fn unescape(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded)
        .replace("~1", "/")
        .replace("~0", "~")
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "code": { "type": "string", "description": "UNAUTHORIZED, FORBIDDEN, NOT_FOUND, INVALID_INPUT, INVALID_OPERATION_TYPE, TIMEOUT, RESOURCE_EXHAUSTED, UNAVAILABLE, PLUGIN_FAILED, INTERNAL, CONFLICT, or a plugin's own code" },
            "message": { "type": "string" },
            "retryable": { "type": "boolean" },
            "details": { "type": "object" },
        },
        "required": ["code", "message", "retryable"],
    })
}

fn error_body_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "request_id": { "type": "string" },
            "result": { "const": "error" },
            "error": { "$ref": format!("{COMPONENTS}Error") },
        },
        "required": ["request_id", "result", "error"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hoisted(schema: Value) -> Map<String, Value> {
        let mut schemas = Map::new();
        hoist(&mut schemas, "ns.op.input", &schema);
        schemas
    }

    #[test]
    fn definitions_become_components_and_references_follow_them() {
        let schemas = hoisted(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:x",
            "type": "object",
            "properties": {
                "count": { "$ref": "#/$defs/WordCount" },
                "odd": { "$ref": "#/$defs/a~1b%20c" },
                "self": { "$ref": "#" },
                "inner": { "$ref": "#/properties/count" },
                "data": { "const": { "$ref": "#/$defs/WordCount" } },
            },
            "$defs": {
                "WordCount": { "type": "integer", "not": { "$ref": "#/$defs/a~1b c" } },
                "a/b c": { "type": "string" },
            },
        }));
        let root = &schemas["ns.op.input"];
        assert!(root.get("$defs").is_none() && root.get("$id").is_none());
        assert!(root.get("$schema").is_none());
        let properties = &root["properties"];
        assert_eq!(
            properties["count"]["$ref"],
            "#/components/schemas/ns.op.input.WordCount"
        );
        assert_eq!(
            properties["odd"]["$ref"],
            "#/components/schemas/ns.op.input.a_b_c"
        );
        assert_eq!(
            properties["self"]["$ref"],
            "#/components/schemas/ns.op.input"
        );
        assert_eq!(
            properties["inner"]["$ref"],
            "#/components/schemas/ns.op.input/properties/count"
        );
        // Data is not a schema: a `const` keeps what it says.
        assert_eq!(properties["data"]["const"]["$ref"], "#/$defs/WordCount");
        assert_eq!(
            schemas["ns.op.input.WordCount"]["not"]["$ref"],
            "#/components/schemas/ns.op.input.a_b_c"
        );
    }

    #[test]
    fn names_that_sanitize_alike_stay_apart() {
        let schemas = hoisted(json!({
            "$defs": { "a b": { "type": "string" }, "a_b": { "type": "integer" } },
            "anyOf": [{ "$ref": "#/$defs/a%20b" }, { "$ref": "#/$defs/a_b" }],
        }));
        let refs: Vec<&str> = schemas["ns.op.input"]["anyOf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["$ref"].as_str())
            .collect();
        assert_eq!(refs.len(), 2);
        assert_ne!(refs[0], refs[1]);
        for r in refs {
            let name = r.trim_start_matches(COMPONENTS);
            assert!(schemas.contains_key(name), "{r} dangles");
        }
    }
}
