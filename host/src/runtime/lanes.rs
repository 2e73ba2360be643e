//! Sharing the executor's workers between short calls and CPU-bound guests.
//!
//! Every guest yields to the executor at each epoch tick. A guest still
//! running after [`CPU_BOUND_AFTER`] ticks is CPU-bound, and from then on runs
//! only while it holds a lease on one of a few lanes (by default one fewer
//! than the machine has cores). However many guests spin, at least one worker
//! stays free for short calls and for the I/O that brings them in, so a
//! spinning neighbour costs an `echo` call little more than its own work.
//!
//! CPU-bound guests take turns: at each tick the guest gives its lease back,
//! yields, and tries for a lane again; every guest waiting for one is woken
//! when one is given back, and the first of them polled takes it. A lane is
//! never set aside for a waiting guest: a store is polled only through its
//! call (a byte-stream call's, only while its caller takes its output), so
//! a lane handed to a guest that is not polled could stay with it while the
//! guest that would unblock it waits for that very lane. A guest that
//! stops running while it holds a lease (it waits in a host call, or its
//! caller stopped reading) renews it no more; the epoch thread revokes
//! leases not renewed for two ticks, so a waiting guest never keeps a lane
//! from the ones that would run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

/// Ticks a guest may run before it counts as CPU-bound. Two, because the
/// first tick may arrive any time after the call started.
pub(crate) const CPU_BOUND_AFTER: u32 = 2;

/// The lanes CPU-bound guests share, and the leases handed out on them.
#[derive(Debug)]
pub(crate) struct CpuLanes {
    lanes: Arc<Semaphore>,
    /// Told whenever a lane is given back.
    freed: Arc<Notify>,
    leases: Mutex<Vec<Weak<Lease>>>,
    /// Epoch ticks so far, counted by the epoch thread.
    now: AtomicU64,
}

/// How long one store has run, and its lease once it is CPU-bound.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    ticks: u32,
    lease: Option<Arc<Lease>>,
}

/// A CPU-bound guest's right to run on a lane, with the tick it was granted.
#[derive(Debug, Default)]
pub(crate) struct Lease {
    held: Mutex<Option<(Lane, u64)>>,
}

impl Lease {
    fn held(&self) -> MutexGuard<'_, Option<(Lane, u64)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One lane, taken: given back, and the waiting guests told, when dropped.
#[derive(Debug)]
struct Lane {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

impl CpuLanes {
    pub(crate) fn new(lanes: usize) -> Self {
        Self {
            lanes: Arc::new(Semaphore::new(lanes.max(1))),
            freed: Arc::new(Notify::new()),
            leases: Mutex::new(Vec::new()),
            now: AtomicU64::new(0),
        }
    }

    /// How a guest that reached the end of a tick goes on: it yields to the
    /// executor and, once CPU-bound, waits for its next turn on a lane.
    pub(crate) fn next_turn(self: &Arc<Self>, turns: &mut Turns) -> UpdateDeadline {
        turns.ticks = turns.ticks.saturating_add(1);
        if turns.ticks < CPU_BOUND_AFTER {
            return UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()));
        }
        let lease = turns.lease.get_or_insert_with(|| self.register()).clone();
        lease.held().take();
        let lanes = self.clone();
        UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::task::yield_now().await;
                let lane = lanes.take().await;
                *lease.held() = Some((lane, lanes.now.load(Ordering::Relaxed)));
            }),
        )
    }

    /// A lane, for the guest polled when one is free.
    async fn take(&self) -> Lane {
        loop {
            // Listening before trying: a lane given back in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Ok(permit) = self.lanes.clone().try_acquire_owned() {
                return Lane {
                    permit: Some(permit),
                    freed: self.freed.clone(),
                };
            }
            freed.await;
        }
    }

    fn register(&self) -> Arc<Lease> {
        let lease = Arc::new(Lease::default());
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&lease));
        lease
    }

    /// Called by the epoch thread at every tick: revokes the leases of
    /// guests that stopped running, forgets those of finished calls.
    pub(crate) fn tick(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|lease| {
                let Some(lease) = lease.upgrade() else {
                    return false;
                };
                let mut held = lease.held();
                if held.as_ref().is_some_and(|(_, granted)| granted + 2 <= now) {
                    *held = None;
                }
                true
            });
    }

    /// Lanes free right now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.lanes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn finish(update: UpdateDeadline) {
        match update {
            UpdateDeadline::YieldCustom(1, future) => future.await,
            _ => panic!("expected a yield of one tick"),
        }
    }

    #[tokio::test]
    async fn guests_become_cpu_bound_after_two_ticks_and_share_the_lanes() {
        let lanes = Arc::new(CpuLanes::new(1));
        let (mut a, mut b) = (Turns::default(), Turns::default());
        finish(lanes.next_turn(&mut a)).await;
        assert!(a.lease.is_none(), "one tick in, a guest is not CPU-bound");
        finish(lanes.next_turn(&mut a)).await;
        assert_eq!(lanes.free(), 0, "a holds the only lane");
        finish(lanes.next_turn(&mut b)).await;
        let b_waits = lanes.next_turn(&mut b);
        let UpdateDeadline::YieldCustom(_, b_waits) = b_waits else {
            panic!("b yields")
        };
        let b_waits = tokio::spawn(b_waits);
        tokio::task::yield_now().await;
        assert!(!b_waits.is_finished(), "b waits while a holds the lane");
        // a's next tick gives the lane back; b gets it before a again.
        let a_waits = lanes.next_turn(&mut a);
        b_waits.await.expect("b's turn");
        assert_eq!(lanes.free(), 0, "b holds the lane");
        let UpdateDeadline::YieldCustom(_, a_waits) = a_waits else {
            panic!("a yields")
        };
        let a_waits = tokio::spawn(a_waits);
        tokio::task::yield_now().await;
        assert!(!a_waits.is_finished(), "a waits for b's turn to end");
        drop(b);
        // b's call ended: its lease, and so the lane, are gone with it.
        a_waits.await.expect("a's turn");
    }

    /// The future a guest's tick returns: yielding, then waiting for a lane.
    fn waits(update: UpdateDeadline) -> futures::future::BoxFuture<'static, ()> {
        match update {
            UpdateDeadline::YieldCustom(1, future) => future,
            _ => panic!("expected a yield of one tick"),
        }
    }

    #[tokio::test]
    async fn a_lane_given_back_goes_to_a_guest_that_is_polled() {
        let lanes = Arc::new(CpuLanes::new(1));
        let (mut a, mut b, mut c) = (Turns::default(), Turns::default(), Turns::default());
        for turns in [&mut a, &mut b, &mut c] {
            turns.ticks = CPU_BOUND_AFTER;
        }
        finish(lanes.next_turn(&mut a)).await;
        assert_eq!(lanes.free(), 0, "a holds the only lane");
        // b waits for a lane, then is not polled again: its store is polled
        // only through its call, whose caller is not reading.
        let mut b_waits = waits(lanes.next_turn(&mut b));
        for _ in 0..2 {
            assert!(futures::poll!(&mut b_waits).is_pending());
        }
        // a stops running and loses its lease; c is polled and takes the lane.
        lanes.tick();
        lanes.tick();
        let c_waits = waits(lanes.next_turn(&mut c));
        tokio::time::timeout(std::time::Duration::from_secs(5), c_waits)
            .await
            .expect("c takes the lane nobody holds");
        assert_eq!(lanes.free(), 0, "c holds the lane");
        drop(b_waits);
    }

    #[tokio::test]
    async fn a_lease_not_renewed_for_two_ticks_is_revoked() {
        let lanes = Arc::new(CpuLanes::new(1));
        let mut a = Turns::default();
        finish(lanes.next_turn(&mut a)).await;
        finish(lanes.next_turn(&mut a)).await;
        assert_eq!(lanes.free(), 0);
        lanes.tick();
        assert_eq!(lanes.free(), 0, "one tick without renewal is allowed");
        lanes.tick();
        assert_eq!(
            lanes.free(),
            1,
            "a guest that stopped running loses its lane"
        );
        assert!(a.lease.is_some());
    }
}
