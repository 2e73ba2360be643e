//! `opbox:plugin/invoke`: a plugin calling other operations, through the
//! dispatcher, as its caller.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Accessor, Destination, HasSelf, StreamProducer, StreamReader, StreamResult,
};

use crate::runtime::bindings::CallError;
use crate::runtime::bindings::opbox::plugin::invoke;
use crate::runtime::{GuestError, NestedCalls, StoreState};

impl invoke::Host for StoreState {}

/// One item of a subscription's stream, as the guest reads it.
type Item = Result<String, CallError>;

impl<T> invoke::HostWithStore<T> for HasSelf<StoreState> {
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
            .map_err(|e| {
                tracing::warn!("cannot hand a subscription to a guest: {e:#}");
                CallError {
                    code: "RESOURCE_EXHAUSTED".into(),
                    message: "no room for another stream in this call".into(),
                    details: None,
                }
            })
    }
}

fn nested<T>(
    accessor: &Accessor<T, HasSelf<StoreState>>,
) -> Result<std::sync::Arc<dyn NestedCalls>, CallError> {
    accessor
        .with(|mut store| store.get().nested.clone())
        .ok_or_else(|| CallError {
            code: "UNAVAILABLE".into(),
            message: "calls to other operations are not available here".into(),
            details: None,
        })
}

fn to_wit(e: GuestError) -> CallError {
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
struct Outputs(crate::runtime::NestedItems);

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
