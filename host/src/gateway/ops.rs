//! `POST /ops/{ns}/{op}`: each operation as a route of its own.
//!
//! The body is the operation's input (no body at all is `null`, for an
//! operation that takes none) and the answer's body is its output, so a
//! client generated from `/openapi.json` gets one typed function per
//! operation. A subscription answers with Server-Sent Events, as
//! `/subscribe` does. Failures have the usual error body and status; unlike
//! `/subscribe`, a subscription that fails before it starts is answered
//! with that status too, not with a 200 stream of one error.
//!
//! What `/call` carries in its body travels in headers here: the optional
//! `opbox-deadline-ms` on the request, and `opbox-request-id`, `opbox-cost`
//! and (when traces are exported) `traceparent` on the response.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::call::{COST, with_traceparent};
use super::error::{ApiError, InputBody};
use super::subscribe::events;
use super::{AppState, caller, trace_context};
use crate::call::{CallError, CallRequest, Meter, OpType, Origin, Transport, new_request_id};

/// The request header that may shorten the call's deadline, in whole
/// milliseconds (as `deadline_ms` in a `/call` body).
pub(super) const DEADLINE: HeaderName = HeaderName::from_static("opbox-deadline-ms");

/// The response header that names the call, for its log line and events.
pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static("opbox-request-id");

pub(super) async fn op(
    State(state): State<AppState>,
    Path((namespace, op)): Path<(String, String)>,
    headers: HeaderMap,
    InputBody(input): InputBody,
) -> Response {
    let request_id = new_request_id();
    let request = match route_request(&state, &request_id, (&namespace, &op), Ok(input), &headers) {
        Ok(request) => request,
        Err(error) => return ApiError::new(request_id, error).into_response(),
    };
    // A name the caller cannot see goes the query way, to be refused (and
    // counted) as `/call` refuses it.
    let subscription = matches!(
        state.dispatcher.op_type(&request).await,
        Ok(OpType::Subscription)
    );
    let (mut response, meter, traceparent) = if subscription {
        let started = state.dispatcher.subscribe_metered(request).await;
        let response = match started.result {
            Ok(outputs) => {
                let keep_alive = KeepAlive::new().interval(state.config.sse_keep_alive);
                Sse::new(events(outputs, started.meter.clone()))
                    .keep_alive(keep_alive)
                    .into_response()
            }
            Err(error) => ApiError::new(request_id.clone(), error).into_response(),
        };
        (response, started.meter, started.traceparent)
    } else {
        let called = state.dispatcher.call_metered(request).await;
        let response = match called.result {
            Ok(output) => Json(output).into_response(),
            Err(error) => ApiError::new(request_id.clone(), error).into_response(),
        };
        (response, called.meter, called.traceparent)
    };
    with_call_headers(
        response.headers_mut(),
        &request_id,
        &meter,
        traceparent.as_deref(),
        subscription,
    );
    response
}

/// The call an operation's own route (`/ops/…`, `/raw/…`) makes of its
/// path, its input and its headers: refused, in this order, for a caller
/// without valid credentials, a malformed deadline, or an `input` that
/// could not be read.
pub(super) fn route_request(
    state: &AppState,
    request_id: &Arc<str>,
    (namespace, op): (&str, &str),
    input: Result<serde_json::Value, CallError>,
    headers: &HeaderMap,
) -> Result<CallRequest, CallError> {
    let identity = caller(state, headers)?;
    let deadline = deadline(headers)?;
    Ok(CallRequest {
        request_id: request_id.clone(),
        operation: format!("{namespace}/{op}"),
        input: input?,
        deadline,
        identity,
        origin: Origin::Wire(Transport::Http),
        trace: trace_context(headers),
        attachment: None,
    })
}

/// The `opbox-deadline-ms` header, when there is one.
fn deadline(headers: &HeaderMap) -> Result<Option<Duration>, CallError> {
    let Some(value) = headers.get(&DEADLINE) else {
        return Ok(None);
    };
    let digits = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let Some(digits) = digits else {
        return Err(CallError::invalid_input(
            "`opbox-deadline-ms` is not a whole number of milliseconds",
        ));
    };
    // Digits past a u64 are past the largest deadline too.
    let too_long = |_| crate::call::MAX_DEADLINE_MS + 1;
    match digits.parse::<u64>().unwrap_or_else(too_long) {
        0 => Err(CallError::invalid_input(format!(
            "`opbox-deadline-ms`: {}",
            crate::call::NO_TIME
        ))),
        ms if ms > crate::call::MAX_DEADLINE_MS => Err(CallError::invalid_input(format!(
            "`opbox-deadline-ms`: {}",
            crate::call::TOO_LONG
        ))),
        ms => Ok(Some(Duration::from_millis(ms))),
    }
}

/// The request id, and for a query or mutation its cost (a
/// subscription's comes in its `completed` event), and its trace.
fn with_call_headers(
    headers: &mut HeaderMap,
    request_id: &Arc<str>,
    meter: &Meter,
    traceparent: Option<&str>,
    subscription: bool,
) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if !subscription && let Ok(value) = HeaderValue::from_str(&meter.receipt().to_json()) {
        headers.insert(COST, value);
    }
    with_traceparent(headers, traceparent);
}
