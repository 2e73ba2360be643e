//! Native operations every host offers, under the `services` namespace.
//!
//! - `services/list` (query): the operations the caller can see, optionally
//!   filtered by `q`.
//! - `services/schema` (query): the full spec of one operation.
//! - `services/plugin` (query): one plugin's version, digest, effective
//!   limits, grants, live instances and open subscriptions.
//! - `services/openapi` (query): the OpenAPI 3.1 document of the gateway
//!   and of the caller's operations (`GET /openapi.json`).

mod openapi;

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use serde_json::{Value, json};

use crate::call::{AccessControl, CallError, OpType, OperationSpec, Visibility};
use crate::dispatch::{CallContext, Handler, NativeOnce, Operation, Registry};
use crate::registry::{Owner, RegistryError};

/// The namespace of the host's own operations.
pub const NAMESPACE: &str = "services";

/// Registers `services/*` in `registry`, shared by every tenant.
pub fn register(registry: &Registry) -> Result<(), RegistryError> {
    registry.insert_namespace(&Owner::Shared, NAMESPACE, operations()?)
}

/// The operations of `services/*`.
pub fn operations() -> Result<Vec<Operation>, RegistryError> {
    Ok(vec![list()?, schema()?, plugin()?, openapi()?])
}

fn list() -> Result<Operation, RegistryError> {
    let handler = |cx: CallContext, input: Value| async move {
        let query = input.get("q").and_then(Value::as_str);
        let operations = cx.dispatcher.search(&cx.identity, query);
        Ok(json!({ "operations": operations }))
    };
    native(
        "list",
        "Lists the operations the caller can see, optionally filtered by `q`.",
        json!({
            "type": ["object", "null"],
            "properties": { "q": { "type": "string", "description": "Substring of name or description." } },
            "additionalProperties": false
        }),
        json!({
            "type": "object",
            "properties": { "operations": { "type": "array", "items": { "type": "object" } } },
            "required": ["operations"]
        }),
        handler,
    )
}

fn schema() -> Result<Operation, RegistryError> {
    let handler = |cx: CallContext, input: Value| async move {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let spec = cx.dispatcher.schema(&cx.identity, name)?;
        serde_json::to_value(spec).map_err(|_| CallError::internal())
    };
    native(
        "schema",
        "Returns the full spec of one operation: kind, schemas, access control.",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string", "description": "`namespace/op`." } },
            "required": ["name"],
            "additionalProperties": false
        }),
        json!({ "type": "object" }),
        handler,
    )
}

fn openapi() -> Result<Operation, RegistryError> {
    let documents = Arc::new(openapi::Documents::default());
    let handler = move |cx: CallContext, _input: Value| {
        let documents = documents.clone();
        async move { Ok(Value::clone(&documents.get(&cx.dispatcher, &cx.identity))) }
    };
    native(
        "openapi",
        "The OpenAPI 3.1 document of the gateway and of the operations the caller can see.",
        json!({ "type": ["object", "null"], "additionalProperties": false }),
        json!({ "type": "object", "required": ["openapi", "paths"] }),
        handler,
    )
}

fn plugin() -> Result<Operation, RegistryError> {
    let handler = |cx: CallContext, input: Value| async move {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let registry = cx.dispatcher.registry();
        let mut operations = Vec::new();
        let mut found = None;
        for op in registry.all(&cx.identity.tenant) {
            if let Handler::Plugin { plugin, .. } = &op.handler
                && plugin.name() == name
            {
                operations.push(op.spec.name.clone());
                found = Some(plugin.clone());
            }
        }
        let plugin = found.ok_or_else(|| {
            CallError::new(
                crate::call::ErrorCode::NotFound,
                format!("no plugin named `{name}`"),
            )
        })?;
        Ok(json!({
            "name": plugin.name(),
            "version": plugin.version(),
            "digest": plugin.digest(),
            "limits": plugin.limits(),
            "grants": plugin.grants().summary(),
            // The caller's own usage: a shared plugin's other callers are
            // other tenants' business.
            "live_instances": plugin.live_instances_for(&cx.identity.tenant),
            "open_subscriptions": plugin.open_subscriptions_for(&cx.identity.tenant),
            "dropped_log_lines": plugin.dropped_log_lines(),
            "dropped_output_bytes": plugin.dropped_output_bytes(),
            "operations": operations,
        }))
    };
    native(
        "plugin",
        "Describes one plugin: version, digest, effective limits, live instances and open subscriptions.",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string", "description": "The plugin's namespace." } },
            "required": ["name"],
            "additionalProperties": false
        }),
        json!({ "type": "object", "required": ["name", "version", "digest", "limits"] }),
        handler,
    )
}

/// A `services/*` query running `handler`.
fn native<F, Fut>(
    op: &str,
    description: &str,
    input_schema: Value,
    output_schema: Value,
    handler: F,
) -> Result<Operation, RegistryError>
where
    F: Fn(CallContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
{
    let handler: NativeOnce = Arc::new(move |cx, input| handler(cx, input).boxed());
    Operation::compile(
        OperationSpec {
            name: format!("{NAMESPACE}/{op}"),
            op_type: OpType::Query,
            visibility: Visibility::External,
            description: description.to_owned(),
            input_schema,
            output_schema,
            access_control: AccessControl::default(),
        },
        Handler::NativeOnce(handler),
    )
}
