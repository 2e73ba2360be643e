//! `wasi:http/outgoing-handler`: requests a plugin makes, only to the hosts
//! the operator granted (`allowed_outbound_hosts`).
//!
//! A request to any other host gets the interface's `HTTP-request-denied`
//! error, and the attempt is logged (scheme, host and port: never the path
//! or query, which may carry secrets). Bodies stream both ways: the host
//! never holds a whole request or response. Each response is cut off past
//! `outbound_max_response_bytes`, and every wait (connecting, the first
//! byte, between bytes) is bounded by `outbound_timeout_ms`. Redirects are
//! not followed by the host: a plugin that follows one makes a new request,
//! checked like the first.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::runtime::{HostPattern, OutboundGrant};

/// The outbound policy of one call.
pub(crate) struct OutboundHooks {
    grant: OutboundGrant,
    plugin: std::sync::Arc<str>,
    tenant: String,
}

impl OutboundHooks {
    pub(crate) fn new(grant: OutboundGrant, plugin: std::sync::Arc<str>, tenant: String) -> Self {
        Self {
            grant,
            plugin,
            tenant,
        }
    }
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        drop(fut);
        let uri = request.uri();
        let target = format!(
            "{}://{}:{}",
            uri.scheme_str().unwrap_or("?"),
            uri.host().unwrap_or("?"),
            port_of(uri).map_or_else(|| "?".to_owned(), |p| p.to_string())
        );
        if !self.grant.hosts.iter().any(|pattern| allows(pattern, uri)) {
            tracing::warn!(plugin = %self.plugin, tenant = %self.tenant, target, "outbound request denied");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        tracing::debug!(plugin = %self.plugin, tenant = %self.tenant, target, "outbound request");
        let limit = self.grant.timeout;
        let bounded = |asked: Option<Duration>| Some(asked.map_or(limit, |a| a.min(limit)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: bounded(options.connect_timeout),
            first_byte_timeout: bounded(options.first_byte_timeout),
            between_bytes_timeout: bounded(options.between_bytes_timeout),
        };
        let max = self.grant.max_response_bytes;
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let response = response.map(|body| {
                Capped {
                    inner: body.boxed_unsync(),
                    left: max,
                    max,
                }
                .boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

fn port_of(uri: &http::Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    })
}

/// Whether `pattern` allows a request to `uri`.
fn allows(pattern: &HostPattern, uri: &http::Uri) -> bool {
    let (Some(scheme), Some(host), Some(port)) = (uri.scheme_str(), uri.host(), port_of(uri))
    else {
        return false;
    };
    pattern.matches(scheme, &host.to_ascii_lowercase(), port)
}

/// A response body cut off with `HttpResponseBodySize` past `max` bytes.
struct Capped {
    inner: WasiBody,
    left: u64,
    max: u64,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                self.left = 0;
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.max)))));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
