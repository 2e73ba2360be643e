//! `POST /call` and `POST /batch`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, JsonBody};
use super::{AppState, caller};
use crate::call::{CallError, ErrorCode};
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
    pub(super) fn into_request(self, identity: Identity) -> CallRequest {
        CallRequest {
            request_id: new_request_id(),
            operation: self.operation,
            input: self.input,
            deadline: self.deadline_ms.map(Duration::from_millis),
            identity,
            origin: Origin::Wire(Transport::Http),
        }
    }
}

pub(super) async fn call(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CallBody>,
) -> Result<Json<Value>, ApiError> {
    let request = body.into_request(caller(&state, &headers)?);
    let request_id = request.request_id.clone();
    match state.dispatcher.call(request).await {
        Ok(output) => Ok(Json(ok_body(&request_id, output))),
        Err(error) => Err(ApiError::new(request_id, error)),
    }
}

pub(super) async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(items): JsonBody<Vec<Value>>,
) -> Result<Json<Value>, ApiError> {
    let identity = caller(&state, &headers)?;
    if items.len() > state.config.max_batch {
        return Err(CallError::invalid_input(format!(
            "a batch holds at most {} calls",
            state.config.max_batch
        ))
        .into());
    }
    let calls = items.into_iter().map(|item| {
        let (state, identity) = (state.clone(), identity.clone());
        async move {
            let body: CallBody = match serde_json::from_value(item) {
                Ok(body) => body,
                Err(e) => {
                    let error =
                        CallError::new(ErrorCode::InvalidInput, format!("not a valid call: {e}"));
                    return error_body(&new_request_id(), &error);
                }
            };
            let request = body.into_request(identity);
            let request_id = request.request_id.clone();
            match state.dispatcher.call(request).await {
                Ok(output) => ok_body(&request_id, output),
                Err(error) => error_body(&request_id, &error),
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    Ok(Json(json!({ "results": results })))
}

fn ok_body(request_id: &Arc<str>, output: Value) -> Value {
    json!({ "request_id": request_id, "result": "ok", "output": output })
}

fn error_body(request_id: &Arc<str>, error: &CallError) -> Value {
    json!({ "request_id": request_id, "result": "error", "error": error })
}
