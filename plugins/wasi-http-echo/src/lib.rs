//! Not an opbox plugin: a standard `wasi:http/proxy` component, built
//! against WASI 0.2 alone, that the host's tests mount at `/http/{name}/`.
//!
//! - `/spin` never answers: it computes until the host stops it.
//! - `/big?bytes=N` answers `N` bytes of `x`, written 4 KiB at a time.
//! - anything else answers, as text: the method and the path with its
//!   query, one line per header (`name: value`), an empty line, then the
//!   request body as it came.

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Echo);

struct Echo;

/// The most bytes one `blocking-write-and-flush` takes.
const WRITE_BYTES: usize = 4096;

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path == "/spin" {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        let body = match path.strip_prefix("/big?bytes=") {
            Some(bytes) => vec![b'x'; bytes.parse().unwrap_or(0)],
            None => told(&request, &path),
        };
        let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
            .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let Ok(outgoing) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = outgoing.write() {
            for chunk in body.chunks(WRITE_BYTES) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    return;
                }
            }
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

/// What the request was: its method and path, its headers, its body.
fn told(request: &IncomingRequest, path: &str) -> Vec<u8> {
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Other(other) => other,
    };
    let mut text = format!("{method} {path}\n").into_bytes();
    for (name, value) in request.headers().entries() {
        text.extend_from_slice(name.as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(&value);
        text.push(b'\n');
    }
    text.push(b'\n');
    if let Ok(body) = request.consume()
        && let Ok(stream) = body.stream()
    {
        while let Ok(bytes) = stream.blocking_read(64 * 1024) {
            text.extend_from_slice(&bytes);
        }
    }
    text
}
