//! WASIp3 instances that serve many requests, several at once, when the
//! operator allows it (`[plugins.reuse]`): `wasi:http/handler@0.3`'s
//! `handle` is async, so one instance can take a request while others are
//! still being answered, as `wasmtime serve` runs WASIp3 components.
//!
//! Never across tenants: each tenant's requests go to instances of its
//! own. An instance takes up to `max_concurrent` requests at once,
//! `max_calls` in all, for `max_age_ms`; it stops taking them once its
//! memory has passed `max_memory_bytes`, once a request on it ran past its
//! deadline or lost its caller (the guest's task for it may still run:
//! WASIp3 has no way yet to cancel one), or once the plugin is replaced or
//! removed. It ends when the requests it holds are done. An instance that
//! falls idle while its tenant has more than `max_idle` ends at once.
//!
//! The requests on one instance share its fate and its limits: a trap,
//! or `memory_bytes` or the CPU budget running out, fails every request in
//! flight on it, all of one tenant. The CPU budget is refilled each time a
//! request starts, and the instance's guest CPU and fuel are split evenly
//! among the requests in flight ([`Sharing`]); its log lines and host
//! calls are counted to the request that started last. Since a host import
//! cannot tell which request's task called it, no import acts for a
//! request's caller: `opbox:plugin/invoke` answers `UNAVAILABLE`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use wasmtime::Store;
use wasmtime::component::Accessor;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p3::Response;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::bindings::{Service, ServiceIndices};

use super::p3::{Handover, WasiResponse, incoming};
use super::{HttpRequestBody, HttpResponse, guest_refused};
use crate::runtime::busy::{Busy, Sharing};
use crate::runtime::invoke::{Invocation, InvokeError};
use crate::runtime::limits::LimitHit;
use crate::runtime::plugin::Plugin;
use crate::runtime::reuse::ReuseConfig;
use crate::runtime::state::StoreState;
use crate::runtime::trap::classify;

/// The shared instances of one WASIp3 component, by tenant.
pub(crate) struct Shared {
    config: ReuseConfig,
    tenants: Mutex<HashMap<String, Vec<Arc<Instance>>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One shared instance, as requests reach it; its run holds the store.
struct Instance {
    jobs: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    born: Instant,
    taken: AtomicU32,
}

/// One request, handed to an instance.
struct Job {
    request: http::Request<HttpRequestBody>,
    invocation: Invocation,
    head: oneshot::Sender<Result<WasiResponse, InvokeError>>,
    /// Resolves when the response body has ended or been dropped.
    done: oneshot::Receiver<()>,
    ended: oneshot::Sender<Result<(), InvokeError>>,
    /// Its place among the instance's `max_concurrent`, once placed.
    room: Option<OwnedSemaphorePermit>,
}

/// Whether an instance may take more requests after one is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Stay,
    Go,
}

/// How a request's `handle` ended.
enum Answered {
    Handled(wasmtime::Result<Result<Response, ErrorCode>>),
    /// Its deadline passed first.
    Late,
    /// Its caller left first.
    Left,
}

impl Shared {
    pub(crate) fn new(config: ReuseConfig) -> Self {
        Self {
            config,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn tenants(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<Instance>>>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `instance` off `tenant`'s list: it gets no more requests, and
    /// its run, whose jobs end once the list's handle is gone, ends once
    /// those it holds are done.
    fn leave(&self, tenant: &str, instance: &Weak<Instance>) {
        if let Some(instances) = self.tenants().get_mut(tenant) {
            instances.retain(|one| !std::ptr::eq(Arc::as_ptr(one), instance.as_ptr()));
        }
    }

    /// How many instances `tenant` has.
    fn count(&self, tenant: &str) -> usize {
        self.tenants().get(tenant).map_or(0, Vec::len)
    }

    /// Hands `job` to an instance of the tenant's with room, or to a new
    /// one.
    fn place(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        indices: &ServiceIndices,
        invocation: &Invocation,
        mut job: Job,
    ) -> Result<(), InvokeError> {
        let max_age = Duration::from_millis(self.config.max_age_ms);
        loop {
            let mut tenants = self.tenants();
            let instances = tenants.entry(invocation.tenant.clone()).or_default();
            instances.retain(|one| one.born.elapsed() < max_age);
            let found = instances.iter().find_map(|one| {
                let room = one.room.clone().try_acquire_owned().ok()?;
                Some((one.clone(), room))
            });
            let Some((instance, room)) = found else {
                return self.start(tenants, plugin, indices, invocation, job);
            };
            let taken = instance.taken.fetch_add(1, Ordering::Relaxed) + 1;
            if taken >= self.config.max_calls {
                instances.retain(|one| !Arc::ptr_eq(one, &instance));
            }
            drop(tenants);
            job.room = Some(room);
            // Its run takes every job sent before it left the list and
            // closed its receiver; one that ended in between hands it back.
            match instance.jobs.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => job = back,
            }
        }
    }

    /// Starts a new instance of the tenant's with `job`, listed (under
    /// the `tenants` lock still held) unless it may take only one.
    fn start(
        self: &Arc<Self>,
        mut tenants: MutexGuard<'_, HashMap<String, Vec<Arc<Instance>>>>,
        plugin: &Arc<Plugin>,
        indices: &ServiceIndices,
        invocation: &Invocation,
        mut job: Job,
    ) -> Result<(), InvokeError> {
        let store = plugin.new_store(invocation, plugin.request_budget(invocation))?;
        let room = Arc::new(Semaphore::new(self.config.max_concurrent.max(1) as usize));
        job.room = room.clone().try_acquire_owned().ok();
        let (jobs, received) = mpsc::unbounded_channel();
        let instance = Arc::new(Instance {
            jobs,
            room,
            born: Instant::now(),
            taken: AtomicU32::new(1),
        });
        if self.config.max_calls > 1 {
            tenants
                .entry(invocation.tenant.clone())
                .or_default()
                .push(instance.clone());
        }
        drop(tenants);
        let sharing = Arc::new(Sharing::default());
        let run = Run {
            shared: self.clone(),
            plugin: plugin.clone(),
            tenant: invocation.tenant.clone(),
            born: instance.born,
            instance: Arc::downgrade(&instance),
            sharing: sharing.clone(),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        };
        let run = run.run(store, indices.clone(), job, received);
        tokio::spawn(Busy::shared(run, sharing));
        Ok(())
    }

    /// Serves `request` on an instance of the tenant's with room, or on a
    /// new one.
    pub(super) async fn serve(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        indices: &ServiceIndices,
        invocation: &Invocation,
        request: http::Request<HttpRequestBody>,
    ) -> Result<HttpResponse, InvokeError> {
        let (head_tx, head_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel();
        let job = Job {
            request,
            invocation: invocation.clone(),
            head: head_tx,
            done: done_rx,
            ended: ended_tx,
            room: None,
        };
        self.place(plugin, indices, invocation, job)?;
        let run = Handover {
            head: head_rx,
            ended: ended_rx,
            done: done_tx,
        };
        run.response(plugin.limits.output_bytes, None).await
    }
}

/// The run of one shared instance: it owns the store, and serves the jobs
/// sent to it until it has left its tenant's list and holds none.
struct Run {
    shared: Arc<Shared>,
    plugin: Arc<Plugin>,
    tenant: String,
    born: Instant,
    /// Not held here: once off its tenant's list, the instance's handle,
    /// and with it the sender of its jobs, is gone.
    instance: Weak<Instance>,
    sharing: Arc<Sharing>,
    /// The `ended` senders of the jobs in flight, by job: told when the
    /// instance fails.
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<(), InvokeError>>>>,
    next: AtomicU64,
}

impl Run {
    async fn run(
        self,
        mut store: Store<StoreState>,
        indices: ServiceIndices,
        first: Job,
        mut jobs: mpsc::UnboundedReceiver<Job>,
    ) {
        // Making the instance is the first request's.
        let first_share = self.sharing.join(first.invocation.meter.clone());
        let served = async {
            let instance = self.plugin.instantiate_instance(&mut store).await?;
            let service = indices
                .load(&mut store, &instance)
                .map_err(|e| classify(&mut store, e))?;
            drop(first_share);
            let ran = store
                .run_concurrent(async |accessor| -> wasmtime::Result<()> {
                    let mut running = FuturesUnordered::new();
                    running.push(self.one(accessor, &service, first));
                    let mut open = true;
                    let ending = self.plugin.ending();
                    tokio::pin!(ending);
                    let max_age = Duration::from_millis(self.shared.config.max_age_ms);
                    let age = tokio::time::sleep_until(self.born + max_age);
                    tokio::pin!(age);
                    loop {
                        tokio::select! {
                            job = jobs.recv(), if open => match job {
                                Some(job) => running.push(self.one(accessor, &service, job)),
                                None => open = false,
                            },
                            Some(done) = running.next() => {
                                if done? == Leave::Go || self.spent(accessor) {
                                    self.leave();
                                }
                            }
                            () = &mut age => self.leave(),
                            () = &mut ending => self.leave(),
                        }
                        if running.is_empty() {
                            if !open {
                                return Ok(());
                            }
                            if self.shared.count(&self.tenant) > self.shared.config.max_idle {
                                self.leave();
                            }
                        }
                    }
                })
                .await;
            ran.and_then(|served| served)
                .map_err(|e| classify(&mut store, e))
        };
        let outcome: Result<(), InvokeError> = served.await;
        self.leave();
        // Jobs still here, in flight or never started, end with the
        // instance's failure.
        let failure = outcome
            .err()
            .unwrap_or_else(|| InvokeError::Host("the shared instance ended".into()));
        let pending = std::mem::take(&mut *lock(&self.pending));
        for ended in pending.into_values() {
            let _ = ended.send(Err(failure.clone()));
        }
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            let _ = job.ended.send(Err(failure.clone()));
        }
        drop(store);
    }

    /// Takes the instance off its tenant's list.
    fn leave(&self) {
        self.shared.leave(&self.tenant, &self.instance);
    }

    /// Whether the instance has served its share: its memory is past
    /// `max_memory_bytes`. What the request printed is logged.
    fn spent(&self, accessor: &Accessor<StoreState>) -> bool {
        let memory = accessor.with(|mut access| {
            let state = access.get();
            state.finish_call();
            state.memory()
        });
        memory > self.shared.config.max_memory_bytes
    }

    /// Serves one job on the instance: the request's own deadline bounds
    /// it, body included. A trap is the instance's, and fails it.
    async fn one(
        &self,
        accessor: &Accessor<StoreState>,
        service: &Service,
        job: Job,
    ) -> wasmtime::Result<Leave> {
        let Job {
            request,
            invocation,
            mut head,
            done,
            ended,
            room: _room,
        } = job;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(id, ended);
        let _share = self.sharing.join(invocation.meter.clone());
        let deadline = Instant::now() + invocation.deadline;
        let budget = self.plugin.request_budget(&invocation);
        // Host imports cannot tell which request's task calls them, and
        // the requests on one instance may come from callers of different
        // scopes: none of them may act for its caller (a nested call
        // answers `UNAVAILABLE`).
        let bound = Invocation {
            caller_id: None,
            scopes: Vec::new(),
            nested: None,
            ..invocation.clone()
        };
        let (request, io) = accessor.with(|mut access| {
            let state = access.get();
            state.rebind(&self.plugin, &bound, budget);
            incoming(state.http().hooks, request)
        });
        let timed_out = || {
            Err(InvokeError::Limit(LimitHit::time(
                "deadline_ms",
                invocation.deadline,
            )))
        };
        let answered = tokio::select! {
            answered = tokio::time::timeout_at(deadline, service.handle(accessor, request)) => {
                answered.map_or(Answered::Late, Answered::Handled)
            }
            () = head.closed() => Answered::Left,
        };
        let (leave, outcome) = match answered {
            // The guest's task for it may still run: the instance takes no
            // more requests.
            Answered::Late => (Leave::Go, timed_out()),
            Answered::Left => (Leave::Go, Ok(())),
            Answered::Handled(Err(trap)) => return Err(trap),
            Answered::Handled(Ok(Err(code))) => {
                let _ = head.send(Err(guest_refused(code)));
                (Leave::Stay, Ok(()))
            }
            Answered::Handled(Ok(Ok(response))) => {
                let response = accessor.with(|mut access| response.into_http(&mut access, io))?;
                if head.send(Ok(response)).is_err() {
                    (Leave::Go, Ok(()))
                } else if tokio::time::timeout_at(deadline, done).await.is_err() {
                    (Leave::Go, timed_out())
                } else {
                    (Leave::Stay, Ok(()))
                }
            }
        };
        if let Some(ended) = lock(&self.pending).remove(&id) {
            let _ = ended.send(outcome);
        }
        Ok(leave)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
