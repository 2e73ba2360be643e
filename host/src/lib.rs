//! opbox: a host for operations written as sandboxed WebAssembly components.
//!
//! Plugins are WebAssembly components (see `wit/` and the `opbox-sdk`
//! crate) offering queries, mutations and subscriptions over JSON. The host
//! runs each call in a fresh, limited instance and serves every operation
//! through one dispatcher and an HTTP gateway.
//!
//! # Layout
//!
//! Data flows top to bottom:
//!
//! - [`gateway`]: HTTP routes (`/call`, `/batch`, `/subscribe` as SSE,
//!   `/search`, `/schema`, `/healthz`); the only module that knows axum.
//! - [`dispatch`]: the one place for lookup, visibility, input validation,
//!   deadlines, once vs stream, and error mapping.
//! - [`registry`]: operation specs and handlers, native and plugin alike.
//! - [`runtime`]: the wasmtime engine, plugin loading, one store per call;
//!   the only module that knows wasmtime.
//! - `capabilities`: what plugins import from the host (`log`).
//! - [`services`]: the host's own operations (`services/list`,
//!   `services/schema`, `services/plugin`).
//! - [`tenants`]: identities, tokens and per-tenant quotas.
//! - [`config`] and [`Host`]: the configuration and the assembled host.
//!
//! # Embedding
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use opbox::{CallRequest, Host, HostConfig};
//!
//! let host = Host::start(HostConfig::demo()).await?;
//! let output = host
//!     .dispatcher()
//!     .call(CallRequest::new("echo/echo", serde_json::json!({"x": 1})))
//!     .await?;
//! assert_eq!(output, serde_json::json!({"x": 1}));
//! # Ok(()) }
//! ```

pub mod bundled;
mod capabilities;
pub mod client;
pub mod config;
pub mod dispatch;
pub mod envelope;
pub mod error;
pub mod gateway;
mod host;
pub mod keyvalue;
pub mod net;
pub mod openapi;
pub mod registry;
pub mod runtime;
pub mod services;
pub mod tenants;

pub use config::HostConfig;
pub use dispatch::{CallRequest, Dispatcher, Identity};
pub use error::{CallError, ErrorCode};
pub use host::{Host, HostError};
