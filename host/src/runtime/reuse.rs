//! Instance reuse, when the operator allows it for a plugin
//! (`[plugins.reuse]`): an instance that answered a query or mutation serves
//! the next call of the same tenant instead of being dropped.
//!
//! Fresh instances stay the default, because reuse trades isolation between
//! calls for speed: whatever a call leaves in its instance's memory (globals,
//! caches, leaked resources) the next call of the same tenant sees. Never
//! across tenants: each tenant has idle instances of its own.
//!
//! An instance goes back to its tenant's idle list only after a call that
//! returned (an output, even one over `output_bytes`, or the plugin's own
//! error). A trap, a CPU, fuel or memory limit, a deadline or a caller who
//! left drops it with the call that was running on it, and only that call
//! fails: one instance serves one call at a time. It
//! is retired after `max_calls` calls, `max_age_ms` after it was made, or
//! once its linear memory (which only grows) passes `max_memory_bytes`.
//! Subscriptions always get a fresh instance.
//!
//! A WASIp3 `wasi:http` component's instance may also serve several
//! requests at once, up to `max_concurrent` (`runtime/http/shared.rs`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use wasmtime::Store;

use super::bindings;
use super::state::StoreState;

/// `[plugins.reuse]`: how long one instance may serve.
///
/// | field | default |
/// |---|---|
/// | `max_calls` | 1,000 calls, then a fresh instance |
/// | `max_age_ms` | 60,000 ms after the instance was made |
/// | `max_memory_bytes` | 16 MiB of linear memory: an instance past it is dropped after its call |
/// | `max_idle` | 4 idle instances kept for each calling tenant |
/// | `max_concurrent` | 16 requests at once in one instance of a WASIp3 `wasi:http` component (as `wasmtime serve`); every other kind serves one call at a time |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReuseConfig {
    /// Calls one instance serves before it is dropped.
    pub max_calls: u32,
    /// How long after it was made an instance may still take a call, in
    /// milliseconds.
    pub max_age_ms: u64,
    /// The linear memory past which an instance is dropped after its call
    /// (its high-water mark); `memory_bytes` still bounds every call.
    pub max_memory_bytes: usize,
    /// Idle instances kept for each calling tenant; more are dropped.
    pub max_idle: usize,
    /// Requests one instance of a WASIp3 `wasi:http` component serves at
    /// once; opbox plugins and WASIp2 components serve one at a time.
    pub max_concurrent: u32,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        Self {
            max_calls: 1_000,
            max_age_ms: 60_000,
            max_memory_bytes: 16 << 20,
            max_idle: 4,
            max_concurrent: 16,
        }
    }
}

/// An instance between two calls, with its store.
pub(super) struct Idle {
    pub(super) store: Store<StoreState>,
    pub(super) instance: bindings::Plugin,
    pub(super) uses: Uses,
}

/// How much an instance has served.
#[derive(Debug, Clone, Copy)]
pub(super) struct Uses {
    calls: u32,
    born: Instant,
}

impl Uses {
    pub(super) fn new() -> Self {
        Self {
            calls: 0,
            born: Instant::now(),
        }
    }
}

/// The idle instances of one plugin, by tenant.
pub(super) struct Reuse {
    config: ReuseConfig,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl std::fmt::Debug for Reuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reuse")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Reuse {
    pub(super) fn new(config: ReuseConfig) -> Self {
        Self {
            config,
            idle: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn config(&self) -> &ReuseConfig {
        &self.config
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle instance of `tenant`'s still young enough to serve, if any.
    pub(super) fn take(&self, tenant: &str) -> Option<Idle> {
        let max_age = Duration::from_millis(self.config.max_age_ms);
        let mut idle = self.idle();
        let instances = idle.get_mut(tenant)?;
        // Too old ones are dropped outside the lock.
        let mut expired = Vec::new();
        let found = loop {
            match instances.pop() {
                Some(one) if one.uses.born.elapsed() < max_age => break Some(one),
                Some(old) => expired.push(old),
                None => break None,
            }
        };
        drop(idle);
        drop(expired);
        found
    }

    /// Takes `instance` back after a call that returned, unless it has
    /// served its share, or `tenant` has enough idle ones already.
    pub(super) fn put(&self, tenant: &str, mut instance: Idle, memory: usize) {
        instance.uses.calls = instance.uses.calls.saturating_add(1);
        let spent = instance.uses.calls >= self.config.max_calls
            || memory > self.config.max_memory_bytes
            || instance.uses.born.elapsed() >= Duration::from_millis(self.config.max_age_ms);
        if spent {
            return;
        }
        let mut idle = self.idle();
        let instances = idle.entry(tenant.to_owned()).or_default();
        if instances.len() < self.config.max_idle {
            instances.push(instance);
        }
    }

    /// Drops every idle instance (their pool slots are wanted elsewhere).
    pub(super) fn clear(&self) {
        let idle = std::mem::take(&mut *self.idle());
        drop(idle);
    }
}
