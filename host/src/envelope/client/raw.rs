//! Byte-stream calls from the client: stdin written within the host's
//! credit, stdout and stderr read as they come, then the exit code.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{CALL_COMPLETED, CALL_ERROR, Client, ClientError, ClientSubscription, Reply, Route};
use crate::envelope::wire::{self, RAW_STDERR, RAW_STDIN, RAW_STDOUT, RAW_WINDOW};

/// The most stdin bytes sent in one chunk.
const CHUNK_BYTES: usize = 32 << 10;

/// What a byte-stream call sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// Bytes of its stdout.
    Stdout(Bytes),
    /// Bytes of its stderr.
    Stderr(Bytes),
    /// It ended with this exit code; nothing follows.
    Exit(u8),
}

/// A running byte-stream call: read its output with [`ClientRaw::next`],
/// write its stdin with the [`RawInput`] from [`ClientRaw::input`].
/// Dropping it before it ends aborts the call on the host.
#[derive(Debug)]
pub struct ClientRaw {
    call: ClientSubscription,
    input: RawInput,
}

/// The stdin of a byte-stream call. Cheap to clone; every clone writes to
/// the same stdin.
#[derive(Debug, Clone)]
pub struct RawInput {
    route: Route,
    id: String,
    /// Bytes the host has granted and this side has not sent.
    credit: Arc<Semaphore>,
}

impl Client {
    /// Starts byte-stream operation `operation` with its arguments `input`.
    pub async fn run_raw(&self, operation: &str, input: Value) -> Result<ClientRaw, ClientError> {
        let call = self.start_with(json!({
            "operationId": operation,
            "input": input,
            "carriage": "raw",
        }))?;
        let input = RawInput {
            route: call.route.clone(),
            id: call.id.clone(),
            credit: Arc::new(Semaphore::new(RAW_WINDOW)),
        };
        Ok(ClientRaw { call, input })
    }
}

impl ClientRaw {
    /// Where its stdin goes.
    pub fn input(&self) -> RawInput {
        self.input.clone()
    }

    /// The next of its outputs; `None` after [`RawEvent::Exit`] or an error.
    pub async fn next(&mut self) -> Option<Result<RawEvent, ClientError>> {
        if self.call.done {
            return None;
        }
        loop {
            let event = match self.call.replies.recv().await {
                None => Err(ClientError::Closed),
                Some(Reply::Chunk(RAW_STDOUT, data)) if data.is_empty() => continue,
                Some(Reply::Chunk(RAW_STDOUT, data)) => return Some(Ok(RawEvent::Stdout(data))),
                Some(Reply::Chunk(RAW_STDERR, data)) => return Some(Ok(RawEvent::Stderr(data))),
                Some(Reply::Chunk(other, _)) => Err(ClientError::Protocol(format!(
                    "a raw chunk of stream type {other} from the host"
                ))),
                Some(Reply::Envelope(envelope)) => match envelope["type"].as_str() {
                    Some(wire::CALL_CREDIT) => {
                        let bytes = envelope["payload"]["bytes"].as_u64().unwrap_or(0);
                        let bytes = usize::try_from(bytes).unwrap_or(0).min(RAW_WINDOW);
                        self.input.credit.add_permits(bytes);
                        continue;
                    }
                    Some(CALL_COMPLETED) => {
                        match envelope["payload"]["exit_code"].as_u64().map(u8::try_from) {
                            Some(Ok(code)) => Ok(RawEvent::Exit(code)),
                            _ => Err(ClientError::Protocol(format!(
                                "`call.completed` without an exit code: {envelope}"
                            ))),
                        }
                    }
                    Some(CALL_ERROR) => Err(serde_json::from_value(envelope["payload"].clone())
                        .map_or_else(|e| ClientError::Protocol(e.to_string()), ClientError::Call)),
                    _ => Err(ClientError::Protocol(format!(
                        "unexpected envelope {envelope}"
                    ))),
                },
            };
            self.call.finish();
            // Nothing more is sent once the call is over.
            self.input.credit.close();
            return Some(event);
        }
    }
}

impl RawInput {
    /// Sends `bytes` to the operation's stdin, waiting for credit from the
    /// host as the operation reads.
    pub async fn write(&self, bytes: &[u8]) -> Result<(), ClientError> {
        for chunk in bytes.chunks(CHUNK_BYTES) {
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let permit = self
                .credit
                .acquire_many(len)
                .await
                .map_err(|_| ClientError::Closed)?;
            // Spent: the host grants it back as the operation reads.
            permit.forget();
            self.send(chunk)?;
        }
        Ok(())
    }

    /// Closes the operation's stdin.
    pub fn close(&self) -> Result<(), ClientError> {
        self.send(&[])
    }

    fn send(&self, data: &[u8]) -> Result<(), ClientError> {
        let frame = wire::chunk_frame(&self.id, RAW_STDIN, data);
        self.route.send(Bytes::from(frame), None)
    }
}
