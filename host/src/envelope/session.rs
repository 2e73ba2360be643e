//! One connection speaking the envelope protocol, whatever carries it.
//!
//! A connection is two halves. The reader takes envelopes as they arrive and
//! starts each call as a task of its own, so calls are independent: replies
//! interleave and a slow call never holds up a fast one. The writer sends
//! what the calls produce, in the order they produce it. Both share the table
//! of open calls, keyed by the caller's `id`; a frame is written only while
//! its call is still in the table, so once a call is aborted (or its id
//! reused by mistake) nothing more goes out for it, even a frame that was
//! already on its way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::EnvelopeConfig;
use super::wire::{self, BadEnvelope, CallPayload, Incoming};
use crate::dispatch::{CallRequest, Dispatcher, Identity, Origin, new_request_id};
use crate::error::{CallError, ErrorCode};

/// What a transport hands the session: a frame, or why the byte stream
/// cannot go on.
#[derive(Debug)]
pub enum Inbound {
    /// One envelope's bytes.
    Frame(Bytes),
    /// A framing violation (a zero-length or oversized frame): answered with
    /// `INVALID_FRAME`, then the connection is closed.
    Violation(String),
}

/// A frame on its way to the caller.
struct Outbound {
    /// The call it belongs to (`id` and sequence number), or `None` for a
    /// connection-level frame, which is always written.
    call: Option<(String, u64)>,
    bytes: Vec<u8>,
    /// The call's last frame: it leaves the table of open calls.
    last: bool,
    /// Close the connection after writing it.
    close: bool,
}

/// The calls open on one connection.
#[derive(Default)]
struct OpenCalls {
    calls: HashMap<String, (u64, AbortHandle)>,
    next_seq: u64,
}

type Shared = Arc<Mutex<OpenCalls>>;

fn lock(open: &Shared) -> MutexGuard<'_, OpenCalls> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves one connection until the caller closes it, breaks the framing, or
/// stops reading; then aborts every call still open on it.
///
/// `identity` is the caller the transport authenticated when the connection
/// opened, if any. Without one, the first envelope whose `auth_token`
/// resolves to a caller sets it. An envelope's `auth_token` always decides
/// for its own call; calls with no caller at all are anonymous, or
/// `UNAUTHORIZED` where the host takes no anonymous callers.
pub async fn serve<R, W>(
    dispatcher: Dispatcher,
    identity: Option<Identity>,
    config: Arc<EnvelopeConfig>,
    incoming: R,
    outgoing: W,
) where
    R: Stream<Item = Inbound> + Send + Unpin,
    W: Sink<Bytes> + Send + Unpin,
{
    let open = Shared::default();
    let (tx, rx) = mpsc::channel(256);
    let draining = dispatcher.draining();
    let session = Session {
        dispatcher,
        identity,
        config,
        open: open.clone(),
        tx,
    };
    tokio::select! {
        () = session.read(incoming) => {}
        () = write(open.clone(), rx, outgoing, draining) => {}
    }
    let calls = std::mem::take(&mut lock(&open).calls);
    for (_, handle) in calls.into_values() {
        handle.abort();
    }
}

struct Session {
    dispatcher: Dispatcher,
    identity: Option<Identity>,
    config: Arc<EnvelopeConfig>,
    open: Shared,
    tx: mpsc::Sender<Outbound>,
}

impl Session {
    async fn read<R: Stream<Item = Inbound> + Unpin>(mut self, mut incoming: R) {
        while let Some(inbound) = incoming.next().await {
            let bad = match inbound {
                Inbound::Frame(bytes) if bytes.is_empty() => {
                    BadEnvelope::Frame("zero-length frame".into())
                }
                Inbound::Frame(bytes) => match wire::parse(&bytes) {
                    Ok(Incoming::Call { id, payload }) => {
                        self.start(id, payload).await;
                        continue;
                    }
                    Ok(Incoming::Abort { id }) => {
                        self.abort(&id);
                        continue;
                    }
                    Err(bad) => bad,
                },
                Inbound::Violation(message) => BadEnvelope::Frame(message),
            };
            let close = matches!(bad, BadEnvelope::Frame(_));
            tracing::debug!(?bad, "bad envelope");
            self.send_now(bad.to_frame(), close).await;
            if close {
                // Wait for the writer to send the error and end the session.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Starts a call as a task of its own, registered under `id` before it
    /// can produce anything, or answers why not. Waits (and so stops
    /// reading the connection) while the writer is behind.
    async fn start(&mut self, id: String, payload: CallPayload) {
        if let Some(error) = self.try_start(&id, payload) {
            self.send_now(wire::error_frame(&id, &error), false).await;
        }
    }

    fn try_start(&mut self, id: &str, mut payload: CallPayload) -> Option<CallError> {
        let identity = match self.caller(payload.auth_token.take()) {
            Ok(identity) => identity,
            Err(error) => return Some(error),
        };
        let mut open = lock(&self.open);
        if let Some((_, handle)) = open.calls.remove(id) {
            handle.abort();
            return Some(CallError::invalid_input(format!(
                "the id `{id}` is already in use by an open call; both are cancelled"
            )));
        }
        if open.calls.len() >= self.config.max_open_calls {
            return Some(
                CallError::new(
                    ErrorCode::ResourceExhausted,
                    "too many calls open on this connection",
                )
                .with_details(json!({
                    "limit": "max_open_calls",
                    "value": self.config.max_open_calls,
                })),
            );
        }
        open.next_seq += 1;
        let seq = open.next_seq;
        let request = CallRequest {
            request_id: new_request_id(),
            operation: payload.operation_id.clone(),
            deadline: payload.deadline(),
            input: payload.input,
            identity,
            origin: Origin::Wire,
        };
        let call = Call {
            id: id.to_owned(),
            seq,
            tx: self.tx.clone(),
        };
        let task = tokio::spawn(call.run(self.dispatcher.clone(), request));
        open.calls.insert(id.to_owned(), (seq, task.abort_handle()));
        None
    }

    /// Who makes a call whose envelope carries `token`.
    fn caller(&mut self, token: Option<String>) -> Result<Identity, CallError> {
        let Some(token) = token else {
            return match &self.identity {
                Some(identity) => Ok(identity.clone()),
                None => self.dispatcher.authenticate(None),
            };
        };
        let identity = self.dispatcher.authenticate(Some(&token))?;
        if self.identity.is_none() && !identity.is_anonymous() {
            self.identity = Some(identity.clone());
        }
        Ok(identity)
    }

    /// Stops the call with `id`, if it is open: its task is aborted, which
    /// drops its store and interrupts the guest. Unknown ids are ignored.
    fn abort(&self, id: &str) {
        if let Some((_, handle)) = lock(&self.open).calls.remove(id) {
            handle.abort();
        }
    }

    /// Queues a connection-level frame, waiting for room.
    async fn send_now(&self, bytes: Vec<u8>, close: bool) {
        let _ = self
            .tx
            .send(Outbound {
                call: None,
                bytes,
                last: false,
                close,
            })
            .await;
    }
}

/// One call's end of the connection.
struct Call {
    id: String,
    seq: u64,
    tx: mpsc::Sender<Outbound>,
}

impl Call {
    async fn run(self, dispatcher: Dispatcher, request: CallRequest) {
        let op_type = match dispatcher.op_type(&request) {
            Ok(op_type) => op_type,
            Err(error) => return self.fail(&error).await,
        };
        if op_type.is_once() {
            match dispatcher.call(request).await {
                Ok(output) => {
                    self.send(wire::responded_frame(&self.id, &output), true)
                        .await;
                }
                Err(error) => self.fail(&error).await,
            }
            return;
        }
        let mut outputs = match dispatcher.subscribe(request).await {
            Ok(outputs) => outputs,
            Err(error) => return self.fail(&error).await,
        };
        while let Some(item) = outputs.next().await {
            match item {
                Ok(output) => {
                    if !self
                        .send(wire::responded_frame(&self.id, &output), false)
                        .await
                    {
                        return;
                    }
                }
                Err(error) => return self.fail(&error).await,
            }
        }
        self.send(wire::completed_frame(&self.id), true).await;
    }

    async fn fail(&self, error: &CallError) {
        self.send(wire::error_frame(&self.id, error), true).await;
    }

    /// Queues a frame of this call; waits while the writer is behind, which
    /// holds back a subscription's guest. False once the connection is gone.
    async fn send(&self, bytes: Vec<u8>, last: bool) -> bool {
        self.tx
            .send(Outbound {
                call: Some((self.id.clone(), self.seq)),
                bytes,
                last,
                close: false,
            })
            .await
            .is_ok()
    }
}

/// Writes frames in the order they come, skipping those of calls no longer
/// open, until the connection fails, a frame asks to close it, or the host
/// is draining and nothing is left open on this connection.
async fn write<W: Sink<Bytes> + Unpin>(
    open: Shared,
    mut rx: mpsc::Receiver<Outbound>,
    mut sink: W,
    draining: impl Future<Output = ()>,
) {
    let mut draining = std::pin::pin!(draining);
    let mut drained = false;
    loop {
        if drained && rx.is_empty() && lock(&open).calls.is_empty() {
            let _ = sink.close().await;
            return;
        }
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            () = &mut draining, if !drained => {
                drained = true;
                continue;
            }
        };
        let Some(frame) = frame else { return };
        if let Some((id, seq)) = &frame.call {
            let mut open = lock(&open);
            if open.calls.get(id).map(|(live, _)| live) != Some(seq) {
                continue;
            }
            if frame.last {
                open.calls.remove(id);
            }
        }
        if sink.feed(Bytes::from(frame.bytes)).await.is_err() {
            return;
        }
        if (frame.close || rx.is_empty()) && sink.flush().await.is_err() {
            return;
        }
        if frame.close {
            let _ = sink.close().await;
            return;
        }
    }
}
