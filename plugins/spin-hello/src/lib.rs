//! A Spin HTTP component, as `spin new -t http-rust` writes one: it says
//! hello, and which path and method it was asked for. Built for
//! `wasm32-wasip2`, it exports `wasi:http/incoming-handler@0.2` and runs
//! under opbox as it would under `spin up`.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

/// Answers every request.
#[http_component]
fn handle_hello(req: Request) -> anyhow::Result<impl IntoResponse> {
    let body = format!("Hello from Spin: {} {}\n", req.method(), req.path());
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(body)
        .build())
}
