//! The forwarding side: a call this host does not hold goes to the hosts
//! that do, and its answer comes back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, StatusCode};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::Shared;
use super::catalog::Catalog;
use super::flow::{Taken, WINDOW_BYTES, WINDOW_ITEMS, read_batch};
use super::inbox::{Inbox, Replies};
use super::seal::Seal;
use super::wire::{Ask, Forward, Reply};
use crate::call::{CallError, CallRequest, ErrorCode, Meter, OpType};
use crate::dispatch::{Operation, OutputStream, Remote};

impl Remote for Shared {
    fn call(
        &self,
        request: CallRequest,
        deadline: Duration,
        meter: Arc<Meter>,
    ) -> BoxFuture<'static, Result<Value, CallError>> {
        let sent = self.send(Ask::Call, request, Some(deadline));
        Box::pin(async move {
            let mut pending = sent.await?;
            let (result, cost) = match pending.answer().await? {
                Reply::Output { output, cost } => (Ok(output), cost),
                Reply::Error { error, cost } => (Err(error), cost),
                _ => return Err(confused()),
            };
            meter.absorb(&cost);
            result
        })
    }

    fn subscribe(
        &self,
        request: CallRequest,
        limit: Option<Duration>,
        meter: Arc<Meter>,
    ) -> BoxFuture<'static, Result<OutputStream, CallError>> {
        let ask = Ask::Subscribe {
            credit: WINDOW_ITEMS,
            credit_bytes: Some(WINDOW_BYTES),
        };
        let sent = self.send(ask, request, limit);
        Box::pin(async move {
            let mut pending = sent.await?;
            let control = match pending.answer().await? {
                Reply::Started { control } => control,
                Reply::Error { error, cost } => {
                    meter.absorb(&cost);
                    return Err(error);
                }
                _ => return Err(confused()),
            };
            Ok(items(pending, control, meter))
        })
    }

    fn op_type(&self, request: CallRequest) -> BoxFuture<'static, Result<OpType, CallError>> {
        let sent = self.send(Ask::Kind, request, None);
        Box::pin(async move {
            match sent.await?.answer().await? {
                Reply::Kind { op_type } => Ok(op_type),
                Reply::Error { error, .. } => Err(error),
                _ => Err(confused()),
            }
        })
    }

    fn listed(&self, tenant: &str) -> Vec<Arc<Operation>> {
        self.catalog.listed(tenant)
    }
}

impl Shared {
    /// Sends `request` to the hosts holding its operation; the future
    /// resolves once it is on its way.
    fn send(
        &self,
        ask: Ask,
        request: CallRequest,
        deadline: Option<Duration>,
    ) -> BoxFuture<'static, Result<Pending, CallError>> {
        let client = self.client.clone();
        let seal = self.seal.clone();
        let inbox = self.inbox.clone();
        let subject = self
            .subjects
            .call(&request.identity.tenant, request.op_name())
            .ok_or_else(|| CallError::not_found(request.op_name()));
        let abort = self.subjects.abort();
        let silence = self.silence;
        let asked = Asked {
            catalog: self.catalog.clone(),
            tenant: request.identity.tenant.clone(),
            operation: request.operation.clone(),
        };
        let forward = Forward::new(ask, request, deadline);
        Box::pin(async move {
            let subject = subject?;
            if client.connection_state() != State::Connected {
                return Err(lost("this host is not connected to the cluster"));
            }
            let payload = serde_json::to_vec(&forward).map_err(|_| CallError::internal())?;
            let max = super::seal::room(&client);
            if payload.len() > max {
                return Err(CallError::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "the call is {} bytes as forwarded; the cluster carries at most {max}",
                        payload.len()
                    ),
                )
                .with_details(json!({"limit": "max_payload", "value": max})));
            }
            let inbox = inbox
                .get_or_try_init(|| Inbox::open(&client, seal.clone()))
                .await
                .map_err(|_| lost("cannot subscribe to the cluster"))?;
            let replies = inbox.register();
            let guard = AbortOnDrop {
                client: client.clone(),
                seal: seal.clone(),
                subject: abort,
                inbox: Some(replies.subject.clone()),
            };
            seal.publish(
                &client,
                subject,
                Some(replies.subject.clone()),
                payload.into(),
            )
            .await
            .map_err(|_| lost("cannot publish to the cluster"))?;
            Ok(Pending {
                client,
                seal,
                replies,
                guard,
                silence,
                asked,
            })
        })
    }
}

/// A forwarded request waiting for its replies.
struct Pending {
    client: Client,
    seal: Arc<Seal>,
    replies: Replies,
    /// Aborts the request on the running host if this is dropped before
    /// its last reply.
    guard: AbortOnDrop,
    silence: Duration,
    asked: Asked,
}

/// Whose request, for what: what the caller is told when no host takes
/// it.
struct Asked {
    catalog: Arc<Catalog>,
    tenant: String,
    operation: String,
}

impl Pending {
    /// The next reply that is not a heartbeat. A last one (an output, an
    /// error, a subscription's end) disarms the abort.
    async fn answer(&mut self) -> Result<Reply, CallError> {
        self.answer_sized().await.map(|(reply, _)| reply)
    }

    /// [`Pending::answer`], with the size of the message it came in.
    async fn answer_sized(&mut self) -> Result<(Reply, usize), CallError> {
        loop {
            let message = match tokio::time::timeout(self.silence, self.replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Err(lost("this host lost the cluster")),
                Err(_) => {
                    return Err(lost(
                        "the host running the call stopped answering; it may be gone",
                    ));
                }
            };
            if message.status == Some(StatusCode::NO_RESPONDERS) {
                self.guard.disarm();
                // `NOT_FOUND`, or `UNAVAILABLE` for an operation hosts
                // now gone held.
                let Asked {
                    catalog,
                    tenant,
                    operation,
                } = &self.asked;
                return Err(catalog.unanswered(tenant, operation));
            }
            let reply = match read_batch(&message.payload) {
                Some(outputs) => Reply::Items { outputs },
                None => serde_json::from_slice::<Reply>(&message.payload).map_err(|e| {
                    tracing::warn!(error = %e, "a host of the cluster sent a reply this host cannot read");
                    CallError::internal()
                })?,
            };
            let size = message.payload.len();
            match reply {
                Reply::Accepted | Reply::Alive => {}
                Reply::Output { .. }
                | Reply::Error { .. }
                | Reply::Completed { .. }
                | Reply::Kind { .. } => {
                    self.guard.disarm();
                    return Ok((reply, size));
                }
                Reply::Started { .. } | Reply::Items { .. } => return Ok((reply, size)),
            }
        }
    }
}

/// A forwarded subscription's outputs, granting the running host more
/// credit as they are taken (`flow.rs`). Its cost is added to `meter` at
/// its end.
fn items(pending: Pending, control: String, meter: Arc<Meter>) -> OutputStream {
    struct Flow {
        pending: Pending,
        control: String,
        meter: Arc<Meter>,
        /// Items received and not yet taken, each with the size of the
        /// message it came in when it is that message's last (else 0).
        ready: VecDeque<(Value, u64)>,
        taken: Taken,
        done: bool,
    }
    impl Flow {
        fn next_ready(&mut self) -> Option<Value> {
            let (output, bytes) = self.ready.pop_front()?;
            self.taken.take(bytes);
            Some(output)
        }
    }
    let flow = Flow {
        pending,
        control,
        meter,
        ready: VecDeque::new(),
        taken: Taken::default(),
        done: false,
    };
    futures::stream::unfold(flow, |mut flow| async move {
        if let Some(output) = flow.next_ready() {
            return Some((Ok(output), flow));
        }
        if flow.done {
            return None;
        }
        // Everything received is taken: grant what was, once it is half
        // a window.
        if let Some(credit) = flow.taken.due()
            && let Ok(payload) = serde_json::to_vec(&credit)
        {
            let pending = &flow.pending;
            let _ = pending
                .seal
                .publish(&pending.client, flow.control.clone(), None, payload.into())
                .await;
        }
        let end = match flow.pending.answer_sized().await {
            Ok((Reply::Items { outputs }, size)) => {
                let last = outputs.len().saturating_sub(1);
                let size = u64::try_from(size).unwrap_or(u64::MAX);
                flow.ready.extend(
                    (outputs.into_iter().enumerate())
                        .map(|(i, output)| (output, if i == last { size } else { 0 })),
                );
                let output = flow.next_ready()?;
                return Some((Ok(output), flow));
            }
            Ok((Reply::Completed { cost }, _)) => {
                flow.meter.absorb(&cost);
                return None;
            }
            Ok((Reply::Error { error, cost }, _)) => {
                flow.meter.absorb(&cost);
                error
            }
            Ok(_) => confused(),
            Err(error) => error,
        };
        flow.done = true;
        Some((Err(end), flow))
    })
    .boxed()
}

/// `UNAVAILABLE`, retryable: the cluster or the host running a call is out
/// of reach.
fn lost(message: &str) -> CallError {
    CallError::new(ErrorCode::Unavailable, message)
}

/// A host of the cluster answered out of turn.
fn confused() -> CallError {
    tracing::warn!("a host of the cluster answered a forwarded call out of turn");
    CallError::internal()
}

/// Tells the running host to stop a call this host gave up, unless it
/// ended.
struct AbortOnDrop {
    client: Client,
    seal: Arc<Seal>,
    subject: String,
    /// The call's reply inbox; `None` once the call has ended.
    inbox: Option<String>,
}

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.inbox = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(inbox) = self.inbox.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, seal) = (self.client.clone(), self.seal.clone());
        let subject = std::mem::take(&mut self.subject);
        runtime.spawn(async move {
            let _ = seal.publish(&client, subject, None, inbox.into()).await;
        });
    }
}
