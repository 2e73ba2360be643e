//! What a store holds for one call: WASI state, limits, the CPU budget, and
//! what the guest said before it trapped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use super::invoke::Invocation;
use super::lanes::Turns;
use super::limits::{Dropped, LimitHit, PluginLimits};
use super::output::CapturedOutput;
use super::plugin::Plugin;
use crate::call::Meter;
use crate::capabilities::{self, Call, CallState, files, http};

/// Counts live instances: one per store, from creation to drop.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveCounter(Arc<AtomicUsize>);

impl LiveCounter {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn enter(&self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        LiveGuard(self.0.clone())
    }
}

/// Decrements the live count when the store it lives in is dropped.
#[derive(Debug)]
pub(crate) struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Enforces the per-call memory and table limits and remembers which limit
/// the guest ran into, so the failure can name it. A failed grow traps (rather
/// than returning -1) so a Rust guest fails with a readable error instead of
/// an `unreachable` abort.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: usize,
    table_elements: u32,
    /// The fuel the call started with, when fuel is limited.
    pub(crate) fuel: Option<u64>,
    pub(crate) hit: Option<LimitHit>,
    /// Linear memory the instance holds, all its memories together.
    memory: usize,
    /// Where the call's peak memory is told.
    meter: Arc<Meter>,
}

impl Limiter {
    /// A reused instance's limiter for its next call: its memory so far is
    /// where the call's peak starts.
    fn rebind(&mut self, meter: Arc<Meter>) {
        self.hit = None;
        meter.memory(self.memory);
        self.meter = meter;
    }

    pub(crate) fn new(limits: &PluginLimits, fuel: Option<u64>, meter: Arc<Meter>) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            fuel,
            hit: None,
            memory: 0,
            meter,
        }
    }
}

/// The guest execution a store may still use, in epoch ticks, and the limit
/// to name when it runs out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuBudget {
    pub(crate) ticks: u64,
    pub(crate) limit: LimitHit,
    /// Host CPU of the call's nested native operations taken out of
    /// `ticks` so far.
    pub(crate) host_charged: Duration,
}

impl CpuBudget {
    /// Takes out of the budget, in whole ticks of `tick`, what of
    /// `host_spent` (the nested native operations' CPU so far) it has not
    /// taken yet.
    pub(crate) fn charge_host(&mut self, host_spent: Duration, tick: Duration) {
        let tick = tick.max(Duration::from_millis(1));
        let owed = host_spent.saturating_sub(self.host_charged);
        let ticks = u64::try_from(owed.as_nanos() / tick.as_nanos()).unwrap_or(u64::MAX);
        self.ticks = self.ticks.saturating_sub(ticks);
        self.host_charged += tick.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX));
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = Some(LimitHit::new("memory_bytes", self.memory_bytes));
            wasmtime::bail!("memory limit of {} bytes reached", self.memory_bytes);
        }
        // Memories only grow (a new one grows from nothing): the sum is the
        // peak so far.
        self.memory = self.memory.saturating_add(desired.saturating_sub(current));
        self.meter.memory(self.memory);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if u32::try_from(desired).map_or(true, |desired| desired > self.table_elements) {
            self.hit = Some(LimitHit::new("table_elements", self.table_elements));
            wasmtime::bail!("table limit of {} elements reached", self.table_elements);
        }
        Ok(true)
    }
}

/// Resources (buckets, HTTP requests and bodies, streams, …) one call may
/// hold at once. wasmtime's default, a million, would let one call keep
/// hundreds of MiB of host memory.
const MAX_RESOURCES: usize = 10_000;

/// The data of one store (one call).
pub(crate) struct StoreState {
    /// What the call may use beyond computing.
    pub(crate) capabilities: CallState,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    /// Guest execution left before the call is interrupted.
    pub(crate) cpu: CpuBudget,
    /// How long this store has run, for sharing workers fairly.
    pub(crate) turns: Turns,
    /// The fuel the store was given, when the host counts fuel.
    pub(crate) fuel_start: Option<u64>,
    /// The plugin, request and tenant this store serves, for log lines.
    plugin: Arc<str>,
    request_id: Arc<str>,
    tenant: String,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
    _live: LiveGuard,
    _slot: OwnedSemaphorePermit,
    dropped: Arc<Dropped>,
}

impl StoreState {
    /// The state of one call of `plugin`, holding one of its instance slots.
    pub(crate) fn new(
        plugin: &Plugin,
        invocation: &Invocation,
        cpu: CpuBudget,
        fuel: Option<u64>,
        live: LiveGuard,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let limits = plugin.limits();
        let output_cap = limits.output_capture_bytes;
        let stdout = CapturedOutput::new(output_cap);
        let stderr = CapturedOutput::new(output_cap);
        let capabilities = CallState::new(call(plugin, invocation), stdout.clone(), stderr.clone());
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            capabilities,
            table,
            limiter: Limiter::new(limits, fuel, invocation.meter.clone()),
            cpu,
            turns: Turns::default(),
            fuel_start: None,
            plugin: plugin.name.clone(),
            request_id: invocation.request_id.clone(),
            tenant: invocation.tenant.clone(),
            stdout,
            stderr,
            _live: live,
            _slot: slot,
            dropped: plugin.dropped.clone(),
        }
    }

    /// The captured stderr so far, left to be logged when the store drops.
    pub(crate) fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Makes a reused instance's state that of its next call: the call's
    /// capabilities, meter, CPU budget and request id. What the guest holds
    /// (its memory, its resources, its stdout and stderr streams) stays.
    pub(crate) fn rebind(&mut self, plugin: &Plugin, invocation: &Invocation, cpu: CpuBudget) {
        self.capabilities.rebind(call(plugin, invocation));
        self.limiter.rebind(invocation.meter.clone());
        self.cpu = cpu;
        self.turns = Turns::default();
        self.request_id = invocation.request_id.clone();
    }

    /// Host CPU the call's nested native operations spent so far.
    pub(crate) fn nested_host_cpu(&self) -> Duration {
        self.limiter.meter.nested_host_cpu()
    }

    /// Linear memory the instance holds now.
    pub(crate) fn memory(&self) -> usize {
        self.limiter.memory
    }

    /// Logs what the call printed and what it dropped, as the store's drop
    /// does; a reused instance does it after each call.
    pub(crate) fn finish_call(&mut self) {
        for (stream, captured) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (text, dropped) = captured.take();
            self.capabilities.log.printed(stream, &text);
            if dropped > 0 {
                self.dropped
                    .output_bytes
                    .fetch_add(dropped, Ordering::Relaxed);
                tracing::warn!(plugin = %self.plugin, request_id = %self.request_id, tenant = %self.tenant, stream, dropped, "guest output over the capture cap was dropped");
            }
        }
        let lines = std::mem::take(&mut self.capabilities.log.dropped);
        if lines > 0 {
            self.dropped.log_lines.fetch_add(lines, Ordering::Relaxed);
            tracing::warn!(plugin = %self.plugin, request_id = %self.request_id, tenant = %self.tenant, dropped = lines, "guest log lines over the per-call limit were dropped");
        }
    }
}

/// What `invocation` of `plugin` may use beyond computing.
fn call<'a>(plugin: &'a Plugin, invocation: &'a Invocation) -> Call<'a> {
    Call {
        plugin: &plugin.name,
        request_id: &invocation.request_id,
        tenant: &invocation.tenant,
        grants: &plugin.grants,
        outbound: &plugin.outbound,
        kv: plugin.runtime.inner.kv.get().cloned(),
        nested: invocation.nested.clone(),
        meter: &invocation.meter,
        span: &invocation.span,
        log_lines: plugin.limits().log_lines,
        observer: &plugin.runtime.inner.config.observer,
        log_tail: &plugin.log_tail,
    }
}

impl capabilities::View for StoreState {
    fn capabilities(&mut self) -> (&mut CallState, &mut ResourceTable) {
        (&mut self.capabilities, &mut self.table)
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        http::view(&mut self.capabilities.http, &mut self.table)
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        files::view(&mut self.capabilities.wasi, &mut self.table)
    }
}

impl Drop for StoreState {
    /// Logs what the guest printed, however the call ended (returned, trapped,
    /// timed out or was aborted).
    fn drop(&mut self) {
        self.finish_call();
    }
}
