//! opbox: a host for operations written as sandboxed WebAssembly components.
//!
//! Plugins are WebAssembly components (see `wit/` and the `opbox-sdk`
//! crate) offering queries, mutations and subscriptions over JSON. The host
//! runs each call in a fresh, limited instance and serves every operation
//! through one dispatcher and an HTTP gateway.
//!
//! # Layout
//!
//! Data flows down this list, and so do dependencies: each module uses only
//! modules listed after it (`tests/all/layers.rs` checks this from the
//! source, and that axum, async-nats and wasmtime stay where this list
//! says).
//!
//! - `host` ([`Host`]): assembles the layers below from a [`HostConfig`]
//!   and serves them.
//! - [`config`]: the configuration file, one section per layer below.
//! - [`gateway`]: HTTP routes (`/call`, `/batch`, `/subscribe` as SSE,
//!   `/ops/…`, `/raw/…`, the `wasi:http` mounts at `/http/…`, `/search`,
//!   `/schema`, `/openapi.json`, `/healthz`, the WebSocket upgrade,
//!   `/admin/v1/plugins`, `/admin/v1/events`); the only module that knows
//!   axum.
//! - [`envelope`]: the envelope protocol over TCP and WebSocket, and a
//!   client for it.
//! - [`cluster`]: hosts calling each other over NATS: each serves the
//!   operations it holds, and forwards the calls of those it does not;
//!   the only module that knows async-nats.
//! - [`net`]: connection admission and stall-guarded sockets, for every
//!   listener.
//! - [`plugins`]: plugins coming and going while the host serves:
//!   install, replace and remove (the `admin/*` operations), no call
//!   dropped; the compatibility gate; tenants' allowances; the event feed
//!   as operations.
//! - [`store`]: what the host keeps on disk: the plugin store (components
//!   by digest, records in redb) and the event feed.
//! - [`services`]: the host's own operations (`services/*`), the OpenAPI
//!   document among them.
//! - [`contract`]: the typed contracts of the host's own operations: the
//!   `admin/*` inputs and the settings an upload carries, their JSON
//!   Schemas derived, for the operations, the routes and the OpenAPI
//!   document alike.
//! - [`dispatch`]: the one place every call goes through: lookup,
//!   visibility, scopes, admission, kind, input validation, deadlines,
//!   errors; what a handler is, native or plugin.
//! - [`registry`]: operations by name and owner; handlers are opaque to it.
//! - [`tenants`]: identities, tokens and per-tenant quotas.
//! - [`runtime`]: the wasmtime engine, plugin loading, one store per call.
//! - [`capabilities`]: what plugins import from the host, one module each;
//!   with `runtime`, the only place that knows wasmtime.
//! - [`telemetry`]: metrics of calls, plugins and tenants, in the
//!   Prometheus format.
//! - [`call`]: the types every layer passes around: requests, identities,
//!   operation specs, errors, and the events layers report.
//! - [`bundled`]: the example plugins, embedded in the binary.
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
pub mod call;
pub mod capabilities;
pub mod cluster;
pub mod config;
pub mod contract;
pub mod dispatch;
pub mod envelope;
pub mod gateway;
mod host;
pub mod net;
pub mod plugins;
pub mod registry;
pub mod runtime;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod tenants;

pub use call::{CallError, CallRequest, ErrorCode, Identity};
pub use config::HostConfig;
pub use dispatch::Dispatcher;
pub use host::{Host, HostError};
