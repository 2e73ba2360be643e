//! `POST /subscribe`: a subscription as Server-Sent Events.
//!
//! Each output is one `data:` event whose `id:` is its sequence number (from
//! 1); a normal end is `event: completed`; a terminal error is `event: error`
//! with the error object. Errors found before the handler starts are sent the
//! same way, on a 200 response. A client that disconnects drops the stream,
//! which aborts the subscription and interrupts the guest.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};

use super::call::CallBody;
use super::error::JsonBody;
use super::{AppState, caller};
use crate::call::CallError;
use crate::dispatch::OutputStream;

pub(super) async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CallBody>,
) -> impl IntoResponse {
    let started = match caller(&state, &headers) {
        Ok(identity) => {
            state
                .dispatcher
                .subscribe(body.into_request(identity))
                .await
        }
        Err(error) => Err(error),
    };
    let events = match started {
        Ok(outputs) => events(outputs).boxed(),
        Err(error) => stream::once(async move { Ok(error_event(&error)) }).boxed(),
    };
    Sse::new(events).keep_alive(KeepAlive::new().interval(state.config.sse_keep_alive))
}

/// Numbered data events, then `completed`, or an `error` that ends it all.
fn events(outputs: OutputStream) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some((outputs, 1u64)), |state| async move {
        let (mut outputs, seq) = state?;
        let event = match outputs.next().await {
            Some(Ok(output)) => {
                let event = Event::default()
                    .id(seq.to_string())
                    .data(output.to_string());
                return Some((Ok(event), Some((outputs, seq + 1))));
            }
            Some(Err(error)) => error_event(&error),
            None => Event::default().event("completed").data("{}"),
        };
        Some((Ok(event), None))
    })
}

fn error_event(error: &CallError) -> Event {
    let data = serde_json::to_string(error).unwrap_or_else(|_| r#"{"code":"INTERNAL"}"#.to_owned());
    Event::default().event("error").data(data)
}
