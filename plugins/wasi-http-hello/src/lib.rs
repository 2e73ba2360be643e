//! Not an opbox plugin: a `wasi:http/proxy` component that answers every
//! request with `{"result":"ok","output":{"x":1}}`, what `POST /call`
//! answers for `echo/echo` in the HTTP benchmark (less the request id). `cargo bench -p opbox --bench dispatch -- http`
//! serves it with `wasmtime serve` to compare opbox with wasmtime's own HTTP
//! host.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers =
            Fields::from_list(&[("content-type".to_owned(), b"application/json".to_vec())])
                .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(br#"{"result":"ok","output":{"x":1}}"#);
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
