//! The OpenAPI 3.1 document of the gateway, as one caller sees it: the
//! routes, and every operation visible to that caller with its input and
//! output schemas (`GET /openapi.json`).
//!
//! Each operation's schemas are components named `ns.op.input` and
//! `ns.op.output`. They keep their own `$defs`; an `$id` on each makes
//! their internal `#/$defs/…` references resolve inside them, as JSON
//! Schema 2020-12 (which OpenAPI 3.1 uses) says.

use serde_json::{Map, Value, json};

use crate::registry::{OpType, OperationSpec};

/// The document for `specs`, the operations one caller can see.
pub fn document(specs: &[OperationSpec]) -> Value {
    let mut schemas = Map::new();
    schemas.insert("Error".into(), error_schema());
    schemas.insert("ErrorBody".into(), error_body_schema());
    let mut calls = Vec::new();
    let mut outputs = Vec::new();
    let mut subscriptions = Vec::new();
    for spec in specs {
        let component = spec.name.replace('/', ".");
        let input = format!("{component}.input");
        let output = format!("{component}.output");
        schemas.insert(input.clone(), with_id(&spec.input_schema, &input));
        schemas.insert(output.clone(), with_id(&spec.output_schema, &output));
        let request = json!({
            "type": "object",
            "title": spec.name,
            "description": spec.description,
            "properties": {
                "operation": { "const": spec.name },
                "input": { "$ref": format!("#/components/schemas/{input}") },
                "deadline_ms": { "type": "integer", "minimum": 0 },
            },
            "required": ["operation"],
            "x-opbox-op-type": spec.op_type,
            "x-opbox-access-control": spec.access_control,
        });
        if spec.op_type == OpType::Subscription {
            subscriptions.push(request);
        } else {
            calls.push(request);
            outputs.push(json!({ "$ref": format!("#/components/schemas/{output}") }));
        }
    }
    let error = json!({
        "description": "The error, with the status of its code",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "opbox",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Operations of sandboxed WebAssembly plugins, as this caller sees them.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{ "bearer": [] }, {}],
        "paths": {
            "/call": { "post": {
                "operationId": "call",
                "summary": "Runs one query or mutation",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "oneOf": calls },
                } } },
                "responses": {
                    "200": { "description": "The output", "content": { "application/json": { "schema": {
                        "type": "object",
                        "properties": {
                            "request_id": { "type": "string" },
                            "result": { "const": "ok" },
                            "output": { "oneOf": outputs },
                        },
                        "required": ["request_id", "result", "output"],
                    } } } },
                    "default": error,
                },
            } },
            "/batch": { "post": {
                "operationId": "batch",
                "summary": "Runs several queries and mutations concurrently; results keep their order",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "type": "array", "items": { "oneOf": calls } },
                } } },
                "responses": {
                    "200": { "description": "One /call body per item", "content": { "application/json": { "schema": {
                        "type": "object",
                        "properties": { "results": { "type": "array" } },
                        "required": ["results"],
                    } } } },
                    "default": error,
                },
            } },
            "/subscribe": { "post": {
                "operationId": "subscribe",
                "summary": "Runs a subscription as Server-Sent Events: one `data:` event per output, then `event: completed`, or `event: error`",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "oneOf": subscriptions },
                } } },
                "responses": {
                    "200": { "description": "The outputs", "content": { "text/event-stream": {} } },
                    "default": error,
                },
            } },
            "/search": { "get": {
                "operationId": "search",
                "summary": "The caller's operations, filtered by `q`",
                "parameters": [{ "name": "q", "in": "query", "schema": { "type": "string" } }],
                "responses": { "200": { "description": "Name, kind and description of each" }, "default": error },
            } },
            "/schema": { "get": {
                "operationId": "schema",
                "summary": "One operation's full spec",
                "parameters": [{ "name": "name", "in": "query", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "The spec" }, "default": error },
            } },
            "/openapi.json": { "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": { "200": { "description": "OpenAPI 3.1" }, "default": error },
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
    })
}

/// `schema` with an `$id`, so references inside it stay inside it.
fn with_id(schema: &Value, component: &str) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(object) = &mut schema {
        object
            .entry("$id")
            .or_insert_with(|| json!(format!("urn:opbox:schema:{component}")));
        object.remove("$schema");
    }
    schema
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "code": { "type": "string", "description": "UNAUTHORIZED, FORBIDDEN, NOT_FOUND, INVALID_INPUT, INVALID_OPERATION_TYPE, TIMEOUT, RESOURCE_EXHAUSTED, UNAVAILABLE, PLUGIN_FAILED, INTERNAL, or a plugin's own code" },
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
            "error": { "$ref": "#/components/schemas/Error" },
        },
        "required": ["request_id", "result", "error"],
    })
}
