//! Calls of operations this host does not hold, handed to another host.
//!
//! The dispatcher knows only the [`Remote`] trait: the cluster (NATS)
//! implements it and is set once the host has joined. A call whose
//! operation is not in the caller's view here goes to the remote after the
//! same admission a local call gets on this host (not while draining, the
//! tenant's quota, the deadline); the host that runs it checks the rest
//! (visibility, scopes, kind, input) as for any call.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::drain::InFlight;
use super::pipeline::{Target, holding, with_time_limit};
use super::{Dispatcher, Metered, Operation, OutputStream, failure};
use crate::call::{CallError, CallRequest, Meter, OpType};
use crate::telemetry::trace::CallSpan;
use crate::tenants::Admission;

/// Where calls go that this host cannot run: another host of its cluster.
pub trait Remote: Send + Sync + 'static {
    /// Runs `request` on a host holding its operation, within `deadline`;
    /// its cost, as the other host measured it, is added to `meter`.
    /// Dropping the future aborts the call there.
    ///
    /// `NOT_FOUND` when no host holds the operation; `UNAVAILABLE`
    /// (retryable) when the cluster cannot be reached or the host running
    /// the call stops answering.
    fn call(
        &self,
        request: CallRequest,
        deadline: Duration,
        meter: Arc<Meter>,
    ) -> BoxFuture<'static, Result<Value, CallError>>;

    /// Starts `request` as a subscription on a host holding its operation,
    /// running for at most `limit`; errors before it starts are returned
    /// here, later ones end the stream, as for a local subscription. Its
    /// cost is added to `meter` when it ends. The other host sends items
    /// only as fast as the stream is read; dropping the stream aborts the
    /// subscription there.
    fn subscribe(
        &self,
        request: CallRequest,
        limit: Option<Duration>,
        meter: Arc<Meter>,
    ) -> BoxFuture<'static, Result<OutputStream, CallError>>;

    /// What kind `request`'s operation is, as its caller sees it on a host
    /// holding it; errors as [`Remote::call`]'s.
    fn op_type(&self, request: CallRequest) -> BoxFuture<'static, Result<OpType, CallError>>;

    /// The operations other hosts hold that `tenant`'s callers see listed
    /// with this host's own, sorted by name, each once: those of hosts
    /// heard from lately. None by default.
    fn listed(&self, tenant: &str) -> Vec<Arc<Operation>> {
        let _ = tenant;
        Vec::new()
    }
}

/// Whether a call may leave this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// Here, or forwarded to a host that holds the operation.
    Cluster,
    /// Here only: the call was forwarded to this host already.
    Here,
}

impl Dispatcher {
    /// Sets where calls of operations this host does not hold go. Once:
    /// later calls change nothing and return `false`.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) -> bool {
        self.inner.remote.set(remote).is_ok()
    }

    /// Runs a query or mutation another host forwarded: here only, never
    /// forwarded again, metered as [`Dispatcher::call_metered`].
    pub async fn call_here_metered(&self, request: CallRequest) -> Metered<Value> {
        self.call_reaching(request, Reach::Here).await
    }

    /// Starts a subscription another host forwarded: here only, metered as
    /// [`Dispatcher::subscribe_metered`].
    pub async fn subscribe_here_metered(&self, request: CallRequest) -> Metered<OutputStream> {
        self.subscribe_reaching(request, Reach::Here).await
    }

    /// What kind `request`'s operation is here, for another host that asks:
    /// [`Dispatcher::op_type`] without leaving this host.
    pub fn op_type_here(&self, request: &CallRequest) -> Result<OpType, CallError> {
        match self.resolve(request, Reach::Here)? {
            (Target::Here(op), _) => Ok(op.spec.op_type),
            (Target::Remote(_), _) => Err(CallError::internal()),
        }
    }

    /// Where calls go that this host cannot run, if `reach` lets them leave.
    pub(super) fn remote(&self, reach: Reach) -> Option<&Arc<dyn Remote>> {
        match reach {
            Reach::Cluster => self.inner.remote.get(),
            Reach::Here => None,
        }
    }

    /// Forwards an admitted query or mutation within its deadline.
    pub(super) async fn forward(
        &self,
        remote: &Arc<dyn Remote>,
        request: CallRequest,
        meter: &Arc<Meter>,
        span: &CallSpan,
    ) -> Result<Value, CallError> {
        let deadline = self.deadline(&request);
        let call = remote.call(under(request, span), deadline, meter.clone());
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(failure::timeout(deadline)),
        }
    }

    /// Forwards an admitted subscription; its stream holds this host's
    /// slots until it ends, and ends when this host drains or its time limit
    /// passes.
    pub(super) async fn forward_stream(
        &self,
        remote: &Arc<dyn Remote>,
        request: &CallRequest,
        meter: &Arc<Meter>,
        span: &CallSpan,
        in_flight: InFlight,
        admission: Option<Admission>,
    ) -> Result<OutputStream, CallError> {
        let limit = self.subscription_limit(request);
        let stream = remote
            .subscribe(under(request.clone(), span), limit, meter.clone())
            .await?;
        let stream = match limit {
            Some(limit) => with_time_limit(stream, limit),
            None => stream,
        };
        let stream = holding(stream, vec![admission]);
        Ok(self.inner.drain.until_drained(stream, in_flight))
    }
}

/// `request` under the span of the call forwarding it, so the other host's
/// span is its child; as it came when this host exports no spans.
fn under(mut request: CallRequest, span: &CallSpan) -> CallRequest {
    if let Some(own) = span.trace_context() {
        request.trace = Some(own);
    }
    request
}
