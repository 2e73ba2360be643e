//! A loaded plugin: its pre-instantiated component, its checked manifest and
//! its limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use wasmtime::component::InstancePre;

use super::bindings;
use super::http::HttpExport;
use super::invoke::{Invocation, InvokeError};
use super::limits::{Dropped, Occupancy, PluginLimits};
use super::manifest::check_operations;
use super::reuse::{Reuse, ReuseConfig};
use super::state::LiveGuard;
use super::trap::classify;
use super::{LoadError, Runtime, StoreState};
use crate::call::{AccessControl, OpType, OperationSpec, Visibility, is_valid_segment};
use crate::capabilities::log_tail::LogTail;
use crate::capabilities::{self, Grants, http::OutboundGrant};

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
    /// Whether, and how long, an instance serves more than one call; a
    /// fresh instance for every call when `None`.
    pub reuse: Option<ReuseConfig>,
}

/// One operation as the plugin described it, checked.
#[derive(Debug, Clone)]
pub(crate) struct PluginOp {
    pub(crate) name: String,
    pub(crate) op_type: OpType,
    pub(crate) description: String,
    pub(crate) input_schema: Value,
    pub(crate) output_schema: Value,
    /// The input schema, compiled once, here.
    pub(crate) input: Arc<jsonschema::Validator>,
    pub(crate) internal: bool,
    pub(crate) required_scopes: Vec<String>,
}

/// A plugin ready to serve calls.
pub struct Plugin {
    pub(crate) runtime: Runtime,
    pub(crate) pre: InstancePre<StoreState>,
    /// Its operations' export (`opbox:plugin/handler`); `None` for a
    /// `wasi:http` component.
    handler: Option<bindings::PluginIndices>,
    /// Its byte-stream operations' export, when it has one.
    pub(crate) raw: Option<bindings::raw::GuestIndices>,
    /// Its `wasi:http` handler, for a standard HTTP component
    /// (`docs/wasi-http.md`).
    pub(crate) http: Option<HttpExport>,
    pub(crate) name: Arc<str>,
    version: String,
    digest: String,
    imports: Vec<String>,
    ops: Vec<PluginOp>,
    pub(crate) limits: PluginLimits,
    pub(crate) grants: Arc<Grants>,
    pub(crate) outbound: OutboundGrant,
    pub(crate) occupancy: Occupancy,
    /// Idle instances, when the operator lets instances serve many calls.
    pub(super) reuse: Option<Reuse>,
    pub(crate) dropped: Arc<Dropped>,
    /// The last lines its guests logged.
    pub(crate) log_tail: Arc<LogTail>,
    /// Cancelled when the plugin's open subscriptions must end: a grace
    /// period after it was replaced or removed.
    ending: CancellationToken,
    retired: AtomicBool,
    /// Calls this version took, and how many of them failed.
    calls: AtomicU64,
    failures: AtomicU64,
    /// Its compiled code, when this load compiled it and the artifact
    /// cache does not have it yet ([`Runtime::keep`]).
    unsaved: std::sync::Mutex<Option<Vec<u8>>>,
    /// The size of its compiled code.
    compiled_bytes: AtomicU64,
    _alive: LiveGuard,
}

/// One call on a plugin version, counted: a failure unless it is marked a
/// success before it is dropped (a call cut off by its deadline failed).
#[derive(Debug)]
pub struct Counted<'a> {
    plugin: &'a Plugin,
    succeeded: bool,
}

impl Counted<'_> {
    /// The plugin answered (an answer, or an error of its own domain).
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            self.plugin.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
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
        pre: InstancePre<StoreState>,
        digest: String,
        imports: Vec<String>,
        options: LoadOptions,
    ) -> Result<Arc<Self>, LoadError> {
        let alive = runtime.inner.plugins.enter();
        // An opbox plugin exports `handler`, and `raw` when it has
        // byte-stream operations; a standard HTTP component exports
        // `wasi:http/incoming-handler@0.2` or `wasi:http/handler@0.3`
        // instead.
        let handler = bindings::PluginIndices::new(&pre);
        let raw = bindings::raw::GuestIndices::new(&pre).ok();
        let http = handler
            .is_err()
            .then(|| HttpExport::find(&pre, options.reuse.as_ref()))
            .flatten();
        let handler = match (handler, &http) {
            (Ok(handler), _) => Some(handler),
            (Err(_), Some(_)) => None,
            (Err(e), None) => {
                return Err(LoadError::Link(format!(
                    "the component exports neither `opbox:plugin/handler` (an opbox plugin) \
                     nor `wasi:http/incoming-handler@0.2` or `wasi:http/handler@0.3` (an HTTP \
                     component): {e:#}"
                )));
            }
        };
        let mut plugin = Self {
            runtime,
            pre,
            handler,
            raw,
            http,
            name: Arc::from(options.name.as_deref().unwrap_or("loading")),
            version: String::new(),
            digest,
            imports,
            ops: Vec::new(),
            occupancy: Occupancy::new(&options.limits),
            reuse: options.reuse.map(Reuse::new),
            ending: CancellationToken::new(),
            retired: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            unsaved: std::sync::Mutex::new(None),
            compiled_bytes: AtomicU64::new(0),
            _alive: alive,
            dropped: Arc::default(),
            log_tail: Arc::default(),
            limits: options.limits,
            outbound: capabilities::check(&options.grants).map_err(LoadError::Grant)?,
            grants: Arc::new(options.grants),
        };
        if plugin.http.is_some() {
            return plugin.mounted(options.name);
        }
        let (manifest, raw) = plugin.describe().await?;
        let name = options.name.unwrap_or(manifest.name);
        plugin.name = checked_name(name)?;
        plugin.version = manifest.version;
        plugin.ops = check_operations(
            manifest.operations,
            raw,
            &plugin.runtime.inner.config.manifest,
        )?;
        Ok(Arc::new(plugin))
    }

    /// A `wasi:http` component, which says nothing about itself: mounted
    /// under the name it is given, with one operation of kind `http`
    /// (`{name}/http`) through which the dispatcher routes its requests.
    fn mounted(mut self, name: Option<String>) -> Result<Arc<Self>, LoadError> {
        let name = name.ok_or_else(|| {
            LoadError::Manifest(
                "a wasi:http component does not name itself: give it a name (`name` in \
                 [[plugins]], or the name it is installed under)"
                    .into(),
            )
        })?;
        self.name = checked_name(name)?;
        self.version = String::new();
        let any = serde_json::json!({});
        let input =
            jsonschema::validator_for(&any).map_err(|e| LoadError::Manifest(e.to_string()))?;
        self.ops = vec![PluginOp {
            name: HTTP_OPERATION.into(),
            op_type: OpType::Http,
            description: format!(
                "HTTP requests to `/http/{}/…` (a wasi:http component)",
                self.name
            ),
            input_schema: any.clone(),
            output_schema: any,
            input: Arc::new(input),
            internal: false,
            required_scopes: Vec::new(),
        }];
        Ok(Arc::new(self))
    }

    /// What the plugin says about itself: its manifest, and its
    /// byte-stream operations (none without the `raw` export), from one
    /// instance.
    async fn describe(
        &self,
    ) -> Result<(bindings::Manifest, Vec<bindings::raw::RawSpec>), LoadError> {
        let invocation = Invocation::internal("describe", Duration::from_secs(10));
        let budget = self.budget("deadline_ms", invocation.deadline);
        let mut store = self
            .new_store(&invocation, budget)
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        let instance = self
            .instantiate_instance(&mut store)
            .await
            .map_err(describe_failed)?;
        let handler = self
            .handler
            .as_ref()
            .ok_or_else(|| LoadError::Describe("the component has no operations".into()))?;
        let exports = handler.load(&mut store, &instance).and_then(|handler| {
            let raw = self.raw.as_ref().map(|raw| raw.load(&mut store, &instance));
            Ok((handler, raw.transpose()?))
        });
        let (handler, raw) = exports.map_err(|e| describe_failed(classify(&mut store, e)))?;
        let described = store
            .run_concurrent(async |accessor| {
                let manifest = handler
                    .opbox_plugin_handler()
                    .call_describe(accessor)
                    .await?;
                let raw = match &raw {
                    Some(raw) => raw.call_describe(accessor).await?,
                    None => Vec::new(),
                };
                wasmtime::Result::Ok((manifest, raw))
            })
            .await
            .and_then(|r| r);
        described.map_err(|e| describe_failed(classify(&mut store, e)))
    }

    /// Its operations' export; `None` for a `wasi:http` component.
    pub(super) fn handler(&self) -> Option<&bindings::PluginIndices> {
        self.handler.as_ref()
    }

    /// Whether it is a standard `wasi:http` component, served at
    /// `/http/{name}/` rather than through operations of its own.
    pub fn is_http(&self) -> bool {
        self.http.is_some()
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

    /// The size of its compiled code: what it takes in the artifact cache.
    pub fn compiled_bytes(&self) -> u64 {
        self.compiled_bytes.load(Ordering::Relaxed)
    }

    /// Its compiled code's size, and the code itself when the cache does
    /// not have it yet.
    pub(super) fn set_compiled(&self, bytes: u64, unsaved: Option<Vec<u8>>) {
        self.compiled_bytes.store(bytes, Ordering::Relaxed);
        *self
            .unsaved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = unsaved;
    }

    pub(super) fn take_unsaved(&self) -> Option<Vec<u8>> {
        self.unsaved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The plugin's limits.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// What the plugin may use beyond computing.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// How its instances are reused; `None`: a fresh instance every call.
    pub fn reuse(&self) -> Option<&ReuseConfig> {
        self.reuse.as_ref().map(Reuse::config)
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

    /// Retires this version: it was replaced or removed. Calls running on
    /// it finish; its open subscriptions get `grace` to end on their own,
    /// then end with `UNAVAILABLE`. Its instances and compiled code are
    /// released when the last call holding it ends.
    pub fn retire(&self, grace: Duration) {
        self.retired.store(true, Ordering::Relaxed);
        let ending = self.ending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            ending.cancel();
        });
    }

    /// The last lines this version's guests logged.
    pub fn log_tail(&self) -> &LogTail {
        &self.log_tail
    }

    /// Whether this version was replaced or removed.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Counts a call on this version; see [`Counted`].
    pub fn count_call(&self) -> Counted<'_> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Counted {
            plugin: self,
            succeeded: false,
        }
    }

    /// Calls this version has taken since it was loaded.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls on this version that trapped (a limit hit among them) or ran
    /// out of time.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Resolves when the open subscriptions of this version must end.
    pub fn ending(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.ending.clone().cancelled_owned()
    }

    /// The plugin's operations, named `<plugin>/<op>`.
    pub fn operations(&self) -> Vec<PluginOperation> {
        self.ops
            .iter()
            .map(|op| PluginOperation {
                spec: OperationSpec {
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
                },
                input: op.input.clone(),
                op: op.name.clone(),
            })
            .collect()
    }
}

/// One operation of a loaded plugin, as the dispatcher registers it.
#[derive(Debug)]
pub struct PluginOperation {
    /// The spec, named `<plugin>/<op>`.
    pub spec: OperationSpec,
    /// The compiled input schema.
    pub input: Arc<jsonschema::Validator>,
    /// The operation's name inside the plugin, to call it by.
    pub op: String,
}

/// A failed `describe`, for the operator: with the guest's panic message when
/// it left one.
/// The one operation of a `wasi:http` component, inside its namespace.
pub const HTTP_OPERATION: &str = "http";

/// `name`, if it may name a plugin.
fn checked_name(name: String) -> Result<Arc<str>, LoadError> {
    if !is_valid_segment(&name) {
        return Err(LoadError::Manifest(format!(
            "plugin name `{}` is not valid ([a-z0-9_-]+, at most {} bytes)",
            crate::call::cut(&name, 64),
            crate::call::MAX_SEGMENT_BYTES
        )));
    }
    Ok(Arc::from(name))
}

fn describe_failed(error: InvokeError) -> LoadError {
    LoadError::Describe(match error {
        InvokeError::Trap {
            kind,
            message: Some(message),
            ..
        } => format!("the plugin trapped ({kind}): {message}"),
        error => error.to_string(),
    })
}
