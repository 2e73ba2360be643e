//! Requests to standard `wasi:http` components (`docs/wasi-http.md`),
//! through the dispatcher like any call: the caller's tenant and what it
//! may see (another tenant's component is `NOT_FOUND`, as a name nobody
//! uses), admission as a call, the plugin's instance slots and limits, the
//! call's deadline over the whole exchange, its log line, metering (bytes
//! in: the request body; out: the response body) and draining.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;

use super::nested::invocation;
use super::pipeline::{Admitted, Kind, Target, holding, with_time_limit};
use super::remote::Reach;
use super::{Dispatcher, Handler, Metered, Outputs, failure};
use crate::call::{CallError, CallRequest, ErrorCode, Meter};
use crate::runtime::{HttpBodyError, HttpRequestBody, InvokeError, LimitHit, Plugin};
use crate::telemetry::trace::CallSpan;

/// What a `wasi:http` component answers, in order: the response head,
/// then its body's data, then its trailers if it has any; or the error
/// that ends it.
#[derive(Debug)]
pub enum HttpPart {
    /// The status and headers.
    Head(http::response::Parts),
    /// Bytes of the body.
    Data(Bytes),
    /// The trailers; nothing follows.
    Trailers(http::HeaderMap),
}

/// A response of a `wasi:http` component, as [`HttpPart`]s.
pub type HttpParts = Outputs<HttpPart>;

impl Dispatcher {
    /// Serves `http` with the `wasi:http` component `request.operation`
    /// names (`{name}/http`). Errors found before the component answers
    /// (no such component, no room, a trap, a guest that set no response)
    /// are returned here; later ones end the parts.
    pub async fn serve_http(
        &self,
        request: CallRequest,
        http: http::Request<HttpRequestBody>,
    ) -> Metered<HttpParts> {
        let request = &request;
        self.stream_metered(request, |meter, span| async move {
            self.http_inner(request, http, &meter, &span).await
        })
        .await
    }

    async fn http_inner(
        &self,
        request: &CallRequest,
        http: http::Request<HttpRequestBody>,
        meter: &Arc<Meter>,
        span: &CallSpan,
    ) -> Result<HttpParts, CallError> {
        let Admitted {
            target,
            tenant,
            in_flight,
            admission,
        } = self.admit(request, Kind::Http, Reach::Cluster)?;
        let op = match target {
            Target::Here(op) => op,
            Target::Remote(_) => {
                return Err(CallError::new(
                    ErrorCode::Unavailable,
                    "this host does not hold that HTTP component, and HTTP requests are not forwarded across the cluster: send it to a host that holds it",
                ));
            }
        };
        let Handler::Plugin { plugin, op: name } = &op.handler else {
            return Err(CallError::internal());
        };
        let deadline = self.deadline(request);
        let held = vec![admission, Some(tenant.usage.instance()?)];
        let cpu = std::time::Duration::from_millis(plugin.limits().cpu_ms);
        let invocation = invocation(self, request, deadline, cpu, meter, span);
        let counted = plugin.count_call();
        let metered_in = meter.clone();
        let http = http.map(|body| {
            body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    metered_in.bytes_in(data.len());
                }
                frame
            })
            .boxed_unsync()
        });
        let response = plugin
            .serve_http(&invocation, http)
            .await
            .map_err(|e| failure::from_invoke(e, plugin, name))?;
        counted.succeeded();
        let (head, body) = response.into_parts();
        let metered_out = meter.clone();
        let body: BoxStream<'static, Result<HttpPart, HttpBodyError>> =
            http_body_util::BodyStream::new(body)
                .map_ok(move |frame| match frame.into_data() {
                    Ok(data) => {
                        metered_out.bytes_out(data.len());
                        HttpPart::Data(data)
                    }
                    Err(frame) => HttpPart::Trailers(frame.into_trailers().unwrap_or_default()),
                })
                .boxed();
        let (plugin, name) = (plugin.clone(), name.clone());
        let parts = futures::stream::once(async move { Ok(HttpPart::Head(head)) })
            .chain(body.map_err(move |e| body_failed(e, &plugin, &name)))
            .boxed();
        // The deadline bounds the whole exchange, the body included.
        let parts = with_time_limit(parts, deadline);
        let parts = holding(parts, held);
        Ok(self.inner.drain.until_drained(parts, in_flight))
    }
}

/// The error that ends a response body early.
fn body_failed(error: HttpBodyError, plugin: &Plugin, name: &str) -> CallError {
    match error {
        HttpBodyError::TooLarge(output_bytes) => {
            let hit = LimitHit::new("output_bytes", output_bytes);
            failure::from_invoke(InvokeError::Limit(hit), plugin, name)
        }
        HttpBodyError::Guest(e) => CallError::new(
            ErrorCode::PluginFailed,
            format!("the component failed while writing its response: {e}"),
        ),
        HttpBodyError::Stopped(e) => failure::from_invoke(e, plugin, name),
    }
}
