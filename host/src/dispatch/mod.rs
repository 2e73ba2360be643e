//! The dispatcher: the one place every call goes through, whatever the
//! transport.
//!
//! It looks the operation up in the caller's view, hides internal operations
//! from the wire, checks the kind (once or stream), validates the input
//! against the operation's schema, applies the deadline, runs the handler and
//! turns every failure into a [`CallError`]. Dropping a call's future (or a
//! subscription's stream) aborts it: the guest is interrupted and its instance
//! dropped.

mod drain;
mod failure;
mod logged;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::task::AbortOnDropHandle;

use crate::error::{CallError, ErrorCode};
use crate::registry::{Handler, OpType, Operation, OperationSpec, Registry, Visibility};
use crate::runtime::{GuestError, Invocation, NestedCalls};

use drain::Drain;
use logged::{CallLog, Logged};

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
        Self {
            id: None,
            tenant: Self::DEFAULT_TENANT.to_owned(),
            scopes: Vec::new(),
        }
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
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// The deadline of a query or mutation when the caller asks for none.
    pub default_deadline: Duration,
    /// The longest a subscription may run, if bounded.
    pub max_subscription: Option<Duration>,
    /// The deepest chain of calls operations may make to each other.
    pub max_call_depth: u32,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            default_deadline: Duration::from_secs(30),
            max_subscription: None,
            max_call_depth: 16,
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
    drain: Arc<Drain>,
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
    /// A dispatcher over `registry`.
    pub fn new(registry: Arc<Registry>, config: DispatchConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                config,
                drain: Arc::new(Drain::new()),
            }),
        }
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
        self.resolve(request).map(|op| op.spec.op_type)
    }

    /// Runs a query or mutation.
    pub async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        let mut log = CallLog::start(&request);
        let result = self.call_inner(request).await;
        log.finish(result.as_ref().err());
        result
    }

    async fn call_inner(&self, request: CallRequest) -> Result<Value, CallError> {
        let _in_flight = self.inner.drain.enter(request.origin)?;
        let op = self.resolve(&request)?;
        if !op.spec.op_type.is_once() {
            return Err(CallError::new(
                ErrorCode::InvalidOperationType,
                format!(
                    "`{}` is a subscription; subscribe to it instead",
                    op.spec.name
                ),
            ));
        }
        validate_input(&op, &request.input)?;
        let deadline = request
            .deadline
            .map_or(self.inner.config.default_deadline, |d| {
                d.min(self.inner.config.default_deadline)
            });
        let cx = self.context(&request, Some(deadline));
        let run = async {
            match &op.handler {
                Handler::NativeOnce(handler) => handler(cx, request.input).await,
                Handler::Plugin { plugin, op: name } => {
                    let invocation = invocation(self, &request, deadline);
                    let output = plugin
                        .call(&invocation, name, request.input.to_string())
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
        let op = self.resolve(request)?;
        if op.spec.op_type.is_once() {
            return Err(CallError::new(
                ErrorCode::InvalidOperationType,
                format!("`{}` is a query or mutation; call it instead", op.spec.name),
            ));
        }
        validate_input(&op, &request.input)?;
        let limit = match (request.deadline, self.inner.config.max_subscription) {
            (Some(asked), Some(max)) => Some(asked.min(max)),
            (asked, max) => asked.or(max),
        };
        let cx = self.context(request, limit);
        let stream: OutputStream = match &op.handler {
            Handler::NativeStream(handler) => handler(cx, request.input.clone()).await?,
            Handler::Plugin { plugin, op: name } => {
                let invocation = invocation(self, request, limit.unwrap_or(NO_DEADLINE));
                let items = plugin
                    .subscribe(&invocation, name, request.input.to_string())
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
        Ok(self.inner.drain.until_drained(stream, in_flight))
    }

    /// The operations `identity` can see from the wire, optionally filtered
    /// by a case-insensitive substring of name or description.
    pub fn search(&self, identity: &Identity, query: Option<&str>) -> Vec<OperationSummary> {
        let query = query.map(str::to_lowercase).filter(|q| !q.is_empty());
        self.inner
            .registry
            .all()
            .into_iter()
            .filter(|op| visible(op, identity, Origin::Wire))
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

    /// The full spec of one operation `identity` can see from the wire.
    pub fn schema(&self, identity: &Identity, name: &str) -> Result<OperationSpec, CallError> {
        let name = name.strip_prefix('/').unwrap_or(name);
        self.inner
            .registry
            .get(name)
            .filter(|op| visible(op, identity, Origin::Wire))
            .map(|op| op.spec.clone())
            .ok_or_else(|| CallError::not_found(name))
    }

    fn resolve(&self, request: &CallRequest) -> Result<Arc<Operation>, CallError> {
        let max_depth = self.inner.config.max_call_depth;
        if request.origin.depth() > max_depth {
            return Err(CallError::new(
                ErrorCode::ResourceExhausted,
                format!("calls nested more than {max_depth} deep"),
            )
            .with_details(json!({"limit": "max_call_depth", "value": max_depth})));
        }
        let name = request
            .operation
            .strip_prefix('/')
            .unwrap_or(&request.operation);
        self.inner
            .registry
            .get(name)
            .filter(|op| visible(op, &request.identity, request.origin))
            .ok_or_else(|| CallError::not_found(name))
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

/// Whether `op` exists for this caller. Everything that is not visible is
/// `NOT_FOUND`, never a different answer.
fn visible(op: &Operation, _identity: &Identity, origin: Origin) -> bool {
    matches!(origin, Origin::Nested { .. }) || op.spec.visibility == Visibility::External
}

fn invocation(dispatcher: &Dispatcher, request: &CallRequest, deadline: Duration) -> Invocation {
    Invocation {
        request_id: request.request_id.clone(),
        tenant: request.identity.tenant.clone(),
        caller_id: request.identity.id.clone(),
        scopes: request.identity.scopes.clone(),
        deadline,
        nested: Some(Arc::new(Nested {
            dispatcher: dispatcher.clone(),
            identity: request.identity.clone(),
            deadline: Instant::now() + deadline,
            depth: request.origin.depth() + 1,
        })),
    }
}

/// The calls a plugin makes from inside one call: by the same caller, within
/// what is left of its deadline, one level deeper.
#[derive(Debug)]
struct Nested {
    dispatcher: Dispatcher,
    identity: Identity,
    deadline: Instant,
    depth: u32,
}

impl NestedCalls for Nested {
    fn call(
        &self,
        operation: String,
        input: String,
    ) -> BoxFuture<'static, Result<String, GuestError>> {
        let dispatcher = self.dispatcher.clone();
        let request = CallRequest {
            request_id: new_request_id(),
            operation,
            input: Value::Null,
            deadline: Some(self.deadline.saturating_duration_since(Instant::now())),
            identity: self.identity.clone(),
            origin: Origin::Nested { depth: self.depth },
        };
        // The nested call runs on a task of its own: its store cannot be
        // driven from inside the caller's (wasmtime refuses nested event
        // loops). Dropping the handle, as happens when the caller is aborted,
        // aborts the task and so the nested call and everything below it.
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            let input = serde_json::from_str(&input)
                .map_err(|e| CallError::invalid_input(format!("the input is not JSON: {e}")))?;
            dispatcher.call(CallRequest { input, ..request }).await
        }));
        async move {
            let output = task.await.unwrap_or_else(|_| Err(CallError::internal()));
            output
                .map(|output| output.to_string())
                .map_err(|e| GuestError {
                    code: e.code.as_str().to_owned(),
                    message: e.message,
                    details: e.details,
                })
        }
        .boxed()
    }
}

/// The most schema violations reported for one input.
const MAX_REPORTED_VIOLATIONS: usize = 10;

fn validate_input(op: &Operation, input: &Value) -> Result<(), CallError> {
    let violations: Vec<Value> = op
        .input
        .iter_errors(input)
        .take(MAX_REPORTED_VIOLATIONS)
        .map(|e| {
            let path = e.instance_path().to_string();
            json!({ "path": if path.is_empty() { "/".to_owned() } else { path }, "message": e.masked().to_string() })
        })
        .collect();
    let Some(first) = violations.first() else {
        return Ok(());
    };
    let message = format!(
        "input does not match the schema of `{}` at {}: {}",
        op.spec.name,
        first["path"].as_str().unwrap_or("/"),
        first["message"].as_str().unwrap_or_default()
    );
    Err(CallError::invalid_input(message).with_details(json!({ "violations": violations })))
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
