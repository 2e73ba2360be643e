//! Byte-stream operations, the raw carriage: the caller's bytes go into the
//! guest's stdin as fast as the guest reads them, its stdout and stderr
//! come out as fast as the caller drains them, then its exit status.
//!
//! The caller owns the store through the [`RawCall`]: dropping it drops the
//! store and stops the guest. At most one chunk of each output (64 KiB) and
//! one of the caller's waits on the host at a time, so a call's memory on
//! the host is bounded whatever the sizes streamed. Every chunk that moves,
//! either way, refills the guest's CPU budget (`item_cpu_ms`), as each item
//! of a subscription does; stdout and stderr together may carry at most
//! `output_bytes`; a call in which nothing moves either way for `idle_ms`
//! is ended.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use wasmtime::component::{
    Destination, FutureConsumer, Source, StreamConsumer, StreamProducer, StreamReader, StreamResult,
};
use wasmtime::{AsContextMut, StoreContextMut};

use super::bindings;
use super::busy::Busy;
use super::invoke::{Invocation, InvokeError, guest_failure, meter_fuel};
use super::limits::LimitHit;
use super::plugin::Plugin;
use super::state::StoreState;
use super::trap::classify;
use crate::capabilities::invoke::GuestError;

/// The most bytes taken from one of the guest's outputs at once.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// What a byte-stream operation sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawOutput {
    /// Bytes of its stdout.
    Stdout(Bytes),
    /// Bytes of its stderr.
    Stderr(Bytes),
    /// It ended with this exit code (0 is success); nothing follows.
    Exit(u8),
}

/// The guest's status as `raw.run` hands it over.
type WitStatus = Result<u8, bindings::CallError>;

impl Plugin {
    /// Starts byte-stream operation `op` with its (validated) arguments and
    /// the caller's bytes. Resolves once the guest has started (or refused
    /// to); the [`RawCall`] then yields its output as the caller pulls it.
    pub async fn run_raw(
        self: &Arc<Self>,
        invocation: &Invocation,
        op: &str,
        input: String,
        stdin: BoxStream<'static, Bytes>,
    ) -> Result<RawCall, InvokeError> {
        let Some(indices) = self.raw.clone() else {
            return Err(InvokeError::Host(
                "the plugin has no byte-stream operations".into(),
            ));
        };
        let slot = self
            .occupancy
            .subscription(&invocation.tenant)
            .map_err(InvokeError::Limit)?;
        let budget = self.budget(
            "item_cpu_ms",
            Duration::from_millis(self.limits.item_cpu_ms),
        );
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (out_tx, out_rx) = mpsc::channel::<RawOutput>(1);
        let stdin_moved = Arc::new(AtomicBool::new(false));
        let moved = stdin_moved.clone();
        let plugin = self.clone();
        let ctx = invocation.to_wit();
        let meter = invocation.meter.clone();
        let invocation = invocation.clone();
        let op = op.to_owned();
        let driver = async move {
            let mut store = plugin.new_store(&invocation, budget)?;
            let instance = plugin.instantiate_instance(&mut store).await?;
            let guest = indices
                .load(&mut store, &instance)
                .map_err(|e| classify(&mut store, e))?;
            let result = store
                .run_concurrent(
                    async |accessor| -> wasmtime::Result<Result<Option<WitStatus>, GuestError>> {
                        let stdin = accessor.with(|mut access| {
                            StreamReader::new(
                                &mut access,
                                Stdin {
                                    chunks: stdin,
                                    item_ticks: budget.ticks,
                                    moved,
                                },
                            )
                        })?;
                        let started = guest.call_run(accessor, ctx, op, input, stdin).await?;
                        let (stdout, stderr, status) = match started {
                            Ok(outputs) => outputs,
                            Err(e) => return Ok(Err(e.into())),
                        };
                        let (status_tx, status_rx) = oneshot::channel::<WitStatus>();
                        let (stdout_done, stdout_ended) = oneshot::channel::<()>();
                        let (stderr_done, stderr_ended) = oneshot::channel::<()>();
                        accessor.with(|mut access| -> wasmtime::Result<()> {
                            let output = |stderr: bool, done| Output {
                                out: out_tx.clone(),
                                stderr,
                                item_ticks: budget.ticks,
                                _done: done,
                            };
                            stdout.pipe(&mut access, output(false, stdout_done))?;
                            stderr.pipe(&mut access, output(true, stderr_done))?;
                            status.pipe(&mut access, Status(Some(status_tx)))
                        })?;
                        let _ = started_tx.send(());
                        // Both end when the guest drops its writer, or when
                        // the caller goes away; the status comes last.
                        let _ = stdout_ended.await;
                        let _ = stderr_ended.await;
                        drop(out_tx);
                        Ok(Ok(status_rx.await.ok()))
                    },
                )
                .await
                .and_then(|r| r);
            meter_fuel(&store, &invocation.meter);
            match result {
                Ok(Ok(Some(status))) => Ok(status),
                Ok(Ok(None)) => Err(InvokeError::Host(
                    "the operation ended without a status".into(),
                )),
                Ok(Err(e)) => Err(InvokeError::Guest(e)),
                Err(e) => Err(classify(&mut store, e)),
            }
        }
        .boxed();
        let mut call = RawCall {
            driver: Some(Busy::new(driver, meter).boxed()),
            outcome: None,
            out: out_rx,
            finished: false,
            output_left: self.limits.output_bytes,
            output_bytes: self.limits.output_bytes,
            stdin_moved,
            idle: Duration::from_millis(self.limits.idle_ms),
            idle_timer: Box::pin(tokio::time::sleep(Duration::from_millis(
                self.limits.idle_ms,
            ))),
            _slot: slot,
        };
        // Drive the store until the guest has started: a refusal to start is
        // the call's error, not an item, and a guest that neither starts
        // nor refuses within `idle_ms` is stopped.
        let mut started_rx = Some(started_rx);
        let started = futures::future::poll_fn(|cx| {
            call.poll_driver(cx);
            if let Some(rx) = &mut started_rx
                && let Poll::Ready(sent) = rx.poll_unpin(cx)
            {
                started_rx = None;
                return Poll::Ready(sent.is_ok());
            }
            if call.driver.is_some() && call.idle_timer.as_mut().poll(cx).is_ready() {
                let limit = LimitHit::time("idle_ms", call.idle);
                call.driver = None;
                call.outcome = Some(Err(InvokeError::Limit(limit)));
            }
            if call.driver.is_none() {
                Poll::Ready(false)
            } else {
                Poll::Pending
            }
        })
        .await;
        call.rearm();
        if !started {
            return Err(match call.outcome.take() {
                Some(Err(e)) => e,
                _ => InvokeError::Host("the operation ended before it started".into()),
            });
        }
        Ok(call)
    }
}

/// A running byte-stream operation: its output, then its exit code or the
/// error that ended it. Dropping it stops the guest.
pub struct RawCall {
    driver: Option<BoxFuture<'static, Result<WitStatus, InvokeError>>>,
    outcome: Option<Result<WitStatus, InvokeError>>,
    out: mpsc::Receiver<RawOutput>,
    finished: bool,
    output_left: usize,
    output_bytes: usize,
    /// Set when the guest takes a chunk of stdin.
    stdin_moved: Arc<AtomicBool>,
    idle: Duration,
    /// Fires `idle` after bytes last moved, either way.
    idle_timer: Pin<Box<Sleep>>,
    /// One of the plugin's stream slots, held while this is open.
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for RawCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCall")
            .field("running", &self.driver.is_some())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl RawCall {
    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(outcome) = driver.poll_unpin(cx)
        {
            self.driver = None;
            self.outcome = Some(outcome);
        }
    }

    /// Starts the idle period again: bytes moved.
    fn rearm(&mut self) {
        let idle = self.idle;
        self.idle_timer.as_mut().reset(Instant::now() + idle);
    }

    /// Ends the call with `item`, stopping the guest.
    fn end(
        &mut self,
        item: Result<RawOutput, InvokeError>,
    ) -> Poll<Option<<Self as Stream>::Item>> {
        self.finished = true;
        self.driver = None;
        Poll::Ready(Some(item))
    }
}

impl Stream for RawCall {
    /// Output, then [`RawOutput::Exit`]; or the error that ends the call.
    type Item = Result<RawOutput, InvokeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        this.poll_driver(cx);
        match this.out.poll_next_unpin(cx) {
            Poll::Ready(Some(output)) => {
                let len = match &output {
                    RawOutput::Stdout(bytes) | RawOutput::Stderr(bytes) => bytes.len(),
                    RawOutput::Exit(_) => 0,
                };
                if len > this.output_left {
                    let limit = LimitHit::new("output_bytes", this.output_bytes);
                    return this.end(Err(InvokeError::Limit(limit)));
                }
                this.output_left -= len;
                this.rearm();
                Poll::Ready(Some(Ok(output)))
            }
            // The outputs are open: unless nothing has moved for too long.
            Poll::Pending => {
                while this.idle_timer.as_mut().poll(cx).is_ready() {
                    if !this.stdin_moved.swap(false, Ordering::Relaxed) {
                        let limit = LimitHit::time("idle_ms", this.idle);
                        return this.end(Err(InvokeError::Limit(limit)));
                    }
                    this.rearm();
                }
                Poll::Pending
            }
            Poll::Ready(None) if this.driver.is_some() => Poll::Pending,
            Poll::Ready(None) => match this.outcome.take() {
                Some(Ok(Ok(code))) => this.end(Ok(RawOutput::Exit(code))),
                Some(Ok(Err(e))) => this.end(Err(guest_failure(e, this.output_bytes))),
                Some(Err(e)) => this.end(Err(e)),
                None => Poll::Ready(None),
            },
        }
    }
}

/// The caller's bytes as the guest reads them: a chunk is handed over only
/// when the guest asks, so a guest that stops reading holds the caller back.
struct Stdin {
    chunks: BoxStream<'static, Bytes>,
    item_ticks: u64,
    /// Tells the [`RawCall`] that bytes moved.
    moved: Arc<AtomicBool>,
}

impl StreamProducer<StoreState> for Stdin {
    type Item = u8;
    type Buffer = Bytes;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, StoreState>,
        mut destination: Destination<'a, u8, Bytes>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        // A zero-length read asks whether bytes are ready; yes, without
        // taking any, keeps the caller's bytes from being read ahead.
        if destination.remaining(&mut store) == Some(0) {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let this = self.get_mut();
        loop {
            return match this.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(chunk)) if chunk.is_empty() => continue,
                Poll::Ready(Some(chunk)) => {
                    store.data_mut().cpu.ticks = this.item_ticks;
                    this.moved.store(true, Ordering::Relaxed);
                    destination.set_buffer(chunk);
                    Poll::Ready(Ok(StreamResult::Completed))
                }
                Poll::Ready(None) => Poll::Ready(Ok(StreamResult::Dropped)),
                Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// One of the guest's outputs, taken only when the caller's side has room.
struct Output {
    out: mpsc::Sender<RawOutput>,
    stderr: bool,
    item_ticks: u64,
    /// Dropped with the consumer: this output has ended.
    _done: oneshot::Sender<()>,
}

impl StreamConsumer<StoreState> for Output {
    type Item = u8;

    fn poll_consume(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'_, StoreState>,
        source: Source<'_, u8>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        match this.out.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => return Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => return Poll::Pending,
        }
        if source.remaining(&mut store) == 0 {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let bytes = {
            let mut direct = source.as_direct(store.as_context_mut());
            let take = direct.remaining().len().min(CHUNK_BYTES);
            let bytes = Bytes::copy_from_slice(&direct.remaining()[..take]);
            direct.mark_read(take);
            bytes
        };
        store.data_mut().cpu.ticks = this.item_ticks;
        let output = if this.stderr {
            RawOutput::Stderr(bytes)
        } else {
            RawOutput::Stdout(bytes)
        };
        if this.out.start_send(output).is_err() {
            return Poll::Ready(Ok(StreamResult::Dropped));
        }
        Poll::Ready(Ok(StreamResult::Completed))
    }
}

/// The guest's exit status, kept for the end of the call.
struct Status(Option<oneshot::Sender<WitStatus>>);

impl FutureConsumer<StoreState> for Status {
    type Item = WitStatus;

    fn poll_consume(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        mut store: StoreContextMut<'_, StoreState>,
        mut source: Source<'_, WitStatus>,
        _finish: bool,
    ) -> Poll<wasmtime::Result<()>> {
        let mut status: Option<WitStatus> = None;
        source.read(&mut store, &mut status)?;
        if let (Some(status), Some(tx)) = (status, self.get_mut().0.take()) {
            let _ = tx.send(status);
        }
        Poll::Ready(Ok(()))
    }
}
