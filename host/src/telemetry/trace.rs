//! Traces: every call is a span, exported over OTLP when `[telemetry]
//! otlp_endpoint` is set.
//!
//! A call's span joins the caller's W3C trace context when it sent one
//! (the `traceparent` header, or the envelope field); a nested call's span
//! is a child of its caller's, a forwarded call's span on the other host a
//! child of this host's, and a subscription's lasts until it ends. Guest log
//! lines are its events.
//!
//! Spans are made with the OpenTelemetry SDK directly, not through
//! `tracing` and `tracing-opentelemetry`: the bridge keeps a `tracing` span
//! beside each OpenTelemetry one, entered at every poll of the call. Over
//! HTTP, exporting every span cost 19–35% more CPU per request through it,
//! 6–8% made directly (`docs/performance.md`, "Telemetry"). Without an
//! exporter a call has no span at all: [`Tracer::start`] returns an empty
//! [`CallSpan`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, Tracer as _, TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use serde::Deserialize;

use crate::call::{CallRequest, Origin, TraceParent, cut};

/// `[telemetry]`: metrics, and where traces go.
///
/// | field | default |
/// |---|---|
/// | `metrics` | on: calls are counted and `/metrics` serves them |
/// | `otlp_endpoint` | none: no traces are exported |
/// | `service_name` | `opbox` |
/// | `sample_ratio` | 1.0: every trace a caller did not decide on is kept |
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Whether calls are counted for `/metrics`; off, the route answers
    /// `NOT_FOUND`.
    pub metrics: bool,
    /// An OTLP/HTTP collector's base URL (`http://127.0.0.1:4318`); spans
    /// are posted to its `/v1/traces` as protobuf, without TLS.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` spans are exported under.
    pub service_name: String,
    /// The share of new traces recorded and exported, from 0 to 1, chosen
    /// by trace id. A call that joins a caller's trace follows the
    /// caller's `sampled` flag instead.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            otlp_endpoint: None,
            service_name: "opbox".into(),
            sample_ratio: 1.0,
        }
    }
}

/// Spans kept for export at most; more are dropped (and counted by the
/// exporter) rather than held.
const MAX_QUEUED_SPANS: usize = 8192;

/// How often queued spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to `{endpoint}`: {reason}")]
pub struct ExportError {
    endpoint: String,
    reason: String,
}

/// Spans on their way to an OTLP collector: a batch processor on a thread
/// of its own, which sends every second and drops spans past 8,192 waiting
/// rather than hold them.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Starts exporting to `config.otlp_endpoint`; `None` when none is set.
    /// Call it outside the async runtime: the exporter's HTTP client runs
    /// its own.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, ExportError> {
        let Some(endpoint) = config.otlp_endpoint.as_deref() else {
            return Ok(None);
        };
        let error = |reason: String| ExportError {
            endpoint: endpoint.to_owned(),
            reason,
        };
        if !endpoint.starts_with("http://") {
            return Err(error(
                "the endpoint must be an http:// URL: the exporter speaks no TLS, so \
                 run the collector (or a forwarding one) on this host or a private network"
                    .into(),
            ));
        }
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(error("`sample_ratio` is not between 0 and 1".into()));
        }
        let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let client = reqwest::blocking::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| error(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(traces)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| error(e.to_string()))?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Some(Self { provider }))
    }

    /// Where calls' spans go: to this exporter.
    pub fn tracer(&self) -> Tracer {
        Tracer::new(self.provider.tracer("opbox"))
    }

    /// Sends what is queued and stops. Call it outside the async runtime.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("traces not all exported at shutdown: {e}");
        }
    }
}

/// Where calls' spans go: nowhere (the default), to a [`TraceExport`], or
/// to a tracer of an embedding program's own provider ([`Tracer::new`]).
#[derive(Debug, Clone, Default)]
pub struct Tracer(Option<SdkTracer>);

impl Tracer {
    /// Calls' spans go to `tracer`, and on to its provider's processors.
    pub fn new(tracer: SdkTracer) -> Self {
        Self(Some(tracer))
    }

    /// The span of `request`: a child of the span its `trace` names (the
    /// caller's, or the calling call's), else the root of a trace of its
    /// own. Empty when spans go nowhere.
    pub fn start(&self, request: &CallRequest) -> CallSpan {
        let Some(tracer) = &self.0 else {
            return CallSpan::default();
        };
        let parent = match &request.trace {
            Some(parent) => TraceContextPropagator::new().extract(&Carrier(parent)),
            None => opentelemetry::Context::new(),
        };
        let kind = match request.origin {
            Origin::Nested { .. } => SpanKind::Internal,
            Origin::Wire(_) => SpanKind::Server,
        };
        let span = tracer
            .span_builder(cut(request.op_name(), 256).to_owned())
            .with_kind(kind)
            .with_attributes([
                KeyValue::new("opbox.request_id", request.request_id.to_string()),
                KeyValue::new("opbox.tenant", request.identity.tenant.clone()),
                KeyValue::new("opbox.transport", request.origin.label()),
            ])
            .start_with_context(tracer, &parent);
        let context = span.span_context().clone();
        CallSpan(Some(Arc::new(Recorded {
            context,
            span: Mutex::new(span),
        })))
    }
}

/// One call's span, shared by what works on the call: the dispatcher ends
/// it, the guest's log lines are its events, and the calls it makes are
/// its children. Cloning it is cheap; an empty one (traces not exported)
/// does nothing.
#[derive(Debug, Clone, Default)]
pub struct CallSpan(Option<Arc<Recorded>>);

#[derive(Debug)]
struct Recorded {
    context: SpanContext,
    span: Mutex<SdkSpan>,
}

type SdkSpan = opentelemetry_sdk::trace::Span;

impl CallSpan {
    /// The span as a W3C trace context (the caller's `tracestate` kept),
    /// for what the call starts under it: nested and forwarded calls.
    /// `None` when the span is empty.
    pub fn trace_context(&self) -> Option<TraceParent> {
        let tracestate = self.0.as_ref()?.context.trace_state().header();
        TraceParent::parse(&self.traceparent()?, Some(&tracestate))
    }

    /// The span's W3C `traceparent`, for the caller to find its trace;
    /// `None` when the span is empty.
    pub fn traceparent(&self) -> Option<String> {
        let context = &self.0.as_ref()?.context;
        Some(format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        ))
    }

    /// Adds a guest log line as an event, when the span is recorded.
    pub fn log(&self, level: &'static str, message: &str) {
        self.with_recording(|span| {
            span.add_event(message.to_owned(), vec![KeyValue::new("level", level)]);
        });
    }

    /// Records how the call ended (`code` is `ok` or the error's) and ends
    /// the span; it is exported from here. Later calls do nothing.
    pub fn end(&self, code: &str) {
        // A span not sampled has nothing to end.
        self.with_recording(|span| {
            span.set_attribute(KeyValue::new("opbox.code", code.to_owned()));
            span.set_status(match code {
                "ok" => Status::Ok,
                _ => Status::error(code.to_owned()),
            });
            span.end();
        });
    }

    fn with_recording(&self, record: impl FnOnce(&mut SdkSpan)) {
        if let Some(recorded) = &self.0 {
            let mut span = lock(&recorded.span);
            if span.is_recording() {
                record(&mut span);
            }
        }
    }
}

/// The span, whatever panicked while it was held: a span's worst state is
/// an event too few.
fn lock(span: &Mutex<SdkSpan>) -> MutexGuard<'_, SdkSpan> {
    span.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A caller's trace context as the W3C propagator reads it.
struct Carrier<'a>(&'a TraceParent);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.0.traceparent()),
            "tracestate" => self.0.tracestate(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer that records every span and exports none.
    fn recording() -> Tracer {
        Tracer::new(SdkTracerProvider::builder().build().tracer("test"))
    }

    fn request(operation: &str, trace: Option<TraceParent>) -> CallRequest {
        CallRequest {
            trace,
            ..CallRequest::new(operation, serde_json::Value::Null)
        }
    }

    #[test]
    fn without_an_exporter_a_call_has_no_span() {
        let span = Tracer::default().start(&request("echo/echo", None));
        assert_eq!((span.traceparent(), span.trace_context()), (None, None));
        span.log("info", "nothing to hold it");
        span.end("ok");
    }

    #[test]
    fn a_span_joins_its_callers_trace_and_hands_it_on_to_the_calls_it_makes() {
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller = TraceParent::parse(&format!("00-{trace_id}-00f067aa0ba902b7-01"), Some("k=v"));
        let tracer = recording();
        let span = tracer.start(&request("textkit/summary", caller));
        let own = span.trace_context().expect("a recorded span");
        assert_eq!(own.trace_id(), trace_id);
        assert_eq!(own.tracestate(), Some("k=v"));
        assert_eq!(span.traceparent().as_deref(), Some(own.traceparent()));
        assert!(own.traceparent().ends_with("-01"), "sampled: {own:?}");
        assert!(
            !own.traceparent().contains("00f067aa0ba902b7"),
            "a span of its own"
        );

        // A call it makes is in the same trace, under it.
        let child = tracer.start(&request("echo/echo", Some(own.clone())));
        let child = child.trace_context().unwrap();
        assert_eq!(child.trace_id(), trace_id);
        assert_ne!(child.traceparent(), own.traceparent());

        // Ending twice, or logging after the end, does nothing more.
        span.end("ok");
        span.end("PLUGIN_FAILED");
        span.log("info", "too late");
        let recorded = span.0.as_ref().unwrap();
        assert!(!lock(&recorded.span).is_recording());
    }

    #[test]
    fn a_call_without_a_callers_trace_starts_one() {
        let tracer = recording();
        let (a, b) = (
            tracer.start(&request("echo/echo", None)),
            tracer.start(&request("echo/echo", None)),
        );
        let (a, b) = (a.trace_context().unwrap(), b.trace_context().unwrap());
        assert_ne!(a.trace_id(), b.trace_id());
    }

    fn config(endpoint: Option<&str>, sample_ratio: f64) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.map(Into::into),
            sample_ratio,
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn only_plain_http_endpoints_and_ratios_from_0_to_1_are_taken() {
        assert!(matches!(TraceExport::start(&config(None, 1.0)), Ok(None)));
        for endpoint in ["https://collector:4318", "collector:4318"] {
            let refused = TraceExport::start(&config(Some(endpoint), 1.0));
            assert!(refused.is_err(), "{endpoint}");
        }
        let local = Some("http://127.0.0.1:4318");
        assert!(TraceExport::start(&config(local, 1.5)).is_err());
        match TraceExport::start(&config(local, 0.5)) {
            Ok(Some(export)) => export.shutdown(),
            other => panic!("{other:?}"),
        }
    }
}
