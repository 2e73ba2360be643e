//! `POST /subscribe`: a subscription as Server-Sent Events.
//!
//! Each output is one `data:` event whose `id:` is its sequence number (from
//! 1); a normal end is `event: completed`; a terminal error is `event: error`
//! with the error object. Errors found before the handler starts are sent the
//! same way, on a 200 response. A client that disconnects drops the stream,
//! which aborts the subscription and interrupts the guest, and so does one
//! that takes no event for `write_timeout` while one is ready: over HTTP/2
//! its stream's flow-control window stays shut while the connection lives
//! on, so the socket's own write timeout never fires.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, Stream, StreamExt};

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::call::{CallBody, cost, with_traceparent};
use super::error::JsonBody;
use super::{AppState, caller, trace_context};
use crate::call::{CallError, Meter};
use crate::dispatch::OutputStream;

pub(super) async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CallBody>,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(identity) => identity,
        Err(error) => return Sse::new(once_error(error)).into_response(),
    };
    let request = body.into_request(identity, trace_context(&headers));
    let started = state.dispatcher.subscribe_metered(request).await;
    let patience = state.config.connection.write_timeout;
    let events = match started.result {
        Ok(outputs) => patient(events(outputs, started.meter), patience).boxed(),
        Err(error) => once_error(error),
    };
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(state.config.sse_keep_alive));
    let mut response = sse.into_response();
    with_traceparent(response.headers_mut(), started.traceparent.as_deref());
    response
}

/// `events` as a reader takes them, through a task that ends them (and
/// with them the subscription) when the reader has gone, or has taken
/// nothing for `patience` while an event waited for it.
fn patient(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    patience: Duration,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = sender.closed() => return,
            };
            let Some(event) = event else { return };
            match tokio::time::timeout(patience, sender.send(event)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!("a subscriber took no event for {patience:?}: ended");
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// A stream of one `error` event.
fn once_error(error: CallError) -> BoxStream<'static, Result<Event, Infallible>> {
    stream::once(async move { Ok(error_event(&error)) }).boxed()
}

/// Numbered data events, then `completed` with what the subscription
/// cost, or an `error` that ends it all.
pub(super) fn events(
    outputs: OutputStream,
    meter: Arc<Meter>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some((outputs, 1u64)), move |state| {
        let meter = meter.clone();
        async move {
            let (mut outputs, seq) = state?;
            let event = match outputs.next().await {
                Some(Ok(output)) => {
                    let event = Event::default()
                        .id(seq.to_string())
                        .data(output.to_string());
                    return Some((Ok(event), Some((outputs, seq + 1))));
                }
                Some(Err(error)) => error_event(&error),
                None => {
                    let data = json!({ "cost": cost(&meter.receipt()) });
                    Event::default().event("completed").data(data.to_string())
                }
            };
            Some((Ok(event), None))
        }
    })
}

fn error_event(error: &CallError) -> Event {
    let data = serde_json::to_string(error).unwrap_or_else(|_| r#"{"code":"INTERNAL"}"#.to_owned());
    Event::default().event("error").data(data)
}
