//! The envelope protocol (`PROTOCOL.md`): long-lived connections carrying
//! many calls at once, over TCP (length-prefixed frames) or WebSocket (one
//! message per envelope).
//!
//! - [`wire`]: envelopes as JSON, parsed and built.
//! - [`session`]: one connection, whatever carries it: calls as independent
//!   tasks, aborts, the open-call limit, bad input answered per the protocol.
//! - [`tcp`]: the TCP listener and its framing. The WebSocket side lives in
//!   the gateway, next to the route it upgrades.

pub mod session;
pub mod tcp;
pub mod wire;

/// Limits of envelope connections.
///
/// | field | default |
/// |---|---|
/// | `max_frame_bytes` | 16 MiB: larger frames are `INVALID_FRAME` and close the connection |
/// | `max_open_calls` | 256 calls and subscriptions open at once on one connection |
#[derive(Debug, Clone)]
pub struct EnvelopeConfig {
    /// The largest envelope accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Calls open at once on one connection; more are `RESOURCE_EXHAUSTED`.
    pub max_open_calls: usize,
}

impl Default for EnvelopeConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            max_open_calls: 256,
        }
    }
}
