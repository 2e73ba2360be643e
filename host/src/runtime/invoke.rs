//! Running one call of a plugin in a fresh store (or, where the operator
//! allows it, in an idle instance of the same tenant: see `reuse`).
//!
//! Every call gets a `Store` and instance of its own, and owns them: dropping the
//! future of [`Plugin::call`] or the [`Subscription`] stream drops the store,
//! which interrupts the guest wherever it is. A guest spinning in its own code
//! yields to the executor at every epoch tick, so dropping takes effect within
//! a tick, and the CPU budget of the call is counted in those ticks.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{PoolConcurrencyLimitError, Store, UpdateDeadline};

use super::busy::Busy;
use super::limits::LimitHit;
use super::plugin::Plugin;
use super::reuse::{Idle, Uses};
use super::state::{CpuBudget, StoreState};
use super::trap::classify;
use crate::call::Meter;
use crate::capabilities::bindings::{self, CallContext};
use crate::capabilities::invoke::{GuestError, NestedCalls};
use crate::telemetry::trace::CallSpan;

/// Who a call is for and how long it may take.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Unique per call.
    pub request_id: Arc<str>,
    /// The tenant the call runs for.
    pub tenant: String,
    /// The authenticated caller, if any.
    pub caller_id: Option<String>,
    /// The caller's scopes.
    pub scopes: Vec<String>,
    /// Time left for the call; also its CPU budget.
    pub deadline: Duration,
    /// Who carries out the calls the guest makes to other operations; the
    /// guest's `invoke.call` answers `UNAVAILABLE` without one.
    pub nested: Option<Arc<dyn NestedCalls>>,
    /// What the call spends: its instance's own poll time (other calls'
    /// excluded) as guest CPU, its fuel, its memory, its host calls.
    pub meter: Arc<Meter>,
    /// The call's span: the guest's log lines are its events.
    pub span: CallSpan,
}

impl Invocation {
    /// An invocation by the host itself, e.g. `describe` at load.
    pub(crate) fn internal(request_id: &str, deadline: Duration) -> Self {
        Self {
            request_id: Arc::from(request_id),
            tenant: String::new(),
            caller_id: None,
            scopes: Vec::new(),
            deadline,
            nested: None,
            meter: Arc::default(),
            span: CallSpan::default(),
        }
    }

    pub(super) fn to_wit(&self) -> CallContext {
        CallContext {
            request_id: self.request_id.to_string(),
            tenant: self.tenant.clone(),
            caller_id: self.caller_id.clone(),
            scopes: self.scopes.clone(),
            deadline_ms: u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A domain error the guest returned, held to `output_bytes` like any
/// output: its code, message and details together. Checked before the
/// details are parsed, so an oversized error costs no more than its bytes.
pub(super) fn guest_failure(e: bindings::CallError, output_bytes: usize) -> InvokeError {
    let size = e.code.len() + e.message.len() + e.details.as_ref().map_or(0, String::len);
    if size > output_bytes {
        return InvokeError::Limit(LimitHit::new("output_bytes", output_bytes));
    }
    InvokeError::Guest(e.into())
}

/// Why a call of a plugin failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The guest returned a domain error.
    #[error("{}: {}", .0.code, .0.message)]
    Guest(GuestError),
    /// The guest trapped.
    #[error("the plugin trapped ({kind})")]
    Trap {
        /// What kind of trap, in snake case (`unreachable`, `stack_overflow`, …).
        kind: String,
        /// The guest's last words: its panic message, when it gave one.
        message: Option<String>,
        /// The tail of what the guest wrote to stderr (at most 4 KiB of
        /// whole lines), when it wrote anything.
        stderr: Option<String>,
    },
    /// A limit of the plugin ended the call; the guest was interrupted.
    #[error("the plugin hit its limit {} = {}", .0.limit, .0.value)]
    Limit(LimitHit),
    /// No instance slot was free in the host.
    #[error("no instance slot is free")]
    NoCapacity,
    /// Something failed in the host; the message is for logs only.
    #[error("host failure: {0}")]
    Host(String),
}

/// Adds the fuel `store` used to `meter`, when the host counts fuel.
pub(super) fn meter_fuel(store: &Store<StoreState>, meter: &Meter) {
    if let (Some(start), Ok(left)) = (store.data().fuel_start, store.get_fuel()) {
        meter.add_fuel(start.saturating_sub(left));
    }
}

/// `duration` in whole epoch ticks, at least one.
pub(super) fn ticks(duration: Duration, tick: Duration) -> u64 {
    let tick = tick.max(Duration::from_millis(1)).as_micros();
    u64::try_from(duration.as_micros() / tick)
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Plugin {
    /// The CPU budget of `limit`, in this runtime's ticks.
    pub(super) fn budget(&self, limit: &'static str, duration: Duration) -> CpuBudget {
        CpuBudget {
            ticks: ticks(duration, self.runtime.inner.config.epoch_tick),
            limit: LimitHit::time(limit, duration),
            host_charged: Duration::ZERO,
        }
    }

    /// A fresh store for one call, holding one of the plugin's instance slots
    /// until it is dropped.
    pub(crate) fn new_store(
        &self,
        invocation: &Invocation,
        cpu: CpuBudget,
    ) -> Result<Store<StoreState>, InvokeError> {
        let slot = self
            .occupancy
            .instance(&invocation.tenant)
            .map_err(InvokeError::Limit)?;
        let runtime = &self.runtime.inner;
        let fuel = self.limits.fuel.filter(|_| runtime.config.fuel);
        let state = StoreState::new(self, invocation, cpu, fuel, runtime.live.enter(), slot);
        let mut store = Store::new(&runtime.engine, state);
        if runtime.config.fuel {
            let start = fuel.unwrap_or(u64::MAX);
            store
                .set_fuel(start)
                .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
            store.data_mut().fuel_start = Some(start);
        }
        if !runtime.config.enforce_limits {
            return Ok(store);
        }
        store.limiter(|state| &mut state.limiter);
        // Count every tick against the budget, and yield to the executor at
        // each, so that a spinning guest never holds a worker thread: once
        // CPU-bound, it runs only in its turns on the CPU lanes.
        store.set_epoch_deadline(1);
        let lanes = runtime.lanes.clone();
        let tick = runtime.config.epoch_tick;
        store.epoch_deadline_callback(move |mut cx| {
            let state = cx.data_mut();
            // What the host ran for the guest's nested native calls counts
            // against its budget as if the guest had run it.
            let host_spent = state.nested_host_cpu();
            state.cpu.charge_host(host_spent, tick);
            if state.cpu.ticks == 0 {
                state.limiter.hit = Some(state.cpu.limit);
                return Ok(UpdateDeadline::Interrupt);
            }
            state.cpu.ticks -= 1;
            Ok(lanes.next_turn(&mut state.turns))
        });
        Ok(store)
    }

    pub(super) async fn instantiate(
        &self,
        store: &mut Store<StoreState>,
    ) -> Result<bindings::Plugin, InvokeError> {
        let instance = self.instantiate_instance(store).await?;
        let handler = self
            .handler()
            .ok_or_else(|| InvokeError::Host("the component has no operations".into()))?;
        handler
            .load(&mut *store, &instance)
            .map_err(|e| instantiate_failed(store, e))
    }

    /// A fresh instance, untyped: for the exports `bindings::Plugin` does
    /// not cover (`raw`).
    pub(super) async fn instantiate_instance(
        &self,
        store: &mut Store<StoreState>,
    ) -> Result<wasmtime::component::Instance, InvokeError> {
        self.pre
            .instantiate_async(&mut *store)
            .await
            .map_err(|e| instantiate_failed(store, e))
    }

    /// Runs a query or mutation: JSON text in, JSON text out.
    pub async fn call(
        &self,
        invocation: &Invocation,
        op: &str,
        input: String,
    ) -> Result<String, InvokeError> {
        let cpu_limit = Duration::from_millis(self.limits.cpu_ms);
        let cpu = if invocation.deadline <= cpu_limit {
            self.budget("deadline_ms", invocation.deadline)
        } else {
            self.budget("cpu_ms", cpu_limit)
        };
        let reused = self
            .reuse
            .as_ref()
            .and_then(|reuse| reuse.take(&invocation.tenant));
        let (mut store, ready, uses) = match reused {
            Some(Idle {
                mut store,
                instance,
                uses,
            }) => {
                self.prepare_reused(&mut store, invocation, cpu)?;
                (store, Some(instance), uses)
            }
            None => (self.new_store(invocation, cpu)?, None, Uses::new()),
        };
        let ctx = invocation.to_wit();
        let op = op.to_owned();
        let run = async {
            let instance = match ready {
                Some(instance) => instance,
                None => self.instantiate_or_evict(&mut store).await?,
            };
            let result = store
                .run_concurrent(async |accessor| {
                    instance
                        .opbox_plugin_handler()
                        .call_call(accessor, ctx, op, input)
                        .await
                })
                .await
                .and_then(|r| r);
            Ok::<_, InvokeError>((instance, result))
        };
        let result = Busy::new(run, invocation.meter.clone()).await;
        meter_fuel(&store, &invocation.meter);
        let (instance, result) = result?;
        let result = match result {
            Ok(result) => result,
            Err(e) => return Err(classify(&mut store, e)),
        };
        // The guest returned: its instance may serve the tenant's next call.
        if let Some(reuse) = &self.reuse {
            store.data_mut().finish_call();
            let memory = store.data().memory();
            let idle = Idle {
                store,
                instance,
                uses,
            };
            reuse.put(&invocation.tenant, idle, memory);
        }
        match result {
            Ok(output) if output.len() > self.limits.output_bytes => Err(InvokeError::Limit(
                LimitHit::new("output_bytes", self.limits.output_bytes),
            )),
            Ok(output) => Ok(output),
            Err(e) => Err(guest_failure(e, self.limits.output_bytes)),
        }
    }

    /// Makes an idle instance's store ready for `invocation`: its state,
    /// fuel and epoch deadline start afresh, its memory does not.
    fn prepare_reused(
        &self,
        store: &mut Store<StoreState>,
        invocation: &Invocation,
        cpu: CpuBudget,
    ) -> Result<(), InvokeError> {
        store.data_mut().rebind(self, invocation, cpu);
        if let Some(start) = store.data().fuel_start {
            store
                .set_fuel(start)
                .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
        }
        if self.runtime.inner.config.enforce_limits {
            store.set_epoch_deadline(1);
        }
        Ok(())
    }

    /// Instantiates in `store`; when the host's instance slots are all
    /// taken, idle instances of this plugin give theirs back first.
    async fn instantiate_or_evict(
        &self,
        store: &mut Store<StoreState>,
    ) -> Result<bindings::Plugin, InvokeError> {
        let first = self.instantiate(store).await;
        match (&first, &self.reuse) {
            (Err(InvokeError::NoCapacity), Some(reuse)) => {
                reuse.clear();
                self.instantiate(store).await
            }
            _ => first,
        }
    }
}

/// Why an instance could not be made: no room in the pool, or a trap in
/// its start-up.
fn instantiate_failed(store: &mut Store<StoreState>, e: wasmtime::Error) -> InvokeError {
    if e.is::<PoolConcurrencyLimitError>() {
        InvokeError::NoCapacity
    } else {
        classify(store, e)
    }
}
