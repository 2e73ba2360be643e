//! Stopping without cutting calls short: once the host drains, new calls
//! from the wire are refused with `UNAVAILABLE`, open subscriptions end with
//! `UNAVAILABLE`, and calls already running may finish.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;

use super::OutputStream;
use crate::call::{CallError, ErrorCode, Origin};

/// Whether the host is draining, and how many calls are in flight.
#[derive(Debug)]
pub(crate) struct Drain {
    draining: watch::Sender<bool>,
    in_flight: watch::Sender<usize>,
}

/// One call in flight, counted until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

fn unavailable() -> CallError {
    CallError::new(ErrorCode::Unavailable, "the host is shutting down")
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self {
            draining: watch::channel(false).0,
            in_flight: watch::channel(0).0,
        }
    }

    /// Starts draining.
    pub(crate) fn start(&self) {
        self.draining.send_replace(true);
    }

    /// Counts a call in, unless the host is draining and the call comes from
    /// the wire (calls made by running calls may still go on).
    pub(crate) fn enter(self: &Arc<Self>, origin: Origin) -> Result<InFlight, CallError> {
        if origin.is_wire() && *self.draining.borrow() {
            return Err(unavailable());
        }
        self.in_flight.send_modify(|n| *n += 1);
        Ok(InFlight(self.clone()))
    }

    /// Resolves once the host starts draining.
    pub(crate) fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.subscribe();
        async move {
            let _ = draining.wait_for(|draining| *draining).await;
        }
    }

    /// Resolves once no call is in flight.
    pub(crate) fn idle(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut in_flight = self.in_flight.subscribe();
        async move {
            let _ = in_flight.wait_for(|n| *n == 0).await;
        }
    }

    /// `stream`, counted in flight while it is open, and ended with
    /// `UNAVAILABLE` when the host starts draining.
    pub(crate) fn until_drained(&self, stream: OutputStream, in_flight: InFlight) -> OutputStream {
        let drained = Box::pin(self.draining());
        futures::stream::unfold(Some((stream, drained, in_flight)), |state| async move {
            let (mut stream, mut drained, in_flight) = state?;
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(output)) => Some((Ok(output), Some((stream, drained, in_flight)))),
                    Some(Err(error)) => Some((Err(error), None)),
                    None => None,
                },
                () = &mut drained => Some((Err(unavailable()), None)),
            }
        })
        .boxed()
    }
}
