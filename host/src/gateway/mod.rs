//! The HTTP gateway: the only module that knows axum.
//!
//! | route | handler |
//! |---|---|
//! | `POST /call` | `call::call`: one query or mutation |
//! | `GET /call` | `ws::upgrade`: the envelope protocol over WebSocket |
//! | `POST /batch` | `call::batch`: several, run concurrently, results in order |
//! | `POST /subscribe` | `subscribe::subscribe`: a subscription as SSE |
//! | `POST /ops/{ns}/{op}` | `ops::op`: one operation, input and output as the bodies |
//! | `POST /raw/{ns}/{op}` | `raw::raw`: a byte-stream operation, stdin and stdout as the bodies |
//! | `/http/{name}/…` | `http::http`: a request to a standard `wasi:http` component |
//! | `GET /search?q=` | `discovery::search`: the caller's visible operations |
//! | `GET /schema?name=` | `discovery::schema`: one operation's full spec |
//! | `GET /openapi.json` | `discovery::openapi`: OpenAPI 3.1, the caller's view |
//! | `GET /healthz` | `discovery::healthz` |
//! | `GET /metrics` | `discovery::metrics`: Prometheus text, for the scope `metrics` |
//! | `/admin/v1/plugins…` | `admin::*`: install, list, show, replace, remove |
//! | `GET /admin/v1/events` | `events::events`: a page of the event feed, or a WebSocket following it |
//! | `POST`/`GET`/`DELETE /mcp` | `mcp`: every operation as an MCP tool (Streamable HTTP) |
//!
//! Every failure has the protocol's error shape and status (`error`).

mod admin;
mod call;
mod discovery;
mod error;
mod events;
mod http;
mod idle;
mod mcp;
mod ops;
mod raw;
mod serve;
mod subscribe;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::routing::{any, get, post};
use tokio_util::task::TaskTracker;

pub use error::ApiError;
pub use mcp::McpConfig;
pub use serve::serve;

use crate::call::{CallError, ErrorCode};
use crate::call::{Identity, TraceParent};
use crate::dispatch::Dispatcher;
use crate::envelope::EnvelopeConfig;
use crate::net::ConnectionConfig;
use crate::telemetry::Metrics;

/// Settings of the gateway.
///
/// | field | default |
/// |---|---|
/// | `max_body_bytes` | 1 MiB; larger bodies get 413 |
/// | `max_batch` | 100 calls per `/batch` |
/// | `max_plugin_bytes` | 64 MiB: the largest component an admin upload carries |
/// | `max_uploads` | 2 admin uploads read at once |
/// | `sse_keep_alive` | a comment every 15 s on idle SSE streams |
/// | `envelope` | the limits of WebSocket connections: [`EnvelopeConfig`] |
/// | `connection` | timeouts of every connection: [`ConnectionConfig`] |
/// | `mcp` | the MCP server at `/mcp`: [`McpConfig`] |
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The most calls in one `/batch`.
    pub max_batch: usize,
    /// Whether anyone may read `/metrics`.
    pub public_metrics: bool,
    /// The metrics `/metrics` serves; the route answers `NOT_FOUND` without.
    pub metrics: Option<Arc<Metrics>>,
    /// How often an idle SSE stream gets a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// Limits of envelope connections over WebSocket.
    pub envelope: EnvelopeConfig,
    /// Timeouts and caps of every connection.
    pub connection: ConnectionConfig,
    /// The MCP server.
    pub mcp: McpConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_batch: 100,
            public_metrics: false,
            metrics: None,
            sse_keep_alive: Duration::from_secs(15),
            envelope: EnvelopeConfig::default(),
            connection: ConnectionConfig::default(),
            mcp: McpConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct AppState {
    dispatcher: Dispatcher,
    config: Arc<GatewayConfig>,
    websockets: TaskTracker,
}

/// The gateway's routes over `dispatcher`. Each WebSocket connection runs
/// as a task of `websockets`, so that a server shutting down can wait for
/// them: upgraded connections are no longer the HTTP server's to wait for.
///
/// Call it within a Tokio runtime: the MCP route starts its watchers (of
/// the registry, and of the dispatcher draining) here.
pub fn router(dispatcher: Dispatcher, config: GatewayConfig, websockets: TaskTracker) -> Router {
    let body_limit = config.max_body_bytes;
    let mcp = config.mcp.enabled.then(|| {
        mcp::router(
            &dispatcher,
            &config.mcp,
            config.max_body_bytes,
            config.connection.body_timeout,
        )
    });
    let state = AppState {
        dispatcher,
        config: Arc::new(config),
        websockets,
    };
    let router = Router::new()
        .route("/call", post(call::call).get(ws::upgrade))
        .route("/batch", post(call::batch))
        .route("/subscribe", post(subscribe::subscribe))
        .route("/ops/{namespace}/{op}", post(ops::op))
        .route("/raw/{namespace}/{op}", post(raw::raw))
        .route("/http/{name}", any(http::http))
        .route("/http/{name}/", any(http::http))
        .route("/http/{name}/{*path}", any(http::http))
        .route("/search", get(discovery::search))
        .route("/schema", get(discovery::schema))
        .route("/openapi.json", get(discovery::openapi))
        .route("/healthz", get(discovery::healthz))
        .route("/admin/v1/plugins", post(admin::install).get(admin::list))
        .route(
            "/admin/v1/plugins/{name}",
            get(admin::show).put(admin::replace).delete(admin::remove),
        )
        .route("/admin/v1/plugins/{name}/logs", get(admin::logs))
        .route("/admin/v1/events", get(events::events))
        .route("/metrics", get(discovery::metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    match mcp {
        Some(mcp) => router.merge(mcp),
        None => router,
    }
}

/// `/metrics` alone, for anyone: what the `metrics_listen` address serves.
pub fn metrics_router(metrics: Option<Arc<Metrics>>) -> Router {
    let router = match metrics {
        Some(metrics) => Router::new()
            .route("/metrics", get(discovery::public_metrics))
            .with_state(metrics),
        None => Router::new(),
    };
    router
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
}

/// Who sent `headers`: the identity of its `Authorization: Bearer` token,
/// or an anonymous caller, or `UNAUTHORIZED` where anonymous callers are
/// not taken.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Identity, CallError> {
    state
        .dispatcher
        .authenticate(bearer(headers))
        .inspect_err(|e| {
            tracing::info!(
                status = e.code.as_str(),
                transport = "http",
                "call refused: no valid bearer token"
            )
        })
}

/// The caller's W3C trace context, when `headers` carry a well-formed one.
fn trace_context(headers: &HeaderMap) -> Option<TraceParent> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    TraceParent::parse(value("traceparent")?, value("tracestate"))
}

/// The bearer token of `headers`, if they carry one. Anything else in
/// `Authorization` counts as no token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

async fn no_route() -> ApiError {
    CallError::new(ErrorCode::NotFound, "no such route").into()
}

/// A known route asked with a method it does not take: 405, in the error
/// shape; axum adds the `Allow` header listing the methods it does take.
async fn no_method() -> ApiError {
    ApiError::from(CallError::invalid_input(
        "this route does not take that method; `Allow` lists the ones it does",
    ))
    .with_status(axum::http::StatusCode::METHOD_NOT_ALLOWED)
}
