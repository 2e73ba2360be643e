//! `opbox:plugin/invoke`: a plugin calling other operations, through the
//! dispatcher, as its caller.
//!
//! The capability does not know the dispatcher: it is handed a
//! [`NestedCalls`] for each call, which the dispatcher implements.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Accessor, Destination, FutureReader, HasSelf, Linker, StreamProducer, StreamReader,
    StreamResult,
};

use super::bindings::CallError;
use super::bindings::opbox::plugin::invoke;
use super::chunks::{ChunkConsumer, ChunkProducer};

/// Carries out the calls a guest makes to other operations
/// (`opbox:plugin/invoke`) on behalf of the call that made them: same caller,
/// what is left of its deadline, one level deeper.
pub trait NestedCalls: std::fmt::Debug + Send + Sync + 'static {
    /// Calls the query or mutation `operation` with JSON text `input`.
    fn call(
        &self,
        operation: String,
        input: String,
    ) -> BoxFuture<'static, Result<String, GuestError>>;

    /// Subscribes to the subscription `operation` with JSON text `input`;
    /// each item is one output's JSON text, and an error ends the stream.
    /// Dropping the stream aborts the subscription.
    fn subscribe(
        &self,
        operation: String,
        input: String,
    ) -> BoxFuture<'static, Result<NestedItems, GuestError>>;

    /// Starts the byte-stream operation `operation` with JSON text `input`
    /// and `stdin` (its end closes the operation's stdin). Dropping what it
    /// returns stops the operation.
    fn run(
        &self,
        operation: String,
        input: String,
        stdin: BoxStream<'static, Bytes>,
    ) -> BoxFuture<'static, Result<NestedRaw, GuestError>>;
}

/// The outputs of a subscription a guest made.
pub type NestedItems = BoxStream<'static, Result<String, GuestError>>;

/// A byte-stream operation a guest started: each output is pulled only as
/// the guest reads it; the status resolves once the operation has ended.
pub struct NestedRaw {
    /// Its stdout.
    pub stdout: BoxStream<'static, Bytes>,
    /// Its stderr.
    pub stderr: BoxStream<'static, Bytes>,
    /// Its exit code, or the error that ended it.
    pub status: BoxFuture<'static, Result<u8, GuestError>>,
}

impl std::fmt::Debug for NestedRaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NestedRaw").finish_non_exhaustive()
    }
}

/// A domain error returned by the guest, or by an operation it called.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestError {
    /// The guest's code.
    pub code: String,
    /// The guest's message.
    pub message: String,
    /// The guest's details, if they were a JSON value.
    pub details: Option<Value>,
}

impl From<CallError> for GuestError {
    fn from(e: CallError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            details: e.details.and_then(|d| serde_json::from_str(&d).ok()),
        }
    }
}

/// Who carries out one call's calls to other operations; without anyone
/// (`describe` at load), `invoke.call` answers `UNAVAILABLE`.
#[derive(Debug)]
pub struct InvokeState {
    nested: Option<Arc<dyn NestedCalls>>,
}

impl InvokeState {
    pub(super) fn new(nested: Option<Arc<dyn NestedCalls>>) -> Self {
        Self { nested }
    }

    /// Who carries out this call's calls, if anyone does.
    pub(super) fn nested(&self) -> Option<Arc<dyn NestedCalls>> {
        self.nested.clone()
    }
}

impl invoke::Host for InvokeState {}

pub(super) fn add_to_linker<T: super::View>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn state<T: super::View>(store: &mut T) -> &mut InvokeState {
        &mut store.capabilities().0.invoke
    }
    invoke::add_to_linker::<T, HasSelf<InvokeState>>(linker, state)
}

/// One item of a subscription's stream, as the guest reads it.
type Item = Result<String, CallError>;

impl<T> invoke::HostWithStore<T> for HasSelf<InvokeState> {
    async fn call(
        accessor: &Accessor<T, Self>,
        operation: String,
        input: String,
    ) -> Result<String, CallError> {
        let nested = nested(accessor)?;
        nested.call(operation, input).await.map_err(to_wit)
    }

    async fn subscribe(
        accessor: &Accessor<T, Self>,
        operation: String,
        input: String,
    ) -> Result<StreamReader<Item>, CallError> {
        let nested = nested(accessor)?;
        let outputs = nested.subscribe(operation, input).await.map_err(to_wit)?;
        accessor
            .with(|mut store| StreamReader::new(&mut store, Outputs(outputs)))
            .map_err(no_room)
    }

    async fn run(
        accessor: &Accessor<T, Self>,
        operation: String,
        input: String,
        stdin: StreamReader<u8>,
    ) -> Result<RawHandles, CallError> {
        let nested = nested(accessor)?;
        // The guest's stdin, a chunk at a time, taken only as the operation
        // reads: the channel holds one chunk.
        let (chunks, stdin_rx) = futures::channel::mpsc::channel::<Bytes>(0);
        let chunks = ChunkConsumer::new(chunks, |bytes| bytes, |_: &mut T| {});
        accessor
            .with(|mut store| stdin.pipe(&mut store, chunks))
            .map_err(no_room)?;
        let stdin = stdin_rx.boxed();
        let started = nested.run(operation, input, stdin).await.map_err(to_wit)?;
        accessor
            .with(|mut store| -> wasmtime::Result<RawHandles> {
                let output = |chunks| ChunkProducer::new(chunks, |_: &mut T| {});
                let stdout = StreamReader::new(&mut store, output(started.stdout))?;
                let stderr = StreamReader::new(&mut store, output(started.stderr))?;
                let status = started.status;
                let status = FutureReader::new(&mut store, async move {
                    Ok::<_, wasmtime::Error>(status.await.map_err(to_wit))
                })?;
                Ok((stdout, stderr, status))
            })
            .map_err(no_room)
    }
}

/// What `invoke.run` hands the guest: stdout, stderr and the status.
type RawHandles = (
    StreamReader<u8>,
    StreamReader<u8>,
    FutureReader<Result<u8, CallError>>,
);

/// What a guest is told when its call has no room for another stream.
fn no_room(e: wasmtime::Error) -> CallError {
    tracing::warn!("cannot hand a stream to a guest: {e:#}");
    CallError {
        code: "RESOURCE_EXHAUSTED".into(),
        message: "no room for another stream in this call".into(),
        details: None,
    }
}

fn nested<T>(
    accessor: &Accessor<T, HasSelf<InvokeState>>,
) -> Result<Arc<dyn NestedCalls>, CallError> {
    accessor
        .with(|mut store| store.get().nested.clone())
        .ok_or_else(unavailable)
}

/// What a guest is told where no one carries out its calls (`describe`).
pub(super) fn unavailable() -> CallError {
    CallError {
        code: "UNAVAILABLE".into(),
        message: "calls to other operations are not available here".into(),
        details: None,
    }
}

pub(super) fn to_wit(e: GuestError) -> CallError {
    CallError {
        code: e.code,
        message: e.message,
        details: e.details.map(|d| d.to_string()),
    }
}

/// A subscription's outputs as a stream the guest reads: one item per read,
/// pulled from the subscription only when the guest asks, so a guest that
/// reads slowly holds the subscription back. Dropping it (the guest dropped
/// the stream, or its call ended) aborts the subscription.
struct Outputs(NestedItems);

impl<D> StreamProducer<D> for Outputs {
    type Item = Item;
    type Buffer = Option<Item>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, Item, Option<Item>>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        // A zero-length read asks whether an item is ready; saying yes
        // without taking one keeps items from being read ahead and lost.
        if destination.remaining(&mut store) == Some(0) {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        match self.get_mut().0.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(output))) => {
                destination.set_buffer(Some(Ok(output)));
                Poll::Ready(Ok(StreamResult::Completed))
            }
            Poll::Ready(Some(Err(error))) => {
                destination.set_buffer(Some(Err(to_wit(error))));
                Poll::Ready(Ok(StreamResult::Dropped))
            }
            Poll::Ready(None) => Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}
