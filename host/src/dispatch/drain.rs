//! Stopping without cutting calls short: once the host drains, new calls
//! from the wire are refused with `UNAVAILABLE`, open subscriptions end with
//! `UNAVAILABLE`, and calls already running may finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use tokio::sync::{Notify, watch};

use super::Outputs;
use crate::call::{CallError, ErrorCode, Origin};

/// Whether the host is draining, and how many calls are in flight.
///
/// The count is a plain atomic: every call enters and leaves, and a
/// `watch` channel there (a lock and a wake-up of eight shards each way)
/// was a tenth of the dispatcher's own time. Who waits for the count to
/// reach zero says so first, so that a call leaving wakes someone only
/// when someone waits.
#[derive(Debug)]
pub(crate) struct Drain {
    draining: watch::Sender<bool>,
    in_flight: AtomicUsize,
    /// `idle` futures waiting.
    waiting: AtomicUsize,
    /// Told when the last call in flight leaves while someone waits.
    left: Notify,
}

/// One call in flight, counted until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let drain = &self.0;
        if drain.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && drain.waiting.load(Ordering::SeqCst) > 0
        {
            drain.left.notify_waiters();
        }
    }
}

/// Counts one `idle` future as waiting while it lives.
struct Waiting(Arc<Drain>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unavailable() -> CallError {
    CallError::new(ErrorCode::Unavailable, "the host is shutting down")
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self {
            draining: watch::channel(false).0,
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            left: Notify::new(),
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
        self.in_flight.fetch_add(1, Ordering::SeqCst);
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
    pub(crate) fn idle(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let drain = self.clone();
        async move {
            drain.waiting.fetch_add(1, Ordering::SeqCst);
            let waiting = Waiting(drain);
            loop {
                // Registered before the count is read: a call leaving after
                // the read wakes this one (`notify_waiters` reaches every
                // `Notified` made before it, polled or not).
                let left = waiting.0.left.notified();
                if waiting.0.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                left.await;
            }
        }
    }

    /// `stream`, counted in flight while it is open, and ended with
    /// `UNAVAILABLE` when the host starts draining.
    pub(crate) fn until_drained<T: Send + 'static>(
        &self,
        stream: Outputs<T>,
        in_flight: InFlight,
    ) -> Outputs<T> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::call::Transport;

    const WIRE: Origin = Origin::Wire(Transport::Embedded);

    /// Checks that `idle` waits while `others` and `last` are in flight,
    /// and resolves once `last`, the last of them, leaves.
    async fn idle_waits_for(drain: &Arc<Drain>, others: Vec<InFlight>, last: InFlight) {
        let idle = tokio::spawn(drain.idle());
        drop(others);
        tokio::task::yield_now().await;
        assert!(!idle.is_finished(), "a call is still in flight");
        drop(last);
        tokio::time::timeout(Duration::from_secs(10), idle)
            .await
            .expect("idle once the last call left")
            .expect("the task ran");
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_call_whether_or_not_the_host_drains() {
        let drain = Arc::new(Drain::new());
        drain.idle().await;

        let first = drain.enter(WIRE).expect("admitted");
        let second = drain.enter(WIRE).expect("admitted");
        idle_waits_for(&drain, vec![first], second).await;

        let third = drain.enter(WIRE).expect("admitted");
        drain.start();
        assert!(
            drain.enter(WIRE).is_err(),
            "a call from the wire while draining"
        );
        let nested = drain
            .enter(Origin::Nested { depth: 1 })
            .expect("a running call's call");
        idle_waits_for(&drain, vec![third], nested).await;
    }
}
