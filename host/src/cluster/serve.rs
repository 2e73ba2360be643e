//! The serving side: this host answers, over NATS, the calls of the
//! operations it holds.
//!
//! One subscription per (tenant, operation) in the tenants' views, in the
//! queue group named after its subject, kept in step with the registry as
//! plugins come and go, and dropped when the host drains, so new calls go
//! to the other hosts while the ones running here finish.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, Message, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::flow::{self, Allowance};
use super::wire::{Ask, Forward, Reply};
use crate::call::{CallError, ErrorCode, Receipt};
use crate::dispatch::Dispatcher;

/// Calls other hosts forwarded that are running here, by reply inbox: what
/// an abort names.
#[derive(Debug, Default)]
pub(super) struct Running {
    calls: Mutex<HashMap<String, CancellationToken>>,
}

impl Running {
    /// Stops the call answering to `inbox`, if it runs here.
    fn abort(&self, inbox: &str) {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(call) = calls.get(inbox) {
            call.cancel();
        }
    }

    /// Counts a call in until the returned guard is dropped.
    fn enter(self: &Arc<Self>, inbox: &str) -> RunningCall {
        let token = CancellationToken::new();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(inbox.to_owned(), token.clone());
        RunningCall {
            running: self.clone(),
            inbox: inbox.to_owned(),
            token,
        }
    }
}

struct RunningCall {
    running: Arc<Running>,
    inbox: String,
    token: CancellationToken,
}

impl Drop for RunningCall {
    fn drop(&mut self) {
        self.running
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.inbox);
    }
}

/// Serves this host's operations to the cluster until the host drains:
/// subscribes to those held now (and, when NATS is reachable, waits until
/// it has them, so a call made once the host listens finds them), then
/// follows the registry. Returns how many it serves now.
pub(super) async fn start(shared: Arc<Shared>, dispatcher: Dispatcher) -> usize {
    let aborts = match shared.client.subscribe(shared.subjects.abort()).await {
        Ok(aborts) => Some(tokio::spawn(listen_for_aborts(aborts, shared.clone()))),
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to the cluster's aborts");
            None
        }
    };
    let mut changes = dispatcher.registry().changes();
    changes.borrow_and_update();
    let mut served = HashMap::new();
    reconcile(&shared, &dispatcher, &mut served).await;
    let count = served.len();
    if shared.client.connection_state() == State::Connected
        && tokio::time::timeout(CONFIRM_WAIT, confirmed(&shared.client))
            .await
            .is_err()
    {
        tracing::warn!(
            "NATS did not confirm this host's subscriptions in time; other hosts may not reach its operations for a moment"
        );
    }
    tokio::spawn(async move {
        let draining = dispatcher.draining();
        tokio::pin!(draining);
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = &mut draining => break,
            }
            changes.borrow_and_update();
            reconcile(&shared, &dispatcher, &mut served).await;
        }
        // Dropping the subscriptions takes this host out of every queue
        // group; calls running here go on.
        for (_, task) in served {
            task.abort();
        }
        if let Some(aborts) = aborts {
            aborts.abort();
        }
    });
    count
}

/// The longest the host waits at start for NATS to confirm its
/// subscriptions.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);

/// Returns once the NATS server has read every command `client` sent
/// before, or at once if it cannot send its probe. (`Client::flush` only
/// writes commands to the socket: a publisher on another connection may
/// still find no subscriber.) The server reads a connection's commands in
/// order, so a message this client sends itself comes back only once the
/// subscriptions sent before it are in place.
async fn confirmed(client: &Client) {
    let probe = client.new_inbox();
    let Ok(mut echo) = client.subscribe(probe.clone()).await else {
        return;
    };
    if client.publish(probe, Bytes::new()).await.is_ok() {
        echo.next().await;
    }
}

/// Subscribes to the call subjects of the operations now held, and drops
/// the subscriptions of those no longer held.
async fn reconcile(
    shared: &Arc<Shared>,
    dispatcher: &Dispatcher,
    served: &mut HashMap<String, JoinHandle<()>>,
) {
    let registry = dispatcher.registry();
    let wanted: HashSet<String> = dispatcher
        .tenants()
        .ids()
        .flat_map(|tenant| {
            registry.all(tenant).into_iter().filter_map(move |op| {
                let subject = shared.subjects.call(tenant, &op.spec.name);
                if subject.is_none() {
                    tracing::warn!(
                        operation = %op.spec.name,
                        "an operation name too long for a NATS subject is not served to the cluster"
                    );
                }
                subject
            })
        })
        .collect();
    served.retain(|subject, task| {
        let keep = wanted.contains(subject);
        if !keep {
            task.abort();
        }
        keep
    });
    for subject in wanted {
        if served.contains_key(&subject) {
            continue;
        }
        match shared
            .client
            .queue_subscribe(subject.clone(), subject.clone())
            .await
        {
            Ok(calls) => {
                let task = tokio::spawn(serve_calls(calls, shared.clone(), dispatcher.clone()));
                served.insert(subject, task);
            }
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot serve an operation to the cluster")
            }
        }
    }
}

async fn listen_for_aborts(mut aborts: Subscriber, shared: Arc<Shared>) {
    while let Some(message) = aborts.next().await {
        if let Err(why) = shared.seal.open(&message) {
            super::seal::refused("an abort", why);
            continue;
        }
        if let Ok(inbox) = std::str::from_utf8(&message.payload) {
            shared.running.abort(inbox);
        }
    }
}

/// Runs each call forwarded on one subject, up to the host's limit of
/// forwarded calls at once.
async fn serve_calls(mut calls: Subscriber, shared: Arc<Shared>, dispatcher: Dispatcher) {
    while let Some(message) = calls.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        // Only the cluster's hosts call here: a message without their
        // seal is not answered at all.
        if let Err(why) = shared.seal.open(&message) {
            super::seal::refused("a forwarded call", why);
            continue;
        }
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            let error = CallError::new(
                ErrorCode::ResourceExhausted,
                "the host holding the operation runs as many forwarded calls as it may",
            )
            .with_details(json!({"limit": "max_forwarded", "value": shared.max_forwarded}));
            send(&shared, &reply, &failed(error)).await;
            continue;
        };
        let (shared, dispatcher) = (shared.clone(), dispatcher.clone());
        tokio::spawn(async move {
            serve_one(message, reply, &shared, &dispatcher).await;
            drop(slot);
        });
    }
}

/// Runs one forwarded request: a heartbeat while it runs, then its
/// answer; stopped if the forwarding host aborts it.
async fn serve_one(
    message: Message,
    reply: Subject,
    shared: &Arc<Shared>,
    dispatcher: &Dispatcher,
) {
    let forward = match serde_json::from_slice::<Forward>(&message.payload) {
        Ok(forward) => forward,
        Err(e) => {
            tracing::warn!(error = %e, "a host of the cluster forwarded a call this host cannot read");
            send(shared, &reply, &failed(CallError::internal())).await;
            return;
        }
    };
    let ask = forward.ask;
    let request = forward.into_request();
    let call = shared.running.enter(&reply);
    let answer = match ask {
        Ask::Kind => match dispatcher.op_type_here(&request) {
            Ok(op_type) => Reply::Kind { op_type },
            Err(error) => failed(error),
        },
        Ask::Call => {
            let run = dispatcher.call_here_metered(request);
            let Some(metered) = beating(run, &call.token, shared, &reply).await else {
                return;
            };
            let cost = metered.meter.receipt();
            match metered.result {
                Ok(output) => Reply::Output { output, cost },
                Err(error) => Reply::Error { error, cost },
            }
        }
        Ask::Subscribe {
            credit,
            credit_bytes,
        } => {
            let start = dispatcher.subscribe_here_metered(request);
            let Some(started) = beating(start, &call.token, shared, &reply).await else {
                return;
            };
            let meter = started.meter;
            match started.result {
                // The stream's meter is final once `stream` has dropped it.
                Ok(items) => match flow::stream(
                    items,
                    Allowance::new(credit, credit_bytes),
                    &call.token,
                    shared,
                    &reply,
                )
                .await
                {
                    Some(Ok(())) => Reply::Completed {
                        cost: meter.receipt(),
                    },
                    Some(Err(error)) => Reply::Error {
                        error,
                        cost: meter.receipt(),
                    },
                    None => return,
                },
                Err(error) => Reply::Error {
                    error,
                    cost: meter.receipt(),
                },
            }
        }
    };
    send(shared, &reply, &answer).await;
}

/// `work`'s output, saying `alive` to `reply` every heartbeat meanwhile;
/// `None` if the forwarding host aborts first (dropping `work` stops it).
async fn beating<T>(
    work: impl std::future::Future<Output = T>,
    aborted: &CancellationToken,
    shared: &Shared,
    reply: &Subject,
) -> Option<T> {
    tokio::pin!(work);
    let mut heartbeat = heartbeats(shared);
    loop {
        tokio::select! {
            output = &mut work => return Some(output),
            () = aborted.cancelled() => return None,
            _ = heartbeat.tick() => {
                send(shared, reply, &Reply::Alive).await;
            }
        }
    }
}

/// A tick every heartbeat, the first a heartbeat from now. (Not
/// `interval`'s first tick "at once": the timer driver may take up to a
/// millisecond to say so, which every forwarded call would wait.)
pub(super) fn heartbeats(shared: &Shared) -> tokio::time::Interval {
    let period = shared.heartbeat;
    tokio::time::interval_at(tokio::time::Instant::now() + period, period)
}

/// An error before the call ran: it cost nothing here.
fn failed(error: CallError) -> Reply {
    Reply::Error {
        error,
        cost: Receipt::default(),
    }
}

/// Sends `reply` to a forwarded call's inbox; an answer too large for the
/// cluster goes as `RESOURCE_EXHAUSTED` instead, and then this is `false`.
pub(super) async fn send(shared: &Shared, inbox: &Subject, reply: &Reply) -> bool {
    let Ok(mut payload) = serde_json::to_vec(reply) else {
        return false;
    };
    let mut as_is = true;
    let max = super::seal::room(&shared.client);
    if payload.len() > max {
        let error = CallError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "the answer is {} bytes; the cluster carries at most {max}",
                payload.len()
            ),
        )
        .with_details(json!({"limit": "max_payload", "value": max}));
        let cost = match reply {
            Reply::Output { cost, .. } | Reply::Error { cost, .. } | Reply::Completed { cost } => {
                *cost
            }
            _ => Receipt::default(),
        };
        let Ok(error) = serde_json::to_vec(&Reply::Error { error, cost }) else {
            return false;
        };
        payload = error;
        as_is = false;
    }
    publish(shared, inbox, payload).await;
    as_is
}

pub(super) async fn publish(shared: &Shared, inbox: &Subject, payload: Vec<u8>) {
    let sent = shared
        .seal
        .publish(&shared.client, inbox.to_string(), None, payload.into())
        .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot answer a forwarded call");
    }
}
