//! What every listener shares, whatever it speaks: which connections are
//! taken at all, how long a peer may keep the host waiting, and the process's
//! file-descriptor limit.
//!
//! - [`Connections`]: admission of new connections against a host-wide cap
//!   a cap per peer address and a rate of new connections per address.
//! - [`Doorman`]: a refused peer gets one short answer in its own protocol
//!   and is closed; one over its rate is reset. Refusals are logged at
//!   most once a second.
//! - [`Guarded`]: a socket whose writes fail once the peer has taken no byte
//!   for `write_timeout`, so a peer that stops reading cannot pin a
//!   connection and the replies queued on it.
//! - [`Tls`]: TLS on a listener, its certificate reloaded while serving.
//! - [`raise_fd_limit`]: the soft limit on open files, raised to the hard
//!   limit at start.
//!
//! Reading has its own bounds where the protocol is parsed: request headers
//! and bodies in the gateway, envelopes in the envelope sessions.

mod admission;
mod guarded;
mod refuse;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub use admission::{ConnectionPermit, Connections, Refusal};
pub use guarded::Guarded;
pub use refuse::Doorman;
pub use tls::{Tls, TlsConfig, TlsError};

/// Limits of every connection the host accepts, HTTP and TCP alike.
///
/// | field | default |
/// |---|---|
/// | `max_connections` | 1,024 open at once, all listeners together |
/// | `max_connections_per_ip` | 128 open at once from one peer address |
/// | `new_connections_per_ip_per_second` | 200 new connections a second from one peer address, as many at once |
/// | `header_timeout` | 10 s to send a request's headers, and the longest an idle HTTP keep-alive connection stays open (HTTP/1 answers announce it: `Keep-Alive: timeout=10`) |
/// | `body_timeout` | 30 s to send a request's body |
/// | `write_timeout` | 30 s without the peer taking a byte while the host has something to send |
/// | `max_http2_streams` | 128 requests open at once on one HTTP/2 connection |
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Connections open at once, across all listeners.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_ip: usize,
    /// New connections a second from one peer address (0: any).
    pub new_connections_per_ip_per_second: u32,
    /// The time a peer has to send a request's headers (and the longest an
    /// HTTP connection waits for its next request).
    pub header_timeout: Duration,
    /// The time a peer has to send a request's body.
    pub body_timeout: Duration,
    /// How long a peer may leave what the host sends it unread.
    pub write_timeout: Duration,
    /// Requests open at once on one HTTP/2 connection.
    pub max_http2_streams: u32,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_ip: 128,
            new_connections_per_ip_per_second: 200,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_http2_streams: 128,
        }
    }
}

/// Raises the soft limit on open files to the hard limit, and warns when it
/// is still below what `connections` may need (each connection is one
/// descriptor; the host needs some more for itself). Returns the limit now
/// in force.
pub fn raise_fd_limit(connections: &ConnectionConfig) -> Option<u64> {
    /// Descriptors the host uses besides connections: listeners, the
    /// databases, the artifact cache, the runtime.
    const HEADROOM: u64 = 64;
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot read or raise the open-file limit: {e}");
            return None;
        }
    };
    let needed = (connections.max_connections as u64).saturating_add(HEADROOM);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below max_connections plus headroom: connections past it will fail to open; raise `ulimit -n` or lower [connections] max_connections"
        );
    }
    Some(limit)
}

/// The next connection on `listener`. Failures to accept (out of file
/// descriptors, mostly) are logged and retried after a pause, so the
/// connections already open keep being served.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
