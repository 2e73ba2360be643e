//! The calls a plugin makes from inside a call (`opbox:plugin/invoke`):
//! through the dispatcher, as the same caller, within what is left of the
//! deadline, one level deeper, at most `max_nested_calls` open at once, each
//! input held to the wire's size limit.
//!
//! The host's work for a nested native operation is charged to the calling
//! plugin's `cpu_ms`, beside its guest's own time: a nested call starts
//! only while the two together have not spent it, with what is left as its
//! deadline, and the guest's budget loses what they spent (`runtime`'s
//! epoch callback, from the call's [`Meter`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Dispatcher, Metered};
use crate::call::{CallError, ErrorCode};
use crate::call::{CallRequest, HostCall, Identity, Meter, Origin, new_request_id};
use crate::capabilities::invoke::{GuestError, NestedCalls, NestedItems, NestedRaw};
use crate::runtime::Invocation;
use crate::telemetry::trace::CallSpan;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio_util::task::AbortOnDropHandle;

mod raw;

/// What a plugin's call runs with: who for, how long, and the way back into
/// the dispatcher for the calls it makes.
pub(super) fn invocation(
    dispatcher: &Dispatcher,
    request: &CallRequest,
    deadline: Duration,
    cpu: Duration,
    meter: &Arc<Meter>,
    span: &CallSpan,
) -> Invocation {
    Invocation {
        meter: meter.clone(),
        span: span.clone(),
        request_id: request.request_id.clone(),
        tenant: request.identity.tenant.clone(),
        caller_id: request.identity.id.clone(),
        scopes: request.identity.scopes.clone(),
        deadline,
        nested: Some(Arc::new(Nested {
            dispatcher: dispatcher.clone(),
            identity: request.identity.clone(),
            deadline: Instant::now() + deadline,
            cpu,
            depth: request.origin.depth() + 1,
            span: span.clone(),
            meter: meter.clone(),
            open: Arc::new(Semaphore::new(
                dispatcher.inner.config.max_nested_calls as usize,
            )),
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
    /// The calling plugin's `cpu_ms`: its guest's time and the host's
    /// for its nested native operations, together.
    cpu: Duration,
    depth: u32,
    /// The calling call's span, the parent of its calls' spans.
    span: CallSpan,
    /// The calling call's meter, which counts each nested call and takes
    /// in its receipt.
    meter: Arc<Meter>,
    /// The calls and subscriptions the call may still have open at once.
    open: Arc<Semaphore>,
}

impl Nested {
    /// A place for one more nested call, and its input checked against the
    /// wire's size limit.
    fn admit(&self, input: &str) -> Result<OwnedSemaphorePermit, GuestError> {
        self.meter.host_call(HostCall::Nested);
        let config = &self.dispatcher.inner.config;
        if input.len() > config.max_input_bytes {
            return Err(guest_error(
                CallError::invalid_input(format!(
                    "a nested call's input of {} bytes is over the limit of {}",
                    input.len(),
                    config.max_input_bytes
                ))
                .with_details(json!({"limit": "max_input_bytes", "value": config.max_input_bytes})),
            ));
        }
        self.open.clone().try_acquire_owned().map_err(|_| {
            guest_error(
                CallError::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "a call may have {} nested calls open at once",
                        config.max_nested_calls
                    ),
                )
                .with_details(
                    json!({"limit": "max_nested_calls", "value": config.max_nested_calls}),
                ),
            )
        })
    }

    /// The request for a nested call of `operation`; its input is parsed by
    /// [`parse_input`] on the nested call's task.
    fn request(&self, operation: String) -> CallRequest {
        CallRequest {
            request_id: new_request_id(),
            operation,
            input: Value::Null,
            deadline: Some(self.deadline.saturating_duration_since(Instant::now())),
            identity: self.identity.clone(),
            origin: Origin::Nested { depth: self.depth },
            trace: self.span.trace_context(),
            attachment: None,
        }
    }
}

impl Nested {
    /// Starts a nested subscription or byte stream of `operation` on a
    /// task of its own, on its tenant's turns: once what is left of the
    /// caller's CPU time is checked and `input` parsed, `start` opens it
    /// through the dispatcher, and `forward` hands its outputs on.
    /// Resolves once it has started, or with why it did not, to the task:
    /// dropping that stops the stream. However the task ends, what the
    /// stream spent is rolled up into the caller's receipt.
    fn spawn_stream<T, Start, Forward>(
        &self,
        operation: String,
        input: String,
        start: impl FnOnce(Dispatcher, CallRequest) -> Start + Send + 'static,
        forward: impl FnOnce(T) -> Forward + Send + 'static,
    ) -> BoxFuture<'static, Result<AbortOnDropHandle<()>, GuestError>>
    where
        T: Send + 'static,
        Start: Future<Output = Metered<T>> + Send,
        Forward: Future<Output = ()> + Send,
    {
        let open = match self.admit(&input) {
            Ok(open) => open,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let tenant = &self.identity.tenant;
        let (dispatcher, request) = (self.dispatcher.clone(), self.request(operation.clone()));
        let (parent, cpu) = (self.meter.clone(), self.cpu);
        let (started, started_rx) = tokio::sync::oneshot::channel();
        let task = self
            .dispatcher
            .spawn_on_share(tenant, &operation, async move {
                let _open = open;
                let input = cpu_left(&parent, cpu).and_then(|_| parse_input(&input));
                let (opened, _roll_up) = match input {
                    Ok(input) => {
                        let opened = start(dispatcher, CallRequest { input, ..request }).await;
                        let meter = opened.meter;
                        (opened.result, Some(RollUp { meter, parent }))
                    }
                    Err(e) => (Err(e), None),
                };
                match opened {
                    Ok(outputs) => {
                        let _ = started.send(Ok(()));
                        forward(outputs).await;
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            });
        async move {
            started_rx
                .await
                .unwrap_or_else(|_| Err(CallError::internal()))
                .map_err(guest_error)?;
            Ok(task)
        }
        .boxed()
    }
}

/// Rolls a nested subscription's receipt up into its caller's when
/// dropped.
struct RollUp {
    meter: Arc<Meter>,
    parent: Arc<Meter>,
}

impl Drop for RollUp {
    fn drop(&mut self) {
        self.meter.end();
        self.parent.absorb(&self.meter.receipt());
    }
}

/// What is left of `cpu` once the calling guest's own time and its nested
/// native operations' (as far as they have ended) are taken out;
/// `RESOURCE_EXHAUSTED` when nothing is. Checked as each nested call
/// starts, so no more start once the budget is spent.
fn cpu_left(meter: &Meter, cpu: Duration) -> Result<Duration, CallError> {
    let spent = meter.own_guest_cpu() + meter.nested_host_cpu();
    match cpu.checked_sub(spent) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(CallError::new(
            ErrorCode::ResourceExhausted,
            "the call has spent its CPU time, its nested native operations' included",
        )
        .with_details(json!({
            "limit": "cpu_ms",
            "value": u64::try_from(cpu.as_millis()).unwrap_or(u64::MAX),
        }))),
    }
}

fn parse_input(input: &str) -> Result<Value, CallError> {
    serde_json::from_str(input)
        .map_err(|e| CallError::invalid_input(format!("the input is not JSON: {e}")))
}

fn guest_error(e: CallError) -> GuestError {
    GuestError {
        code: e.code.as_str().to_owned(),
        message: e.message,
        details: e.details,
    }
}

// A nested call runs on a task of its own: its store cannot be driven from
// inside the caller's (wasmtime refuses nested event loops). Dropping the
// task's handle, as happens when the caller is aborted, aborts the task and
// so the nested call and everything below it.
impl NestedCalls for Nested {
    fn call(
        &self,
        operation: String,
        input: String,
    ) -> BoxFuture<'static, Result<String, GuestError>> {
        let open = match self.admit(&input) {
            Ok(open) => open,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let tenant = &self.identity.tenant;
        let (dispatcher, request) = (self.dispatcher.clone(), self.request(operation.clone()));
        let (parent, cpu) = (self.meter.clone(), self.cpu);
        // On its tenant's turns from the start: what the nested calls
        // before it spent is charged before it asks what is left.
        let task = self
            .dispatcher
            .spawn_on_share(tenant, &operation, async move {
                let _open = open;
                cpu_left(&parent, cpu)?;
                let input = parse_input(&input)?;
                let called = dispatcher
                    .call_metered(CallRequest { input, ..request })
                    .await;
                parent.absorb(&called.meter.receipt());
                called.result
            });
        async move {
            let output = task.await.unwrap_or_else(|_| Err(CallError::internal()));
            output.map(|output| output.to_string()).map_err(guest_error)
        }
        .boxed()
    }

    fn subscribe(
        &self,
        operation: String,
        input: String,
    ) -> BoxFuture<'static, Result<NestedItems, GuestError>> {
        // One item at a time: the subscription runs at most an item ahead
        // of the guest reading it.
        let (items, items_rx) = tokio::sync::mpsc::channel(1);
        let started = self.spawn_stream(
            operation,
            input,
            |dispatcher, request| async move { dispatcher.subscribe_metered(request).await },
            move |mut outputs| async move {
                while let Some(item) = outputs.next().await {
                    let last = item.is_err();
                    if items.send(item).await.is_err() || last {
                        return;
                    }
                }
            },
        );
        async move {
            let task = started.await?;
            let outputs = tokio_stream::wrappers::ReceiverStream::new(items_rx).map(move |item| {
                // The stream owns the task: dropping it aborts the
                // subscription.
                let _task = &task;
                item.map(|output| output.to_string()).map_err(guest_error)
            });
            Ok(outputs.boxed())
        }
        .boxed()
    }

    fn run(
        &self,
        operation: String,
        input: String,
        stdin: BoxStream<'static, Bytes>,
    ) -> BoxFuture<'static, Result<NestedRaw, GuestError>> {
        self.run_raw(operation, input, stdin)
    }
}
