//! Not an opbox plugin: a standard WASIp3 `wasi:http/service` component,
//! built with the `wasip3` crate alone, that opbox serves at
//! `/http/{name}/` as `wasmtime serve` would serve it.
//!
//! Its body streams both ways: it answers before it has read the request
//! body, then writes each chunk back as it reads it.
//!
//! - `/big?bytes=N` answers `N` bytes of `x`, written 4 KiB at a time.
//! - `/spin` never answers: it computes until the host stops it.
//! - `/spin-body` answers, writes a line of its body, then computes.
//! - `/fetch?url=URL` sends `GET URL` with `wasi:http/client` and answers
//!   its status and body, or `502` and the error code.
//! - `/grow?bytes=N` takes `N` bytes of memory, then answers `grown`.
//! - `/log` writes a line to stderr, then answers `logged`.
//! - `/count` answers how many requests this instance has taken, itself
//!   included: 1 when every request gets a fresh instance.
//! - `/hold` answers `holding`, then, in the same body, `released` once a
//!   `/release` has come to the same instance, or `alone` after 30 s;
//!   `/release` answers `released`.
//! - anything else answers, as text: the method and the URL it was given
//!   (scheme, authority, path and query), one line per header
//!   (`name: value`), an empty line, then the request body, chunk by
//!   chunk as it comes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use wasip3::clocks::monotonic_clock;
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::{wit_bindgen, wit_future, wit_stream};
use wit_bindgen::StreamResult;

wasip3::http::service::export!(Stream);

struct Stream;

/// The most bytes one write carries.
const WRITE_BYTES: usize = 4096;
/// Requests this instance has taken.
static TAKEN: AtomicU32 = AtomicU32::new(0);
/// Whether a `/release` has come.
static RELEASED: AtomicBool = AtomicBool::new(false);

impl wasip3::exports::http::handler::Guest for Stream {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let taken = TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.get_path_with_query().unwrap_or_default();
        let (status, body) = match path.as_str() {
            "/spin" => spin(),
            "/spin-body" => return Ok(answer(200, Body::Spin)),
            "/log" => {
                eprintln!("a line from the component");
                (200, b"logged".to_vec())
            }
            "/count" => (200, taken.to_string().into_bytes()),
            "/release" => {
                RELEASED.store(true, Ordering::Relaxed);
                (200, b"released".to_vec())
            }
            "/hold" => return Ok(answer(200, Body::Hold)),
            _ => {
                if let Some(bytes) = path.strip_prefix("/big?bytes=") {
                    return Ok(answer(200, Body::Big(bytes.parse().unwrap_or(0))));
                }
                if let Some(bytes) = path.strip_prefix("/grow?bytes=") {
                    let taken = vec![1u8; bytes.parse().unwrap_or(0)];
                    std::hint::black_box(&taken);
                    (200, b"grown".to_vec())
                } else if let Some(url) = path.strip_prefix("/fetch?url=") {
                    fetch(url).await
                } else {
                    return Ok(answer(200, Body::Echo(request, path)));
                }
            }
        };
        Ok(answer(status, Body::Bytes(body)))
    }
}

/// What a response body is made of.
enum Body {
    Bytes(Vec<u8>),
    Big(usize),
    Spin,
    Hold,
    /// What the request was, then its body as it comes.
    Echo(Request, String),
}

/// A response whose body is written after it is returned.
fn answer(status: u16, body: Body) -> Response {
    let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
        .unwrap_or_else(|_| Fields::new());
    let (mut writer, reader) = wit_stream::new();
    let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers);
    let (response, _sent) = Response::new(headers, Some(reader), trailers_rx);
    let _ = response.set_status_code(status);
    wit_bindgen::spawn_local(async move {
        match body {
            Body::Bytes(bytes) => {
                writer.write_all(bytes).await;
            }
            Body::Big(mut left) => {
                while left > 0 {
                    let n = left.min(WRITE_BYTES);
                    if !writer.write_all(vec![b'x'; n]).await.is_empty() {
                        return;
                    }
                    left -= n;
                }
            }
            Body::Spin => {
                writer.write_all(b"started\n".to_vec()).await;
                spin();
            }
            Body::Hold => {
                if writer.write_all(b"holding\n".to_vec()).await.is_empty() {
                    writer.write_all(hold().await.into_bytes()).await;
                }
            }
            Body::Echo(request, path) => {
                let head = told(&request, &path);
                if !writer.write_all(head).await.is_empty() {
                    return;
                }
                let (_result, result_rx) = wit_future::new(|| Ok(()));
                let (mut body, _trailers) = Request::consume_body(request, result_rx);
                loop {
                    let (result, chunk) = body.read(Vec::with_capacity(64 * 1024)).await;
                    if !chunk.is_empty() && !writer.write_all(chunk).await.is_empty() {
                        return;
                    }
                    if !matches!(result, StreamResult::Complete(_)) {
                        return;
                    }
                }
            }
        }
    });
    response
}

/// Computes until the host stops it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Waits for a `/release` to this instance, 30 s at most, looking every
/// 100 ms.
async fn hold() -> String {
    for _ in 0..300 {
        if RELEASED.load(Ordering::Relaxed) {
            return "released".into();
        }
        monotonic_clock::wait_for(100_000_000).await;
    }
    "alone".into()
}

/// What the request was: its method and URL, then its headers.
fn told(request: &Request, path: &str) -> Vec<u8> {
    let method = match request.get_method() {
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
    let scheme = match request.get_scheme() {
        Some(Scheme::Http) => "http".to_owned(),
        Some(Scheme::Https) => "https".to_owned(),
        Some(Scheme::Other(other)) => other,
        None => "?".to_owned(),
    };
    let authority = request.get_authority().unwrap_or_else(|| "?".to_owned());
    let mut text = format!("{method} {scheme}://{authority}{path}\n").into_bytes();
    for (name, value) in request.get_headers().copy_all() {
        text.extend_from_slice(name.as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(&value);
        text.push(b'\n');
    }
    text.push(b'\n');
    text
}

/// `GET url` through the host: its status and body, or 502 and why not.
async fn fetch(url: &str) -> (u16, Vec<u8>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (400, b"not a URL".to_vec());
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers);
    let (request, _sent) = Request::new(Fields::new(), None, trailers_rx, None);
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
    let response = match client::send(request).await {
        Ok(response) => response,
        Err(code) => return (502, format!("{code:?}").into_bytes()),
    };
    let status = response.get_status_code();
    let (_result, result_rx) = wit_future::new(|| Ok(()));
    let (body, _trailers) = Response::consume_body(response, result_rx);
    (status, body.collect().await)
}
