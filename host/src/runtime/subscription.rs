//! Subscriptions: a guest's stream of items, pulled as the caller drains it.
//!
//! The caller owns the store through the [`Subscription`]: dropping it drops
//! the store and interrupts the guest. Items cross from the guest only when
//! the caller's side has room (backpressure), each item refills the guest's
//! CPU budget (`item_cpu_ms`), and a guest that produces nothing for
//! `idle_ms` is stopped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use wasmtime::StoreContextMut;
use wasmtime::component::{Source, StreamConsumer, StreamResult};

use super::bindings;
use super::busy::Busy;
use super::invoke::{Invocation, InvokeError, guest_failure, meter_fuel};
use super::limits::LimitHit;
use super::plugin::Plugin;
use super::state::StoreState;
use super::trap::classify;
use crate::capabilities::invoke::GuestError;

/// One item of a subscription as the guest writes it.
type WitItem = Result<String, bindings::CallError>;

impl Plugin {
    /// Starts a subscription. Resolves once the guest has returned its stream
    /// (or failed to); the [`Subscription`] then yields the items as the
    /// caller pulls them.
    pub async fn subscribe(
        self: &Arc<Self>,
        invocation: &Invocation,
        op: &str,
        input: String,
    ) -> Result<Subscription, InvokeError> {
        let slot = self
            .occupancy
            .subscription(&invocation.tenant)
            .map_err(InvokeError::Limit)?;
        let item_cpu = Duration::from_millis(self.limits.item_cpu_ms);
        let budget = self.budget("item_cpu_ms", item_cpu);
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (items_tx, items_rx) = mpsc::channel::<Vec<WitItem>>(1);
        let plugin = self.clone();
        let ctx = invocation.to_wit();
        let meter = invocation.meter.clone();
        let invocation = invocation.clone();
        let op = op.to_owned();
        let driver = async move {
            let mut store = plugin.new_store(&invocation, budget)?;
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
                            item_ticks: budget.ticks,
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
            meter_fuel(&store, &invocation.meter);
            match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(InvokeError::Guest(e)),
                Err(e) => Err(classify(&mut store, e)),
            }
        }
        .boxed();
        let driver = Busy::new(driver, meter).boxed();
        let idle = Duration::from_millis(self.limits.idle_ms);
        let mut subscription = Subscription {
            driver: Some(driver),
            outcome: None,
            items: items_rx,
            buffered: VecDeque::new(),
            finished: false,
            output_bytes: self.limits.output_bytes,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            _slot: slot,
        };
        // Drive the store until the guest has handed over its stream. A short
        // stream may start, produce and even fail within one poll: once it
        // started, everything it did is delivered through the stream.
        let mut started_rx = Some(started_rx);
        let mut started = false;
        let idle_hit = futures::future::poll_fn(|cx| {
            subscription.poll_driver(cx);
            if let Some(rx) = &mut started_rx
                && let Poll::Ready(sent) = rx.poll_unpin(cx)
            {
                started = sent.is_ok();
                started_rx = None;
            }
            if started || subscription.driver.is_none() {
                Poll::Ready(false)
            } else if subscription.idle_timer.as_mut().poll(cx).is_ready() {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await;
        if idle_hit {
            return Err(InvokeError::Limit(LimitHit::time("idle_ms", idle)));
        }
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
    output_bytes: usize,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    /// One of the plugin's subscription slots, held while this is open.
    _slot: OwnedSemaphorePermit,
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
                let item = match item {
                    Ok(text) if text.len() > this.output_bytes => Err(InvokeError::Limit(
                        LimitHit::new("output_bytes", this.output_bytes),
                    )),
                    Ok(text) => Ok(text),
                    Err(e) => Err(guest_failure(e, this.output_bytes)),
                };
                if item.is_err() {
                    // An error is terminal: stop the guest now.
                    this.finished = true;
                    this.driver = None;
                } else {
                    // The guest's wait for its next item starts now, when the
                    // caller has taken this one, however slowly it reads.
                    let idle = this.idle;
                    this.idle_timer.as_mut().reset(Instant::now() + idle);
                }
                return Poll::Ready(Some(item));
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
                Poll::Pending if this.idle_timer.as_mut().poll(cx).is_ready() => {
                    this.finished = true;
                    this.driver = None;
                    let limit = LimitHit::time("idle_ms", this.idle);
                    return Poll::Ready(Some(Err(InvokeError::Limit(limit))));
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
    /// The guest's CPU budget for producing the next item.
    item_ticks: u64,
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
        // Each item taken earns the guest a fresh budget for the next one.
        store.data_mut().cpu.ticks = this.item_ticks;
        if this.items.start_send(batch).is_err() {
            return Poll::Ready(Ok(StreamResult::Dropped));
        }
        Poll::Ready(Ok(StreamResult::Completed))
    }
}
