//! Standard `wasi:http` components: a request in, a response out, through
//! `wasi:http/incoming-handler@0.2`'s `handle` (`docs/wasi-http.md`).
//!
//! Each request gets a fresh instance in a store of its own, with the
//! plugin's limits as for any call: its memory, an instance slot, CPU time
//! (`cpu_ms`, refilled by nothing: a request is one call), and the call's
//! deadline, which bounds the whole exchange, the response body included.
//! The response head is handed back as soon as the guest sets it; its body
//! streams from the guest as it writes, at most `output_bytes` of it. A
//! caller that goes away, before the head or during the body, stops the
//! guest.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::busy::Busy;
use super::invoke::{Invocation, InvokeError, meter_fuel};
use super::limits::LimitHit;
use super::plugin::Plugin;
use super::trap::classify;
use crate::capabilities::invoke::GuestError;

/// The request body a `wasi:http` guest reads.
pub type HttpRequestBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// `body` as a `wasi:http` guest reads it; a body that fails (its client
/// went away, or reset its side) reads as a connection that ended.
pub fn request_body<B>(body: B) -> HttpRequestBody
where
    B: Body<Data = Bytes> + Send + 'static,
{
    use http_body_util::BodyExt;
    body.map_err(|_| wasmtime_wasi_http::Error::ConnectionTerminated)
        .boxed_unsync()
}

/// What a `wasi:http` guest answers: the response, its body streaming as
/// the guest writes it.
pub type HttpResponse = http::Response<HttpResponseBody>;

impl Plugin {
    /// Serves `request` with a fresh instance of this `wasi:http`
    /// component. Resolves once the guest has set the response (or failed
    /// to); the guest goes on writing its body on a task of its own, within
    /// the call's deadline.
    pub async fn serve_http(
        self: &Arc<Self>,
        invocation: &Invocation,
        request: http::Request<HttpRequestBody>,
    ) -> Result<HttpResponse, InvokeError> {
        let Some(indices) = self.http.clone() else {
            return Err(InvokeError::Host(
                "the plugin is not an HTTP component".into(),
            ));
        };
        let cpu_limit = Duration::from_millis(self.limits.cpu_ms);
        let budget = if invocation.deadline <= cpu_limit {
            self.budget("deadline_ms", invocation.deadline)
        } else {
            self.budget("cpu_ms", cpu_limit)
        };
        let mut store = self.new_store(invocation, budget)?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
        let plugin = self.clone();
        let meter = invocation.meter.clone();
        let deadline = invocation.deadline;
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let run = async move {
            let handled = async {
                let instance = plugin.instantiate_instance(&mut store).await?;
                let proxy = indices
                    .load(&mut store, &instance)
                    .map_err(|e| classify(&mut store, e))?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await
                    .map_err(|e| classify(&mut store, e))
            };
            let outcome = match tokio::time::timeout(deadline, handled).await {
                Ok(outcome) => outcome,
                Err(_) => Err(InvokeError::Limit(LimitHit::time("deadline_ms", deadline))),
            };
            meter_fuel(&store, &meter);
            let _ = ended_tx.send(outcome);
        };
        // The guest runs as long as its response is wanted: dropping this
        // (the caller went away before the head, or dropped the body)
        // stops it.
        let task = AbortOnDropHandle::new(tokio::spawn(Busy::new(run, invocation.meter.clone())));
        // The response, or why there is none. When the guest stops, its
        // outcome and the dropped response arrive together: a dropped
        // response is told by the outcome (a trap, its deadline).
        let (mut receiver, mut ended) = (receiver, ended);
        let (set, outcome) = tokio::select! {
            biased;
            answered = &mut receiver => (answered.ok(), None),
            // It returned or stopped: what it set, if anything, is there.
            outcome = &mut ended => (receiver.await.ok(), Some(outcome)),
        };
        let response = match set {
            Some(Ok(response)) => response,
            Some(Err(code)) => return Err(guest_refused(code)),
            None => {
                let outcome = match outcome {
                    Some(outcome) => outcome,
                    None => ended.await,
                };
                return Err(match outcome {
                    Ok(Err(e)) => e,
                    _ => InvokeError::Host("the component set no response".into()),
                });
            }
        };
        let output_bytes = self.limits.output_bytes;
        Ok(response.map(|body| HttpResponseBody {
            body,
            left: output_bytes,
            limit: output_bytes,
            _guest: task,
        }))
    }
}

/// What the guest said instead of a response: `response-outparam.set`
/// with an `error-code`.
fn guest_refused(code: ErrorCode) -> InvokeError {
    InvokeError::Guest(GuestError {
        code: "HTTP_ERROR".into(),
        message: format!("the component answered with an error: {code:?}"),
        details: None,
    })
}

/// A response body as the guest writes it, ended with an error once it
/// has carried `output_bytes`.
pub struct HttpResponseBody {
    body: HyperOutgoingBody,
    left: usize,
    limit: usize,
    /// The guest's task: dropped with the body, which stops the guest.
    _guest: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for HttpResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponseBody")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum HttpBodyError {
    /// The guest wrote more than `output_bytes`.
    #[error("the response body passed the plugin's output_bytes of {0}")]
    TooLarge(usize),
    /// The guest failed while writing it, or ran out of time.
    #[error("the component failed while writing the response body: {0}")]
    Guest(wasmtime_wasi_http::Error),
}

impl Body for HttpResponseBody {
    type Data = Bytes;
    type Error = HttpBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.left {
                        return Poll::Ready(Some(Err(HttpBodyError::TooLarge(this.limit))));
                    }
                    this.left -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpBodyError::Guest(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
