//! Where a call's frames go and its replies come from.
//!
//! Over TCP, TLS and WebSocket every call of a [`Client`](super::Client)
//! shares its one connection: a pump reads everything that arrives and
//! sorts it by call id, buffering what a call has not read yet. Over QUIC
//! JSON calls share one stream the same way, and each byte-stream call
//! opens a bidirectional stream of its own, as alknet has it: its replies
//! wait in a channel of a few frames, and past that the stream is not
//! read, so QUIC's flow control holds that call back on the host, and only
//! that call. (A stream for every JSON call too cost a third of the calls
//! per second: `docs/performance.md`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::ClientError;
use crate::envelope::dial::{self, Incoming, Outgoing as Sink};
use crate::envelope::wire;

/// What arrives for one call: an envelope, or a raw chunk of a
/// byte-stream call (its stream type and bytes).
#[derive(Debug)]
pub(super) enum Reply {
    Envelope(Value),
    Chunk(u8, Bytes),
}

/// A frame to send, and who to tell once it is written.
type Outgoing = (Bytes, Option<oneshot::Sender<()>>);

/// The calls sharing a connection, by id.
type Calls = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>>;

/// Frames of a call's own stream its reader has not taken yet.
const STREAM_REPLIES: usize = 16;

fn lock(calls: &Calls) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Reply>>> {
    calls.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The way to the host for one call, or for all calls of a connection.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Route {
    out: mpsc::UnboundedSender<Outgoing>,
    /// The calls sharing the connection; `None` for a stream of one call.
    calls: Option<Calls>,
}

/// The replies of one call, as they arrive.
#[derive(Debug)]
pub(super) enum Replies {
    /// Sorted off a shared connection.
    Shared(mpsc::UnboundedReceiver<Reply>),
    /// Off the call's own stream.
    Own(mpsc::Receiver<Reply>),
}

impl Replies {
    pub(super) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        match self {
            Self::Shared(rx) => rx.poll_recv(cx),
            Self::Own(rx) => rx.poll_recv(cx),
        }
    }

    pub(super) async fn recv(&mut self) -> Option<Reply> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Route {
    /// A connection shared by every call, pumped on a task of its own.
    pub(super) fn shared(incoming: Incoming, sink: Sink) -> Self {
        let calls = Calls::default();
        let (out, outgoing) = mpsc::unbounded_channel();
        tokio::spawn(pump(incoming, sink, outgoing, calls.clone()));
        Self {
            out,
            calls: Some(calls),
        }
    }

    /// A stream of its own on `connection` for one call; what is sent
    /// before it has opened waits for it. If it cannot open, the call's
    /// replies end at once.
    pub(super) fn own_stream(connection: quinn::Connection) -> (Self, Replies) {
        let (out, outgoing) = mpsc::unbounded_channel();
        let (replies, rx) = mpsc::channel(STREAM_REPLIES);
        tokio::spawn(async move {
            if let Ok((incoming, sink)) = dial::open_stream(&connection).await {
                stream_pump(incoming, sink, outgoing, replies).await;
            }
        });
        (Self { out, calls: None }, Replies::Own(rx))
    }

    /// Where the replies of call `id` will arrive, on a shared connection.
    pub(super) fn register(&self, id: &str) -> Replies {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(calls) = &self.calls {
            lock(calls).insert(id.to_owned(), tx);
        }
        Replies::Shared(rx)
    }

    /// Call `id` has ended: nothing more is sorted to it.
    pub(super) fn forget(&self, id: &str) {
        if let Some(calls) = &self.calls {
            lock(calls).remove(id);
        }
    }

    /// Queues `frame`; `written` is told once it is on the wire.
    pub(super) fn send(
        &self,
        frame: Bytes,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), ClientError> {
        self.out
            .send((frame, written))
            .map_err(|_| ClientError::Closed)
    }
}

/// What one frame from the host is.
fn reply(frame: &Bytes) -> Option<Reply> {
    if wire::is_chunk(frame) {
        let (stream_type, _, data) = wire::split_chunk(frame).ok()?;
        return Some(Reply::Chunk(stream_type, data));
    }
    serde_json::from_slice(frame).ok().map(Reply::Envelope)
}

/// Sends what is queued until the route's last clone is gone.
async fn write(mut outgoing: mpsc::UnboundedReceiver<Outgoing>, sink: &mut Sink) {
    while let Some((frame, written)) = outgoing.recv().await {
        if sink.send(frame).await.is_err() {
            return;
        }
        if let Some(written) = written {
            let _ = written.send(());
        }
    }
}

/// Moves one call's frames over its own stream: writes while there is
/// anything to send, reads while its reader takes what arrives. The
/// stream is finished once both are done.
async fn stream_pump(
    mut incoming: Incoming,
    mut sink: Sink,
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    replies: mpsc::Sender<Reply>,
) {
    let reading = async move {
        while let Some(Ok(frame)) = incoming.next().await {
            let Some(reply) = reply(&frame) else { break };
            if replies.send(reply).await.is_err() {
                break;
            }
        }
    };
    let writing = async {
        write(outgoing, &mut sink).await;
        let _ = sink.close().await;
    };
    tokio::join!(reading, writing);
}

/// Moves frames between a shared connection and its calls until either
/// side ends.
async fn pump(
    mut incoming: Incoming,
    mut sink: Sink,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    calls: Calls,
) {
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
