//! Not an opbox plugin: a standard `wasi:http/proxy` component, built
//! against WASI 0.2 alone, that the host's tests mount at `/http/{name}/`.
//!
//! - `/spin` never answers: it computes until the host stops it.
//! - `/big?bytes=N` answers `N` bytes of `x`, written 4 KiB at a time.
//! - `/fetch?url=URL` sends `GET URL` with `wasi:http/outgoing-handler`
//!   and answers its status and body, or `502` and the error code.
//! - `/grow?bytes=N` takes `N` bytes of memory, then answers `grown`.
//! - `/log` writes a line to stderr, then answers `logged`.
//! - anything else answers, as text: the method and the path with its
//!   query, one line per header (`name: value`), an empty line, then the
//!   request body as it came.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
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
        let (status, body) = if let Some(bytes) = path.strip_prefix("/big?bytes=") {
            (200, vec![b'x'; bytes.parse().unwrap_or(0)])
        } else if let Some(url) = path.strip_prefix("/fetch?url=") {
            fetch(url)
        } else if let Some(bytes) = path.strip_prefix("/grow?bytes=") {
            let taken = vec![1u8; bytes.parse().unwrap_or(0)];
            std::hint::black_box(&taken);
            (200, b"grown".to_vec())
        } else if path == "/log" {
            eprintln!("a line from the component");
            (200, b"logged".to_vec())
        } else {
            (200, told(&request, &path))
        };
        let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
            .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
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

/// `GET url` through the host: its status and body, or 502 and why not.
fn fetch(url: &str) -> (u16, Vec<u8>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (400, b"not a URL".to_vec());
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let set = request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(path)).is_ok();
    if !set {
        return (400, b"not a URL the request takes".to_vec());
    }
    let answered = match outgoing_handler::handle(request, None) {
        Ok(future) => {
            future.subscribe().block();
            future.get()
        }
        Err(code) => return (502, format!("{code:?}").into_bytes()),
    };
    let response = match answered {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return (502, format!("{code:?}").into_bytes()),
        _ => return (502, b"no response".to_vec()),
    };
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume()
        && let Ok(stream) = incoming.stream()
    {
        while let Ok(bytes) = stream.blocking_read(64 * 1024) {
            body.extend_from_slice(&bytes);
        }
    }
    (status, body)
}
