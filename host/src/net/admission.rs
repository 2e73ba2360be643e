//! Admission of connections: a host-wide cap and a cap per peer address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
}

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
    /// Counts connections against `max_total` and `max_per_ip`.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                open: Mutex::default(),
            }),
        }
    }

    /// A place for one more connection from `ip`, or why not. Never waits.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut open = self.inner.lock();
        if open.total >= self.inner.max_total {
            return Err(Refusal::Total(self.inner.max_total));
        }
        let from_ip = open.per_ip.entry(ip).or_default();
        if *from_ip >= self.inner.max_per_ip {
            return Err(Refusal::PerAddress(self.inner.max_per_ip));
        }
        *from_ip += 1;
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
        let connections = Connections::new(3, 2);
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
}
