//! `/admin/v1/plugins`: the plugin lifecycle over HTTP, each route a thin
//! layer over an `admin/*` operation.
//!
//! | route | operation | body | answer |
//! |---|---|---|---|
//! | `POST /admin/v1/plugins` | `admin/install` | the component (`application/wasm`) | `201`, the plugin |
//! | `GET /admin/v1/plugins` | `admin/list` | | `{"plugins": [...]}` |
//! | `GET /admin/v1/plugins/{name}` | `admin/show` | | the plugin |
//! | `PUT /admin/v1/plugins/{name}` | `admin/replace` | the new component | the plugin |
//! | `DELETE /admin/v1/plugins/{name}` | `admin/remove` | | `{"removed": name}` |
//! | `GET /admin/v1/plugins/{name}/logs` | `admin/logs` | | `{"lines": [...], "next": seq}` |
//!
//! `?tenant=ID` addresses a tenant's plugins (shared ones without it);
//! `PUT …?force=true` skips the compatibility gate. An
//! upload's other settings travel in one JSON header, `opbox-plugin`:
//! `{"name": "…", "limits": {…}, "grants": {…}, "reuse": {…}}`, the fields
//! of a `[[plugins]]` entry (`name` on install only: a replace keeps the
//! name; `reuse` from the operator only).
//!
//! The body of an install or replace is the component itself, handed to
//! the operation as an attachment (never as base64 text): the operation
//! reads it only once its sender is known to be allowed to make the change,
//! at most `max_plugin_bytes` of it, at most `max_uploads` at once, and all
//! of it within `body_timeout_ms` (else `408`), as for any route that
//! reaches `admin/install` or `admin/replace`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::{AppState, caller, trace_context};
use crate::call::{Attachment, CallError, CallRequest, Origin, Transport, new_request_id};
use crate::contract::{self, UploadSettings};

/// The namespace of the lifecycle operations (`plugins::NAMESPACE`).
const ADMIN: &str = "admin";

/// The header carrying an upload's settings.
const SETTINGS: &str = "opbox-plugin";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Whose {
    tenant: Option<String>,
}

/// A replace's query: whose plugin, and whether to skip the compatibility
/// gate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplaceQuery {
    tenant: Option<String>,
    #[serde(default)]
    force: bool,
}

pub(super) async fn install(
    State(state): State<AppState>,
    headers: HeaderMap,
    whose: Result<Query<Whose>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(whose) = whose.map_err(super::discovery::bad_query)?;
    let mut input = settings(&headers, true)?;
    let output = upload(&state, &headers, "install", whose, &mut input, body).await?;
    Ok((StatusCode::CREATED, Json(output)))
}

pub(super) async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<ReplaceQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let Query(ReplaceQuery { tenant, force }) = query.map_err(super::discovery::bad_query)?;
    let whose = Whose { tenant };
    let mut input = settings(&headers, false)?;
    input.insert("name".into(), json!(name));
    if force {
        input.insert("force".into(), json!(true));
    }
    upload(&state, &headers, "replace", whose, &mut input, body)
        .await
        .map(Json)
}

pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    whose: Result<Query<Whose>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(whose) = whose.map_err(super::discovery::bad_query)?;
    run(&state, &headers, "list", with_tenant(Map::new(), whose))
        .await
        .map(Json)
}

pub(super) async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    whose: Result<Query<Whose>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    named(&state, &headers, "show", name, whose).await
}

/// `GET /admin/v1/plugins/{name}/logs?after=N&limit=M`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    tenant: Option<String>,
    after: Option<u64>,
    limit: Option<u64>,
}

pub(super) async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(super::discovery::bad_query)?;
    let mut input = Map::from_iter([("name".into(), json!(name))]);
    if let Some(after) = query.after {
        input.insert("after".into(), json!(after));
    }
    if let Some(limit) = query.limit {
        input.insert("limit".into(), json!(limit));
    }
    let input = with_tenant(
        input,
        Whose {
            tenant: query.tenant,
        },
    );
    run(&state, &headers, "logs", input).await.map(Json)
}

pub(super) async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    whose: Result<Query<Whose>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    named(&state, &headers, "remove", name, whose).await
}

/// Runs `admin/{op}` on the plugin `name` of the tenant `whose` names.
async fn named(
    state: &AppState,
    headers: &HeaderMap,
    op: &str,
    name: String,
    whose: Result<Query<Whose>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(whose) = whose.map_err(super::discovery::bad_query)?;
    let input = with_tenant(Map::from_iter([("name".into(), json!(name))]), whose);
    run(state, headers, op, input).await.map(Json)
}

/// The `opbox-plugin` header as an input: `limits`, `grants` and, on an
/// install, `name`.
fn settings(headers: &HeaderMap, named: bool) -> Result<Map<String, Value>, ApiError> {
    let Some(value) = headers.get(SETTINGS) else {
        return Ok(Map::new());
    };
    let bad = |why: String| {
        ApiError::from(CallError::invalid_input(format!(
            "the `{SETTINGS}` header {why}"
        )))
    };
    let text = value.to_str().map_err(|_| bad("is not text".into()))?;
    let Value::Object(fields) =
        serde_json::from_str(text).map_err(|e| bad(format!("is not JSON: {e}")))?
    else {
        return Err(bad("must be a JSON object".into()));
    };
    // The header is an `UploadSettings`, read here so that its errors
    // name it; the operation checks the whole input again.
    contract::read::<UploadSettings>(Value::Object(fields.clone()))
        .map_err(|e| bad(format!("is not valid: {}", e.message)))?;
    if !named && fields.contains_key("name") {
        return Err(bad("has `name`; a replace keeps the plugin's name".into()));
    }
    Ok(fields)
}

fn with_tenant(mut input: Map<String, Value>, whose: Whose) -> Value {
    if let Some(tenant) = whose.tenant {
        input.insert("tenant".into(), json!(tenant));
    }
    Value::Object(input)
}

/// Runs `admin/{op}` with the request body as its component, streamed to
/// the operation, which reads it once it has admitted the call and within
/// its own bounds (`max_uploads`, `max_plugin_bytes`); the sender has the
/// body timeout to send it all.
async fn upload(
    state: &AppState,
    headers: &HeaderMap,
    op: &str,
    whose: Whose,
    input: &mut Map<String, Value>,
    body: Body,
) -> Result<Value, ApiError> {
    let input = with_tenant(std::mem::take(input), whose);
    let attachment = Attachment::streamed(
        body.into_data_stream(),
        state.config.connection.body_timeout,
    );
    let request = CallRequest {
        attachment: Some(attachment),
        ..request(state, headers, op, input)?
    };
    call(state, request).await.map_err(|error| {
        // The limits an upload's body meets, in HTTP's words.
        let status = match error.limit() {
            Some("max_plugin_bytes") => Some(StatusCode::PAYLOAD_TOO_LARGE),
            Some("body_timeout_ms") => Some(StatusCode::REQUEST_TIMEOUT),
            _ => None,
        };
        match status {
            Some(status) => error.with_status(status),
            None => error,
        }
    })
}

/// Runs `admin/{op}` with `input` for the sender of `headers`.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    op: &str,
    input: Value,
) -> Result<Value, ApiError> {
    call(state, request(state, headers, op, input)?).await
}

fn request(
    state: &AppState,
    headers: &HeaderMap,
    op: &str,
    input: Value,
) -> Result<CallRequest, ApiError> {
    Ok(CallRequest {
        request_id: new_request_id(),
        operation: format!("{ADMIN}/{op}"),
        input,
        deadline: None,
        identity: caller(state, headers)?,
        origin: Origin::Wire(Transport::Http),
        trace: trace_context(headers),
        attachment: None,
    })
}

async fn call(state: &AppState, request: CallRequest) -> Result<Value, ApiError> {
    let request_id = request.request_id.clone();
    state
        .dispatcher
        .call(request)
        .await
        .map_err(|error| ApiError::new(request_id, error))
}
