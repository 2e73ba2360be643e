//! `/mcp`: every operation as a Model Context Protocol tool, over
//! Streamable HTTP, with the official Rust SDK (`rmcp`).
//!
//! The bearer token on each HTTP request decides the caller, as on `/call`:
//! `tools/list` is exactly what that caller may call (its tenant's view,
//! scopes held), and a tool call goes through the same dispatcher, so
//! access control, quotas, deadlines, limits and log lines are the same.
//! A subscription's outputs arrive as progress notifications on the
//! request's stream (when the client sent a progress token); cancelling the
//! request drops the call, which stops its guest. When plugins come and go,
//! every session is told `notifications/tools/list_changed`. How tools and
//! operations map onto each other is in [`tools`].
//!
//! What a caller can make it hold is bounded before rmcp sees a byte: the
//! caller is authenticated first, the body is read within the gateway's
//! size limit and body timeout, and a new session is refused past
//! `max_sessions`.

mod tools;

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, Implementation,
    ListToolsResult, MetaObject, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::{bearer, trace_context};
use crate::call::new_request_id;
use crate::call::{CallError, CallRequest, ErrorCode, Identity, Meter, OpType, Origin, Transport};
use crate::dispatch::{Dispatcher, Operation};

/// `[mcp]`: the MCP server at `/mcp`.
///
/// | field | default |
/// |---|---|
/// | `enabled` | on |
/// | `meta_tools` | on: `search`, `schema`, `call` and `subscribe` beside one tool per operation |
/// | `max_sessions` | 1,024 sessions open at once, all callers together |
/// | `session_idle_ms` | 5 minutes: a session with no request for this long is closed |
/// | `allowed_hosts` | none: any `Host` header; list names to refuse others (DNS rebinding) |
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Whether `/mcp` is served.
    pub enabled: bool,
    /// Whether the fixed meta-tools are offered too.
    pub meta_tools: bool,
    /// Sessions open at once, for the whole host.
    pub max_sessions: usize,
    /// How long a session may go without a request.
    pub session_idle_ms: u64,
    /// The `Host` headers accepted (`name` or `name:port`); empty takes any.
    pub allowed_hosts: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            meta_tools: true,
            max_sessions: 1024,
            session_idle_ms: 300_000,
            allowed_hosts: Vec::new(),
        }
    }
}

/// What the admission middleware needs.
#[derive(Clone)]
struct Admission {
    dispatcher: Dispatcher,
    sessions: Arc<LocalSessionManager>,
    max_sessions: usize,
    max_body_bytes: usize,
    body_timeout: Duration,
}

/// The `/mcp` route, served until the dispatcher starts draining.
pub(super) fn router(
    dispatcher: &Dispatcher,
    config: &McpConfig,
    max_body_bytes: usize,
    body_timeout: Duration,
) -> Router {
    let stop = CancellationToken::new();
    tokio::spawn({
        let (stop, draining) = (stop.clone(), dispatcher.draining());
        async move {
            draining.await;
            stop.cancel();
        }
    });
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(Duration::from_millis(config.session_idle_ms));
    let sessions = Arc::new(sessions);
    let peers = Arc::new(Peers::default());
    notify_changes(dispatcher, Arc::downgrade(&peers));
    let handler = OpboxMcp {
        dispatcher: dispatcher.clone(),
        meta_tools: config.meta_tools,
        peers,
    };
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        sessions.clone(),
        StreamableHttpServerConfig::default()
            .with_allowed_hosts(config.allowed_hosts.clone())
            .with_max_request_body_bytes(max_body_bytes)
            .with_cancellation_token(stop),
    );
    let admission = Admission {
        dispatcher: dispatcher.clone(),
        sessions,
        max_sessions: config.max_sessions,
        max_body_bytes,
        body_timeout,
    };
    Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(admission, admit))
}

/// Authenticates the caller, reads the body within the gateway's limits,
/// and refuses a new session past `max_sessions`; the caller's identity
/// rides in the request's extensions, where the handler finds it.
async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    let identity = match admission.dispatcher.authenticate(bearer(request.headers())) {
        Ok(identity) => identity,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let new_session =
        request.method() == Method::POST && !request.headers().contains_key("mcp-session-id");
    if new_session && admission.sessions.sessions.read().await.len() >= admission.max_sessions {
        let error = CallError::new(
            ErrorCode::ResourceExhausted,
            "the host holds as many MCP sessions as it takes; try again later",
        )
        .with_details(json!({ "limit": "mcp.max_sessions", "value": admission.max_sessions, "retry_after_ms": 1000 }));
        return ApiError::from(error).into_response();
    }
    let (mut parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, admission.max_body_bytes);
    let bytes = match tokio::time::timeout(admission.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            let too_large = error
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (status, message) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is over the size limit",
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
            };
            return ApiError::from(CallError::invalid_input(message))
                .with_status(status)
                .into_response();
        }
        Err(_) => {
            return ApiError::from(CallError::new(
                ErrorCode::Timeout,
                "the request body was not sent in time",
            ))
            .with_status(StatusCode::REQUEST_TIMEOUT)
            .into_response();
        }
    };
    parts.extensions.insert(identity);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The sessions to tell when the tool list changes.
#[derive(Default)]
struct Peers(Mutex<Vec<Peer<RoleServer>>>);

impl Peers {
    /// Adds a session, dropping those whose transport has closed, so the
    /// list never holds more than the open sessions and the one added.
    fn add(&self, peer: Peer<RoleServer>) {
        let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        peers.retain(|peer| !peer.is_transport_closed());
        peers.push(peer);
    }

    /// Tells every open session that the tool list changed, each on a task
    /// of its own so that a session that does not read holds up no other.
    fn notify_all(&self) {
        let peers = {
            let mut peers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            peers.retain(|peer| !peer.is_transport_closed());
            peers.clone()
        };
        for peer in peers {
            tokio::spawn(async move {
                let told = peer.notify_tool_list_changed();
                let _ = tokio::time::timeout(Duration::from_secs(5), told).await;
            });
        }
    }
}

/// Tells the sessions of `peers` about every change of the registry, for as
/// long as both exist.
fn notify_changes(dispatcher: &Dispatcher, peers: Weak<Peers>) {
    let mut changes = dispatcher.registry().changes();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let Some(peers) = peers.upgrade() else { return };
            peers.notify_all();
        }
    });
}

/// The MCP server: one per session, all sharing the dispatcher.
#[derive(Clone)]
struct OpboxMcp {
    dispatcher: Dispatcher,
    meta_tools: bool,
    peers: Arc<Peers>,
}

/// The caller the admission middleware found for this request.
fn identity(context: &RequestContext<RoleServer>) -> Result<Identity, ErrorData> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Identity>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request has no caller", None))
}

impl ServerHandler for OpboxMcp {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("opbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool is one operation of a sandboxed plugin, named `namespace.op`. \
                 Subscriptions send their outputs as progress notifications.",
            )
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.peers.add(context.peer);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let identity = identity(&context)?;
        let mut tools: Vec<_> = self
            .dispatcher
            .callable_operations(&identity)
            .iter()
            // Bytes both ways, and HTTP exchanges, have no MCP form:
            // byte-stream operations and HTTP components are not tools.
            .filter(|op| !matches!(op.spec.op_type, OpType::Raw | OpType::Http))
            .map(|op| tools::tool(op))
            .collect();
        if self.meta_tools {
            tools.extend(tools::meta_tools());
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let identity = identity(&context)?;
        let tool = &*request.name;
        if self.meta_tools && tools::META_TOOLS.contains(&tool) {
            let arguments = request.arguments.unwrap_or_default();
            let result = match tool {
                "search" => self.search(&identity, &arguments),
                "schema" => self.schema(&identity, &arguments),
                _ => {
                    let Some(name) = arguments.get("operation").and_then(Value::as_str) else {
                        return Err(ErrorData::invalid_params("`operation` is required", None));
                    };
                    let name = name.strip_prefix('/').unwrap_or(name);
                    // Through the meta-tools the input is given as it is.
                    let input = arguments.get("input").cloned().unwrap_or(Value::Null);
                    self.run(identity, name, input, tool == "subscribe", &context)
                        .await?
                }
            };
            return Ok(result.into());
        }
        let op = tools::operation_name(tool).and_then(|name| self.find(&identity, &name));
        let Some(op) = op else {
            // Worded alike whether it does not exist or is another tenant's.
            return Err(ErrorData::invalid_params(format!("no tool `{tool}`"), None));
        };
        let input = match tools::input_of(&op, request.arguments) {
            Ok(input) => input,
            Err(error) => return Ok(tools::failure(&error).into()),
        };
        Ok(self
            .call(identity, &op, input, false, &context)
            .await?
            .into())
    }
}

impl OpboxMcp {
    /// The operation `name`, if the caller may call it.
    fn find(&self, identity: &Identity, name: &str) -> Option<Arc<Operation>> {
        self.dispatcher.callable_operation(identity, name)
    }

    /// Runs `name` for the meta-tools `call` and `subscribe`.
    async fn run(
        &self,
        identity: Identity,
        name: &str,
        input: Value,
        subscribe: bool,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        match self.find(&identity, name) {
            Some(op) => self.call(identity, &op, input, subscribe, context).await,
            // Unknown or hidden: the dispatcher refuses it as `/call` does.
            None => {
                let request = self.request(identity, name.to_owned(), input, context);
                let called = self.dispatcher.call_metered(request).await;
                Ok(match called.result {
                    Ok(output) => tools::structured_result(json!({ "output": output }), false),
                    Err(error) => tools::failure(&error),
                })
            }
        }
    }

    fn request(
        &self,
        identity: Identity,
        operation: String,
        input: Value,
        context: &RequestContext<RoleServer>,
    ) -> CallRequest {
        let trace = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| trace_context(&parts.headers));
        CallRequest {
            request_id: new_request_id(),
            operation,
            input,
            deadline: None,
            identity,
            origin: Origin::Wire(Transport::Mcp),
            trace,
            attachment: None,
        }
    }

    /// Runs `op` with `input`; a query or mutation answers at once, a
    /// subscription streams progress notifications and answers with a
    /// summary. Cancelling the request drops the call, which stops the
    /// guest.
    async fn call(
        &self,
        identity: Identity,
        op: &Operation,
        input: Value,
        subscribe: bool,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = self.request(identity, op.spec.name.clone(), input, context);
        let request_id = request.request_id.clone();
        if op.spec.op_type == OpType::Subscription {
            return self.subscription(request, context).await;
        }
        if subscribe {
            let error = CallError::new(
                ErrorCode::InvalidOperationType,
                format!("`{}` is not a subscription; use `call`", op.spec.name),
            );
            return Ok(tools::failure(&error));
        }
        let called = tokio::select! {
            called = self.dispatcher.call_metered(request) => called,
            () = context.ct.cancelled() => return Err(cancelled()),
        };
        let mut result = match called.result {
            Ok(output) => tools::success(op, output),
            Err(error) => tools::failure(&error),
        };
        result.meta = Some(receipt_meta(&request_id, &called.meter));
        Ok(result)
    }

    async fn subscription(
        &self,
        request: CallRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let request_id = request.request_id.clone();
        let token = context.meta.get_progress_token();
        let started = tokio::select! {
            started = self.dispatcher.subscribe_metered(request) => started,
            () = context.ct.cancelled() => return Err(cancelled()),
        };
        let mut outputs = match started.result {
            Ok(outputs) => outputs,
            Err(error) => return Ok(tools::failure(&error)),
        };
        let (mut items, mut last) = (0u64, Value::Null);
        let ended = loop {
            let next = tokio::select! {
                next = outputs.next() => next,
                () = context.ct.cancelled() => return Err(cancelled()),
            };
            match next {
                Some(Ok(output)) => {
                    items += 1;
                    if let Some(token) = &token {
                        let progress = ProgressNotificationParam::new(token.clone(), items as f64)
                            .with_message(output.to_string());
                        // Waits while the client's stream is full: the guest is
                        // not read further meanwhile.
                        let sent = tokio::select! {
                            sent = context.peer.notify_progress(progress) => sent,
                            () = context.ct.cancelled() => return Err(cancelled()),
                        };
                        if sent.is_err() {
                            return Err(cancelled());
                        }
                    }
                    last = output;
                }
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            }
        };
        drop(outputs);
        let mut result = match ended {
            Ok(()) => tools::structured_result(json!({ "items": items, "last": last }), false),
            Err(error) => tools::error_result(&json!({ "error": error, "items": items })),
        };
        result.meta = Some(receipt_meta(&request_id, &started.meter));
        Ok(result)
    }

    /// The meta-tool `search`: the operations the caller may call.
    fn search(&self, identity: &Identity, arguments: &rmcp::model::JsonObject) -> CallToolResult {
        let query = arguments
            .get("q")
            .and_then(Value::as_str)
            .map(str::to_lowercase)
            .unwrap_or_default();
        let operations: Vec<Value> = self
            .dispatcher
            .callable_operations(identity)
            .iter()
            .filter(|op| {
                query.is_empty()
                    || op.spec.name.to_lowercase().contains(&query)
                    || op.spec.description.to_lowercase().contains(&query)
            })
            .map(|op| {
                json!({
                    "name": op.spec.name,
                    "tool": tools::tool_name(&op.spec.name),
                    "op_type": op.spec.op_type,
                    "description": op.spec.description,
                })
            })
            .collect();
        tools::structured_result(json!({ "operations": operations }), false)
    }

    /// The meta-tool `schema`: one operation's spec.
    fn schema(&self, identity: &Identity, arguments: &rmcp::model::JsonObject) -> CallToolResult {
        let name = arguments
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match self.find(identity, name.strip_prefix('/').unwrap_or(name)) {
            Some(op) => {
                let mut spec = serde_json::to_value(&op.spec).unwrap_or(Value::Null);
                spec["tool"] = tools::tool_name(&op.spec.name).into();
                tools::structured_result(spec, false)
            }
            None => tools::failure(&CallError::new(
                ErrorCode::NotFound,
                format!("no operation `{name}`"),
            )),
        }
    }
}

/// The request was cancelled: nothing is sent back for it.
fn cancelled() -> ErrorData {
    ErrorData::internal_error("the request was cancelled", None)
}

/// The call's id and cost, in the result's `_meta`.
fn receipt_meta(request_id: &str, meter: &Meter) -> MetaObject {
    let mut meta = MetaObject::new();
    meta.0.insert("opbox/request_id".into(), request_id.into());
    meta.0.insert(
        "opbox/cost".into(),
        serde_json::to_value(meter.receipt()).unwrap_or(Value::Null),
    );
    meta
}
