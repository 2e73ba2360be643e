//! `POST /raw/{ns}/{op}`: a byte-stream operation over HTTP (the raw
//! carriage, `docs/raw.md`).
//!
//! The operation's JSON arguments travel in the `opbox-input` header (`{}`
//! when there is none); the request body is its stdin, read only as fast as
//! the operation reads, and the response body its output, sent as it is
//! written. Over HTTP/2 both bodies stream at once, so an interactive
//! operation answers each line while the next is still to come; over
//! HTTP/1.1 they do too, with a client that reads while it sends.
//!
//! The response body is, by what the request accepts:
//! - `application/octet-stream` (the default): stdout alone; the end of the
//!   operation is the `opbox-exit` trailer (its exit code) or the
//!   `opbox-error` trailer (the error, as JSON), for clients that read
//!   trailers. stderr is not in this form.
//! - `application/vnd.opbox.raw` (`Accept`): frames of `[type u8][length
//!   u32 big-endian][payload]`: type 1 stdout, 2 stderr, a zero-length
//!   stdout frame once the output is drained, then 3 with the one-byte exit
//!   code, or 4 with the error as JSON.
//!
//! A failure before the operation starts (no such operation, wrong kind,
//! arguments its schema refuses, no room) is answered with the usual error
//! body and status.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::Value;

use super::AppState;
use super::call::{COST, with_traceparent};
use super::error::ApiError;
use super::ops::{REQUEST_ID, route_request};
use crate::call::{CallError, Meter, new_request_id};
use crate::runtime::RawOutput;

/// The request header that carries the operation's arguments, JSON.
pub(super) const INPUT: HeaderName = HeaderName::from_static("opbox-input");

/// The framed form of the response body.
pub const FRAMED: &str = "application/vnd.opbox.raw";

/// A frame's type: stdout.
pub const STDOUT: u8 = 1;
/// A frame's type: stderr.
pub const STDERR: u8 = 2;
/// A frame's type: the exit code, one byte; the last frame.
pub const EXIT: u8 = 3;
/// A frame's type: the error that ended the call, JSON; the last frame.
pub const ERROR: u8 = 4;

/// The trailer with the exit code, in the plain form.
const EXIT_TRAILER: HeaderName = HeaderName::from_static("opbox-exit");
/// The trailer with the error, in the plain form.
const ERROR_TRAILER: HeaderName = HeaderName::from_static("opbox-error");

pub(super) async fn raw(
    State(state): State<AppState>,
    Path((namespace, op)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = new_request_id();
    let refuse = |error: CallError| ApiError::new(request_id.clone(), error).into_response();
    let request = match route_request(
        &state,
        &request_id,
        (&namespace, &op),
        arguments(&headers),
        &headers,
    ) {
        Ok(request) => request,
        Err(error) => return refuse(error),
    };
    let framed = accepts_framed(&headers);
    // The body's chunks as they arrive, and its end as the end of stdin. A
    // body cut off (the client went away, or reset its side) is not an
    // end: the operation must not take half its input for the whole. The
    // call is stopped instead: its response ends, which drops it.
    let (cut, cut_off) = futures::channel::oneshot::channel::<()>();
    let stdin = futures::stream::unfold(
        (body.into_data_stream(), Some(cut)),
        |(mut body, mut cut)| async move {
            match body.next().await {
                Some(Ok(chunk)) => Some((chunk, (body, cut))),
                None => None,
                Some(Err(_)) => {
                    if let Some(cut) = cut.take() {
                        let _ = cut.send(());
                    }
                    std::future::pending().await
                }
            }
        },
    )
    .boxed();
    let started = state.dispatcher.run_raw_metered(request, stdin).await;
    let outputs = match started.result {
        // Only a cut stops the output; stdin's normal end drops the sender.
        Ok(outputs) => outputs
            .take_until(async {
                if cut_off.await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .boxed(),
        Err(error) => return refuse(error),
    };
    let meter = started.meter.clone();
    let (content_type, body) = if framed {
        (
            FRAMED,
            Body::new(StreamBody::new(framed_body(outputs, meter))),
        )
    } else {
        let body = Body::new(StreamBody::new(plain_body(outputs, meter)));
        ("application/octet-stream", body)
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, value);
    }
    with_traceparent(headers, started.traceparent.as_deref());
    response
}

/// The `opbox-input` header as JSON; `{}` without one.
fn arguments(headers: &HeaderMap) -> Result<Value, CallError> {
    let Some(value) = headers.get(&INPUT) else {
        return Ok(Value::Object(serde_json::Map::new()));
    };
    let text = value
        .to_str()
        .map_err(|_| CallError::invalid_input("`opbox-input` is not JSON text"))?;
    serde_json::from_str(text)
        .map_err(|e| CallError::invalid_input(format!("`opbox-input` is not JSON: {e}")))
}

/// Whether the caller asked for the framed form.
fn accepts_framed(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().map(str::trim) == Some(FRAMED))
}

/// One frame: `[kind][length u32 BE][payload]`.
pub fn frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(kind);
    // Outputs come in chunks of at most 64 KiB; errors are bounded by
    // `output_bytes`.
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

fn error_json(error: &CallError) -> Vec<u8> {
    serde_json::to_vec(error).unwrap_or_default()
}

/// Every output as a frame, then the receipt as a trailer.
fn framed_body(
    outputs: crate::dispatch::RawOutputs,
    meter: Arc<Meter>,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> {
    outputs.flat_map(move |output| {
        let frames = match output {
            Ok(RawOutput::Stdout(bytes)) => vec![Frame::data(frame(STDOUT, &bytes))],
            Ok(RawOutput::Stderr(bytes)) => vec![Frame::data(frame(STDERR, &bytes))],
            Ok(RawOutput::Exit(code)) => vec![
                Frame::data(frame(STDOUT, &[])),
                Frame::data(frame(EXIT, &[code])),
                Frame::trailers(receipt(&meter)),
            ],
            Err(error) => vec![
                Frame::data(frame(ERROR, &error_json(&error))),
                Frame::trailers(receipt(&meter)),
            ],
        };
        futures::stream::iter(frames.into_iter().map(Ok))
    })
}

/// stdout as the body; the end and the receipt as trailers.
fn plain_body(
    outputs: crate::dispatch::RawOutputs,
    meter: Arc<Meter>,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> {
    outputs.filter_map(move |output| {
        let frame = match output {
            Ok(RawOutput::Stdout(bytes)) => Some(Frame::data(bytes)),
            Ok(RawOutput::Stderr(_)) => None,
            Ok(RawOutput::Exit(code)) => {
                let mut trailers = receipt(&meter);
                trailers.insert(EXIT_TRAILER, HeaderValue::from(u16::from(code)));
                Some(Frame::trailers(trailers))
            }
            Err(error) => {
                let mut trailers = receipt(&meter);
                if let Ok(value) = HeaderValue::from_bytes(&error_json(&error)) {
                    trailers.insert(ERROR_TRAILER, value);
                }
                Some(Frame::trailers(trailers))
            }
        };
        std::future::ready(frame.map(Ok))
    })
}

/// The call's cost receipt, as the trailer that ends the response.
fn receipt(meter: &Meter) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&meter.receipt().to_json()) {
        trailers.insert(COST, value);
    }
    trailers
}
