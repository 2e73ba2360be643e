//! The HTTP gateway: the only module that knows axum.
//!
//! | route | handler |
//! |---|---|
//! | `POST /call` | `call::call`: one query or mutation |
//! | `GET /call` | `ws::upgrade`: the envelope protocol over WebSocket |
//! | `POST /batch` | `call::batch`: several, run concurrently, results in order |
//! | `POST /subscribe` | `subscribe::subscribe`: a subscription as SSE |
//! | `GET /search?q=` | `discovery::search`: the caller's visible operations |
//! | `GET /schema?name=` | `discovery::schema`: one operation's full spec |
//! | `GET /healthz` | `discovery::healthz` |
//!
//! Every failure has the protocol's error shape and status (`error`).

mod call;
mod discovery;
mod error;
mod subscribe;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::dispatch::{Dispatcher, Identity};
use crate::envelope::EnvelopeConfig;
use crate::error::{CallError, ErrorCode};

/// Settings of the gateway.
///
/// | field | default |
/// |---|---|
/// | `max_body_bytes` | 1 MiB; larger bodies get 413 |
/// | `max_batch` | 100 calls per `/batch` |
/// | `sse_keep_alive` | a comment every 15 s on idle SSE streams |
/// | `envelope` | the limits of WebSocket connections: [`EnvelopeConfig`] |
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The most calls in one `/batch`.
    pub max_batch: usize,
    /// How often an idle SSE stream gets a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// Limits of envelope connections over WebSocket.
    pub envelope: EnvelopeConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_batch: 100,
            sse_keep_alive: Duration::from_secs(15),
            envelope: EnvelopeConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct AppState {
    dispatcher: Dispatcher,
    config: Arc<GatewayConfig>,
}

/// The gateway's routes over `dispatcher`.
pub fn router(dispatcher: Dispatcher, config: GatewayConfig) -> Router {
    let body_limit = config.max_body_bytes;
    let state = AppState {
        dispatcher,
        config: Arc::new(config),
    };
    Router::new()
        .route("/call", post(call::call).get(ws::upgrade))
        .route("/batch", post(call::batch))
        .route("/subscribe", post(subscribe::subscribe))
        .route("/search", get(discovery::search))
        .route("/schema", get(discovery::schema))
        .route("/healthz", get(discovery::healthz))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The identity of the caller. Every caller is anonymous until tenants and
/// tokens land.
fn caller(_state: &AppState) -> Identity {
    Identity::anonymous()
}

async fn no_route() -> ApiError {
    CallError::new(ErrorCode::NotFound, "no such route").into()
}

async fn no_method() -> ApiError {
    CallError::new(ErrorCode::NotFound, "this route does not take that method").into()
}
