//! `GET /call` upgraded to a WebSocket: the envelope protocol, one message
//! per envelope (binary, or text holding the same JSON).
//!
//! The upgrade is done here rather than by axum's extractor, so that the
//! socket's buffers are ours to bound: incoming messages are held to the
//! connection's frame limit (small unless the upgrade carried a valid bearer
//! token), and replies go out in fragments of at most 64 KiB, which keeps
//! the write buffer, automatic pongs included, within a fixed size however
//! the peer behaves.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{ApiError, AppState, bearer};
use crate::envelope::session::{self, FrameLimit, Inbound};
use crate::error::CallError;
use crate::net::ConnectionPermit;

/// The largest WebSocket frame the host sends; longer replies are fragmented.
const FRAGMENT: usize = 64 << 10;
/// Bytes the socket gathers before writing them out.
const WRITE_BUFFER: usize = 64 << 10;

pub(super) async fn upgrade(State(state): State<AppState>, mut request: Request) -> Response {
    let (Some(key), Some(on_upgrade)) = (
        handshake_key(request.headers()),
        request.extensions_mut().remove::<OnUpgrade>(),
    ) else {
        return ApiError::from(CallError::invalid_input(
            "GET /call is the envelope protocol over WebSocket: send a WebSocket upgrade, or POST /call for a single call",
        ))
        .with_status(StatusCode::UPGRADE_REQUIRED)
        .into_response();
    };
    let permit = request.extensions_mut().remove::<Arc<ConnectionPermit>>();
    // A bearer token on the upgrade names the connection's caller; without
    // one, the first envelope carrying an `auth_token` does.
    let identity = bearer(request.headers())
        .and_then(|token| state.dispatcher.authenticate(Some(token)).ok())
        .filter(|identity| !identity.is_anonymous());
    let envelope = Arc::new(state.config.envelope.clone());
    let limit = FrameLimit::for_connection(&envelope, identity.as_ref());
    let socket_config = WebSocketConfig::default()
        .max_message_size(Some(limit.get()))
        .max_frame_size(Some(limit.get()))
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * FRAGMENT + 1024);
    state.websockets.spawn(async move {
        // Holds the connection's place until the WebSocket closes.
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!("WebSocket upgrade failed: {e}"),
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(socket_config))
                .await;
        let (sink, stream) = socket.split();
        let incoming = stream
            .scan(false, |ended, message| {
                let item = match message {
                    _ if *ended => None,
                    Ok(Message::Binary(bytes)) => Some(Some(Inbound::Frame(bytes))),
                    Ok(Message::Text(text)) => Some(Some(Inbound::Frame(Bytes::from(text)))),
                    Ok(Message::Close(_)) => None,
                    // Pings are answered by the socket.
                    Ok(_) => Some(None),
                    Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                        Some(Some(Inbound::Violation(format!(
                            "a message of {size} bytes is longer than this connection takes ({max_size} bytes)"
                        ))))
                    }
                    Err(_) => None,
                };
                *ended = !matches!(item, Some(None | Some(Inbound::Frame(_))));
                std::future::ready(item)
            })
            .filter_map(std::future::ready)
            .boxed();
        let outgoing = sink.with_flat_map(|bytes: Bytes| futures::stream::iter(fragments(bytes).map(Ok)));
        session::serve(
            state.dispatcher,
            identity,
            envelope,
            limit,
            incoming,
            Box::pin(outgoing),
        )
        .await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = derive_accept_key(key.as_bytes()).parse() {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade request.
fn handshake_key(headers: &HeaderMap) -> Option<String> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let version = headers.get("sec-websocket-version")?;
    (has_token(CONNECTION, "upgrade") && has_token(UPGRADE, "websocket") && version == "13")
        .then(|| {
            headers
                .get(SEC_WEBSOCKET_KEY)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .flatten()
}

/// A reply as WebSocket messages: one binary message, sent as frames of at
/// most [`FRAGMENT`] bytes.
fn fragments(bytes: Bytes) -> impl Iterator<Item = Message> {
    let len = bytes.len();
    let count = len.div_ceil(FRAGMENT).max(1);
    (0..count).map(move |n| {
        if count == 1 {
            return Message::Binary(bytes.clone());
        }
        let chunk = bytes.slice(n * FRAGMENT..((n + 1) * FRAGMENT).min(len));
        let opcode = if n == 0 { Data::Binary } else { Data::Continue };
        Message::Frame(Frame::message(chunk, OpCode::Data(opcode), n + 1 == count))
    })
}
