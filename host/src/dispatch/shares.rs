//! Each tenant's share of the call workers.
//!
//! A call's work (its guest's run, a native operation's handler, the
//! pipeline around them) runs on a few workers. Without a bound, one
//! tenant's many calls in flight fill every worker, and another tenant's
//! call waits behind all of them: its latency becomes the first tenant's
//! load. So each tenant's calls are polled on at most `per_tenant` workers
//! at once (by default one fewer than there are): however busy one tenant
//! keeps the host, a worker stays free for the others, and a tenant's
//! calls queue behind its own.
//!
//! A call holds its tenant's turn only while it is being polled, never
//! while it waits, so a call waiting on I/O, a timer or a nested call's
//! answer takes nothing from the tenant's other calls. A call polled
//! inside another of its tenant's polls runs on that turn; a guest's
//! nested calls, each on a task of its own, take turns like any other.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::Stream;

/// A poll that runs this long keeps its worker from everything queued
/// behind it for long enough to be felt.
const LONG_POLL: Duration = Duration::from_millis(2);

/// One poll in this many is timed. A poll is timed on its thread's CPU
/// clock, not the wall's: on a busy machine the kernel preempts a short
/// poll for a whole time slice, and by the wall it would look long. That
/// clock is a system call, not a vDSO read, so it is sampled; an
/// operation whose polls run long runs long at every call, and is caught
/// within a few.
const TIME_ONE_POLL_IN: u32 = 8;

/// How long a tenant counts as running long polls after its last one.
const LONG_FOR: Duration = Duration::from_secs(2);

thread_local! {
    /// The share whose turn the poll running on this thread holds.
    static HOLDING: Cell<*const Share> = const { Cell::new(std::ptr::null()) };
    /// Polls on this thread until the next one timed.
    static UNTIL_TIMED: Cell<u32> = const { Cell::new(0) };
}

/// This thread's CPU time so far, when the poll about to run is one of
/// those timed.
fn time_this_poll() -> Option<Duration> {
    let until = UNTIL_TIMED.get();
    if until > 0 {
        UNTIL_TIMED.set(until - 1);
        return None;
    }
    UNTIL_TIMED.set(TIME_ONE_POLL_IN - 1);
    Some(thread_cpu())
}

fn thread_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The shares of the tenants with calls in flight or long polls lately.
#[derive(Debug)]
pub(crate) struct Shares {
    per_tenant: usize,
    /// Kept between calls: a tenant whose polls ran long is known as such
    /// at its next call, though no call of its was in flight between.
    tenants: Mutex<HashMap<String, Arc<Share>>>,
}

/// One tenant's turns on the workers.
#[derive(Debug)]
pub(crate) struct Share {
    per_tenant: usize,
    state: Mutex<Turns>,
}

#[derive(Debug, Default)]
struct Turns {
    /// Calls of the tenant being polled now.
    polled: usize,
    /// Calls waiting for a turn, by their [`Place`], first come first
    /// served.
    waiting: VecDeque<(u64, Waker)>,
    /// When a poll of each of the tenant's operations last ran
    /// [`LONG_POLL`] or longer.
    ran_long: HashMap<Box<str>, Instant>,
}

impl Shares {
    /// Shares of at most `per_tenant` workers (one at least) per tenant.
    pub(crate) fn new(per_tenant: usize) -> Self {
        Self {
            per_tenant: per_tenant.max(1),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// `tenant`'s share.
    pub(crate) fn of(&self, tenant: &str) -> Arc<Share> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(share) = tenants.get(tenant) {
            return share.clone();
        }
        // Forget, now and then, the tenants with no call in flight whose
        // polls have not run long lately.
        if tenants.len() >= 64 && tenants.len().is_power_of_two() {
            tenants.retain(|_, share| Arc::strong_count(share) > 1 || share.any_runs_long());
        }
        let share = Arc::new(Share {
            per_tenant: self.per_tenant,
            state: Mutex::new(Turns::default()),
        });
        tenants.insert(tenant.to_owned(), share.clone());
        share
    }
}

impl Share {
    fn state(&self) -> MutexGuard<'_, Turns> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the tenant's calls of `operation` run long polls: one of
    /// them did in the last [`LONG_FOR`]. Told apart by operation, so that
    /// a tenant's short calls are not moved with its long ones.
    pub(crate) fn runs_long(&self, operation: &str) -> bool {
        self.state()
            .ran_long
            .get(operation)
            .is_some_and(|at| at.elapsed() < LONG_FOR)
    }

    /// Whether any of the tenant's operations runs long polls.
    fn any_runs_long(&self) -> bool {
        self.state()
            .ran_long
            .values()
            .any(|at| at.elapsed() < LONG_FOR)
    }

    /// Whether the poll running on this thread holds one of this share's
    /// turns: a call started there is nested in a call of the tenant.
    pub(crate) fn held_here(self: &Arc<Self>) -> bool {
        HOLDING.get() == Arc::as_ptr(self)
    }

    /// Takes a turn for the call at `place`, or queues `waker` for the
    /// next one.
    fn enter(&self, place: &mut Place, waker: &Waker) -> bool {
        let mut state = self.state();
        if state.polled < self.per_tenant {
            state.polled += 1;
            if std::mem::take(&mut place.queued) {
                state.waiting.retain(|(id, _)| *id != place.id);
            }
            return true;
        }
        match state.waiting.iter_mut().find(|(id, _)| *id == place.id) {
            Some((_, queued)) => queued.clone_from(waker),
            None => state.waiting.push_back((place.id, waker.clone())),
        }
        place.queued = true;
        false
    }

    /// Takes the call at `place` out of the queue, as it goes away. If it
    /// was woken for a turn it will never take, the next call is woken
    /// in its stead: a wake-up is never lost with a call that dropped.
    fn forget(&self, place: &Place) {
        if !place.queued {
            return;
        }
        let next = {
            let mut state = self.state();
            let before = state.waiting.len();
            state.waiting.retain(|(id, _)| *id != place.id);
            let woken = state.waiting.len() == before;
            if woken && state.polled < self.per_tenant {
                state.waiting.pop_front()
            } else {
                None
            }
        };
        if let Some((_, next)) = next {
            next.wake();
        }
    }

    /// Gives back a turn taken by a call of `operation` (when the poll was
    /// timed, at `cpu_at` on this thread's CPU clock), to the call that has
    /// waited longest.
    fn leave(&self, cpu_at: Option<Duration>, operation: &str) {
        let ran_long = cpu_at.is_some_and(|at| thread_cpu().saturating_sub(at) >= LONG_POLL);
        let next = {
            let mut state = self.state();
            state.polled -= 1;
            if ran_long {
                let now = Instant::now();
                let ran_long = &mut state.ran_long;
                match ran_long.get_mut(operation) {
                    Some(at) => *at = now,
                    None => {
                        // Now and then, forget what has not run long lately.
                        if ran_long.len() >= 64 && ran_long.len().is_power_of_two() {
                            ran_long.retain(|_, at| now.duration_since(*at) < LONG_FOR);
                        }
                        ran_long.insert(operation.into(), now);
                    }
                }
            }
            state.waiting.pop_front()
        };
        if let Some((_, next)) = next {
            next.wake();
        }
    }

    /// Polls `poll` on one of this share's turns: `None` when there is
    /// none free now (the task is woken when one is).
    fn turn<T>(
        self: &Arc<Self>,
        place: &mut Place,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> T,
    ) -> Option<T> {
        let me = Arc::as_ptr(self);
        if self.held_here() {
            // A nested call, polled within its caller's turn.
            return Some(poll(cx));
        }
        if !self.enter(place, cx.waker()) {
            return None;
        }
        let outer = HOLDING.replace(me);
        /// Gives the turn back however the poll ends, a panic included.
        struct Leave<'a>(&'a Share, *const Share, Option<Duration>, &'a str);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                HOLDING.set(self.1);
                self.0.leave(self.2, self.3);
            }
        }
        let _leave = Leave(self, outer, time_this_poll(), &place.operation);
        Some(poll(cx))
    }
}

/// Where one call stands in its tenant's queue.
#[derive(Debug)]
struct Place {
    /// Its own, among every call's.
    id: u64,
    /// Whether it queued for a turn and has not taken one since.
    queued: bool,
    /// The operation it calls.
    operation: Box<str>,
}

/// A call's future or stream, polled only on its tenant's turns.
pub(crate) struct OnShare<F> {
    inner: Pin<Box<F>>,
    share: Arc<Share>,
    place: Place,
}

impl<F> OnShare<F> {
    /// `inner`, a call of `operation`, on `share`'s turns.
    pub(crate) fn new(inner: F, share: Arc<Share>, operation: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            inner: Box::pin(inner),
            share,
            place: Place {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                queued: false,
                operation: operation.into(),
            },
        }
    }
}

impl<F> Drop for OnShare<F> {
    fn drop(&mut self) {
        self.share.forget(&self.place);
    }
}

impl<F: Future> Future for OnShare<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let inner = &mut this.inner;
        this.share
            .turn(&mut this.place, cx, |cx| inner.as_mut().poll(cx))
            .unwrap_or(Poll::Pending)
    }
}

impl<S: Stream> Stream for OnShare<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let inner = &mut this.inner;
        this.share
            .turn(&mut this.place, cx, |cx| inner.as_mut().poll_next(cx))
            .unwrap_or(Poll::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A future that, each time it is polled, notes how many polls of its
    /// tenant run at once, spins a little, and is ready after `polls`.
    async fn work(polls: usize, running: Arc<AtomicUsize>, most: Arc<AtomicUsize>) {
        for _ in 0..polls {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
            running.fetch_sub(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_tenant_is_polled_on_at_most_its_share_of_the_workers() {
        let shares = Shares::new(2);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let call = work(20, running.clone(), most.clone());
                tokio::spawn(OnShare::new(call, shares.of("busy"), "t/work"))
            })
            .collect();
        // Another tenant's call is not held back by them.
        let other = Arc::new(AtomicUsize::new(0));
        let other_most = Arc::new(AtomicUsize::new(0));
        tokio::spawn(OnShare::new(
            work(5, other.clone(), other_most.clone()),
            shares.of("quiet"),
            "t/work",
        ))
        .await
        .unwrap();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "never more than the share");
        assert_eq!(other_most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_nested_call_runs_on_its_callers_turn() {
        let shares = Shares::new(1);
        let share = shares.of("t");
        let inner = OnShare::new(async { 7 }, share.clone(), "t/inner");
        let outer = OnShare::new(async move { inner.await + 1 }, share, "t/outer");
        assert_eq!(outer.await, 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_dropped_while_it_waits_for_a_turn_wakes_the_next() {
        let shares = Shares::new(1);
        let share = shares.of("t");
        // One call holds the turn for a long poll, while two queue.
        let holder = tokio::spawn(OnShare::new(
            async { std::thread::sleep(Duration::from_millis(300)) },
            share.clone(),
            "t/hold",
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let dropped = tokio::spawn(OnShare::new(async {}, share.clone(), "t/drop"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = tokio::spawn(OnShare::new(async { 7 }, share.clone(), "t/wait"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!holder.is_finished(), "the holder still runs its poll");
        // The first in the queue goes away (its caller hung up) ...
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        // ... and the turn, once free, reaches the one left.
        holder.await.unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(answered.expect("woken").unwrap(), 7);
    }

    /// Calls of `operation`, one at a time, each a poll that spins past
    /// [`LONG_POLL`]: enough of them that one is timed.
    async fn run_long(share: &Arc<Share>, operation: &str) {
        for _ in 0..TIME_ONE_POLL_IN {
            let spin = async {
                let until = Instant::now() + LONG_POLL + Duration::from_millis(1);
                while Instant::now() < until {}
            };
            OnShare::new(spin, share.clone(), operation).await;
        }
    }

    #[tokio::test]
    async fn a_poll_that_waits_without_working_is_not_long() {
        let shares = Shares::new(1);
        let share = shares.of("t");
        for _ in 0..TIME_ONE_POLL_IN {
            // Off the CPU, as a poll preempted by the kernel is.
            let sleep = async { std::thread::sleep(LONG_POLL + Duration::from_millis(1)) };
            OnShare::new(sleep, share.clone(), "t/sleep").await;
        }
        assert!(!share.runs_long("t/sleep"));
    }

    #[tokio::test]
    async fn an_operation_whose_polls_run_long_is_told_apart() {
        let shares = Shares::new(1);
        let (busy, quiet) = (shares.of("busy"), shares.of("quiet"));
        run_long(&busy, "t/long").await;
        OnShare::new(async {}, busy.clone(), "t/short").await;
        OnShare::new(async {}, quiet.clone(), "t/long").await;
        assert!(busy.runs_long("t/long"));
        // Neither the tenant's other operations nor other tenants'.
        assert!(!busy.runs_long("t/short"));
        assert!(!quiet.runs_long("t/long"));
    }

    #[tokio::test]
    async fn a_tenant_is_known_to_run_long_between_its_calls() {
        let shares = Shares::new(1);
        // One call at a time, as a client calling in a loop makes them:
        // no call of the tenant is in flight between two.
        run_long(&shares.of("busy"), "t/long").await;
        assert!(shares.of("busy").runs_long("t/long"));
    }

    #[test]
    fn a_tenant_without_calls_is_forgotten() {
        let shares = Shares::new(1);
        for n in 0..200 {
            drop(shares.of(&format!("t{n}")));
        }
        let kept = shares.tenants.lock().unwrap().len();
        assert!(kept < 200, "{kept} tenants kept");
    }
}
