//! Guest CPU time of a call: the time spent polling the future that runs
//! it, less the time spent polling other calls' futures inside it (a
//! nested call is polled within its caller's poll, and is its own call).
//! An instance that serves several calls at once ([`Sharing`]) splits
//! what it spends evenly among the calls in flight on it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    payer: Payer,
}

/// Who a poll's time is charged to.
enum Payer {
    /// One call, as guest CPU.
    Guest(Arc<Meter>),
    /// One call, as host CPU.
    Host(Arc<Meter>),
    /// The calls in flight on a shared instance, as guest CPU.
    Shared(Arc<Sharing>),
}

impl<F> Busy<F> {
    /// A guest's run, its time counted as guest CPU.
    pub(crate) fn new(inner: F, spent: Arc<Meter>) -> Self {
        Self {
            inner: Box::pin(inner),
            payer: Payer::Guest(spent),
        }
    }

    /// The host's work for a call (a native operation's handler), its time
    /// counted as host CPU.
    pub(crate) fn host(inner: F, spent: Arc<Meter>) -> Self {
        Self {
            inner: Box::pin(inner),
            payer: Payer::Host(spent),
        }
    }

    /// The run of an instance serving several calls at once, its time
    /// split among the calls in flight on it.
    pub(crate) fn shared(inner: F, sharing: Arc<Sharing>) -> Self {
        Self {
            inner: Box::pin(inner),
            payer: Payer::Shared(sharing),
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
        let own = total.saturating_sub(nested);
        match &self.payer {
            Payer::Guest(meter) => meter.add_guest_cpu(own),
            Payer::Host(meter) => meter.add_host_cpu(own),
            Payer::Shared(sharing) => sharing.split(own, 0),
        }
        polled
    }
}

/// The calls in flight on an instance that serves several at once. What
/// the instance spends while they are (its guest CPU, its fuel) is split
/// evenly among them; what it spends with none in flight, nobody pays,
/// and its CPU budget, refilled only when a call starts, bounds it.
#[derive(Debug, Default)]
pub(crate) struct Sharing {
    calls: Mutex<Vec<(u64, Arc<Meter>)>>,
    next: AtomicU64,
}

impl Sharing {
    fn calls(&self) -> MutexGuard<'_, Vec<(u64, Arc<Meter>)>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `meter`'s call in flight until the [`Share`] is dropped.
    pub(crate) fn join(self: &Arc<Self>, meter: Arc<Meter>) -> Share {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.calls().push((id, meter));
        Share {
            sharing: self.clone(),
            id,
        }
    }

    /// Charges `cpu` and `fuel` evenly to the calls in flight.
    pub(crate) fn split(&self, cpu: Duration, fuel: u64) {
        let calls = self.calls();
        let Ok(n) = u32::try_from(calls.len()) else {
            return;
        };
        if n == 0 {
            return;
        }
        for (_, meter) in calls.iter() {
            meter.add_guest_cpu(cpu / n);
            if fuel > 0 {
                meter.add_fuel(fuel / u64::from(n));
            }
        }
    }
}

/// A call in flight on a shared instance; it stops paying when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    sharing: Arc<Sharing>,
    id: u64,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.sharing.calls().retain(|(id, _)| *id != self.id);
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

    #[tokio::test]
    async fn a_shared_instance_splits_its_time_among_the_calls_in_flight() {
        let sharing = Arc::new(Sharing::default());
        let (a, b) = (Arc::new(Meter::default()), Arc::new(Meter::default()));
        let ms = |m: &Meter| m.own_guest_cpu().as_millis();
        let share_a = sharing.join(a.clone());
        let share_b = sharing.join(b.clone());
        Busy::shared(spin(Duration::from_millis(100)), sharing.clone()).await;
        assert!(ms(&a) >= 50, "a {}", ms(&a));
        assert_eq!(ms(&a), ms(&b));
        // Gone from the instance, a call pays nothing more.
        drop(share_a);
        Busy::shared(spin(Duration::from_millis(40)), sharing.clone()).await;
        assert!(ms(&b) >= ms(&a) + 40, "a {} b {}", ms(&a), ms(&b));
        drop(share_b);
    }
}
