//! Admission of connections: a host-wide cap, a cap per peer address, and
//! a rate of new connections per peer address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use crate::call::{CallError, ErrorCode};

/// The connections open now, counted host-wide and per peer address. Cheap
/// to clone; every listener of a host shares one.
#[derive(Debug, Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
    /// New connections per address and second, when limited.
    rate: Option<(u32, DefaultKeyedRateLimiter<IpAddr>)>,
}

/// Addresses the rate of new connections remembers before it forgets those
/// whose buckets are full again.
const RATE_ADDRESSES: usize = 4096;

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The host has `max_connections` open.
    Total(usize),
    /// The peer's address has `max_connections_per_ip` open.
    PerAddress(usize),
    /// The peer's address opened `new_connections_per_ip_per_second` in
    /// the last second.
    Rate(u32),
}

impl Refusal {
    /// The error a refused peer is told: `UNAVAILABLE` when the host is
    /// full, `RESOURCE_EXHAUSTED` when the peer itself holds too many.
    pub fn to_error(self) -> CallError {
        match self {
            Self::Total(limit) => CallError::new(
                ErrorCode::Unavailable,
                "the host has as many connections open as it takes; retry shortly",
            )
            .with_details(json!({ "limit": "max_connections", "value": limit })),
            Self::PerAddress(limit) => CallError::new(
                ErrorCode::ResourceExhausted,
                format!("this address has {limit} connections open, the most it may"),
            )
            .with_details(json!({ "limit": "max_connections_per_ip", "value": limit })),
            Self::Rate(limit) => CallError::new(
                ErrorCode::ResourceExhausted,
                format!("this address opens more than {limit} connections a second"),
            )
            .with_details(json!({
                "limit": "new_connections_per_ip_per_second",
                "value": limit,
                "retry_after_ms": 1000,
            })),
        }
    }
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Connections {
    /// Counts connections against `max_total` and `max_per_ip`, and new
    /// ones against `per_ip_per_second` (a second's worth at once; 0: no
    /// rate).
    pub fn new(max_total: usize, max_per_ip: usize, per_ip_per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_ip_per_second)
            .map(|n| (per_ip_per_second, RateLimiter::keyed(Quota::per_second(n))));
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                open: Mutex::default(),
                rate,
            }),
        }
    }

    /// A place for one more connection from `ip`, or why not. Never waits.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut open = self.inner.lock();
        if open.total >= self.inner.max_total {
            return Err(Refusal::Total(self.inner.max_total));
        }
        if open
            .per_ip
            .get(&ip)
            .is_some_and(|n| *n >= self.inner.max_per_ip)
        {
            return Err(Refusal::PerAddress(self.inner.max_per_ip));
        }
        if let Some((limit, rate)) = &self.inner.rate {
            if rate.len() > RATE_ADDRESSES {
                rate.retain_recent();
            }
            if rate.check_key(&ip).is_err() {
                return Err(Refusal::Rate(*limit));
            }
        }
        *open.per_ip.entry(ip).or_default() += 1;
        open.total += 1;
        Ok(ConnectionPermit {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().total
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.inner.lock();
        open.total -= 1;
        if let Some(from_ip) = open.per_ip.get_mut(&self.ip) {
            *from_ip -= 1;
            if *from_ip == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_address_and_in_all_and_given_back() {
        let connections = Connections::new(3, 2, 0);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let a1 = connections.admit(a).unwrap();
        let _a2 = connections.admit(a).unwrap();
        assert_eq!(connections.admit(a).unwrap_err(), Refusal::PerAddress(2));
        let _b1 = connections.admit(b).unwrap();
        assert_eq!(connections.admit(b).unwrap_err(), Refusal::Total(3));
        drop(a1);
        assert_eq!(connections.open(), 2);
        let _b2 = connections.admit(b).unwrap();
        assert_eq!(connections.admit(a).unwrap_err(), Refusal::Total(3));
    }

    #[test]
    fn an_address_opens_at_most_its_rate_of_new_connections() {
        let connections = Connections::new(100, 100, 5);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        // A second's worth at once, each given back at once: the rate
        // counts connections opened, not open.
        for _ in 0..5 {
            drop(connections.admit(a).unwrap());
        }
        assert_eq!(connections.admit(a).unwrap_err(), Refusal::Rate(5));
        assert_eq!(connections.open(), 0);
        // Another address has its own.
        let _b = connections.admit(b).unwrap();
    }
}
