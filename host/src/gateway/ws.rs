//! `GET /call` upgraded to a WebSocket: the envelope protocol, one message
//! per envelope (binary, or text holding the same JSON).

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};

use super::{ApiError, AppState, bearer};
use crate::envelope::session::{self, Inbound};
use crate::error::CallError;

pub(super) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return ApiError::from(CallError::invalid_input(
            "GET /call is the envelope protocol over WebSocket: send a WebSocket upgrade, or POST /call for a single call",
        ))
        .with_status(StatusCode::UPGRADE_REQUIRED)
        .into_response();
    };
    // A bearer token on the upgrade names the connection's caller; without
    // one, the first envelope carrying an `auth_token` does.
    let identity = bearer(&headers)
        .and_then(|token| state.dispatcher.authenticate(Some(token)).ok())
        .filter(|identity| !identity.is_anonymous());
    let envelope = Arc::new(state.config.envelope.clone());
    let websockets = state.websockets.clone();
    upgrade
        .max_message_size(envelope.max_frame_bytes)
        .on_upgrade(move |socket: WebSocket| {
            websockets.track_future(async move {
                let (sink, stream) = socket.split();
                let incoming = stream
                    .take_while(|message| {
                        std::future::ready(
                            matches!(message, Ok(m) if !matches!(m, Message::Close(_))),
                        )
                    })
                    .filter_map(|message| {
                        std::future::ready(match message {
                            Ok(Message::Binary(bytes)) => Some(Inbound::Frame(bytes)),
                            Ok(Message::Text(text)) => Some(Inbound::Frame(Bytes::from(text))),
                            // Pings are answered by the WebSocket layer.
                            _ => None,
                        })
                    })
                    .boxed();
                let outgoing = sink.with(|bytes: Bytes| {
                    std::future::ready(Ok::<_, axum::Error>(Message::Binary(bytes)))
                });
                session::serve(
                    state.dispatcher,
                    identity,
                    envelope,
                    incoming,
                    Box::pin(outgoing),
                )
                .await;
            })
        })
}
