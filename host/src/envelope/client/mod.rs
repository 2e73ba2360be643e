//! A client for the envelope protocol, over TCP or WebSocket, either of
//! them inside TLS (`tls://`, `wss://`; see the `dial` module).
//!
//! One [`Client`] is one connection; calls and subscriptions on it run
//! concurrently. Dropping a [`ClientSubscription`] before it ends sends
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

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

pub use super::dial::tls_config;
use super::wire::{self, CALL_ABORTED, CALL_COMPLETED, CALL_ERROR, CALL_REQUESTED, CALL_RESPONDED};
use crate::call::CallError;
pub use raw::{ClientRaw, RawEvent, RawInput};

mod raw;

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

/// What arrives for one call: an envelope, or a raw chunk of a
/// byte-stream call (its stream type and bytes).
#[derive(Debug)]
enum Reply {
    Envelope(Value),
    Chunk(u8, Bytes),
}

/// Where the replies of one call go, as they arrive.
type Replies = mpsc::UnboundedSender<Reply>;

/// A frame to send, and who to tell once it is written.
type Outgoing = (Bytes, Option<oneshot::Sender<()>>);

/// A connection to an opbox host.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    out: mpsc::UnboundedSender<Outgoing>,
    calls: Arc<Mutex<HashMap<String, Replies>>>,
    next_id: AtomicU64,
    token: Option<String>,
}

fn lock(calls: &Mutex<HashMap<String, Replies>>) -> MutexGuard<'_, HashMap<String, Replies>> {
    calls.lock().unwrap_or_else(PoisonError::into_inner)
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
        let calls = Arc::new(Mutex::new(HashMap::new()));
        let (out, outgoing) = mpsc::unbounded_channel::<Outgoing>();
        let (incoming, sink, token_sent) = super::dial::dial(url, token.as_deref(), tls).await?;
        tokio::spawn(pump(incoming, sink, outgoing, calls.clone()));
        Ok(Self::new(out, calls, if token_sent { None } else { token }))
    }

    fn new(
        out: mpsc::UnboundedSender<Outgoing>,
        calls: Arc<Mutex<HashMap<String, Replies>>>,
        token: Option<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                out,
                calls,
                next_id: AtomicU64::new(1),
                token,
            }),
        }
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
        let (tx, replies) = mpsc::unbounded_channel();
        lock(&self.inner.calls).insert(id.clone(), tx);
        if let Some(token) = &self.inner.token {
            payload["auth_token"] = json!(token);
        }
        // From here on, dropping the guard aborts the call.
        let guard = ClientSubscription {
            client: self.clone(),
            id,
            replies,
            done: false,
        };
        self.send(CALL_REQUESTED, &guard.id, payload, None)?;
        Ok(guard)
    }

    fn send(
        &self,
        kind: &str,
        id: &str,
        payload: Value,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), ClientError> {
        let envelope = json!({ "type": kind, "id": id, "payload": payload });
        self.inner
            .out
            .send((Bytes::from(envelope.to_string()), written))
            .map_err(|_| ClientError::Closed)
    }
}

/// The outputs of one subscription. Dropping it before it ends aborts the
/// subscription on the host.
#[derive(Debug)]
pub struct ClientSubscription {
    client: Client,
    id: String,
    replies: mpsc::UnboundedReceiver<Reply>,
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
        lock(&self.client.inner.calls).remove(&self.id);
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
        lock(&self.client.inner.calls).remove(&self.id);
        let (tx, rx) = oneshot::channel();
        let tx = wait.then_some(tx);
        self.client
            .send(CALL_ABORTED, &self.id, json!({}), tx)
            .ok()?;
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

/// Moves frames between the transport and the calls until either side ends.
async fn pump<I, S>(
    mut incoming: I,
    mut sink: S,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    calls: Arc<Mutex<HashMap<String, Replies>>>,
) where
    I: Stream<Item = Result<Bytes, String>> + Unpin,
    S: futures::Sink<Bytes> + Unpin,
{
    loop {
        tokio::select! {
            frame = outgoing.recv() => match frame {
                Some((frame, written)) => {
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                    if let Some(written) = written {
                        let _ = written.send(());
                    }
                }
                None => break,
            },
            frame = incoming.next() => {
                let Some(Ok(frame)) = frame else { break };
                if wire::is_chunk(&frame) {
                    let Ok((stream_type, id, data)) = wire::split_chunk(&frame) else { break };
                    if let Some(replies) = lock(&calls).get(&id) {
                        let _ = replies.send(Reply::Chunk(stream_type, data));
                    }
                    continue;
                }
                let Ok(envelope) = serde_json::from_slice::<Value>(&frame) else { break };
                let id = envelope["id"].as_str().unwrap_or_default().to_owned();
                let calls = lock(&calls);
                match calls.get(&id) {
                    Some(replies) => { let _ = replies.send(Reply::Envelope(envelope)); }
                    // A connection-level error ends every call.
                    None if id.is_empty() => {
                        for replies in calls.values() {
                            let _ = replies.send(Reply::Envelope(envelope.clone()));
                        }
                    }
                    None => {}
                }
            }
        }
    }
    // Every call still waiting learns the connection is gone.
    lock(&calls).clear();
}
