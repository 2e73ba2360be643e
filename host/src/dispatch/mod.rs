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
mod executor;
mod failure;
mod handler;
mod http;
mod logged;
mod nested;
mod pipeline;
mod raw;
mod remote;
mod shares;
mod validate;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::task::AbortOnDropHandle;

use crate::call::{
    CallError, CallRequest, Identity, Meter, OpType, OperationSpec, Origin, SharedObserver,
    Transport, Unobserved,
};
use crate::telemetry::trace::Tracer;
use crate::tenants::Tenants;

use drain::Drain;
use executor::CallExecutor;
pub use handler::{
    CallContext, Handler, NativeOnce, NativeStream, Operation, Registry, plugin_operations,
};
pub use http::{HttpPart, HttpParts};
use logged::{CallLog, Labels, Logged};
use pipeline::{Target, visible};
pub use raw::{RawInput, RawOutputs};
use remote::Reach;
pub use remote::Remote;
use shares::{OnShare, Shares};

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
    /// Where calls that trapped, hit a limit or were refused by a quota
    /// are reported.
    pub observer: SharedObserver,
    /// Where calls' spans go.
    pub tracer: Tracer,
    /// Threads calls run on, apart from the executor that serves
    /// connections; 0: calls run on the executor that asks for them.
    pub call_workers: usize,
    /// Calls of one tenant polled on the call workers at once; the other
    /// workers stay free for other tenants.
    pub tenant_workers: usize,
}

/// The machine's cores.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            default_deadline: Duration::from_secs(30),
            max_subscription: None,
            max_call_depth: 16,
            max_nested_calls: 16,
            max_input_bytes: 1 << 20,
            observer: Arc::new(Unobserved),
            tracer: Tracer::default(),
            call_workers: cores(),
            tenant_workers: cores().saturating_sub(1).max(1),
        }
    }
}

/// A stream of outputs that ends after an error.
pub type Outputs<T> = BoxStream<'static, Result<T, CallError>>;

/// A subscription's outputs; the stream ends after an error.
pub type OutputStream = Outputs<Value>;

/// One line of an operation list.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OperationSummary {
    /// `namespace/op`.
    pub name: String,
    /// Query, mutation or subscription.
    pub op_type: OpType,
    /// One line for humans.
    pub description: String,
}

/// A call's outcome, what it cost and where its trace is.
#[derive(Debug)]
pub struct Metered<T> {
    /// The answer: an output (or a subscription's stream), or the error.
    pub result: Result<T, CallError>,
    /// What the call spent. Final for a query or mutation; a
    /// subscription's is final once its stream has ended.
    pub meter: Arc<Meter>,
    /// The call's span as a W3C `traceparent`, when traces are exported.
    pub traceparent: Option<String>,
}

/// Routes calls to operations. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    /// Where calls run, when not on the executor that asks for them.
    calls: Option<CallExecutor>,
    /// Each tenant's share of the call workers.
    shares: Shares,
    config: DispatchConfig,
    tenants: Tenants,
    drain: Arc<Drain>,
    /// Large inputs validated at once, off the async workers.
    validations: Arc<Semaphore>,
    /// Where calls of operations this host does not hold go, once the
    /// host has joined a cluster.
    remote: OnceLock<Arc<dyn Remote>>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `registry`, for the callers of `tenants`.
    pub fn new(registry: Arc<Registry>, config: DispatchConfig, tenants: Tenants) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                calls: (config.call_workers > 0)
                    .then(|| CallExecutor::start(config.call_workers))
                    .and_then(|started| {
                        started
                            .inspect_err(|e| {
                                tracing::warn!("calls run on the serving executor: {e}")
                            })
                            .ok()
                    }),
                shares: Shares::new(config.tenant_workers),
                config,
                tenants,
                drain: Arc::new(Drain::new()),
                validations: Arc::new(Semaphore::new(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )),
                remote: OnceLock::new(),
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

    /// Where the dispatcher reports what happens.
    pub fn observer(&self) -> &SharedObserver {
        &self.inner.config.observer
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
    /// An operation another host of the cluster holds is asked about there.
    pub async fn op_type(&self, request: &CallRequest) -> Result<OpType, CallError> {
        match self.resolve(request, Reach::Cluster)? {
            (Target::Here(op), _) => Ok(op.spec.op_type),
            (Target::Remote(remote), _) => remote.op_type(request.clone()).await,
        }
    }

    /// Runs a query or mutation.
    pub async fn call(&self, request: CallRequest) -> Result<Value, CallError> {
        self.call_metered(request).await.result
    }

    /// Runs a query or mutation, and tells what it cost (its nested calls
    /// included) and where its trace is, whether it succeeded or not.
    pub async fn call_metered(&self, request: CallRequest) -> Metered<Value> {
        self.call_reaching(request, Reach::Cluster).await
    }

    async fn call_reaching(&self, request: CallRequest, reach: Reach) -> Metered<Value> {
        let mut log = self.log(&request);
        let (meter, span) = (log.meter().clone(), log.span().clone());
        let share = self.share(&request.identity.tenant);
        // A tenant's calls of an operation whose polls run long run on the
        // call workers, away from the sockets; the others stay where they
        // are asked for, without the hop. A nested call runs on the turn of
        // the call that made it, where its cost is charged before the
        // next one asks what is left.
        let calls = self
            .inner
            .calls
            .as_ref()
            .filter(|_| share.runs_long(&request.operation) && !share.held_here());
        let this = self.clone();
        let (call_meter, call_span) = (meter.clone(), span.clone());
        let operation = request.operation.clone();
        let call = OnShare::new(
            async move {
                this.call_inner(request, &call_meter, &call_span, reach)
                    .await
            },
            share,
            &operation,
        );
        let result = match calls {
            Some(calls) => calls.run(call).await,
            None => call.await,
        };
        if result.is_ok() || meter.absorbed() {
            log.answered_elsewhere();
        }
        log.finish(result.as_ref().err());
        Metered {
            result,
            meter,
            traceparent: span.traceparent(),
        }
    }

    /// `tenant`'s share of the call workers.
    fn share(&self, tenant: &str) -> std::sync::Arc<shares::Share> {
        self.inner.shares.of(tenant)
    }

    /// Starts `task`, a nested call of `tenant`'s to `operation`, on its
    /// tenant's turns: on the call workers when those calls run long, where
    /// it is asked for otherwise. Dropping the handle cancels it.
    fn spawn_on_share<F>(
        &self,
        tenant: &str,
        operation: &str,
        task: F,
    ) -> AbortOnDropHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let share = self.share(tenant);
        let calls = self
            .inner
            .calls
            .as_ref()
            .filter(|_| share.runs_long(operation));
        let task = OnShare::new(task, share, operation);
        AbortOnDropHandle::new(match calls {
            Some(calls) => calls.spawn(task),
            None => tokio::spawn(task),
        })
    }

    /// The log (and span) of `request`.
    fn log(&self, request: &CallRequest) -> CallLog {
        let config = &self.inner.config;
        CallLog::start(
            request,
            &config.observer,
            &config.tracer,
            self.labels(request),
        )
    }

    /// Starts a subscription. Errors found before the handler starts (unknown
    /// operation, wrong kind, bad input, a guest that refuses) are returned
    /// here; later ones end the stream.
    pub async fn subscribe(&self, request: CallRequest) -> Result<OutputStream, CallError> {
        self.subscribe_metered(request).await.result
    }

    /// Starts a subscription, as [`Dispatcher::subscribe`], with the meter
    /// of what it spends (its receipt is final once the stream has ended,
    /// or failed to start) and where its trace is.
    pub async fn subscribe_metered(&self, request: CallRequest) -> Metered<OutputStream> {
        self.subscribe_reaching(request, Reach::Cluster).await
    }

    async fn subscribe_reaching(
        &self,
        request: CallRequest,
        reach: Reach,
    ) -> Metered<OutputStream> {
        let request = &request;
        self.stream_metered(request, |meter, span| async move {
            self.subscribe_inner(request, &meter, &span, reach).await
        })
        .await
    }

    /// A call answering with a stream (a subscription, a byte stream),
    /// started by `start` on its tenant's turns, logged and metered until
    /// the stream ends.
    async fn stream_metered<'a, T, F>(
        &self,
        request: &'a CallRequest,
        start: impl FnOnce(Arc<Meter>, crate::telemetry::trace::CallSpan) -> F,
    ) -> Metered<Outputs<T>>
    where
        T: logged::Ending + Send + 'static,
        F: Future<Output = Result<Outputs<T>, CallError>> + 'a,
    {
        let mut log = self.log(request);
        let (meter, span) = (log.meter().clone(), log.span().clone());
        let share = self.share(&request.identity.tenant);
        let started = start(meter.clone(), span.clone());
        let operation = &request.operation;
        let result = match OnShare::new(started, share.clone(), operation).await {
            Ok(stream) => {
                log.answered_elsewhere();
                let stream = OnShare::new(stream, share, operation);
                Ok(Logged::new(stream.boxed(), log).boxed())
            }
            Err(e) => {
                if meter.absorbed() {
                    log.answered_elsewhere();
                }
                log.finish(Some(&e));
                Err(e)
            }
        };
        Metered {
            result,
            meter,
            traceparent: span.traceparent(),
        }
    }

    /// The operation and plugin `request` names, for metrics and events.
    fn labels(&self, request: &CallRequest) -> Labels {
        let name = request.op_name();
        let Some(op) = self.inner.registry.get(&request.identity.tenant, name) else {
            return Labels::default();
        };
        let plugin = match &op.handler {
            Handler::Plugin { plugin, .. } => plugin.name().to_owned(),
            _ => name.split('/').next().unwrap_or_default().to_owned(),
        };
        Labels {
            operation: Some(op.spec.name.clone()),
            plugin: Some(plugin),
        }
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

    /// The operations `identity` can see from the wire, sorted by name.
    pub fn visible_operations(&self, identity: &Identity) -> Vec<Arc<Operation>> {
        self.visible(identity).collect()
    }

    /// The operations `identity` can see and holds the scopes to call,
    /// sorted by name: what an MCP client is offered as tools.
    pub fn callable_operations(&self, identity: &Identity) -> Vec<Arc<Operation>> {
        self.visible(identity)
            .filter(|op| pipeline::authorize(&op.spec, identity).is_ok())
            .collect()
    }

    /// The operation `name`, if `identity` can see it and holds the scopes
    /// to call it: one lookup, for a caller that names a tool.
    pub fn callable_operation(&self, identity: &Identity, name: &str) -> Option<Arc<Operation>> {
        self.visible_named(identity, name)
            .filter(|op| pipeline::authorize(&op.spec, identity).is_ok())
    }

    /// The operation `name`, if `identity` can see it from the wire: here,
    /// or listed by another host of the cluster.
    fn visible_named(&self, identity: &Identity, name: &str) -> Option<Arc<Operation>> {
        if let Some(op) = self.inner.registry.get(&identity.tenant, name) {
            return visible(&op, Origin::Wire(Transport::Embedded)).then_some(op);
        }
        self.listed_elsewhere(&identity.tenant)
            .into_iter()
            .find(|op| op.spec.name == name)
    }

    /// The operations `identity` can see from the wire, sorted by name:
    /// this host's, and those other hosts of its cluster list that it does
    /// not hold, each once.
    fn visible(&self, identity: &Identity) -> impl Iterator<Item = Arc<Operation>> {
        let wire = |op: &Arc<Operation>| visible(op, Origin::Wire(Transport::Embedded));
        let here = self.inner.registry.all(&identity.tenant);
        let elsewhere = self.listed_elsewhere(&identity.tenant);
        if elsewhere.is_empty() {
            return here
                .into_iter()
                .filter(wire)
                .collect::<Vec<_>>()
                .into_iter();
        }
        // A name this host holds is its own, even where it hides it.
        let held: std::collections::HashSet<&str> =
            here.iter().map(|op| op.spec.name.as_str()).collect();
        let elsewhere: Vec<_> = elsewhere
            .into_iter()
            .filter(|op| !held.contains(op.spec.name.as_str()))
            .collect();
        let mut all: Vec<_> = here.iter().filter(|op| wire(op)).cloned().collect();
        all.extend(elsewhere);
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all.into_iter()
    }

    /// What other hosts of the cluster list for `tenant`.
    fn listed_elsewhere(&self, tenant: &str) -> Vec<Arc<Operation>> {
        self.inner
            .remote
            .get()
            .map(|remote| remote.listed(tenant))
            .unwrap_or_default()
    }

    /// What this host lists for the rest of its cluster: the queries,
    /// mutations and subscriptions callers may reach from the wire, by
    /// owner (`None`: every tenant's), sorted. Byte-stream operations and
    /// HTTP components are not forwarded, so not listed elsewhere.
    pub fn catalog_share(&self) -> Vec<(Option<String>, Vec<OperationSpec>)> {
        let mut share: Vec<(Option<String>, Vec<OperationSpec>)> = Vec::new();
        for (owner, op) in self.inner.registry.by_owner() {
            if !visible(&op, Origin::Wire(Transport::Embedded))
                || matches!(op.spec.op_type, OpType::Raw | OpType::Http)
            {
                continue;
            }
            let owner = match owner {
                crate::registry::Owner::Shared => None,
                crate::registry::Owner::Tenant(tenant) => Some(tenant),
            };
            match share.last_mut() {
                Some((last, specs)) if *last == owner => specs.push(op.spec.clone()),
                _ => share.push((owner, vec![op.spec.clone()])),
            }
        }
        share
    }

    /// The full spec of one operation `identity` can see from the wire.
    pub fn schema(&self, identity: &Identity, name: &str) -> Result<OperationSpec, CallError> {
        let name = name.strip_prefix('/').unwrap_or(name);
        self.visible_named(identity, name)
            .map(|op| op.spec.clone())
            .ok_or_else(|| CallError::not_found(name))
    }
}
