//! The dispatcher: the one place every call goes through, whatever the
//! transport.
//!
//! It looks the operation up in the caller's tenant's view, hides internal
//! operations from the wire, checks the caller's scopes, admits the call
//! against the tenant's quotas, checks the kind (once or stream), validates
//! the input against the operation's schema, applies the deadline, runs the
//! handler and turns every failure into a [`CallError`]. Dropping a call's
//! future (or a subscription's stream) aborts it: the guest is interrupted
//! and its instance dropped.

mod drain;
mod failure;
mod logged;
mod nested;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::error::{CallError, ErrorCode};
use crate::registry::{
    AccessControl, Handler, OpType, Operation, OperationSpec, Registry, Visibility,
};
use crate::tenants::{Admission, Tenant, Tenants};

use drain::Drain;
use logged::{CallLog, Logged};
use nested::invocation;
use validate::{is_large, validate_input};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The caller's id; `None` for anonymous callers.
    pub id: Option<String>,
    /// The tenant the caller belongs to.
    pub tenant: String,
    /// The caller's scopes.
    pub scopes: Vec<String>,
}

impl Identity {
    /// The tenant anonymous callers belong to.
    pub const DEFAULT_TENANT: &'static str = "default";

    /// An anonymous caller of the default tenant.
    pub fn anonymous() -> Self {
        Self::anonymous_of(Self::DEFAULT_TENANT)
    }

    /// An anonymous caller of `tenant`.
    pub fn anonymous_of(tenant: &str) -> Self {
        Self {
            id: None,
            tenant: tenant.to_owned(),
            scopes: Vec::new(),
        }
    }

    /// Whether the caller presented no valid credentials.
    pub fn is_anonymous(&self) -> bool {
        self.id.is_none()
    }
}

/// Where a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A caller on a transport: internal operations are invisible to it.
    Wire,
    /// Another operation, `depth` calls down from the wire: internal
    /// operations are visible to it.
    Nested {
        /// 1 for a call made by an operation called from the wire.
        depth: u32,
    },
}

impl Origin {
    fn depth(self) -> u32 {
        match self {
            Self::Wire => 0,
            Self::Nested { depth } => depth,
        }
    }
}

/// One call, as the dispatcher takes it.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// Unique per call; see [`new_request_id`].
    pub request_id: Arc<str>,
    /// `namespace/op`; a leading `/` is accepted.
    pub operation: String,
    /// The input; `null` when the caller sent none.
    pub input: Value,
    /// A deadline the caller asked for; it may only shorten the host's.
    pub deadline: Option<Duration>,
    /// Who is calling.
    pub identity: Identity,
    /// Where the call comes from.
    pub origin: Origin,
}

impl CallRequest {
    /// A wire call of `operation` with `input`, by an anonymous caller.
    pub fn new(operation: impl Into<String>, input: Value) -> Self {
        Self {
            request_id: new_request_id(),
            operation: operation.into(),
            input,
            deadline: None,
            identity: Identity::anonymous(),
            origin: Origin::Wire,
        }
    }
}

/// Reads an optional count of milliseconds, written as an integer or as a
/// whole-valued float (`1.0`): JSON has one kind of number. For the
/// `deadline_ms` of the wire's call bodies.
pub fn whole_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::Deserialize;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(ms) = number.as_u64() {
        return Ok(Some(ms));
    }
    match number.as_f64() {
        Some(ms) if ms.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&ms) => {
            Ok(Some(ms as u64))
        }
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a whole, non-negative number of milliseconds"
        ))),
    }
}

/// A fresh request id.
pub fn new_request_id() -> Arc<str> {
    Arc::from(uuid::Uuid::new_v4().simple().to_string())
}

/// What a native handler knows about its call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The request id.
    pub request_id: Arc<str>,
    /// Who is calling.
    pub identity: Identity,
    /// Where the call came from.
    pub origin: Origin,
    /// When the call must be done by, if it has a deadline.
    pub deadline: Option<Instant>,
    /// The dispatcher, for handlers that look at the registry or call others.
    pub dispatcher: Dispatcher,
}

/// Settings of the dispatcher.
///
/// | field | default |
/// |---|---|
/// | `default_deadline` | 30 s for queries and mutations |
/// | `max_subscription` | none: a subscription runs until it ends or the caller leaves |
/// | `max_call_depth` | 16 operations calling operations |
/// | `max_nested_calls` | 16 calls and subscriptions one call may have open at once |
/// | `max_input_bytes` | 1 MiB: the largest input of a nested call, as on the wire |
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// The deadline of a query or mutation when the caller asks for none.
    pub default_deadline: Duration,
    /// The longest a subscription may run, if bounded.
    pub max_subscription: Option<Duration>,
    /// The deepest chain of calls operations may make to each other.
    pub max_call_depth: u32,
    /// Calls and subscriptions one call may have open at once.
    pub max_nested_calls: u32,
    /// The largest input a nested call may carry, in bytes of JSON.
    pub max_input_bytes: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            default_deadline: Duration::from_secs(30),
            max_subscription: None,
            max_call_depth: 16,
            max_nested_calls: 16,
            max_input_bytes: 1 << 20,
        }
    }
}

/// A subscription's outputs; the stream ends after an error.
pub type OutputStream = BoxStream<'static, Result<Value, CallError>>;

/// One line of an operation list.
#[derive(Debug, Clone, Serialize)]
pub struct OperationSummary {
    /// `namespace/op`.
    pub name: String,
    /// Query, mutation or subscription.
    pub op_type: OpType,
    /// One line for humans.
    pub description: String,
}

/// Routes calls to operations. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    config: DispatchConfig,
    tenants: Tenants,
    drain: Arc<Drain>,
    /// Large inputs validated at once, off the async workers.
    validations: Arc<Semaphore>,
    /// Each tenant's OpenAPI document, and the registry generation it was
    /// built from.
    documents: Mutex<HashMap<String, (u64, Arc<Value>)>>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The longest a deadline can be: far enough to mean "none", near enough not
/// to overflow `Instant` arithmetic.
const NO_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Dispatcher {
    /// A dispatcher over `registry`, for the callers of `tenants`.
    pub fn new(registry: Arc<Registry>, config: DispatchConfig, tenants: Tenants) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                config,
                tenants,
                drain: Arc::new(Drain::new()),
                validations: Arc::new(Semaphore::new(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )),
                documents: Mutex::default(),
            }),
        }
    }

    /// Who presents `token` (a bearer token, or none): see
    /// [`Tenants::authenticate`].
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, CallError> {
        self.inner.tenants.authenticate(token)
    }

    /// The tenants this dispatcher serves.
    pub fn tenants(&self) -> &Tenants {
        &self.inner.tenants
    }

    /// The registry this dispatcher routes to.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// Starts draining: new calls from the wire get `UNAVAILABLE`, open
    /// subscriptions end with `UNAVAILABLE`, running queries and mutations
    /// go on. Wait for them with [`Dispatcher::idle`].
    pub fn drain(&self) {
        self.inner.drain.start();
    }

    /// Resolves once the host starts draining.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.drain.draining()
    }

    /// Resolves once no call or subscription is in flight.
    pub fn idle(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.drain.idle()
    }

    /// Whether `request` names a query, a mutation or a subscription, as
    /// its caller sees it: `NOT_FOUND` for what the caller cannot see.
    pub fn op_type(&self, request: &CallRequest) -> Result<OpType, CallError> {
        self.resolve(request).map(|(op, _)| op.spec.op_type)
    }

    /// Runs a query or mutation.
    pub async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        let mut log = CallLog::start(&request);
        let result = self.call_inner(request).await;
        log.finish(result.as_ref().err());
        result
    }

    async fn call_inner(&self, mut request: CallRequest) -> Result<Value, CallError> {
        let _in_flight = self.inner.drain.enter(request.origin)?;
        let (op, tenant) = self.resolve(&request)?;
        if !op.spec.op_type.is_once() {
            return Err(CallError::new(
                ErrorCode::InvalidOperationType,
                format!(
                    "`{}` is a subscription; subscribe to it instead",
                    op.spec.name
                ),
            ));
        }
        let _admitted = match request.origin {
            Origin::Wire => Some(tenant.usage.admit_call()?),
            Origin::Nested { .. } => None,
        };
        let deadline = request
            .deadline
            .map_or(self.inner.config.default_deadline, |d| {
                d.min(self.inner.config.default_deadline)
            });
        let cx = self.context(&request, Some(deadline));
        let input = std::mem::take(&mut request.input);
        let run = async {
            let input = self.validate(&op, input).await?;
            match &op.handler {
                Handler::NativeOnce(handler) => {
                    // Host work done for an operation counts like a plugin
                    // instance against the tenant.
                    let _native = nested_native(&request, &tenant)?;
                    handler(cx, input).await
                }
                Handler::Plugin { plugin, op: name } => {
                    let _instance = tenant.usage.instance()?;
                    let invocation = invocation(self, &request, deadline);
                    let output = plugin
                        .call(&invocation, name, input.to_string())
                        .await
                        .map_err(|e| failure::from_invoke(e, plugin, name))?;
                    failure::parse_output(&output, plugin, name)
                }
                Handler::NativeStream(_) => Err(CallError::internal()),
            }
        };
        match tokio::time::timeout(deadline, run).await {
            Ok(result) => result,
            Err(_) => Err(failure::timeout(deadline)),
        }
    }

    /// Starts a subscription. Errors found before the handler starts (unknown
    /// operation, wrong kind, bad input, a guest that refuses) are returned
    /// here; later ones end the stream.
    pub async fn subscribe(&self, request: CallRequest) -> Result<OutputStream, CallError> {
        let mut log = CallLog::start(&request);
        match self.subscribe_inner(&request).await {
            Ok(stream) => Ok(Logged::new(stream, log).boxed()),
            Err(e) => {
                log.finish(Some(&e));
                Err(e)
            }
        }
    }

    async fn subscribe_inner(&self, request: &CallRequest) -> Result<OutputStream, CallError> {
        let in_flight = self.inner.drain.enter(request.origin)?;
        let (op, tenant) = self.resolve(request)?;
        if op.spec.op_type.is_once() {
            return Err(CallError::new(
                ErrorCode::InvalidOperationType,
                format!("`{}` is a query or mutation; call it instead", op.spec.name),
            ));
        }
        let admitted = match request.origin {
            Origin::Wire => Some(tenant.usage.admit_subscription()?),
            Origin::Nested { .. } => None,
        };
        let input = self.validate(&op, request.input.clone()).await?;
        let limit = match (request.deadline, self.inner.config.max_subscription) {
            (Some(asked), Some(max)) => Some(asked.min(max)),
            (asked, max) => asked.or(max),
        };
        let cx = self.context(request, limit);
        let mut held = vec![admitted];
        let stream: OutputStream = match &op.handler {
            Handler::NativeStream(handler) => {
                held.push(nested_native(request, &tenant)?);
                handler(cx, input).await?
            }
            Handler::Plugin { plugin, op: name } => {
                held.push(Some(tenant.usage.instance()?));
                let invocation = invocation(self, request, limit.unwrap_or(NO_DEADLINE));
                let items = plugin
                    .subscribe(&invocation, name, input.to_string())
                    .await
                    .map_err(|e| failure::from_invoke(e, plugin, name))?;
                let (plugin, name) = (plugin.clone(), name.clone());
                items
                    .map(move |item| match item {
                        Ok(text) => failure::parse_output(&text, &plugin, &name),
                        Err(e) => Err(failure::from_invoke(e, &plugin, &name)),
                    })
                    .boxed()
            }
            Handler::NativeOnce(_) => return Err(CallError::internal()),
        };
        let stream = match limit {
            Some(limit) => with_time_limit(stream, limit),
            None => stream,
        };
        let stream = holding(stream, held);
        Ok(self.inner.drain.until_drained(stream, in_flight))
    }

    /// The operations `identity` can see from the wire, optionally filtered
    /// by a case-insensitive substring of name or description.
    pub fn search(&self, identity: &Identity, query: Option<&str>) -> Vec<OperationSummary> {
        let query = query.map(str::to_lowercase).filter(|q| !q.is_empty());
        self.visible(identity)
            .filter(|op| {
                query.as_ref().is_none_or(|q| {
                    op.spec.name.to_lowercase().contains(q)
                        || op.spec.description.to_lowercase().contains(q)
                })
            })
            .map(|op| OperationSummary {
                name: op.spec.name.clone(),
                op_type: op.spec.op_type,
                description: op.spec.description.clone(),
            })
            .collect()
    }

    /// The full specs of every operation `identity` can see from the wire,
    /// sorted by name.
    pub fn specs(&self, identity: &Identity) -> Vec<OperationSpec> {
        self.visible(identity).map(|op| op.spec.clone()).collect()
    }

    /// The OpenAPI document of what `identity` can see, built once per
    /// tenant and registry change (one per configured tenant at most) and
    /// shared by every request for it.
    pub fn openapi(&self, identity: &Identity) -> Arc<Value> {
        let generation = self.inner.registry.generation();
        let cached = |documents: &HashMap<String, (u64, Arc<Value>)>| {
            documents
                .get(&identity.tenant)
                .filter(|(built, _)| *built == generation)
                .map(|(_, document)| document.clone())
        };
        if let Some(document) = cached(&self.documents()) {
            return document;
        }
        let document = Arc::new(crate::openapi::document(&self.specs(identity)));
        self.documents()
            .insert(identity.tenant.clone(), (generation, document.clone()));
        document
    }

    fn documents(&self) -> MutexGuard<'_, HashMap<String, (u64, Arc<Value>)>> {
        self.inner
            .documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The operations `identity` can see from the wire, sorted by name.
    fn visible(&self, identity: &Identity) -> impl Iterator<Item = Arc<Operation>> {
        self.inner
            .registry
            .all(&identity.tenant)
            .into_iter()
            .filter(|op| visible(op, Origin::Wire))
    }

    /// The full spec of one operation `identity` can see from the wire.
    pub fn schema(&self, identity: &Identity, name: &str) -> Result<OperationSpec, CallError> {
        let name = name.strip_prefix('/').unwrap_or(name);
        self.inner
            .registry
            .get(&identity.tenant, name)
            .filter(|op| visible(op, Origin::Wire))
            .map(|op| op.spec.clone())
            .ok_or_else(|| CallError::not_found(name))
    }

    /// The operation `request` names, as its caller sees it, and the
    /// caller's tenant: `NOT_FOUND` for what the caller cannot see,
    /// `UNAUTHORIZED` or `FORBIDDEN` for what it may not call.
    fn resolve(&self, request: &CallRequest) -> Result<(Arc<Operation>, Arc<Tenant>), CallError> {
        let max_depth = self.inner.config.max_call_depth;
        if request.origin.depth() > max_depth {
            return Err(CallError::new(
                ErrorCode::ResourceExhausted,
                format!("calls nested more than {max_depth} deep"),
            )
            .with_details(json!({"limit": "max_call_depth", "value": max_depth})));
        }
        let identity = &request.identity;
        // An identity the dispatcher did not issue, for a tenant it does not
        // know: treated as no credentials.
        let tenant = self.inner.tenants.get(&identity.tenant).ok_or_else(|| {
            CallError::new(ErrorCode::Unauthorized, "the caller's tenant is unknown")
        })?;
        let name = request
            .operation
            .strip_prefix('/')
            .unwrap_or(&request.operation);
        let op = self
            .inner
            .registry
            .get(&identity.tenant, name)
            .filter(|op| visible(op, request.origin))
            .ok_or_else(|| CallError::not_found(name))?;
        authorize(&op.spec, identity)?;
        Ok((op, tenant.clone()))
    }

    /// Checks `input` against the operation's schema and hands it back.
    /// A large input is checked on the blocking pool, a few at a time, so
    /// that it never holds an async worker; the call's deadline, which runs
    /// around this, bounds the wait. (What one check can cost is bounded
    /// when the plugin loads: see `runtime::ManifestLimits`.)
    async fn validate(&self, op: &Arc<Operation>, input: Value) -> Result<Value, CallError> {
        if !is_large(&input) {
            return validate_input(op, &input).map(|()| input);
        }
        let _turn = self
            .inner
            .validations
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CallError::internal())?;
        let op = op.clone();
        tokio::task::spawn_blocking(move || validate_input(&op, &input).map(|()| input))
            .await
            .unwrap_or_else(|_| Err(CallError::internal()))
    }

    fn context(&self, request: &CallRequest, deadline: Option<Duration>) -> CallContext {
        CallContext {
            request_id: request.request_id.clone(),
            identity: request.identity.clone(),
            origin: request.origin,
            deadline: deadline.map(|d| Instant::now() + d),
            dispatcher: self.clone(),
        }
    }
}

/// Whether `op`, already in the caller's tenant's view, exists for a call
/// from `origin`. Everything that is not visible is `NOT_FOUND`, never a
/// different answer.
fn visible(op: &Operation, origin: Origin) -> bool {
    matches!(origin, Origin::Nested { .. }) || op.spec.visibility == Visibility::External
}

/// Whether `identity` holds the scopes `spec` requires: `UNAUTHORIZED` for
/// an anonymous caller, `FORBIDDEN` for one whose scopes fall short.
fn authorize(spec: &OperationSpec, identity: &Identity) -> Result<(), CallError> {
    let AccessControl {
        required_scopes: all,
        required_scopes_any: any,
    } = &spec.access_control;
    let holds = |scope: &String| identity.scopes.contains(scope);
    if all.iter().all(holds) && (any.is_empty() || any.iter().any(holds)) {
        return Ok(());
    }
    let details = json!({ "required_scopes": all, "required_scopes_any": any });
    if identity.is_anonymous() {
        return Err(CallError::new(
            ErrorCode::Unauthorized,
            format!("`{}` requires a bearer token", spec.name),
        )
        .with_details(details));
    }
    Err(CallError::new(
        ErrorCode::Forbidden,
        format!("the caller lacks a scope `{}` requires", spec.name),
    )
    .with_details(details))
}

/// The tenant slot a nested call of a native operation holds while it runs;
/// none for a call from the wire, which its admission already counts.
fn nested_native(request: &CallRequest, tenant: &Tenant) -> Result<Option<Admission>, CallError> {
    match request.origin {
        Origin::Wire => Ok(None),
        Origin::Nested { .. } => tenant.usage.instance().map(Some),
    }
}

/// `stream`, keeping `held` (quota slots) until it is dropped.
fn holding(stream: OutputStream, held: Vec<Option<Admission>>) -> OutputStream {
    stream
        .map(move |item| {
            let _held = &held;
            item
        })
        .boxed()
}

/// Ends `stream` with `TIMEOUT` once `limit` has passed.
fn with_time_limit(stream: OutputStream, limit: Duration) -> OutputStream {
    let deadline = tokio::time::sleep(limit);
    futures::stream::unfold(
        (stream, Box::pin(deadline), false),
        move |(mut stream, mut deadline, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                item = stream.next() => item.map(|item| (item, (stream, deadline, false))),
                () = &mut deadline => Some((Err(failure::timeout(limit)), (stream, deadline, true))),
            }
        },
    )
    .boxed()
}
