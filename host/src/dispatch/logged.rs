//! One log line per call: operation, outcome and duration; and the same
//! call told to the observer (metrics), with its failure as an event when
//! it is one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use serde_json::Value;

use super::Outputs;
use super::http::HttpPart;
use crate::call::{
    CallError, CallRequest, ErrorCode, Event, Finished, Happening, Meter, SharedObserver, cut,
};
use crate::runtime::RawOutput;
use crate::telemetry::trace::{CallSpan, Tracer};

/// Logs a call once, when it finishes; a call dropped before it finished is
/// logged as aborted. The line names the tenant and the caller's id, never
/// its token.
pub(super) struct CallLog {
    operation: String,
    request_id: std::sync::Arc<str>,
    tenant: String,
    caller: Option<String>,
    items: u64,
    done: bool,
    observer: SharedObserver,
    labels: Labels,
    transport: &'static str,
    /// What the call spends; its wall time runs from here.
    meter: Arc<Meter>,
    /// The call's span, ended with the call.
    span: CallSpan,
}

/// The operation and plugin a call names, for metrics and events: `None`
/// for a name nobody offers the caller.
#[derive(Debug, Clone, Default)]
pub(super) struct Labels {
    pub(super) operation: Option<String>,
    pub(super) plugin: Option<String>,
}

impl CallLog {
    pub(super) fn start(
        request: &CallRequest,
        observer: &SharedObserver,
        tracer: &Tracer,
        labels: Labels,
    ) -> Self {
        Self {
            operation: request.op_name().to_owned(),
            request_id: request.request_id.clone(),
            tenant: request.identity.tenant.clone(),
            caller: request.identity.id.clone(),
            items: 0,
            done: false,
            observer: observer.clone(),
            labels,
            transport: request.origin.label(),
            meter: Arc::default(),
            span: tracer.start(request),
        }
    }

    /// Counts a call another host answered under its operation's name,
    /// which this host does not offer: the name exists, since that host
    /// holds it (junk names get no answer, only `NOT_FOUND` from NATS).
    pub(super) fn answered_elsewhere(&mut self) {
        if self.labels.operation.is_some() {
            return;
        }
        let namespace = self.operation.split('/').next().unwrap_or_default();
        self.labels = Labels {
            plugin: Some(namespace.to_owned()),
            operation: Some(self.operation.clone()),
        };
    }

    pub(super) fn finish(&mut self, error: Option<&CallError>) {
        self.done = true;
        self.meter.end();
        let outcome = error.map_or("ok", |e| e.code.as_str());
        self.span.end(outcome);
        self.emit(outcome, error);
        let code = match error.map(|e| &e.code) {
            None => "ok",
            Some(ErrorCode::Domain(_)) => "DOMAIN",
            Some(code) => code.as_str(),
        };
        self.tell(code);
        if let Some(event) = error.and_then(|e| self.event_of(e)) {
            self.observer.observe(event);
        }
    }

    /// What the call spends.
    pub(super) fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// The call's span.
    pub(super) fn span(&self) -> &CallSpan {
        &self.span
    }

    fn tell(&self, code: &str) {
        let cpu = self.meter.own_guest_cpu();
        self.observer.finished(&Finished {
            operation: self.labels.operation.as_deref(),
            plugin: self.labels.plugin.as_deref(),
            tenant: &self.tenant,
            transport: self.transport,
            code,
            items: self.items,
            duration: self.meter.wall(),
            guest_cpu: (!cpu.is_zero()).then_some(cpu),
            bytes: self.meter.own_bytes(),
        });
    }

    /// The call's line; a failure's carries its cause as the caller was told
    /// it (the trap kind, the limit, the panic message), cut short.
    fn emit(&self, status: &str, error: Option<&CallError>) {
        let receipt = self.meter.receipt();
        let duration_us = receipt.wall_us;
        let caller = self.caller.as_deref().unwrap_or("(anonymous)");
        let (op, request_id, tenant, items) =
            (&self.operation, &*self.request_id, &self.tenant, self.items);
        let details = error.and_then(|e| e.details.as_ref());
        let detail = |key: &str| details.and_then(|d| d.get(key)).and_then(|v| v.as_str());
        // Fields that are `None` are left out of the line.
        tracing::info!(
            op,
            request_id,
            tenant,
            caller,
            status,
            items,
            duration_us,
            cause = error.map(|e| cut(&e.message, MAX_CAUSE)),
            trap = detail("trap"),
            limit = detail("limit"),
            cost = %receipt.to_json(),
            "call"
        );
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        if !self.done {
            self.meter.end();
            self.span.end("aborted");
            self.emit("aborted", None);
            self.tell("aborted");
        }
    }
}

impl CallLog {
    /// The event a failed call is, if it is one: a trap, a limit hit or a
    /// quota refusal, for the calling tenant.
    fn event_of(&self, error: &CallError) -> Option<Event> {
        let details = error.details.as_ref()?;
        // A caller's own words: bounded before they are kept.
        let operation = cut(&self.operation, 256).to_owned();
        let limit = details.get("limit").and_then(Value::as_str);
        let text = |key: &str| details[key].as_str().map(str::to_owned);
        let value = details["value"].as_u64();
        let (what, plugin) = match (&error.code, limit) {
            (ErrorCode::PluginFailed, _) if details.get("trap").is_some() => (
                Happening::CallTrapped {
                    operation,
                    trap: text("trap").unwrap_or_default(),
                    version: text("version"),
                },
                text("plugin"),
            ),
            (_, Some(limit)) => match limit.strip_prefix("tenant.") {
                Some(quota) => (
                    Happening::QuotaRefused {
                        operation,
                        quota: quota.to_owned(),
                        value,
                    },
                    None,
                ),
                None => (
                    Happening::LimitHit {
                        operation,
                        limit: limit.to_owned(),
                        value,
                    },
                    self.labels.plugin.clone(),
                ),
            },
            _ => return None,
        };
        Some(Event {
            what,
            tenant: Some(self.tenant.clone()),
            plugin,
        })
    }
}

/// The most of an error's message a log line keeps.
const MAX_CAUSE: usize = 512;

/// An output after which a call has nothing more to send. A call ends
/// there, though its stream has still to say so: a consumer that stops at
/// it (hyper stops at a body's trailers) must not leave it logged as
/// aborted.
pub(super) trait Ending {
    fn ends_call(&self) -> bool {
        false
    }
}

/// A subscription ends with its stream.
impl Ending for Value {}

impl Ending for RawOutput {
    fn ends_call(&self) -> bool {
        matches!(self, RawOutput::Exit(_))
    }
}

impl Ending for HttpPart {
    fn ends_call(&self) -> bool {
        matches!(self, HttpPart::Trailers(_))
    }
}

/// A call's outputs, logged when the last is taken, or the stream ends or
/// is dropped.
pub(super) struct Logged<T = Value> {
    inner: Outputs<T>,
    log: CallLog,
}

impl<T> Logged<T> {
    pub(super) fn new(inner: Outputs<T>, log: CallLog) -> Self {
        Self { inner, log }
    }
}

impl<T: Ending> Stream for Logged<T> {
    type Item = Result<T, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.log.done {
            return Poll::Ready(None);
        }
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(output))) => {
                self.log.items += 1;
                if output.ends_call() {
                    self.log.finish(None);
                }
            }
            Poll::Ready(Some(Err(e))) => self.log.finish(Some(e)),
            Poll::Ready(None) => self.log.finish(None),
            Poll::Pending => {}
        }
        polled
    }
}
