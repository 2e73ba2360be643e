//! Byte streams (`stream<u8>`) between the host and a guest, a chunk at a
//! time and only as fast as the other side takes them: the two ends the
//! raw carriage is made of, for an operation's stdin and outputs
//! (`runtime::raw`) and for the byte-stream operations a guest starts
//! (`invoke.run`).
//!
//! Each calls a hook on the store's data as a chunk moves, which is where
//! the runtime refills the guest's CPU budget.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use wasmtime::component::{Destination, Source, StreamConsumer, StreamProducer, StreamResult};
use wasmtime::{AsContextMut, StoreContextMut};

/// The most bytes taken from a guest's stream at once.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Hands a guest the chunks of a byte stream as it reads them: one chunk
/// per read, pulled from the source only when the guest asks, so a guest
/// that stops reading holds the source back. The guest's stream ends with
/// the source; dropping this (the guest dropped its end) drops the source.
pub struct ChunkProducer<F> {
    chunks: BoxStream<'static, Bytes>,
    moved: F,
}

impl<F> ChunkProducer<F> {
    /// Hands out `chunks`, calling `moved` on the store's data as each one
    /// goes to the guest.
    pub fn new(chunks: BoxStream<'static, Bytes>, moved: F) -> Self {
        Self { chunks, moved }
    }
}

impl<D, F> StreamProducer<D> for ChunkProducer<F>
where
    F: FnMut(&mut D) + Send + Unpin + 'static,
{
    type Item = u8;
    type Buffer = Bytes;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, u8, Bytes>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        // A zero-length read asks whether bytes are ready; yes, without
        // taking any, keeps the source from being read ahead.
        if destination.remaining(&mut store) == Some(0) {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let this = self.get_mut();
        loop {
            return match this.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(chunk)) if chunk.is_empty() => continue,
                Poll::Ready(Some(chunk)) => {
                    (this.moved)(store.data_mut());
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

/// Takes what a guest writes to a byte stream, at most [`CHUNK_BYTES`] at
/// a time and only when `sink` has room for it, so a sink nobody drains
/// holds the guest's writes back. The stream ends for the guest when the
/// sink's receiver is gone.
pub struct ChunkConsumer<T, F> {
    sink: mpsc::Sender<T>,
    wrap: fn(Bytes) -> T,
    moved: F,
}

impl<T, F> ChunkConsumer<T, F> {
    /// Sends each chunk into `sink` as `wrap` makes it, calling `moved` on
    /// the store's data as it goes.
    pub fn new(sink: mpsc::Sender<T>, wrap: fn(Bytes) -> T, moved: F) -> Self {
        Self { sink, wrap, moved }
    }
}

impl<D, T, F> StreamConsumer<D> for ChunkConsumer<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut D) + Send + Unpin + 'static,
{
    type Item = u8;

    fn poll_consume(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'_, D>,
        source: Source<'_, u8>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        match this.sink.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => return Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => return Poll::Pending,
        }
        if source.remaining(&mut store) == 0 {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let chunk = {
            let mut direct = source.as_direct(store.as_context_mut());
            let take = direct.remaining().len().min(CHUNK_BYTES);
            let chunk = Bytes::copy_from_slice(&direct.remaining()[..take]);
            direct.mark_read(take);
            chunk
        };
        (this.moved)(store.data_mut());
        if this.sink.start_send((this.wrap)(chunk)).is_err() {
            return Poll::Ready(Ok(StreamResult::Dropped));
        }
        Poll::Ready(Ok(StreamResult::Completed))
    }
}
