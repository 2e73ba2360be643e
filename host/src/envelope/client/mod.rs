//! A client for the envelope protocol, over TCP or WebSocket, either of
//! them inside TLS (`tls://`, `wss://`), or QUIC (`quic://`); see the
//! `dial` module.
//!
//! One [`Client`] is one connection; calls and subscriptions on it run
//! concurrently. Over QUIC each byte-stream call has a stream of its own
//! (see the `route` module). Dropping a [`ClientSubscription`] before it ends sends
//! `call.aborted`, which stops the guest on the host.
//!
//! ```no_run
//! # async fn run() -> Result<(), opbox::envelope::client::ClientError> {
//! use futures::StreamExt;
//! use opbox::envelope::client::Client;
//! use serde_json::json;
//!
//! let client = Client::connect("tcp://127.0.0.1:8081", None).await?;
//! let output = client.call("echo/echo", json!({"x": 1})).await?;
//! let mut ticks = client.subscribe("ticker/count", json!({"to": 3})).await?;
//! while let Some(tick) = ticks.next().await {
//!     println!("{}", tick?);
//! }
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use super::dial::tls_config;
use super::dial::{Dialed, dial, open_stream};
use super::wire::{CALL_ABORTED, CALL_COMPLETED, CALL_ERROR, CALL_REQUESTED, CALL_RESPONDED};
use crate::call::CallError;
pub use raw::{ClientRaw, RawEvent, RawInput};
use route::{Replies, Reply, Route};

mod raw;
mod route;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The host answered with an error.
    #[error("{0}")]
    Call(CallError),
    /// The URL is not `tcp://HOST:PORT`, `tls://HOST:PORT`,
    /// `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH`.
    #[error(
        "unsupported URL `{0}`: use tcp://HOST:PORT, tls://HOST:PORT, quic://HOST:PORT, ws://HOST:PORT/call or wss://HOST:PORT/call"
    )]
    Url(String),
    /// The certificates to trust could not be read.
    #[error("{0}")]
    Tls(String),
    /// The connection could not be made.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// Where to.
        url: String,
        /// Why not.
        message: String,
    },
    /// The connection closed before the call ended.
    #[error("the connection closed before the call ended")]
    Closed,
    /// The host sent something that is not an envelope.
    #[error("the host broke the protocol: {0}")]
    Protocol(String),
}

/// A connection to an opbox host.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    carrier: Carrier,
    next_id: AtomicU64,
    token: Option<String>,
}

/// How the client's calls reach the host.
#[derive(Debug)]
enum Carrier {
    /// One connection for every call.
    Shared(Route),
    /// A QUIC connection: JSON calls share one stream (`shared`); each
    /// byte-stream call opens a stream of its own.
    Quic {
        connection: quinn::Connection,
        shared: Route,
    },
}

impl Client {
    /// Connects to `url`: `tcp://HOST:PORT` for length-prefixed frames,
    /// `ws://HOST:PORT/call` for WebSocket, or `tls://…` and `wss://…` for
    /// the same inside TLS, trusting the web's roots (see
    /// [`Client::connect_with`] to trust more). `token` is sent as the
    /// bearer token (on the upgrade for WebSocket, with each call over TCP).
    pub async fn connect(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::connect_with(url, token, None).await
    }

    /// [`Client::connect`], trusting what `tls` trusts for `tls://` and
    /// `wss://` (made with [`tls_config`]).
    pub async fn connect_with(
        url: &str,
        token: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let (carrier, token) = match dial(url, token.as_deref(), tls).await? {
            Dialed::Frames(incoming, sink, token_sent) => {
                let route = Route::shared(incoming, sink);
                (
                    Carrier::Shared(route),
                    if token_sent { None } else { token },
                )
            }
            Dialed::Quic(connection) => {
                let (incoming, sink) =
                    open_stream(&connection)
                        .await
                        .map_err(|message| ClientError::Connect {
                            url: url.to_owned(),
                            message,
                        })?;
                let shared = Route::shared(incoming, sink);
                (Carrier::Quic { connection, shared }, token)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                carrier,
                next_id: AtomicU64::new(1),
                token,
            }),
        })
    }

    /// Calls a query or mutation and waits for its output. A subscription
    /// fails with `INVALID_OPERATION_TYPE`. Dropping the future before the
    /// answer aborts the call on the host.
    pub async fn call(&self, operation: &str, input: Value) -> Result<Value, ClientError> {
        // The same guard as a subscription: aborts unless it saw the end.
        let mut reply = self.start(operation, input, "once")?;
        match reply.next().await {
            Some(Ok(output)) => {
                reply.finish();
                Ok(output)
            }
            Some(Err(error)) => Err(error),
            None => Err(ClientError::Protocol(
                "`call.completed` for a query or mutation".into(),
            )),
        }
    }

    /// Subscribes to a subscription; its outputs arrive on the returned
    /// stream, which ends when the subscription completes. A query or
    /// mutation fails with `INVALID_OPERATION_TYPE`.
    pub async fn subscribe(
        &self,
        operation: &str,
        input: Value,
    ) -> Result<ClientSubscription, ClientError> {
        self.start(operation, input, "stream")
    }

    /// Registers a fresh id and sends `call.requested`, saying which reply
    /// sequence the caller expects.
    fn start(
        &self,
        operation: &str,
        input: Value,
        expect: &str,
    ) -> Result<ClientSubscription, ClientError> {
        self.start_with(json!({ "operationId": operation, "input": input, "expect": expect }))
    }

    /// Registers a fresh id and sends `call.requested` with `payload`.
    fn start_with(&self, mut payload: Value) -> Result<ClientSubscription, ClientError> {
        let id = self
            .inner
            .next_id
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let raw = payload["carriage"] == "raw";
        let (route, replies) = match &self.inner.carrier {
            Carrier::Quic { connection, .. } if raw => Route::own_stream(connection.clone()),
            Carrier::Shared(route) | Carrier::Quic { shared: route, .. } => {
                (route.clone(), route.register(&id))
            }
        };
        if let Some(token) = &self.inner.token {
            payload["auth_token"] = json!(token);
        }
        // From here on, dropping the guard aborts the call.
        let guard = ClientSubscription {
            route,
            id,
            replies,
            done: false,
        };
        guard.send(CALL_REQUESTED, payload, None)?;
        Ok(guard)
    }
}

/// The outputs of one subscription. Dropping it before it ends aborts the
/// subscription on the host.
#[derive(Debug)]
pub struct ClientSubscription {
    route: Route,
    id: String,
    replies: Replies,
    done: bool,
}

impl Stream for ClientSubscription {
    type Item = Result<Value, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.replies.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => Some(Err(ClientError::Closed)),
            Poll::Ready(Some(Reply::Envelope(envelope))) => output(envelope).transpose(),
            Poll::Ready(Some(Reply::Chunk(..))) => Some(Err(ClientError::Protocol(
                "a raw chunk for a call that is not a byte stream".into(),
            ))),
        };
        if !matches!(item, Some(Ok(_))) {
            self.finish();
        }
        Poll::Ready(item)
    }
}

impl ClientSubscription {
    /// The call ended: forget it, and abort nothing on drop.
    fn finish(&mut self) {
        self.done = true;
        self.route.forget(&self.id);
    }

    /// Sends a `kind` envelope for this call.
    fn send(
        &self,
        kind: &str,
        payload: Value,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), ClientError> {
        let envelope = json!({ "type": kind, "id": self.id, "payload": payload });
        self.route.send(Bytes::from(envelope.to_string()), written)
    }

    /// Aborts the subscription and waits until the abort has been written
    /// to the connection. Dropping the subscription aborts it too, without
    /// waiting.
    pub async fn abort(mut self) {
        if let Some(written) = self.send_abort(true) {
            let _ = written.await;
        }
    }

    fn send_abort(&mut self, wait: bool) -> Option<oneshot::Receiver<()>> {
        if std::mem::replace(&mut self.done, true) {
            return None;
        }
        self.route.forget(&self.id);
        let (tx, rx) = oneshot::channel();
        let tx = wait.then_some(tx);
        self.send(CALL_ABORTED, json!({}), tx).ok()?;
        Some(rx)
    }
}

impl Drop for ClientSubscription {
    fn drop(&mut self) {
        self.send_abort(false);
    }
}

/// What one reply means: an output, the end of a subscription (`None`), or
/// an error.
fn output(mut envelope: Value) -> Result<Option<Value>, ClientError> {
    let mut payload = envelope["payload"].take();
    match envelope["type"].as_str() {
        Some(CALL_RESPONDED) => Ok(Some(payload["output"].take())),
        Some(CALL_COMPLETED) => Ok(None),
        Some(CALL_ERROR) => Err(ClientError::Call(
            serde_json::from_value(payload).map_err(|e| ClientError::Protocol(e.to_string()))?,
        )),
        _ => Err(ClientError::Protocol(format!(
            "unexpected envelope {envelope}"
        ))),
    }
}
