//! opbox's integration tests: one binary, real host, real plugins, real HTTP.
//!
//! Each test starts its own host on `127.0.0.1:0` with the bundled examples
//! and the `fixture-*` plugins, and talks to it with an HTTP client. Compiled
//! plugins are cached under Cargo's test tmpdir, so only the first host pays
//! for compilation.

// In a test binary a panic is how a failure is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod admin_cli;
mod batch;
mod budgets;
mod call;
mod capabilities;
mod cli;
mod client;
mod cluster;
mod connections;
mod contracts;
mod cost;
mod dev;
mod discovery;
mod envelope;
mod events;
mod hostile;
mod http2;
mod isolation;
mod languages;
mod layers;
mod leaks;
mod limits;
mod loading;
mod logs;
mod mcp;
mod memory_reset;
mod metrics;
mod nested;
mod nested_raw;
mod openapi;
mod outbound;
mod quic;
mod raw;
mod raw_volume;
mod readme;
mod reuse;
mod shutdown;
mod subscribe;
mod tenant_plugins;
mod tenants;
mod tls;
mod tools;
mod traces;
mod uploads;
mod util;
mod validators;
mod wasi_http;
mod wasi_http_p3;
