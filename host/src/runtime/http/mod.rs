//! Standard `wasi:http` components: a request in, a response out
//! (`docs/wasi-http.md`). Two generations of the interface are served:
//! `wasi:http/incoming-handler@0.2.x` (WASIp2, [`p2`]) and
//! `wasi:http/handler@0.3.x` (WASIp3, [`p3`]).
//!
//! Each request gets the plugin's limits as for any call: its memory, an
//! instance slot, CPU time (`cpu_ms`, refilled by nothing: a request is one
//! call; [`shared`] says how an instance shared by several requests
//! budgets), and the call's deadline, which bounds the whole exchange, the
//! response body included. The response head is handed back as soon as
//! the guest sets it; its body streams from the guest as it writes, at most
//! `output_bytes` of it. A caller that goes away, before the head or during
//! the body, stops the guest.

mod p2;
mod p3;
mod shared;

pub(crate) use shared::Shared;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;
use wasmtime_wasi_http::p3::bindings::ServiceIndices;

use super::invoke::{Invocation, InvokeError};
use super::plugin::Plugin;
use super::reuse::ReuseConfig;
use super::state::CpuBudget;
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

/// The handler a standard HTTP component exports, found when it loads.
#[derive(Clone)]
pub(crate) enum HttpExport {
    /// `wasi:http/incoming-handler@0.2.x`: one request per instance.
    P2(ProxyIndices),
    /// `wasi:http/handler@0.3.x`: an async `handle`, which may serve
    /// several requests in one instance, as `Shared` ones do when the
    /// operator allows reuse.
    P3(ServiceIndices, Option<Arc<Shared>>),
}

impl HttpExport {
    /// The handler `pre` exports, if it is a standard HTTP component; a
    /// WASIp3 one shares its instances when the operator allows `reuse`.
    pub(crate) fn find(
        pre: &wasmtime::component::InstancePre<super::StoreState>,
        reuse: Option<&ReuseConfig>,
    ) -> Option<Self> {
        if let Ok(p3) = ServiceIndices::new(pre) {
            let shared = reuse.map(|config| Arc::new(Shared::new(config.clone())));
            return Some(Self::P3(p3, shared));
        }
        ProxyIndices::new(pre).ok().map(Self::P2)
    }
}

impl Plugin {
    /// Serves `request` with this `wasi:http` component. Resolves once the
    /// guest has set the response (or failed to); the guest goes on writing
    /// its body on a task of its own, within the call's deadline.
    pub async fn serve_http(
        self: &Arc<Self>,
        invocation: &Invocation,
        request: http::Request<HttpRequestBody>,
    ) -> Result<HttpResponse, InvokeError> {
        match self.http.clone() {
            Some(HttpExport::P2(indices)) => self.serve_p2(indices, invocation, request).await,
            Some(HttpExport::P3(indices, shared)) => {
                self.serve_p3(indices, shared, invocation, request).await
            }
            None => Err(InvokeError::Host(
                "the plugin is not an HTTP component".into(),
            )),
        }
    }

    /// A request's CPU budget: `cpu_ms`, or its deadline when that is
    /// sooner.
    pub(super) fn request_budget(&self, invocation: &Invocation) -> CpuBudget {
        let cpu_limit = Duration::from_millis(self.limits.cpu_ms);
        if invocation.deadline <= cpu_limit {
            self.budget("deadline_ms", invocation.deadline)
        } else {
            self.budget("cpu_ms", cpu_limit)
        }
    }
}

/// What the guest answered instead of a response: an `error-code`.
fn guest_refused(code: impl std::fmt::Debug) -> InvokeError {
    InvokeError::Guest(GuestError {
        code: "HTTP_ERROR".into(),
        message: format!("the component answered with an error: {code:?}"),
        details: None,
    })
}

/// A response body as the guest writes it, ended with an error once it
/// has carried `output_bytes`.
pub struct HttpResponseBody {
    body: wasmtime_wasi_http::WasiBody,
    left: usize,
    limit: usize,
    /// How the guest's run ended, once it has: a body that stops because
    /// the guest failed (a trap, its deadline) ends with that error rather
    /// than as if it were whole. `None` where the body tells it itself.
    outcome: Option<oneshot::Receiver<Result<(), InvokeError>>>,
    /// Dropped when the body ends or is dropped: the guest's run need not
    /// wait for it any longer.
    done: Option<oneshot::Sender<()>>,
    /// The guest's task, when the request has one of its own: dropped
    /// with the body, which stops the guest.
    _guest: Option<AbortOnDropHandle<()>>,
}

impl HttpResponseBody {
    fn new(
        body: wasmtime_wasi_http::WasiBody,
        limit: usize,
        guest: Option<AbortOnDropHandle<()>>,
    ) -> Self {
        Self {
            body,
            left: limit,
            limit,
            outcome: None,
            done: None,
            _guest: guest,
        }
    }

    /// A body whose end is told by the guest's run: `done` is dropped when
    /// the body ends, after which `outcome` says whether the run failed.
    fn told_by(
        mut self,
        done: oneshot::Sender<()>,
        outcome: oneshot::Receiver<Result<(), InvokeError>>,
    ) -> Self {
        self.done = Some(done);
        self.outcome = Some(outcome);
        self
    }
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
    /// The guest's run ended (a trap, a limit) before its body did.
    #[error("the component stopped before its response body ended: {0}")]
    Stopped(InvokeError),
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
            Poll::Ready(None) => {
                // The guest's side closed: because it finished, or because
                // its run was stopped. Its run, no longer held up by this
                // body, says which.
                this.done = None;
                let Some(outcome) = this.outcome.as_mut() else {
                    return Poll::Ready(None);
                };
                let ended = std::task::ready!(Pin::new(outcome).poll(cx));
                this.outcome = None;
                match ended {
                    Ok(Err(e)) => Poll::Ready(Some(Err(HttpBodyError::Stopped(e)))),
                    _ => Poll::Ready(None),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.outcome.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
