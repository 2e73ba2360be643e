//! A loaded plugin: its pre-instantiated component, its checked manifest and
//! its limits.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::bindings;
use super::grants::{Grants, OutboundGrant};
use super::invoke::{Invocation, InvokeError};
use super::limits::{Dropped, Occupancy, PluginLimits};
use super::manifest::check_operations;
use super::trap::classify;
use super::{LoadError, Runtime, StoreState};
use crate::registry::{self, AccessControl, Handler, OpType, Operation, OperationSpec, Visibility};

/// How to load a plugin.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The namespace to mount the plugin under; the plugin's own name when
    /// `None`.
    pub name: Option<String>,
    /// The plugin's limits.
    pub limits: PluginLimits,
    /// What the plugin may use beyond computing.
    pub grants: Grants,
}

/// One operation as the plugin described it, checked.
#[derive(Debug, Clone)]
pub(crate) struct PluginOp {
    pub(crate) name: String,
    pub(crate) op_type: OpType,
    pub(crate) description: String,
    pub(crate) input_schema: Value,
    pub(crate) output_schema: Value,
    pub(crate) internal: bool,
    pub(crate) required_scopes: Vec<String>,
}

/// A plugin ready to serve calls.
pub struct Plugin {
    pub(crate) runtime: Runtime,
    pub(crate) pre: bindings::PluginPre<StoreState>,
    pub(crate) name: Arc<str>,
    version: String,
    digest: String,
    imports: Vec<String>,
    ops: Vec<PluginOp>,
    pub(crate) limits: PluginLimits,
    pub(crate) grants: Arc<Grants>,
    pub(crate) outbound: OutboundGrant,
    pub(crate) occupancy: Occupancy,
    pub(crate) dropped: Arc<Dropped>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) async fn load(
        runtime: Runtime,
        pre: bindings::PluginPre<StoreState>,
        digest: String,
        imports: Vec<String>,
        options: LoadOptions,
    ) -> Result<Arc<Self>, LoadError> {
        let mut plugin = Self {
            runtime,
            pre,
            name: Arc::from(options.name.as_deref().unwrap_or("loading")),
            version: String::new(),
            digest,
            imports,
            ops: Vec::new(),
            occupancy: Occupancy::new(&options.limits),
            dropped: Arc::default(),
            limits: options.limits,
            outbound: options.grants.outbound().map_err(LoadError::Grant)?,
            grants: Arc::new(options.grants),
        };
        if let Some(dir) = &plugin.grants.directory
            && !dir.path.is_dir()
        {
            return Err(LoadError::Grant(format!(
                "the granted directory {} is not a directory",
                dir.path.display()
            )));
        }
        let manifest = plugin.describe().await?;
        let name = options.name.unwrap_or(manifest.name);
        if !registry::is_valid_segment(&name) {
            return Err(LoadError::Manifest(format!(
                "plugin name `{name}` is not valid ([a-z0-9_-]+)"
            )));
        }
        plugin.name = Arc::from(name);
        plugin.version = manifest.version;
        plugin.ops = check_operations(manifest.operations, &plugin.runtime.inner.config.manifest)?;
        Ok(Arc::new(plugin))
    }

    async fn describe(&self) -> Result<bindings::Manifest, LoadError> {
        let invocation = Invocation::internal("describe", Duration::from_secs(10));
        let budget = self.budget("deadline_ms", invocation.deadline);
        let mut store = self
            .new_store(&invocation, budget)
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        let instance = self
            .instantiate(&mut store)
            .await
            .map_err(describe_failed)?;
        let manifest = store
            .run_concurrent(async |accessor| {
                instance
                    .opbox_plugin_handler()
                    .call_describe(accessor)
                    .await
            })
            .await
            .and_then(|r| r);
        manifest.map_err(|e| describe_failed(classify(&mut store, e)))
    }

    /// The namespace the plugin is mounted under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's own version string.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the plugin's bytes, as hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The plugin's limits.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// What the plugin may use beyond computing.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The interfaces the component imports (`wasi:cli/stdout@0.2.6`, …).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Instances of this plugin alive now, for every tenant.
    pub fn live_instances(&self) -> u32 {
        self.occupancy.instances_in_use(None)
    }

    /// Instances of this plugin alive now for calls of `tenant`.
    pub fn live_instances_for(&self, tenant: &str) -> u32 {
        self.occupancy.instances_in_use(Some(tenant))
    }

    /// Log lines this plugin's calls wrote past their `log_lines` limit.
    pub fn dropped_log_lines(&self) -> u64 {
        self.dropped.log_lines.load(Ordering::Relaxed)
    }

    /// Bytes of stdout and stderr this plugin's calls wrote past the capture cap.
    pub fn dropped_output_bytes(&self) -> u64 {
        self.dropped.output_bytes.load(Ordering::Relaxed)
    }

    /// Subscriptions of this plugin open now, for every tenant.
    pub fn open_subscriptions(&self) -> u32 {
        self.occupancy.subscriptions_open(None)
    }

    /// Subscriptions of this plugin open now for calls of `tenant`.
    pub fn open_subscriptions_for(&self, tenant: &str) -> u32 {
        self.occupancy.subscriptions_open(Some(tenant))
    }

    /// The plugin's operations, ready for the registry, named
    /// `<plugin>/<op>`.
    pub fn operations(self: &Arc<Self>) -> Result<Vec<Operation>, registry::RegistryError> {
        self.ops
            .iter()
            .map(|op| {
                let spec = OperationSpec {
                    name: format!("{}/{}", self.name, op.name),
                    op_type: op.op_type,
                    visibility: if op.internal {
                        Visibility::Internal
                    } else {
                        Visibility::External
                    },
                    description: op.description.clone(),
                    input_schema: op.input_schema.clone(),
                    output_schema: op.output_schema.clone(),
                    access_control: AccessControl {
                        required_scopes: op.required_scopes.clone(),
                        required_scopes_any: Vec::new(),
                    },
                };
                let handler = Handler::Plugin {
                    plugin: self.clone(),
                    op: op.name.clone(),
                };
                Operation::new(spec, handler)
            })
            .collect()
    }
}

/// A failed `describe`, for the operator: with the guest's panic message when
/// it left one.
fn describe_failed(error: InvokeError) -> LoadError {
    LoadError::Describe(match error {
        InvokeError::Trap {
            kind,
            message: Some(message),
        } => format!("the plugin trapped ({kind}): {message}"),
        error => error.to_string(),
    })
}
