//! `/http/{name}/…`: standard `wasi:http` components (`docs/wasi-http.md`),
//! each mounted under its plugin's name.
//!
//! The component gets the request as it came, less its mount: `GET
//! /http/hello/a/b?c=1` arrives as `GET /a/b?c=1`, with its headers and its
//! body streamed as it arrives. The caller's `Authorization` and the
//! `opbox-*` headers are the host's and are not passed on: the caller's
//! token is not the component's to see. The response streams back as the
//! component writes it, with `opbox-request-id` (and `traceparent`) added,
//! and the call's cost receipt as the `opbox-cost` trailer.
//! A failure before the component answers has the usual error body and
//! status; one after its head ends the body early.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;

use super::AppState;
use super::call::{COST, with_traceparent};
use super::error::ApiError;
use super::ops::{REQUEST_ID, route_request};
use crate::call::{CallError, ErrorCode, new_request_id};
use crate::dispatch::HttpPart;
use crate::runtime::{HTTP_OPERATION, request_body};

/// The prefix every mount sits under.
const MOUNTS: &str = "/http/";

pub(super) async fn http(State(state): State<AppState>, request: Request) -> Response {
    let request_id = new_request_id();
    let Some((name, uri)) = mounted(request.uri()) else {
        let error = CallError::new(ErrorCode::NotFound, "no such route");
        return ApiError::new(request_id, error).into_response();
    };
    // Said of the mount, not of the operation behind it; the same for a
    // component another tenant holds as for a name nobody uses.
    let refuse = |error: CallError| {
        let error = match error.code {
            ErrorCode::NotFound => CallError::new(
                ErrorCode::NotFound,
                format!("no HTTP component named `{}`", crate::call::cut(&name, 64)),
            ),
            _ => error,
        };
        ApiError::new(request_id.clone(), error).into_response()
    };
    let (mut parts, body) = request.into_parts();
    let call = match route_request(
        &state,
        &request_id,
        (&name, HTTP_OPERATION),
        Ok(serde_json::Value::Null),
        &parts.headers,
    ) {
        Ok(call) => call,
        Err(error) => return refuse(error),
    };
    parts.uri = uri;
    parts.headers.remove(AUTHORIZATION);
    let ours: Vec<_> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("opbox-"))
        .cloned()
        .collect();
    for header in ours {
        parts.headers.remove(header);
    }
    let body = request_body(body);
    let served = state
        .dispatcher
        .serve_http(call, http::Request::from_parts(parts, body))
        .await;
    let mut answer = match served.result {
        Ok(answer) => answer,
        Err(error) => return refuse(error),
    };
    let head = match answer.next().await {
        Some(Ok(HttpPart::Head(head))) => head,
        Some(Err(error)) => return refuse(error),
        _ => return refuse(CallError::internal()),
    };
    // The component's trailers, if it sends any, are held for the end,
    // where the call's cost receipt joins them (`opbox-cost`).
    let held = Arc::new(Mutex::new(HeaderMap::new()));
    let keep = held.clone();
    let meter = served.meter.clone();
    let body = answer
        .filter_map(move |part| {
            std::future::ready(match part {
                Ok(HttpPart::Data(bytes)) => Some(Ok::<_, CallError>(Frame::data(bytes))),
                Ok(HttpPart::Trailers(trailers)) => {
                    lock(&keep).extend(trailers);
                    None
                }
                Ok(HttpPart::Head(_)) => Some(Err(CallError::internal())),
                Err(error) => Some(Err(error)),
            })
        })
        .chain(futures::stream::once(async move {
            let mut trailers = std::mem::take(&mut *lock(&held));
            if let Ok(value) = HeaderValue::from_str(&meter.receipt().to_json()) {
                trailers.insert(COST, value);
            }
            Ok(Frame::trailers(trailers))
        }));
    let mut response = Response::from_parts(head, Body::new(StreamBody::new(body)));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, value);
    }
    with_traceparent(headers, served.traceparent.as_deref());
    response
}

fn lock(trailers: &Mutex<HeaderMap>) -> std::sync::MutexGuard<'_, HeaderMap> {
    trailers.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The component `uri` names, and the URI it gets: the path below its
/// mount (`/` at least), with the query.
fn mounted(uri: &Uri) -> Option<(String, Uri)> {
    let below = uri.path().strip_prefix(MOUNTS)?;
    let (name, rest) = below.split_once('/').unwrap_or((below, ""));
    if name.is_empty() {
        return None;
    }
    let path = match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    // Over HTTP/2 the authority is in the URI (there is no `Host`).
    let mut builder = Uri::builder();
    if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
        builder = builder.scheme(scheme.clone()).authority(authority.clone());
    }
    let uri = builder.path_and_query(path).build().ok()?;
    Some((name.to_owned(), uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_is_taken_off_the_path_and_the_query_kept() {
        let cases = [
            ("/http/hello", Some(("hello", "/"))),
            ("/http/hello/", Some(("hello", "/"))),
            ("/http/hello/a/b?c=1&d", Some(("hello", "/a/b?c=1&d"))),
            ("/http/hello?x=1", Some(("hello", "/?x=1"))),
            ("/http/", None),
            (
                "http://example.com/http/hello/a?b",
                Some(("hello", "http://example.com/a?b")),
            ),
            ("/other/hello", None),
        ];
        for (uri, expected) in cases {
            let got = mounted(&uri.parse().unwrap());
            let got = got.as_ref().map(|(n, u)| (n.as_str(), u.to_string()));
            let expected = expected.map(|(n, u)| (n, u.to_owned()));
            assert_eq!(got, expected, "{uri}");
        }
    }
}
