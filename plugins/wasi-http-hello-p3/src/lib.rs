//! Not an opbox plugin: a WASIp3 `wasi:http` handler that answers every
//! request with `{"result":"ok","output":{"x":1}}`, what `POST /call`
//! answers for `echo/echo` in the HTTP benchmark (less the request id).
//! `cargo bench -p opbox --bench dispatch -- http` serves it with
//! `wasmtime serve`, which reuses a WASIp3 instance for many requests: the
//! way `wasmtime serve` and Spin run modern components by default.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

const BODY: &[u8] = br#"{"result":"ok","output":{"x":1}}"#;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers =
            Fields::from_list(&[("content-type".to_owned(), b"application/json".to_vec())])
                .unwrap_or_else(|_| Fields::new());
        let (mut body, body_rx) = wit_stream::new();
        let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
        drop(trailers);
        let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
        wit_bindgen::spawn_local(async move {
            let _unwritten = body.write_all(BODY.to_vec()).await;
        });
        Ok(response)
    }
}
