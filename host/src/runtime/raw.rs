//! Byte-stream operations, the raw carriage: the caller's bytes go into the
//! guest's stdin as fast as the guest reads them, its stdout and stderr
//! come out as fast as the caller drains them, then its exit status.
//!
//! The caller owns the store through the [`RawCall`]: dropping it drops the
//! store and stops the guest. At most one chunk of each output (64 KiB,
//! [`CHUNK_BYTES`](crate::capabilities::chunks::CHUNK_BYTES)) and
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
use wasmtime::StoreContextMut;
use wasmtime::component::{FutureConsumer, Source, StreamConsumer, StreamReader};

use super::bindings;
use super::busy::Busy;
use super::invoke::{Invocation, InvokeError, guest_failure, meter_fuel};
use super::limits::LimitHit;
use super::plugin::Plugin;
use super::state::StoreState;
use super::trap::classify;
use crate::capabilities::chunks::{ChunkConsumer, ChunkProducer};
use crate::capabilities::invoke::GuestError;

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
                        // Each chunk the guest takes refills its CPU
                        // budget and tells the call that bytes moved.
                        let item_ticks = budget.ticks;
                        let stdin = ChunkProducer::new(stdin, move |state: &mut StoreState| {
                            state.cpu.ticks = item_ticks;
                            moved.store(true, Ordering::Relaxed);
                        });
                        let stdin =
                            accessor.with(|mut access| StreamReader::new(&mut access, stdin))?;
                        let started = guest.call_run(accessor, ctx, op, input, stdin).await?;
                        let (stdout, stderr, status) = match started {
                            Ok(outputs) => outputs,
                            Err(e) => return Ok(Err(e.into())),
                        };
                        let (status_tx, status_rx) = oneshot::channel::<WitStatus>();
                        let (stdout_done, stdout_ended) = oneshot::channel::<()>();
                        let (stderr_done, stderr_ended) = oneshot::channel::<()>();
                        accessor.with(|mut access| -> wasmtime::Result<()> {
                            let stdout_out =
                                output(&out_tx, RawOutput::Stdout, item_ticks, stdout_done);
                            let stderr_out =
                                output(&out_tx, RawOutput::Stderr, item_ticks, stderr_done);
                            stdout.pipe(&mut access, stdout_out)?;
                            stderr.pipe(&mut access, stderr_out)?;
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

/// One of the guest's outputs, taken only when the caller's side has room;
/// each chunk refills the guest's CPU budget. `done` goes with it: its drop
/// says this output has ended.
fn output(
    out: &mpsc::Sender<RawOutput>,
    wrap: fn(Bytes) -> RawOutput,
    item_ticks: u64,
    done: oneshot::Sender<()>,
) -> impl StreamConsumer<StoreState, Item = u8> {
    ChunkConsumer::new(out.clone(), wrap, move |state: &mut StoreState| {
        let _done = &done;
        state.cpu.ticks = item_ticks;
    })
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
