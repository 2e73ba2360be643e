//! Outbound HTTP (`wasi:http/outgoing-handler`), to the hosts the operator
//! granted, with the [`http`](https://docs.rs/http) crate's types:
//!
//! ```toml
//! [[plugins]]
//! path = "relay.wasm"
//! [plugins.grants]
//! allowed_outbound_hosts = ["https://api.example.com", "http://127.0.0.1:*"]
//! outbound_timeout_ms = 30000              # connect, first byte, between bytes
//! outbound_max_response_bytes = 67108864   # per response
//! ```
//!
//! Bodies stream both ways: a request's body may be chunks made as it is
//! sent ([`RequestBody::chunks`]), and a response's [`Body`] hands over its
//! bytes as they arrive ([`Body::chunk`], or [`std::io::Read`]), so a plugin
//! can pass a long response on piece by piece. Redirects are not followed;
//! a plugin that follows one makes a new request, which the host checks
//! again.
//!
//! ```ignore
//! use opbox_sdk::http::{self, Request};
//!
//! let mut response = http::get("https://api.example.com/items")?;
//! let text = String::from_utf8_lossy(&response.body_mut().read_all(1 << 20)?).into_owned();
//!
//! let request = Request::post("https://api.example.com/items")
//!     .header("content-type", "application/json")
//!     .body(r#"{"name":"x"}"#)?;
//! let response = http::send(request)?;
//! assert!(response.status().is_success());
//! ```
//!
//! A host that is not granted answers `HTTP_DENIED`; every other failure is
//! `HTTP_FAILED`, and a response over the cap `HTTP_TOO_LARGE`.
//!
//! # Waiting
//!
//! [`send`] and [`Body::chunk`] wait for the network inside the call: other
//! futures of the same call do not run meanwhile (a WASI 0.2 request is
//! waited on through a `pollable`, which an async task cannot await). In a
//! subscription, call [`yield_now`](crate::yield_now) before waiting, so
//! the items made so far reach the caller first.

pub use ::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method as WasiMethod, OutgoingBody,
    OutgoingRequest, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::{Error, Result};

/// The most bytes one [`Body::chunk`] returns.
const CHUNK: u64 = 64 * 1024;

/// The most bytes written to the host at once.
const WRITE: usize = 4096;

/// What a request sends.
pub enum RequestBody {
    /// Nothing.
    Empty,
    /// These bytes.
    Bytes(Vec<u8>),
    /// Chunks, each made as the one before has been sent; an `Err` aborts
    /// the request with that error.
    Chunks(Box<dyn Iterator<Item = Result<Vec<u8>>>>),
}

impl RequestBody {
    /// A body of `chunks`, each made only as the one before has been sent.
    pub fn chunks(chunks: impl IntoIterator<Item = Result<Vec<u8>>> + 'static) -> Self {
        Self::Chunks(Box::new(chunks.into_iter()))
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Self::Chunks(_) => f.write_str("Chunks(..)"),
        }
    }
}

impl From<()> for RequestBody {
    fn from((): ()) -> Self {
        Self::Empty
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes)
    }
}

impl From<&[u8]> for RequestBody {
    fn from(bytes: &[u8]) -> Self {
        Self::Bytes(bytes.to_vec())
    }
}

impl From<String> for RequestBody {
    fn from(text: String) -> Self {
        Self::Bytes(text.into_bytes())
    }
}

impl From<&str> for RequestBody {
    fn from(text: &str) -> Self {
        Self::Bytes(text.as_bytes().to_vec())
    }
}

/// A response body, read as it arrives.
#[derive(Debug)]
pub struct Body {
    // Dropped in this order: the stream before the body before the response.
    stream: Option<InputStream>,
    _body: IncomingBody,
    _response: IncomingResponse,
}

impl Body {
    /// The next bytes of the body, waiting for them to arrive; `None` at
    /// its end.
    pub fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        match stream.blocking_read(CHUNK) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StreamError::Closed) => {
                self.stream = None;
                Ok(None)
            }
            Err(StreamError::LastOperationFailed(e)) => {
                self.stream = None;
                let message = e.to_debug_string();
                // The host cuts a response off past its cap with this code.
                if message.contains("HttpResponseBodySize") || message.contains("body size") {
                    Err(Error::new(
                        "HTTP_TOO_LARGE",
                        format!("the response is too large: {message}"),
                    ))
                } else {
                    Err(Error::new(
                        "HTTP_FAILED",
                        format!("reading the response failed: {message}"),
                    ))
                }
            }
        }
    }

    /// The whole body, failing with `HTTP_TOO_LARGE` past `max` bytes.
    pub fn read_all(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk()? {
            if all.len() + chunk.len() > max {
                return Err(Error::new(
                    "HTTP_TOO_LARGE",
                    format!("the response is over {max} bytes"),
                ));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}

impl std::io::Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(stream) = &self.stream else {
            return Ok(0);
        };
        let wanted = (buf.len() as u64).min(CHUNK);
        match stream.blocking_read(wanted) {
            Ok(bytes) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            Err(StreamError::Closed) => {
                self.stream = None;
                Ok(0)
            }
            Err(StreamError::LastOperationFailed(e)) => {
                self.stream = None;
                Err(std::io::Error::other(e.to_debug_string()))
            }
        }
    }
}

/// `GET url` (a `#fragment` is not sent).
pub fn get(url: &str) -> Result<Response<Body>> {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let request = Request::get(url)
        .body(RequestBody::Empty)
        .map_err(|e| Error::new("HTTP_FAILED", format!("invalid request: {e}")))?;
    send(request)
}

/// Sends `request` (an absolute `http` or `https` URI) and returns once the
/// response's headers have arrived; its body is read as it arrives.
pub fn send<B: Into<RequestBody>>(request: Request<B>) -> Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let invalid = |what: &str| Error::new("HTTP_FAILED", format!("invalid request {what}"));
    let scheme = match parts.uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => {
            return Err(Error::new(
                "HTTP_FAILED",
                format!("`{}` is not an absolute http(s) URL", parts.uri),
            ));
        }
    };
    let authority = parts
        .uri
        .authority()
        .ok_or_else(|| invalid("authority"))?
        .as_str();
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let fields: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&fields)
        .map_err(|e| Error::new("HTTP_FAILED", format!("invalid request headers: {e:?}")))?;
    let outgoing = OutgoingRequest::new(fields);
    outgoing
        .set_method(&wasi_method(&parts.method))
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| invalid("authority"))?;
    outgoing
        .set_path_with_query(Some(path))
        .map_err(|()| invalid("path"))?;
    let outgoing_body = outgoing.body().map_err(|()| invalid("body"))?;
    let pending = outgoing_handler::handle(outgoing, None).map_err(failed)?;
    let sent = write_body(&outgoing_body, body.into())
        .and_then(|()| OutgoingBody::finish(outgoing_body, None).map_err(failed));
    pending.subscribe().block();
    let answer = pending
        .get()
        .ok_or_else(|| Error::new("HTTP_FAILED", "no response"))?
        .map_err(|()| Error::new("HTTP_FAILED", "the response was already taken"))?;
    // The host refuses a request (a host not granted, a timeout) through
    // its response: that is why the body could not be sent.
    let incoming = answer.map_err(failed)?;
    sent?;
    let mut response = Response::builder().status(incoming.status());
    for (name, value) in incoming.headers().entries() {
        response = response.header(name, value);
    }
    let body = incoming.consume().map_err(|()| invalid("response body"))?;
    let stream = body.stream().map_err(|()| invalid("response body"))?;
    response
        .body(Body {
            stream: Some(stream),
            _body: body,
            _response: incoming,
        })
        .map_err(|e| Error::new("HTTP_FAILED", format!("an invalid response: {e}")))
}

/// Sends `body` on the request's body stream, a chunk at a time.
fn write_body(outgoing: &OutgoingBody, body: RequestBody) -> Result<()> {
    let stream = outgoing
        .write()
        .map_err(|()| Error::new("HTTP_FAILED", "invalid request body"))?;
    let send = |bytes: &[u8]| {
        bytes.chunks(WRITE).try_for_each(|piece| {
            stream
                .blocking_write_and_flush(piece)
                .map_err(|e| Error::new("HTTP_FAILED", format!("sending the body failed: {e:?}")))
        })
    };
    match body {
        RequestBody::Empty => Ok(()),
        RequestBody::Bytes(bytes) => send(&bytes),
        RequestBody::Chunks(chunks) => chunks.into_iter().try_for_each(|chunk| send(&chunk?)),
    }
}

fn wasi_method(method: &Method) -> WasiMethod {
    match method.as_str() {
        "GET" => WasiMethod::Get,
        "POST" => WasiMethod::Post,
        "PUT" => WasiMethod::Put,
        "DELETE" => WasiMethod::Delete,
        "PATCH" => WasiMethod::Patch,
        "HEAD" => WasiMethod::Head,
        "OPTIONS" => WasiMethod::Options,
        other => WasiMethod::Other(other.to_owned()),
    }
}

fn failed(code: ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied => Error::new(
            "HTTP_DENIED",
            "denied: the host is not in this plugin's allowed_outbound_hosts",
        ),
        ErrorCode::HttpResponseBodySize(_) => Error::new(
            "HTTP_TOO_LARGE",
            format!("the response is too large: {code:?}"),
        ),
        other => Error::new("HTTP_FAILED", format!("the request failed: {other:?}")),
    }
}
