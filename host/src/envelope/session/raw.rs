//! Byte-stream calls on an envelope connection (`carriage: "raw"`).
//!
//! After `call.requested`, the caller sends raw chunks of stdin and the
//! host raw chunks of stdout and stderr, each `[stream_type][id length][id]
//! [bytes]` (`wire::chunk_frame`), among the JSON envelopes of the
//! connection's other calls. Neither side may hold up the connection:
//! - the host's chunks go through the connection's outbox, so a caller that
//!   does not read holds back the operation's output, as it holds back a
//!   subscription's;
//! - the caller may send [`wire::RAW_WINDOW`] bytes of stdin ahead of what
//!   the operation has read; the host grants more with `call.credit` as the
//!   operation reads. A caller past its credit has its call ended with
//!   `RESOURCE_EXHAUSTED`; the connection and its other calls go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::{Call, Sent};
use crate::call::{CallError, CallRequest, ErrorCode};
use crate::dispatch::Dispatcher;
use crate::envelope::wire::{self, RAW_STDERR, RAW_STDOUT, RAW_WINDOW};
use crate::runtime::RawOutput;

/// Credit is granted once the operation has read this much since the last
/// grant. A caller that waits for it has at least three quarters of the
/// window sent and unread, which the operation reads on, so a grant always
/// comes.
const CREDIT_STEP: usize = RAW_WINDOW / 4;

/// The session's end of a byte-stream call's stdin.
pub(super) struct StdinSender {
    chunks: mpsc::UnboundedSender<Bytes>,
    /// Bytes sent that the operation has not read yet.
    ahead: Arc<AtomicUsize>,
}

/// The call's end of its stdin.
pub(super) struct StdinReceiver {
    chunks: mpsc::UnboundedReceiver<Bytes>,
    ahead: Arc<AtomicUsize>,
}

/// A byte-stream call's stdin: what the session sends, the call reads.
pub(super) fn stdin() -> (StdinSender, StdinReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ahead = Arc::new(AtomicUsize::new(0));
    let sender = StdinSender {
        chunks: tx,
        ahead: ahead.clone(),
    };
    (sender, StdinReceiver { chunks: rx, ahead })
}

impl StdinSender {
    /// Queues `data` for the operation, within the caller's credit: what
    /// is queued is at most [`RAW_WINDOW`] bytes, whatever the caller sends.
    pub(super) fn send(&self, data: Bytes) -> Result<(), CallError> {
        let ahead = self.ahead.fetch_add(data.len(), Ordering::Relaxed) + data.len();
        if ahead > RAW_WINDOW {
            return Err(CallError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "more stdin was sent than the host granted ({RAW_WINDOW} bytes ahead of what the operation read; wait for `call.credit`)"
                ),
            )
            .with_details(json!({"limit": "raw_window_bytes", "value": RAW_WINDOW})));
        }
        // The call has ended when nobody receives: its chunks go nowhere.
        let _ = self.chunks.send(data);
        Ok(())
    }
}

impl Call {
    /// Runs a byte-stream call: its stdin from the caller's chunks, its
    /// output as chunks, then `call.completed` with its exit code, or
    /// `call.error`.
    pub(super) async fn run_raw(
        self,
        dispatcher: Dispatcher,
        request: CallRequest,
        stdin: StdinReceiver,
    ) {
        let (read_tx, mut read_rx) = mpsc::unbounded_channel::<usize>();
        let StdinReceiver { chunks, ahead } = stdin;
        let chunks = futures::stream::unfold(chunks, |mut chunks| async move {
            chunks.recv().await.map(|chunk| (chunk, chunks))
        })
        .inspect(move |chunk| {
            // Read by the operation: no longer ahead, and owed as credit.
            ahead.fetch_sub(chunk.len(), Ordering::Relaxed);
            let _ = read_tx.send(chunk.len());
        })
        .boxed();
        let started = dispatcher.run_raw_metered(request, chunks).await;
        let meter = started.meter;
        let mut outputs = match started.result {
            Ok(outputs) => outputs,
            Err(error) => return self.fail(&error).await,
        };
        let mut owed = 0;
        let mut reading = true;
        loop {
            let output = tokio::select! {
                read = read_rx.recv(), if reading => {
                    let Some(read) = read else {
                        // The operation's stdin is gone: nothing more is owed.
                        reading = false;
                        continue;
                    };
                    owed += read;
                    if owed >= CREDIT_STEP {
                        let credit = wire::credit_frame(&self.id, std::mem::take(&mut owed));
                        if self.send(credit, false).await == Sent::Over {
                            return;
                        }
                    }
                    continue;
                }
                output = outputs.next() => output,
            };
            let sent = match output {
                Some(Ok(RawOutput::Stdout(bytes))) => {
                    self.send(wire::chunk_frame(&self.id, RAW_STDOUT, &bytes), false)
                        .await
                }
                Some(Ok(RawOutput::Stderr(bytes))) => {
                    self.send(wire::chunk_frame(&self.id, RAW_STDERR, &bytes), false)
                        .await
                }
                Some(Ok(RawOutput::Exit(code))) => {
                    // alknet's "drained": an empty stdout chunk, then the end.
                    let drained = wire::chunk_frame(&self.id, RAW_STDOUT, &[]);
                    if self.send(drained, false).await == Sent::Queued {
                        let done = wire::exited_frame(&self.id, code, &meter.receipt());
                        self.send(done, true).await;
                    }
                    return;
                }
                Some(Err(error)) => return self.fail(&error).await,
                None => return self.fail(&CallError::internal()).await,
            };
            if sent == Sent::Over {
                return;
            }
        }
    }
}
