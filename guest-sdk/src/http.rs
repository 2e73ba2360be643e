//! Outbound HTTP (`opbox:plugin/outbound`), to the hosts the operator
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
//! sent ([`RequestBody::chunks`], [`RequestBody::stream`]), and a response's
//! [`Body`] hands over its bytes as they arrive ([`Body::chunk`]), so a
//! plugin can pass a long response on piece by piece. Waiting is async: the
//! call's other futures run meanwhile. Redirects are not followed; a plugin
//! that follows one makes a new request, which the host checks again.
//!
//! ```ignore
//! use opbox_sdk::http::{self, Request};
//!
//! let mut response = http::get("https://api.example.com/items").await?;
//! let text = String::from_utf8_lossy(&response.body_mut().read_all(1 << 20).await?).into_owned();
//!
//! let request = Request::post("https://api.example.com/items")
//!     .header("content-type", "application/json")
//!     .body(r#"{"name":"x"}"#)?;
//! let response = http::send(request).await?;
//! assert!(response.status().is_success());
//! ```
//!
//! A host that is not granted answers `HTTP_DENIED`; every other failure is
//! `HTTP_FAILED`, and a response over the cap `HTTP_TOO_LARGE`. Requests go
//! through `opbox:plugin/outbound`, which the host serves with the same
//! checks as `wasi:http/outgoing-handler`.

pub use ::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use futures::stream::{LocalBoxStream, Stream, StreamExt};

use crate::__private::opbox::plugin::outbound;
use crate::__private::{wit_bindgen, wit_stream};
use crate::{Error, Result};

/// What a request sends.
pub enum RequestBody {
    /// Nothing.
    Empty,
    /// These bytes.
    Bytes(Vec<u8>),
    /// Chunks, each made as the host takes the one before.
    Chunks(LocalBoxStream<'static, Vec<u8>>),
}

impl RequestBody {
    /// A body of `chunks`, each made only as the host takes the one before.
    pub fn chunks(chunks: impl IntoIterator<Item = Vec<u8>> + 'static) -> Self {
        Self::Chunks(futures::stream::iter(chunks).boxed_local())
    }

    /// A body of the chunks `stream` yields, as the host takes them.
    pub fn stream(stream: impl Stream<Item = Vec<u8>> + 'static) -> Self {
        Self::Chunks(stream.boxed_local())
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
pub struct Body {
    chunks: Option<wit_bindgen::StreamReader<Result<Vec<u8>, crate::__private::CallError>>>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("ended", &self.chunks.is_none())
            .finish()
    }
}

impl Body {
    /// The next bytes of the body as they arrive; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(chunks) = &mut self.chunks else {
            return Ok(None);
        };
        match chunks.next().await {
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(error)) => {
                self.chunks = None;
                Err(Error::from(error))
            }
            None => {
                self.chunks = None;
                Ok(None)
            }
        }
    }

    /// The whole body, failing with `HTTP_TOO_LARGE` past `max` bytes.
    pub async fn read_all(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk().await? {
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

/// `GET url` (a `#fragment` is not sent).
pub async fn get(url: &str) -> Result<Response<Body>> {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let request = Request::get(url)
        .body(RequestBody::Empty)
        .map_err(|e| Error::new("HTTP_FAILED", format!("invalid request: {e}")))?;
    send(request).await
}

/// Sends `request` (an absolute `http` or `https` URI) and returns once the
/// response's head has arrived; its body is read as it arrives. The request
/// body is sent meanwhile, as the host takes it.
pub async fn send<B: Into<RequestBody>>(request: Request<B>) -> Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let head = outbound::Request {
        method: parts.method.as_str().to_owned(),
        url: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
    };
    let (mut writer, reader) = wit_stream::new::<Vec<u8>>();
    let body = body.into();
    let write = async move {
        let mut chunks = match body {
            RequestBody::Empty => return,
            RequestBody::Bytes(bytes) => futures::stream::iter([bytes]).boxed_local(),
            RequestBody::Chunks(chunks) => chunks,
        };
        while let Some(chunk) = chunks.next().await {
            // What the host did not take: it stopped reading (the request
            // is over), so the rest goes nowhere.
            if !writer.write_all(vec![chunk]).await.is_empty() {
                return;
            }
        }
    };
    let (answer, ()) = futures::join!(outbound::send(head, reader), write);
    let (head, chunks) = answer.map_err(Error::from)?;
    let mut response = Response::builder().status(head.status);
    for (name, value) in head.headers {
        response = response.header(name, value);
    }
    response
        .body(Body {
            chunks: Some(chunks),
        })
        .map_err(|e| Error::new("HTTP_FAILED", format!("an invalid response: {e}")))
}
