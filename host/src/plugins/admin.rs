//! `admin/*`: the plugin lifecycle as operations, so that every transport,
//! access control, quota and log sees a change like any other call. The
//! HTTP API (`/admin/v1/plugins`) is a thin layer over these.
//!
//! The host operator (scope `admin`) manages every plugin: `tenant` names
//! whose plugin it is, and absent, a shared one. A tenant's caller with the
//! scope `plugins:write` manages only its own tenant's plugins, within the
//! tenant's allowance: another tenant's do not exist for it (`NOT_FOUND`,
//! as for a name nobody uses), and shared ones are not its to change.

use std::future::Future;
use std::sync::Arc;

use base64::Engine;
use futures::FutureExt;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::{Authority, Listed, Plugins, WeakPlugins};
use crate::call::{
    AccessControl, Attachment, AttachmentError, CallError, ErrorCode, MAX_SEGMENT_BYTES, OpType,
    OperationSpec, Visibility, is_valid_segment,
};
use crate::contract::{
    self, LogLine, LogLines, OperationBrief, PluginDetail, PluginList, PluginSource, PluginState,
    Removed,
};
use crate::dispatch::{CallContext, Handler, NativeOnce, Operation};
use crate::registry::RegistryError;
use crate::runtime::Plugin;

/// The namespace of the lifecycle operations.
pub const NAMESPACE: &str = "admin";

/// The scope of the host operator: every plugin.
pub(super) const OPERATOR: &str = "admin";

/// The scope of a tenant's caller managing its own tenant's plugins.
pub(super) const TENANT: &str = "plugins:write";

/// The operations of `admin/*`, over `plugins`.
pub fn operations(plugins: &Plugins) -> Result<Vec<Operation>, RegistryError> {
    // Weak: the registry holding these operations belongs to the host
    // that holds the plugins.
    let plugins = plugins.downgrade();
    let mut operations = vec![
        install(&plugins)?,
        replace(&plugins)?,
        remove(&plugins)?,
        list(&plugins)?,
        show(&plugins)?,
        logs(&plugins)?,
    ];
    operations.extend(super::feed::operations(&plugins)?);
    Ok(operations)
}

/// What callers learn of a plugin: never secret values or host paths.
pub(crate) fn detail(plugin: &Plugin, tenant: Option<&str>, fixed: bool) -> PluginDetail {
    PluginDetail {
        state: if plugin.is_retired() {
            PluginState::Retired
        } else {
            PluginState::Active
        },
        name: plugin.name().to_owned(),
        tenant: tenant.map(str::to_owned),
        source: if fixed {
            PluginSource::Config
        } else {
            PluginSource::Api
        },
        version: plugin.version().to_owned(),
        digest: plugin.digest().to_owned(),
        operations: plugin
            .operations()
            .into_iter()
            .map(|op| OperationBrief {
                name: op.spec.name,
                op_type: op.spec.op_type,
            })
            .collect(),
        limits: plugin.limits().clone(),
        grants: plugin.grants().summary(),
        reuse: plugin.reuse().cloned(),
        live_instances: plugin.live_instances(),
        open_subscriptions: plugin.open_subscriptions(),
        calls: plugin.calls(),
        failures: plugin.failures(),
    }
}

/// Whose plugin an input names, for its caller, and, for a change, its
/// settings as given.
struct Target {
    /// Who asks: the operator, or a tenant's caller.
    authority: Authority,
    /// The tenant whose plugin it is; `None`: shared.
    tenant: Option<String>,
    name: Option<String>,
    /// `limits`, `grants`, `reuse` and `placement`, as given.
    settings: Value,
    /// The component as bytes beside the input, when it was uploaded.
    attachment: Option<Attachment>,
}

impl Target {
    /// Reads an input its operation's schema has checked, for the caller
    /// of `cx`: a tenant's caller always addresses its own tenant, and
    /// naming another reads as naming one that does not exist.
    fn of(cx: &CallContext, input: &Value) -> Result<Self, CallError> {
        let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
        let (tenant, name) = (text("tenant"), text("name"));
        for (field, value) in [("name", &name), ("tenant", &tenant)] {
            if value.as_ref().is_some_and(|v| !is_valid_segment(v)) {
                return Err(CallError::invalid_input(format!(
                    "`{field}` must be [a-z0-9_-]+, at most {MAX_SEGMENT_BYTES} bytes"
                )));
            }
        }
        let identity = &cx.identity;
        let (authority, tenant) = if identity.scopes.iter().any(|s| s == OPERATOR) {
            (Authority::Operator, tenant)
        } else {
            match tenant {
                Some(other) if other != identity.tenant => {
                    return Err(match &name {
                        Some(name) => super::PluginError::NotFound(name.clone()).into(),
                        None => super::PluginError::UnknownTenant(other).into(),
                    });
                }
                _ => (Authority::Tenant, Some(identity.tenant.clone())),
            }
        };
        let settings: Map<String, Value> = ["limits", "grants", "reuse", "placement"]
            .into_iter()
            .filter_map(|key| Some((key.to_owned(), input.get(key)?.clone())))
            .collect();
        Ok(Self {
            authority,
            tenant,
            name,
            settings: Value::Object(settings),
            attachment: cx.attachment.clone(),
        })
    }

    fn name(&self) -> Result<&str, CallError> {
        self.name
            .as_deref()
            .ok_or_else(|| CallError::invalid_input("`name` is required"))
    }

    /// The plugin named, as its caller sees it: the tenant's own of that
    /// name, else the shared one.
    fn seen(&self, plugins: &Plugins) -> Result<Listed, CallError> {
        let name = self.name()?;
        let listed = plugins.list(self.tenant.as_deref());
        let found = |tenant: &Option<String>| {
            listed
                .iter()
                .find(|l| l.plugin.name() == name && l.tenant == *tenant)
                .cloned()
        };
        found(&self.tenant)
            .or_else(|| found(&None))
            .ok_or_else(|| super::error::no_plugin(name))
    }

    /// The component, brought in on a turn of `plugins`' uploads (held
    /// until the change is made or refused) and within their size limit,
    /// whichever way it came: no more than `max_plugin_bytes` is ever
    /// decoded or read.
    async fn component(
        &mut self,
        plugins: &Plugins,
        wasm_base64: Option<String>,
    ) -> Result<(Vec<u8>, OwnedSemaphorePermit), CallError> {
        let max = plugins.max_plugin_bytes();
        let too_large = || {
            CallError::new(
                ErrorCode::ResourceExhausted,
                format!("the component is larger than {max} bytes"),
            )
            .with_details(json!({ "limit": "max_plugin_bytes", "value": max }))
        };
        let turn = plugins.upload_turn()?;
        let wasm = match (wasm_base64, self.attachment.take()) {
            (Some(_), Some(_)) => {
                return Err(CallError::invalid_input(
                    "the component came both as `wasm_base64` and as the upload; send it once",
                ));
            }
            (None, None) => {
                return Err(CallError::invalid_input(
                    "the component is required: upload it, or give it as `wasm_base64`",
                ));
            }
            (Some(text), None) => {
                if base64::decoded_len_estimate(text.len()) > max.saturating_add(2) {
                    return Err(too_large());
                }
                let wasm = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| {
                        CallError::invalid_input(format!("`wasm_base64` is not base64: {e}"))
                    })?;
                if wasm.len() > max {
                    return Err(too_large());
                }
                wasm
            }
            (None, Some(attachment)) => {
                attachment.read(max).await.map_err(|error| match error {
                    AttachmentError::TooLarge { .. } => too_large(),
                    AttachmentError::TimedOut { after } => {
                        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                        CallError::new(
                            ErrorCode::Timeout,
                            format!("the component was not sent within {ms} ms"),
                        )
                        .with_details(json!({ "limit": "body_timeout_ms", "value": ms }))
                    }
                    other => CallError::invalid_input(format!(
                        "the component could not be read: {other}"
                    )),
                })?
            }
        };
        Ok((wasm, turn))
    }
}

fn install(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    admin_op(
        "install",
        OpType::Mutation,
        "Installs a plugin: a component (uploaded, or as base64), its namespace (default: its own), tenant (default: shared), limits, grants and (the operator's only) instance reuse.",
        plugins,
        |plugins, mut target, input: contract::Install| async move {
            let (wasm, _turn) = target.component(&plugins, input.wasm_base64).await?;
            let tenant = target.tenant.as_deref();
            let plugin = plugins
                .install(
                    target.authority,
                    tenant,
                    target.name.as_deref(),
                    &wasm,
                    target.settings.clone(),
                )
                .await?;
            Ok(detail(&plugin, tenant, false))
        },
    )
}

fn replace(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    admin_op(
        "replace",
        OpType::Mutation,
        "Replaces an installed plugin with a new version, without dropping a call. A version that breaks callers of the old one is refused unless `force` is true.",
        plugins,
        |plugins, mut target, input: contract::Replace| async move {
            let (wasm, _turn) = target.component(&plugins, input.wasm_base64).await?;
            let tenant = target.tenant.as_deref();
            let plugin = plugins
                .replace(
                    target.authority,
                    tenant,
                    target.name()?,
                    &wasm,
                    target.settings.clone(),
                    input.force,
                )
                .await?;
            Ok(detail(&plugin, tenant, false))
        },
    )
}

fn remove(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    admin_op(
        "remove",
        OpType::Mutation,
        "Removes an installed plugin; calls running on it finish.",
        plugins,
        |plugins, target, _: contract::Named| async move {
            let name = target.name()?;
            plugins.remove(target.tenant.as_deref(), name).await?;
            Ok(Removed {
                removed: name.to_owned(),
            })
        },
    )
}

fn list(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    admin_op(
        "list",
        OpType::Query,
        "Lists the plugins the caller sees: a tenant's and the shared ones; for the operator naming no tenant, every plugin.",
        plugins,
        |plugins, target, _: contract::Listing| async move {
            // The operator's view, with no tenant named, is every plugin.
            let listed = match (target.authority, target.tenant.as_deref()) {
                (Authority::Operator, None) => plugins.all(),
                (_, tenant) => plugins.list(tenant),
            };
            let plugins = listed
                .iter()
                .map(|listed| detail(&listed.plugin, listed.tenant.as_deref(), listed.fixed))
                .collect();
            Ok(PluginList { plugins })
        },
    )
}

fn show(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    admin_op(
        "show",
        OpType::Query,
        "Describes one plugin: version, digest, operations, limits, grants, live instances.",
        plugins,
        |plugins, target, _: contract::Named| async move {
            let listed = target.seen(&plugins)?;
            Ok(detail(
                &listed.plugin,
                listed.tenant.as_deref(),
                listed.fixed,
            ))
        },
    )
}

/// Log lines one `admin/logs` answer holds at most.
const MAX_LOG_LINES: usize = crate::capabilities::log_tail::MAX_LINES;

fn logs(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    admin_op(
        "logs",
        OpType::Query,
        "The last lines a plugin's guests logged, after `after`: the operator reads every line, a tenant's caller those of its own calls.",
        plugins,
        |plugins, target, input: contract::Logs| async move {
            let listed = target.seen(&plugins)?;
            let reader = match target.authority {
                Authority::Operator => None,
                Authority::Tenant => target.tenant.as_deref(),
            };
            let limit = input
                .limit
                .map_or(MAX_LOG_LINES, |n| {
                    usize::try_from(n).unwrap_or(MAX_LOG_LINES)
                })
                .min(MAX_LOG_LINES);
            let (lines, next) = listed.plugin.log_tail().after(input.after, limit, reader);
            let lines = lines
                .iter()
                .map(|line| LogLine {
                    seq: line.seq,
                    at_ms: line.at_ms,
                    request_id: line.request_id.to_string(),
                    level: line.level.to_owned(),
                    stream: line.stream.map(str::to_owned),
                    message: line.message.clone(),
                    tenant: reader.is_none().then(|| line.tenant.to_string()),
                })
                .collect();
            Ok(LogLines { lines, next })
        },
    )
}

/// A lifecycle operation (see [`operation`]) whose input is an `I` and
/// output an `O`, their schemas derived from the types: `run` gets the
/// plugins, whose plugin the input names for its caller ([`Target`]), and
/// the input.
fn admin_op<I, O, F, Fut>(
    op: &str,
    op_type: OpType,
    description: &str,
    plugins: &WeakPlugins,
    run: F,
) -> Result<Operation, RegistryError>
where
    I: DeserializeOwned + JsonSchema,
    O: Serialize + JsonSchema,
    F: Fn(Plugins, Target, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, CallError>> + Send + 'static,
{
    let plugins = plugins.clone();
    let handler: NativeOnce = Arc::new(move |cx: CallContext, input: Value| {
        let read = plugins.upgrade().and_then(|plugins| {
            let target = Target::of(&cx, &input)?;
            Ok((plugins, target, contract::read::<I>(input)?))
        });
        match read {
            Ok((plugins, target, input)) => run(plugins, target, input)
                .map(|output| serde_json::to_value(output?).map_err(|_| CallError::internal()))
                .boxed(),
            Err(error) => std::future::ready(Err(error)).boxed(),
        }
    });
    operation(
        op,
        op_type,
        description,
        contract::schema::<I>(),
        contract::schema::<O>(),
        Handler::NativeOnce(handler),
    )
}

/// `admin/{op}`, open to the operator and to tenants' `plugins:write`
/// callers (each handler decides what each may see and do).
pub(super) fn operation(
    op: &str,
    op_type: OpType,
    description: &str,
    input_schema: Value,
    output_schema: Value,
    handler: Handler,
) -> Result<Operation, RegistryError> {
    Operation::compile(
        OperationSpec {
            name: format!("{NAMESPACE}/{op}"),
            op_type,
            visibility: Visibility::External,
            description: description.to_owned(),
            input_schema,
            output_schema,
            access_control: AccessControl {
                required_scopes: Vec::new(),
                required_scopes_any: vec![OPERATOR.to_owned(), TENANT.to_owned()],
            },
        },
        handler,
    )
}
