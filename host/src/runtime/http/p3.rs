//! `wasi:http/handler@0.3.x`: an async `handle(request) -> response`, the
//! body a `stream<u8>` the guest goes on writing after it returns.
//!
//! The store runs (`run_concurrent`) for as long as the response body is
//! wanted: until the guest's side of it ends, the caller drops it, or the
//! deadline passes. Only then is the guest's run over, and a body cut short
//! by a trap or a limit ends with that error rather than as if whole.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::p3::Request;
use wasmtime_wasi_http::p3::bindings::ServiceIndices;
use wasmtime_wasi_http::{WasiHttpHooks, WasiHttpView};

use super::shared::Shared;
use super::{HttpRequestBody, HttpResponse, HttpResponseBody, guest_refused};
use crate::runtime::busy::Busy;
use crate::runtime::invoke::{Invocation, InvokeError, meter_fuel};
use crate::runtime::limits::LimitHit;
use crate::runtime::plugin::Plugin;
use crate::runtime::trap::classify;

/// The response as the host sends it on.
pub(super) type WasiResponse = http::Response<wasmtime_wasi_http::WasiBody>;

impl Plugin {
    /// Serves `request` on a fresh instance, or on a shared one when the
    /// operator allows reuse (`shared`).
    pub(super) async fn serve_p3(
        self: &Arc<Self>,
        indices: ServiceIndices,
        shared: Option<Arc<Shared>>,
        invocation: &Invocation,
        request: http::Request<HttpRequestBody>,
    ) -> Result<HttpResponse, InvokeError> {
        if let Some(shared) = shared {
            return shared.serve(self, &indices, invocation, request).await;
        }
        let budget = self.request_budget(invocation);
        let mut store = self.new_store(invocation, budget)?;
        let (request, request_io) = incoming(store.data_mut().http().hooks, request);
        let (head_tx, head_rx) = oneshot::channel::<Result<WasiResponse, InvokeError>>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (ended_tx, ended_rx) = oneshot::channel();
        let plugin = self.clone();
        let meter = invocation.meter.clone();
        let deadline = invocation.deadline;
        let run = async move {
            let served = async {
                let instance = plugin.instantiate_instance(&mut store).await?;
                let service = indices
                    .load(&mut store, &instance)
                    .map_err(|e| classify(&mut store, e))?;
                let ran = store
                    .run_concurrent(async move |accessor| -> wasmtime::Result<()> {
                        let response = match service.handle(accessor, request).await? {
                            Ok(response) => response,
                            Err(code) => {
                                let _ = head_tx.send(Err(guest_refused(code)));
                                return Ok(());
                            }
                        };
                        let response = accessor
                            .with(|mut access| response.into_http(&mut access, request_io))?;
                        let _ = head_tx.send(Ok(response));
                        // The body streams from the guest while the store
                        // runs: until it ends, or nobody wants it.
                        let _ = done_rx.await;
                        Ok(())
                    })
                    .await;
                ran.and_then(|handled| handled)
                    .map_err(|e| classify(&mut store, e))
            };
            let outcome = match tokio::time::timeout(deadline, served).await {
                Ok(outcome) => outcome,
                Err(_) => Err(InvokeError::Limit(LimitHit::time("deadline_ms", deadline))),
            };
            meter_fuel(&store, &meter);
            // Said before the store goes, and with it the body's sender.
            let _ = ended_tx.send(outcome);
            drop(store);
        };
        let task = AbortOnDropHandle::new(tokio::spawn(Busy::new(run, invocation.meter.clone())));
        let run = Handover {
            head: head_rx,
            ended: ended_rx,
            done: done_tx,
        };
        run.response(self.limits.output_bytes, Some(task)).await
    }
}

/// What a WASIp3 guest's run hands back: the response head, then how the
/// run ended; `done` tells the run that the body is over.
pub(super) struct Handover {
    pub(super) head: oneshot::Receiver<Result<WasiResponse, InvokeError>>,
    pub(super) ended: oneshot::Receiver<Result<(), InvokeError>>,
    pub(super) done: oneshot::Sender<()>,
}

impl Handover {
    /// The response, its body ended by the run's outcome; or, when the run
    /// stopped before the head (its sender dropped), why.
    pub(super) async fn response(
        self,
        output_bytes: usize,
        guest: Option<AbortOnDropHandle<()>>,
    ) -> Result<HttpResponse, InvokeError> {
        let response = match self.head.await {
            Ok(Ok(response)) => response,
            Ok(Err(refused)) => return Err(refused),
            Err(_) => {
                return Err(match self.ended.await {
                    Ok(Err(e)) => e,
                    _ => InvokeError::Host("the component set no response".into()),
                });
            }
        };
        let (done, ended) = (self.done, self.ended);
        Ok(response
            .map(|body| HttpResponseBody::new(body, output_bytes, guest).told_by(done, ended)))
    }
}

/// `request` as the guest sees it, and the future through which its body's
/// transfer reports an error. The scheme and authority an origin-form
/// request lacks are taken from the connection and its `Host`, as
/// `wasi:http/incoming-handler@0.2` gives them.
pub(super) fn incoming(
    hooks: &mut dyn WasiHttpHooks,
    request: http::Request<HttpRequestBody>,
) -> (Request, RequestIo) {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<http::uri::Authority>().ok());
    let (mut request, io) = Request::from_http(hooks, request);
    if request.scheme.is_none() {
        request.scheme = Some(http::uri::Scheme::HTTP);
    }
    if request.authority.is_none() {
        request.authority = host;
    }
    (request, Box::pin(io))
}

/// Through which the transfer of a request's body reports an error.
pub(super) type RequestIo =
    Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send + 'static>>;
