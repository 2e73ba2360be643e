//! Outbound HTTP (`wasi:http/outgoing-handler`), to the hosts the operator
//! granted:
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
//! Bodies stream: [`Body::chunk`] returns the bytes as they arrive, so a
//! plugin can pass a long response on piece by piece. Redirects are not
//! followed; a plugin that follows one makes a new request, which the host
//! checks again.
//!
//! ```ignore
//! let mut response = opbox_sdk::http::get("https://api.example.com/items")?;
//! let text = String::from_utf8_lossy(&response.body.read_all(1 << 20)?).into_owned();
//! ```
//!
//! A host that is not granted answers `HTTP_DENIED`; every other failure is
//! `HTTP_FAILED`, and a response over the cap `HTTP_TOO_LARGE`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::{Error, Result};

/// The most bytes one [`Body::chunk`] returns.
const CHUNK: u64 = 64 * 1024;

/// A response whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, to read as it arrives.
    pub body: Body,
}

impl Response {
    /// The first value of header `name` (lowercase), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
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

/// `GET url`.
pub fn get(url: &str) -> Result<Response> {
    request("GET", url, &[], None)
}

/// Sends a request: `method` (`GET`, `POST`, …), an absolute `http` or
/// `https` URL, headers, and an optional body; returns once the response's
/// headers have arrived.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Result<Response> {
    let (scheme, authority, path) = split_url(url)?;
    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
        .collect();
    let fields = Fields::from_list(&fields)
        .map_err(|e| Error::new("HTTP_FAILED", format!("invalid request headers: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_owned()),
    };
    let invalid = |what: &str| Error::new("HTTP_FAILED", format!("invalid request {what}"));
    request
        .set_method(&method)
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("authority"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| invalid("path"))?;
    let outgoing = request.body().map_err(|()| invalid("body"))?;
    let pending = outgoing_handler::handle(request, None).map_err(failed)?;
    if let Some(bytes) = body {
        let stream = outgoing.write().map_err(|()| invalid("body"))?;
        for chunk in bytes.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| {
                Error::new("HTTP_FAILED", format!("sending the body failed: {e:?}"))
            })?;
        }
        drop(stream);
    }
    OutgoingBody::finish(outgoing, None).map_err(failed)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| Error::new("HTTP_FAILED", "no response"))?
        .map_err(|()| Error::new("HTTP_FAILED", "the response was already taken"))?
        .map_err(failed)?;
    let status = response.status();
    let headers = response.headers().entries();
    let body = response.consume().map_err(|()| invalid("response body"))?;
    let stream = body.stream().map_err(|()| invalid("response body"))?;
    Ok(Response {
        status,
        headers,
        body: Body {
            stream: Some(stream),
            _body: body,
            _response: response,
        },
    })
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

/// `scheme`, `host[:port]` and `/path?query` of an absolute URL (a
/// fragment is dropped: it is not sent).
fn split_url(url: &str) -> Result<(Scheme, &str, String)> {
    let bad = || {
        Error::new(
            "HTTP_FAILED",
            format!("`{url}` is not an absolute http(s) URL"),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad()),
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_owned()),
        Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    Ok((scheme, authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (bool, String, String) {
        let (scheme, authority, path) = split_url(url).unwrap();
        (matches!(scheme, Scheme::Https), authority.to_owned(), path)
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let expect =
            |https, authority: &str, path: &str| (https, authority.to_owned(), path.to_owned());
        assert_eq!(
            parts("https://api.example.com"),
            expect(true, "api.example.com", "/")
        );
        assert_eq!(
            parts("http://127.0.0.1:8080/a/b?c=d"),
            expect(false, "127.0.0.1:8080", "/a/b?c=d")
        );
        assert_eq!(parts("http://h?x=1"), expect(false, "h", "/?x=1"));
        assert_eq!(parts("http://h/p#frag"), expect(false, "h", "/p"));
        for bad in ["ftp://h/", "h/path", "http://", "http:///path"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
