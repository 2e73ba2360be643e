//! `GET /search`, `GET /schema`, `GET /healthz`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, caller};
use crate::error::CallError;

#[derive(Debug, Deserialize)]
pub(super) struct SearchParams {
    q: Option<String>,
}

pub(super) async fn search(
    State(state): State<AppState>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let operations = state
        .dispatcher
        .search(&caller(&state), params.q.as_deref());
    Ok(Json(json!({ "operations": operations })))
}

#[derive(Debug, Deserialize)]
pub(super) struct SchemaParams {
    name: Option<String>,
}

pub(super) async fn schema(
    State(state): State<AppState>,
    params: Result<Query<SchemaParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let name = params
        .name
        .ok_or_else(|| CallError::invalid_input("the `name` query parameter is required"))?;
    let spec = state.dispatcher.schema(&caller(&state), &name)?;
    Ok(Json(
        serde_json::to_value(spec).map_err(|_| CallError::internal())?,
    ))
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::from(CallError::invalid_input(format!(
        "the query string is not valid: {}",
        rejection.body_text()
    )))
    .with_status(StatusCode::BAD_REQUEST)
}
