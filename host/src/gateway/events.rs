//! `GET /admin/v1/events`: the event feed. A plain request reads a page
//! (`admin/events`); a WebSocket upgrade follows the feed (`admin/feed`):
//! one text message per item, a snapshot first, and the socket closes after
//! a `diagnostic` item.
//!
//! | query | meaning |
//! |---|---|
//! | `cursor=N` | the events after `N`; all kept when absent |
//! | `limit=M` | a page's size (100 by default, 1000 at most) |
//! | `tenant=ID` | the operator's filter: one tenant's events |
//!
//! The caller is authorized before the socket is upgraded; a cursor that is
//! not a number gets one `cursor_malformed` item on the socket (a 400 on a
//! page), and the socket closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::error::ApiError;
use super::ws::{fragments, handshake_key, switching};
use super::{AppState, caller};
use crate::call::{CallError, CallRequest, Origin, Transport, new_request_id};
use crate::contract::{Diagnostic, DiagnosticCode, FeedItem};
use crate::dispatch::OutputStream;
use crate::net::ConnectionPermit;

/// The largest message a feed's reader may send (it has nothing to say
/// but pings and a close).
const MAX_INBOUND: usize = 4 << 10;

/// Pings a reader may send in a second; more and the socket is closed.
const MAX_PINGS_PER_SECOND: u32 = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    cursor: Option<String>,
    limit: Option<String>,
    tenant: Option<String>,
}

pub(super) async fn events(
    State(state): State<AppState>,
    query: Result<Query<Page>, QueryRejection>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let Query(page) = query.map_err(super::discovery::bad_query)?;
    let identity = caller(&state, request.headers())?;
    let upgrade =
        handshake_key(request.headers()).zip(request.extensions_mut().remove::<OnUpgrade>());
    let cursor = match page.cursor.as_deref().map(str::parse::<u64>) {
        None => Ok(None),
        Some(Ok(cursor)) => Ok(Some(cursor)),
        Some(Err(_)) => Err(malformed(page.cursor.as_deref().unwrap_or_default())),
    };
    let mut input = Map::new();
    if let Some(tenant) = page.tenant {
        input.insert("tenant".into(), json!(tenant));
    }
    let Some((key, on_upgrade)) = upgrade else {
        // Only a caller who may read the feed learns how to ask.
        let request = admin_request("events", identity.clone(), Value::Null);
        state
            .dispatcher
            .op_type(&request)
            .await
            .map_err(|e| ApiError::new(request.request_id.clone(), e))?;
        let cursor = cursor.map_err(|item| {
            ApiError::from(
                CallError::invalid_input(item["message"].as_str().unwrap_or_default())
                    .with_details(json!({ "diagnostic": "cursor_malformed" })),
            )
        })?;
        if let Some(cursor) = cursor {
            input.insert("cursor".into(), json!(cursor));
        }
        if let Some(limit) = page.limit {
            let limit: u64 = limit.parse().map_err(|_| {
                ApiError::from(CallError::invalid_input("`limit` must be a whole number"))
            })?;
            input.insert("limit".into(), json!(limit));
        }
        let request = admin_request("events", identity, Value::Object(input));
        let request_id = request.request_id.clone();
        let page = state
            .dispatcher
            .call(request)
            .await
            .map_err(|e| ApiError::new(request_id, e))?;
        return Ok(Json(page).into_response());
    };
    let items: OutputStream = match cursor {
        Ok(cursor) => {
            if let Some(cursor) = cursor {
                input.insert("cursor".into(), json!(cursor));
            }
            let request = admin_request("feed", identity, Value::Object(input));
            let request_id = request.request_id.clone();
            state
                .dispatcher
                .subscribe(request)
                .await
                .map_err(|e| ApiError::new(request_id, e))?
        }
        Err(diagnostic) => {
            // Only a caller who may read the feed learns how to ask.
            let request = admin_request("feed", identity, Value::Null);
            state
                .dispatcher
                .op_type(&request)
                .await
                .map_err(|e| ApiError::new(request.request_id.clone(), e))?;
            futures::stream::once(async move { Ok(diagnostic) }).boxed()
        }
    };
    // Holds the connection's place until the WebSocket closes.
    let permit = request.extensions_mut().remove::<Arc<ConnectionPermit>>();
    state.websockets.spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(upgraded) => follow(TokioIo::new(upgraded), items).await,
            Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
        }
    });
    Ok(switching(&key))
}

fn malformed(cursor: &str) -> Value {
    FeedItem::Diagnostic(Diagnostic {
        code: DiagnosticCode::CursorMalformed,
        message: format!(
            "the cursor `{}` is not a whole number",
            crate::call::cut(cursor, 64)
        ),
        oldest: None,
        cursor: None,
    })
    .to_json()
}

fn admin_request(op: &str, identity: crate::call::Identity, input: Value) -> CallRequest {
    CallRequest {
        request_id: new_request_id(),
        operation: format!("admin/{op}"),
        input,
        deadline: None,
        identity,
        origin: Origin::Wire(Transport::Http),
        trace: None,
        attachment: None,
    }
}

/// Sends `items` on the socket until they end, the reader leaves, or a
/// `diagnostic` or an error is sent; then closes it.
async fn follow<S>(io: S, mut items: OutputStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_INBOUND))
        .max_frame_size(Some(MAX_INBOUND))
        .write_buffer_size(64 << 10)
        .max_write_buffer_size(256 << 10);
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut stream) = socket.split();
    let mut pings = (Instant::now(), 0u32);
    let code = loop {
        tokio::select! {
            item = items.next() => {
                let (json, last) = match item {
                    Some(Ok(item)) => {
                        let last = item["type"] == "diagnostic";
                        (item, last)
                    }
                    Some(Err(error)) => (json!({ "type": "error", "error": error }), true),
                    None => break CloseCode::Normal,
                };
                let bytes = Bytes::from(json.to_string());
                let mut sent = Ok(());
                for message in fragments(bytes) {
                    sent = sink.feed(message).await;
                    if sent.is_err() {
                        break;
                    }
                }
                if sent.is_err() || sink.flush().await.is_err() {
                    return;
                }
                if last {
                    break CloseCode::Normal;
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Ping(_))) => {
                    if pings.0.elapsed() > Duration::from_secs(1) {
                        pings = (Instant::now(), 0);
                    }
                    pings.1 += 1;
                    if pings.1 > MAX_PINGS_PER_SECOND {
                        break CloseCode::Policy;
                    }
                    // The pong is queued by the socket: send it.
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => break CloseCode::Unsupported,
            },
        }
    };
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
}
