//! Guest CPU time of a call: the time spent polling the future that runs
//! it, less the time spent polling other calls' futures inside it (a
//! nested call is polled within its caller's poll, and is its own call).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::call::Meter;

thread_local! {
    /// Time spent in metered polls nested in the one running on this
    /// thread, so far in it.
    static NESTED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// A future whose own poll time (nested metered polls excluded) is added
/// to `spent`: as guest CPU time, or as the host's.
pub(crate) struct Busy<F> {
    inner: Pin<Box<F>>,
    spent: Arc<Meter>,
    add: fn(&Meter, Duration),
}

impl<F> Busy<F> {
    /// A guest's run, its time counted as guest CPU.
    pub(crate) fn new(inner: F, spent: Arc<Meter>) -> Self {
        Self {
            inner: Box::pin(inner),
            spent,
            add: Meter::add_guest_cpu,
        }
    }

    /// The host's work for a call (a native operation's handler), its time
    /// counted as host CPU.
    pub(crate) fn host(inner: F, spent: Arc<Meter>) -> Self {
        Self {
            inner: Box::pin(inner),
            spent,
            add: Meter::add_host_cpu,
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
        (self.add)(&self.spent, total.saturating_sub(nested));
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
        let (outer, inner) = (Arc::new(Meter::default()), Arc::new(Meter::default()));
        let nested = Busy::new(spin(Duration::from_millis(100)), inner.clone());
        Busy::new(
            async move {
                spin(Duration::from_millis(10)).await;
                nested.await;
            },
            outer.clone(),
        )
        .await;
        let ms = |m: &Meter| m.own_guest_cpu().as_millis();
        let (inner, outer) = (ms(&inner), ms(&outer));
        assert!(inner >= 100, "inner {inner}");
        // The outer call's own 10 ms, not the 110 ms its poll took.
        assert!((10..100).contains(&outer), "outer {outer}");
    }
}
