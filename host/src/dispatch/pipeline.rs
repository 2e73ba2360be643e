//! The path every call takes: one admission for queries, mutations and
//! subscriptions alike (in flight → resolve → kind → admit), then input
//! validation, the deadline and the handler.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use super::drain::InFlight;
use super::nested::invocation;
use super::remote::{Reach, Remote};
use super::validate::{is_large, validate_input};
use super::{CallContext, Dispatcher, Handler, Operation, OutputStream, Outputs, failure};
use crate::call::{
    AccessControl, CallError, CallRequest, ErrorCode, Identity, Meter, OpType, OperationSpec,
    Origin, Visibility,
};
use crate::runtime::Busy;
use crate::telemetry::trace::CallSpan;
use crate::tenants::{Admission, Tenant};

/// The longest a deadline can be: far enough to mean "none", near enough not
/// to overflow `Instant` arithmetic.
pub(super) const NO_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Which kind of operation a caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A query or mutation (`call`).
    Once,
    /// A subscription (`subscribe`).
    Stream,
    /// A byte-stream operation (the raw carriage).
    Raw,
    /// An HTTP request to a `wasi:http` component.
    Http,
}

/// Where an admitted call runs.
pub(super) enum Target {
    /// Here: an operation this host holds.
    Here(Arc<Operation>),
    /// On another host of the cluster, which checks the rest.
    Remote(Arc<dyn Remote>),
}

/// A call past admission: where it runs, for which tenant, and the slots it
/// holds until it ends.
pub(super) struct Admitted {
    pub(super) target: Target,
    pub(super) tenant: Arc<Tenant>,
    /// Counts the call as in flight, for draining.
    pub(super) in_flight: InFlight,
    /// The tenant's admission of a call from the wire.
    pub(super) admission: Option<Admission>,
}

impl Dispatcher {
    /// The admission every call goes through: not while draining (from the
    /// wire), an operation the caller can see and may call, of the kind
    /// asked for, within the tenant's quotas. An operation this host does
    /// not hold goes to the cluster, if `reach` allows, with this host's
    /// part of the admission; the host that runs it checks the rest.
    pub(super) fn admit(
        &self,
        request: &CallRequest,
        kind: Kind,
        reach: Reach,
    ) -> Result<Admitted, CallError> {
        let in_flight = self.inner.drain.enter(request.origin)?;
        let (target, tenant) = self.resolve(request, reach)?;
        if let Target::Here(op) = &target {
            let asked = match kind {
                Kind::Once => op.spec.op_type.is_once(),
                Kind::Stream => op.spec.op_type == OpType::Subscription,
                Kind::Raw => op.spec.op_type == OpType::Raw,
                Kind::Http => op.spec.op_type == OpType::Http,
            };
            if !asked {
                let how = match op.spec.op_type {
                    OpType::Query | OpType::Mutation => "a query or mutation; call it",
                    OpType::Subscription => "a subscription; subscribe to it",
                    OpType::Raw => "a byte-stream operation; call it with the raw carriage",
                    OpType::Http => "an HTTP component; send it requests under `/http/`",
                };
                return Err(CallError::new(
                    ErrorCode::InvalidOperationType,
                    format!("`{}` is {how} instead", op.spec.name),
                ));
            }
        }
        let admission = match (request.origin, kind) {
            (Origin::Nested { .. }, _) => None,
            (Origin::Wire(_), Kind::Once | Kind::Http) => Some(tenant.usage.admit_call()?),
            // A byte stream stays open as a subscription does.
            (Origin::Wire(_), Kind::Stream | Kind::Raw) => Some(tenant.usage.admit_subscription()?),
        };
        Ok(Admitted {
            target,
            tenant,
            in_flight,
            admission,
        })
    }

    /// A query or mutation: admitted, then validated and run within its
    /// deadline.
    pub(super) async fn call_inner(
        &self,
        mut request: CallRequest,
        meter: &Arc<Meter>,
        span: &CallSpan,
        reach: Reach,
    ) -> Result<Value, CallError> {
        let Admitted {
            target,
            tenant,
            in_flight: _in_flight,
            admission: _admission,
        } = self.admit(&request, Kind::Once, reach)?;
        let op = match target {
            Target::Here(op) => op,
            Target::Remote(remote) => return self.forward(&remote, request, meter, span).await,
        };
        let deadline = self.deadline(&request);
        let cx = self.context(&request, Some(deadline));
        let input = std::mem::take(&mut request.input);
        let run = async {
            let input = self.validate(&op, input).await?;
            match &op.handler {
                Handler::NativeOnce(handler) => {
                    // Host work done for an operation counts like a plugin
                    // instance against the tenant.
                    let _native = nested_native(&request, &tenant)?;
                    meter.bytes_in(json_len(&input));
                    // The host's own work for the call, metered as such:
                    // a plugin calling it is charged for it.
                    let output = Busy::host(handler(cx, input), meter.clone()).await?;
                    meter.bytes_out(json_len(&output));
                    Ok(output)
                }
                Handler::Plugin { plugin, op: name } => {
                    let _instance = tenant.usage.instance()?;
                    let cpu = Duration::from_millis(plugin.limits().cpu_ms);
                    let invocation = invocation(self, &request, deadline, cpu, meter, span);
                    let counted = plugin.count_call();
                    let input = input.to_string();
                    meter.bytes_in(input.len());
                    let output = plugin
                        .call(&invocation, name, input)
                        .await
                        .map_err(|e| failure::from_invoke(e, plugin, name))?;
                    meter.bytes_out(output.len());
                    counted.succeeded();
                    failure::parse_output(&output, plugin, name)
                }
                Handler::NativeStream(_) | Handler::Elsewhere => Err(CallError::internal()),
            }
        };
        match tokio::time::timeout(deadline, run).await {
            Ok(result) => result,
            Err(_) => Err(failure::timeout(deadline)),
        }
    }

    /// A subscription: admitted and validated, then its stream, which
    /// holds its slots until it ends and ends when the host drains.
    pub(super) async fn subscribe_inner(
        &self,
        request: &CallRequest,
        meter: &Arc<Meter>,
        span: &CallSpan,
        reach: Reach,
    ) -> Result<OutputStream, CallError> {
        let Admitted {
            target,
            tenant,
            in_flight,
            admission,
        } = self.admit(request, Kind::Stream, reach)?;
        let op = match target {
            Target::Here(op) => op,
            Target::Remote(remote) => {
                return self
                    .forward_stream(&remote, request, meter, span, in_flight, admission)
                    .await;
            }
        };
        let input = self.validate(&op, request.input.clone()).await?;
        let limit = self.subscription_limit(request);
        let cx = self.context(request, limit);
        let mut held = vec![admission];
        let stream: OutputStream = match &op.handler {
            Handler::NativeStream(handler) => {
                held.push(nested_native(request, &tenant)?);
                meter.bytes_in(json_len(&input));
                let meter = meter.clone();
                handler(cx, input)
                    .await?
                    .inspect(move |item| {
                        if let Ok(output) = item {
                            meter.bytes_out(json_len(output));
                        }
                    })
                    .boxed()
            }
            Handler::Plugin { plugin, op: name } => {
                held.push(Some(tenant.usage.instance()?));
                let deadline = limit.unwrap_or(NO_DEADLINE);
                let cpu = Duration::from_millis(plugin.limits().cpu_ms);
                let invocation = invocation(self, request, deadline, cpu, meter, span);
                let counted = plugin.count_call();
                let input = input.to_string();
                meter.bytes_in(input.len());
                let items = plugin
                    .subscribe(&invocation, name, input)
                    .await
                    .map_err(|e| failure::from_invoke(e, plugin, name))?;
                counted.succeeded();
                let ending = plugin.ending();
                let (plugin, name, meter) = (plugin.clone(), name.clone(), meter.clone());
                let outputs = items
                    .map(move |item| match item {
                        Ok(text) => {
                            meter.bytes_out(text.len());
                            failure::parse_output(&text, &plugin, &name)
                        }
                        Err(e) => Err(failure::from_invoke(e, &plugin, &name)),
                    })
                    .boxed();
                until_retired(outputs, ending)
            }
            Handler::NativeOnce(_) | Handler::Elsewhere => return Err(CallError::internal()),
        };
        let stream = match limit {
            Some(limit) => with_time_limit(stream, limit),
            None => stream,
        };
        let stream = holding(stream, held);
        Ok(self.inner.drain.until_drained(stream, in_flight))
    }

    /// Where `request`'s operation runs, as its caller sees it, and the
    /// caller's tenant: `NOT_FOUND` for what the caller cannot see here and
    /// no other host may run, `UNAUTHORIZED` or `FORBIDDEN` for what it may
    /// not call.
    pub(super) fn resolve(
        &self,
        request: &CallRequest,
        reach: Reach,
    ) -> Result<(Target, Arc<Tenant>), CallError> {
        let max_depth = self.inner.config.max_call_depth;
        if request.origin.depth() > max_depth {
            return Err(CallError::new(
                ErrorCode::ResourceExhausted,
                format!("calls nested more than {max_depth} deep"),
            )
            .with_details(json!({"limit": "max_call_depth", "value": max_depth})));
        }
        let identity = &request.identity;
        let tenant = self.tenant_of(identity)?;
        let name = request.op_name();
        let Some(op) = self.inner.registry.get(&identity.tenant, name) else {
            return match self.remote(reach) {
                Some(remote) => Ok((Target::Remote(remote.clone()), tenant)),
                None => Err(CallError::not_found(name)),
            };
        };
        if !visible(&op, request.origin) {
            return Err(CallError::not_found(name));
        }
        authorize(&op.spec, identity)?;
        Ok((Target::Here(op), tenant))
    }

    /// The tenant of `identity`. An identity the dispatcher did not issue,
    /// for a tenant it does not know, is treated as no credentials.
    fn tenant_of(&self, identity: &Identity) -> Result<Arc<Tenant>, CallError> {
        self.inner
            .tenants
            .get(&identity.tenant)
            .cloned()
            .ok_or_else(|| {
                CallError::new(ErrorCode::Unauthorized, "the caller's tenant is unknown")
            })
    }

    /// Checks `input` against the operation's schema and hands it back.
    /// A large input is checked on the blocking pool, a few at a time, so
    /// that it never holds an async worker; the call's deadline, which runs
    /// around this, bounds the wait. (What one check can cost is bounded
    /// when the plugin loads: see `runtime::ManifestLimits`.)
    pub(super) async fn validate(
        &self,
        op: &Arc<Operation>,
        input: Value,
    ) -> Result<Value, CallError> {
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

    /// How long a subscription may run: the shorter of what the caller
    /// asked and the host's bound, if either has one.
    pub(super) fn subscription_limit(&self, request: &CallRequest) -> Option<Duration> {
        match (request.deadline, self.inner.config.max_subscription) {
            (Some(asked), Some(max)) => Some(asked.min(max)),
            (asked, max) => asked.or(max),
        }
    }

    /// The deadline of a query or mutation: the caller's, if it asked for
    /// one shorter than the host's.
    pub(super) fn deadline(&self, request: &CallRequest) -> Duration {
        let default = self.inner.config.default_deadline;
        request.deadline.map_or(default, |d| d.min(default))
    }

    fn context(&self, request: &CallRequest, deadline: Option<Duration>) -> CallContext {
        CallContext {
            request_id: request.request_id.clone(),
            identity: request.identity.clone(),
            origin: request.origin,
            deadline: deadline.map(|d| Instant::now() + d),
            dispatcher: self.clone(),
            attachment: request.attachment.clone(),
        }
    }
}

/// Whether `op`, already in the caller's tenant's view, exists for a call
/// from `origin`. Everything that is not visible is `NOT_FOUND`, never a
/// different answer.
pub(super) fn visible(op: &Operation, origin: Origin) -> bool {
    matches!(origin, Origin::Nested { .. }) || op.spec.visibility == Visibility::External
}

/// Whether `identity` holds the scopes `spec` requires: `UNAUTHORIZED` for
/// an anonymous caller, `FORBIDDEN` for one whose scopes fall short.
pub(super) fn authorize(spec: &OperationSpec, identity: &Identity) -> Result<(), CallError> {
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

/// The length of `value` as compact JSON, counted without writing it out.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The tenant slot a nested call of a native operation holds while it runs;
/// none for a call from the wire, which its admission already counts.
fn nested_native(request: &CallRequest, tenant: &Tenant) -> Result<Option<Admission>, CallError> {
    match request.origin {
        Origin::Wire(_) => Ok(None),
        Origin::Nested { .. } => tenant.usage.instance().map(Some),
    }
}

/// `stream`, keeping `held` (quota slots) until it is dropped.
pub(super) fn holding<T: Send + 'static>(
    stream: Outputs<T>,
    held: Vec<Option<Admission>>,
) -> Outputs<T> {
    stream
        .map(move |item| {
            let _held = &held;
            item
        })
        .boxed()
}

/// Ends `stream` with `TIMEOUT` once `limit` has passed.
pub(super) fn with_time_limit<T: Send + 'static>(
    stream: Outputs<T>,
    limit: Duration,
) -> Outputs<T> {
    cut_off(stream, tokio::time::sleep(limit), failure::timeout(limit))
}

/// Ends `stream` with `UNAVAILABLE` once `ending` resolves: the plugin
/// version it runs on was replaced or removed, and its grace period is over.
pub(super) fn until_retired<T: Send + 'static>(
    stream: Outputs<T>,
    ending: impl Future<Output = ()> + Send + 'static,
) -> Outputs<T> {
    let error = CallError::new(
        ErrorCode::Unavailable,
        "the plugin was replaced or removed; subscribe again",
    );
    cut_off(stream, ending, error)
}

/// `stream` until `signal` resolves, then `error` as its last item.
fn cut_off<T: Send + 'static>(
    stream: Outputs<T>,
    signal: impl Future<Output = ()> + Send + 'static,
    error: CallError,
) -> Outputs<T> {
    futures::stream::unfold(
        (stream, Box::pin(signal), Some(error)),
        |(mut stream, mut signal, error)| async move {
            let error = error?;
            tokio::select! {
                item = stream.next() => item.map(|item| (item, (stream, signal, Some(error)))),
                () = &mut signal => Some((Err(error), (stream, signal, None))),
            }
        },
    )
    .boxed()
}
