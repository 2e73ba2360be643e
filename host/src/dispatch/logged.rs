//! One log line per call: operation, outcome and duration.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use serde_json::Value;

use super::{CallRequest, OutputStream};
use crate::error::CallError;

/// Logs a call once, when it finishes; a call dropped before it finished is
/// logged as aborted.
pub(super) struct CallLog {
    operation: String,
    request_id: std::sync::Arc<str>,
    started: Instant,
    items: u64,
    done: bool,
}

impl CallLog {
    pub(super) fn start(request: &CallRequest) -> Self {
        Self {
            operation: request.operation.clone(),
            request_id: request.request_id.clone(),
            started: Instant::now(),
            items: 0,
            done: false,
        }
    }

    pub(super) fn finish(&mut self, error: Option<&CallError>) {
        self.done = true;
        let duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (op, request_id, items) = (&self.operation, &*self.request_id, self.items);
        match error {
            None => tracing::info!(op, request_id, status = "ok", items, duration_us, "call"),
            Some(e) => tracing::info!(
                op,
                request_id,
                status = e.code.as_str(),
                items,
                duration_us,
                "call"
            ),
        }
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        if !self.done {
            let duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let (op, request_id, items) = (&self.operation, &*self.request_id, self.items);
            tracing::info!(
                op,
                request_id,
                status = "aborted",
                items,
                duration_us,
                "call"
            );
        }
    }
}

/// A subscription's outputs, logged when the stream ends or is dropped.
pub(super) struct Logged {
    inner: OutputStream,
    log: CallLog,
}

impl Logged {
    pub(super) fn new(inner: OutputStream, log: CallLog) -> Self {
        Self { inner, log }
    }
}

impl Stream for Logged {
    type Item = Result<Value, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.log.done {
            return Poll::Ready(None);
        }
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.log.items += 1,
            Poll::Ready(Some(Err(e))) => self.log.finish(Some(e)),
            Poll::Ready(None) => self.log.finish(None),
            Poll::Pending => {}
        }
        polled
    }
}
