//! `admin/events` and `admin/feed`: the event feed as operations. The
//! operator reads every event; a tenant's caller (`plugins:write`) reads
//! its own tenant's only.
//!
//! `admin/feed` is what the WebSocket on `/admin/v1/events` carries: a
//! snapshot of the plugins the reader sees, then every stored event after
//! its cursor, then live events as they are committed, each once, in cursor
//! order. It ends after one `diagnostic` item when the cursor has expired
//! or the reader fell too far behind the live feed (`cursor_overrun`, with
//! the last cursor it got, to resume from).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::admin::{OPERATOR, detail, operation};
use super::{Plugins, WeakPlugins};
use crate::call::{CallError, OpType};
use crate::dispatch::{CallContext, Handler, NativeOnce, NativeStream, Operation};
use crate::registry::RegistryError;
use crate::store::{EventLog, ReadError, Stored};

/// Events one page holds at most.
pub const MAX_PAGE: usize = 1000;

/// Events read from the store at a time while catching up.
const CATCH_UP: usize = 256;

/// The feed's operations.
pub(super) fn operations(plugins: &WeakPlugins) -> Result<Vec<Operation>, RegistryError> {
    Ok(vec![page(plugins)?, follow(plugins)?])
}

/// Whose events a caller reads: `None` for the operator (all, or one
/// tenant's when it names one), its own tenant for anyone else.
fn reader(cx: &CallContext, input: &Value) -> Option<String> {
    if cx.identity.scopes.iter().any(|s| s == OPERATOR) {
        input["tenant"].as_str().map(str::to_owned)
    } else {
        Some(cx.identity.tenant.clone())
    }
}

/// The cursor an input names, if any.
fn cursor(input: &Value) -> Option<u64> {
    input["cursor"].as_u64()
}

fn expired(cursor: u64, oldest: u64) -> Value {
    json!({
        "type": "diagnostic",
        "code": "cursor_expired",
        "message": format!("events after cursor {cursor} are no longer kept; the oldest kept is {oldest}"),
        "oldest": oldest,
    })
}

fn read_failed(error: ReadError) -> CallError {
    match error {
        ReadError::Expired { cursor, oldest } => CallError::invalid_input(format!(
            "events after cursor {cursor} are no longer kept; the oldest kept is {oldest}"
        ))
        .with_details(json!({ "diagnostic": "cursor_expired", "oldest": oldest })),
        ReadError::Store(cause) => {
            tracing::error!("{cause}");
            CallError::internal()
        }
    }
}

fn page(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    let plugins = plugins.clone();
    let handler: NativeOnce = Arc::new(move |cx: CallContext, input| {
        let plugins = plugins.clone();
        async move {
            let log = plugins.upgrade()?.events();
            let tenant = reader(&cx, &input);
            let limit = input["limit"]
                .as_u64()
                .map_or(100, |n| usize::try_from(n).unwrap_or(MAX_PAGE))
                .min(MAX_PAGE);
            let after = cursor(&input);
            let (events, next, log) = tokio::task::spawn_blocking(move || {
                let page = log.page(after, limit, tenant.as_deref());
                page.map(|(events, next)| (events, next, log))
            })
            .await
            .map_err(|_| CallError::internal())?
            .map_err(read_failed)?;
            let events: Vec<&Value> = events.iter().map(|e| &e.json).collect();
            Ok(json!({
                "events": events,
                "next_cursor": next,
                "oldest": log.oldest(),
                "last": log.last(),
            }))
        }
        .boxed()
    });
    operation(
        "events",
        OpType::Query,
        "The events after `cursor` (all kept when absent), at most `limit` (100; 1000 at most), and the cursor to ask from next.",
        json!({
            "type": ["object", "null"],
            "properties": {
                "cursor": { "type": "integer", "minimum": 0 },
                "limit": { "type": "integer", "minimum": 1, "maximum": MAX_PAGE },
                "tenant": { "type": "string", "description": "The operator's filter: one tenant's events." },
            },
            "additionalProperties": false,
        }),
        json!({ "type": "object" }),
        Handler::NativeOnce(handler),
    )
}

fn follow(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    let plugins = plugins.clone();
    let handler: NativeStream = Arc::new(move |cx: CallContext, input| {
        let plugins = plugins.clone();
        async move {
            let plugins = plugins.upgrade()?;
            let tenant = reader(&cx, &input);
            let log = plugins.events();
            // Followed before anything is read: nothing committed from here
            // on can fall between what is read and what is followed.
            let live = log.follow();
            let snapshot = snapshot(&plugins, &cx, tenant.as_deref());
            let after = cursor(&input);
            let start = match after {
                Some(cursor) if cursor.saturating_add(1) < log.oldest() => {
                    Step::Diagnostic(expired(cursor, log.oldest()))
                }
                Some(cursor) => Step::CatchUp(cursor),
                None => Step::CatchUp(log.oldest().saturating_sub(1)),
            };
            let feed = Feed {
                log,
                tenant,
                live,
                pending: VecDeque::from([snapshot]),
                step: start,
            };
            Ok(futures::stream::unfold(feed, Feed::next).boxed())
        }
        .boxed()
    });
    operation(
        "feed",
        OpType::Subscription,
        "A snapshot of the plugins, then every event after `cursor`, then live events; ends with a `diagnostic` when the cursor has expired or the reader falls behind.",
        json!({
            "type": ["object", "null"],
            "properties": {
                "cursor": { "type": "integer", "minimum": 0 },
                "tenant": { "type": "string", "description": "The operator's filter: one tenant's events." },
            },
            "additionalProperties": false,
        }),
        json!({ "type": "object" }),
        Handler::NativeStream(handler),
    )
}

/// The plugins the reader sees now.
fn snapshot(plugins: &Plugins, cx: &CallContext, tenant: Option<&str>) -> Value {
    let listed = if cx.identity.scopes.iter().any(|s| s == OPERATOR) && tenant.is_none() {
        plugins.all()
    } else {
        plugins.list(tenant)
    };
    let listed: Vec<Value> = listed
        .iter()
        .map(|l| json!(detail(&l.plugin, l.tenant.as_deref(), l.fixed)))
        .collect();
    json!({ "type": "snapshot", "plugins": listed })
}

/// Where a feed is.
enum Step {
    /// Reading what is stored after this cursor.
    CatchUp(u64),
    /// Sending what is committed after this cursor.
    Live(u64),
    /// One last item, then the end.
    Diagnostic(Value),
    Ended,
}

struct Feed {
    log: Arc<EventLog>,
    tenant: Option<String>,
    live: tokio::sync::broadcast::Receiver<Arc<Stored>>,
    /// Items ready and not yet sent.
    pending: VecDeque<Value>,
    step: Step,
}

impl Feed {
    async fn next(mut self) -> Option<(Result<Value, CallError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((Ok(item), self));
            }
            match std::mem::replace(&mut self.step, Step::Ended) {
                Step::Ended => return None,
                Step::Diagnostic(item) => return Some((Ok(item), self)),
                Step::CatchUp(after) => {
                    let (log, tenant) = (self.log.clone(), self.tenant.clone());
                    let read = tokio::task::spawn_blocking(move || {
                        log.page(Some(after), CATCH_UP, tenant.as_deref())
                    })
                    .await;
                    self.step = match read {
                        Ok(Ok((events, next))) => {
                            self.pending.extend(events.iter().map(|e| item(e)));
                            if next == after {
                                Step::Live(after)
                            } else {
                                Step::CatchUp(next)
                            }
                        }
                        Ok(Err(ReadError::Expired { cursor, oldest })) => {
                            Step::Diagnostic(expired(cursor, oldest))
                        }
                        Ok(Err(e)) => return Some((Err(read_failed(e)), self)),
                        Err(_) => return Some((Err(CallError::internal()), self)),
                    };
                }
                Step::Live(after) => {
                    self.step = match self.live.recv().await {
                        Ok(event) if event.cursor <= after => Step::Live(after),
                        Ok(event) => {
                            if event.visible_to(self.tenant.as_deref()) {
                                self.pending.push_back(item(&event));
                            }
                            Step::Live(event.cursor)
                        }
                        Err(RecvError::Lagged(_)) => Step::Diagnostic(json!({
                            "type": "diagnostic",
                            "code": "cursor_overrun",
                            "message": format!("this reader fell too far behind the live feed; resume from cursor {after}"),
                            "cursor": after,
                        })),
                        Err(RecvError::Closed) => Step::Ended,
                    };
                }
            }
        }
    }
}

/// An event as the feed sends it.
fn item(event: &Stored) -> Value {
    let mut json = event.json.clone();
    json["type"] = json!("event");
    json
}
