//! The envelope protocol (`PROTOCOL.md`): long-lived connections carrying
//! many calls at once, over TCP (length-prefixed frames) or WebSocket (one
//! message per envelope).
//!
//! - [`wire`]: envelopes as JSON, parsed and built.
//! - [`session`]: one connection, whatever carries it: calls as independent
//!   tasks, aborts, the open-call limit, bad input answered per the protocol.
//! - [`tcp`]: the TCP listener and its framing. The WebSocket side lives in
//!   the gateway, next to the route it upgrades.
//! - [`client`]: the other end: a client of the protocol, over TCP or
//!   WebSocket, as `opbox call` and `opbox subscribe` use it.

pub mod client;
mod dial;
mod outbox;
pub mod quic;
pub mod session;
pub mod tcp;
pub mod wire;

use std::time::Duration;

/// Limits of envelope connections.
///
/// | field | default |
/// |---|---|
/// | `max_frame_bytes` | 16 MiB: larger frames are `INVALID_FRAME` and close the connection; larger replies fail their call |
/// | `max_unauthenticated_frame_bytes` | 64 KiB until the connection has an authenticated caller |
/// | `max_open_calls` | 256 calls and subscriptions open at once on one connection |
/// | `max_queued_bytes` | 1 MiB of replies waiting for the peer; past it, calls wait and the connection is not read |
/// | `idle_timeout` | 60 s without a frame and without an open call closes the connection |
/// | `frame_timeout` | 10 s to finish sending a frame once it has started (TCP) |
#[derive(Debug, Clone)]
pub struct EnvelopeConfig {
    /// The largest envelope accepted, in bytes, and the largest reply sent.
    pub max_frame_bytes: usize,
    /// The largest envelope accepted before the connection has an
    /// authenticated caller.
    pub max_unauthenticated_frame_bytes: usize,
    /// Calls open at once on one connection; more are `RESOURCE_EXHAUSTED`.
    pub max_open_calls: usize,
    /// Bytes of replies queued for a peer before the connection stops
    /// taking more (backpressure up to the guests).
    pub max_queued_bytes: usize,
    /// How long a connection with no open call may send nothing.
    pub idle_timeout: Duration,
    /// How long a peer may take to finish a frame it has started.
    pub frame_timeout: Duration,
}

impl Default for EnvelopeConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            max_unauthenticated_frame_bytes: 64 << 10,
            max_open_calls: 256,
            max_queued_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
        }
    }
}
