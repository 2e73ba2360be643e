//! Running one call of a plugin in a fresh store.
//!
//! Every call gets its own `Store` and instance, and owns them: dropping the
//! future of [`Plugin::call`] or the [`Subscription`] stream drops the store,
//! which interrupts the guest wherever it is. A guest spinning in its own code
//! yields to the executor at every epoch tick, so dropping takes effect within
//! a tick, and the CPU budget of the call is counted in those ticks.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use serde_json::Value;
use wasmtime::component::{Source, StreamConsumer, StreamResult};
use wasmtime::{PoolConcurrencyLimitError, Store, StoreContextMut, Trap, UpdateDeadline};

use super::bindings::{self, CallContext};
use super::plugin::Plugin;
use super::state::{LimitHit, Limiter, StoreState};

/// Who a call is for and how long it may take.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Unique per call.
    pub request_id: Arc<str>,
    /// The tenant the call runs for.
    pub tenant: String,
    /// The authenticated caller, if any.
    pub caller_id: Option<String>,
    /// The caller's scopes.
    pub scopes: Vec<String>,
    /// Time left for the call; also its CPU budget.
    pub deadline: Duration,
}

impl Invocation {
    /// An invocation by the host itself, e.g. `describe` at load.
    pub(crate) fn internal(request_id: &str, deadline: Duration) -> Self {
        Self {
            request_id: Arc::from(request_id),
            tenant: String::new(),
            caller_id: None,
            scopes: Vec::new(),
            deadline,
        }
    }

    fn to_wit(&self) -> CallContext {
        CallContext {
            request_id: self.request_id.to_string(),
            tenant: self.tenant.clone(),
            caller_id: self.caller_id.clone(),
            scopes: self.scopes.clone(),
            deadline_ms: u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A domain error returned by the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestError {
    /// The guest's code.
    pub code: String,
    /// The guest's message.
    pub message: String,
    /// The guest's details, if they were a JSON value.
    pub details: Option<Value>,
}

impl From<bindings::CallError> for GuestError {
    fn from(e: bindings::CallError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            details: e.details.and_then(|d| serde_json::from_str(&d).ok()),
        }
    }
}

/// Why a call of a plugin failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The guest returned a domain error.
    #[error("{}: {}", .0.code, .0.message)]
    Guest(GuestError),
    /// The guest trapped.
    #[error("the plugin trapped ({kind})")]
    Trap {
        /// What kind of trap, in snake case (`unreachable`, `stack_overflow`, …).
        kind: String,
        /// The guest's last words: its panic message, when it gave one.
        message: Option<String>,
    },
    /// The call used up its CPU budget and was interrupted.
    #[error("the plugin used up its CPU time and was interrupted")]
    CpuExhausted,
    /// The instance reached its memory limit.
    #[error("the plugin reached its memory limit of {limit} bytes")]
    MemoryExhausted {
        /// The limit, in bytes.
        limit: usize,
    },
    /// No instance slot was free.
    #[error("no instance slot is free")]
    NoCapacity,
    /// Something failed in the host; the message is for logs only.
    #[error("host failure: {0}")]
    Host(String),
}

/// One item of a subscription as the guest writes it.
type WitItem = Result<String, bindings::CallError>;

impl Plugin {
    pub(crate) fn new_store(&self, invocation: &Invocation) -> Store<StoreState> {
        let runtime = &self.runtime.inner;
        let tick = runtime.config.epoch_tick.max(Duration::from_millis(1));
        let ticks =
            u64::try_from(invocation.deadline.as_millis() / tick.as_millis()).unwrap_or(u64::MAX);
        let state = StoreState::new(
            self.name.clone(),
            invocation.request_id.clone(),
            Limiter::new(self.limits.memory_bytes),
            ticks.saturating_add(1),
            self.limits.output_capture_bytes,
            runtime.live.enter(),
        );
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Yield to the executor at every tick, so that a spinning guest never
        // holds a worker thread, and count the tick against the budget.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if state.ticks_left == 0 {
                state.limiter.hit = Some(LimitHit::Cpu);
                return Ok(UpdateDeadline::Interrupt);
            }
            state.ticks_left -= 1;
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    async fn instantiate(
        &self,
        store: &mut Store<StoreState>,
    ) -> Result<bindings::Plugin, InvokeError> {
        self.pre.instantiate_async(&mut *store).await.map_err(|e| {
            if e.is::<PoolConcurrencyLimitError>() {
                InvokeError::NoCapacity
            } else {
                classify(store, e)
            }
        })
    }

    /// Runs a query or mutation: JSON text in, JSON text out.
    pub async fn call(
        &self,
        invocation: &Invocation,
        op: &str,
        input: String,
    ) -> Result<String, InvokeError> {
        let mut store = self.new_store(invocation);
        let instance = self.instantiate(&mut store).await?;
        let ctx = invocation.to_wit();
        let op = op.to_owned();
        let result = store
            .run_concurrent(async |accessor| {
                instance
                    .opbox_plugin_handler()
                    .call_call(accessor, ctx, op, input)
                    .await
            })
            .await
            .and_then(|r| r);
        match result {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => Err(InvokeError::Guest(e.into())),
            Err(e) => Err(classify(&mut store, e)),
        }
    }

    /// Starts a subscription. Resolves once the guest has returned its stream
    /// (or failed to); the [`Subscription`] then yields the items as the
    /// caller pulls them.
    pub async fn subscribe(
        self: &Arc<Self>,
        invocation: &Invocation,
        op: &str,
        input: String,
    ) -> Result<Subscription, InvokeError> {
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (items_tx, items_rx) = mpsc::channel::<Vec<WitItem>>(1);
        let plugin = self.clone();
        let ctx = invocation.to_wit();
        let invocation = invocation.clone();
        let op = op.to_owned();
        let driver = async move {
            let mut store = plugin.new_store(&invocation);
            let instance = plugin.instantiate(&mut store).await?;
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let result = store
                .run_concurrent(
                    async |accessor| -> wasmtime::Result<Result<(), GuestError>> {
                        let started = instance
                            .opbox_plugin_handler()
                            .call_subscribe(accessor, ctx, op, input)
                            .await?;
                        let reader = match started {
                            Ok(reader) => reader,
                            Err(e) => return Ok(Err(e.into())),
                        };
                        let consumer = ItemConsumer {
                            items: items_tx,
                            _done: done_tx,
                        };
                        accessor.with(|mut access| reader.pipe(&mut access, consumer))?;
                        let _ = started_tx.send(());
                        // Resolves when wasmtime drops the consumer: the guest
                        // dropped its writer, or the caller went away.
                        let _ = done_rx.await;
                        Ok(Ok(()))
                    },
                )
                .await
                .and_then(|r| r);
            match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(InvokeError::Guest(e)),
                Err(e) => Err(classify(&mut store, e)),
            }
        }
        .boxed();
        let mut subscription = Subscription {
            driver: Some(driver),
            outcome: None,
            items: items_rx,
            buffered: VecDeque::new(),
            finished: false,
        };
        // Drive the store until the guest has handed over its stream. A short
        // stream may start, produce and even fail within one poll: once it
        // started, everything it did is delivered through the stream.
        let mut started_rx = Some(started_rx);
        let mut started = false;
        futures::future::poll_fn(|cx| {
            subscription.poll_driver(cx);
            if let Some(rx) = &mut started_rx
                && let Poll::Ready(sent) = rx.poll_unpin(cx)
            {
                started = sent.is_ok();
                started_rx = None;
            }
            if started || subscription.driver.is_none() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        if !started {
            return Err(match subscription.outcome.take() {
                Some(Err(e)) => e,
                _ => InvokeError::Host("the subscription ended before it started".into()),
            });
        }
        Ok(subscription)
    }
}

/// The items of a running subscription. Dropping it interrupts the guest.
pub struct Subscription {
    driver: Option<BoxFuture<'static, Result<(), InvokeError>>>,
    outcome: Option<Result<(), InvokeError>>,
    items: mpsc::Receiver<Vec<WitItem>>,
    buffered: VecDeque<WitItem>,
    finished: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("running", &self.driver.is_some())
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Polls the store's event loop; records its outcome when it ends.
    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(outcome) = driver.poll_unpin(cx)
        {
            self.driver = None;
            self.outcome = Some(outcome);
        }
    }
}

impl Stream for Subscription {
    /// An output as JSON text, or the error that ends the subscription.
    type Item = Result<String, InvokeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(item) = this.buffered.pop_front() {
                if item.is_err() {
                    // An error item is terminal: stop the guest now.
                    this.finished = true;
                    this.driver = None;
                }
                return Poll::Ready(Some(item.map_err(|e| InvokeError::Guest(e.into()))));
            }
            this.poll_driver(cx);
            match this.items.poll_next_unpin(cx) {
                Poll::Ready(Some(batch)) => this.buffered.extend(batch),
                // The consumer is gone; the store finishes right after.
                Poll::Ready(None) if this.driver.is_some() => return Poll::Pending,
                Poll::Ready(None) => {
                    this.finished = true;
                    return Poll::Ready(match this.outcome.take() {
                        Some(Err(e)) => Some(Err(e)),
                        _ => None,
                    });
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Takes items from the guest's stream only when the caller's side has room:
/// the guest's writes complete as fast as the caller drains, no faster.
struct ItemConsumer {
    items: mpsc::Sender<Vec<WitItem>>,
    /// Dropped with the consumer, which tells the store's task to finish.
    _done: oneshot::Sender<()>,
}

/// The most items taken from the guest in one read.
const READ_BATCH: usize = 256;

impl StreamConsumer<StoreState> for ItemConsumer {
    type Item = WitItem;

    fn poll_consume(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'_, StoreState>,
        mut source: Source<'_, Self::Item>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        match this.items.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => return Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => return Poll::Pending,
        }
        let available = source.remaining(&mut store);
        if available == 0 {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let mut batch = Vec::with_capacity(available.min(READ_BATCH));
        source.read(&mut store, &mut batch)?;
        if this.items.start_send(batch).is_err() {
            return Poll::Ready(Ok(StreamResult::Dropped));
        }
        Poll::Ready(Ok(StreamResult::Completed))
    }
}

/// Turns a wasmtime error into what the caller should hear: a limit that was
/// hit, or a trap with the guest's last words.
fn classify(store: &mut Store<StoreState>, error: wasmtime::Error) -> InvokeError {
    let state = store.data_mut();
    match state.limiter.hit {
        Some(LimitHit::Cpu) => return InvokeError::CpuExhausted,
        Some(LimitHit::Memory { limit }) => return InvokeError::MemoryExhausted { limit },
        None => {}
    }
    let Some(trap) = error.downcast_ref::<Trap>().copied() else {
        return InvokeError::Host(format!("{error:#}"));
    };
    let message = state
        .fatal
        .take()
        .or_else(|| panic_from_stderr(&state.stderr_text()));
    InvokeError::Trap {
        kind: trap_kind(trap).to_owned(),
        message,
    }
}

/// A guest that did not report its panic through `log.fatal` (not built with
/// the SDK) still prints it to stderr the standard way.
fn panic_from_stderr(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let text = stderr[at..].trim();
    let text = text
        .split_once('\n')
        .map_or(text, |(_, message)| message.trim());
    (!text.is_empty()).then(|| text.chars().take(4096).collect())
}

fn trap_kind(trap: Trap) -> &'static str {
    match trap {
        Trap::StackOverflow => "stack_overflow",
        Trap::MemoryOutOfBounds => "memory_out_of_bounds",
        Trap::HeapMisaligned => "heap_misaligned",
        Trap::TableOutOfBounds => "table_out_of_bounds",
        Trap::IndirectCallToNull => "indirect_call_to_null",
        Trap::BadSignature => "bad_signature",
        Trap::IntegerOverflow => "integer_overflow",
        Trap::IntegerDivisionByZero => "integer_division_by_zero",
        Trap::BadConversionToInteger => "bad_conversion_to_integer",
        Trap::UnreachableCodeReached => "unreachable",
        Trap::Interrupt => "interrupt",
        Trap::OutOfFuel => "out_of_fuel",
        Trap::AllocationTooLarge => "allocation_too_large",
        _ => "other",
    }
}
