//! `POST /call` and `POST /batch`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, JsonBody};
use super::{AppState, caller, trace_context};
use crate::call::{CallError, ErrorCode, Receipt, TraceParent};
use crate::call::{CallRequest, Identity, Origin, Transport, new_request_id};

/// The body of `/call` and of each `/batch` item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallBody {
    operation: String,
    #[serde(default)]
    input: Value,
    #[serde(default, deserialize_with = "crate::call::whole_millis")]
    deadline_ms: Option<u64>,
}

impl CallBody {
    pub(super) fn into_request(
        self,
        identity: Identity,
        trace: Option<TraceParent>,
    ) -> CallRequest {
        CallRequest {
            request_id: new_request_id(),
            operation: self.operation,
            input: self.input,
            deadline: self.deadline_ms.map(Duration::from_millis),
            identity,
            origin: Origin::Wire(Transport::Http),
            trace,
            attachment: None,
        }
    }
}

/// The response header that carries a call's [`Receipt`], as JSON.
pub(super) const COST: HeaderName = HeaderName::from_static("opbox-cost");

pub(super) async fn call(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CallBody>,
) -> Result<Response, ApiError> {
    let request = body.into_request(caller(&state, &headers)?, trace_context(&headers));
    let request_id = request.request_id.clone();
    let called = state.dispatcher.call_metered(request).await;
    let mut response = match called.result {
        Ok(output) => Json(ok_body(&request_id, output)).into_response(),
        Err(error) => ApiError::new(request_id, error).into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&called.meter.receipt().to_json()) {
        headers.insert(COST, value);
    }
    with_traceparent(headers, called.traceparent.as_deref());
    Ok(response)
}

pub(super) async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(items): JsonBody<Vec<Value>>,
) -> Result<Json<Value>, ApiError> {
    let identity = caller(&state, &headers)?;
    // Every item of a batch joins the caller's trace.
    let trace = trace_context(&headers);
    if items.len() > state.config.max_batch {
        return Err(CallError::invalid_input(format!(
            "a batch holds at most {} calls",
            state.config.max_batch
        ))
        .into());
    }
    let calls = items.into_iter().map(|item| {
        let (state, identity, trace) = (state.clone(), identity.clone(), trace.clone());
        async move {
            let body: CallBody = match serde_json::from_value(item) {
                Ok(body) => body,
                Err(e) => {
                    let error =
                        CallError::new(ErrorCode::InvalidInput, format!("not a valid call: {e}"));
                    return error_body(&new_request_id(), &error);
                }
            };
            let request = body.into_request(identity, trace.clone());
            let request_id = request.request_id.clone();
            let called = state.dispatcher.call_metered(request).await;
            let mut item = match called.result {
                Ok(output) => ok_body(&request_id, output),
                Err(error) => error_body(&request_id, &error),
            };
            item["cost"] = cost(&called.meter.receipt());
            if let Some(traceparent) = called.traceparent {
                item["traceparent"] = traceparent.into();
            }
            item
        }
    });
    let results = futures::future::join_all(calls).await;
    Ok(Json(json!({ "results": results })))
}

/// Adds the call's `traceparent` to a response's headers, when it has one.
pub(super) fn with_traceparent(headers: &mut HeaderMap, traceparent: Option<&str>) {
    if let Some(value) = traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(HeaderName::from_static("traceparent"), value);
    }
}

/// A receipt as a JSON value.
pub(super) fn cost(receipt: &Receipt) -> Value {
    serde_json::to_value(receipt).unwrap_or(Value::Null)
}

fn ok_body(request_id: &Arc<str>, output: Value) -> Value {
    json!({ "request_id": request_id, "result": "ok", "output": output })
}

fn error_body(request_id: &Arc<str>, error: &CallError) -> Value {
    json!({ "request_id": request_id, "result": "error", "error": error })
}
