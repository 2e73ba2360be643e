//! Sharing the executor's workers between short calls and CPU-bound guests.
//!
//! Every guest yields to the executor at each epoch tick. A guest still
//! running after [`CPU_BOUND_AFTER`] ticks is CPU-bound, and from then on runs
//! only while it holds a lease on one of a few lanes (by default one fewer
//! than the machine has cores). However many guests spin, at least one worker
//! stays free for short calls and for the I/O that brings them in, so a
//! spinning neighbour costs an `echo` call little more than its own work.
//!
//! CPU-bound guests take turns: at each tick the guest gives its lease back
//! and queues for the next free lane behind the others (tokio's semaphore is
//! first come, first served). A guest that stops running while it holds a
//! lease (it waits in a host call, or its caller stopped reading) renews it
//! no more; the epoch thread revokes leases not renewed for two ticks, so a
//! waiting guest never keeps a lane from the ones that would run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

/// Ticks a guest may run before it counts as CPU-bound. Two, because the
/// first tick may arrive any time after the call started.
pub(crate) const CPU_BOUND_AFTER: u32 = 2;

/// The lanes CPU-bound guests share, and the leases handed out on them.
#[derive(Debug)]
pub(crate) struct CpuLanes {
    lanes: Arc<Semaphore>,
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
    held: Mutex<Option<(OwnedSemaphorePermit, u64)>>,
}

impl Lease {
    fn held(&self) -> MutexGuard<'_, Option<(OwnedSemaphorePermit, u64)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CpuLanes {
    pub(crate) fn new(lanes: usize) -> Self {
        Self {
            lanes: Arc::new(Semaphore::new(lanes.max(1))),
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
                // The semaphore is never closed.
                if let Ok(permit) = lanes.lanes.clone().acquire_owned().await {
                    *lease.held() = Some((permit, lanes.now.load(Ordering::Relaxed)));
                }
            }),
        )
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
