//! Envelopes over QUIC (quinn): TLS 1.3 from the certificate of the TCP
//! envelopes (`[envelope] tls`), ALPN [`ALPN`].
//!
//! Each bidirectional stream a peer opens carries the TCP framing (a 4-byte
//! length, then the frame) and is a session of its own: one call per
//! stream, as alknet has it, or several. QUIC's own flow control holds
//! back each stream on its own, so a byte-stream call that stops reading
//! stops only its stream.
//!
//! What a peer can make the listener hold: a connection is admitted against
//! the same caps as every listener (`max_connections`,
//! `max_connections_per_ip`, `new_connections_per_ip_per_second`) before
//! its handshake; it may open at most `max_open_calls` streams at once and
//! no unidirectional ones; it is closed after `idle_timeout` without a
//! packet; a handshake has `frame_timeout` to finish; each stream is a
//! session with the envelope limits of a TCP connection, and loses its
//! session when the peer takes none of its bytes for `write_timeout`.

use std::future::Future;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use super::EnvelopeConfig;
use super::tcp::serve_framed;
use crate::call::Transport;
use crate::dispatch::Dispatcher;
use crate::net::{Connections, Guarded, Tls};

/// The ALPN protocol a QUIC envelope connection names.
pub const ALPN: &[u8] = b"opbox-envelope/1";

/// Why a QUIC listener cannot start.
#[derive(Debug, thiserror::Error)]
#[error("QUIC listener: {0}")]
pub struct QuicError(String);

impl QuicError {
    pub(crate) fn new(why: &str) -> Self {
        Self(why.to_owned())
    }
}

/// A QUIC endpoint serving envelopes on `socket`, its TLS from `tls`
/// (loaded with [`ALPN`]).
pub fn endpoint(
    socket: UdpSocket,
    tls: &Tls,
    config: &EnvelopeConfig,
) -> Result<quinn::Endpoint, QuicError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config())
        .map_err(|e| QuicError(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let streams = u32::try_from(config.max_open_calls).unwrap_or(u32::MAX);
    transport
        .max_concurrent_bidi_streams(streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout)
                .map_err(|e| QuicError(e.to_string()))?,
        ));
    server.transport_config(Arc::new(transport));
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|e| QuicError(e.to_string()))
}

/// Accepts connections on `endpoint` until `shutdown` completes, each
/// admitted one on a task of its own; then closes the endpoint.
pub async fn serve(
    endpoint: quinn::Endpoint,
    dispatcher: Dispatcher,
    config: EnvelopeConfig,
    connections: Connections,
    write_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let mut open = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Some(incoming) = incoming else { break };
        let peer = incoming.remote_address();
        let permit = match connections.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                tracing::debug!(%peer, "QUIC connection refused: {}", refusal.to_error().message);
                incoming.refuse();
                continue;
            }
        };
        let (dispatcher, config) = (dispatcher.clone(), config.clone());
        open.spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(config.frame_timeout, incoming).await;
            let connection = match handshake {
                Ok(Ok(connection)) => connection,
                Ok(Err(e)) => return tracing::debug!(%peer, "QUIC handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "QUIC handshake timed out"),
            };
            let mut streams = tokio::task::JoinSet::new();
            while let Ok((send, recv)) = connection.accept_bi().await {
                // Each stream a session of envelopes in the TCP framing.
                let (dispatcher, config) = (dispatcher.clone(), config.clone());
                // A peer that stops taking one stream's bytes for
                // `write_timeout` loses that stream and its calls, as a
                // TCP peer loses its connection; its other streams go on.
                streams.spawn(serve_framed(
                    recv,
                    Guarded::new(send, write_timeout),
                    Transport::Quic,
                    dispatcher,
                    config,
                ));
            }
            // The connection is gone: its streams' calls are aborted.
            streams.abort_all();
        });
    }
    endpoint.close(0u32.into(), b"the host is shutting down");
    while open.join_next().await.is_some() {}
}
