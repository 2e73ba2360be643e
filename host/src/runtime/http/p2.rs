//! `wasi:http/incoming-handler@0.2.x`: a fresh instance in a store of its
//! own for each request, as `wasmtime serve` runs WASIp2 components. The
//! guest sets its response through a `response-outparam`, then writes the
//! body and returns.

use std::sync::Arc;

use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::{HttpRequestBody, HttpResponse, HttpResponseBody, guest_refused};
use crate::runtime::busy::Busy;
use crate::runtime::invoke::{Invocation, InvokeError, meter_fuel};
use crate::runtime::limits::LimitHit;
use crate::runtime::plugin::Plugin;
use crate::runtime::trap::classify;

impl Plugin {
    pub(super) async fn serve_p2(
        self: &Arc<Self>,
        indices: ProxyIndices,
        invocation: &Invocation,
        request: http::Request<HttpRequestBody>,
    ) -> Result<HttpResponse, InvokeError> {
        let budget = self.request_budget(invocation);
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
        Ok(response.map(|body| HttpResponseBody::new(body, output_bytes, Some(task))))
    }
}
