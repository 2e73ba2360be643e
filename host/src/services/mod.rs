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
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::call::{AccessControl, CallError, ErrorCode, OpType, OperationSpec, Visibility};
use crate::contract::{
    self, NoInput, OpenApiDocument, OperationList, OperationName, PluginName, PluginUsage, Search,
};
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
    native(
        "list",
        "Lists the operations the caller can see, optionally filtered by `q`.",
        |cx, search: Search| async move {
            let operations = cx.dispatcher.search(&cx.identity, search.q.as_deref());
            Ok(OperationList { operations })
        },
    )
}

fn schema() -> Result<Operation, RegistryError> {
    native(
        "schema",
        "Returns the full spec of one operation: kind, schemas, access control.",
        |cx, op: OperationName| async move { cx.dispatcher.schema(&cx.identity, &op.name) },
    )
}

fn openapi() -> Result<Operation, RegistryError> {
    let documents = Arc::new(openapi::Documents::default());
    native(
        "openapi",
        "The OpenAPI 3.1 document of the gateway and of the operations the caller can see.",
        move |cx, NoInput {}| {
            let documents = documents.clone();
            async move {
                let document = documents.get(&cx.dispatcher, &cx.identity);
                Ok(OpenApiDocument(Value::clone(&document)))
            }
        },
    )
}

fn plugin() -> Result<Operation, RegistryError> {
    native(
        "plugin",
        "Describes one plugin: version, digest, effective limits, live instances and open subscriptions.",
        |cx, PluginName { name }| async move {
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
                CallError::new(ErrorCode::NotFound, format!("no plugin named `{name}`"))
            })?;
            let tenant = &cx.identity.tenant;
            Ok(PluginUsage {
                name: plugin.name().to_owned(),
                version: plugin.version().to_owned(),
                digest: plugin.digest().to_owned(),
                limits: plugin.limits().clone(),
                grants: plugin.grants().summary(),
                live_instances: plugin.live_instances_for(tenant),
                open_subscriptions: plugin.open_subscriptions_for(tenant),
                dropped_log_lines: plugin.dropped_log_lines(),
                dropped_output_bytes: plugin.dropped_output_bytes(),
                operations,
            })
        },
    )
}

/// A `services/*` query taking an `I` and answering an `O`, their schemas
/// derived from the types.
fn native<I, O, F, Fut>(op: &str, description: &str, run: F) -> Result<Operation, RegistryError>
where
    I: DeserializeOwned + JsonSchema,
    O: Serialize + JsonSchema,
    F: Fn(CallContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, CallError>> + Send + 'static,
{
    let handler: NativeOnce = Arc::new(move |cx, input| match contract::read::<I>(input) {
        Ok(input) => run(cx, input)
            .map(|output| serde_json::to_value(output?).map_err(|_| CallError::internal()))
            .boxed(),
        Err(error) => std::future::ready(Err(error)).boxed(),
    });
    Operation::compile(
        OperationSpec {
            name: format!("{NAMESPACE}/{op}"),
            op_type: OpType::Query,
            visibility: Visibility::External,
            description: description.to_owned(),
            input_schema: contract::schema::<I>(),
            output_schema: contract::schema::<O>(),
            access_control: AccessControl::default(),
        },
        Handler::NativeOnce(handler),
    )
}
