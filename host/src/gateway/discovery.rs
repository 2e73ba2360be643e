//! `GET /search`, `GET /schema`, `GET /openapi.json`, `GET /healthz`.
//!
//! Discovery is a call like any other: `/search` runs `services/list`,
//! `/schema` `services/schema` and `/openapi.json` `services/openapi` for
//! the caller, so they answer only with the caller's tenant's view, and
//! count against the tenant's quotas.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, caller, trace_context};
use crate::call::{CallError, ErrorCode};
use crate::call::{CallRequest, Origin, Transport, new_request_id};
use crate::services;
use crate::telemetry::Metrics;

#[derive(Debug, Deserialize)]
pub(super) struct SearchParams {
    q: Option<String>,
}

pub(super) async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let input = match params.q {
        Some(q) => json!({ "q": q }),
        None => json!({}),
    };
    run(&state, &headers, "list", input).await
}

#[derive(Debug, Deserialize)]
pub(super) struct SchemaParams {
    name: Option<String>,
}

pub(super) async fn schema(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<SchemaParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let name = params
        .name
        .ok_or_else(|| CallError::invalid_input("the `name` query parameter is required"))?;
    run(&state, &headers, "schema", json!({ "name": name })).await
}

pub(super) async fn openapi(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    run(&state, &headers, "openapi", json!({})).await
}

/// `GET /metrics`: every metric in the Prometheus text format, for callers
/// holding the scope `metrics` (anyone, where `public_metrics` says so).
pub(super) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let Some(metrics) = state.config.metrics.clone() else {
        return Err(CallError::new(ErrorCode::NotFound, "no such route").into());
    };
    if !state.config.public_metrics {
        let identity = caller(&state, &headers)?;
        if !identity.scopes.iter().any(|scope| scope == "metrics") {
            let code = if identity.is_anonymous() {
                ErrorCode::Unauthorized
            } else {
                ErrorCode::Forbidden
            };
            return Err(CallError::new(code, "reading /metrics needs the scope `metrics`").into());
        }
    }
    exposition(metrics).await
}

/// `GET /metrics` on the separate `metrics_listen` address: for anyone
/// who can reach it.
pub(super) async fn public_metrics(
    State(metrics): State<Arc<Metrics>>,
) -> Result<axum::response::Response, ApiError> {
    exposition(metrics).await
}

/// `metrics` in the Prometheus text format.
async fn exposition(metrics: Arc<Metrics>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    // Encoding reads every series: off the async workers.
    let text = tokio::task::spawn_blocking(move || metrics.encode())
        .await
        .map_err(|_| ApiError::from(CallError::internal()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Calls `services/{op}` for the sender of `headers`; its output is the body.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    op: &str,
    input: Value,
) -> Result<Json<Value>, ApiError> {
    let request = CallRequest {
        request_id: new_request_id(),
        operation: format!("{}/{op}", services::NAMESPACE),
        input,
        deadline: None,
        identity: caller(state, headers)?,
        origin: Origin::Wire(Transport::Http),
        trace: trace_context(headers),
        attachment: None,
    };
    let request_id = request.request_id.clone();
    match state.dispatcher.call(request).await {
        Ok(output) => Ok(Json(output)),
        Err(error) => Err(ApiError::new(request_id, error)),
    }
}

pub(super) fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::from(CallError::invalid_input(format!(
        "the query string is not valid: {}",
        rejection.body_text()
    )))
    .with_status(StatusCode::BAD_REQUEST)
}
