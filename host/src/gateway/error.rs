//! Errors at the HTTP edge, in the protocol's shape.
//!
//! Every route answers failures with
//! `{"request_id", "result": "error", "error": {code, message, retryable, details?}}`
//! and the status of the code (PROTOCOL.md), including failures axum finds
//! before a handler runs: a body over the size limit, a body that is not JSON.

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppState;
use crate::call::new_request_id;
use crate::call::{CallError, ErrorCode};

/// A failed request, ready to become a response.
#[derive(Debug)]
pub struct ApiError {
    request_id: Arc<str>,
    error: CallError,
    status: StatusCode,
}

impl ApiError {
    /// The error of call `request_id`, with its code's status.
    pub fn new(request_id: Arc<str>, error: CallError) -> Self {
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            request_id,
            error,
            status,
        }
    }

    pub(super) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The host limit the call met, as its details name it.
    pub(super) fn limit(&self) -> Option<&str> {
        self.error.details.as_ref()?.get("limit")?.as_str()
    }
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> Self {
        Self::new(new_request_id(), error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = retry_after(&self.error);
        let body = json!({
            "request_id": self.request_id,
            "result": "error",
            "error": self.error,
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// `details.retry_after_ms` in whole seconds, rounded up, for the
/// `Retry-After` header: only for the host's own refusals, never for a
/// plugin's error, whatever its details say.
fn retry_after(error: &CallError) -> Option<u64> {
    if !matches!(
        error.code,
        ErrorCode::ResourceExhausted | ErrorCode::Unavailable
    ) {
        return None;
    }
    let ms = error.details.as_ref()?.get("retry_after_ms")?.as_u64()?;
    Some(ms.div_ceil(1000).max(1))
}

/// A JSON request body, with every way of failing mapped to [`ApiError`]:
/// 413 over the size limit, 408 when it is not all sent within the body
/// timeout, 400 when it is not JSON of the expected shape.
/// The `Content-Type` is not checked, so `curl -d` works as is.
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(request, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// An operation's input as a request body: JSON, or nothing at all for
/// `null` (an operation that takes no input), failing as [`JsonBody`].
#[derive(Debug)]
pub(super) struct InputBody(pub Value);

impl FromRequest<AppState> for InputBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(InputBody(Value::Null));
        }
        parse(&bytes).map(InputBody)
    }
}

/// The whole body of `request`, within the size limit and the body timeout.
async fn read_body(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let timeout = state.config.connection.body_timeout;
    let read = tokio::time::timeout(timeout, Bytes::from_request(request, state));
    read.await
        .map_err(|_| {
            ApiError::from(
                CallError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the request body was not sent within {} ms",
                        timeout.as_millis()
                    ),
                )
                .with_details(json!({
                    "limit": "body_timeout_ms",
                    "value": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })),
            )
            .with_status(StatusCode::REQUEST_TIMEOUT)
        })?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::from(CallError::invalid_input(
                    "the request body is over the size limit",
                ))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            } else {
                ApiError::from(CallError::invalid_input(
                    "the request body could not be read",
                ))
                .with_status(StatusCode::BAD_REQUEST)
            }
        })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::from(CallError::new(
            ErrorCode::InvalidInput,
            format!("the request body is not valid: {e}"),
        ))
        .with_status(StatusCode::BAD_REQUEST)
    })
}
