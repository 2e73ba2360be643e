//! When an HTTP connection is idle: no request open on it, a response body
//! still being sent counting as open.
//!
//! HTTP/1 has hyper's header timeout for this, but an HTTP/2 connection
//! with no stream open (or a peer that connects and says nothing, before
//! its protocol is even known) has none. [`Activity`] counts what is open
//! on one connection and tells its task when the connection has been idle
//! for long enough to close.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// What is open on one connection, and since when nothing has been.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    open: AtomicUsize,
    /// When the last request closed, in nanoseconds after `start`.
    last_closed: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            last_closed: AtomicU64::new(0),
        })
    }

    /// A request has begun; it stays open until the guard, and the response
    /// body it is moved into, are dropped.
    pub(super) fn begin(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Resolves once nothing has been open on the connection for `timeout`:
    /// between `timeout` and twice that after it last went idle.
    pub(super) async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.open.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let closed = Duration::from_nanos(self.last_closed.load(Ordering::Acquire));
                let idle = self.start.elapsed().saturating_sub(closed);
                match timeout.checked_sub(idle) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One open request of a connection's [`Activity`].
#[derive(Debug)]
pub(super) struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last_closed.fetch_max(now, Ordering::AcqRel);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request open until it is sent or dropped.
#[derive(Debug)]
pub(super) struct Tracked {
    body: Body,
    _open: Open,
}

impl Tracked {
    pub(super) fn new(body: Body, open: Open) -> Self {
        Self { body, _open: open }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_once_nothing_has_been_open_for_the_timeout() {
        let timeout = Duration::from_secs(10);
        let activity = Activity::new();
        let open = activity.begin();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(timeout).await }
        });
        // A request open for three timeouts keeps the connection busy.
        tokio::time::sleep(3 * timeout).await;
        assert!(!idle.is_finished());
        let closed_at = Instant::now();
        drop(open);
        idle.await.unwrap();
        let idle_for = closed_at.elapsed();
        assert!(
            idle_for >= timeout && idle_for <= 2 * timeout,
            "{idle_for:?}"
        );
    }
}
