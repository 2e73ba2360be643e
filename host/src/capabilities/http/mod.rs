//! `wasi:http/outgoing-handler` (WASIp2), `wasi:http/client` (WASIp3) and
//! `opbox:plugin/outbound` (the same requests, as an async import with
//! streamed bodies): requests a plugin makes, only to the hosts the
//! operator granted (`allowed_outbound_hosts`).
//!
//! A request to any other host gets the interface's `HTTP-request-denied`
//! error, and the attempt is logged (scheme, host and port: never the path
//! or query, which may carry secrets). The name is resolved by the host and
//! the address checked before connecting (`send`): addresses inside the
//! host's own networks are reached only where the grant names an address
//! or says `outbound_allow_internal`. Bodies stream both ways: the host
//! never holds a whole request or response. Each response is cut off past
//! `outbound_max_response_bytes`, every wait (connecting, the first byte,
//! between bytes) is bounded by `outbound_timeout_ms`, and a plugin has at
//! most `outbound_max_requests` exchanges open at once, one call at most
//! `outbound_max_requests_per_call`. Redirects are not followed by the host:
//! a plugin that follows one makes a new request, checked like the first.

mod grant;
mod outbound;
mod send;

pub(super) use outbound::gather;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::denied::{Asked, Denial};
use crate::call::{HostCall, Meter, cut};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
};

pub use grant::{HostPattern, OutboundGrant};

/// The HTTP state of one call: the interface's own, and the policy its
/// requests answer to.
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: OutboundHooks,
}

impl HttpState {
    pub(super) fn new(
        grant: OutboundGrant,
        plugin: Arc<str>,
        tenant: Arc<str>,
        denial: Denial,
        meter: Arc<Meter>,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(grant.max_requests_per_call as usize));
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                grant,
                plugin,
                tenant,
                in_flight,
                denial,
                meter,
            },
        }
    }
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("plugin", &self.hooks.plugin)
            .finish_non_exhaustive()
    }
}

/// What wasmtime-wasi-http needs of a store: the call's HTTP state and the
/// table its requests and bodies live in.
pub(crate) fn view<'a>(
    state: &'a mut HttpState,
    table: &'a mut ResourceTable,
) -> WasiHttpCtxView<'a> {
    WasiHttpCtxView {
        ctx: &mut state.ctx,
        hooks: &mut state.hooks,
        table,
    }
}

pub(super) fn add_to_linker<T: super::View>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    // `wasi:http/client@0.3`: its requests go through the same hooks.
    wasmtime_wasi_http::p3::add_to_linker(linker)?;
    outbound::add_to_linker(linker)
}

/// The outbound policy of one call.
struct OutboundHooks {
    grant: OutboundGrant,
    plugin: Arc<str>,
    tenant: Arc<str>,
    /// Exchanges this call may still open.
    in_flight: Arc<Semaphore>,
    denial: Denial,
    /// The call's meter, which counts each request.
    meter: Arc<Meter>,
}

type Sending = Box<dyn Future<Output = Result<send::Sent, Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    /// A WASIp3 body moves at most this much at a time, whichever way:
    /// what one request holds on the host between the guest and the
    /// network.
    fn p3_outgoing_body_chunk_size(&mut self) -> usize {
        super::chunks::CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sending {
        drop(fut);
        self.meter.host_call(HostCall::Http);
        let uri = request.uri();
        let target = format!(
            "{}://{}:{}",
            uri.scheme_str().unwrap_or("?"),
            uri.host().unwrap_or("?"),
            port_of(uri).map_or_else(|| "?".to_owned(), |p| p.to_string())
        );
        let Some(pattern) = self.grant.hosts.iter().find(|pattern| allows(pattern, uri)) else {
            tracing::warn!(plugin = %self.plugin, tenant = %self.tenant, target, "outbound request denied");
            self.denial
                .report(Asked::Target(cut(&target, 256).to_owned()));
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        let allow_internal = self.grant.allow_internal || pattern.names_address();
        let (Ok(for_plugin), Ok(for_call)) = (
            self.grant.in_flight.clone().try_acquire_owned(),
            self.in_flight.clone().try_acquire_owned(),
        ) else {
            tracing::warn!(plugin = %self.plugin, tenant = %self.tenant, target, "outbound request refused: too many in flight");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        };
        tracing::debug!(plugin = %self.plugin, tenant = %self.tenant, target, "outbound request");
        let limit = self.grant.timeout;
        let bounded = |asked: Option<Duration>| asked.map_or(limit, |a| a.min(limit));
        let options = options.unwrap_or_default();
        let policy = send::Policy {
            allow_internal,
            connect_timeout: bounded(options.connect_timeout),
            first_byte_timeout: bounded(options.first_byte_timeout),
            between_bytes_timeout: bounded(options.between_bytes_timeout),
            held: Arc::new((for_plugin, for_call)),
        };
        Box::new(send::send(request, policy, self.grant.max_response_bytes))
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
