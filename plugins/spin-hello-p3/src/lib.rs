//! A Spin HTTP component as the Spin Rust SDK 7 writes one: an async
//! handler marked `#[http_service]`. Built for `wasm32-wasip2`, it exports
//! `wasi:http/handler@0.3.0` (WASIp3) and runs under opbox as it would
//! under `spin up`.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

/// Says hello, and which method and path it was asked for.
#[http_service]
async fn hello(req: Request) -> impl IntoResponse {
    format!("Hello from Spin 7: {} {}\n", req.method(), req.uri().path())
}
