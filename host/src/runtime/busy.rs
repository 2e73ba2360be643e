//! Guest CPU time of a call: the time spent polling the future that runs
//! it, less the time spent polling other calls' futures inside it (a
//! nested call is polled within its caller's poll, and is its own call).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

thread_local! {
    /// Time spent in metered polls nested in the one running on this
    /// thread, so far in it.
    static NESTED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// A future whose own poll time (nested metered polls excluded) is added,
/// in nanoseconds, to `spent`.
pub(crate) struct Busy<F> {
    inner: Pin<Box<F>>,
    spent: Arc<AtomicU64>,
}

impl<F> Busy<F> {
    pub(crate) fn new(inner: F, spent: Arc<AtomicU64>) -> Self {
        Self {
            inner: Box::pin(inner),
            spent,
        }
    }
}

impl<F: Future> Future for Busy<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outer = NESTED.replace(Duration::ZERO);
        let started = Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        let total = started.elapsed();
        // This poll counts in full for a metered poll around it.
        let nested = NESTED.replace(outer + total);
        let own = u64::try_from(total.saturating_sub(nested).as_nanos()).unwrap_or(u64::MAX);
        self.spent.fetch_add(own, Ordering::Relaxed);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that spins for `work` each time it is polled, around `inner`.
    async fn spin(work: Duration) {
        let until = Instant::now() + work;
        while Instant::now() < until {}
    }

    #[tokio::test]
    async fn a_nested_meter_takes_its_time_out_of_the_outer_one() {
        let (outer, inner) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let nested = Busy::new(spin(Duration::from_millis(100)), inner.clone());
        Busy::new(
            async move {
                spin(Duration::from_millis(10)).await;
                nested.await;
            },
            outer.clone(),
        )
        .await;
        let ms = |n: &AtomicU64| n.load(Ordering::Relaxed) / 1_000_000;
        let (inner, outer) = (ms(&inner), ms(&outer));
        assert!(inner >= 100, "inner {inner}");
        // The outer call's own 10 ms, not the 110 ms its poll took.
        assert!((10..100).contains(&outer), "outer {outer}");
    }
}
