//! The admin routes in the OpenAPI document: `/admin/v1/plugins` and
//! `/admin/v1/events`, for callers holding `admin` or `plugins:write`.

use serde_json::{Map, Value, json};

use super::COMPONENTS;
use super::typed::{ADMIN_ERRORS, errors};

/// `ok` under `status`, and the admin routes' errors.
fn answers(status: &str, ok: Value) -> Value {
    let mut responses = errors(ADMIN_ERRORS);
    responses.insert(status.into(), ok);
    Value::Object(responses)
}

/// The admin routes' path items.
pub(super) fn paths() -> Map<String, Value> {
    let tenant = json!({
        "name": "tenant", "in": "query", "schema": { "type": "string" },
        "description": "Whose plugin (the operator's choice); shared when absent. A tenant's caller always addresses its own tenant.",
    });
    let name =
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    let settings = json!({
        "name": "opbox-plugin", "in": "header",
        "description": "The upload's settings as JSON: `name` (install only), and `limits`, `grants`, `reuse` (the operator's only) and `placement`, the fields of a `[[plugins]]` entry",
        "content": { "application/json": { "schema": { "$ref": format!("{COMPONENTS}AdminUploadSettings") } } },
    });
    let component = json!({ "required": true, "content": { "application/wasm": {
        "schema": { "type": "string", "contentMediaType": "application/wasm" },
    } } });
    let plugin = |description: &str| {
        json!({ "description": description, "content": { "application/json": {
        "schema": { "$ref": format!("{COMPONENTS}AdminPlugin") },
    } } })
    };
    let mut paths = Map::new();
    paths.insert("/admin/v1/plugins".into(), json!({
        "get": {
            "operationId": "adminListPlugins",
            "summary": "The plugins the caller sees",
            "parameters": [tenant],
            "responses": answers("200", json!({ "description": "The plugins", "content": { "application/json": { "schema": {
                "type": "object",
                "properties": { "plugins": { "type": "array", "items": { "$ref": format!("{COMPONENTS}AdminPlugin") } } },
                "required": ["plugins"],
            } } } })),
        },
        "post": {
            "operationId": "adminInstallPlugin",
            "summary": "Installs a component",
            "parameters": [tenant, settings],
            "requestBody": component,
            "responses": answers("201", plugin("The plugin, installed")),
        },
    }));
    paths.insert("/admin/v1/plugins/{name}".into(), json!({
        "get": {
            "operationId": "adminShowPlugin",
            "summary": "One plugin",
            "parameters": [name, tenant],
            "responses": answers("200", plugin("The plugin")),
        },
        "put": {
            "operationId": "adminReplacePlugin",
            "summary": "Replaces a plugin with a new version; one that breaks its callers is refused with 409 and `details.breaks` unless `force=true`",
            "parameters": [name, tenant, settings, {
                "name": "force", "in": "query", "schema": { "type": "boolean" },
            }],
            "requestBody": component,
            "responses": answers("200", plugin("The new version")),
        },
        "delete": {
            "operationId": "adminRemovePlugin",
            "summary": "Removes a plugin; calls running on it finish",
            "parameters": [name, tenant],
            "responses": answers("200", json!({ "description": "Removed", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "removed": { "type": "string" } }, "required": ["removed"],
            } } } })),
        },
    }));
    paths.insert("/admin/v1/plugins/{name}/logs".into(), json!({
        "get": {
            "operationId": "adminPluginLogs",
            "summary": "The last lines the plugin's guests logged after `after` (a tenant's caller: those of its own calls)",
            "parameters": [name, tenant, 
                { "name": "after", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1 } },
            ],
            "responses": answers("200", json!({ "description": "The lines", "content": { "application/json": { "schema": {
                "type": "object",
                "properties": {
                    "lines": { "type": "array", "items": { "type": "object" } },
                    "next": { "type": "integer" },
                },
                "required": ["lines", "next"],
            } } } })),
        },
    }));
    paths.insert("/admin/v1/events".into(), json!({
        "get": {
            "operationId": "adminEvents",
            "summary": "A page of the event feed after `cursor`; with a WebSocket upgrade, the feed followed: a snapshot, stored events, live events, and a `diagnostic` before the socket closes",
            "parameters": [
                { "name": "cursor", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                { "name": "tenant", "in": "query", "schema": { "type": "string" } },
            ],
            "responses": answers("200", json!({ "description": "The page", "content": { "application/json": { "schema": {
                "type": "object",
                "properties": {
                    "events": { "type": "array", "items": { "$ref": format!("{COMPONENTS}AdminEvent") } },
                    "next_cursor": { "type": "integer" },
                    "oldest": { "type": "integer" },
                    "last": { "type": "integer" },
                },
                "required": ["events", "next_cursor", "oldest", "last"],
            } } } })),
        },
    }));
    paths
}

/// The admin routes' component schemas.
pub(super) fn schemas() -> [(&'static str, Value); 3] {
    [
        (
            "AdminUploadSettings",
            crate::contract::schema::<crate::contract::UploadSettings>(),
        ),
        (
            "AdminPlugin",
            crate::contract::schema::<crate::contract::PluginDetail>(),
        ),
        (
            "AdminEvent",
            json!({
                "type": "object",
                "properties": {
                    "cursor": { "type": "integer" },
                    "at_ms": { "type": "integer" },
                    "kind": { "type": "string" },
                    "tenant": { "type": ["string", "null"] },
                    "plugin": { "type": ["string", "null"] },
                    "detail": { "type": "object" },
                },
                "required": ["cursor", "at_ms", "kind", "detail"],
            }),
        ),
    ]
}
