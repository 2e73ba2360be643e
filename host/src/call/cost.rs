//! What a call cost: a [`Meter`] every layer that spends on the call adds
//! to (the runtime its guest's CPU time, fuel and memory, the capabilities
//! their host calls, the dispatcher the bytes in and out), read as a
//! [`Receipt`] when the call ends. A nested call has a meter of its own,
//! whose receipt is rolled up into its caller's.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What one call has spent so far. Shared by everything that spends on it;
/// every count is a relaxed atomic, so metering costs no lock.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    ended: OnceLock<Duration>,
    /// Spent by the call itself.
    own: Tally,
    /// Rolled up from its nested calls, as their receipts came in.
    nested: Tally,
    /// Whether the call ran with fuel counted.
    fueled: AtomicBool,
    /// Whether a receipt from elsewhere was rolled up into this one.
    absorbed: AtomicBool,
}

#[derive(Debug, Default)]
struct Tally {
    guest_cpu_ns: AtomicU64,
    host_cpu_ns: AtomicU64,
    fuel: AtomicU64,
    memory_peak: AtomicU64,
    keyvalue: AtomicU64,
    http: AtomicU64,
    nested: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A kind of call a guest makes to the host that a receipt counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCall {
    /// One `wasi:keyvalue` operation on a bucket.
    Keyvalue,
    /// One outbound HTTP request.
    Http,
    /// One call or subscription of another operation.
    Nested,
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            ended: OnceLock::new(),
            own: Tally::default(),
            nested: Tally::default(),
            fueled: AtomicBool::new(false),
            absorbed: AtomicBool::new(false),
        }
    }
}

impl Meter {
    /// Adds guest CPU time the call's own instance spent.
    pub fn add_guest_cpu(&self, spent: Duration) {
        let ns = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.own.guest_cpu_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Adds CPU time the host spent running the call itself (a native
    /// operation's handler).
    pub fn add_host_cpu(&self, spent: Duration) {
        let ns = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.own.host_cpu_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Host CPU time the call's nested calls spent so far (native
    /// operations', theirs and below), as their receipts came in: what a
    /// plugin's `cpu_ms` is charged besides its own guest's.
    pub fn nested_host_cpu(&self) -> Duration {
        Duration::from_nanos(self.nested.host_cpu_ns.load(Ordering::Relaxed))
    }

    /// Guest CPU time of the call's own instance, nested calls' excluded.
    pub fn own_guest_cpu(&self) -> Duration {
        Duration::from_nanos(self.own.guest_cpu_ns.load(Ordering::Relaxed))
    }

    /// Adds fuel (wasm instructions) the call's instance used.
    pub fn add_fuel(&self, fuel: u64) {
        self.fueled.store(true, Ordering::Relaxed);
        self.own.fuel.fetch_add(fuel, Ordering::Relaxed);
    }

    /// Records that the call's instance holds `bytes` of linear memory.
    pub fn memory(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.own.memory_peak.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Counts one call the guest made to the host.
    pub fn host_call(&self, kind: HostCall) {
        let counter = match kind {
            HostCall::Keyvalue => &self.own.keyvalue,
            HostCall::Http => &self.own.http,
            HostCall::Nested => &self.own.nested,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds bytes of input the call took.
    pub fn bytes_in(&self, bytes: usize) {
        add(&self.own.bytes_in, bytes);
    }

    /// Adds bytes of output the call gave.
    pub fn bytes_out(&self, bytes: usize) {
        add(&self.own.bytes_out, bytes);
    }

    /// Bytes in and out of the call itself, nested calls' excluded.
    pub fn own_bytes(&self) -> (u64, u64) {
        (
            self.own.bytes_in.load(Ordering::Relaxed),
            self.own.bytes_out.load(Ordering::Relaxed),
        )
    }

    /// Rolls a nested call's receipt up into this one. Its wall time is
    /// within this call's; everything else adds up (peak memory too: the
    /// nested call's instance lived beside this call's).
    pub fn absorb(&self, nested: &Receipt) {
        self.absorbed.store(true, Ordering::Relaxed);
        let t = &self.nested;
        t.guest_cpu_ns
            .fetch_add(nested.guest_cpu_us.saturating_mul(1000), Ordering::Relaxed);
        t.host_cpu_ns
            .fetch_add(nested.host_cpu_us.saturating_mul(1000), Ordering::Relaxed);
        if let Some(fuel) = nested.fuel {
            self.fueled.store(true, Ordering::Relaxed);
            t.fuel.fetch_add(fuel, Ordering::Relaxed);
        }
        t.memory_peak
            .fetch_add(nested.memory_peak_bytes, Ordering::Relaxed);
        t.keyvalue
            .fetch_add(nested.host_calls.keyvalue, Ordering::Relaxed);
        t.http.fetch_add(nested.host_calls.http, Ordering::Relaxed);
        t.nested
            .fetch_add(nested.host_calls.nested, Ordering::Relaxed);
        t.bytes_in.fetch_add(nested.bytes_in, Ordering::Relaxed);
        t.bytes_out.fetch_add(nested.bytes_out, Ordering::Relaxed);
    }

    /// Whether a receipt from elsewhere was rolled up into this one: a
    /// nested call's, or that of the host that ran a call this one
    /// forwarded.
    pub fn absorbed(&self) -> bool {
        self.absorbed.load(Ordering::Relaxed)
    }

    /// Marks the call ended: its wall time stops here. Later calls change
    /// nothing.
    pub fn end(&self) {
        let _ = self.ended.set(self.started.elapsed());
    }

    /// The call's wall time: to its end, or so far.
    pub fn wall(&self) -> Duration {
        self.ended
            .get()
            .copied()
            .unwrap_or_else(|| self.started.elapsed())
    }

    /// What the call has cost, nested calls included.
    pub fn receipt(&self) -> Receipt {
        let sum = |pick: fn(&Tally) -> &AtomicU64| {
            pick(&self.own)
                .load(Ordering::Relaxed)
                .saturating_add(pick(&self.nested).load(Ordering::Relaxed))
        };
        Receipt {
            wall_us: micros(self.wall()),
            guest_cpu_us: sum(|t| &t.guest_cpu_ns) / 1000,
            host_cpu_us: sum(|t| &t.host_cpu_ns) / 1000,
            fuel: self
                .fueled
                .load(Ordering::Relaxed)
                .then(|| sum(|t| &t.fuel)),
            memory_peak_bytes: sum(|t| &t.memory_peak),
            host_calls: HostCalls {
                keyvalue: sum(|t| &t.keyvalue),
                http: sum(|t| &t.http),
                nested: sum(|t| &t.nested),
            },
            bytes_in: sum(|t| &t.bytes_in),
            bytes_out: sum(|t| &t.bytes_out),
        }
    }
}

fn add(counter: &AtomicU64, bytes: usize) {
    counter.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What a call cost, as its caller is told (the `opbox-cost` header, the
/// `cost` field of a batch item, of a `completed` event and of an
/// envelope's `call.responded` / `call.completed`). Nested calls' costs are
/// included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// From admission to the answer (a subscription's: to its end), in
    /// microseconds.
    pub wall_us: u64,
    /// Time guests ran for the call, in microseconds.
    pub guest_cpu_us: u64,
    /// Time the host ran native operations for the call (the host's own
    /// operations it called, nested or not), in microseconds.
    #[serde(default)]
    pub host_cpu_us: u64,
    /// Wasm instructions counted, when the host counts fuel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// The most linear memory the call's instance held, in bytes; nested
    /// calls' peaks are added to it.
    pub memory_peak_bytes: u64,
    /// Calls guests made to the host, by kind.
    pub host_calls: HostCalls,
    /// Bytes of JSON input the call took, nested calls' included.
    pub bytes_in: u64,
    /// Bytes of JSON output it gave (a subscription: all its items).
    pub bytes_out: u64,
}

/// Calls guests made to the host during a call, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCalls {
    /// `wasi:keyvalue` operations.
    pub keyvalue: u64,
    /// Outbound HTTP requests.
    pub http: u64,
    /// Calls and subscriptions of other operations.
    pub nested: u64,
}

impl Receipt {
    /// The receipt as one line of JSON, for a header or a log line.
    pub fn to_json(&self) -> String {
        // A struct of integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_receipts_roll_up_and_wall_time_stops_at_the_end() {
        let child = Meter::default();
        child.add_guest_cpu(Duration::from_micros(300));
        child.add_host_cpu(Duration::from_micros(70));
        child.memory(2 << 20);
        child.host_call(HostCall::Keyvalue);
        child.bytes_in(10);
        child.bytes_out(20);
        child.end();
        let parent = Meter::default();
        parent.add_guest_cpu(Duration::from_micros(100));
        parent.memory(1 << 20);
        parent.memory(1 << 19);
        parent.host_call(HostCall::Nested);
        parent.bytes_in(5);
        parent.absorb(&child.receipt());
        parent.end();
        let receipt = parent.receipt();
        assert_eq!(receipt.guest_cpu_us, 400);
        assert_eq!(receipt.host_cpu_us, 70);
        assert_eq!(parent.nested_host_cpu(), Duration::from_micros(70));
        assert_eq!(parent.own_guest_cpu(), Duration::from_micros(100));
        assert_eq!(receipt.memory_peak_bytes, 3 << 20);
        assert_eq!(
            receipt.host_calls,
            HostCalls {
                keyvalue: 1,
                http: 0,
                nested: 1
            }
        );
        assert_eq!((receipt.bytes_in, receipt.bytes_out), (15, 20));
        assert_eq!(receipt.fuel, None);
        assert_eq!(parent.receipt().wall_us, receipt.wall_us);
        assert!(!receipt.to_json().contains("fuel"));
    }
}
