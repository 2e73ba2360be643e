//! The pooling allocator: how many instances, memories and tables the
//! engine keeps slots for, and how a slot is made clean between calls.

use serde::Deserialize;
use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{RuntimeConfig, compile};

/// How a pooled linear memory is made clean for the next instance.
///
/// Both give the next instance exactly the memory its component starts
/// with; they differ in what they cost and keep resident.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryReset {
    /// Copy back only the pages the call wrote, found with Linux's
    /// `PAGEMAP_SCAN` (6.7 and later; elsewhere, as `copy`), within the
    /// first `keep_resident_bytes`; unmap the rest. Cheapest for guests
    /// that write a few pages (a Rust guest: a few microseconds). wasmtime
    /// 48 copies back at most 32 separate runs of written pages: past them,
    /// pages are unmapped and the next call faults each one in again. An
    /// interpreter writes pages all over its heap (CPython: about 380
    /// faults a call).
    #[default]
    Dirty,
    /// Copy back (or zero) the first `keep_resident_bytes` of the memory
    /// whole, written or not, and unmap the rest. No page faults for a
    /// guest whose memory fits, at the price of copying all of it on every
    /// call: about 9 µs more a call for a small Rust guest, about 1 ms less
    /// for a Python one (`docs/performance.md`).
    Copy,
}

/// Bytes at the bottom of each pooled linear memory reset in place between
/// calls by default: a Rust guest's shadow stack (1 MiB), data and a small
/// heap.
pub const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// Bytes of each pooled table reset in place between calls.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// The engine's configuration for `config`: the compiler's settings and a
/// pool sized for `max_instances`.
pub(super) fn engine_config(config: &RuntimeConfig) -> Config {
    let instances = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        // A Rust component is a handful of core modules around one memory.
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances.saturating_mul(2))
        .max_memory_size(config.max_memory_bytes)
        // Reuse slots without page faults where it can: what stays mapped
        // is reset in place instead of unmapped, which costs a fault per
        // page on the next call and a TLB shootdown on every core on this
        // one.
        .pagemap_scan(match config.memory_reset {
            MemoryReset::Dirty => Enabled::Auto,
            MemoryReset::Copy => Enabled::No,
        })
        .linear_memory_keep_resident(config.keep_resident_bytes)
        .table_keep_resident(KEEP_RESIDENT_TABLE);
    let mut wasm = compile::code_config(compile::CodeSettings {
        fuel: config.fuel,
        epochs: config.enforce_limits,
        quick: config.quick_compile,
    });
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasm
}
