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
use crate::contract::{
    self, Diagnostic, DiagnosticCode, EventPage, EventsQuery, FeedItem, FeedQuery, MAX_PAGE, Name,
};
use crate::dispatch::{CallContext, Handler, NativeOnce, NativeStream, Operation};
use crate::registry::RegistryError;
use crate::store::{EventLog, ReadError, Stored};

/// Events read from the store at a time while catching up.
const CATCH_UP: usize = 256;

/// The feed's operations.
pub(super) fn operations(plugins: &WeakPlugins) -> Result<Vec<Operation>, RegistryError> {
    Ok(vec![page(plugins)?, follow(plugins)?])
}

/// Whose events a caller reads: `None` for the operator (all, or the
/// tenant it names), its own tenant for anyone else.
fn reader(cx: &CallContext, named: Option<Name>) -> Option<String> {
    if cx.identity.scopes.iter().any(|s| s == OPERATOR) {
        named.map(|Name(tenant)| tenant)
    } else {
        Some(cx.identity.tenant.clone())
    }
}

fn expired(cursor: u64, oldest: u64) -> Value {
    FeedItem::Diagnostic(Diagnostic {
        code: DiagnosticCode::CursorExpired,
        message: format!(
            "events after cursor {cursor} are no longer kept; the oldest kept is {oldest}"
        ),
        oldest: Some(oldest),
        cursor: None,
    })
    .to_json()
}

fn overrun(after: u64) -> Value {
    FeedItem::Diagnostic(Diagnostic {
        code: DiagnosticCode::CursorOverrun,
        message: format!(
            "this reader fell too far behind the live feed; resume from cursor {after}"
        ),
        oldest: None,
        cursor: Some(after),
    })
    .to_json()
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
            let query: EventsQuery = contract::read(input)?;
            let tenant = reader(&cx, query.tenant);
            let limit = query.limit.unwrap_or(100).min(MAX_PAGE);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let after = query.cursor;
            let (events, next, log) = tokio::task::spawn_blocking(move || {
                let page = log.page(after, limit, tenant.as_deref());
                page.map(|(events, next)| (events, next, log))
            })
            .await
            .map_err(|_| CallError::internal())?
            .map_err(read_failed)?;
            let page = EventPage {
                events: events.into_iter().map(|e| e.json.clone()).collect(),
                next_cursor: next,
                oldest: log.oldest(),
                last: log.last(),
            };
            serde_json::to_value(page).map_err(|_| CallError::internal())
        }
        .boxed()
    });
    operation(
        "events",
        OpType::Query,
        "The events after `cursor` (all kept when absent), at most `limit` (100; 1000 at most), and the cursor to ask from next.",
        contract::schema::<EventsQuery>(),
        contract::schema::<EventPage>(),
        Handler::NativeOnce(handler),
    )
}

fn follow(plugins: &WeakPlugins) -> Result<Operation, RegistryError> {
    let plugins = plugins.clone();
    let handler: NativeStream = Arc::new(move |cx: CallContext, input| {
        let plugins = plugins.clone();
        async move {
            let plugins = plugins.upgrade()?;
            let query: FeedQuery = contract::read(input)?;
            let tenant = reader(&cx, query.tenant);
            let log = plugins.events();
            // Followed before anything is read: nothing committed from here
            // on can fall between what is read and what is followed.
            let live = log.follow();
            let snapshot = snapshot(&plugins, &cx, tenant.as_deref());
            let start = match query.cursor {
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
        contract::schema::<FeedQuery>(),
        contract::schema::<FeedItem>(),
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
    let plugins = listed
        .iter()
        .map(|l| detail(&l.plugin, l.tenant.as_deref(), l.fixed))
        .collect();
    FeedItem::Snapshot { plugins }.to_json()
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
                        Err(RecvError::Lagged(_)) => Step::Diagnostic(overrun(after)),
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
