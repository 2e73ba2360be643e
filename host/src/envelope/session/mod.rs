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
//!
//! What a peer can make the connection hold is bounded:
//! - frames queued for the peer are counted in bytes (the outbox); past
//!   `max_queued_bytes` the calls wait to queue more (a subscription's guest
//!   is not read further) and the reader stops taking envelopes, until the
//!   peer reads. A peer that reads nothing is cut off by the transport's
//!   write timeout;
//! - a reply larger than `max_frame_bytes` fails its own call with
//!   `RESOURCE_EXHAUSTED`, never the connection;
//! - until the connection has an authenticated caller, frames are held to
//!   `max_unauthenticated_frame_bytes` ([`FrameLimit`]);
//! - a connection with no open call that sends nothing for `idle_timeout` is
//!   told so and closed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::EnvelopeConfig;
use super::outbox::{Outbound, Outbox};
use super::wire::{self, BadEnvelope, CallPayload, Carriage, Expect, Incoming};
use crate::call::{CallError, ErrorCode, OpenConnection};
use crate::call::{CallRequest, Identity, Origin, TraceParent, Transport, new_request_id};
use crate::dispatch::Dispatcher;

/// What a transport hands the session: a frame, or why the byte stream
/// cannot go on.
#[derive(Debug)]
pub enum Inbound {
    /// One envelope's bytes.
    Frame(Bytes),
    /// A framing violation (a zero-length or oversized frame, one not
    /// finished in time): answered with `INVALID_FRAME`, then the connection
    /// is closed.
    Violation(String),
}

/// The largest frame a connection takes now: small until the connection
/// has an authenticated caller. Shared by the session, which raises it, and
/// the transport, which refuses a longer frame before reading it.
#[derive(Debug, Clone)]
pub struct FrameLimit(Arc<AtomicUsize>);

impl FrameLimit {
    /// A limit of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(AtomicUsize::new(bytes)))
    }

    /// The limit of a connection that starts with `identity` (the caller
    /// its transport authenticated, if any).
    pub fn for_connection(config: &EnvelopeConfig, identity: Option<&Identity>) -> Self {
        Self::new(match identity {
            Some(identity) if !identity.is_anonymous() => config.max_frame_bytes,
            _ => config
                .max_unauthenticated_frame_bytes
                .min(config.max_frame_bytes),
        })
    }

    /// The largest frame taken now, in bytes.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn raise(&self, to: usize) {
        self.0.fetch_max(to, Ordering::Relaxed);
    }
}

mod raw;

/// The calls open on one connection, and when it last did anything.
struct OpenCalls {
    calls: HashMap<String, OpenCall>,
    next_seq: u64,
    last_active: Instant,
}

/// One call open on a connection.
struct OpenCall {
    /// Tells this call from an earlier one under the same id.
    seq: u64,
    handle: AbortHandle,
    /// Where the caller's raw chunks go, for a byte-stream call whose
    /// stdin is open.
    stdin: Option<raw::StdinSender>,
}

type Shared = Arc<Mutex<OpenCalls>>;

fn lock(open: &Shared) -> MutexGuard<'_, OpenCalls> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves one connection until the caller closes it, breaks the framing, or
/// idles; then aborts every call still open on it.
///
/// `identity` is the caller the transport authenticated when the connection
/// opened, if any. Without one, the first envelope whose `auth_token`
/// resolves to a caller sets it, and raises `limit` to `max_frame_bytes`. An
/// envelope's `auth_token` always decides for its own call; calls with no
/// caller at all are anonymous, or `UNAUTHORIZED` where the host takes no
/// anonymous callers.
pub async fn serve<R, W>(
    dispatcher: Dispatcher,
    transport: Transport,
    identity: Option<Identity>,
    config: Arc<EnvelopeConfig>,
    limit: FrameLimit,
    incoming: R,
    outgoing: W,
) where
    R: Stream<Item = Inbound> + Send + Unpin,
    W: Sink<Bytes> + Send + Unpin,
{
    let _counted = OpenConnection::new(dispatcher.observer().clone(), transport);
    let open = Arc::new(Mutex::new(OpenCalls {
        calls: HashMap::new(),
        next_seq: 0,
        last_active: Instant::now(),
    }));
    let (outbox, rx) = Outbox::new(config.max_queued_bytes);
    let draining = dispatcher.draining();
    let session = Session {
        dispatcher,
        transport,
        identity,
        config,
        limit,
        open: open.clone(),
        outbox,
    };
    tokio::select! {
        () = session.read(incoming) => {}
        () = write(open.clone(), rx, outgoing, draining) => {}
    }
    let calls = std::mem::take(&mut lock(&open).calls);
    for call in calls.into_values() {
        call.handle.abort();
    }
}

struct Session {
    dispatcher: Dispatcher,
    transport: Transport,
    identity: Option<Identity>,
    config: Arc<EnvelopeConfig>,
    limit: FrameLimit,
    open: Shared,
    outbox: Outbox,
}

impl Session {
    async fn read<R: Stream<Item = Inbound> + Unpin>(mut self, mut incoming: R) {
        loop {
            // A peer that does not read its replies is not read either.
            self.outbox.has_room().await;
            let inbound = tokio::select! {
                inbound = incoming.next() => inbound,
                () = idle(&self.open, self.config.idle_timeout) => {
                    let error = CallError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the connection was idle for {} ms and is closed",
                            self.config.idle_timeout.as_millis()
                        ),
                    )
                    .with_details(json!({
                        "limit": "idle_timeout_ms",
                        "value": u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX),
                    }));
                    return self.close_with(wire::error_frame("", &error)).await;
                }
            };
            let Some(inbound) = inbound else { return };
            lock(&self.open).last_active = Instant::now();
            let bad = match inbound {
                Inbound::Frame(bytes) if bytes.is_empty() => {
                    BadEnvelope::Frame("zero-length frame".into())
                }
                Inbound::Frame(bytes) if bytes.len() > self.limit.get() => {
                    BadEnvelope::Frame(self.too_long(bytes.len()))
                }
                Inbound::Frame(bytes) if wire::is_chunk(&bytes) => {
                    match wire::parse_chunk(&bytes) {
                        Ok(Incoming::Chunk { id, data, .. }) => {
                            self.stdin(&id, data).await;
                            continue;
                        }
                        Ok(_) => continue,
                        Err(bad) => bad,
                    }
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
                    Ok(Incoming::Chunk { .. }) => continue,
                    Err(bad) => bad,
                },
                Inbound::Violation(message) => BadEnvelope::Frame(message),
            };
            tracing::debug!(?bad, "bad envelope");
            if matches!(bad, BadEnvelope::Frame(_)) {
                return self.close_with(bad.to_frame()).await;
            }
            self.outbox.push(None, bad.to_frame(), false, false).await;
        }
    }

    /// Sends a last connection-level frame and waits for the writer to send
    /// it and end the session.
    async fn close_with(&self, frame: Vec<u8>) {
        self.outbox.push(None, frame, false, true).await;
        std::future::pending::<()>().await;
    }

    /// Starts a call as a task of its own, registered under `id` before it
    /// can produce anything, or answers why not.
    async fn start(&mut self, id: String, payload: CallPayload) {
        if let Some(error) = self.try_start(&id, payload) {
            self.outbox
                .push(None, wire::error_frame(&id, &error), false, false)
                .await;
        }
    }

    fn try_start(&mut self, id: &str, mut payload: CallPayload) -> Option<CallError> {
        let identity = match self.caller(payload.auth_token.take()) {
            Ok(identity) => identity,
            Err(error) => {
                tracing::info!(
                    op = payload.operation_id,
                    status = error.code.as_str(),
                    transport = "envelope",
                    "call refused: no valid bearer token"
                );
                return Some(error);
            }
        };
        let raw = payload.carriage == Carriage::Raw;
        if raw && id.len() > wire::MAX_RAW_ID_BYTES {
            return Some(CallError::invalid_input(format!(
                "the id of a raw call is at most {} bytes",
                wire::MAX_RAW_ID_BYTES
            )));
        }
        let mut open = lock(&self.open);
        if let Some(call) = open.calls.remove(id) {
            call.handle.abort();
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
            origin: Origin::Wire(self.transport),
            trace: payload
                .traceparent
                .as_deref()
                .and_then(|parent| TraceParent::parse(parent, payload.tracestate.as_deref())),
            attachment: None,
        };
        let call = Call {
            id: id.to_owned(),
            expect: payload.expect,
            seq,
            outbox: self.outbox.clone(),
            max_frame_bytes: self.config.max_frame_bytes,
        };
        let (task, stdin) = if raw {
            let (sender, receiver) = raw::stdin();
            let task = tokio::spawn(call.run_raw(self.dispatcher.clone(), request, receiver));
            (task, Some(sender))
        } else {
            (
                tokio::spawn(call.run(self.dispatcher.clone(), request)),
                None,
            )
        };
        let handle = task.abort_handle();
        open.calls
            .insert(id.to_owned(), OpenCall { seq, handle, stdin });
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
            self.limit.raise(self.config.max_frame_bytes);
        }
        Ok(identity)
    }

    /// Why a frame of `len` bytes is refused.
    fn too_long(&self, len: usize) -> String {
        let limit = self.limit.get();
        if limit < self.config.max_frame_bytes {
            format!(
                "a frame of {len} bytes is longer than the {limit} bytes a connection takes before it is authenticated"
            )
        } else {
            format!("a frame of {len} bytes is longer than the limit of {limit} bytes")
        }
    }

    /// Stops the call with `id`, if it is open: its task is aborted, which
    /// drops its store and interrupts the guest. Unknown ids are ignored.
    fn abort(&self, id: &str) {
        if let Some(call) = lock(&self.open).calls.remove(id) {
            call.handle.abort();
        }
    }

    /// Hands a raw chunk to the byte-stream call `id`: an empty one closes
    /// its stdin. A chunk for an id with no stdin open (no such call, a
    /// call that is not a byte stream, stdin already closed) is ignored, as
    /// an abort of an unknown id is; one past the credit the host gave ends
    /// its call with `RESOURCE_EXHAUSTED`.
    async fn stdin(&self, id: &str, data: bytes::Bytes) {
        let refused = {
            let mut open = lock(&self.open);
            let Some(call) = open.calls.get_mut(id) else {
                return;
            };
            let Some(stdin) = &call.stdin else {
                return;
            };
            if data.is_empty() {
                call.stdin = None;
                return;
            }
            match stdin.send(data) {
                Ok(()) => return,
                Err(error) => {
                    if let Some(call) = open.calls.remove(id) {
                        call.handle.abort();
                    }
                    error
                }
            }
        };
        self.outbox
            .push(None, wire::error_frame(id, &refused), false, false)
            .await;
    }
}

/// Resolves once the connection has had no open call and no traffic for
/// `timeout`.
async fn idle(open: &Shared, timeout: std::time::Duration) {
    loop {
        let (busy, since) = {
            let open = lock(open);
            (!open.calls.is_empty(), open.last_active)
        };
        let quiet_until = since + timeout;
        if !busy && Instant::now() >= quiet_until {
            return;
        }
        let wake = if busy {
            Instant::now() + timeout
        } else {
            quiet_until
        };
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// One call's end of the connection.
struct Call {
    id: String,
    /// The kind the caller asked for, if it said.
    expect: Option<Expect>,
    seq: u64,
    outbox: Outbox,
    max_frame_bytes: usize,
}

/// What became of a frame a call sent.
#[derive(PartialEq)]
enum Sent {
    /// Queued; the call goes on.
    Queued,
    /// The call is over: its frame was too long and an error went instead,
    /// or the connection is gone.
    Over,
}

impl Call {
    async fn run(self, dispatcher: Dispatcher, request: CallRequest) {
        // A caller that says which kind it means gets `INVALID_OPERATION_TYPE`
        // from the dispatcher for the other kind; one that does not gets the
        // reply sequence of the operation's kind.
        let once = match self.expect {
            Some(expect) => expect == Expect::Once,
            None => match dispatcher.op_type(&request).await {
                Ok(op_type) => op_type.is_once(),
                Err(error) => return self.fail(&error).await,
            },
        };
        if once {
            let called = dispatcher.call_metered(request).await;
            match called.result {
                Ok(output) => {
                    let cost = called.meter.receipt();
                    let frame = wire::responded_frame(&self.id, &output, Some(&cost));
                    self.send(frame, true).await;
                }
                Err(error) => self.fail(&error).await,
            }
            return;
        }
        let subscribed = dispatcher.subscribe_metered(request).await;
        let meter = subscribed.meter;
        let mut outputs = match subscribed.result {
            Ok(outputs) => outputs,
            Err(error) => return self.fail(&error).await,
        };
        while let Some(item) = outputs.next().await {
            let sent = match item {
                Ok(output) => {
                    self.send(wire::responded_frame(&self.id, &output, None), false)
                        .await
                }
                Err(error) => return self.fail(&error).await,
            };
            if sent == Sent::Over {
                return;
            }
        }
        self.send(wire::completed_frame(&self.id, &meter.receipt()), true)
            .await;
    }

    async fn fail(&self, error: &CallError) {
        self.send(wire::error_frame(&self.id, error), true).await;
    }

    /// Queues a frame of this call; waits while the outbox is full, which
    /// holds back a subscription's guest. A frame longer than the
    /// connection's limit is replaced by an error that ends the call.
    async fn send(&self, bytes: Vec<u8>, last: bool) -> Sent {
        let (bytes, last) = if bytes.len() > self.max_frame_bytes {
            let error = CallError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "the reply of {} bytes is longer than the connection's frame limit",
                    bytes.len()
                ),
            )
            .with_details(json!({"limit": "max_frame_bytes", "value": self.max_frame_bytes}));
            (wire::error_frame(&self.id, &error), true)
        } else {
            (bytes, last)
        };
        let call = Some((self.id.clone(), self.seq));
        if self.outbox.push(call, bytes, last, false).await && !last {
            Sent::Queued
        } else {
            Sent::Over
        }
    }
}

/// Writes frames in the order they come, skipping those of calls no longer
/// open, until the connection fails, a frame asks to close it, or the host
/// is draining and nothing is left open on this connection.
async fn write<W: Sink<Bytes> + Unpin>(
    open: Shared,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
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
        {
            let mut open = lock(&open);
            open.last_active = Instant::now();
            if let Some((id, seq)) = &frame.call {
                if open.calls.get(id).map(|call| &call.seq) != Some(seq) {
                    continue;
                }
                if frame.last {
                    open.calls.remove(id);
                }
            }
        }
        let Outbound { bytes, close, .. } = frame;
        if sink.feed(Bytes::from(bytes)).await.is_err() {
            return;
        }
        if (close || rx.is_empty()) && sink.flush().await.is_err() {
            return;
        }
        if close {
            let _ = sink.close().await;
            return;
        }
    }
}
