//! Each operation's own route, `POST /ops/{ns}/{op}`, in the document: its
//! input schema as the request body, its output schema as the answer (an
//! event stream for a subscription), every error status the gateway may
//! answer, and the headers that carry what `/call` puts in its body.
//!
//! Its `operationId` is the operation's name with `.` for `/`
//! (`echo/echo` is `echo.echo`): names are `[a-z0-9_-]` segments, so the
//! mapping is reversible and two operations never share an id. Its tag is
//! the namespace, the plugin's.

use serde_json::{Map, Value, json};

use super::COMPONENTS;
use crate::dispatch::Operation;

/// The statuses a route may answer with an error body, and what each
/// means: each is a response component, `ErrorNNN`.
const ERRORS: [(&str, &str); 13] = [
    (
        "400",
        "A plugin's own (domain) error, or a body that is not JSON",
    ),
    (
        "401",
        "No valid bearer token, where anonymous callers are not taken",
    ),
    ("403", "The caller lacks a scope the operation requires"),
    ("404", "No such operation (or plugin) for this caller"),
    ("408", "The request body was not sent in time"),
    (
        "409",
        "The change conflicts: a name in use, or a replace that breaks callers (`details.breaks`)",
    ),
    ("413", "The request body is over the size limit"),
    ("422", "The input does not fit the input schema"),
    ("426", "A WebSocket route asked without a WebSocket upgrade"),
    (
        "429",
        "A limit or quota was reached; `Retry-After` says when to try again",
    ),
    ("500", "The plugin failed (a trap, a panic) or the host did"),
    (
        "503",
        "The host is shutting down or the plugin is being replaced",
    ),
    ("504", "The call ran past its deadline"),
];

/// What an operation's route, `/call` and `/batch` may answer with.
pub(super) const CALL_ERRORS: &[&str] = &[
    "400", "401", "403", "404", "408", "413", "422", "429", "500", "503", "504",
];

/// What the admin routes may answer with.
pub(super) const ADMIN_ERRORS: &[&str] = &[
    "400", "401", "403", "404", "408", "409", "413", "422", "429", "500", "503",
];

/// What the discovery routes may answer with.
pub(super) const DISCOVERY_ERRORS: &[&str] = &["401", "404", "422", "429"];

/// Responses referring to the error components of `statuses`.
pub(super) fn errors(statuses: &[&str]) -> Map<String, Value> {
    statuses
        .iter()
        .map(|status| {
            let reference = json!({ "$ref": format!("#/components/responses/Error{status}") });
            ((*status).to_owned(), reference)
        })
        .collect()
}

/// An event stream's per-event schema: a `data:` event per item of
/// `item`, then `event: completed` with the cost, or `event: error` with
/// the error. Each `data` is JSON text; `contentSchema` says of what.
pub(super) fn events(item: Value) -> Value {
    let data = |schema: Value| json!({ "type": "string", "contentMediaType": "application/json", "contentSchema": schema });
    json!({ "anyOf": [
        {
            "type": "object",
            "description": "One output",
            "properties": {
                "event": { "const": "message" },
                "data": data(item),
                "id": { "type": "string", "description": "The output's sequence number" },
            },
            "required": ["data"],
        },
        {
            "type": "object",
            "description": "The end: what the subscription cost",
            "properties": {
                "event": { "const": "completed" },
                "data": data(json!({ "type": "object", "properties": { "cost": { "type": "object" } } })),
            },
            "required": ["event", "data"],
        },
        {
            "type": "object",
            "description": "The end: why it failed (also for errors found before it started)",
            "properties": {
                "event": { "const": "error" },
                "data": data(json!({ "$ref": format!("{COMPONENTS}Error") })),
            },
            "required": ["event", "data"],
        },
    ] })
}

/// The operation name as an `operationId` (and an MCP tool name).
fn operation_id(name: &str) -> String {
    name.replace('/', ".")
}

/// The path item of `op`'s own route, at `/ops/{ns}/{op}` (a byte-stream
/// operation's at `/raw/{ns}/{op}`).
pub(super) fn path(op: &Operation) -> (String, Value) {
    let spec = &op.spec;
    if spec.op_type == crate::call::OpType::Raw {
        return raw_path(op);
    }
    if spec.op_type == crate::call::OpType::Http {
        return http_path(op);
    }
    let component = spec.name.replace('/', ".");
    let namespace = spec.name.split('/').next().unwrap_or_default();
    let input = json!({ "$ref": format!("{COMPONENTS}{component}.input") });
    let output = json!({ "$ref": format!("{COMPONENTS}{component}.output") });
    let subscription = spec.op_type == crate::call::OpType::Subscription;
    let answer = if subscription {
        json!({
            "description": "One `data:` event per output (each fits the output schema), then `event: completed` with the cost, or `event: error`",
            "headers": { "opbox-request-id": { "$ref": "#/components/headers/RequestId" } },
            "content": { "text/event-stream": { "schema": events(output) } },
        })
    } else {
        json!({
            "description": "The output",
            "headers": {
                "opbox-request-id": { "$ref": "#/components/headers/RequestId" },
                "opbox-cost": { "$ref": "#/components/headers/Cost" },
            },
            "content": { "application/json": { "schema": output } },
        })
    };
    let mut responses = Map::new();
    responses.insert("200".into(), answer);
    responses.extend(errors(CALL_ERRORS));
    let takes_null = op.input.is_valid(&Value::Null);
    let security = security(spec);
    let item = json!({ "post": {
        "operationId": operation_id(&spec.name),
        "summary": spec.description,
        "tags": [namespace],
        "security": security,
        "parameters": [{ "$ref": "#/components/parameters/Deadline" }],
        "requestBody": {
            "required": !takes_null,
            "description": if takes_null { "The input; no body is `null`" } else { "The input" },
            "content": { "application/json": { "schema": input } },
        },
        "responses": responses,
        "x-opbox-op-type": spec.op_type,
    } });
    (format!("/ops/{}", spec.name), item)
}

/// The path item of a byte-stream operation: arguments in the
/// `opbox-input` header, stdin as the request body, its output as the
/// response body (`docs/raw.md`).
fn raw_path(op: &Operation) -> (String, Value) {
    let spec = &op.spec;
    let component = spec.name.replace('/', ".");
    let namespace = spec.name.split('/').next().unwrap_or_default();
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "stdout as it is written, then the `opbox-exit` (or `opbox-error`) and `opbox-cost` trailers; or, asked for with `Accept`, frames of `[type u8][length u32][payload]`: 1 stdout, 2 stderr, 3 the exit code, 4 the error",
            "headers": { "opbox-request-id": { "$ref": "#/components/headers/RequestId" } },
            "content": {
                "application/octet-stream": { "schema": { "type": "string", "format": "binary" } },
                "application/vnd.opbox.raw": { "schema": { "type": "string", "format": "binary" } },
            },
        }),
    );
    responses.extend(errors(CALL_ERRORS));
    let security = security(spec);
    let item = json!({ "post": {
        "operationId": operation_id(&spec.name),
        "summary": spec.description,
        "tags": [namespace],
        "security": security,
        "parameters": [
            { "$ref": "#/components/parameters/Deadline" },
            {
                "name": "opbox-input",
                "in": "header",
                "description": "The arguments, JSON; `{}` when absent",
                "required": false,
                "content": { "application/json": {
                    "schema": { "$ref": format!("{COMPONENTS}{component}.input") },
                } },
            },
        ],
        "requestBody": {
            "required": false,
            "description": "stdin, streamed; its end closes the operation's stdin",
            "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } },
        },
        "responses": responses,
        "x-opbox-op-type": spec.op_type,
    } });
    (format!("/raw/{}", spec.name), item)
}

/// The mount of a `wasi:http` component, `/http/{name}/{path}`: any path
/// below it, with the methods a handler usually takes; what it answers is
/// the component's own.
fn http_path(op: &Operation) -> (String, Value) {
    let spec = &op.spec;
    let namespace = spec.name.split('/').next().unwrap_or_default();
    let mut responses = Map::new();
    responses.insert(
        "default".into(),
        json!({
            "description": "What the component answers; the host's own errors (no such component, no room, a trap before it answered) have the usual error body",
            "headers": { "opbox-request-id": { "$ref": "#/components/headers/RequestId" } },
        }),
    );
    let security = security(spec);
    let mut item = Map::new();
    for method in ["get", "post", "put", "patch", "delete"] {
        item.insert(
            method.into(),
            json!({
                "operationId": format!("{}.{method}", operation_id(&spec.name)),
                "summary": spec.description,
                "tags": [namespace],
                "security": security,
                "parameters": [
                    { "$ref": "#/components/parameters/Deadline" },
                    {
                        "name": "path",
                        "in": "path",
                        "required": true,
                        "description": "The path below the mount; the component sees it as `/{path}`, with the query",
                        "schema": { "type": "string" },
                    },
                ],
                "responses": responses,
                "x-opbox-op-type": spec.op_type,
                "x-opbox-mount": format!("/http/{namespace}/"),
            }),
        );
    }
    (format!("/http/{namespace}/{{path}}"), Value::Object(item))
}

/// Who may call `spec`: scope-free operations may be called without a token.
fn security(spec: &crate::call::OperationSpec) -> Value {
    let open = spec.access_control.required_scopes.is_empty()
        && spec.access_control.required_scopes_any.is_empty();
    if open {
        json!([{ "bearer": [] }, {}])
    } else {
        json!([{ "bearer": [] }])
    }
}

/// The components the routes refer to: the error responses, the deadline
/// parameter and the response headers.
pub(super) fn components(document: &mut Value) {
    let mut responses = Map::new();
    for (status, meaning) in ERRORS {
        responses.insert(
            format!("Error{status}"),
            json!({
                "description": meaning,
                "headers": { "opbox-request-id": { "$ref": "#/components/headers/RequestId" } },
                "content": { "application/json": {
                    "schema": { "$ref": format!("{COMPONENTS}ErrorBody") },
                } },
            }),
        );
    }
    let components = &mut document["components"];
    components["responses"] = Value::Object(responses);
    components["parameters"] = json!({ "Deadline": {
        "name": "opbox-deadline-ms",
        "in": "header",
        "required": false,
        "description": "Milliseconds; may only shorten the host's deadline",
        "schema": { "type": "integer", "minimum": 1, "maximum": crate::call::MAX_DEADLINE_MS },
    } });
    components["headers"] = json!({
        "RequestId": {
            "description": "The call's id, as its log line and events name it",
            "schema": { "type": "string" },
        },
        "Cost": {
            "description": "What the call cost, as JSON: wall and guest CPU time, fuel, peak memory, host calls, bytes in and out",
            "schema": { "type": "string" },
        },
    });
}
